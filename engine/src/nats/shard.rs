//! Symbol shards (`--shard K/N`): coordinator K of N takes the symbols whose
//! 64-bit FNV-1a digest of the upper-case name is K modulo N. The digest is
//! fixed (no per-process seed), so every host computes the same split and N
//! coordinators cover every symbol exactly once.

/// The most shards.
pub const MAX_SHARDS: u32 = 1024;

/// Shard K of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    k: u32,
    n: u32,
}

impl Shard {
    /// Every symbol: one coordinator.
    pub const WHOLE: Shard = Shard { k: 0, n: 1 };

    /// Which shard of `n` holds `symbol`.
    pub fn of(symbol: &str, n: u32) -> u32 {
        (protocol::rule::fnv1a(&symbol.to_ascii_uppercase()) % u64::from(n.max(1))) as u32
    }

    /// Whether `symbol` is this shard's.
    pub fn owns(&self, symbol: &str) -> bool {
        Self::of(symbol, self.n) == self.k
    }

    /// K.
    pub fn index(&self) -> u32 {
        self.k
    }

    /// N.
    pub fn count(&self) -> u32 {
        self.n
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard {s:?}: K/N with 0 <= K < N <= {MAX_SHARDS}, as in 0/2");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n) = (
            k.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if n == 0 || n > MAX_SHARDS || k >= n {
            return Err(bad());
        }
        Ok(Self { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_bad_ones_name_the_form() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { k: 1, n: 3 }));
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2", "0/1025"] {
            let e = bad.parse::<Shard>().expect_err(bad);
            assert!(e.contains("K/N"), "{e}");
        }
    }

    #[test]
    fn every_symbol_is_in_exactly_one_shard_whatever_its_case() {
        let symbols: Vec<String> = (0..400).map(|k| format!("SYM{k}USDT")).collect();
        for n in [1, 2, 3, 7] {
            let shards: Vec<Shard> = (0..n).map(|k| Shard { k, n }).collect();
            let mut sizes = vec![0usize; n as usize];
            for s in &symbols {
                let owners: Vec<_> = shards.iter().filter(|sh| sh.owns(s)).collect();
                assert_eq!(owners.len(), 1, "{s} in {n} shards");
                assert!(owners[0].owns(&s.to_ascii_lowercase()));
                sizes[owners[0].k as usize] += 1;
            }
            // A hash, not a range: no shard empty or holding most.
            assert!(sizes.iter().all(|&c| c > 400 / n as usize / 2), "{sizes:?}");
        }
        // Fixed digests: the split is the same on every host and release
        // (these figures are the documented hash's, computed apart).
        assert_eq!(Shard::of("BTCUSDT", 2), 0);
        assert_eq!(Shard::of("btcusdt", 3), 0);
        assert_eq!(Shard::of("SYN000", 2), 1);
        assert_eq!(Shard::of("SYN000", 3), 1);
    }
}
