//! `shmkline run`: the coordinator.
//!
//! One loop on the main thread owns the store writer and every piece of state;
//! other threads only feed it events through one bounded channel: each
//! worker's reader thread (decoded frames), the OS-signal thread and the
//! control socket. Nothing the loop does blocks on a worker: it sends
//! directly, but never lets more than a [`Budget`] of frames and bytes go
//! unread by a worker (what a worker has read is proven by its answers), so
//! the socket buffer can never fill; a worker that falls that far behind is
//! faulty.
//!
//! Requests are numbered per worker and kept until answered; an unanswered
//! one is re-sent with capped exponential backoff and jitter, and after the
//! last attempt the worker is declared faulty (killed and reported).

pub mod control;
pub mod dedup;
pub mod feed;
pub mod link;
pub mod spawn;
pub mod traders;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal as OsSignal, kill};
use nix::unistd::Pid;
use protocol::frame;
use protocol::message::{Init, Message, Pong, RequestId, Signal};
use protocol::store::{SeriesId, StoreConfig};
use protocol::trader::TraderSpec;
use protocol::{InstanceName, Interval};
use serde::Serialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::instance::Instance;
use control::{ControlRequest, ControlServer};
use dedup::Dedup;
use feed::SymbolStream;
use link::{Budget, FromWorker, Link};
use spawn::Spawner;

/// Events waiting for the loop, at most.
const EVENT_BOUND: usize = 4096;
/// Requests awaiting an answer per worker, at most; past it the worker is faulty.
pub const MAX_OUTSTANDING: usize = 64;
/// Attempts per request (the first send and the retries).
pub const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled per attempt up to [`RETRY_CAP`], with +-25% jitter.
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const RETRY_CAP: Duration = Duration::from_secs(1);
/// Longest the loop sleeps between timer checks.
const TICK: Duration = Duration::from_millis(5);

/// Everything `shmkline run` is told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The instance.
    pub instance: InstanceName,
    /// Store capacities.
    pub store: StoreConfig,
    /// Worker processes.
    pub workers: u32,
    /// The worker binary.
    pub worker_bin: PathBuf,
    /// Traders to run.
    pub traders: Vec<TraderSpec>,
    /// Feed seed.
    pub seed: u64,
    /// Synthetic symbols.
    pub symbols: usize,
    /// Closed candles per symbol; `None` runs until stopped.
    pub candles: Option<u64>,
    /// Candles per second per symbol.
    pub rate: f64,
    /// PING interval.
    pub ping_interval: Duration,
    /// How long CLEANUP may take before stragglers are killed.
    pub shutdown_timeout: Duration,
}

