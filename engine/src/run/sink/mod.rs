//! Where signals go (`--sink`): what a sink is, the lines it is handed and
//! the counters each keeps; one file per kind.
//!
//! Every sink has its own position: the watermarks of what it has
//! confirmed, per (trader, symbol, interval) series. `stdout` has no
//! durable one (it gets every signal of this run); a `file:` sink's is the
//! file itself ([`file`]); a `webhook:` sink's is kept in the state
//! directory, keyed by its spec ([`marks`], [`webhook`]). A durable sink
//! that is slow or down never holds up evaluation or the other sinks: its
//! queue is bounded (`--sink-queue` signals), and once it is full the sink
//! is *behind*: it is handed nothing, its watermarks stay what it was
//! handed, and once its queue has drained every worker is replaced to judge
//! again from the publish its slot had confirmed when the sink fell behind
//! (the emitter, `Coordinator::catch_up`): the sink gets what it missed,
//! the other outputs drop the repeats. Candles that left the ring meanwhile
//! are a gap, reported as any other; a sink still behind at shutdown is
//! named, and the next start delivers what it lacks from its position.

pub mod file;
pub mod marks;
pub mod nats;
pub mod stdout;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::Interval;
use protocol::control::{Delivery, NatsConnection};
use protocol::samples::{Samples, saturate};
use serde::Deserialize;

use crate::locked::lock;

pub use file::FileSink;

/// Signals a durable sink may hold queued (handed, not yet confirmed) by
/// default (`--sink-queue`): about 30 MB of lines.
pub const DEFAULT_SINK_QUEUE: u64 = 100_000;
/// The least `--sink-queue`: more signals than one SIGNALS frame can carry
/// (a 64 KiB frame of the smallest signals holds about 1,600), so a frame
/// always fits an empty queue.
pub const MIN_SINK_QUEUE: u64 = 10_000;
/// Latency samples a sink keeps for its percentiles.
const LATENCY_SAMPLES: usize = 4096;

/// Where signals are delivered (`--sink`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// Standard output: every signal of this run (no durable position).
    Stdout,
    /// An append-only file of signal lines, fsynced per batch.
    File(std::path::PathBuf),
    /// HTTP POSTs: one signal each, or (`batch`) a JSON array per batch.
    Webhook {
        /// `http://` or `https://` URL.
        url: String,
        /// `webhook-batch:`.
        batch: bool,
    },
    /// A JetStream stream.
    Nats(crate::nats::NatsAddr),
}

impl std::str::FromStr for SinkSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            _ if spec == "stdout" => Ok(Self::Stdout),
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.into())),
            Some((kind @ ("webhook" | "webhook-batch"), url)) => {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
                    .ok_or_else(|| {
                        format!(
                            "{:?}: a webhook's URL starts with http:// or https://",
                            crate::redact::text(spec)
                        )
                    })?;
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!(
                        "{:?}: a webhook's URL needs a host and no spaces",
                        crate::redact::text(spec)
                    ));
                }
                Ok(Self::Webhook {
                    url: url.to_owned(),
                    batch: kind == "webhook-batch",
                })
            }
            Some(("nats", _)) => spec.parse().map(Self::Nats),
            _ => Err(format!(
                "{:?}: a sink is stdout, file:PATH, webhook:URL, webhook-batch:URL or nats://HOST:PORT[/PREFIX]",
                crate::redact::text(spec)
            )),
        }
    }
}

/// As it may be shown (logs, `status`, errors): a URL's credentials and
/// query hidden ([`crate::redact`]). [`SinkSpec::key`] is the whole spec.
impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Webhook { .. } => f.write_str(&crate::redact::text(&self.key())),
            Self::Nats(addr) => addr.fmt(f),
            _ => f.write_str(&self.key()),
        }
    }
}

