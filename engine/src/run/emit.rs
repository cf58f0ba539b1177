//! Signals from a worker's reader thread straight to the output thread.
//!
//! A signal is the one thing on the latency path, so it does not queue
//! behind the coordinator loop's other work (status requests, the feed,
//! supervision): the reader thread that decoded it checks it here and hands
//! its line to the output thread. What decides whether a signal is printed
//! (which incarnation of a slot counts, which traders a slot holds, the
//! deduplicator) lives here under one mutex; the loop updates it when it
//! changes them, and the change applies to the next signal at once.
//!
//! Order: a reader thread emits a worker's signals before it forwards the
//! frames that follow them (a PONG proving they were sent), so the loop
//! never sees progress whose signals are not out yet.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use protocol::message::Signal;
use protocol::samples::{Samples, saturate};

use super::dedup::Dedup;
use super::sink::{Batch, Output, SinkSpec};
use crate::signal_line::SignalLine;

/// Publish instants kept for the signal latency.
const PUBLISH_TIMES: usize = 4096;
/// Latency samples kept for the percentiles.
const LATENCY_SAMPLES: usize = 4096;
/// How often a reader thread retries a full output queue.
const OUTPUT_RETRY: Duration = Duration::from_millis(1);

/// A sink whose queue is full falls behind (see [`super::sink`]): it is
/// handed nothing until its queue has drained; then the workers judge again
/// from `points` (per slot, the publish confirmed now: every signal it is
/// not handed from here on is of a later candle) and it takes what it lacks.
fn fall_behind(f: &mut SinkOut, points: Vec<u64>) {
    tracing::error!(sink = %f.spec, queued = f.output.queued(), bound = f.bound,
        "a sink is not keeping up: its queue is full, so it is handed nothing until it drains; \
         then it is caught up from the candles the store still holds (--sink-queue moves the bound)");
    f.output.error(format!(
        "behind: its queue of {} signals was full (--sink-queue); caught up once it drains",
        f.bound
    ));
    f.behind = Some(points);
}

/// Hands a share of signals to a durable sink without waiting (its queue
/// is bounded by the caller, in signals).
fn offer(f: &mut SinkOut, share: Share, published: Option<Instant>) {
    let batch = Batch {
        text: share.text,
        lines: share.lines,
        newest: share.newest,
        published,
    };
    let sent = f.out.as_ref().is_some_and(|out| out.send(batch).is_ok());
    f.emitted += share.lines;
    f.output.handed(share.lines, share.newest);
    if !sent {
        // Closed at teardown, or its thread is gone: not delivered.
        f.output.count(share.lines, false);
    }
}

/// Counters for `status` and the run's summary.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Signals printed.
    pub emitted: u64,
    /// Repeats dropped.
    pub duplicates: u64,
    /// Latency samples held.
    pub latency_samples: usize,
    /// Candle published to signal out, median, us.
    pub latency_p50_us: Option<u32>,
    /// The same, 99th percentile.
    pub latency_p99_us: Option<u32>,
}

/// Shared between the loop and the reader threads.
///
/// A stdout that does not keep up fills the output queue; a reader thread
/// then waits for room (it must not drop a signal), and meanwhile does not
/// read its worker's answers. [`Emitter::output_stalled`] tells the loop, so
/// it does not take the missing PONGs for a hung worker.
#[derive(Debug)]
pub struct Emitter {
    inner: Mutex<Inner>,
    /// Reader threads waiting for room in the output queue.
    waiting: AtomicUsize,
    /// What the output thread wrote.
    output: Arc<Output>,
}

