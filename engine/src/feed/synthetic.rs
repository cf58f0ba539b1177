//! The built-in synthetic feed: deterministic 1-minute candles from a seed.
//!
//! Symbol k is `SYN000`, `SYN001`, ...; its candles are a random walk driven
//! by [`SplitMix64`] seeded with (seed, k), so the same flags give the same
//! candles in every run, in `run` and in `backtest` alike.

use protocol::splitmix::SplitMix64;
use protocol::{Candle, SymbolName};

/// 2024-01-01T00:00:00Z: synthetic time starts here.
pub const EPOCH_MS: i64 = 1_704_067_200_000;
/// One minute.
pub const STEP_MS: i64 = 60_000;

/// One symbol's candle stream.
#[derive(Debug, Clone)]
pub struct SymbolStream {
    /// The symbol.
    pub name: SymbolName,
    state: SplitMix64,
    close: f64,
    index: u64,
}

impl SymbolStream {
    /// The stream of symbol number `k` for `seed`.
    pub fn new(seed: u64, k: usize) -> Self {
        let mut state = SplitMix64::new(seed ^ (k as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
        let close = 100.0 + 900.0 * state.unit();
        Self {
            // Three digits and a prefix: always a valid symbol name.
            name: SymbolName::new(&format!("SYN{k:03}"))
                .unwrap_or_else(|_| unreachable!("valid by construction")),
            state,
            close,
            index: 0,
        }
    }

    /// Candles produced so far.
    pub fn produced(&self) -> u64 {
        self.index
    }

    /// The next closed candle.
    pub fn next_candle(&mut self) -> Candle {
        let open = self.close;
        let step = (self.state.unit() - 0.5) * 0.01;
        let close = (open * (1.0 + step)).max(0.01);
        let high = open.max(close) * (1.0 + 0.002 * self.state.unit());
        let low = open.min(close) * (1.0 - 0.002 * self.state.unit());
        let volume = 1.0 + 100.0 * self.state.unit();
        let candle = Candle {
            open_time: EPOCH_MS + self.index as i64 * STEP_MS,
            open,
            high,
            low,
            close,
            volume,
        };
        self.close = close;
        self.index += 1;
        candle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_candles_other_seed_other_candles() {
        let take = |seed, k| {
            let mut s = SymbolStream::new(seed, k);
            (0..50).map(|_| s.next_candle()).collect::<Vec<_>>()
        };
        assert_eq!(take(7, 1), take(7, 1));
        assert_ne!(take(7, 1), take(8, 1));
        assert_ne!(take(7, 1), take(7, 2));
        for c in take(7, 3) {
            assert!(c.low <= c.open.min(c.close) && c.high >= c.open.max(c.close) && c.is_finite());
        }
    }
}
