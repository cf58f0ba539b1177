//! A finite feed (synthetic or replay) written into the store at its pace,
//! and never further ahead of the slowest worker than its traders' windows
//! allow (backpressure).

use anyhow::{Result, bail};
use protocol::Interval;
use protocol::control::{self, Feed, FiniteFeed, NatsFeed, ReplayFeed};
use protocol::store::{SeriesId, StoreWriter, WriterStats};

use super::progress::Progress;
use super::writer::FeedWriter;
use super::{Pace, Pacer, Source};
use crate::instance::SharedStore;

/// Publishes written per step, at most, so a high rate never starves the
/// coordinator's loop.
pub const FEED_PUBLISHES_PER_PASS: u64 = 64;

/// Batches per publish when a finite feed goes as fast as it can (a
/// FUTEX_WAKE on shared memory costs more than the batch it announces).
pub const FAST_BATCHES_PER_PUBLISH: u64 = 16;

/// Candles per series one publish may carry with `pace` on rings of `ring`
/// candles: a publish must not carry more than a quarter of the ring.
pub fn per_publish(pace: Pace, ring: u64) -> u64 {
    match pace {
        Pace::Fast => FAST_BATCHES_PER_PUBLISH.min((ring / 4).max(1)),
        Pace::Rate(_) | Pace::Speed(_) => 1,
    }
}

/// Whether the feed's next publish may go out when it has published
/// `publishes` times and the slowest worker confirmed publish `slowest`:
/// a trader's window is at most half the ring (checked at start), so a
/// series may run half the ring plus the candle being judged ahead of the
/// slowest worker, and stays in it.
pub fn may_publish(publishes: u64, slowest: u64, per_publish: u64, ring: u64) -> bool {
    // The store's counter is the feed's publishes plus the initial one, so
    // the next publish is number `publishes + 2`; each carries at most
    // `per_publish` candles per series.
    (publishes + 2).saturating_sub(slowest) * per_publish <= ring / 2 + 1
}

/// A finite feed and what it writes with.
pub struct Pump {
    source: Source,
    writer: FeedWriter<SeriesId>,
    pacer: Pacer,
    progress: Option<Progress>,
    /// Publishes of this feed (the store's counter is one more).
    publishes: u64,
    /// Delivery time of the last batch written.
    last_at: Option<i64>,
}

impl Pump {
    /// `source` written into the store's `intervals`, building `aggregate`
    /// from its minutes, at `pace`.
    pub fn new(source: Source, intervals: &[Interval], aggregate: &[Interval], pace: Pace) -> Self {
        Self {
            writer: FeedWriter::new(intervals, aggregate),
            pacer: Pacer::new(pace),
            progress: source.as_replay().map(|r| Progress::new(r.total_bytes())),
            source,
            publishes: 0,
            last_at: None,
        }
    }

    /// Registers the symbols the source knows of before it starts.
    pub fn register_known(&mut self, store: &mut StoreWriter) -> Result<()> {
        for symbol in self.source.known_symbols() {
            self.writer.register(store, &symbol)?;
        }
        Ok(())
    }

    /// Hands every candle written to `tap` too (`--publish-candles`).
    pub fn tap(&mut self, tap: crate::nats::candles::CandleTap) {
        self.writer.tap(tap);
    }

    /// Every worker judged up to publish `slowest` (a NATS feed keeps its
    /// position by it).
    pub fn judged_up_to(&mut self, slowest: u64) {
        if let Some(n) = self.source.as_nats() {
            n.judged_up_to(slowest);
        }
    }

    /// Starts the pace's clock.
    pub fn start(&mut self) {
        self.pacer.start();
    }

    /// The delivery time (ms) of the last batch written.
    pub fn last_at(&self) -> Option<i64> {
        self.last_at
    }

