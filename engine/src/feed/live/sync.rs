//! The live feed's sync thread: the one writer of the live series. It
//! checks the symbols against the exchange, starts the connection threads,
//! applies what they stream, and backfills each series over REST: at start,
//! after its connection was lost, and when a candle closed without its
//! `x: true` (a repair).
//!
//! Per series: `Behind` (its newest events held, [`HELD`] at most: the
//! backfill to come brings the older ones) until a backfill brings it up to
//! the exchange's newest candle, then `Live` (events written as they come).
//! While a series is being backfilled its events are stashed and applied
//! after the pages, so nothing that arrives during the backfill is lost; an
//! event that skips a candle sends its series back for another backfill. A series whose
//! backfill is refused (an unknown symbol, a bad answer) is retried on its
//! own schedule, with backoff, while every other one goes on; exchange-wide
//! trouble (429, 418, 5xx, timeouts) pauses REST for everyone (see `rest`).
//!
//! Backfill pages go newest first (`endTime` paging, the exchange's clock
//! deciding what is newest), down to the series' stored latest candle or
//! its ring's worth, whichever comes first, and are written oldest first:
//! after an outage longer than the ring holds, the newest ring's worth is
//! brought and the gap before it reported (the store's rings are written in
//! time order, so older candles could not be put before newer ones).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::samples::{Samples, saturate};
use protocol::splitmix::SplitMix64;
use protocol::store::SeriesId;

use super::super::writer::{Applied, FeedWriter, Refused};
use super::conn::{self, EVENT_BYTES, Event, Stream, plan_groups};
use super::health::{LATENCY_SAMPLES, LiveHealth};
use super::options::{LiveOptions, POLL, REST_PAGE};
use super::rest::{KLINES_WEIGHT, Page, Rest, RestError};
use crate::instance::SharedStore;
use crate::kline::{BadLine, Kline};
use crate::locked::lock;

mod repair;
mod summary;
#[cfg(test)]
mod tests;

use repair::Repair;
use summary::SUMMARY_EVERY;

/// Events held per series during a repair, or stashed during a backfill,
/// at most (one per open time; past it the oldest goes, and is brought
/// again by REST).
pub const HELD: usize = 256;
/// A series' retry delays after refused backfills: doubled from the first
/// to the last.
pub const SERIES_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
/// Backfills a gap in the stream may start in a row without bringing a
/// candle (see `Series::gap_fills`).
const GAP_FILLS: u8 = 2;
/// Events taken from the queue between two looks at REST.
const BATCH: usize = 4_096;
/// Where a series is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its connection is not open yet: a backfill now could miss what
    /// happens before it opens.
    Unsubscribed,
    /// Waiting for a backfill, due then.
    Behind { due: Instant },
    /// Written as streamed.
    Live,
}

#[derive(Debug)]
struct Series {
    stream: Stream,
    phase: Phase,
    /// Failed backfills in a row.
    failures: u32,
    last_error: Option<String>,
    repair: Option<Repair>,
    /// Candles its backfills could not bring (outages longer than the
    /// ring), in all.
    missing: u64,
    /// Events that came while it waited for a backfill (bounded by
    /// [`HELD`]): the exchange's REST may answer before it counts the
    /// candle whose close was just streamed, so they are applied after.
    early: BTreeMap<i64, Kline>,
    /// Backfills in a row started by a gap in the stream that brought
    /// nothing: past [`GAP_FILLS`] the gap is the exchange's, and kept.
    gap_fills: u8,
}

/// The backfill in progress (one series at a time).
#[derive(Debug)]
struct Filling {
    series: usize,
    /// Candles wanted at most (the ring's).
    want: usize,
    /// The stored latest open time: paging stops there.
    latest: Option<i64>,
    /// The next page's `endTime`.
    end: Option<i64>,
    pages: Vec<Vec<Kline>>,
    have: usize,
    /// Events streamed meanwhile, by open time (the latest of each).
    stash: BTreeMap<i64, Kline>,
}

