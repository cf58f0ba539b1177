//! The messages of the coordinator-worker protocol. Framing is in [`crate::frame`].
//!
//! Coordinator -> worker requests (each answered by ACK/NACK or its own
//! reply, with the same request id): INIT (answered by READY), ADD_TRADER,
//! REMOVE_TRADER, PING (answered by PONG), CLEANUP (answered by
//! CLEANUP_COMPLETE). Worker -> coordinator, unsolicited: SIGNAL.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::candle::Interval;
use crate::trader::TraderSpec;

/// Identifies a request and its answer. The coordinator numbers its requests
/// per worker from 1; a worker numbers its SIGNALs in their own sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Everything that crosses the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Map this store and check it is the coordinator's current one.
    Init(Init),
    /// INIT done: the store is mapped and its generation matches.
    Ready(Ready),
    /// Start evaluating this trader. Idempotent per (id, version).
    AddTrader {
        /// The trader.
        spec: TraderSpec,
        /// Publish counter up to which this trader's candles were already
        /// evaluated (by a worker that died): evaluation resumes with the
        /// candles written after it. 0: from the oldest candle in the ring.
        resume_after: u64,
    },
    /// Stop evaluating this trader. Idempotent.
    RemoveTrader {
        /// The trader's id.
        id: String,
    },
    /// The request was carried out.
    Ack,
    /// The request was refused; nothing changed.
    Nack {
        /// Why, for the operator.
        reason: String,
    },
    /// Liveness and statistics probe.
    Ping,
    /// Answer to PING.
    Pong(Pong),
    /// Release everything and exit.
    Cleanup,
    /// Answer to CLEANUP, sent just before the worker exits 0.
    CleanupComplete(Released),
    /// A trader's verdict on a closed candle.
    Signal(Signal),
    /// Several verdicts of one evaluation pass, in the order found: one
    /// frame (and one wake-up of the coordinator's reader) for a burst.
    Signals(Vec<Signal>),
    /// Sent by the worker when a pass ends (after its signals): how far
    /// every trader it holds has judged. The feed's backpressure and a
    /// replacement's resume point move at the speed of evaluation, not of
    /// the PING timer.
    Progress(Progress),
}

/// The wire code of each message kind, carried in the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// [`Message::Init`]
    Init = 1,
    /// [`Message::Ready`]
    Ready = 2,
    /// [`Message::AddTrader`]
    AddTrader = 3,
    /// [`Message::RemoveTrader`]
    RemoveTrader = 4,
    /// [`Message::Ack`]
    Ack = 5,
    /// [`Message::Nack`]
    Nack = 6,
    /// [`Message::Ping`]
    Ping = 7,
    /// [`Message::Pong`]
    Pong = 8,
    /// [`Message::Cleanup`]
    Cleanup = 9,
    /// [`Message::CleanupComplete`]
    CleanupComplete = 10,
    /// [`Message::Signal`]
    Signal = 11,
    /// [`Message::Signals`]
    Signals = 12,
    /// [`Message::Progress`]
    Progress = 13,
}

impl Kind {
    /// The kind with wire code `code`, if any.
    pub fn from_code(code: u16) -> Option<Kind> {
        use Kind::*;
        [
            Init,
            Ready,
            AddTrader,
            RemoveTrader,
            Ack,
            Nack,
            Ping,
            Pong,
            Cleanup,
            CleanupComplete,
            Signal,
            Signals,
            Progress,
        ]
        .into_iter()
        .find(|k| *k as u16 == code)
    }

    /// Upper-case protocol name (`ADD_TRADER`), for logs and knobs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Init => "INIT",
            Kind::Ready => "READY",
            Kind::AddTrader => "ADD_TRADER",
            Kind::RemoveTrader => "REMOVE_TRADER",
            Kind::Ack => "ACK",
            Kind::Nack => "NACK",
            Kind::Ping => "PING",
            Kind::Pong => "PONG",
            Kind::Cleanup => "CLEANUP",
            Kind::CleanupComplete => "CLEANUP_COMPLETE",
            Kind::Signal => "SIGNAL",
            Kind::Signals => "SIGNALS",
            Kind::Progress => "PROGRESS",
        }
    }

    /// The kind named `name` (`ADD_TRADER` or `add_trader`).
    pub fn from_name(name: &str) -> Option<Kind> {
        (1..=13)
            .filter_map(Kind::from_code)
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

impl Message {
    /// This message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Init(_) => Kind::Init,
            Message::Ready(_) => Kind::Ready,
            Message::AddTrader { .. } => Kind::AddTrader,
            Message::RemoveTrader { .. } => Kind::RemoveTrader,
            Message::Ack => Kind::Ack,
            Message::Nack { .. } => Kind::Nack,
            Message::Ping => Kind::Ping,
            Message::Pong(_) => Kind::Pong,
            Message::Cleanup => Kind::Cleanup,
            Message::CleanupComplete(_) => Kind::CleanupComplete,
            Message::Signal(_) => Kind::Signal,
            Message::Signals(_) => Kind::Signals,
            Message::Progress(_) => Kind::Progress,
        }
    }
}

/// INIT's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    /// The instance whose store to map.
    pub instance: String,
    /// The store's generation the worker must find.
    pub generation: u64,
    /// The worker's slot number.
    pub worker_id: u32,
}

/// READY's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The worker's slot number.
    pub worker_id: u32,
    /// Its process id.
    pub pid: u32,
}

/// PROGRESS's body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The publish counter up to which every trader it holds (or has
    /// queued) has judged every closed candle, as PONG's `last_publish`.
    pub last_publish: u64,
    /// Closed candles judged so far (PONG's `judged`).
    pub judged: u64,
}

/// PONG's body: the worker's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Traders held.
    pub traders: u32,
    /// The publish counter up to which every trader it holds has evaluated
    /// every closed candle (the minimum over its traders).
    pub last_publish: u64,
    /// Milliseconds since the worker started.
    pub uptime_ms: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// SIGNALs sent since start.
    pub signals: u64,
    /// Candles that left the ring before they could be evaluated.
    pub gaps: u64,
    /// Closed candles judged so far, over all traders and series: it moves
    /// within a long pass (a catch-up), when `last_publish` cannot.
    pub judged: u64,
    /// SIGNALS frames sent, and the largest one's length in bytes.
    pub signal_frames: u64,
    /// See `signal_frames`.
    pub largest_signal_frame: u64,
    /// Evaluation passes so far (a pass judges every trader on every candle
    /// published since the last one).
    pub passes: u64,
    /// Median duration of the recent passes, microseconds.
    pub pass_p50_us: u64,
    /// 99th percentile of the same.
    pub pass_p99_us: u64,
    /// Every pass since the worker started, by duration (boxed: 200 bytes
    /// would make every message that large).
    pub pass_histogram: Box<crate::histogram::Log2Histogram>,
}

/// CLEANUP_COMPLETE's body: what the worker released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// Traders dropped.
    pub traders: u32,
    /// Threads stopped and joined.
    pub threads: u32,
    /// Per-(trader, series) evaluation cursors dropped.
    pub cursors: u32,
}

/// SIGNAL's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The trader's id.
    pub trader: String,
    /// Symbol of the series.
    pub symbol: String,
    /// Interval of the series.
    pub interval: Interval,
    /// Open time (ms) of the closed candle the verdict is about.
    pub open_time: i64,
    /// That candle's close.
    pub close: f64,
    /// The trader's labels.
    pub labels: BTreeMap<String, String>,
    /// Each indicator of the rule, as written, and its value on the candle.
    pub values: BTreeMap<String, f64>,
}
