//! `shmkline run`: the coordinator and its supervisor.
//!
//! One loop on the main thread owns the store writer and every piece of state
//! but one; other threads only feed it events through one bounded channel:
//! each worker's reader thread (decoded frames), the spawner thread (finished
//! handshakes), the OS-signal thread and the control socket. The exception is
//! signals, the latency path: a reader thread checks and prints them itself
//! through the emitter (`emit.rs`), whose state (live incarnations, the slots'
//! traders, the deduplicator) the loop keeps up to date. Nothing the loop
//! does blocks on a worker: it sends directly, but never lets more than a
//! [`Budget`] of frames and bytes go unread by a worker (what a worker has
//! read is proven by its answers), so the socket buffer can never fill.
//!
//! Each worker **slot** holds a set of traders and a succession of worker
//! processes (incarnations). A crash is seen at once (the channel closes, or
//! `waitpid` reports it); a hang when a PING misses its deadline. The process
//! is killed if needed and reaped, and a replacement is spawned into the slot:
//! at once for a fault from outside (a signal someone else sent), after a
//! capped exponential backoff and within an intensity limit for a failure the
//! worker caused itself. The replacement gets the slot's traders again with
//! the publish counter the dead worker had confirmed, and evaluates every
//! candle written after it from the ring; repeats are dropped by the signal
//! deduplicator, so the output stays exactly-once.

pub mod control;
pub mod dedup;
mod emit;

pub mod link;
pub mod spawn;
pub mod traders;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::Arc;
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

use crate::feed::live::LiveFeed;
use crate::feed::progress::Progress;
use crate::feed::writer::FeedWriter;
use crate::feed::{FeedConfig, Pace, Pacer, Source};
use crate::instance::Instance;
use control::{ControlRequest, ControlServer};
use emit::Emitter;
use link::{Budget, FromWorker, Link};
use protocol::shm::scratch::SharedWords;
use protocol::trader::{MAX_TRADERS_PER_WORKER, black_box_name, trader_hash};
use spawn::{Spawned, Spawner};

/// Batches of signal lines waiting for the output thread, at most. A batch
/// is the signals of one SIGNALS frame (at most 64 KiB encoded, about three
/// times that as JSON), usually one or a few lines: so at most ~800 MiB in
/// theory, a few MiB in practice.
const OUTPUT_BOUND: usize = 4096;
/// How long teardown waits for stdout to take more of what is queued
/// before it gives up (a reader that keeps reading is waited for).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// Synthetic batches written per pass of the loop, at most, so a high rate
/// never starves the loop.
const FEED_PUBLISHES_PER_PASS: u64 = 64;
/// Batches per publish when a finite feed goes as fast as it can.
pub const FAST_BATCHES_PER_PUBLISH: u64 = 16;
/// How often the segment's heartbeat is refreshed when nothing is published.
const HEARTBEAT: Duration = Duration::from_millis(250);
/// Highest `--rate` accepted.
pub const MAX_RATE: f64 = 1_000_000.0;

/// Events waiting for the loop, at most.
const EVENT_BOUND: usize = 4096;
/// Requests awaiting an answer per worker, at most; past it the worker is faulty.
pub const MAX_OUTSTANDING: usize = 64;
/// ADD_TRADERs in flight per worker; the rest follow as they are acknowledged.
pub const ADD_WINDOW: usize = 16;
/// Bytes of a worker's send budget that ADD_TRADERs leave free, for the
/// PINGs, REMOVEs, CLEANUP and re-sends that go out meanwhile.
pub const CONTROL_RESERVE: u64 = 8 * 1024;
/// Attempts per request (the first send and the retries).
pub const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled per attempt up to [`RETRY_CAP`], with +-25% jitter.
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const RETRY_CAP: Duration = Duration::from_secs(1);
/// First delay before restarting a slot after a self-inflicted failure;
/// doubled per failure within the intensity period, up to [`RESTART_BACKOFF_CAP`].
pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay before a restart.
pub const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Supervision events kept for `status` (the oldest is dropped first).
pub const EVENTS_KEPT: usize = 1024;
/// How long a worker whose channel closed may take to exit before it is killed.
const CRASH_GRACE: Duration = Duration::from_millis(100);
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
    /// The feed.
    pub feed: FeedConfig,
    /// How fast a finite feed is written.
    pub pace: Pace,
    /// The intervals built from 1-minute candles (a subset of the store's).
    pub aggregate: Vec<Interval>,
    /// Keep running after a finite feed is done (until SIGINT/SIGTERM), so
    /// the store stays readable.
    pub stay: bool,
    /// Shut down once the parent is no longer this process (it exited and
    /// this one was re-parented).
    pub parent: Option<i32>,
    /// PING interval.
    pub ping_interval: Duration,
    /// A PING unanswered for this long means the worker hangs. A stop is
    /// detected at most `ping_interval + ping_deadline` after it happens.
    pub ping_deadline: Duration,
    /// How long CLEANUP may take before stragglers are killed.
    pub shutdown_timeout: Duration,
    /// Self-inflicted failures allowed per slot within [`RunOptions::restart_period`].
    pub restart_limit: u32,
    /// The window for [`RunOptions::restart_limit`].
    pub restart_period: Duration,
    /// Self-inflicted crashes pinned on one trader before it is quarantined.
    pub quarantine_after: u32,
    /// A worker whose reported progress does not advance for this long while
    /// newer batches wait is stuck (its evaluation loops or blocks) even if it
    /// still answers PINGs: it is replaced like a hung one.
    pub stall_timeout: Duration,
    /// Whether the feed waits for the slowest worker (replay) or keeps its
    /// pace whatever happens (like a live feed; candles can then leave the
    /// ring unevaluated, which is reported as a gap).
    pub backpressure: bool,
}

/// A trader management request on the control socket.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum TradersCommand {
    /// `shmkline traders add FILE`.
    Add {
        /// The file's traders, checked by the CLI already.
        traders: Vec<TraderSpec>,
    },
    /// `shmkline traders remove ID`.
    Remove {
        /// The trader.
        id: String,
    },
}

/// What reaches the loop.
pub enum Event {
    /// From the reader thread of a slot's worker incarnation.
    Worker(u32, u64, FromWorker),
    /// A spawn for a slot's incarnation finished (or failed).
    Spawned(u32, u64, Result<Spawned, String>),
    /// SIGTERM or SIGINT.
    OsSignal(i32),
    /// A control-socket request.
    Control(ControlRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum State {
    /// INIT sent, no READY yet.
    Starting,
    /// READY received; ADD_TRADERs sent, not all acknowledged.
    Syncing,
    /// Every trader acknowledged.
    Ready,
    /// CLEANUP sent.
    Cleaning,
    /// CLEANUP_COMPLETE received (or its channel closed while cleaning).
    Exited,
    /// Faulty: killed, waiting to be reaped and replaced.
    Dead,
}

/// What a pending request was for, to act on its answer.
#[derive(Debug, Clone)]
enum Purpose {
    Init,
    AddTrader(String),
    RemoveTrader(String),
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

/// Why a worker was declared faulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum FaultKind {
    /// It died (channel closed or reaped).
    Crash,
    /// A PING missed its deadline.
    Hang,
    /// It answers PINGs but its evaluation makes no progress.
    Stall,
    /// It broke the protocol (malformed frame, no answer after every retry,
    /// wrong answer, not reading its channel).
    Protocol,
}

/// Who caused a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Cause {
    /// A signal someone else sent (an operator, a chaos script).
    Outside,
    /// The worker itself (panic, abort, error exit, a fault in its code, a hang
    /// that is not a stop signal, a protocol violation).
    SelfInflicted,
}

/// One fault and its recovery, for `status` and the chaos report.
#[derive(Debug, Clone, Serialize)]
struct SupervisionEvent {
    slot: u32,
    pid: u32,
    kind: FaultKind,
    cause: Option<Cause>,
    reason: String,
    exit: Option<String>,
    detected_at_ms: i64,
    recovered_at_ms: Option<i64>,
    /// From detection to the replacement answering a PING with all traders acked.
    recovery_ms: Option<f64>,
    #[serde(skip)]
    detected: Instant,
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

/// One worker process of a slot.
struct Incarnation {
    no: u64,
    pid: u32,
    child: Option<Child>,
    link: Option<Link>,
    state: State,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    acked: BTreeSet<String>,
    /// Traders still to send ADD_TRADER for, in order (an id no longer held,
    /// or already acknowledged, is skipped when it comes up): sending the
    /// next costs no scan of the slot's traders, however many it holds.
    unsent: VecDeque<String>,
    /// Traders removed whose REMOVE_TRADER this worker has not acknowledged
    /// yet: their signals may still be on the way, so the id cannot be added
    /// again until then.
    removing: BTreeSet<String>,
    synced_at: Option<Instant>,
    last_pong: Option<(Instant, Pong)>,
    rtt: Option<Duration>,
    /// Frames and bytes sent so far.
    sent: (u64, u64),
    /// Frames and bytes the worker has provably read.
    read: (u64, u64),
    /// Index into the supervision events, once faulty.
    fault: Option<usize>,
    /// Whether the process was stopped (state T) when its fault was detected.
    stopped: bool,
    /// READY was received.
    reached_ready: bool,
    /// The progress its PONGs last reported (publish counter covered,
    /// candles judged), and when either last advanced.
    progress: Option<((u64, u64), Instant)>,
    /// For a crash seen on the channel: when to SIGKILL if it has not exited
    /// by itself (so its own exit status, not our kill, tells why it went).
    kill_at: Option<Instant>,
}

/// Why a frame could not be sent.
enum SendFailure {
    /// The worker's end is closed: it died (its exit status says why).
    Closed(String),
    /// The worker is not keeping up (not reading, too many requests pending).
    Behind(String),
    /// The request does not encode: a bug here, not the worker's fault
    /// (specs are size-checked where they enter).
    Encode(String),
}

impl SendFailure {
    /// The worker fault it means, if any.
    fn kind(&self) -> Option<FaultKind> {
        match self {
            SendFailure::Closed(_) => Some(FaultKind::Crash),
            SendFailure::Behind(_) => Some(FaultKind::Hang),
            SendFailure::Encode(_) => None,
        }
    }

