//! Higher-interval candles built from 1-minute ones, as the exchange builds
//! them: open of the first minute, highest high, lowest low, close of the
//! last minute, volumes summed in time order, aligned to UTC boundaries
//! (weeks from Monday 00:00). A bucket closes when its last minute closes,
//! or, when minutes are missing at its end, when the first minute of a later
//! bucket arrives (its time has then passed, as on the exchange).

use protocol::{Candle, Interval};

use crate::kline::bucket_start;

const MINUTE: i64 = 60_000;

/// One target interval's bucket for one symbol.
#[derive(Debug, Clone)]
pub struct Aggregator {
    target: Interval,
    bucket: Option<i64>,
    /// The bucket's closed minutes, folded in time order.
    base: Option<Candle>,
    /// The newest closed minute folded into `base`.
    last_folded: i64,
    /// The minute still in progress, not yet folded.
    current: Option<Candle>,
    /// Whether the bucket was already written as closed.
    closed: bool,
}

fn fold(acc: Option<Candle>, minute: &Candle, open_time: i64) -> Candle {
    match acc {
        None => Candle {
            open_time,
            ..*minute
        },
        Some(a) => Candle {
            open_time,
            open: a.open,
            high: a.high.max(minute.high),
            low: a.low.min(minute.low),
            close: minute.close,
            volume: a.volume + minute.volume,
        },
    }
}

impl Aggregator {
    /// Buckets of `target` (longer than a minute).
    pub fn new(target: Interval) -> Self {
        Self {
            target,
            bucket: None,
            base: None,
            last_folded: i64::MIN,
            current: None,
            closed: false,
        }
    }

    /// The target interval.
    pub fn target(&self) -> Interval {
        self.target
    }

    /// Takes one minute (closed or in progress; never older than the minutes
    /// before it: the caller rejects stale ones) and hands `write` the
    /// bucket's candles to store: the previous bucket's final value first if
    /// that one closes now, then the current bucket's value and whether it is
    /// closed. A closed minute seen again is ignored: folding it twice would
    /// count its volume twice.
    pub fn update(&mut self, minute: &Candle, closed: bool, mut write: impl FnMut(&Candle, bool)) {
        let bucket = bucket_start(minute.open_time, self.target);
        if self.bucket != Some(bucket) {
            if let Some(value) = self.value()
                && !self.closed
            {
                write(&value, true);
            }
            *self = Self {
                bucket: Some(bucket),
                ..Self::new(self.target)
            };
        }
        if minute.open_time <= self.last_folded || self.closed {
            return;
        }
        // An in-progress minute overtaken by a later one is final: its close
        // was missed (a reconnect), its last value is what the exchange kept.
        if let Some(current) = self.current.take_if(|c| c.open_time < minute.open_time) {
            self.base = Some(fold(self.base, &current, bucket));
            self.last_folded = current.open_time;
        }
        if closed {
            self.base = Some(fold(self.base, minute, bucket));
            self.last_folded = minute.open_time;
            self.current = None;
        } else {
            self.current = Some(*minute);
        }
        let done = closed && minute.open_time == bucket + self.target.millis() as i64 - MINUTE;
        if let Some(value) = self.value() {
            write(&value, done);
        }
        self.closed = done;
    }

    fn value(&self) -> Option<Candle> {
        let bucket = self.bucket?;
        match (&self.base, &self.current) {
            (base, Some(current)) => Some(fold(*base, current, bucket)),
            (Some(base), None) => Some(*base),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(k: i64, price: f64) -> Candle {
        Candle {
            open_time: 1_700_000_100_000 + k * MINUTE,
            open: price,
            high: price + 2.0,
            low: price - 1.0,
            close: price + 1.0,
            volume: 1.5 + k as f64,
        }
    }

    fn run(minutes: &[(Candle, bool)]) -> Vec<(Candle, bool)> {
        let mut agg = Aggregator::new(Interval::M5);
        let mut out = Vec::new();
        for (m, closed) in minutes {
            agg.update(m, *closed, |c, done| out.push((*c, done)));
        }
        out
    }

    #[test]
    fn five_closed_minutes_make_one_closed_bucket() {
        let ms: Vec<_> = (0..5)
            .map(|k| (minute(k, 100.0 + k as f64), true))
            .collect();
        let out = run(&ms);
        assert_eq!(out.len(), 5);
        let (last, done) = out[4];
        assert!(done && out[..4].iter().all(|(_, d)| !d));
        assert_eq!(last.open_time, ms[0].0.open_time);
        assert_eq!(last.open, 100.0);
        assert_eq!(last.high, 106.0);
        assert_eq!(last.low, 99.0);
        assert_eq!(last.close, 105.0);
        assert_eq!(last.volume, 1.5 + 2.5 + 3.5 + 4.5 + 5.5);
    }

    #[test]
    fn updates_and_repeats_are_not_counted_twice() {
        let m0 = minute(0, 100.0);
        let m1 = minute(1, 101.0);
        let partial = Candle {
            close: 100.5,
            volume: 0.5,
            ..m1
        };
        let out = run(&[
            (m0, true),
            (m0, true),
            (partial, false),
            (m1, false),
            (m1, true),
        ]);
        let (last, done) = *out.last().expect("writes");
        assert!(!done);
        assert_eq!(last.volume, m0.volume + m1.volume);
        assert_eq!(last.close, m1.close);
    }

    #[test]
    fn a_bucket_missing_its_last_minutes_closes_when_the_next_begins() {
        let out = run(&[
            (minute(0, 100.0), true),
            (minute(1, 100.0), true),
            (minute(6, 90.0), true),
        ]);
        // bucket 0 twice, then its close, then bucket 1's first value.
        assert_eq!(out.len(), 4);
        assert!(out[2].1, "the old bucket is written closed");
        assert_eq!(out[2].0.open_time, minute(0, 0.0).open_time);
        assert_eq!(out[3].0.open_time, minute(5, 0.0).open_time);
        assert!(!out[3].1);
    }
}