/// A durable sink (file, webhook) as the emitter sees it: what it holds,
/// where its lines go.
#[derive(Debug)]
struct SinkOut {
    spec: SinkSpec,
    /// What it was handed (or holds from before): a signal at or below is
    /// not handed again.
    dedup: Dedup,
    out: Option<Sender<Batch>>,
    output: Arc<Output>,
    /// Signals handed to it this run.
    emitted: u64,
    /// Signals it may hold queued, at most (`--sink-queue`).
    bound: u64,
    /// Its queue was full: it is handed nothing until it has caught up.
    /// Per slot, the publish the slot had confirmed then: every signal not
    /// handed since is of a candle published after it.
    behind: Option<Vec<u64>>,
    /// Times it fell behind and was caught up.
    catch_ups: u64,
    /// Caught up: the workers judge again what it missed, and it takes it.
    /// Until they have (the coordinator says so), it counts as behind.
    catching: bool,
    /// Traders removed (or quarantined) while it was behind or catching up:
    /// what they would have given it since it fell behind cannot be
    /// judged again.
    lost_traders: Vec<String>,
    /// Its position at start: per interval, its newest signal's open time.
    start_newest: std::collections::BTreeMap<protocol::Interval, i64>,
    /// What a live start could not bring back to it (see
    /// [`super::sink::out_of_reach`]); `None` until checked.
    out_of_reach: Option<Vec<String>>,
}

/// A durable sink at the end: spec, signals handed, their fate, behind or
/// catching up, traders removed while it was.
pub type SinkDelivery = (String, u64, Arc<Output>, bool, Vec<String>);

/// One sink's share of a frame's signals, built under the lock.
#[derive(Debug, Default, Clone)]
struct Share {
    text: Vec<u8>,
    lines: u64,
    newest: i64,
    /// The latest close among them (wall ms).
    closes_at: i64,
}

#[derive(Debug)]
struct Inner {
    /// Per slot: the incarnation whose signals count (none between them).
    accept: Vec<Option<u64>>,
    /// Per slot: the traders it holds.
    traders: Vec<HashSet<String>>,
    /// Per slot: signals received (printed or not).
    received: Vec<u64>,
    /// Per slot: when its live incarnation's last signals arrived.
    last_signals: Vec<Option<Instant>>,
    /// Per slot: the publish it has confirmed (all its signals up to it sent).
    confirmed: Vec<u64>,
    dedup: Dedup,
    /// When each recent publish happened, by the delivery time of its last
    /// batch (ascending; the last [`PUBLISH_TIMES`]).
    publish_times: VecDeque<(i64, Instant)>,
    /// Candle published to signal handed to the output thread, us.
    latency: Samples,
    emitted: u64,
    /// The output thread's queue; `None` once closed.
    out: Option<SyncSender<Batch>>,
    /// When a reader last got room after waiting for it.
    resumed: Option<Instant>,
    /// Whether stdout is a sink (`--sink`; by default it is the only one).
    stdout: bool,
    /// `--signals-from now`: signals of candles closing at or before this
    /// (wall ms) go nowhere.
    closing_after: Option<i64>,
    /// The durable sinks, each with its own watermarks.
    sinks: Vec<SinkOut>,
    /// Set at teardown: from when, and after how long without the output
    /// moving, a reader stops waiting for room and drops what it holds.
    give_up: Option<(Instant, Duration)>,
}

impl Emitter {
    /// For `slots` worker slots, printing through `out`, whose thread
    /// counts into `output`.
    pub fn new(slots: usize, out: SyncSender<Batch>, output: Arc<Output>) -> Self {
        let inner = Mutex::new(Inner {
            accept: vec![None; slots],
            traders: vec![HashSet::new(); slots],
            received: vec![0; slots],
            last_signals: vec![None; slots],
            confirmed: vec![0; slots],
            dedup: Dedup::default(),
            publish_times: VecDeque::with_capacity(PUBLISH_TIMES),
            latency: Samples::new(LATENCY_SAMPLES),
            emitted: 0,
            out: Some(out),
            resumed: None,
            give_up: None,
            stdout: true,
            closing_after: None,
            sinks: Vec::new(),
        });
        Self {
            inner,
            waiting: AtomicUsize::new(0),
            output,
        }
    }

    /// From now on only signals of candles closing after `ms` go out.
    pub fn only_closing_after(&self, ms: i64) {
        self.lock().closing_after = Some(ms);
    }