/// What reaches the loop.
pub enum Event {
    /// From a worker's reader thread.
    Worker(u32, FromWorker),
    /// SIGTERM or SIGINT.
    OsSignal(i32),
    /// A control-socket request.
    Control(ControlRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum WorkerState {
    /// Spawned, INIT sent, no READY yet.
    Starting,
    /// READY received.
    Ready,
    /// CLEANUP sent.
    Cleaning,
    /// CLEANUP_COMPLETE received (or the process is gone).
    Exited,
    /// Killed after a fault.
    Faulty,
}

/// What a pending request was for, to act on its answer.
#[derive(Debug, Clone)]
enum Purpose {
    Init,
    AddTrader(String),
    Ping(Instant),
    Cleanup,
}

struct Pending {
    bytes: Vec<u8>,
    purpose: Purpose,
    attempts: u32,
    retry_at: Option<Instant>,
    /// Frame and byte counts sent to the worker up to and including this
    /// request's first copy: its answer proves the worker read that far.
    read_mark: (u64, u64),
}

/// Log2 buckets of round-trip times in microseconds: bucket k holds
/// [2^k, 2^(k+1)) us. Fixed size, so it never grows.
#[derive(Debug, Default, Clone, Serialize)]
struct RttHistogram {
    buckets: [u64; 24],
}

impl RttHistogram {
    fn record(&mut self, rtt: Duration) {
        let us = rtt.as_micros().max(1) as u64;
        let k = (63 - us.leading_zeros() as usize).min(self.buckets.len() - 1);
        self.buckets[k] += 1;
    }
}

struct Worker {
    id: u32,
    pid: u32,
    child: Option<Child>,
    link: Option<Link>,
    state: WorkerState,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    traders: Vec<String>,
    last_pong: Option<(Instant, Pong)>,
    rtt: Option<Duration>,
    rtt_hist: RttHistogram,
    retries: u64,
    malformed: u64,
    signals: u64,
    fault: Option<String>,
    /// Frames and bytes sent so far.
    sent: (u64, u64),
    /// Frames and bytes the worker has provably read.
    read: (u64, u64),
}

impl Worker {
    /// Sends one frame unless that would leave more than `budget` unread.
    fn transmit(&mut self, bytes: &[u8], budget: Budget) -> Result<(u64, u64), String> {
        budget.admits(self.sent, self.read, bytes.len())?;
        let link = self.link.as_ref().ok_or("no channel")?;
        link.send(bytes)
            .map_err(|e| format!("its channel is closed ({e})"))?;
        self.sent = (self.sent.0 + 1, self.sent.1 + bytes.len() as u64);
        Ok(self.sent)
    }
}

#[derive(Serialize)]
struct WorkerStatus<'a> {
    id: u32,
    pid: u32,
    state: WorkerState,
    traders: usize,
    trader_ids: &'a [String],
    restarts: u32,
    rtt_us: Option<u64>,
    last_pong_age_ms: Option<u64>,
    retries: u64,
    malformed_frames: u64,
    signals: u64,
    rss_bytes: Option<u64>,
    last_publish: Option<u64>,
    rtt_histogram_log2_us: &'a [u64],
    fault: Option<&'a str>,
}

/// A signal as printed on stdout: one JSON object per line. `worker` is the
/// worker that evaluated it (absent in a backtest).
pub fn signal_json(signal: &Signal, worker: Option<u32>) -> serde_json::Value {
    let mut line = serde_json::json!({
        "trader": signal.trader,
        "symbol": signal.symbol,
        "interval": signal.interval,
        "open_time": signal.open_time,
        "close": signal.close,
        "labels": signal.labels,
        "emitted_at": now_ms(),
    });
    if let (Some(w), Some(obj)) = (worker, line.as_object_mut()) {
        obj.insert("worker".into(), w.into());
    }
    line
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A small xorshift for retry jitter: deterministic enough, no dependency.
struct Jitter(u64);

impl Jitter {
    fn factor(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        0.75 + 0.5 * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The backoff before attempt `attempt + 1`.
fn backoff(attempt: u32, jitter: &mut Jitter) -> Duration {
    let base = RETRY_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    base.min(RETRY_CAP).mul_f64(jitter.factor())
}

struct Coordinator {
    opts: RunOptions,
    inst: Instance,
    workers: Vec<Worker>,
    events_tx: SyncSender<Event>,
    streams: Vec<(SymbolStream, SeriesId)>,
    feed_started: Option<Instant>,
    ticks: u64,
    final_publish: Option<u64>,
    dedup: Dedup,
    signals_out: u64,
    started: Instant,
    jitter: Jitter,
    shutting_down: Option<Instant>,
    sigints: u32,
    stdout: std::io::Stdout,
    budget: Budget,
}

impl Coordinator {
    fn send(&mut self, w: usize, message: Message, purpose: Purpose) -> Result<(), String> {
        let budget = self.budget;
        let worker = &mut self.workers[w];
        if worker.pending.len() >= MAX_OUTSTANDING {
            return Err(format!("{MAX_OUTSTANDING} requests unanswered"));
        }
        worker.next_id += 1;
        let id = worker.next_id;
        let bytes = frame::encode(RequestId(id), &message).map_err(|e| e.to_string())?;
        let read_mark = worker.transmit(&bytes, budget)?;
        // PINGs are not retried: a missed PING is a health matter, not a lost request.
        let retry_at = match purpose {
            Purpose::Ping(_) => None,
            _ => Some(Instant::now() + backoff(1, &mut self.jitter)),
        };
        worker.pending.insert(
            id,
            Pending {
                bytes,
                purpose,
                attempts: 1,
                retry_at,
                read_mark,
            },
        );
        Ok(())
    }

    fn request(&mut self, w: usize, message: Message, purpose: Purpose) {
        let kind = message.kind().name();
        if let Err(why) = self.send(w, message, purpose) {
            self.fault(w, format!("could not send {kind}: {why}"));
        }
    }

    /// Declares a worker faulty: kill it and report. (Replacing it is the
    /// supervisor's job.)
    fn fault(&mut self, w: usize, why: String) {
        let worker = &mut self.workers[w];
        if matches!(worker.state, WorkerState::Faulty | WorkerState::Exited) {
            return;
        }
        tracing::error!(worker = worker.id, pid = worker.pid, reason = %why, traders = ?worker.traders, "worker is faulty: killing it");
        let _ = kill(Pid::from_raw(worker.pid as i32), OsSignal::SIGKILL);
        worker.state = WorkerState::Faulty;
        worker.fault = Some(why);
        worker.pending.clear();
    }

    fn handle_worker(&mut self, w: usize, event: FromWorker) {
        match event {
            FromWorker::Closed => {
                let worker = &mut self.workers[w];
                if !matches!(worker.state, WorkerState::Exited | WorkerState::Faulty) {
                    if worker.state == WorkerState::Cleaning {
                        tracing::warn!(
                            worker = worker.id,
                            "channel closed without CLEANUP_COMPLETE"
                        );
                        worker.state = WorkerState::Exited;
                    } else {
                        let why = "its channel closed (the process died)".to_owned();
                        self.fault(w, why);
                    }
                }
            }
            FromWorker::Malformed(e) => {
                self.workers[w].malformed += 1;
                tracing::error!(worker = self.workers[w].id, error = %e, "malformed frame from worker");
                self.fault(w, format!("sent a malformed frame: {e}"));
            }
            FromWorker::Frame(id, Message::Signal(signal)) => {
                self.workers[w].signals += 1;
                self.emit(w, signal);
                let _ = id;
            }
            FromWorker::Frame(id, message) => self.answer(w, id, message),
        }
    }

    fn answer(&mut self, w: usize, id: RequestId, message: Message) {
        let Some(pending) = self.workers[w].pending.remove(&id.0) else {
            // An answer to a request already answered (a retry crossed the
            // first answer) or never made: nothing to do.
            tracing::debug!(
                worker = self.workers[w].id,
                id = id.0,
                kind = message.kind().name(),
                "answer to no pending request"
            );
            return;
        };
        let worker = &mut self.workers[w];
        // The worker reads in order: answering this request means it read
        // every frame up to the request's first copy.
        worker.read = (
            worker.read.0.max(pending.read_mark.0),
            worker.read.1.max(pending.read_mark.1),
        );
        match (pending.purpose, message) {
            (Purpose::Init, Message::Ready(ready)) => {
                worker.state = WorkerState::Ready;
                tracing::info!(worker = worker.id, pid = ready.pid, "worker ready");
            }
            (Purpose::AddTrader(trader), Message::Ack) => {
                if !worker.traders.contains(&trader) {
                    worker.traders.push(trader);
                }
            }
            (Purpose::Ping(sent), Message::Pong(pong)) => {
                let rtt = sent.elapsed();
                worker.rtt = Some(rtt);
                worker.rtt_hist.record(rtt);
                worker.last_pong = Some((Instant::now(), pong));
            }
            (Purpose::Cleanup, Message::CleanupComplete(released)) => {
                worker.state = WorkerState::Exited;
                tracing::info!(worker = worker.id, ?released, "worker cleaned up");
            }
            (purpose, Message::Nack { reason }) => {
                tracing::error!(worker = worker.id, ?purpose, %reason, "worker refused a request");
                if let Purpose::Init = purpose {
                    self.fault(w, format!("refused INIT: {reason}"));
                } else if let Purpose::AddTrader(t) = purpose {
                    eprintln!(
                        "error: trader {t} refused by worker {}: {reason}",
                        worker.id
                    );
                }
            }
            (purpose, other) => {
                let why = format!("answered {purpose:?} with {}", other.kind().name());
                self.fault(w, why);
            }
        }
    }

    fn emit(&mut self, w: usize, signal: Signal) {
        if !self.dedup.first(&signal) {
            return;
        }
        self.signals_out += 1;
        let line = signal_json(&signal, Some(self.workers[w].id));
        let mut out = self.stdout.lock();
        // A closed stdout (the reader of a pipe went away) must not kill the
        // engine mid-run; the signal is logged instead.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            tracing::warn!(%line, "stdout is closed: signal not printed");
        }
    }

    fn retry_due(&mut self) {
        let now = Instant::now();
        for w in 0..self.workers.len() {
            let due: Vec<u64> = self.workers[w]
                .pending
                .iter()
                .filter(|(_, p)| p.retry_at.is_some_and(|t| t <= now))
                .map(|(&id, _)| id)
                .collect();
            for id in due {
                let Some(p) = self.workers[w].pending.get_mut(&id) else {
                    continue;
                };
                if p.attempts >= MAX_ATTEMPTS {
                    let why = format!("no answer to {:?} after {MAX_ATTEMPTS} attempts", p.purpose);
                    self.fault(w, why);
                    break;
                }
                p.attempts += 1;
                p.retry_at = Some(now + backoff(p.attempts, &mut self.jitter));
                let bytes = p.bytes.clone();
                let attempts = p.attempts;
                let budget = self.budget;
                let worker = &mut self.workers[w];
                worker.retries += 1;
                tracing::warn!(
                    worker = worker.id,
                    id,
                    attempt = attempts,
                    "no answer yet: re-sending"
                );
                if let Err(why) = worker.transmit(&bytes, budget) {
                    self.fault(w, format!("could not re-send: {why}"));
                    break;
                }
            }
        }
    }

    fn ping_due(&mut self) {
        for w in 0..self.workers.len() {
            let worker = &self.workers[w];
            if worker.state != WorkerState::Ready {
                continue;
            }
            let outstanding = worker.pending.values().find_map(|p| match p.purpose {
                Purpose::Ping(sent) => Some(sent),
                _ => None,
            });
            match outstanding {
                Some(sent) if sent.elapsed() > self.opts.ping_interval * 2 => {
                    // Reported here; acting on a hang is the supervisor's job.
                    tracing::warn!(worker = worker.id, waited = ?sent.elapsed(), "PING unanswered past its deadline");
                    let stale: Vec<u64> = worker
                        .pending
                        .iter()
                        .filter(|(_, p)| matches!(p.purpose, Purpose::Ping(_)))
                        .map(|(&id, _)| id)
                        .collect();
                    for id in stale {
                        self.workers[w].pending.remove(&id);
                    }
                }
                Some(_) => {}
                None => {
                    let due = worker
                        .last_pong
                        .as_ref()
                        .is_none_or(|(at, _)| at.elapsed() >= self.opts.ping_interval);
                    if due {
                        self.request(w, Message::Ping, Purpose::Ping(Instant::now()));
                    }
                }
            }
        }
    }

    fn reap(&mut self) {
        for worker in &mut self.workers {
            if let Some(child) = worker.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                tracing::info!(worker = worker.id, pid = worker.pid, %status, "worker exited");
                worker.child = None;
                // A cleaning worker stays so until its CLEANUP_COMPLETE (or its
                // channel's close, which always comes after) is processed.
                if !matches!(
                    worker.state,
                    WorkerState::Exited | WorkerState::Faulty | WorkerState::Cleaning
                ) {
                    worker.state = WorkerState::Faulty;
                    worker.fault = Some(format!("exited unexpectedly ({status})"));
                    tracing::error!(worker = worker.id, %status, traders = ?worker.traders, "worker died");
                }
            }
        }
    }

    /// Writes the candles due by now, one batch per tick.
    fn feed(&mut self) -> Result<()> {
        let Some(started) = self.feed_started else {
            return Ok(());
        };
        let limit = self.opts.candles.unwrap_or(u64::MAX);
        let due = ((started.elapsed().as_secs_f64() * self.opts.rate) as u64 + 1).min(limit);
        while self.ticks < due {
            for (stream, series) in &mut self.streams {
                let candle = stream.next_candle();
                self.inst.store.upsert_closed(*series, &candle)?;
            }
            self.ticks += 1;
            let published = self.inst.store.publish();
            if self.ticks == limit {
                self.final_publish = Some(published);
                tracing::info!(
                    candles = self.ticks,
                    publish = published,
                    "finite feed written"
                );
            }
        }
        Ok(())
    }

    /// True once every live worker reported it evaluated the final batch.
    fn feed_done(&self) -> bool {
        let Some(last) = self.final_publish else {
            return false;
        };
        self.workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready)
            .all(|w| {
                w.last_pong
                    .as_ref()
                    .is_some_and(|(_, p)| p.last_publish >= last)
            })
    }

    fn status(&self) -> serde_json::Value {
        let workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|w| WorkerStatus {
                id: w.id,
                pid: w.pid,
                state: w.state,
                traders: w.traders.len(),
                trader_ids: &w.traders,
                restarts: 0,
                rtt_us: w.rtt.map(|d| d.as_micros() as u64),
                last_pong_age_ms: w
                    .last_pong
                    .as_ref()
                    .map(|(at, _)| at.elapsed().as_millis() as u64),
                retries: w.retries,
                malformed_frames: w.malformed,
                signals: w.signals,
                rss_bytes: w.last_pong.as_ref().map(|(_, p)| p.rss_bytes),
                last_publish: w.last_pong.as_ref().map(|(_, p)| p.last_publish),
                rtt_histogram_log2_us: &w.rtt_hist.buckets,
                fault: w.fault.as_deref(),
            })
            .collect();
        let stats = self.inst.store.stats();
        serde_json::json!({
            "instance": self.opts.instance.as_str(),
            "pid": std::process::id(),
            "state": if self.shutting_down.is_some() { "shutting_down" } else { "running" },
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "segment": {
                "name": self.inst.store.name(),
                "size_bytes": self.inst.store.size_bytes(),
                "generation": self.inst.store.generation(),
            },
            "feed": {
                "kind": "synthetic",
                "symbols": self.streams.len(),
                "rate": self.opts.rate,
                "candles_per_symbol": self.ticks,
                "candles_target": self.opts.candles,
                "candles_written": stats.appended,
                "publishes": stats.publishes,
                "rejected": stats.rejected_stale + stats.rejected_invalid,
                "finished": self.final_publish.is_some(),
            },
            "signals": { "emitted": self.signals_out, "duplicates_dropped": self.dedup.duplicates },
            "workers": workers,
        })
    }