/// The sync thread.
pub struct Sync {
    pub(super) opts: LiveOptions,
    pub(super) store: SharedStore,
    pub(super) writer: FeedWriter<SeriesId>,
    pub(super) rest: Rest,
    pub(super) health: Arc<LiveHealth>,
    pub(super) shared: Arc<conn::Shared>,
    pub(super) rx: Receiver<Event>,
    /// Given to the connection threads, then dropped.
    pub(super) tx: Option<Sender<Event>>,
    pub(super) rng: SplitMix64,
    series: Vec<Series>,
    index: HashMap<Stream, usize>,
    groups: Vec<Vec<usize>>,
    filling: Option<Filling>,
    /// Where the search for the next series to backfill starts.
    cursor: usize,
    skipped: Vec<String>,
    summary_at: Instant,
}

impl Sync {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        opts: LiveOptions,
        store: SharedStore,
        writer: FeedWriter<SeriesId>,
        rest: Rest,
        health: Arc<LiveHealth>,
        shared: Arc<conn::Shared>,
        rx: Receiver<Event>,
        tx: Sender<Event>,
        seed: u64,
    ) -> Self {
        Self {
            opts,
            store,
            writer,
            rest,
            health,
            shared,
            rx,
            tx: Some(tx),
            rng: SplitMix64::new(seed),
            series: Vec::new(),
            index: HashMap::new(),
            groups: Vec::new(),
            filling: None,
            cursor: 0,
            skipped: Vec::new(),
            summary_at: Instant::now(),
        }
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    /// Runs until stopped; a fatal error (a symbol the exchange does not
    /// trade) is kept in the health for the coordinator to report.
    pub(super) fn run(mut self) {
        let threads = match self.start() {
            Ok(t) => t,
            // Stopped while it asked for the symbols: nothing went wrong.
            Err(_) if self.stopped() => return,
            Err(e) => {
                tracing::error!(error = %e, "the live feed cannot start");
                *lock(&self.health.fatal) = Some(e);
                self.shared.stop.store(true, Ordering::Release);
                return;
            }
        };
        while !self.stopped() {
            let now = Instant::now();
            let wake = self.next_wake(now);
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(event) => {
                    self.on_event(event);
                    for _ in 0..BATCH {
                        match self.rx.try_recv() {
                            Ok(e) => self.on_event(e),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.take_overflowed();
            self.expire_repairs();
            self.rest_step();
            if self.summary_at.elapsed() >= SUMMARY_EVERY {
                self.publish_summary();
            }
        }
        self.shared.stop.store(true, Ordering::Release);
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a live connection thread panicked");
            }
        }
    }

    /// Checks the symbols, lays out the series and starts a thread per
    /// connection group.
    fn start(&mut self) -> Result<Vec<JoinHandle<()>>, String> {
        let symbols = self.check_symbols()?;
        let groups = self.lay_out(&symbols);
        let tx = self.tx.take().ok_or("started twice")?;
        let mut threads = Vec::with_capacity(groups.len());
        for g in groups {
            let name = format!("live-conn-{}", g.index);
            let worker =
                conn::Worker::new(g, Arc::clone(&self.shared), tx.clone(), self.rng.next_u64());
            match std::thread::Builder::new()
                .name(name)
                .spawn(move || worker.run())
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.shared.stop.store(true, Ordering::Release);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(format!("starting a live connection thread: {e}"));
                }
            }
        }
        Ok(threads)
    }

    /// A series per (symbol, interval), in connection groups, each waiting
    /// for its connection.
    fn lay_out(&mut self, symbols: &[protocol::SymbolName]) -> Vec<conn::Group> {
        let streams: Vec<Stream> = symbols
            .iter()
            .flat_map(|s| self.opts.intervals.iter().map(move |&i| (s.clone(), i)))
            .collect();
        let groups = plan_groups(&self.opts.ws_url, &streams);
        for g in &groups {
            let mut members = Vec::with_capacity(g.streams.len());
            for s in &g.streams {
                self.index.insert(s.clone(), self.series.len());
                members.push(self.series.len());
                self.series.push(Series {
                    stream: s.clone(),
                    phase: Phase::Unsubscribed,
                    failures: 0,
                    last_error: None,
                    repair: None,
                    missing: 0,
                    early: BTreeMap::new(),
                    gap_fills: 0,
                });
            }
            self.groups.push(members);
        }
        tracing::info!(
            series = streams.len(),
            connections = groups.len(),
            "live feed: streams split over connections"
        );
        groups
    }

    /// The symbols to subscribe: those the exchange trades. Unknown or
    /// halted ones are an error naming them, or left out with
    /// `--skip-unknown`. An exchange that cannot be asked (down, or
    /// refusing) leaves them unchecked: a bad one then fails its own
    /// backfills and is reported, without holding up the others.
    fn check_symbols(&mut self) -> Result<Vec<protocol::SymbolName>, String> {
        let mut tries = 0;
        let info = loop {
            if self.stopped() {
                return Err("stopped".into());
            }
            match self.rest.exchange_info() {
                Ok(info) => break Some(info),
                Err(RestError::Paused { until, .. }) => {
                    let wait = until.saturating_duration_since(Instant::now());
                    std::thread::sleep(wait.min(POLL));
                }
                Err(e @ RestError::Exchange(_)) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(error = %e, "asking the exchange for its symbols");
                }
                Err(e) => {
                    tracing::warn!(error = %e,
                        "could not check --symbols against the exchange: going on unchecked (a bad symbol's backfills will fail and be reported)");
                    break None;
                }
            }
        };
        let symbols = self.opts.symbols.clone();
        let Some(info) = info else {
            return Ok(symbols);
        };
        let mut bad = Vec::new();
        let mut good = Vec::new();
        for s in symbols {
            match info.get(s.as_str()).map(String::as_str) {
                Some("TRADING") => good.push(s),
                Some(status) => bad.push(format!("{s} is {status}, not TRADING")),
                None => bad.push(format!("{s} is not listed by the exchange")),
            }
        }
        if bad.is_empty() {
            return Ok(good);
        }
        if !self.opts.skip_unknown {
            return Err(format!(
                "--symbols: {}; fix --symbols, or pass --skip-unknown to go on without them",
                bad.join(", ")
            ));
        }
        for b in &bad {
            tracing::warn!(symbol = %b, "--skip-unknown: left out");
        }
        if good.is_empty() {
            return Err(format!(
                "--symbols: {}: no symbol left to stream",
                bad.join(", ")
            ));
        }
        self.skipped = bad;
        Ok(good)
    }

    /// When the loop has something to do without an event: a REST request
    /// ready, a repair due or expiring, a series' retry due; at the latest
    /// after [`POLL`] (to see the stop flag).
    fn next_wake(&mut self, now: Instant) -> Instant {
        let mut wake = now + POLL;
        let mut work = self.filling.is_some();
        for s in &self.series {
            if let Some(r) = &s.repair {
                wake = wake.min(r.deadline);
                work |= r.due <= now;
                wake = wake.min(r.due.max(now));
            }
            if let Phase::Behind { due } = s.phase {
                work |= due <= now;
                wake = wake.min(due.max(now));
            }
        }
        if work {
            wake = wake.min(self.rest.next_slot(KLINES_WEIGHT, now));
        }
        wake
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Opened { group, overlap } => {
                if overlap {
                    return;
                }
                // What closed while no connection was open: backfilled.
                let now = Instant::now();
                for k in self.groups.get(group).cloned().unwrap_or_default() {
                    self.fall_behind(k, now);
                }
            }
            Event::Kline(kline, received) => {
                self.shared.queued.fetch_sub(EVENT_BYTES, Ordering::AcqRel);
                let stream = (kline.symbol.clone(), kline.interval);
                let Some(&k) = self.index.get(&stream) else {
                    return;
                };
                if let Some(f) = self.filling.as_mut().filter(|f| f.series == k) {
                    hold(&mut f.stash, *kline);
                    return;
                }
                match self.series[k].phase {
                    Phase::Behind { .. } | Phase::Unsubscribed => {
                        self.health.deferred.fetch_add(1, Ordering::Relaxed);
                        hold(&mut self.series[k].early, *kline);
                    }
                    Phase::Live => self.live(k, *kline, Some(received)),
                }
            }
        }
    }

    /// Series `k` needs a backfill now (its connection was replaced without
    /// overlap, or its events overflowed the queue).
    fn fall_behind(&mut self, k: usize, now: Instant) {
        let s = &mut self.series[k];
        if let Some(f) = self.filling.take_if(|f| f.series == k) {
            // Started over: the pages so far may miss what was dropped.
            for kline in f.stash.into_values() {
                hold(&mut s.early, kline);
            }
        }
        s.repair = None;
        if matches!(s.phase, Phase::Live | Phase::Unsubscribed) {
            s.phase = Phase::Behind { due: now };
        }
    }

    fn take_overflowed(&mut self) {
        let streams: Vec<Stream> = lock(&self.shared.overflowed).drain().collect();
        let now = Instant::now();
        for s in streams {
            if let Some(&k) = self.index.get(&s) {
                self.fall_behind(k, now);
            }
        }
    }

    /// A streamed event of a live series. A candle that would be closed by
    /// its successor without having had its `x: true` is repaired first.
    fn live(&mut self, k: usize, kline: Kline, received: Option<Instant>) {
        let open = kline.candle.open_time;
        if self.series[k].repair.is_some() {
            return self.while_repairing(k, kline, received);
        }
        let latest = self.writer.latest(&kline.symbol, kline.interval);
        if let Some((latest, _)) = latest
            && open > latest + kline.interval.millis() as i64
            && self.series[k].gap_fills < GAP_FILLS
        {
            // A candle never streamed (or not yet counted by REST when the
            // backfill asked): brought by a backfill, this event after it.
            let now = Instant::now();
            self.fall_behind(k, now);
            hold(&mut self.series[k].early, kline);
            return;
        }
        if let Some((latest, false)) = latest
            && open > latest
        {
            return self.start_repair(k, latest, kline);
        }
        self.write(&kline, received);
    }

    /// Writes one candle and publishes it.
    fn write(&mut self, kline: &Kline, received: Option<Instant>) {
        let mut store = self.store.lock();
        match self.writer.apply(&mut *store, kline) {
            Ok(Applied::Written) => {
                store.publish();
                drop(store);
                if let Some(received) = received {
                    lock(&self.health.latency)
                        .get_or_insert_with(|| Samples::new(LATENCY_SAMPLES))
                        .push(saturate(received.elapsed().as_nanos()));
                    if self.opts.trace {
                        let mut r = lock(&self.health.receipts);
                        if r.len() < LATENCY_SAMPLES {
                            r.push((kline.candle.open_time, received));
                        }
                    }
                }
                *lock(&self.health.counters) = self.writer.counters();
            }
            Ok(Applied::Repeat) => {}
            Err(Refused::Bad(BadLine::Stale { .. })) => {
                self.health.stale.fetch_add(1, Ordering::Relaxed);
            }
            Err(Refused::Bad(e)) => {
                drop(store);
                self.health.bad(&e);
            }
            Err(Refused::Store(e)) => {
                drop(store);
                self.health.bad(&BadLine::Json(e.to_string()));
            }
        }
    }

    /// At most one REST request: a due repair first, then the backfill in
    /// progress, then the next series due for one.
    fn rest_step(&mut self) {
        let now = Instant::now();
        if self.rest.next_slot(KLINES_WEIGHT, now) > now {
            return;
        }
        if let Some(k) = (0..self.series.len())
            .find(|&k| self.series[k].repair.as_ref().is_some_and(|r| r.due <= now))
        {
            return self.repair_step(k);
        }
        if self.filling.is_none() {
            let n = self.series.len();
            let due = (0..n)
                .map(|d| (self.cursor + d) % n)
                .find(|&k| matches!(self.series[k].phase, Phase::Behind { due } if due <= now));
            let Some(k) = due else { return };
            self.cursor = (k + 1) % n.max(1);
            let (symbol, interval) = &self.series[k].stream;
            self.filling = Some(Filling {
                series: k,
                want: self
                    .opts
                    .backfill
                    .get(interval)
                    .copied()
                    .unwrap_or(REST_PAGE)
                    .max(1),
                latest: self.writer.latest(symbol, *interval).map(|(t, _)| t),
                end: None,
                pages: Vec::new(),
                have: 0,
                stash: std::mem::take(&mut self.series[k].early),
            });
        }
        self.fill_step();
    }

    /// One page of the backfill in progress; the last one writes them all.
    fn fill_step(&mut self) {
        let Some(f) = self.filling.as_mut() else {
            return;
        };
        let k = f.series;
        let (symbol, interval) = self.series[k].stream.clone();
        let limit = (f.want - f.have.min(f.want)).clamp(1, REST_PAGE);
        match self
            .rest
            .klines(&symbol, interval, Page::Before(f.end), limit)
        {
            Ok(rows) => {
                let oldest = rows.first().map(|r| r.candle.open_time);
                let n = rows.len();
                f.have += n;
                f.pages.push(rows);
                let reached = matches!((oldest, f.latest), (Some(o), Some(l)) if o <= l);
                match oldest {
                    Some(o) if n >= limit && !reached && f.have < f.want => f.end = Some(o - 1),
                    _ => {
                        self.series[k].failures = 0;
                        self.finish_fill();
                    }
                }
            }
            Err(RestError::Paused { .. }) => {}
            Err(e) => {
                self.health
                    .backfill_failures
                    .fetch_add(1, Ordering::Relaxed);
                let s = &mut self.series[k];
                s.failures += 1;
                s.last_error = Some(e.to_string());
                // A refusal is this series' own; other trouble is the
                // exchange's, and pauses everyone (see `rest`) unless it
                // keeps coming back for this series.
                if e.is_refusal() || s.failures >= 3 {
                    let wait = SERIES_RETRY.0 * 2u32.saturating_pow(s.failures.min(16) - 1);
                    let wait = wait
                        .min(SERIES_RETRY.1)
                        .mul_f64(0.75 + 0.25 * self.rng.unit());
                    if s.failures.is_power_of_two() {
                        tracing::warn!(symbol = %symbol, %interval, failures = s.failures, retry_ms = wait.as_millis() as u64,
                            error = %e, "backfill failed: this series is retried on its own schedule, the others go on");
                    }
                    s.phase = Phase::Behind {
                        due: Instant::now() + wait,
                    };
                    self.filling = None;
                }
                self.health.error(e.to_string());
            }
        }
    }

    /// Writes a finished backfill's pages oldest first, then what streamed
    /// meanwhile; the series is live from here.
    fn finish_fill(&mut self) {
        let Some(f) = self.filling.take() else { return };
        let k = f.series;
        let (symbol, interval) = self.series[k].stream.clone();
        let len = interval.millis() as i64;
        let oldest = f
            .pages
            .last()
            .and_then(|p| p.first())
            .map(|r| r.candle.open_time);
        let missing = match (f.latest, oldest) {
            (Some(l), Some(o)) if o > l + len => ((o - l) / len - 1) as u64,
            _ => 0,
        };
        let mut store = self.store.lock();
        let mut written = 0;
        for kline in f.pages.iter().rev().flatten() {
            match self.writer.apply(&mut *store, kline) {
                Ok(Applied::Written) => written += 1,
                Ok(Applied::Repeat) | Err(Refused::Bad(BadLine::Stale { .. })) => {}
                Err(e) => {
                    tracing::warn!(%symbol, %interval, error = %e, "a backfilled candle was refused");
                }
            }
        }
        if written > 0 {
            store.publish();
        }
        drop(store);
        self.health.backfilled.fetch_add(written, Ordering::Relaxed);
        *lock(&self.health.counters) = self.writer.counters();
        if missing > 0 {
            tracing::warn!(%symbol, %interval, missing,
                "the outage was longer than the ring holds: the newest candles were brought, a gap before them remains");
        }
        let s = &mut self.series[k];
        // Kept: a later backfill does not bring these back.
        s.missing += missing;
        s.last_error = None;
        s.phase = Phase::Live;
        s.gap_fills = if written > 0 {
            0
        } else {
            s.gap_fills.saturating_add(1)
        };
        // What streamed meanwhile; should it skip ahead, the series falls
        // behind again and the rest waits for that backfill.
        for kline in f.stash.into_values() {
            self.resume(k, kline);
        }
    }
}

/// Keeps `kline` as its open time's latest event, dropping the oldest past
/// [`HELD`] (a backfill brings it back).
fn hold(held: &mut BTreeMap<i64, Kline>, kline: Kline) {
    held.insert(kline.candle.open_time, kline);
    while held.len() > HELD {
        held.pop_first();
    }
}
