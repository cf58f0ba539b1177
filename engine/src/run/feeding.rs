//! The run's feed side: the finite feed the loop writes (synthetic,
//! replay, a NATS candle stream) or the live feed on its own thread, and
//! the candle publisher of `--publish-candles`, from start to teardown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use protocol::InstanceName;
use protocol::Interval;
use protocol::control::{CandlePublishing, Feed, LiveFeed as LiveStatus};
use protocol::store::{StoreReader, WriterStats};

use super::emit::Emitter;
use crate::feed::FeedConfig;
use crate::feed::live::{LiveFeed, LiveHealth};
use crate::feed::pump::Pump;
use crate::instance::SharedStore;
use crate::nats::candles::{CandlePublisher, CandleTap};

/// The feed and what publishes its candles.
pub(super) struct Feeding {
    /// The finite feed (synthetic, replay, NATS), written by the loop.
    pump: Option<Pump>,
    /// The live feed, written by its own thread.
    live: Option<LiveFeed>,
    /// Its counters, kept after the feed is stopped: a run whose feed never
    /// delivered a message fails at the end, saying why.
    live_health: Option<Arc<LiveHealth>>,
    /// `--publish-candles`: the publisher, and the tap the live feed's
    /// writer gets when it starts (the pump's has it already).
    publisher: Option<CandlePublisher>,
    tap: Option<CandleTap>,
    /// Whether the durable sinks' positions were checked against what the
    /// live start's backfill brought (once, when every series is live).
    reach_checked: bool,
    /// When the feed started: once every slot's traders are acknowledged.
    started: Option<Instant>,
    /// A finite feed's last publish, once written.
    final_publish: Option<u64>,
}

impl Feeding {
    /// The feed side of a run whose finite feed is `pump` (none for live).
    pub(super) fn new(pump: Option<Pump>) -> Self {
        Self {
            pump,
            live: None,
            live_health: None,
            publisher: None,
            tap: None,
            reach_checked: false,
            started: None,
            final_publish: None,
        }
    }

    /// Every candle written from now on goes to `publisher` too: the
    /// finite feed's writer taps it now, the live feed's when it starts.
    pub(super) fn publish_candles(&mut self, publisher: CandlePublisher, tap: CandleTap) {
        if let Some(pump) = self.pump.as_mut() {
            pump.tap(tap.clone());
        }
        self.tap = Some(tap);
        self.publisher = Some(publisher);
    }

    /// Whether it started.
    pub(super) fn started(&self) -> bool {
        self.started.is_some()
    }

    /// Starts the feed of `config` into `store`: a finite one is paced from
    /// now, the live one gets its thread.
    pub(super) fn start(
        &mut self,
        config: &FeedConfig,
        store: &SharedStore,
        intervals: &[Interval],
    ) -> Result<()> {
        self.started = Some(Instant::now());
        if let Some(pump) = self.pump.as_mut() {
            pump.start();
        }
        if let FeedConfig::Binance(live) = config {
            let feed = LiveFeed::start(live.clone(), store.clone(), intervals, self.tap.clone())?;
            self.live_health = Some(Arc::clone(feed.health()));
            self.live = Some(feed);
        }
        Ok(())
    }

    /// Writes the batches of a finite feed due by now: with `backpressure`,
    /// never further ahead of that confirmed publish (the slowest slot's)
    /// than the traders' windows allow (see [`crate::feed::pump`]).
    /// `judged`: what every worker judged, saved as the NATS feed's
    /// position once every durable sink holds its signals.
    pub(super) fn step(
        &mut self,
        store: &SharedStore,
        emitter: &Emitter,
        backpressure: Option<u64>,
        judged: u64,
    ) -> Result<()> {
        if self.started.is_none() || self.final_publish.is_some() {
            return Ok(());
        }
        let Some(pump) = self.pump.as_mut() else {
            return Ok(());
        };
        if let Some(last) = pump.step(store, backpressure, |at| emitter.published(at))? {
            self.final_publish = Some(last);
        }
        // The NATS feed's saved position: what was judged, once every
        // durable sink holds its signals (a restart judges the rest again).
        if emitter.sinks_settled() {
            pump.judged_up_to(judged);
        }
        Ok(())
    }