    /// Whether signals are printed on stdout.
    pub fn print_to_stdout(&self, on: bool) {
        self.lock().stdout = on;
    }

    /// Adds a durable sink that holds what `dedup` marks, its lines queued
    /// to `out` (at most `bound` signals at a time), counted in `output`.
    pub fn add_sink(
        &self,
        spec: SinkSpec,
        dedup: Dedup,
        out: Sender<Batch>,
        output: Arc<Output>,
        bound: u64,
    ) {
        let start_newest = super::sink::newest_per_interval(&dedup);
        self.lock().sinks.push(SinkOut {
            spec,
            start_newest,
            out_of_reach: None,
            dedup,
            out: Some(out),
            output,
            emitted: 0,
            bound,
            behind: None,
            catch_ups: 0,
            catching: false,
            lost_traders: Vec::new(),
        });
    }

    /// Slot `s` has confirmed publish `p`.
    pub fn confirmed(&self, s: usize, p: u64) {
        if let Some(c) = self.lock().confirmed.get_mut(s) {
            *c = p;
        }
    }

    /// A sink behind whose queue has drained is caught up: from now on no
    /// slot's signals count until its next incarnation (in flight ones of
    /// the present ones would pass the sink's watermark over what it
    /// missed), and the sinks that were behind take signals again. Returns,
    /// per slot, the publish to judge again from (the least of the behind
    /// points); the caller replaces every worker from there.
    pub fn take_catch_up(&self) -> Option<Vec<u64>> {
        let mut inner = self.lock();
        let mut from: Option<Vec<u64>> = None;
        for f in &mut inner.sinks {
            if f.output.queued() > 0 {
                continue;
            }
            let Some(points) = f.behind.take() else {
                continue;
            };
            f.catch_ups += 1;
            f.catching = true;
            tracing::warn!(sink = %f.spec, behind = f.output.behind(),
                "a sink that fell behind has drained its queue: the workers judge again from its behind point");
            from = Some(match from {
                None => points,
                Some(prev) => prev.iter().zip(&points).map(|(a, b)| *a.min(b)).collect(),
            });
        }
        if from.is_some() {
            inner.accept.iter_mut().for_each(|a| *a = None);
        }
        from
    }

    /// A live start's backfill brought candles from `reach` (per interval,
    /// the oldest open time held): each durable sink whose position is
    /// older is told what it cannot get back. Returns how many were told.
    pub fn check_reach(
        &self,
        reach: &std::collections::BTreeMap<protocol::Interval, i64>,
    ) -> usize {
        let mut inner = self.lock();
        let mut told = 0;
        for f in &mut inner.sinks {
            let gaps = super::sink::out_of_reach(&f.start_newest, reach);
            for gap in &gaps {
                tracing::warn!(sink = %f.spec, "out of the backfill's reach: {gap}");
                f.output
                    .error(format!("out of the backfill's reach: {gap}"));
            }
            told += usize::from(!gaps.is_empty());
            f.out_of_reach = Some(gaps);
        }
        told
    }

    /// Whether some behind sink delivered something within `d`.
    pub fn sinks_moved_within(&self, d: Duration) -> bool {
        self.lock()
            .sinks
            .iter()
            .filter(|f| f.behind.is_some() || f.catching)
            .any(|f| f.output.last_moved().elapsed() < d)
    }

    /// Whether a sink is behind now, or catching up.
    pub fn any_behind(&self) -> bool {
        self.lock()
            .sinks
            .iter()
            .any(|f| f.behind.is_some() || f.catching)
    }

    /// Whether every durable sink has confirmed everything it was handed
    /// and none is behind: only then may a feed's saved position pass what
    /// the workers judged (their signals are all delivered).
    pub fn sinks_settled(&self) -> bool {
        self.lock()
            .sinks
            .iter()
            .all(|f| f.behind.is_none() && !f.catching && f.output.queued() == 0)
    }

    /// The workers have judged again everything a catch-up was for.
    pub fn caught_up(&self) {
        for f in &mut self.lock().sinks {
            f.catching = false;
        }
    }

