//! Closes repaired: a candle whose successor streams before its `x: true`
//! is not closed by succession with its partial values. The successor's
//! events wait while the close is fetched from REST; a late `x: true` that
//! comes first wins; past the wait the candle stays as last streamed
//! (provisional). Every case is counted for `status`.
//!
//! The events held meanwhile are streamed ones like any other: when the
//! repair ends they go through the same checks (`Sync::live`), in order. A
//! REST pause (a 429) can hold a repair for seconds while the stream loses
//! more closes; one of the held candles then lacks its `x: true` too, and
//! its successor starts a repair of it, which holds the rest.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::super::rest::{Page, RestError};
use super::{Phase, Sync, hold};
use crate::kline::Kline;

/// Longest a successor's events are held while the close of the candle
/// before it is fetched; then that candle stays as last streamed
/// (provisional).
pub const REPAIR_WAIT: Duration = Duration::from_secs(30);
/// A candle closed by its successor without `x: true`: its close is being
/// fetched; the successor's events wait.
#[derive(Debug)]
pub(super) struct Repair {
    pub(super) open_time: i64,
    pub(super) due: Instant,
    pub(super) deadline: Instant,
    held: BTreeMap<i64, Kline>,
}

/// How a repair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The candle has its final values (from REST, or its late `x: true`).
    Closed,
    /// Given up: the candle stays as last streamed, closed by its successor.
    Provisional,
}

impl Sync {
    /// Series `k`'s stored candle `latest` was never closed and `kline` is
    /// its successor: the close is fetched, `kline` waits.
    pub(super) fn start_repair(&mut self, k: usize, latest: i64, kline: Kline) {
        self.health.missing_closes.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let wait = REPAIR_WAIT.min(Duration::from_millis(kline.interval.millis()));
        let mut held = BTreeMap::new();
        held.insert(kline.candle.open_time, kline);
        self.series[k].repair = Some(Repair {
            open_time: latest,
            due: now,
            deadline: now + wait,
            held,
        });
    }

    /// An event of series `k` while its repair runs: the late close ends
    /// it, a successor's event waits, an older one is written.
    pub(super) fn while_repairing(&mut self, k: usize, kline: Kline, received: Option<Instant>) {
        let Some(repairing) = self.series[k].repair.as_ref().map(|r| r.open_time) else {
            return self.write(&kline, received);
        };
        let open = kline.candle.open_time;
        if open == repairing && kline.closed {
            // The close came after all, late.
            self.health.late_closes.fetch_add(1, Ordering::Relaxed);
            self.write(&kline, received);
            self.release(k, Ended::Closed);
        } else if open > repairing {
            if let Some(r) = self.series[k].repair.as_mut() {
                hold(&mut r.held, kline);
            }
        } else {
            self.write(&kline, received);
        }
    }

    /// Ends series `k`'s repair: its held events, oldest first, are taken
    /// as if they streamed now. Written straight, a held candle whose own
    /// `x: true` was lost would be closed by its successor with its partial
    /// values, uncounted; through [`Sync::resume`] its successor starts its
    /// repair, and the events after it wait in that one, in order.
    pub(super) fn release(&mut self, k: usize, ended: Ended) {
        let Some(r) = self.series[k].repair.take() else {
            return;
        };
        let mut held = r.held.into_values();
        if ended == Ended::Provisional
            && let Some(successor) = held.next()
        {
            // Given up: the successor closes the candle as it stands
            // (through `live` it would start the same repair again).
            self.write(&successor, None);
        }
        for kline in held {
            self.resume(k, kline);
        }
    }

    /// An event held while series `k` waited (a repair, a backfill), taken
    /// now: checked as a streamed one while the series is live, else kept
    /// for its backfill.
    pub(super) fn resume(&mut self, k: usize, kline: Kline) {
        match self.series[k].phase {
            Phase::Live => self.live(k, kline, None),
            Phase::Behind { .. } | Phase::Unsubscribed => {
                hold(&mut self.series[k].early, kline);
            }
        }
    }

    pub(super) fn expire_repairs(&mut self) {
        let now = Instant::now();
        for k in 0..self.series.len() {
            if self.series[k]
                .repair
                .as_ref()
                .is_some_and(|r| r.deadline <= now)
            {
                self.health
                    .provisional_closes
                    .fetch_add(1, Ordering::Relaxed);
                let (symbol, interval) = &self.series[k].stream;
                tracing::warn!(%symbol, %interval,
                    "a candle's close could not be fetched in time: it stays as last streamed (provisional)");
                self.release(k, Ended::Provisional);
            }
        }
    }

    /// Asks for the close of the candle being repaired.
    pub(super) fn repair_step(&mut self, k: usize) {
        let (symbol, interval) = self.series[k].stream.clone();
        let Some(open) = self.series[k].repair.as_ref().map(|r| r.open_time) else {
            return;
        };
        let retry = Instant::now() + Duration::from_secs(1);
        match self.rest.klines(&symbol, interval, Page::From(open), 1) {
            Ok(rows) => match rows.into_iter().find(|r| r.candle.open_time == open) {
                Some(row) if row.closed => {
                    self.health.repaired_closes.fetch_add(1, Ordering::Relaxed);
                    self.write(&row, None);
                    self.release(k, Ended::Closed);
                }
                // The exchange is still finishing it: ask again soon.
                Some(_) => self.set_repair_due(k, retry),
                None => {
                    self.health
                        .provisional_closes
                        .fetch_add(1, Ordering::Relaxed);
                    self.release(k, Ended::Provisional);
                }
            },
            Err(RestError::Paused { .. }) => {}
            Err(RestError::Exchange(_)) => self.set_repair_due(k, retry),
            Err(RestError::Refused(e)) => {
                tracing::warn!(%symbol, %interval, error = %e, "a candle's close could not be fetched: it stays provisional");
                self.health
                    .provisional_closes
                    .fetch_add(1, Ordering::Relaxed);
                self.release(k, Ended::Provisional);
            }
        }
    }

    fn set_repair_due(&mut self, k: usize, due: Instant) {
        if let Some(r) = self.series[k].repair.as_mut() {
            r.due = due;
        }
    }
}