impl SinkSpec {
    /// The whole spec, secrets included: what keys the sink's position in
    /// the state directory. Never shown (that is [`Display`](std::fmt::Display)).
    pub fn key(&self) -> String {
        match self {
            Self::Stdout => "stdout".to_owned(),
            Self::File(p) => format!("file:{}", p.display()),
            Self::Webhook { url, batch: false } => format!("webhook:{url}"),
            Self::Webhook { url, batch: true } => format!("webhook-batch:{url}"),
            Self::Nats(addr) => addr.key(),
        }
    }

    /// The kind, as `status` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File(_) => "file",
            Self::Webhook { batch: false, .. } => "webhook",
            Self::Webhook { batch: true, .. } => "webhook-batch",
            Self::Nats(_) => "nats",
        }
    }
}

/// Which signals the sinks get (`--signals-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SignalsFrom {
    /// Each sink from where it stands: a file or webhook sink gets what it
    /// has not confirmed; stdout gets every signal of this run.
    #[default]
    Resume,
    /// Only signals of candles that close after the start (a live start
    /// onto stdout without the backfilled history).
    Now,
    /// Everything again: durable sinks ignore what they confirmed.
    All,
}

/// What a signal line must carry to be one (the rest is not checked): its
/// key, the same in a file, a webhook's `Idempotency-Key` and the watermarks.
#[derive(Debug, Deserialize)]
pub struct Key {
    /// The trader's id.
    pub trader: String,
    /// The symbol.
    pub symbol: String,
    /// The interval.
    pub interval: Interval,
    /// The candle's open time, ms.
    pub open_time: i64,
}

impl Key {
    /// `trader|symbol|interval|open_time`: a webhook's `Idempotency-Key`.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.trader, self.symbol, self.interval, self.open_time
        )
    }

    /// A signal with this key and nothing else, for a [`super::dedup::Dedup`].
    pub fn as_signal(&self) -> protocol::message::Signal {
        protocol::message::Signal {
            trader: self.trader.clone(),
            symbol: self.symbol.clone(),
            interval: self.interval,
            open_time: self.open_time,
            close: 0.0,
            labels: Default::default(),
            values: Default::default(),
        }
    }
}

/// Signal lines for a sink's thread, written (or posted) in one piece.
#[derive(Debug)]
pub struct Batch {
    /// The lines, each ending in a newline.
    pub text: Vec<u8>,
    /// How many.
    pub lines: u64,
    /// The newest open time among them (ms; 0 for stdout, which has no position).
    pub newest: i64,
    /// When the newest candle among theirs was published (a finite feed's
    /// publishes only): the start of the publish-to-delivered latency.
    pub published: Option<Instant>,
}

impl Batch {
    /// Appends `later`'s lines: the newest open time of both, and the
    /// earlier publish (the latency then counts from the older candle).
    pub fn merge(&mut self, later: Batch) {
        self.text.extend_from_slice(&later.text);
        self.lines += later.lines;
        self.newest = self.newest.max(later.newest);
        self.published = match (self.published, later.published) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Each line with its key. A line without one is counted as not
    /// delivered and logged: lines are our own, so that would be a bug.
    pub fn keyed(&self, output: &Output) -> Vec<(Key, &[u8])> {
        let mut lines = Vec::new();
        for line in self.text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Key>(line) {
                Ok(key) => lines.push((key, line)),
                Err(e) => {
                    tracing::error!(error = %e, "a signal line without its key: not delivered");
                    output.count(1, false);
                }
            }
        }
        lines
    }
}