    /// Each sink as `status` shows it: what it was handed this run, what
    /// it delivered (written; for a file, fsynced; for a webhook, answered
    /// 2xx), what waits, failed or was refused, how far its confirmed
    /// position trails, and how many series it holds a watermark for.
    pub fn sinks_status(&self) -> Vec<serde_json::Value> {
        let inner = self.lock();
        let with = |mut v: serde_json::Value, extra: serde_json::Value| {
            if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
                v.extend(extra);
            }
            v
        };
        let stdout = inner.stdout.then(|| {
            let mut v = with(
                serde_json::json!({
                    "kind": "stdout",
                    "spec": "stdout",
                    "emitted": inner.emitted,
                    "closed": self.output.closed(),
                    "series": inner.dedup.len(),
                }),
                self.output.status(),
            );
            // Stdout's latency ends where its line is handed to its thread.
            v["latency_p50_us"] = inner.latency.quantile(0.5).into();
            v["latency_p99_us"] = inner.latency.quantile(0.99).into();
            v
        });
        stdout
            .into_iter()
            .chain(inner.sinks.iter().map(|f| {
                with(
                    serde_json::json!({
                        "kind": f.spec.kind(),
                        "spec": f.spec.to_string(),
                        "emitted": f.emitted,
                        "series": f.dedup.len(),
                        "queue_bound": f.bound,
                        "is_behind": f.behind.is_some() || f.catching,
                        "catching_up": f.catching,
                        "catch_ups": f.catch_ups,
                        "lost_traders": f.lost_traders,
                        "out_of_reach": f.out_of_reach,
                    }),
                    f.output.status(),
                )
            }))
            .collect()
    }

    /// Per durable sink: its spec, signals handed to it this run, what
    /// became of them, whether it is behind (or catching up) now, and the
    /// traders removed while it was.
    pub fn sink_delivery(&self) -> Vec<SinkDelivery> {
        self.lock()
            .sinks
            .iter()
            .map(|f| {
                let spec = f.spec.to_string();
                let behind = f.behind.is_some() || f.catching;
                (
                    spec,
                    f.emitted,
                    f.output.clone(),
                    behind,
                    f.lost_traders.clone(),
                )
            })
            .collect()
    }

    /// A panic elsewhere while the lock was held leaves nothing half-done
    /// that matters more than printing the next signal, so poison is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on slot `s`'s signals count only from incarnation `no`
    /// (`None`: from none).
    pub fn accept(&self, s: usize, no: Option<u64>) {
        let mut inner = self.lock();
        if let Some(a) = inner.accept.get_mut(s) {
            *a = no;
        }
        if let Some(t) = inner.last_signals.get_mut(s) {
            *t = None;
        }
    }

    /// When slot `s`'s live incarnation last sent signals. A worker whose
    /// signals keep arriving is neither hung nor stuck, even while its PONGs
    /// wait behind them in its socket for a reader thread that is busy with
    /// its burst (a debug-build coordinator took 50 s over a million).
    pub fn last_signals(&self, s: usize) -> Option<Instant> {
        self.lock().last_signals.get(s).copied().flatten()
    }

    /// Slot `s` now holds these traders: signals of any other are dropped
    /// (a trader removed a moment ago may still have signals in flight).
    pub fn holds<'a>(&self, s: usize, ids: impl Iterator<Item = &'a str>) {
        let mut inner = self.lock();
        let watch = inner.sinks.iter().any(|f| f.behind.is_some() || f.catching);
        let before = match inner.traders.get(s) {
            Some(t) if watch => t.clone(),
            _ => HashSet::new(),
        };
        if let Some(t) = inner.traders.get_mut(s) {
            t.clear();
            t.extend(ids.map(str::to_owned));
        }
        let Inner { traders, sinks, .. } = &mut *inner;
        for gone in before
            .iter()
            .filter(|id| !traders.iter().any(|t| t.contains(*id)))
        {
            for f in sinks
                .iter_mut()
                .filter(|f| f.behind.is_some() || f.catching)
            {
                tracing::error!(sink = %f.spec, trader = %gone,
                    "a trader left while this sink was behind: its signals since then cannot be judged again for it");
                f.output
                    .error(format!("trader {gone} left while this sink was behind"));
                if f.lost_traders.len() < 100 {
                    f.lost_traders.push(gone.clone());
                }
            }
        }
        // A trader no slot holds any more takes its stdout watermarks with
        // it. Not the file sinks': theirs come from the file at start, before
        // every slot has been told its traders (pruning here would forget
        // slot 1's marks while slot 0 is told, and repeat them into the
        // file); they are bounded by the series the file holds.
        let Inner { traders, dedup, .. } = &mut *inner;
        dedup.keep_only(|id| traders.iter().any(|t| t.contains(id)));
    }

    /// A publish of the finite feed whose last batch was delivered at `at`.
    pub fn published(&self, at: i64) {
        let mut inner = self.lock();
        if inner.publish_times.len() == PUBLISH_TIMES {
            inner.publish_times.pop_front();
        }
        inner.publish_times.push_back((at, Instant::now()));
    }

    /// Signals from incarnation `no` of slot `s`, in order: each printed
    /// unless that incarnation no longer counts, its trader left the slot,
    /// or it was printed before. The lines are queued in one piece, outside
    /// the lock, so a stdout nobody reads blocks this reader thread only.
    pub fn signals(&self, s: usize, no: u64, signals: &[Signal]) {
        let mut lines = Vec::new();
        let mut count = 0;
        let out = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.accept.get(s).copied().flatten() != Some(no) {
                return;
            }
            inner.last_signals[s] = Some(Instant::now());
            // A sink whose queue cannot take this frame falls behind before
            // any of it is marked, so its watermarks stay what it was handed.
            for f in &mut inner.sinks {
                if f.behind.is_some() {
                    continue;
                }
                // Only what it would be handed counts (repeats of a replay it
                // already holds take no room); the exact count costs a
                // lookup per signal, so it is made only near the bound.
                let queued = f.output.queued();
                if queued + signals.len() as u64 > f.bound
                    && queued + signals.iter().filter(|x| f.dedup.is_new(x)).count() as u64
                        > f.bound
                {
                    fall_behind(f, inner.confirmed.clone());
                }
            }
            let mut shares = vec![Share::default(); inner.sinks.len()];
            for signal in signals {
                inner.received[s] += 1;
                if !inner.traders[s].contains(&signal.trader) {
                    tracing::debug!(trader = %signal.trader, "signal of a removed trader dropped");
                    continue;
                }
                let closes_at = signal.open_time + signal.interval.millis() as i64;
                if inner.closing_after.is_some_and(|t| closes_at <= t) {
                    continue;
                }
                let mut line = Vec::new();
                for (f, share) in inner.sinks.iter_mut().zip(shares.iter_mut()) {
                    if f.behind.is_some() {
                        if f.dedup.is_new(signal) {
                            f.output.fell_behind(1);
                        }
                        continue;
                    }
                    if f.dedup.first(signal) {
                        if line.is_empty() {
                            SignalLine::new(signal, Some(s as u32)).write_to(&mut line);
                            line.push(b'\n');
                        }
                        share.text.extend_from_slice(&line);
                        share.lines += 1;
                        share.newest = share.newest.max(signal.open_time);
                        share.closes_at = share.closes_at.max(closes_at);
                    }
                }
                if !inner.stdout || !inner.dedup.first(signal) {
                    continue;
                }
                // The candle became visible with the first publish whose
                // last batch was delivered at or after its close.
                let k = inner
                    .publish_times
                    .partition_point(|(at, _)| *at < closes_at);
                if let Some((_, published)) = inner.publish_times.get(k) {
                    let us = saturate(published.elapsed().as_micros());
                    inner.latency.push(us);
                }
                inner.emitted += 1;
                count += 1;
                if line.is_empty() {
                    SignalLine::new(signal, Some(s as u32)).write_to(&mut line);
                    line.push(b'\n');
                }
                lines.extend_from_slice(&line);
            }
            for (f, share) in inner.sinks.iter_mut().zip(shares) {
                if share.lines > 0 {
                    let k = inner
                        .publish_times
                        .partition_point(|(at, _)| *at < share.closes_at);
                    let published = inner.publish_times.get(k).map(|(_, t)| *t);
                    offer(f, share, published);
                }
            }
            inner.out.clone()
        };
        if lines.is_empty() {
            return;
        }
        let Some(out) = out else {
            tracing::warn!("output closed: signals not printed");
            self.output.count(count, false);
            return;
        };
        self.queue(
            &out,
            Batch {
                text: lines,
                lines: count,
                newest: 0,
                published: None,
            },
            &self.output,
        );
    }

    /// Whether teardown gave up on the output: it has not moved for the
    /// drain time since teardown began (or since it last moved).
    fn given_up(&self, output: &Output) -> bool {
        let Some((since, within)) = self.lock().give_up else {
            return false;
        };
        since.max(output.last_moved()) + within <= Instant::now()
    }

    /// Queues `batch` for `output`'s thread, waiting for room if its queue
    /// is full (until teardown gives up on an output that stopped moving).
    fn queue(&self, out: &SyncSender<Batch>, mut batch: Batch, output: &Output) {
        let mut waited = false;
        loop {
            match out.try_send(batch) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    if self.given_up(output) {
                        tracing::error!(
                            lines = back.lines,
                            "an output (stdout or a sink) is not taking signals: not delivered"
                        );
                        output.count(back.lines, false);
                        break;
                    }
                    if !waited {
                        waited = true;
                        self.waiting.fetch_add(1, Ordering::AcqRel);
                        tracing::warn!(
                            "an output (stdout or a sink) is not keeping up: signals wait for it"
                        );
                    }
                    batch = back;
                    std::thread::sleep(OUTPUT_RETRY);
                }
                Err(TrySendError::Disconnected(back)) => {
                    tracing::warn!("an output thread is gone: signals not delivered");
                    output.count(back.lines, false);
                    break;
                }
            }
        }
        if waited {
            self.lock().resumed = Some(Instant::now());
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether a reader thread waits for stdout now, or did less than
    /// `grace` ago: its worker's answers were (or still are) unread, so
    /// their deadlines say nothing about the worker.
    pub fn output_stalled(&self, grace: Duration) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
            || self.lock().resumed.is_some_and(|t| t.elapsed() < grace)
    }

    /// Teardown: readers still waiting for room give up once the output
    /// has not moved for `within` (a slow reader of stdout is waited for as
    /// long as it keeps reading).
    pub fn give_up_after(&self, within: Duration) {
        self.lock().give_up = Some((Instant::now(), within));
    }

    /// Whether stdout is closed (see [`spawn_output`]).
    pub fn stdout_closed(&self) -> bool {
        self.output.closed()
    }

    /// Signals handed to the output so far, and what became of them.
    pub fn delivery(&self) -> (u64, &Output) {
        (self.lock().emitted, &self.output)
    }

    /// One signal: [`Emitter::signals`].
    pub fn signal(&self, s: usize, no: u64, signal: &Signal) {
        self.signals(s, no, std::slice::from_ref(signal));
    }

    /// Signals received from slot `s`.
    pub fn received(&self, s: usize) -> u64 {
        self.lock().received.get(s).copied().unwrap_or(0)
    }

    /// The figures now (the percentiles sort a copy of the samples).
    pub fn figures(&self) -> Figures {
        let inner = self.lock();
        let (emitted, duplicates, latency) =
            (inner.emitted, inner.dedup.duplicates, inner.latency.clone());
        drop(inner);
        Figures {
            emitted,
            duplicates,
            latency_samples: latency.len(),
            latency_p50_us: latency.quantile(0.5),
            latency_p99_us: latency.quantile(0.99),
        }
    }

    /// Closes the output queues: each output thread ends once it has
    /// written what is queued.
    pub fn close_output(&self) {
        let mut inner = self.lock();
        inner.out = None;
        for f in &mut inner.sinks {
            f.out = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Interval;

    fn signal(trader: &str, open_time: i64) -> Signal {
        Signal {
            trader: trader.into(),
            symbol: "BTCUSDT".into(),
            interval: Interval::M1,
            open_time,
            close: 1.0,
            labels: Default::default(),
            values: Default::default(),
        }
    }

    #[test]
    fn prints_once_what_the_live_incarnation_of_a_holding_slot_sends() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let e = Emitter::new(2, tx, Arc::default());
        e.holds(0, ["a", "b"].into_iter());
        e.accept(0, Some(3));
        e.published(60_000);
        e.signal(0, 3, &signal("a", 0));
        e.signal(0, 3, &signal("a", 0)); // a repeat (a replacement re-sent it)
        e.signal(0, 2, &signal("b", 0)); // an incarnation already replaced
        e.signal(1, 0, &signal("b", 0)); // a slot with no live incarnation
        e.holds(0, ["a"].into_iter());
        e.signal(0, 3, &signal("b", 60_000)); // removed a moment ago
        e.signal(0, 3, &signal("a", 60_000));
        let lines: Vec<String> = rx
            .try_iter()
            .map(|b| String::from_utf8_lossy(&b.text).into_owned())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.contains("\"trader\":\"a\"")));
        let f = e.figures();
        assert_eq!((f.emitted, f.duplicates), (2, 1));
        assert_eq!(f.latency_samples, 1, "only the candle with a publish time");
        assert_eq!(e.received(0), 4);
        // A pass's burst: one queue entry, its lines in order, repeats out.
        e.signals(
            0,
            3,
            &[signal("a", 120_000), signal("a", 0), signal("a", 180_000)],
        );
        let batch: Vec<String> = rx
            .try_iter()
            .map(|b| String::from_utf8_lossy(&b.text).into_owned())
            .collect();
        assert_eq!(batch.len(), 1);
        let lines: Vec<&str> = batch[0].lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("120000") && lines[1].contains("180000"));
        e.close_output();
        e.signal(0, 3, &signal("a", 240_000));
        assert!(rx.try_iter().next().is_none(), "closed");
    }

    #[test]
    fn a_full_queue_makes_the_reader_wait_and_teardown_gives_up() {
        use std::sync::Arc;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let e = Arc::new(Emitter::new(1, tx, Arc::default()));
        e.holds(0, ["a"].into_iter());
        e.accept(0, Some(1));
        e.signal(0, 1, &signal("a", 0)); // the queue is full now
        assert!(!e.output_stalled(Duration::ZERO));
        let reader = {
            let e = e.clone();
            std::thread::spawn(move || e.signal(0, 1, &signal("a", 60_000)))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !e.output_stalled(Duration::ZERO) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            e.output_stalled(Duration::ZERO),
            "the reader waits for room"
        );
        let first = String::from_utf8_lossy(&rx.recv().expect("the first batch").text).into_owned();
        reader.join().expect("the reader got room and went on");
        let second =
            String::from_utf8_lossy(&rx.recv().expect("the second batch, not dropped").text)
                .into_owned();
        assert!(first.contains("\"open_time\":0") && second.contains("60000"));
        assert!(
            e.output_stalled(Duration::from_secs(60)),
            "within the grace"
        );
        assert!(!e.output_stalled(Duration::ZERO), "no one waits now");
        // Teardown with nobody reading: a waiting reader gives up in time.
        e.signal(0, 1, &signal("a", 120_000));
        e.give_up_after(Duration::from_millis(50));
        let started = Instant::now();
        e.signal(0, 1, &signal("a", 180_000));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(rx.try_iter().count(), 1, "the last batch was dropped");
        let (emitted, output) = e.delivery();
        assert_eq!((emitted, output.lost()), (4, 1), "and counted as lost");
    }

    /// A durable sink whose queue is full is behind: it is handed nothing
    /// while stdout and the other sinks go on, and nobody waits; once it has
    /// drained, the slots judge again from where they stood when it fell
    /// behind, and it takes exactly what it missed.
    #[test]
    fn a_full_durable_sink_falls_behind_and_is_caught_up_once_drained() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let e = Emitter::new(1, tx, Arc::default());
        let (slow_tx, slow_rx) = std::sync::mpsc::channel();
        let slow = Arc::new(Output::default());
        let spec = SinkSpec::File("/x".into());
        e.add_sink(spec, Dedup::default(), slow_tx, slow.clone(), 3);
        let (ok_tx, ok_rx) = std::sync::mpsc::channel();
        let ok = Arc::new(Output::default());
        let spec = SinkSpec::File("/y".into());
        e.add_sink(spec, Dedup::default(), ok_tx, ok.clone(), 100);
        e.holds(0, ["a"].into_iter());
        e.accept(0, Some(1));
        e.signals(0, 1, &[signal("a", 0), signal("a", 60_000)]);
        e.confirmed(0, 7);
        assert_eq!(slow.queued(), 2, "under the bound: handed");
        // Two more would make four queued, over the bound of three.
        e.signals(0, 1, &[signal("a", 120_000), signal("a", 180_000)]);
        e.signal(0, 1, &signal("a", 240_000));
        assert_eq!((slow.queued(), slow.behind()), (2, 3));
        assert!(!e.output_stalled(Duration::ZERO), "nobody waited");
        assert!(e.any_behind());
        assert_eq!(e.take_catch_up(), None, "not drained yet");
        let lines = |rx: &std::sync::mpsc::Receiver<Batch>| {
            rx.try_iter()
                .map(|b| String::from_utf8_lossy(&b.text).into_owned())
                .collect::<String>()
        };
        assert_eq!(lines(&slow_rx).lines().count(), 2);
        assert_eq!(lines(&ok_rx).lines().count(), 5);
        assert_eq!(rx.try_iter().map(|b| b.lines).sum::<u64>(), 5, "stdout");
        let status = e.sinks_status();
        assert_eq!(status[1]["is_behind"], true);
        assert!(
            status[1]["last_error"]
                .as_str()
                .is_some_and(|t| t.contains("--sink-queue")),
            "{status:?}"
        );
        // Drained: caught up from the publish slot 0 had confirmed then.
        slow.count(2, true);
        assert_eq!(e.take_catch_up(), Some(vec![7]));
        assert!(
            e.any_behind(),
            "catching up until the workers have judged again"
        );
        e.signal(0, 1, &signal("a", 300_000));
        assert_eq!(slow.queued(), 0, "the old incarnation no longer counts");
        // Its replacement judges again from there: the slow sink takes what
        // it missed, every other output drops the repeats.
        e.accept(0, Some(2));
        e.signals(0, 2, &[signal("a", 120_000), signal("a", 180_000)]);
        slow.count(2, true);
        e.signals(0, 2, &[signal("a", 240_000), signal("a", 300_000)]);
        let caught = lines(&slow_rx);
        assert_eq!(caught.lines().count(), 4, "{caught}");
        assert!(caught.lines().next().is_some_and(|l| l.contains("120000")));
        assert_eq!(lines(&ok_rx).lines().count(), 1, "only the new one");
        assert_eq!(rx.try_iter().map(|b| b.lines).sum::<u64>(), 1);
        assert_eq!(e.sinks_status()[1]["catch_ups"], 1);
        assert_eq!(e.sinks_status()[1]["catching_up"], true);
        // A trader leaving while a sink catches up is named for it.
        e.holds(0, std::iter::empty());
        assert_eq!(
            e.sinks_status()[1]["lost_traders"],
            serde_json::json!(["a"])
        );
        assert_eq!(e.sinks_status()[2]["lost_traders"], serde_json::json!([]));
        e.caught_up();
        assert!(!e.any_behind());
    }
}