    fn why(self) -> String {
        match self {
            SendFailure::Closed(w) | SendFailure::Behind(w) | SendFailure::Encode(w) => w,
        }
    }
}

impl Incarnation {
    /// Sends one frame unless that would leave more than `budget` unread.
    fn transmit(&mut self, bytes: &[u8], budget: Budget) -> Result<(u64, u64), SendFailure> {
        budget
            .admits(self.sent, self.read, bytes.len())
            .map_err(SendFailure::Behind)?;
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| SendFailure::Closed("no channel".into()))?;
        link.send(bytes)
            .map_err(|e| SendFailure::Closed(format!("its channel is closed ({e})")))?;
        self.sent = (self.sent.0 + 1, self.sent.1 + bytes.len() as u64);
        Ok(self.sent)
    }

    fn live(&self) -> bool {
        matches!(self.state, State::Starting | State::Syncing | State::Ready)
    }
}

/// A worker slot: its traders and its succession of worker processes.
struct Slot {
    id: u32,
    /// Its traders, by id.
    traders: BTreeMap<String, TraderSpec>,
    /// Traders added while running: the publish counter at which each was
    /// added; its evaluation starts with the candles written after it.
    starts: BTreeMap<String, u64>,
    /// Publish counter up to which every trader of the slot evaluated every
    /// candle, as confirmed by a PONG after all traders were acknowledged.
    confirmed: u64,
    incarnations: u64,
    live: Option<Incarnation>,
    spawning: bool,
    restarts: u32,
    self_failures: VecDeque<Instant>,
    /// Starts in a row that never reached READY.
    failed_starts: u32,
    restart_at: Option<Instant>,
    /// The fault being recovered from, if any.
    recovering: Option<usize>,
    // Totals over the slot's incarnations.
    /// Gap events reported by its workers (dead ones included).
    gaps: u64,
    /// The live incarnation's last reported gap count, included in `gaps`.
    live_gaps: u64,
    retries: u64,
    malformed: u64,
    /// Frames with a valid header whose payload did not decode.
    undecodable: u64,
    rtt_hist: RttHistogram,
}

impl Slot {
    /// Tells the emitter which traders this slot holds now: the one place
    /// that decides whose signals are printed.
    fn tell_holds(&self, emitter: &Emitter) {
        emitter.holds(self.id as usize, self.traders.keys().map(String::as_str));
    }

    /// Holds `t` from publish `from_publish` on.
    fn add_trader(&mut self, t: TraderSpec, from_publish: u64, emitter: &Emitter) {
        self.starts.insert(t.id.clone(), from_publish);
        if let Some(inc) = self.live.as_mut() {
            inc.unsent.push_back(t.id.clone());
        }
        self.traders.insert(t.id.clone(), t);
        self.tell_holds(emitter);
    }

    /// Stops holding trader `id` (refused, quarantined or removed): its
    /// signals are dropped from now on, even ones already in flight.
    fn drop_trader(&mut self, id: &str, emitter: &Emitter) {
        self.traders.remove(id);
        self.starts.remove(id);
        self.tell_holds(emitter);
    }
}

#[derive(Serialize)]
struct WorkerStatus<'a> {
    id: u32,
    pid: u32,
    state: &'static str,
    traders: usize,
    trader_ids: Vec<&'a str>,
    restarts: u32,
    rtt_us: Option<u64>,
    last_pong_age_ms: Option<u64>,
    retries: u64,
    malformed_frames: u64,
    undecodable_frames: u64,
    signals: u64,
    rss_bytes: Option<u64>,
    last_publish: Option<u64>,
    confirmed_publish: u64,
    gaps: Option<u64>,
    /// Closed candles judged, over all traders and series.
    judged: Option<u64>,
    /// SIGNALS frames received, and the largest in bytes.
    signal_frames: Option<u64>,
    largest_signal_frame_bytes: Option<u64>,
    /// Evaluation passes, and their recent median and 99th percentile (us).
    passes: Option<u64>,
    pass_p50_us: Option<u64>,
    pass_p99_us: Option<u64>,
    rtt_histogram_log2_us: &'a [u64],
}

/// A signal as printed on stdout: one JSON object per line, its keys in
/// alphabetical order. `worker` is the worker that evaluated it (absent in
/// a backtest).
#[derive(Serialize)]
pub struct SignalLine<'a> {
    close: f64,
    emitted_at: i64,
    interval: Interval,
    labels: &'a BTreeMap<String, String>,
    open_time: i64,
    symbol: &'a str,
    trader: &'a str,
    values: &'a BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<u32>,
}

impl<'a> SignalLine<'a> {
    /// The line for `signal`, emitted now.
    pub fn new(signal: &'a Signal, worker: Option<u32>) -> Self {
        Self {
            close: signal.close,
            emitted_at: now_ms(),
            interval: signal.interval,
            labels: &signal.labels,
            open_time: signal.open_time,
            symbol: &signal.symbol,
            trader: &signal.trader,
            values: &signal.values,
            worker,
        }
    }

    /// Appends the line (no newline) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Cannot fail: every field serialises, into a Vec.
        let _ = serde_json::to_writer(out, self);
    }
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
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

/// Classifies a worker's exit: was it killed from outside, or did it fail?
fn classify(status: &ExitStatus) -> Cause {
    match status.signal() {
        Some(sig)
            if [
                libc_sig(OsSignal::SIGKILL),
                libc_sig(OsSignal::SIGTERM),
                libc_sig(OsSignal::SIGINT),
                libc_sig(OsSignal::SIGHUP),
            ]
            .contains(&sig) =>
        {
            Cause::Outside
        }
        // SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE...: raised by its own code.
        Some(_) => Cause::SelfInflicted,
        // An exit the coordinator did not ask for, whatever the code.
        None => Cause::SelfInflicted,
    }
}

fn libc_sig(s: OsSignal) -> i32 {
    s as i32
}

/// Whether `pid` is stopped by a signal (state T or t in /proc).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
        })
        .unwrap_or(false)
}

struct Coordinator {
    opts: RunOptions,
    inst: Instance,
    slots: Vec<Slot>,
    events_tx: SyncSender<Event>,
    /// The finite feed (synthetic or replay), written by this loop.
    pump: Option<Pump>,
    /// The live feed, written by its own thread.
    live: Option<LiveFeed>,
    last_heartbeat: Instant,
    feed_started: Option<Instant>,
    final_publish: Option<u64>,
    /// Where signals go: checked and printed on the reader threads.
    emitter: Arc<Emitter>,
    started: Instant,
    jitter: Jitter,
    shutting_down: Option<Instant>,
    budget: Budget,
    events: VecDeque<SupervisionEvent>,
    /// Links of dead incarnations whose reader threads are finishing.
    graveyard: Vec<Link>,
    /// Set when a slot exhausted its restart intensity.
    failed: Option<String>,
    /// Traders a worker refused, with the reason.
    refused: Vec<String>,
    /// The first frame of this build's protocol that did not decode.
    undecodable: Option<String>,
    /// Per slot: the shared word its worker marks the trader it evaluates in.
    black_boxes: Vec<Option<SharedWords>>,
    /// Crashes pinned on each trader.
    strikes: BTreeMap<String, u32>,
    /// Traders taken out after repeated crashes, with their slot.
    quarantined: Vec<(String, u32)>,
    /// OS signals counted by the signal thread (never dropped).
    os_signals: std::sync::Arc<OsSignals>,
}

/// SIGINT and SIGTERM counts, kept by the signal thread in atomics so that a
/// full event queue can never swallow one.
#[derive(Debug, Default)]
pub struct OsSignals {
    sigint: std::sync::atomic::AtomicU32,
    sigterm: std::sync::atomic::AtomicU32,
}