    fn control(&self, req: ControlRequest) {
        let answer = match req.line.as_str() {
            "status" => self.status().to_string(),
            other => {
                serde_json::json!({ "error": format!("unknown request {other:?}: try status") })
                    .to_string()
            }
        };
        let _ = req.reply.send(answer);
    }

    fn begin_shutdown(&mut self, why: &str) {
        if self.shutting_down.is_some() {
            return;
        }
        tracing::info!(reason = why, "shutting down: CLEANUP to every worker");
        self.shutting_down = Some(Instant::now());
        for w in 0..self.workers.len() {
            if matches!(
                self.workers[w].state,
                WorkerState::Ready | WorkerState::Starting
            ) {
                self.workers[w].pending.clear();
                self.request(w, Message::Cleanup, Purpose::Cleanup);
                if self.workers[w].state != WorkerState::Faulty {
                    self.workers[w].state = WorkerState::Cleaning;
                }
            }
        }
    }

    fn shutdown_complete(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.child.is_none() && w.state != WorkerState::Cleaning)
    }

    /// SIGKILLs every worker still alive and reaps it.
    fn kill_stragglers(&mut self) {
        for worker in &mut self.workers {
            if let Some(mut child) = worker.child.take() {
                if worker.state == WorkerState::Cleaning {
                    // Not a run fault: the deadline is exactly for this case.
                    tracing::warn!(
                        worker = worker.id,
                        pid = worker.pid,
                        "no CLEANUP_COMPLETE by the deadline: killing it"
                    );
                    worker.state = WorkerState::Exited;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs the coordinator until an orderly shutdown. Returns the number of
/// workers that were faulty during the run.
pub fn run(opts: RunOptions) -> Result<usize> {
    if opts.symbols == 0 || opts.symbols > opts.store.symbols as usize {
        bail!(
            "--symbols {} must be between 1 and the store's --max-symbols {}",
            opts.symbols,
            opts.store.symbols
        );
    }
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        bail!(
            "--rate {} must be a positive number of candles per second",
            opts.rate
        );
    }
    for t in &opts.traders {
        if !opts.store.intervals.contains(&t.interval) {
            bail!(
                "trader {} uses interval {}, which the store does not keep (--intervals)",
                t.id,
                t.interval
            );
        }
        if t.interval != Interval::M1 {
            tracing::warn!(trader = %t.id, interval = %t.interval, "the synthetic feed writes 1m candles only: this trader will see none");
        }
    }
    if !opts.worker_bin.exists() {
        bail!(
            "worker binary {} not found: build it (cargo build) or pass --worker-bin",
            opts.worker_bin.display()
        );
    }
    // Signals first, so a Ctrl-C during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let signals_handle = signals.handle();
    let inst = Instance::start(&opts.instance, &opts.store)?;
    // ipc-channel's one-shot sockets go into the private runtime directory
    // (short path, wiped at start) rather than the system temp directory.
    let _ = tempfile::env::override_temp_dir(inst.runtime.dir());

    let (events_tx, events_rx) = mpsc::sync_channel::<Event>(EVENT_BOUND);
    let signal_events = events_tx.clone();
    let signal_thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                // Never block on a full queue: a second SIGINT must get through.
                let _ = signal_events.try_send(Event::OsSignal(sig));
            }
        })
        .context("starting the signal thread")?;
    let control = ControlServer::start(inst.runtime.dir(), control::forward_to(events_tx.clone()))?;
    let spawner = Spawner::start(opts.worker_bin.clone(), opts.instance.clone())?;

    let mut streams = Vec::with_capacity(opts.symbols);
    let mut coord = Coordinator {
        jitter: Jitter(inst.store.generation() | 1),
        inst,
        workers: Vec::new(),
        events_tx,
        streams: Vec::new(),
        feed_started: None,
        ticks: 0,
        final_publish: None,
        dedup: Dedup::new(dedup::DEFAULT_CAPACITY),
        signals_out: 0,
        started: Instant::now(),
        shutting_down: None,
        sigints: 0,
        stdout: std::io::stdout(),
        budget: Budget::from_system(),
        opts,
    };
    for k in 0..coord.opts.symbols {
        let stream = SymbolStream::new(coord.opts.seed, k);
        let id = coord.inst.store.register_symbol(&stream.name)?;
        let series = coord.inst.store.series(id, Interval::M1)?;
        streams.push((stream, series));
    }
    coord.streams = streams;
    coord.inst.store.publish();

    let result = drive(&mut coord, &spawner, &events_rx);

    // Teardown, whatever happened: every worker killed and reaped, then the
    // threads (whose channels close with the workers), then the files.
    coord.kill_stragglers();
    drop(events_rx);
    for worker in &mut coord.workers {
        if let Some(link) = worker.link.take() {
            link.join();
        }
    }
    drop(spawner);
    drop(control);
    signals_handle.close();
    let _ = signal_thread.join();
    let faulty = coord.workers.iter().filter(|w| w.fault.is_some()).count();
    tracing::info!(
        signals = coord.signals_out,
        duplicates = coord.dedup.duplicates,
        faulty,
        "coordinator stopped"
    );
    result.map(|()| faulty)
}