    /// Writes the batches due by now, at most [`FEED_PUBLISHES_PER_PASS`]
    /// publishes, and with `slowest` (the slowest worker's confirmed
    /// publish; `None`: no backpressure) never further ahead than
    /// [`may_publish`] allows. `published` is told each publish's delivery
    /// time. Returns the store's final publish once the feed is done.
    pub fn step(
        &mut self,
        store: &SharedStore,
        slowest: Option<u64>,
        mut published: impl FnMut(i64),
    ) -> Result<Option<u64>> {
        // Every publish may add a candle to every series: the smallest ring
        // bounds how far the feed may run ahead.
        let ring = store.lock().smallest_ring() as u64;
        let per_publish = per_publish(self.pacer.pace, ring);
        let mut finished = None;
        for _ in 0..FEED_PUBLISHES_PER_PASS {
            if slowest.is_some_and(|s| !may_publish(self.publishes, s, per_publish, ring)) {
                break;
            }
            let mut store = store.lock();
            let mut wrote = 0;
            let mut done = false;
            while wrote < per_publish {
                if self.source.waiting() || !self.writer.tap_has_room() {
                    break;
                }
                let Some(at) = self.source.peek()? else {
                    done = true;
                    break;
                };
                if !self.pacer.due(at) {
                    break;
                }
                self.write_batch(&mut store)?;
                wrote += 1;
            }
            if wrote > 0 {
                let publish = store.publish();
                if let Some(n) = self.source.as_nats() {
                    n.published(publish);
                }
                self.publishes += 1;
                if let Some(at) = self.last_at {
                    published(at);
                }
            }
            if done {
                let last = store.stats().publishes;
                drop(store);
                self.finish();
                if self.source.as_replay().is_some() && self.writer.counters().candles_written == 0
                {
                    bail!("the replay holds no usable candle (see the bad lines above)");
                }
                tracing::info!(
                    batches = self.pacer.batches,
                    publish = last,
                    counters = ?self.writer.counters(),
                    "finite feed written"
                );
                finished = Some(last);
                break;
            }
            if wrote < per_publish {
                break; // the next batch is not due yet
            }
        }
        self.report_progress();
        Ok(finished)
    }

    /// Writes the next batch (a replay's bad lines are reported, not fatal).
    fn write_batch(&mut self, store: &mut StoreWriter) -> Result<()> {
        if let Some(at) = super::write_batch(&mut self.source, &mut self.writer, store)? {
            self.last_at = Some(at);
        }
        self.pacer.batches += 1;
        Ok(())
    }

    fn report_progress(&mut self) {
        if let (Some(progress), Some(replay)) = (&mut self.progress, self.source.as_replay()) {
            progress.update(replay.bytes_read(), replay.candles);
        }
    }

    fn finish(&mut self) {
        self.report_progress();
        if let Some(mut progress) = self.progress.take() {
            progress.finish();
        }
        if let Some(replay) = self.source.as_replay() {
            replay.bad_lines().log_summary();
        }
    }

    /// The feed's part of `status`: `finished` once its last batch is
    /// written, `evaluated` once every worker judged it.
    pub fn status(&self, finished: bool, evaluated: bool, stats: &WriterStats) -> Feed {
        let feed = FiniteFeed {
            pace: match self.pacer.pace {
                Pace::Rate(r) => control::Pace::Rate(r),
                Pace::Speed(x) => control::Pace::Speed(x),
                Pace::Fast => control::Pace::Fast,
            },
            batches: self.pacer.batches,
            written: self.writer.counters(),
            store_appended: stats.appended,
            publishes: stats.publishes,
            rejected: stats.rejected_stale + stats.rejected_invalid,
            finished,
            evaluated,
        };
        match &self.source {
            Source::Synthetic { .. } => Feed::Synthetic(feed),
            Source::Replay(replay) => Feed::Replay(ReplayFeed {
                feed,
                bad_lines: replay.bad_lines().total,
                bytes_read: replay.bytes_read(),
                bytes_total: replay.total_bytes(),
            }),
            Source::Nats(nats) => Feed::Nats(NatsFeed {
                feed,
                nats: nats.status(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_feed_publishes_at_most_a_quarter_ring_at_a_time() {
        assert_eq!(per_publish(Pace::Fast, 1440), FAST_BATCHES_PER_PUBLISH);
        assert_eq!(per_publish(Pace::Fast, 32), 8);
        assert_eq!(per_publish(Pace::Fast, 2), 1);
        assert_eq!(per_publish(Pace::Rate(5.0), 1440), 1);
    }

    #[test]
    fn the_feed_runs_at_most_half_a_ring_ahead_of_the_slowest_worker() {
        let ring = 1440;
        // One candle per publish: 721 publishes ahead of the confirmed one.
        assert!(may_publish(719, 0, 1, ring));
        assert!(!may_publish(720, 0, 1, ring));
        assert!(
            may_publish(720, 1, 1, ring),
            "a confirmation frees one more"
        );
        // Sixteen per publish: 45 publishes (720 candles) ahead.
        assert!(may_publish(43, 0, 16, ring));
        assert!(!may_publish(44, 0, 16, ring));
        // Far behind the worker (it confirmed everything): always.
        assert!(may_publish(10, 1000, 16, ring));
    }
}
