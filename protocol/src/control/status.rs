//! The answer to `status`: one consistent snapshot of a running
//! coordinator, taken by its loop. `shmkline status --json` prints it,
//! `shmkline top` draws it, `GET /status` serves it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::feed::Feed;
use super::request::RequestKind;
use super::sinks::{CandlePublishing, Sink};
use crate::Interval;

/// A running coordinator, as its loop sees it at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The instance's name.
    pub instance: String,
    /// The coordinator's process id.
    pub pid: u32,
    /// Running, draining or shutting down.
    pub state: RunState,
    /// Since the coordinator started, ms.
    pub uptime_ms: u64,
    /// The metrics endpoint's URL (`http://ADDR/metrics`), when `--metrics`
    /// serves one.
    pub metrics: Option<String>,
    /// What answering control requests costs the loop.
    pub control: ControlLoad,
    /// The shared-memory segment.
    pub segment: Segment,
    /// The feed: its kind and figures.
    pub feed: Feed,
    /// Signals found and dropped as repeats.
    pub signals: Signals,
    /// Each sink: stdout first (when it is one), then the durable ones in
    /// the order given.
    pub sinks: Vec<Sink>,
    /// The candle publisher of `--publish-candles`, when there is one.
    pub candles_published: Option<CandlePublishing>,
    /// The shard of the symbols this coordinator takes (`--shard`).
    pub shard: Shard,
    /// Gap events the workers reported: candles that left the ring before
    /// they could be judged, summed over the slots (dead workers included).
    pub gaps: u64,
    /// Traders taken out after crashing their workers repeatedly.
    pub quarantined: Vec<Quarantined>,
    /// Worker faults and recoveries.
    pub supervision: Supervision,
    /// One per worker slot, by slot id.
    pub workers: Vec<Worker>,
    /// Every process's private memory and its growth.
    pub memory: Memory,
}

/// Where a run is in its life.
#[derive(Debug, Clone, Default, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Feeding and judging.
    #[default]
    Running,
    /// Asked to stop: the feed is stopped and the workers judge what was
    /// published before CLEANUP.
    Draining,
    /// CLEANUP sent: the workers are going.
    ShuttingDown,
}

impl RunState {
    /// Its name, as `status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Draining => "draining",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The loop's time spent answering control requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlLoad {
    /// Per kind asked at least once.
    pub loop_us: BTreeMap<RequestKind, LoopCost>,
}

/// One kind of request's cost to the loop: recent samples (at most 1,024).
#[derive(Debug, Clone, Default, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoopCost {
    /// Requests of this kind answered.
    pub count: u64,
    /// Median loop time, µs to the tenth.
    pub p50_us: Option<f64>,
    /// 99th percentile, µs to the tenth.
    pub p99_us: Option<f64>,
    /// Longest, µs to the tenth.
    pub max_us: Option<f64>,
}

/// The shared-memory segment the candles live in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Its POSIX shared-memory name (`/shmkline-<instance>`).
    pub name: String,
    /// Its whole size, bytes (reserved at start).
    pub size_bytes: u64,
    /// The bytes its candles fill so far.
    pub touched_bytes: u64,
    /// A number new with every segment: a reader holding an older one
    /// knows the store was made again.
    pub generation: u64,
    /// Each interval's ring.
    pub rings: Vec<Ring>,
}

/// One interval's ring: what it holds and what set its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ring {
    /// The interval.
    pub interval: Interval,
    /// Candles per ring (per symbol).
    pub candles: u32,
    /// The longest window (rule warm-up and cooldown) among its traders at
    /// start, candles.
    pub needed: u32,
    /// Its traders at start.
    pub traders: u64,
    /// Bytes of one ring.
    pub ring_bytes: u64,
    /// What set the size.
    pub sized_by: SizedBy,
}

/// What set a ring's size.
#[derive(Debug, Clone, Default, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizedBy {
    /// `--candles-per-series`.
    Flag,
    /// `--headroom` times its traders' longest window.
    Traders,
    /// The default ring: the traders need less.
    #[default]
    Default,
}