fn drive(coord: &mut Coordinator, spawner: &Spawner, events: &Receiver<Event>) -> Result<()> {
    for id in 0..coord.opts.workers {
        let spawned = spawner.spawn(id)?;
        let pid = spawned.child.id();
        let tx = coord.events_tx.clone();
        let link = Link::start(id, spawned.to_worker, spawned.from_worker, move |e| {
            // The loop is gone only during teardown; then the event is moot.
            let _ = tx.send(Event::Worker(id, e));
        })?;
        tracing::info!(worker = id, pid, "worker spawned");
        coord.workers.push(Worker {
            id,
            pid,
            child: Some(spawned.child),
            link: Some(link),
            state: WorkerState::Starting,
            pending: BTreeMap::new(),
            next_id: 0,
            traders: Vec::new(),
            last_pong: None,
            rtt: None,
            rtt_hist: RttHistogram::default(),
            retries: 0,
            malformed: 0,
            signals: 0,
            fault: None,
            sent: (0, 0),
            read: (0, 0),
        });
        let init = Init {
            instance: coord.opts.instance.to_string(),
            generation: coord.inst.store.generation(),
            worker_id: id,
        };
        coord.request(id as usize, Message::Init(init), Purpose::Init);
    }
    let mut traders_sent = false;
    loop {
        match events.recv_timeout(TICK) {
            Ok(Event::Worker(id, e)) => coord.handle_worker(id as usize, e),
            Ok(Event::OsSignal(sig)) => {
                if sig == SIGINT {
                    coord.sigints += 1;
                }
                if coord.sigints >= 2 {
                    tracing::warn!("second SIGINT: killing the workers without waiting");
                    return Ok(());
                }
                coord.begin_shutdown(if sig == SIGINT { "SIGINT" } else { "SIGTERM" });
            }
            Ok(Event::Control(req)) => coord.control(req),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the event channel closed"),
        }
        coord.reap();
        if let Some(since) = coord.shutting_down {
            coord.retry_due();
            if coord.shutdown_complete() {
                return Ok(());
            }
            if since.elapsed() >= coord.opts.shutdown_timeout {
                return Ok(()); // stragglers are killed by the caller
            }
            continue;
        }
        // Start-up: traders go out once every worker is ready, then the feed starts
        // once every trader is acknowledged, so no candle precedes a trader.
        let all_ready = coord.workers.iter().all(|w| w.state == WorkerState::Ready);
        if !traders_sent && all_ready {
            let traders = coord.opts.traders.clone();
            let live = coord.workers.len();
            for (k, spec) in traders.into_iter().enumerate() {
                let id = spec.id.clone();
                coord.request(k % live, Message::AddTrader(spec), Purpose::AddTrader(id));
            }
            traders_sent = true;
        }
        if traders_sent && coord.feed_started.is_none() {
            let pending_adds = coord.workers.iter().any(|w| {
                w.pending
                    .values()
                    .any(|p| matches!(p.purpose, Purpose::AddTrader(_)))
            });
            if !pending_adds {
                tracing::info!(symbols = coord.streams.len(), rate = coord.opts.rate, candles = ?coord.opts.candles, "feed started");
                coord.feed_started = Some(Instant::now());
            }
        }
        if coord.workers.iter().all(|w| w.state == WorkerState::Faulty) {
            bail!("every worker is faulty: nothing left to run the traders");
        }
        coord.feed()?;
        coord.retry_due();
        coord.ping_due();
        if coord.feed_done() {
            coord.begin_shutdown("the finite feed is done and every trader evaluated every candle");
        }
    }
}