impl Coordinator {
    fn spawn_slot(&mut self, s: usize, spawner: &Spawner) {
        // A mark left by a predecessor killed from outside must not be pinned
        // on its trader if the new worker fails before its first pass.
        if let Some(word) = self
            .black_boxes
            .get(s)
            .and_then(|b| b.as_ref())
            .and_then(|b| b.word(0))
        {
            word.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let slot = &mut self.slots[s];
        slot.incarnations += 1;
        slot.spawning = true;
        slot.restart_at = None;
        let (id, no) = (slot.id, slot.incarnations);
        let tx = self.events_tx.clone();
        let requested = spawner.request(
            id,
            Box::new(move |result| {
                let event = Event::Spawned(id, no, result.map_err(|e| format!("{e:#}")));
                // During teardown the loop is gone: the new worker must not be
                // left behind unreaped.
                if let Err(mpsc::SendError(Event::Spawned(_, _, Ok(mut spawned)))) = tx.send(event)
                {
                    let _ = spawned.child.kill();
                    let _ = spawned.child.wait();
                }
            }),
        );
        if let Err(e) = requested {
            self.failed = Some(format!("the spawner thread is gone: {e:#}"));
        }
    }

    fn spawned(&mut self, s: usize, no: u64, result: Result<Spawned, String>) {
        let slot = &mut self.slots[s];
        if no != slot.incarnations {
            // Cannot happen while `spawning` gates new spawns; never leak a child if it does.
            if let Ok(mut spawned) = result {
                let _ = spawned.child.kill();
                let _ = spawned.child.wait();
            }
            return;
        }
        slot.spawning = false;
        let spawned = match result {
            Ok(spawned) => spawned,
            Err(why) => {
                tracing::error!(slot = slot.id, reason = %why, "could not start a worker");
                slot.failed_starts += 1;
                self.self_inflicted(s, format!("could not start: {why}"));
                return;
            }
        };
        if self.shutting_down.is_some() {
            let mut child = spawned.child;
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        let pid = spawned.child.id();
        let tx = self.events_tx.clone();
        let id = slot.id;
        let emitter = self.emitter.clone();
        let link = match Link::start(id, spawned.to_worker, spawned.from_worker, move |e| {
            match e {
                FromWorker::Frame(_, Message::Signal(signal)) => {
                    emitter.signal(id as usize, no, &signal);
                }
                FromWorker::Frame(_, Message::Signals(signals)) => {
                    emitter.signals(id as usize, no, &signals);
                }
                // The loop is gone only during teardown; then the event is moot.
                e => {
                    let _ = tx.send(Event::Worker(id, no, e));
                }
            }
        }) {
            Ok(link) => link,
            Err(e) => {
                let mut child = spawned.child;
                let _ = child.kill();
                let _ = child.wait();
                self.failed = Some(format!("could not start a reader thread: {e:#}"));
                return;
            }
        };
        tracing::info!(slot = id, pid, incarnation = no, "worker spawned");
        slot.live_gaps = 0;
        self.emitter.accept(id as usize, Some(no));
        slot.live = Some(Incarnation {
            no,
            pid,
            child: Some(spawned.child),
            link: Some(link),
            state: State::Starting,
            pending: BTreeMap::new(),
            next_id: 0,
            acked: BTreeSet::new(),
            unsent: VecDeque::new(),
            removing: BTreeSet::new(),
            synced_at: None,
            last_pong: None,
            rtt: None,
            sent: (0, 0),
            read: (0, 0),
            fault: None,
            stopped: false,
            reached_ready: false,
            progress: None,
            kill_at: None,
        });
        let init = Init {
            instance: self.opts.instance.to_string(),
            generation: self.inst.store.lock().generation(),
            worker_id: id,
        };
        self.request(s, Message::Init(init), Purpose::Init);
    }

    fn send(&mut self, s: usize, message: Message, purpose: Purpose) -> Result<(), SendFailure> {
        let budget = self.budget;
        let Some(inc) = self.slots[s].live.as_mut() else {
            return Err(SendFailure::Closed("no worker".into()));
        };
        if inc.pending.len() >= MAX_OUTSTANDING {
            return Err(SendFailure::Behind(format!(
                "{MAX_OUTSTANDING} requests unanswered"
            )));
        }
        inc.next_id += 1;
        let id = inc.next_id;
        let bytes = frame::encode(RequestId(id), &message)
            .map_err(|e| SendFailure::Encode(e.to_string()))?;
        let read_mark = inc.transmit(&bytes, budget)?;
        // PINGs are not retried: a missed PING is a hang, handled as such.
        let retry_at = match purpose {
            Purpose::Ping(_) => None,
            _ => Some(Instant::now() + backoff(1, &mut self.jitter)),
        };
        inc.pending.insert(
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

    fn request(&mut self, s: usize, message: Message, purpose: Purpose) {
        let kind = message.kind().name();
        if let Err(failure) = self.send(s, message, purpose) {
            match failure.kind() {
                Some(fault) => self.fault(
                    s,
                    fault,
                    format!("could not send {kind}: {}", failure.why()),
                ),
                None => {
                    self.failed = Some(format!(
                        "could not encode a {kind} request: {} (a bug in shmkline, please report it)",
                        failure.why()
                    ));
                }
            }
        }
    }

    /// Declares the slot's live worker faulty: record it, kill it; it is
    /// replaced once reaped.
    fn fault(&mut self, s: usize, kind: FaultKind, why: String) {
        let slot = &mut self.slots[s];
        let Some(inc) = slot.live.as_mut() else {
            return;
        };
        if inc.fault.is_some() || matches!(inc.state, State::Exited) {
            return;
        }
        // Never signal a pid already reaped: it may belong to another process now.
        let alive = inc.child.is_some();
        if inc.state == State::Cleaning {
            // Shutting down anyway: just make sure it goes.
            if alive {
                let _ = kill(Pid::from_raw(inc.pid as i32), OsSignal::SIGKILL);
            }
            return;
        }
        // Stopped by a signal (state T) means someone else froze it, whatever
        // symptom gave it away (a missed PING, a retry that ran out).
        inc.stopped = alive && is_stopped(inc.pid);
        tracing::warn!(slot = slot.id, pid = inc.pid, ?kind, reason = %why, "worker is faulty: replacing it");
        if alive && kind == FaultKind::Crash {
            // It is dying already: give it a moment to exit by itself, so its
            // exit status (not our kill) says why.
            inc.kill_at = Some(Instant::now() + CRASH_GRACE);
        } else if alive {
            let _ = kill(Pid::from_raw(inc.pid as i32), OsSignal::SIGKILL);
        }
        inc.state = State::Dead;
        inc.pending.clear();
        if self.events.len() >= EVENTS_KEPT {
            self.events.pop_front();
            // Indices into the deque shift by one.
            for slot in &mut self.slots {
                slot.recovering = slot.recovering.and_then(|i| i.checked_sub(1));
                if let Some(inc) = slot.live.as_mut() {
                    inc.fault = inc.fault.and_then(|i| i.checked_sub(1));
                }
            }
        }
        let slot = &mut self.slots[s];
        let inc = slot.live.as_mut().map(|inc| (inc.pid, inc));
        if let Some((pid, inc)) = inc {
            self.events.push_back(SupervisionEvent {
                slot: slot.id,
                pid,
                kind,
                cause: None,
                reason: why,
                exit: None,
                detected_at_ms: now_ms(),
                recovered_at_ms: None,
                recovery_ms: None,
                detected: Instant::now(),
            });
            inc.fault = Some(self.events.len() - 1);
        }
    }

    /// A failure the worker caused (or a failed start): counts against the
    /// slot's restart intensity and delays the restart.
    fn self_inflicted(&mut self, s: usize, why: String) {
        let now = Instant::now();
        let period = self.opts.restart_period;
        let limit = self.opts.restart_limit;
        let slot = &mut self.slots[s];
        slot.self_failures.push_back(now);
        while slot
            .self_failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > period)
        {
            slot.self_failures.pop_front();
        }
        let n = slot.self_failures.len() as u32;
        if n > limit {
            self.failed = Some(format!(
                "worker slot {} failed {n} times within {:?} (limit {limit}); last: {why}",
                slot.id, period
            ));
            return;
        }
        // A slot that cannot start at all gives up once the limit is reached,
        // however slowly its attempts fail (a start can take the connect timeout).
        if slot.failed_starts > limit {
            self.failed = Some(format!(
                "worker slot {} could not start {} times in a row (limit {limit}); last: {why}",
                slot.id, slot.failed_starts
            ));
            return;
        }
        let delay = RESTART_BACKOFF
            .saturating_mul(1 << (n.saturating_sub(1)).min(16))
            .min(RESTART_BACKOFF_CAP);
        tracing::warn!(
            slot = slot.id,
            failures = n,
            limit,
            ?delay,
            "self-inflicted failure: restarting after a backoff"
        );
        slot.restart_at = Some(now + delay);
    }

    fn handle_worker(&mut self, s: usize, no: u64, event: FromWorker) {
        let Some(inc) = self.slots[s].live.as_ref() else {
            return;
        };
        if inc.no != no {
            return; // from an incarnation already replaced
        }
        match event {
            FromWorker::Closed => {
                let inc = self.slots[s].live.as_mut().expect("checked above");
                if inc.state == State::Cleaning {
                    tracing::warn!(slot = s, "channel closed without CLEANUP_COMPLETE");
                    inc.state = State::Exited;
                } else {
                    self.fault(
                        s,
                        FaultKind::Crash,
                        "its channel closed (the process died)".into(),
                    );
                }
            }
            FromWorker::Malformed { error, len, kind } if error.is_payload_error() => {
                // A frame of this protocol whose payload does not decode: a
                // bug on one side, which replacing the worker would only
                // repeat. Reported, counted, and the run ends in error.
                let kind = kind.map_or("an unknown kind", |k| k.name());
                self.slots[s].undecodable += 1;
                tracing::error!(
                    slot = s,
                    kind,
                    bytes = len,
                    error = %error,
                    "a frame from a worker of this build does not decode: this is a bug in shmkline, please report it (if it carried signals, they are missing)"
                );
                self.undecodable.get_or_insert_with(|| {
                    format!("a {kind} frame of {len} bytes from worker {s}: {error}")
                });
            }
            FromWorker::Malformed { error, len, .. } => {
                self.slots[s].malformed += 1;
                tracing::error!(slot = s, error = %error, bytes = len, "malformed frame from worker");
                self.fault(
                    s,
                    FaultKind::Protocol,
                    format!("sent a malformed frame: {error}"),
                );
            }
            // The reader thread emits them; kept for completeness.
            FromWorker::Frame(_, Message::Signal(signal)) => self.emitter.signal(s, no, &signal),
            FromWorker::Frame(_, Message::Signals(signals)) => {
                self.emitter.signals(s, no, &signals)
            }
            FromWorker::Frame(id, message) => self.answer(s, id, message),
        }
    }

    fn answer(&mut self, s: usize, id: RequestId, message: Message) {
        let slot = &mut self.slots[s];
        let Some(inc) = slot.live.as_mut() else {
            return;
        };
        let Some(pending) = inc.pending.remove(&id.0) else {
            // An answer to a request already answered (a retry crossed the
            // first answer) or never made: nothing to do.
            tracing::debug!(
                slot = slot.id,
                id = id.0,
                kind = message.kind().name(),
                "answer to no pending request"
            );
            return;
        };
        // The worker reads in order: answering this request means it read
        // every frame up to the request's first copy.
        inc.read = (
            inc.read.0.max(pending.read_mark.0),
            inc.read.1.max(pending.read_mark.1),
        );
        match (pending.purpose, message) {
            (Purpose::Init, Message::Ready(ready)) => {
                tracing::info!(slot = slot.id, pid = ready.pid, "worker ready");
                inc.state = State::Syncing;
                inc.reached_ready = true;
                slot.failed_starts = 0;
                if slot.traders.is_empty() {
                    self.synced(s);
                } else {
                    inc.unsent = slot.traders.keys().cloned().collect();
                    self.send_traders(s);
                }
            }
            (Purpose::AddTrader(trader), Message::Ack) => {
                // Removed while its ADD was on the way: not held any more.
                if slot.traders.contains_key(&trader) {
                    inc.acked.insert(trader);
                }
                if inc.state == State::Syncing && inc.acked.len() == slot.traders.len() {
                    self.synced(s);
                } else {
                    self.send_traders(s);
                }
            }
            (Purpose::RemoveTrader(trader), Message::Ack) => {
                inc.removing.remove(&trader);
                tracing::info!(slot = slot.id, %trader, "trader removed");
            }
            (Purpose::Ping(sent), Message::Pong(pong)) => {
                let rtt = sent.elapsed();
                inc.rtt = Some(rtt);
                slot.rtt_hist.record(rtt);
                if let Some(synced) = inc.synced_at
                    && synced <= sent
                {
                    // Asked after every trader was acked: the progress it
                    // reports covers all of them.
                    slot.confirmed = slot.confirmed.max(pong.last_publish);
                    if let Some(ev) = slot.recovering.take()
                        && let Some(event) = self.events.get_mut(ev)
                    {
                        event.recovered_at_ms = Some(now_ms());
                        event.recovery_ms = Some(event.detected.elapsed().as_secs_f64() * 1e3);
                        tracing::info!(
                            slot = slot.id,
                            recovery_ms = event.recovery_ms,
                            "slot recovered"
                        );
                    }
                }
                if pong.gaps > slot.live_gaps {
                    tracing::error!(
                        slot = slot.id,
                        gaps = pong.gaps,
                        "the worker reports candles that left the ring unevaluated"
                    );
                    slot.gaps += pong.gaps - slot.live_gaps;
                    slot.live_gaps = pong.gaps;
                }
                // A long catch-up moves the candles judged before the
                // publish counter it covers: either is progress.
                let now = (pong.last_publish, pong.judged);
                if inc
                    .progress
                    .is_none_or(|((publish, judged), _)| now.0 > publish || now.1 > judged)
                {
                    inc.progress = Some((now, Instant::now()));
                }
                inc.last_pong = Some((Instant::now(), pong));
            }
            (Purpose::Cleanup, Message::CleanupComplete(released)) => {
                inc.state = State::Exited;
                tracing::info!(slot = slot.id, ?released, "worker cleaned up");
            }
            (purpose, Message::Nack { reason }) => {
                tracing::error!(slot = slot.id, ?purpose, %reason, "worker refused a request");
                match purpose {
                    Purpose::AddTrader(t) => {
                        // Refused for good: the slot stops expecting it, and the
                        // run will end with an error naming it.
                        slot.drop_trader(&t, &self.emitter);
                        self.refused
                            .push(format!("{t} (worker {}: {reason})", slot.id));
                        let held = slot.traders.len();
                        if slot
                            .live
                            .as_ref()
                            .is_some_and(|i| i.state == State::Syncing && i.acked.len() == held)
                        {
                            self.synced(s);
                        } else {
                            // The refused one freed a place in the window.
                            self.send_traders(s);
                        }
                    }
                    _ => self.fault(
                        s,
                        FaultKind::Protocol,
                        format!("refused a request: {reason}"),
                    ),
                }
            }
            (purpose, other) => {
                let why = format!("answered {purpose:?} with {}", other.kind().name());
                self.fault(s, FaultKind::Protocol, why);
            }
        }
    }

    /// Sends the slot's next unacknowledged traders, each resuming from the
    /// slot's confirmed point, keeping at most [`ADD_WINDOW`] frames and
    /// the byte budget less [`CONTROL_RESERVE`] in flight: a trader set of
    /// large specs goes out as fast as the worker acknowledges it, never
    /// faster than its socket takes.
    fn send_traders(&mut self, s: usize) {
        let slot = &self.slots[s];
        let Some(inc) = slot.live.as_ref() else {
            return;
        };
        let mut in_flight = BTreeSet::new();
        let mut in_flight_bytes = 0;
        for p in inc.pending.values() {
            if let Purpose::AddTrader(id) = &p.purpose {
                in_flight.insert(id.clone());
                in_flight_bytes += p.bytes.len() as u64;
            }
        }
        let byte_window = self.budget.bytes.saturating_sub(CONTROL_RESERVE);
        let mut next = Vec::new();
        let slot = &mut self.slots[s];
        let Some(inc) = slot.live.as_mut() else {
            return;
        };
        while in_flight.len() + next.len() < ADD_WINDOW {
            let Some(id) = inc.unsent.pop_front() else {
                break;
            };
            let Some(t) = slot.traders.get(&id) else {
                continue; // removed meanwhile
            };
            if inc.acked.contains(&id)
                || in_flight.contains(&id)
                || next.iter().any(|(queued, _)| *queued == id)
            {
                continue;
            }
            let resume_after = slot
                .starts
                .get(&id)
                .map_or(slot.confirmed, |&at| at.max(slot.confirmed));
            let message = Message::AddTrader {
                spec: t.clone(),
                resume_after,
            };
            let len = frame::encode(RequestId(0), &message).map_or(0, |f| f.len() as u64);
            // The first in flight always goes: a frame fits the budget.
            if !(in_flight.is_empty() && next.is_empty()) && in_flight_bytes + len > byte_window {
                inc.unsent.push_front(id);
                break;
            }
            in_flight_bytes += len;
            next.push((id, message));
        }
        for (id, message) in next {
            self.request(s, message, Purpose::AddTrader(id));
        }
    }

    /// Every trader of the slot is acknowledged: ready, and PINGed at once so
    /// the recovery is confirmed without waiting for the next interval.
    fn synced(&mut self, s: usize) {
        if let Some(inc) = self.slots[s].live.as_mut() {
            inc.state = State::Ready;
            inc.synced_at = Some(Instant::now());
        }
        self.request(s, Message::Ping, Purpose::Ping(Instant::now()));
    }

    fn retry_due(&mut self) {
        let now = Instant::now();
        for s in 0..self.slots.len() {
            let Some(inc) = self.slots[s].live.as_mut() else {
                continue;
            };
            let due: Vec<u64> = inc
                .pending
                .iter()
                .filter(|(_, p)| p.retry_at.is_some_and(|t| t <= now))
                .map(|(&id, _)| id)
                .collect();
            for id in due {
                let budget = self.budget;
                let Some(inc) = self.slots[s].live.as_mut() else {
                    break;
                };
                let Some(p) = inc.pending.get_mut(&id) else {
                    continue;
                };
                if p.attempts >= MAX_ATTEMPTS {
                    let why = format!("no answer to {:?} after {MAX_ATTEMPTS} attempts", p.purpose);
                    self.fault(s, FaultKind::Protocol, why);
                    break;
                }
                p.attempts += 1;
                p.retry_at = Some(now + backoff(p.attempts, &mut self.jitter));
                let bytes = p.bytes.clone();
                let attempt = p.attempts;
                self.slots[s].retries += 1;
                tracing::warn!(slot = s, id, attempt, "no answer yet: re-sending");
                let Some(inc) = self.slots[s].live.as_mut() else {
                    break;
                };
                match inc.transmit(&bytes, budget) {
                    Ok(_) => {}
                    // Too much unread for another copy now: this attempt
                    // is skipped, and a worker that never reads runs out of
                    // attempts (or misses a PING) like one that never answers.
                    Err(SendFailure::Behind(why)) => {
                        tracing::warn!(slot = s, id, attempt, reason = %why, "not re-sent for now");
                    }
                    Err(failure) => {
                        let fault = failure.kind().unwrap_or(FaultKind::Protocol);
                        self.fault(s, fault, format!("could not re-send: {}", failure.why()));
                        break;
                    }
                }
            }
        }
    }

    /// A worker that still answers PINGs but whose progress (neither the
    /// batches it covered nor the candles it judged) has not moved for
    /// `stall_timeout` while newer batches wait is stuck in its evaluation.
    /// A slow one is not: its passes are bounded and report as they go.
    fn stall_due(&mut self) {
        let published = self.inst.store.lock().stats().publishes;
        for s in 0..self.slots.len() {
            let Some(inc) = self.slots[s].live.as_ref() else {
                continue;
            };
            if inc.state != State::Ready {
                continue;
            }
            if let Some(((value, _), since)) = inc.progress
                && value < published
                && since.elapsed() > self.opts.stall_timeout
            {
                let why = format!(
                    "its evaluation made no progress for {:?} (stuck at batch {value} of {published})",
                    since.elapsed()
                );
                self.fault(s, FaultKind::Stall, why);
            }
        }
    }

    fn ping_due(&mut self) {
        for s in 0..self.slots.len() {
            let Some(inc) = self.slots[s].live.as_ref() else {
                continue;
            };
            if !inc.live() {
                continue;
            }
            let outstanding = inc.pending.values().find_map(|p| match p.purpose {
                Purpose::Ping(sent) => Some(sent),
                _ => None,
            });
            match outstanding {
                Some(sent) if sent.elapsed() > self.opts.ping_deadline => {
                    let waited = sent.elapsed();
                    self.fault(
                        s,
                        FaultKind::Hang,
                        format!("PING unanswered for {waited:?}"),
                    );
                }
                Some(_) => {}
                None if inc.state == State::Ready => {
                    let due = inc
                        .last_pong
                        .as_ref()
                        .is_none_or(|(at, _)| at.elapsed() >= self.opts.ping_interval);
                    if due {
                        self.request(s, Message::Ping, Purpose::Ping(Instant::now()));
                    }
                }
                None => {}
            }
        }
    }

    /// Reaps exited workers, records why each went, and schedules replacements.
    fn reap(&mut self) {
        for s in 0..self.slots.len() {
            let Some(inc) = self.slots[s].live.as_mut() else {
                continue;
            };
            // A crash seen on the channel gets a moment to exit by itself.
            if inc.kill_at.is_some_and(|t| t <= Instant::now())
                && let Some(child) = inc.child.as_mut()
            {
                inc.kill_at = None;
                let _ = child.kill();
            }
            let Some(child) = inc.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            inc.child = None;
            tracing::info!(slot = s, pid = inc.pid, %status, "worker exited");
            match inc.state {
                State::Cleaning | State::Exited => {}
                State::Dead => {}
                _ => {
                    // Died before anyone noticed otherwise.
                    self.fault(s, FaultKind::Crash, format!("exited ({status})"));
                }
            }
            let Some(inc) = self.slots[s].live.as_mut() else {
                continue;
            };
            if inc.state != State::Dead {
                continue;
            }
            // Why did it go?
            let ev = inc.fault;
            let cause = match ev.and_then(|i| self.events.get(i)).map(|e| e.kind) {
                _ if inc.stopped => Cause::Outside,
                Some(FaultKind::Hang | FaultKind::Stall | FaultKind::Protocol) => {
                    Cause::SelfInflicted
                }
                _ => classify(&status),
            };
            let never_ready = !inc.reached_ready;
            if let Some(event) = ev.and_then(|i| self.events.get_mut(i)) {
                event.cause = Some(cause);
                event.exit = Some(status.to_string());
            }
            let slot = &mut self.slots[s];
            if never_ready && cause == Cause::SelfInflicted {
                slot.failed_starts += 1;
            }
            self.emitter.accept(s, None);
            if let Some(link) = slot.live.take().and_then(|mut inc| inc.link.take()) {
                self.graveyard.push(link);
            }
            slot.restarts += 1;
            slot.recovering = ev;
            match cause {
                Cause::Outside => slot.restart_at = Some(Instant::now()),
                Cause::SelfInflicted
                    if ev
                        .and_then(|i| self.events.get(i))
                        .is_some_and(|e| matches!(e.kind, FaultKind::Crash | FaultKind::Stall)) =>
                {
                    let why = ev
                        .and_then(|i| self.events.get(i))
                        .map_or_else(String::new, |e| e.reason.clone());
                    // Only a crash can be pinned on the trader being evaluated;
                    // a hang or a protocol fault says nothing about it.
                    self.blame(s);
                    self.self_inflicted(s, why);
                }
                Cause::SelfInflicted => {
                    let why = ev
                        .and_then(|i| self.events.get(i))
                        .map_or_else(String::new, |e| e.reason.clone());
                    self.self_inflicted(s, why);
                }
            }
        }
        // Reader threads of dead workers end once their process is gone.
        let mut i = 0;
        while i < self.graveyard.len() {
            if self.graveyard[i].is_finished() {
                self.graveyard.swap_remove(i).join();
            } else {
                i += 1;
            }
        }
    }

    /// After a self-inflicted crash: the trader the worker was evaluating, as
    /// its black box says, gets a strike; at `quarantine_after` strikes it is
    /// taken out of its slot, and the others keep running.
    fn blame(&mut self, s: usize) {
        let Some(word) = self
            .black_boxes
            .get(s)
            .and_then(|b| b.as_ref())
            .and_then(|b| b.word(0))
        else {
            return;
        };
        let hash = word.swap(0, std::sync::atomic::Ordering::Relaxed);
        if hash == 0 {
            return;
        }
        let slot = &mut self.slots[s];
        let Some(trader) = slot
            .traders
            .keys()
            .find(|id| trader_hash(id) == hash)
            .cloned()
        else {
            return;
        };
        let strikes = self.strikes.entry(trader.clone()).or_default();
        *strikes += 1;
        tracing::warn!(slot = slot.id, %trader, strikes = *strikes, limit = self.opts.quarantine_after, "the worker crashed while evaluating this trader");
        if *strikes >= self.opts.quarantine_after {
            tracing::error!(slot = slot.id, %trader, strikes = *strikes, "trader quarantined: it keeps crashing its workers; the others keep running");
            slot.drop_trader(&trader, &self.emitter);
            self.quarantined.push((trader, slot.id));
            // The crashes were the trader's, not the slot's.
            slot.self_failures.clear();
        }
    }

    fn restart_due(&mut self, spawner: &Spawner) {
        let now = Instant::now();
        for s in 0..self.slots.len() {
            let slot = &self.slots[s];
            if slot.live.is_none() && !slot.spawning && slot.restart_at.is_some_and(|t| t <= now) {
                self.spawn_slot(s, spawner);
            }
        }
    }

    /// Writes the batches due by now, but never more than half a ring ahead
    /// of the slowest slot's confirmed progress: a finite feed waits for the
    /// traders rather than overwrite candles they have not evaluated. At most
    /// [`FEED_PUBLISHES_PER_PASS`] publishes per call; a feed going as fast
    /// as it can publishes every [`FAST_BATCHES_PER_PUBLISH`] batches (a
    /// FUTEX_WAKE on shared memory costs more than the batch it announces).
    fn feed(&mut self) -> Result<()> {
        if self.feed_started.is_none() || self.final_publish.is_some() {
            return Ok(());
        }
        let slowest = self.slots.iter().map(|s| s.confirmed).min().unwrap_or(0);
        let Some(pump) = self.pump.as_mut() else {
            return Ok(());
        };
        let ring = self.inst.store.lock().candles_per_series() as u64;
        // A small ring gets smaller groups: a publish must not carry more
        // than a quarter of the ring per series.
        let per_publish = match pump.pacer.pace {
            Pace::Fast => FAST_BATCHES_PER_PUBLISH.min((ring / 4).max(1)),
            Pace::Rate(_) | Pace::Speed(_) => 1,
        };
        // How far a series may run ahead of the slowest worker's confirmed
        // batch: a trader's window is at most half the ring (checked at
        // start), so half the ring plus the candle being judged stays in it.
        let max_ahead = ring / 2 + 1;
        for _ in 0..FEED_PUBLISHES_PER_PASS {
            // The store's counter is the feed's publishes plus the initial
            // one, so the next publish is number `publishes + 2`; each
            // carries at most `per_publish` candles per series.
            if self.opts.backpressure
                && (pump.publishes + 2).saturating_sub(slowest) * per_publish > max_ahead
            {
                break;
            }
            let mut store = self.inst.store.lock();
            let mut wrote = 0;
            let mut done = false;
            while wrote < per_publish {
                let Some(at) = pump.source.peek()? else {
                    done = true;
                    break;
                };
                if !pump.pacer.due(at) {
                    break;
                }
                pump.write_batch(&mut store)?;
                wrote += 1;
            }
            if wrote > 0 {
                store.publish();
                pump.publishes += 1;
                if let Some(at) = pump.last_at {
                    self.emitter.published(at);
                }
            }
            if done {
                let published = store.stats().publishes;
                drop(store);
                self.final_publish = Some(published);
                pump.finish();
                if pump.source.as_replay().is_some() && pump.writer.counters().candles_written == 0
                {
                    bail!("the replay holds no usable candle (see the bad lines above)");
                }
                tracing::info!(
                    batches = pump.pacer.batches,
                    publish = published,
                    counters = ?pump.writer.counters(),
                    "finite feed written"
                );
                break;
            }
            if wrote < per_publish {
                break; // the next batch is not due yet
            }
        }
        pump.report_progress();
        Ok(())
    }

    /// True once every slot's worker confirmed it evaluated the final batch.
    fn feed_done(&self) -> bool {
        let Some(last) = self.final_publish else {
            return false;
        };
        self.slots.iter().all(|slot| slot.confirmed >= last)
    }

    /// Gap events reported by the workers (candles that left the ring before
    /// they could be evaluated), summed over the slots' latest reports.
    fn gaps(&self) -> u64 {
        self.slots.iter().map(|s| s.gaps).sum()
    }

    fn slot_state(slot: &Slot) -> &'static str {
        match slot.live.as_ref().map(|i| i.state) {
            Some(State::Starting) => "starting",
            Some(State::Syncing) => "syncing",
            // Ready, but the PONG confirming its recovery is still to come.
            Some(State::Ready) if slot.recovering.is_some() => "recovering",
            Some(State::Ready) => "ready",
            Some(State::Cleaning) => "cleaning",
            Some(State::Exited) => "exited",
            Some(State::Dead) => "dead",
            None if slot.spawning => "spawning",
            None if slot.restart_at.is_some() => "backoff",
            None => "down",
        }
    }

    fn status(&self) -> serde_json::Value {
        let workers: Vec<WorkerStatus> = self
            .slots
            .iter()
            .map(|slot| {
                let inc = slot.live.as_ref();
                let pong = inc.and_then(|i| i.last_pong.as_ref());
                WorkerStatus {
                    id: slot.id,
                    pid: inc.map_or(0, |i| i.pid),
                    state: Self::slot_state(slot),
                    traders: inc.map_or(0, |i| i.acked.len()),
                    trader_ids: slot.traders.keys().map(String::as_str).collect(),
                    restarts: slot.restarts,
                    rtt_us: inc.and_then(|i| i.rtt).map(|d| d.as_micros() as u64),
                    last_pong_age_ms: pong.map(|(at, _)| at.elapsed().as_millis() as u64),
                    retries: slot.retries,
                    malformed_frames: slot.malformed,
                    undecodable_frames: slot.undecodable,
                    signals: self.emitter.received(slot.id as usize),
                    rss_bytes: pong.map(|(_, p)| p.rss_bytes),
                    last_publish: pong.map(|(_, p)| p.last_publish),
                    confirmed_publish: slot.confirmed,
                    gaps: pong.map(|(_, p)| p.gaps),
                    judged: pong.map(|(_, p)| p.judged),
                    signal_frames: pong.map(|(_, p)| p.signal_frames),
                    largest_signal_frame_bytes: pong.map(|(_, p)| p.largest_signal_frame),
                    passes: pong.map(|(_, p)| p.passes),
                    pass_p50_us: pong.map(|(_, p)| p.pass_p50_us),
                    pass_p99_us: pong.map(|(_, p)| p.pass_p99_us),
                    rtt_histogram_log2_us: &slot.rtt_hist.buckets,
                }
            })
            .collect();
        let stats = self.inst.store.lock().stats();
        let signals = self.emitter.figures();
        let recovered = self
            .events
            .iter()
            .filter(|e| e.recovery_ms.is_some())
            .count();
        serde_json::json!({
            "instance": self.opts.instance.as_str(),
            "pid": std::process::id(),
            "state": if self.shutting_down.is_some() { "shutting_down" } else { "running" },
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "segment": {
                "name": self.inst.store.lock().name(),
                "size_bytes": self.inst.store.lock().size_bytes(),
                "generation": self.inst.store.lock().generation(),
            },
            "feed": match (&self.pump, &self.live) {
                (Some(pump), _) => pump.status(&self.opts, self.final_publish.is_some(), self.feed_done(), &stats),
                (None, Some(live)) => {
                    let mut v = serde_json::to_value(live.health().status()).unwrap_or_default();
                    v["kind"] = "binance".into();
                    v
                }
                (None, None) => serde_json::json!({ "kind": self.opts.feed.kind(), "started": false }),
            },
            "signals": {
                "emitted": signals.emitted,
                "duplicates_dropped": signals.duplicates,
                "latency_samples": signals.latency_samples,
                "latency_p50_us": signals.latency_p50_us,
                "latency_p99_us": signals.latency_p99_us,
            },
            "gaps": self.gaps(),
            "quarantined": self.quarantined.iter().map(|(t, slot)| serde_json::json!({
                "trader": t, "slot": slot, "strikes": self.strikes.get(t).copied().unwrap_or(0),
            })).collect::<Vec<_>>(),
            "supervision": {
                "faults": self.events.len(),
                "recovered": recovered,
                "recent": self.events.iter().rev().take(16).collect::<Vec<_>>(),
            },
            "workers": workers,
        })
    }

    fn control(&mut self, req: ControlRequest) {
        let answer = match req.line.as_str() {
            "status" => self.status(),
            "events" => serde_json::json!({ "events": self.events }),
            "traders" => self.traders_list(),
            line if line.starts_with('{') => match serde_json::from_str::<TradersCommand>(line) {
                Ok(TradersCommand::Add { traders }) => self.traders_add(traders),
                Ok(TradersCommand::Remove { id }) => self.traders_remove(&id),
                Err(e) => {
                    serde_json::json!({ "error": format!("a request the coordinator does not understand: {e}") })
                }
            },
            other => {
                serde_json::json!({ "error": format!("unknown request {other:?}: try status, events or traders") })
            }
        };
        let _ = req.reply.send(answer.to_string());
    }

    /// Every trader: where it runs and whether its worker holds it.
    fn traders_list(&self) -> serde_json::Value {
        let mut list = Vec::new();
        for slot in &self.slots {
            let acked = slot.live.as_ref().map(|i| &i.acked);
            for t in slot.traders.values() {
                list.push(serde_json::json!({
                    "id": t.id, "slot": slot.id, "interval": t.interval, "symbols": t.symbols,
                    "rule": t.rule, "cooldown": t.cooldown, "labels": t.labels,
                    "state": if acked.is_some_and(|a| a.contains(&t.id)) { "running" } else { "pending" },
                    "added_at_publish": slot.starts.get(&t.id),
                }));
            }
        }
        for (t, slot) in &self.quarantined {
            list.push(serde_json::json!({ "id": t, "slot": slot, "state": "quarantined" }));
        }
        serde_json::json!({ "traders": list })
    }

    /// Adds traders to a running engine, all or none: each is checked (spec,
    /// rule, window, interval, id not taken) before any is sent. Each goes
    /// to the slot with the fewest traders and starts with the candles
    /// written after this moment.
    fn traders_add(&mut self, traders: Vec<TraderSpec>) -> serde_json::Value {
        if self.shutting_down.is_some() {
            return serde_json::json!({ "error": "the engine is shutting down: nothing was added" });
        }
        let mut taken: BTreeSet<String> = self
            .slots
            .iter()
            .flat_map(|s| s.traders.keys().cloned())
            .chain(self.quarantined.iter().map(|(t, _)| t.clone()))
            .collect();
        let removing: BTreeSet<&String> = self
            .slots
            .iter()
            .filter_map(|s| s.live.as_ref())
            .flat_map(|i| i.removing.iter())
            .collect();
        for t in &traders {
            if removing.contains(&t.id) {
                return serde_json::json!({ "error": format!("trader {} is still being removed from its worker: try again in a moment; nothing was added", t.id) });
            }
            if let Err(e) = check_trader(&self.opts.store, t) {
                return serde_json::json!({ "error": format!("{e:#}; nothing was added") });
            }
            if !taken.insert(t.id.clone()) {
                return serde_json::json!({ "error": format!("trader {} already exists (or appears twice): remove it first; nothing was added", t.id) });
            }
        }
        if traders.is_empty() {
            return serde_json::json!({ "error": "no traders to add" });
        }
        // Placed on the slot with the fewest, so no worker passes its limit
        // while the total stays within all of theirs.
        let held: usize = self.slots.iter().map(|s| s.traders.len()).sum();
        let capacity = self.slots.len() * MAX_TRADERS_PER_WORKER;
        if held + traders.len() > capacity {
            return serde_json::json!({ "error": format!(
                "adding {} trader(s) to the {held} held would pass the limit of {MAX_TRADERS_PER_WORKER} per worker ({capacity} over {} workers): restart with more --workers; nothing was added",
                traders.len(), self.slots.len()
            ) });
        }
        let from_publish = self.inst.store.lock().stats().publishes;
        let mut added = Vec::new();
        for t in traders {
            let s = (0..self.slots.len())
                .min_by_key(|&s| self.slots[s].traders.len())
                .unwrap_or(0);
            tracing::info!(trader = %t.id, slot = s, from_publish, "trader added");
            added.push(serde_json::json!({ "id": t.id, "slot": s }));
            self.slots[s].add_trader(t, from_publish, &self.emitter);
            if self.slots[s]
                .live
                .as_ref()
                .is_some_and(|i| i.state == State::Ready)
            {
                self.send_traders(s);
            }
        }
        serde_json::json!({ "added": added, "from_publish": from_publish, "last_batch_at": self.last_batch_at() })
    }

    /// Removes a trader; its worker stops evaluating it at once.
    fn traders_remove(&mut self, id: &str) -> serde_json::Value {
        let before = self.quarantined.len();
        self.quarantined.retain(|(t, _)| t != id);
        if self.quarantined.len() < before {
            self.strikes.remove(id);
            return serde_json::json!({ "removed": id, "was": "quarantined" });
        }
        let Some(s) = self.slots.iter().position(|s| s.traders.contains_key(id)) else {
            return serde_json::json!({ "error": format!("no trader {id}: `shmkline traders list` shows them") });
        };
        let slot = &mut self.slots[s];
        slot.drop_trader(id, &self.emitter);
        let live = match slot.live.as_mut() {
            Some(inc) if inc.live() => {
                inc.acked.remove(id);
                inc.removing.insert(id.to_owned());
                true
            }
            Some(inc) => {
                inc.acked.remove(id);
                false
            }
            None => false,
        };
        // A fixed trader re-added under the same id starts with a clean record.
        self.strikes.remove(id);
        if live {
            self.request(
                s,
                Message::RemoveTrader { id: id.to_owned() },
                Purpose::RemoveTrader(id.to_owned()),
            );
        }
        tracing::info!(trader = id, slot = s, "trader removed from its slot");
        serde_json::json!({ "removed": id, "slot": s, "last_batch_at": self.last_batch_at() })
    }

    /// The delivery time (ms) of the last batch a finite feed wrote.
    fn last_batch_at(&self) -> Option<i64> {
        self.pump.as_ref().and_then(|p| p.last_at)
    }

    fn begin_shutdown(&mut self, why: &str) {
        if self.shutting_down.is_some() {
            return;
        }
        tracing::info!(reason = why, "shutting down: CLEANUP to every worker");
        self.shutting_down = Some(Instant::now());
        for s in 0..self.slots.len() {
            self.slots[s].restart_at = None;
            let live = self.slots[s].live.as_ref().is_some_and(|i| i.live());
            if live {
                if let Some(inc) = self.slots[s].live.as_mut() {
                    inc.pending.clear();
                }
                self.request(s, Message::Cleanup, Purpose::Cleanup);
                if let Some(inc) = self.slots[s].live.as_mut()
                    && inc.state != State::Dead
                {
                    inc.state = State::Cleaning;
                }
            }
        }
    }

    fn shutdown_complete(&self) -> bool {
        self.slots.iter().all(|slot| {
            !slot.spawning
                && slot
                    .live
                    .as_ref()
                    .is_none_or(|i| i.child.is_none() && i.state != State::Cleaning)
        })
    }

    /// SIGKILLs every worker still alive and reaps it.
    fn kill_stragglers(&mut self) {
        for slot in &mut self.slots {
            if let Some(inc) = slot.live.as_mut()
                && let Some(mut child) = inc.child.take()
            {
                if inc.state == State::Cleaning {
                    // Not a run fault: the deadline is exactly for this case.
                    tracing::warn!(
                        slot = slot.id,
                        pid = inc.pid,
                        "no CLEANUP_COMPLETE by the deadline: killing it"
                    );
                    inc.state = State::Exited;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The OS-signal thread: closed and joined when dropped.
struct SignalThread {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a run ended with.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Signals printed.
    pub signals: u64,
    /// Worker faults detected (and recovered from, unless the run stopped first).
    pub faults: usize,
}

/// Runs the coordinator until an orderly shutdown.
pub fn run(opts: RunOptions) -> Result<RunSummary> {
    check_feed(&opts)?;
    let capacity = opts.workers as usize * MAX_TRADERS_PER_WORKER;
    if opts.traders.len() > capacity {
        bail!(
            "{} traders need at least {} workers (a worker holds at most {MAX_TRADERS_PER_WORKER}): raise --workers",
            opts.traders.len(),
            opts.traders.len().div_ceil(MAX_TRADERS_PER_WORKER)
        );
    }
    for t in &opts.traders {
        check_trader(&opts.store, t)?;
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
    let source = match &opts.feed {
        FeedConfig::Binance(live) => {
            live.check()?;
            None
        }
        finite => Some(finite.source()?),
    };
    let inst = Instance::start(&opts.instance, &opts.store)?;
    // ipc-channel's one-shot sockets go into the private runtime directory
    // (short path, wiped at start) rather than the system temp directory.
    let _ = tempfile::env::override_temp_dir(inst.runtime.dir());

    let (events_tx, events_rx) = mpsc::sync_channel::<Event>(EVENT_BOUND);
    let signal_events = events_tx.clone();
    let os_signals = std::sync::Arc::new(OsSignals::default());
    let counts = std::sync::Arc::clone(&os_signals);
    let signal_thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let counter = if sig == SIGINT {
                    &counts.sigint
                } else {
                    &counts.sigterm
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Only a wake-up: the count above is what the loop acts on, so
                // a full queue cannot swallow a signal.
                let _ = signal_events.try_send(Event::OsSignal(sig));
            }
        })
        .context("starting the signal thread")?;
    // Closes the signal iterator and joins its thread on every way out of
    // this function, early error returns included.
    let signal_guard = SignalThread {
        handle: signals_handle,
        thread: Some(signal_thread),
    };
    let (out_tx, out_rx) = mpsc::sync_channel::<emit::Batch>(OUTPUT_BOUND);
    let output = Arc::new(emit::Output::default());
    let emitter = Arc::new(Emitter::new(opts.workers as usize, out_tx, output.clone()));
    let output_thread =
        emit::spawn_output(out_rx, output.clone()).context("starting the output thread")?;
    let control = ControlServer::start(inst.runtime.dir(), control::forward_to(events_tx.clone()))?;
    let spawner = Spawner::start(opts.worker_bin.clone(), opts.instance.clone())?;

    // Traders are spread over the slots round-robin; a slot keeps its traders
    // across worker replacements.
    let mut assignment: Vec<BTreeMap<String, TraderSpec>> =
        vec![BTreeMap::new(); opts.workers as usize];
    for (k, spec) in opts.traders.iter().enumerate() {
        assignment[k % opts.workers as usize].insert(spec.id.clone(), spec.clone());
    }
    let slots = assignment
        .into_iter()
        .enumerate()
        .map(|(id, traders)| Slot {
            id: id as u32,
            traders,
            starts: BTreeMap::new(),
            confirmed: 0,
            incarnations: 0,
            live: None,
            spawning: false,
            restarts: 0,
            self_failures: VecDeque::new(),
            failed_starts: 0,
            restart_at: None,
            recovering: None,
            gaps: 0,
            live_gaps: 0,
            retries: 0,
            malformed: 0,
            undecodable: 0,
            rtt_hist: RttHistogram::default(),
        })
        .collect();
    // One black box per slot, owned (and unlinked) here; a leftover of a
    // killed coordinator is stale, as we hold the instance lock.
    let black_boxes = (0..opts.workers)
        .map(|slot| {
            let name = black_box_name(&opts.instance, slot);
            let _ = nix::sys::mman::shm_unlink(name.as_str());
            SharedWords::create(&name, 1)
                .map_err(|e| tracing::warn!(error = %e, "no black box: crashes cannot be pinned on a trader"))
                .ok()
        })
        .collect();
    let generation = inst.store.lock().generation();
    let mut coord = Coordinator {
        jitter: Jitter(generation | 1),
        inst,
        slots,
        events_tx,
        pump: source.map(|source| Pump {
            writer: FeedWriter::new(&opts.store.intervals, &opts.aggregate),
            pacer: Pacer::new(opts.pace),
            progress: source.as_replay().map(|r| Progress::new(r.total_bytes())),
            source,
            publishes: 0,
            last_at: None,
        }),
        live: None,
        last_heartbeat: Instant::now(),
        feed_started: None,
        final_publish: None,
        emitter: emitter.clone(),
        started: Instant::now(),
        shutting_down: None,
        budget: Budget::from_system(),
        events: VecDeque::new(),
        graveyard: Vec::new(),
        failed: None,
        refused: Vec::new(),
        undecodable: None,
        os_signals,
        black_boxes,
        strikes: BTreeMap::new(),
        quarantined: Vec::new(),
        opts,
    };
    if let Some(pump) = coord.pump.as_mut() {
        for symbol in pump.source.known_symbols() {
            pump.writer
                .register(&mut *coord.inst.store.lock(), &symbol)?;
        }
    }
    coord.inst.store.lock().publish();
    for slot in &coord.slots {
        slot.tell_holds(&coord.emitter);
    }

    let result = drive(&mut coord, &spawner, &events_rx);

    // Teardown, whatever happened: the live feed stopped (the store no
    // longer changes), every worker killed and reaped, then the threads
    // (whose channels close with the workers), then the files.
    if let Some(mut live) = coord.live.take() {
        live.stop();
    }
    // Reader threads waiting on a stdout nobody reads must not keep the
    // process alive (their threads are joined below).
    coord.emitter.give_up_after(OUTPUT_DRAIN);
    coord.kill_stragglers();
    drop(events_rx);
    for slot in &mut coord.slots {
        if let Some(link) = slot.live.take().and_then(|mut inc| inc.link.take()) {
            link.join();
        }
    }
    for link in coord.graveyard.drain(..) {
        link.join();
    }
    // A spawn may have been in flight: the spawner finishes it, and its
    // delivery (to a closed channel) drops the process, which is then reaped below.
    drop(spawner);
    drop(control);
    drop(signal_guard);
    // Let the output thread write what is queued, as long as stdout keeps
    // taking it: a slow reader is waited for, one that stopped reading is
    // given up on after the drain time (the thread dies with the process).
    coord.emitter.close_output();
    let drain_from = Instant::now();
    while !output_thread.is_finished()
        && drain_from.max(output.last_moved()).elapsed() < OUTPUT_DRAIN
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    if output_thread.is_finished() {
        let _ = output_thread.join();
    }
    let (emitted, _) = coord.emitter.delivery();
    let written = output.written();
    if result.is_ok() && written < emitted {
        bail!(
            "{} of {emitted} signals were not written to stdout ({}): its reader closed it or stopped reading",
            emitted - written,
            if output.lost() > 0 {
                "stdout closed or given up on"
            } else {
                "still queued when the drain time ran out"
            }
        );
    }
    if result.is_ok()
        && let Some(first) = &coord.undecodable
    {
        let n: u64 = coord.slots.iter().map(|s| s.undecodable).sum();
        bail!(
            "{n} frame(s) from workers could not be decoded (first: {first}): this is a bug in shmkline, please report it; signals they carried are missing"
        );
    }
    if result.is_ok() && !coord.refused.is_empty() {
        bail!(
            "traders refused by their worker: {}",
            coord.refused.join("; ")
        );
    }
    if result.is_ok() && !coord.quarantined.is_empty() {
        let names: Vec<String> = coord
            .quarantined
            .iter()
            .map(|(t, slot)| format!("{t} (slot {slot})"))
            .collect();
        bail!(
            "traders quarantined after crashing their workers {} times: {}; the other traders ran to the end",
            coord.opts.quarantine_after,
            names.join(", ")
        );
    }
    if result.is_ok() && coord.gaps() > 0 {
        bail!(
            "{} gap(s): candles left the ring before a worker could evaluate them (see the log); their signals are missing",
            coord.gaps()
        );
    }
    let figures = coord.emitter.figures();
    let summary = RunSummary {
        signals: figures.emitted,
        faults: coord.events.len(),
    };
    tracing::info!(
        signals = summary.signals,
        duplicates = figures.duplicates,
        faults = summary.faults,
        "coordinator stopped"
    );
    result.map(|()| summary)
}

/// Refuses a trader this store cannot run: a bad spec or rule, a window
/// longer than half the ring, an interval the store does not keep.
fn check_trader(store: &StoreConfig, t: &TraderSpec) -> Result<()> {
    let half_ring = store.candles_per_series as usize / 2;
    // The feed runs up to half a ring ahead of the slowest worker: a
    // window longer than that could leave the ring before a verdict.
    let window = t.compile()?.lookback() + t.cooldown as usize;
    if window > half_ring {
        bail!(
            "trader {}: its rule and cooldown need {window} candles, more than half the ring ({half_ring} of --candles-per-series {}): raise --candles-per-series or shorten the rule",
            t.id,
            store.candles_per_series
        );
    }
    if !store.intervals.contains(&t.interval) {
        bail!(
            "trader {} uses interval {}, which the store does not keep (--intervals)",
            t.id,
            t.interval
        );
    }
    Ok(())
}

/// Refuses a feed configuration that cannot run, saying which flag to fix.
fn check_feed(opts: &RunOptions) -> Result<()> {
    if let FeedConfig::Synthetic {
        symbols, candles, ..
    } = &opts.feed
    {
        if *symbols == 0 || *symbols > opts.store.symbols as usize {
            bail!(
                "--symbols {symbols} must be between 1 and the store's --max-symbols {}",
                opts.store.symbols
            );
        }
        if *candles == Some(0) {
            bail!(
                "--candles 0: a finite feed needs at least one candle (omit --candles to run until stopped)"
            );
        }
    }
    match opts.pace {
        Pace::Rate(rate) if !(rate > 0.0 && rate <= MAX_RATE) => bail!(
            "--rate {rate} must be a number of candles per second above 0 and at most {MAX_RATE}"
        ),
        Pace::Speed(speed) if !(speed > 0.0 && speed.is_finite()) => {
            bail!("--speed {speed} must be a positive multiple of real time")
        }
        _ => {}
    }
    if let Some(i) = opts
        .aggregate
        .iter()
        .find(|i| !opts.store.intervals.contains(i))
    {
        bail!("--aggregate {i}: the store does not keep {i} candles: add it to --intervals");
    }
    Ok(())
}

/// A finite feed and what it writes with.
struct Pump {
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
    /// Writes the next batch (a replay's bad lines are reported, not fatal).
    fn write_batch(&mut self, store: &mut protocol::store::StoreWriter) -> Result<()> {
        if let Some(at) = crate::feed::write_batch(&mut self.source, &mut self.writer, store)? {
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

    fn status(
        &self,
        opts: &RunOptions,
        finished: bool,
        evaluated: bool,
        stats: &protocol::store::WriterStats,
    ) -> serde_json::Value {
        let counters = self.writer.counters();
        let replay = self.source.as_replay();
        serde_json::json!({
            "kind": opts.feed.kind(),
            "connected": serde_json::Value::Null,
            "pace": match opts.pace {
                Pace::Rate(r) => serde_json::json!({ "rate": r }),
                Pace::Speed(x) => serde_json::json!({ "speed": x }),
                Pace::Fast => serde_json::json!("fast"),
            },
            "batches": self.pacer.batches,
            "candles_written": counters.candles_written,
            "closed_written": counters.closed_written,
            "aggregated_written": counters.aggregated_written,
            "repeats": counters.repeats,
            "gaps": counters.gaps,
            "missing_candles": counters.missing_candles,
            "bad_lines": replay.map_or(0, |r| r.bad_lines().total),
            "bytes_read": replay.map(|r| r.bytes_read()),
            "bytes_total": replay.map(|r| r.total_bytes()),
            "store_appended": stats.appended,
            "publishes": stats.publishes,
            "rejected": stats.rejected_stale + stats.rejected_invalid,
            "finished": finished,
            "evaluated": evaluated,
        })
    }
}

fn drive(coord: &mut Coordinator, spawner: &Spawner, events: &Receiver<Event>) -> Result<()> {
    for s in 0..coord.slots.len() {
        coord.spawn_slot(s, spawner);
    }
    loop {
        match events.recv_timeout(TICK) {
            Ok(Event::Worker(slot, no, e)) => coord.handle_worker(slot as usize, no, e),
            Ok(Event::Spawned(slot, no, result)) => coord.spawned(slot as usize, no, result),
            Ok(Event::OsSignal(_)) => {} // counted in os_signals, acted on below
            Ok(Event::Control(req)) => coord.control(req),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the event channel closed"),
        }
        let sigints = coord
            .os_signals
            .sigint
            .load(std::sync::atomic::Ordering::SeqCst);
        let sigterms = coord
            .os_signals
            .sigterm
            .load(std::sync::atomic::Ordering::SeqCst);
        if sigints >= 2 {
            tracing::warn!("second SIGINT: killing the workers without waiting");
            return Ok(());
        }
        if sigints + sigterms > 0 {
            coord.begin_shutdown(if sigints > 0 { "SIGINT" } else { "SIGTERM" });
        }
        if coord
            .opts
            .parent
            .is_some_and(|p| nix::unistd::getppid().as_raw() != p)
        {
            coord.begin_shutdown("the parent process exited (--exit-with-parent)");
        }
        coord.reap();
        if let Some(why) = coord.failed.take() {
            bail!("{why}: giving up");
        }
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
        coord.restart_due(spawner);
        // The feed starts once every slot's traders are acknowledged, so no
        // candle precedes a trader.
        if coord.feed_started.is_none()
            && coord
                .slots
                .iter()
                .all(|s| s.live.as_ref().is_some_and(|i| i.state == State::Ready))
        {
            tracing::info!(feed = coord.opts.feed.kind(), pace = ?coord.opts.pace, "feed started");
            coord.feed_started = Some(Instant::now());
            if let Some(pump) = coord.pump.as_mut() {
                pump.pacer.start();
            }
            if let FeedConfig::Binance(live) = &coord.opts.feed {
                coord.live = Some(LiveFeed::start(
                    live.clone(),
                    coord.inst.store.clone(),
                    &coord.opts.store.intervals,
                )?);
            }
        }
        coord.feed()?;
        if coord.live.as_ref().is_some_and(LiveFeed::is_finished) {
            bail!("the live feed thread stopped unexpectedly (see the log)");
        }
        if coord.last_heartbeat.elapsed() >= HEARTBEAT {
            coord.last_heartbeat = Instant::now();
            coord.inst.store.lock().heartbeat();
        }
        // A stdout that does not keep up stops the reader threads from
        // reading the workers' answers: no deadline means anything then.
        let grace = coord.opts.ping_deadline.max(coord.opts.ping_interval);
        if !coord.emitter.output_stalled(grace) {
            coord.retry_due();
            coord.ping_due();
            coord.stall_due();
        }
        if coord.feed_done() && !coord.opts.stay {
            coord.begin_shutdown("the finite feed is done and every trader evaluated every candle");
        }
    }
}
