//! A bounded ring of the latest measurements and their quantiles: the
//! latency and duration figures that `status` and PONG report.

/// The last `capacity` samples (older ones are overwritten).
///
/// The whole ring is allocated and written when it is made, so a process's
/// memory does not creep up for hours while the ring fills (a ring that
/// grew as it filled read as a leak to the memory-growth monitor and the
/// soak: a live feed's 64 Ki-sample ring took the better part of a day).
#[derive(Debug, Clone)]
pub struct Samples {
    values: Box<[u32]>,
    len: usize,
    next: usize,
}

impl Samples {
    /// An empty ring of `capacity` (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            // Not zeros: a zeroed allocation may be left untouched by the
            // allocator (calloc) and become resident only as it fills.
            values: vec![u32::MAX; capacity.max(1)].into_boxed_slice(),
            len: 0,
            next: 0,
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, v: u32) {
        if self.len < self.values.len() {
            self.values[self.len] = v;
            self.len += 1;
        } else {
            self.values[self.next] = v;
            self.next = (self.next + 1) % self.values.len();
        }
    }

    /// The samples held, in no particular order.
    pub fn values(&self) -> &[u32] {
        &self.values[..self.len]
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `q` quantile (0..=1) of the samples held; sorts a copy, so call
    /// it off hot paths.
    pub fn quantile(&self, q: f64) -> Option<u32> {
        let mut s = self.values().to_vec();
        s.sort_unstable();
        quantile(&s, q)
    }
}

/// The `q` quantile (0..=1) of `sorted` (ascending): the value at rank
/// `round((len - 1) * q)`. The one definition every figure uses.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[(last as f64 * q.clamp(0.0, 1.0)).round() as usize])
}

/// A duration in whole microseconds or nanoseconds, saturated to `u32`.
pub fn saturate(v: u128) -> u32 {
    v.min(u128::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_answers_quantiles() {
        let mut s = Samples::new(4);
        assert_eq!(s.quantile(0.5), None);
        for v in 1..=10 {
            s.push(v);
        }
        assert_eq!(s.len(), 4);
        let mut held = s.values().to_vec();
        held.sort_unstable();
        assert_eq!(held, [7, 8, 9, 10]);
        assert_eq!(s.quantile(0.0), Some(7));
        assert_eq!(s.quantile(1.0), Some(10));
        assert_eq!(saturate(u128::MAX), u32::MAX);
        // Nearest rank: 0.5 of [7, 8, 9, 10] is rank round(1.5) = 2.
        assert_eq!(s.quantile(0.5), Some(9));
        assert_eq!(quantile(&[1, 2, 3], 0.99), Some(3));
        assert_eq!(quantile::<u32>(&[], 0.5), None);
    }
}