impl SizedBy {
    /// Its name, as `status` and the log show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Traders => "traders",
            Self::Default => "default",
        }
    }
}

/// Signals found this run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Signals found, each counted once whatever outputs got it.
    pub emitted: u64,
    /// Repeats dropped (a replacement worker judging again).
    pub duplicates_dropped: u64,
    /// Latency samples held (the last 65,536 at most).
    pub latency_samples: u64,
    /// Candle published in the store to its signal handed to stdout,
    /// median, µs.
    pub latency_p50_us: Option<u32>,
    /// The same, 99th percentile, µs.
    pub latency_p99_us: Option<u32>,
}

/// This coordinator's share of the symbols.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// `K/N`: the symbols whose FNV-1a hash is K modulo N (`0/1`: all).
    pub shard: String,
    /// The symbols the store holds now (none listed when it has no interval).
    pub symbols: Option<Vec<String>>,
}

/// A trader taken out after crashing its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Its id.
    pub trader: String,
    /// The slot it was taken from.
    pub slot: u32,
    /// Worker crashes pinned on it.
    pub strikes: u32,
}

/// Worker faults and recoveries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Supervision {
    /// Faults kept in the log (the last 1,024).
    pub faults: u64,
    /// Of those, recovered: the replacement answered a PING with every
    /// trader acknowledged.
    pub recovered: u64,
    /// The 16 latest, newest first.
    pub recent: Vec<FaultEvent>,
}

/// Why a worker was declared faulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// It died (channel closed or reaped).
    Crash,
    /// A PING missed its deadline.
    Hang,
    /// It answers PINGs but its evaluation makes no progress.
    Stall,
    /// It broke the protocol (malformed frame, no answer after every retry,
    /// wrong answer, not reading its channel).
    Protocol,
    /// Not a fault of the worker: the coordinator replaced it on purpose, so
    /// that its replacement judges again from a sink's behind point and the
    /// sink catches up.
    CatchUp,
}

impl FaultKind {
    /// Its name, as `status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Hang => "hang",
            FaultKind::Stall => "stall",
            FaultKind::Protocol => "protocol",
            FaultKind::CatchUp => "catch_up",
        }
    }
}

/// Who caused a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A signal someone else sent (an operator, a chaos script).
    Outside,
    /// The worker itself (panic, abort, error exit, a fault in its code, a hang
    /// that is not a stop signal, a protocol violation).
    SelfInflicted,
    /// The coordinator, on purpose (a sink's catch-up): no backoff, no blame.
    Planned,
}

impl Cause {
    /// Its name in `status` and the metrics' `cause` label.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Outside => "outside",
            Cause::SelfInflicted => "self_inflicted",
            Cause::Planned => "planned",
        }
    }
}

/// One fault and its recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// The worker's slot.
    pub slot: u32,
    /// The faulty worker's pid.
    pub pid: u32,
    /// What went wrong.
    pub kind: FaultKind,
    /// Who caused it, once its process is reaped.
    pub cause: Option<Cause>,
    /// What was seen, in words.
    pub reason: String,
    /// Its exit status, in words, once reaped.
    pub exit: Option<String>,
    /// When it was detected, ms since the epoch.
    pub detected_at_ms: i64,
    /// When its slot recovered, ms since the epoch.
    pub recovered_at_ms: Option<i64>,
    /// From detection to the replacement answering a PING with every
    /// trader acknowledged, ms.
    pub recovery_ms: Option<f64>,
}

