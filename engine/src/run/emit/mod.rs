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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use protocol::histogram::Log2Histogram;
use protocol::message::Signal;
use protocol::samples::{Samples, saturate};

use super::dedup::Dedup;
use super::sink::{Batch, Output};
use crate::signal_line::SignalLine;
use sinks::{Share, SinkOut, fall_behind, offer};

mod sinks;

/// Publish instants kept for the signal latency.
const PUBLISH_TIMES: usize = 4096;
/// Latency samples kept for the percentiles.
const LATENCY_SAMPLES: usize = 4096;
/// How often a reader thread retries a full output queue.
const OUTPUT_RETRY: Duration = Duration::from_millis(1);

/// Counters for `status` and the run's summary.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Signals found this run (each once, whatever outputs got it).
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
    /// The same, every signal since the start (the metrics' histogram).
    latency_histogram: Log2Histogram,
    /// Signals found this run, each once, whatever outputs got it.
    emitted: u64,
    /// Signals handed to stdout.
    printed: u64,
    /// Signals handed to at least one sink, per trader held (a trader no
    /// slot holds any more leaves: bounded by the trader set).
    by_trader: HashMap<String, u64>,
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
            latency_histogram: Log2Histogram::default(),
            emitted: 0,
            printed: 0,
            by_trader: HashMap::new(),
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

    /// Slot `s` has confirmed publish `p`.
    pub fn confirmed(&self, s: usize, p: u64) {
        if let Some(c) = self.lock().confirmed.get_mut(s) {
            *c = p;
        }
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
        let Inner {
            traders,
            dedup,
            by_trader,
            ..
        } = &mut *inner;
        dedup.keep_only(|id| traders.iter().any(|t| t.contains(id)));
        by_trader.retain(|id, _| traders.iter().any(|t| t.contains(id)));
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
                let mut fresh = false;
                for (f, share) in inner.sinks.iter_mut().zip(shares.iter_mut()) {
                    if f.behind.is_some() {
                        if f.dedup.is_new(signal) {
                            f.output.fell_behind(1);
                        }
                        continue;
                    }
                    if f.dedup.first(signal) {
                        fresh = true;
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
                // Counted once per run whatever the outputs: stdout, sinks
                // or both (the run's own watermarks; stdout prints by them).
                let new = inner.dedup.first(signal);
                let printed = inner.stdout && new;
                if printed || fresh {
                    match inner.by_trader.get_mut(&signal.trader) {
                        Some(n) => *n += 1,
                        None => {
                            inner.by_trader.insert(signal.trader.clone(), 1);
                        }
                    }
                }
                if !new {
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
                    inner.latency_histogram.observe(u64::from(us));
                }
                inner.emitted += 1;
                if !printed {
                    continue;
                }
                inner.printed += 1;
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

    /// Signals handed to stdout so far, and what became of them.
    pub fn delivery(&self) -> (u64, &Output) {
        (self.lock().printed, &self.output)
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

    /// For the metrics: every signal's latency so far, and the signals
    /// handed to a sink per trader held.
    pub fn metrics(&self) -> (Log2Histogram, Vec<(String, u64)>) {
        let inner = self.lock();
        let latency = inner.latency_histogram;
        let mut by_trader: Vec<(String, u64)> = inner
            .by_trader
            .iter()
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        drop(inner);
        by_trader.sort_unstable();
        (latency, by_trader)
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
mod tests;
