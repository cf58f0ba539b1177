//! A fixed log2 histogram of durations in microseconds: what a worker
//! reports of its evaluation passes in PONG and the coordinator of its
//! signal latency, and what `/metrics` exposes as Prometheus histograms.
//! Fixed size, so a PONG stays small and nothing grows with time.

use serde::{Deserialize, Serialize};

/// Buckets: `counts[k]` holds durations of at most 2^k µs for k < 23
/// (up to 4.2 s); the last holds the longer ones.
pub const BUCKETS: usize = 24;

/// Counts of durations by power-of-two bucket, and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log2Histogram {
    /// Per bucket (not cumulative).
    pub counts: [u64; BUCKETS],
    /// Sum of every duration, µs.
    pub sum_us: u64,
}

impl Log2Histogram {
    /// The bucket of a duration of `us` microseconds.
    pub fn bucket(us: u64) -> usize {
        if us <= 1 {
            0
        } else {
            ((64 - (us - 1).leading_zeros()) as usize).min(BUCKETS - 1)
        }
    }

    /// The upper bound of bucket `k` in seconds (`None`: the last, unbounded).
    pub fn upper_seconds(k: usize) -> Option<f64> {
        (k < BUCKETS - 1).then(|| (1u64 << k) as f64 / 1e6)
    }

    /// Counts one duration.
    pub fn observe(&mut self, us: u64) {
        let k = Self::bucket(us);
        self.counts[k] = self.counts[k].saturating_add(1);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        // Saturating: the counts come from another process.
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |n, c| n.saturating_add(*c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_lands_in_the_first_bucket_that_holds_it() {
        assert_eq!(Log2Histogram::bucket(0), 0);
        assert_eq!(Log2Histogram::bucket(1), 0);
        assert_eq!(Log2Histogram::bucket(2), 1);
        assert_eq!(Log2Histogram::bucket(3), 2);
        assert_eq!(Log2Histogram::bucket(4), 2);
        assert_eq!(Log2Histogram::bucket(5), 3);
        assert_eq!(Log2Histogram::bucket(1 << 22), 22);
        assert_eq!(Log2Histogram::bucket((1 << 22) + 1), 23);
        assert_eq!(Log2Histogram::bucket(u64::MAX), 23);
        for us in [1u64, 2, 3, 1000, 1 << 20] {
            let k = Log2Histogram::bucket(us);
            let upper = Log2Histogram::upper_seconds(k).expect("bounded") * 1e6;
            assert!(us as f64 <= upper, "{us} in {k}");
        }
        let mut h = Log2Histogram::default();
        h.observe(3);
        h.observe(5000);
        let mut total = h;
        total.add(&h);
        assert_eq!((total.count(), total.sum_us), (4, 10_006));
    }
}