    /// A finite feed's last publish, once written.
    pub(super) fn final_publish(&self) -> Option<u64> {
        self.final_publish
    }

    /// The delivery time (ms) of the last batch a finite feed wrote.
    pub(super) fn last_batch_at(&self) -> Option<i64> {
        self.pump.as_ref().and_then(|p| p.last_at())
    }

    /// Stops the live feed (the store no longer changes); its figures stay.
    pub(super) fn stop_live(&mut self) {
        if let Some(mut live) = self.live.take() {
            live.stop();
        }
    }

    /// An error if the live feed's thread has ended (it cannot start, or it
    /// stopped unexpectedly).
    pub(super) fn check_live(&self) -> Result<()> {
        if let Some(live) = self.live.as_ref().filter(|l| l.is_finished()) {
            match live.health().fatal() {
                Some(e) => bail!("the live feed cannot start: {e}"),
                None => bail!("the live feed thread stopped unexpectedly (see the log)"),
            }
        }
        Ok(())
    }

    /// True once, when every series of a live feed is first live: the time
    /// to check the durable sinks' reach.
    pub(super) fn all_live_first(&mut self) -> bool {
        if !self.reach_checked
            && let Some(live) = self.live.as_ref()
            && live.health().all_live()
        {
            self.reach_checked = true;
            return true;
        }
        false
    }

    /// If a live feed never delivered anything: why, for the run's end.
    pub(super) fn never_delivered(&self) -> Option<String> {
        self.live_health.as_ref().and_then(|h| h.never_delivered())
    }

    /// The feed's part of `status`: `evaluated`, every worker judged a
    /// finite feed's last batch.
    pub(super) fn status(&self, evaluated: bool, stats: &WriterStats) -> Feed {
        match (&self.pump, &self.live_health) {
            (Some(pump), _) => pump.status(self.final_publish.is_some(), evaluated, stats),
            // Its figures stay once it is stopped (a drain).
            (None, Some(health)) => Feed::Binance(LiveStatus::Started(Box::new(health.status()))),
            (None, None) => Feed::Binance(LiveStatus::NotStarted { started: false }),
        }
    }

    /// The candle publisher's part of `status`.
    pub(super) fn publisher_status(&self) -> Option<CandlePublishing> {
        self.publisher.as_ref().map(|p| p.status())
    }

    /// Teardown, once the feed is stopped: the writers' taps go (the live
    /// feed's went with it), then the publisher finishes its queue, given
    /// up after `drain` without progress or once `stop` says so. What was
    /// not published, if anything.
    pub(super) fn finish_publishing(
        &mut self,
        drain: Duration,
        stop: impl FnMut() -> bool,
    ) -> Option<String> {
        self.pump.take();
        self.tap.take();
        let publisher = self.publisher.take()?;
        let stream = publisher.stream.clone();
        let dropped = publisher.dropped();
        if !publisher.finish(drain, stop) {
            Some(format!(
                "candles were still unpublished to {stream} after --drain-timeout without progress (or a signal's deadline)"
            ))
        } else if dropped > 0 {
            Some(format!(
                "{dropped} live candles were not published to {stream} (its queue was full: the broker was slower than the feed)"
            ))
        } else {
            None
        }
    }
}

/// Per interval, the oldest candle the store of `instance` holds: a live
/// start's backfill reach (each interval's furthest over its series).
pub(super) fn backfill_reach(instance: &InstanceName) -> Option<BTreeMap<Interval, i64>> {
    let reader = StoreReader::open(instance).ok()?;
    let mut reach: BTreeMap<Interval, i64> = BTreeMap::new();
    for (symbol, _) in reader.symbols_with_ids() {
        for &interval in reader.intervals() {
            let Ok(series) = reader.series(symbol, interval) else {
                continue;
            };
            let (Ok(Some(latest)), Ok(appended)) = (reader.latest(series), reader.appended(series))
            else {
                continue;
            };
            let held = appended.min(reader.ring(series) as u64).max(1) as i64;
            let oldest = latest.candle.open_time - (held - 1) * interval.millis() as i64;
            // The reach of an interval is its series' furthest: a symbol
            // listed yesterday holds little, and says nothing about what
            // the others brought back.
            let r = reach.entry(interval).or_insert(oldest);
            *r = (*r).min(oldest);
        }
    }
    Some(reach)
}
