//! Closes repaired: a candle whose successor streams before its `x: true`
//! is not closed by succession with its partial values. The successor's
//! events wait while the close is fetched from REST; a late `x: true` that
//! comes first wins; past the wait the candle stays as last streamed
//! (provisional). Every case is counted for `status`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::super::super::binance::Kline;
use super::super::rest::{Page, RestError};
use super::{Sync, hold};

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
            self.release(k);
        } else if open > repairing {
            if let Some(r) = self.series[k].repair.as_mut() {
                hold(&mut r.held, kline);
            }
        } else {
            self.write(&kline, received);
        }
    }

    /// Ends series `k`'s repair: its held events are written.
    pub(super) fn release(&mut self, k: usize) {
        if let Some(r) = self.series[k].repair.take() {
            for kline in r.held.into_values() {
                self.write(&kline, None);
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
                self.release(k);
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
                    self.release(k);
                }
                // The exchange is still finishing it: ask again soon.
                Some(_) => self.set_repair_due(k, retry),
                None => {
                    self.health
                        .provisional_closes
                        .fetch_add(1, Ordering::Relaxed);
                    self.release(k);
                }
            },
            Err(RestError::Paused { .. }) => {}
            Err(RestError::Exchange(_)) => self.set_repair_due(k, retry),
            Err(RestError::Refused(e)) => {
                tracing::warn!(%symbol, %interval, error = %e, "a candle's close could not be fetched: it stays provisional");
                self.health
                    .provisional_closes
                    .fetch_add(1, Ordering::Relaxed);
                self.release(k);
            }
        }
    }

    fn set_repair_due(&mut self, k: usize, due: Instant) {
        if let Some(r) = self.series[k].repair.as_mut() {
            r.due = due;
        }
    }
}