/// What became of the signals handed to one sink, shared by its thread, the
/// emitter, `status` and the teardown.
#[derive(Debug)]
pub struct Output {
    started: Instant,
    /// Lines handed to the sink's queue.
    pub(super) queued_total: AtomicU64,
    /// Lines delivered: written (stdout), fsynced (file), answered 2xx (webhook).
    written: AtomicU64,
    /// Lines that could not be delivered and will not be this run (stdout
    /// closed, a file that cannot be written, a drain time run out).
    lost: AtomicU64,
    /// Of the lines lost, those the sink's saved position already covers
    /// (an earlier run had them confirmed): the next start that resumes
    /// does not send them again.
    covered: AtomicU64,
    /// Lines a webhook refused with a 4xx other than 429 (not retried).
    pub rejected: AtomicU64,
    /// Requests made again (connection errors, timeouts, 429, 5xx).
    pub retries: AtomicU64,
    /// Signals a broker acknowledged as repeats of ones it held (NATS).
    pub duplicates: AtomicU64,
    /// Signals not handed to this sink while it was behind (a catch-up
    /// hands them later; counted again if a frame repeats them).
    behind: AtomicU64,
    /// When the output last moved (a batch delivered or failed), ms after `started`.
    moved_ms: AtomicU64,
    /// Stdout: a write failed, its reader went away.
    pub(super) closed: AtomicBool,
    /// Newest open time handed, and newest confirmed (ms; `i64::MIN`: none).
    pub(super) newest_handed: AtomicI64,
    pub(super) newest_confirmed: AtomicI64,
    /// The last error, for `status`.
    pub last_error: Mutex<Option<String>>,
    /// A broker connection's health (NATS), for `status`.
    pub connection: std::sync::OnceLock<std::sync::Arc<crate::nats::NatsHealth>>,
    /// Teardown: the sink gives up retrying at this instant.
    stop_by: Mutex<Option<Instant>>,
    /// Candle published to signal delivered (for a file: fsynced; for a
    /// webhook: answered 2xx), us.
    latency: Mutex<Samples>,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            queued_total: AtomicU64::new(0),
            written: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            moved_ms: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            newest_handed: AtomicI64::new(i64::MIN),
            newest_confirmed: AtomicI64::new(i64::MIN),
            last_error: Mutex::new(None),
            connection: std::sync::OnceLock::new(),
            stop_by: Mutex::new(None),
            latency: Mutex::new(Samples::new(LATENCY_SAMPLES)),
        }
    }
}

