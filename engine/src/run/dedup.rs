//! Exactly-once output from at-least-once signals: remembers the last
//! `capacity` signal keys (trader, symbol, interval, open time) and drops
//! repeats. Memory is bounded: the oldest key is forgotten first.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use protocol::message::Signal;

/// Keys remembered by default: a million signals, about 24 MB.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// The deduplicator.
#[derive(Debug)]
pub struct Dedup {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
    /// Repeats dropped so far.
    pub duplicates: u64,
}

impl Dedup {
    /// Remembers at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            duplicates: 0,
        }
    }

    fn key(s: &Signal) -> u64 {
        // A 64-bit digest: a false "duplicate" needs a collision among the
        // keys remembered, odds about n^2 / 2^65.
        let mut h = DefaultHasher::new();
        (&s.trader, &s.symbol, s.interval, s.open_time).hash(&mut h);
        h.finish()
    }

    /// True the first time a signal's key is seen.
    pub fn first(&mut self, s: &Signal) -> bool {
        let key = Self::key(s);
        if !self.seen.insert(key) {
            self.duplicates += 1;
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Interval;

    fn sig(trader: &str, t: i64) -> Signal {
        Signal {
            trader: trader.into(),
            symbol: "SYN000".into(),
            interval: Interval::M1,
            open_time: t,
            close: 1.0,
            labels: Default::default(),
            values: Default::default(),
        }
    }

    #[test]
    fn repeats_are_dropped_and_memory_is_bounded() {
        let mut d = Dedup::new(3);
        assert!(d.first(&sig("a", 1)));
        assert!(!d.first(&sig("a", 1)));
        assert!(d.first(&sig("b", 1)));
        assert!(d.first(&sig("a", 2)));
        assert!(d.first(&sig("a", 3)));
        assert_eq!(d.len(), 3, "bounded");
        assert_eq!(d.duplicates, 1);
        // The oldest key was forgotten.
        assert!(d.first(&sig("a", 1)));
    }
}