/// One worker slot and its live process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// The slot.
    pub id: u32,
    /// Its worker's pid; 0 while it has none.
    pub pid: u32,
    /// Where its worker is in its life.
    pub state: WorkerState,
    /// Traders its worker acknowledged.
    pub traders: u64,
    /// Traders the slot holds, by id.
    pub trader_ids: Vec<String>,
    /// Workers replaced in this slot.
    pub restarts: u32,
    /// The last PING's round trip, µs.
    pub rtt_us: Option<u64>,
    /// Since the last PONG, ms.
    pub last_pong_age_ms: Option<u64>,
    /// Requests sent again for want of an answer, over the slot's workers.
    pub retries: u64,
    /// Frames that broke the protocol, over the slot's workers.
    pub malformed_frames: u64,
    /// Frames with a valid header whose payload did not decode.
    pub undecodable_frames: u64,
    /// Signals received from the slot's workers.
    pub signals: u64,
    /// Its worker's resident set, bytes (its last PONG).
    pub rss_bytes: Option<u64>,
    /// The store's publish counter its worker had judged up to (its last PONG).
    pub last_publish: Option<u64>,
    /// The publish counter up to which every trader of the slot judged
    /// every candle, as confirmed after all were acknowledged: where a
    /// replacement resumes.
    pub confirmed_publish: u64,
    /// Gap events its worker reported (its last PONG).
    pub gaps: Option<u64>,
    /// Closed candles judged, over all traders and series (its last PONG).
    pub judged: Option<u64>,
    /// SIGNALS frames its worker sent (its last PONG).
    pub signal_frames: Option<u64>,
    /// The largest of them, bytes.
    pub largest_signal_frame_bytes: Option<u64>,
    /// Evaluation passes (its last PONG).
    pub passes: Option<u64>,
    /// Their recent median, µs.
    pub pass_p50_us: Option<u64>,
    /// Their recent 99th percentile, µs.
    pub pass_p99_us: Option<u64>,
    /// PING round trips: bucket k counts those of [2^k, 2^(k+1)) µs.
    pub rtt_histogram_log2_us: Vec<u64>,
}

/// Where a slot's worker is in its life.
#[derive(Debug, Clone, Default, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// INIT sent, no READY yet.
    Starting,
    /// READY received; its traders being acknowledged.
    Syncing,
    /// Ready after a fault, the PONG confirming its recovery still to come.
    Recovering,
    /// Every trader acknowledged.
    Ready,
    /// CLEANUP sent.
    Cleaning,
    /// CLEANUP answered (or its channel closed while cleaning).
    Exited,
    /// Faulty: killed, waiting to be reaped and replaced.
    Dead,
    /// Its process is being started.
    Spawning,
    /// Waiting out the backoff before a restart.
    Backoff,
    /// No process, none coming.
    #[default]
    Down,
}

impl WorkerState {
    /// Its name, as `status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Syncing => "syncing",
            Self::Recovering => "recovering",
            Self::Ready => "ready",
            Self::Cleaning => "cleaning",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Spawning => "spawning",
            Self::Backoff => "backoff",
            Self::Down => "down",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The memory-growth monitor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Growth that warns, MB/h (10^6 bytes); 0: never.
    pub alert_mb_per_h: f64,
    /// Sampling period, ms.
    pub sample_interval_ms: u64,
    /// A process's first samples ignored, s.
    pub warmup_s: u64,
    /// The stretch the growth is fitted over, s.
    pub window_s: u64,
    /// The coordinator first, then each slot's live worker.
    pub processes: Vec<ProcessMemory>,
}

impl Memory {
    /// The figures of `process` (`coordinator`, `worker N`).
    pub fn of(&self, process: &str) -> Option<&ProcessMemory> {
        self.processes.iter().find(|p| p.process == process)
    }
}

/// One process's memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// `coordinator` or `worker N` (the slot).
    pub process: String,
    /// Its pid.
    pub pid: u32,
    /// Resident anonymous memory, bytes (the last sample).
    pub private_bytes: Option<u64>,
    /// Whole resident set, bytes (the last sample).
    pub rss_bytes: Option<u64>,
    /// Fitted growth over the window, MB/h (10^6 bytes); none during the
    /// warm-up and until half a window of samples is in (the alarm waits
    /// for a whole window).
    pub growth_mb_per_h: Option<f64>,
    /// Samples in the window.
    pub samples: u64,
    /// Times its growth crossed the alert.
    pub alarms: u64,
}