impl Output {
    fn moved(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.moved_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// When the output last moved.
    pub fn last_moved(&self) -> Instant {
        self.started + Duration::from_millis(self.moved_ms.load(Ordering::Acquire))
    }

    /// Lines delivered so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Lines lost so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }

    /// Signals not handed to the sink because it was behind.
    pub fn behind(&self) -> u64 {
        self.behind.load(Ordering::Acquire)
    }

    /// Lines handed and not yet delivered, rejected or lost.
    pub fn queued(&self) -> u64 {
        let done = self.written() + self.lost() + self.rejected.load(Ordering::Acquire);
        self.queued_total
            .load(Ordering::Acquire)
            .saturating_sub(done)
    }

    /// Counts `lines` as delivered (or lost), and the output as moved.
    pub fn count(&self, lines: u64, delivered: bool) {
        let counter = if delivered { &self.written } else { &self.lost };
        counter.fetch_add(lines, Ordering::AcqRel);
        self.moved();
    }

    /// Of lines just counted lost, `n` are covered by the saved position.
    pub fn lost_but_covered(&self, n: u64) {
        self.covered.fetch_add(n, Ordering::AcqRel);
    }

    /// Lost lines the saved position covers (not sent again by a resume).
    pub fn covered(&self) -> u64 {
        self.covered.load(Ordering::Acquire)
    }

    /// Counts `lines` handed to the queue.
    pub fn handed(&self, lines: u64, newest_open_time: i64) {
        self.queued_total.fetch_add(lines, Ordering::AcqRel);
        self.newest_handed
            .fetch_max(newest_open_time, Ordering::AcqRel);
    }

    /// Counts `lines` not handed: the sink is behind.
    pub fn fell_behind(&self, lines: u64) {
        self.behind.fetch_add(lines, Ordering::AcqRel);
    }

    /// A batch published at `published` was delivered now.
    pub fn delivered_since(&self, published: Option<Instant>) {
        if let Some(at) = published {
            lock(&self.latency).push(saturate(at.elapsed().as_micros()));
        }
    }

    /// Publish-to-delivered latency, p50 and p99, us.
    pub fn latency_us(&self) -> (Option<u32>, Option<u32>) {
        let samples = lock(&self.latency).clone();
        (samples.quantile(0.5), samples.quantile(0.99))
    }

    /// A signal of `open_time` was confirmed.
    pub fn confirmed(&self, open_time: i64) {
        self.newest_confirmed.fetch_max(open_time, Ordering::AcqRel);
    }

    /// How far the confirmed position trails what was handed, ms of candle
    /// time (0: caught up; `None`: handed some, confirmed none yet).
    pub fn lag_ms(&self) -> Option<i64> {
        let handed = self.newest_handed.load(Ordering::Acquire);
        let confirmed = self.newest_confirmed.load(Ordering::Acquire);
        match (handed, confirmed) {
            (i64::MIN, _) => Some(0),
            (_, i64::MIN) => None,
            (h, c) => Some((h - c).max(0)),
        }
    }

    /// Whether stdout is closed: nothing more can be printed.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Records the last error (for `status`).
    pub fn error(&self, what: String) {
        *lock(&self.last_error) = Some(what);
    }

    /// Teardown: retries end at `at`.
    pub fn stop_by(&self, at: Instant) {
        *lock(&self.stop_by) = Some(at);
    }

    /// Whether teardown's drain time is over.
    pub fn out_of_time(&self) -> bool {
        lock(&self.stop_by).is_some_and(|at| Instant::now() >= at)
    }

    /// When teardown's drain time ends, if it began.
    pub fn deadline(&self) -> Option<Instant> {
        *lock(&self.stop_by)
    }

    /// Waits `wait` before a retry, but not past teardown's drain time,
    /// read again every few milliseconds: teardown may set or move it
    /// during the pause (a `Retry-After` of minutes must not hold a stop).
    pub fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            let until = self.deadline().map_or(until, |d| d.min(until));
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    /// What `status` shows of the output's deliveries.
    pub fn status(&self) -> Delivery {
        let (p50, p99) = self.latency_us();
        Delivery {
            latency_p50_us: p50,
            latency_p99_us: p99,
            delivered: self.written(),
            queued: self.queued(),
            lost: self.lost(),
            rejected: self.rejected.load(Ordering::Acquire),
            retries: self.retries.load(Ordering::Acquire),
            broker_duplicates: self.duplicates.load(Ordering::Acquire),
            behind: self.behind(),
            lag_ms: self.lag_ms(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Its broker connection (a NATS sink's), for `status`.
    pub fn connection(&self) -> Option<NatsConnection> {
        self.connection.get().map(|c| c.status())
    }
}

/// Per interval, the open time of the newest signal in `marks`: a sink's
/// position at start.
pub fn newest_per_interval(marks: &super::dedup::Dedup) -> BTreeMap<Interval, i64> {
    let mut newest = BTreeMap::new();
    for (_, _, interval, open_time) in marks.entries() {
        let n = newest.entry(interval).or_insert(open_time);
        *n = (*n).max(open_time);
    }
    newest
}

/// What a restarted live run cannot bring back to a durable sink: per
/// interval, if the newest signal the sink had confirmed (`newest`) is
/// older than the oldest candle the start-up backfill brought into the
/// store (`reach`, open time ms), signals of the candles between, if any,
/// are out of reach. Said once the feed is live (log and `status`), never
/// a silent drop.
pub fn out_of_reach(
    newest: &BTreeMap<Interval, i64>,
    reach: &BTreeMap<Interval, i64>,
) -> Vec<String> {
    newest
        .iter()
        .filter_map(|(interval, last)| {
            let from = *reach.get(interval)?;
            let next = last + interval.millis() as i64;
            (next < from).then(|| {
                format!(
                    "{interval}: its last confirmed signal is of the candle opened at {last} ms \
                     and the store holds candles from {from} ms: signals of the {} candles \
                     between, if any, cannot be delivered",
                    (from - next) / interval.millis() as i64
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_older_than_the_backfill_is_named_per_interval() {
        let mut marks = super::super::dedup::Dedup::default();
        let key = |trader: &str, interval, open_time| Key {
            trader: trader.into(),
            symbol: "X".into(),
            interval,
            open_time,
        };
        marks.first(&key("a", Interval::M1, 60_000).as_signal());
        marks.first(&key("b", Interval::M1, 600_000).as_signal());
        marks.first(&key("a", Interval::H1, 3_600_000).as_signal());
        let newest = newest_per_interval(&marks);
        assert_eq!(newest.get(&Interval::M1), Some(&600_000));
        let reach = [(Interval::M1, 660_000), (Interval::H1, 0)].into();
        assert!(
            out_of_reach(&newest, &reach).is_empty(),
            "the next candle is in reach"
        );
        let reach = [(Interval::M1, 900_000), (Interval::H1, 0)].into();
        let gaps = out_of_reach(&newest, &reach);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(
            gaps[0].starts_with("1m:") && gaps[0].contains("the 4 candles between"),
            "{gaps:?}"
        );
        assert!(out_of_reach(&BTreeMap::new(), &reach).is_empty());
    }

    #[test]
    fn specs_parse_or_say_what_a_sink_is() {
        assert_eq!("stdout".parse::<SinkSpec>(), Ok(SinkSpec::Stdout));
        assert_eq!(
            "file:/tmp/x.jsonl".parse::<SinkSpec>(),
            Ok(SinkSpec::File("/tmp/x.jsonl".into()))
        );
        let hook = "webhook:http://127.0.0.1:9/in".parse::<SinkSpec>();
        assert_eq!(
            hook,
            Ok(SinkSpec::Webhook {
                url: "http://127.0.0.1:9/in".into(),
                batch: false
            })
        );
        let batch: SinkSpec = "webhook-batch:https://h/x".parse().expect("batch");
        assert_eq!(batch.to_string(), "webhook-batch:https://h/x");
        assert_eq!(batch.kind(), "webhook-batch");
        for bad in ["", "file:", "stdout:", "ftp://x", "file"] {
            let e = bad.parse::<SinkSpec>().expect_err(bad);
            assert!(
                e.contains("a sink is stdout, file:PATH, webhook:URL"),
                "{e}"
            );
        }
        for bad in ["webhook:", "webhook:ftp://x", "webhook:h/x"] {
            let e = bad.parse::<SinkSpec>().expect_err(bad);
            assert!(e.contains("starts with http:// or https://"), "{e}");
        }
        for bad in ["webhook:http://", "webhook:http:///x", "webhook:http://a b"] {
            let e = bad.parse::<SinkSpec>().expect_err(bad);
            assert!(e.contains("needs a host"), "{e}");
        }
        let e = "nats://x".parse::<SinkSpec>().expect_err("no port");
        assert!(e.contains("HOST:PORT"), "{e}");
        let spec: SinkSpec = "nats://127.0.0.1:4222/desk".parse().expect("nats");
        assert_eq!(spec.kind(), "nats");
        assert_eq!(spec.to_string(), "nats://127.0.0.1:4222/desk");
        assert_eq!(
            "nats://127.0.0.1:4222"
                .parse::<SinkSpec>()
                .map(|s| s.to_string()),
            Ok("nats://127.0.0.1:4222/shmkline".to_owned()),
            "the default prefix is part of the position's key"
        );
    }

    #[test]
    fn counters_say_what_is_queued_and_how_far_behind() {
        let o = Output::default();
        assert_eq!((o.queued(), o.lag_ms()), (0, Some(0)));
        o.handed(3, 180_000);
        assert_eq!(o.lag_ms(), None, "nothing confirmed yet");
        o.count(1, true);
        o.confirmed(60_000);
        o.rejected.fetch_add(1, Ordering::AcqRel);
        assert_eq!(o.queued(), 1);
        assert_eq!(o.lag_ms(), Some(120_000));
        o.confirmed(180_000);
        assert_eq!(o.lag_ms(), Some(0));
        assert!(!o.out_of_time());
        o.stop_by(Instant::now());
        assert!(o.out_of_time());
    }
}
