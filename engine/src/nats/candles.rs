//! Candles over JetStream: the message (one JSON object per candle update
//! or close, on `<prefix>.candles.<SYMBOL>.<interval>`), and the ingest
//! side (`--publish-candles`): a tap on the feed's writer and the thread
//! that publishes what it takes.
//!
//! A closed candle carries `Nats-Msg-Id: SYMBOL|interval|open_time|closed`,
//! so the broker drops a repeat (a publish retried after a broker restart,
//! an ingest restarted on the same replay) inside the duplicate window; an
//! update carries none (a later update or the close supersedes it, and an
//! engine writes a repeated one as the same candle). The tap's queue is
//! bounded ([`TAP_BOUND`]) and never waited on under the store's lock: a
//! finite feed (replay, synthetic) waits before writing a batch while
//! [`FINITE_BOUND`] are queued, so nothing is dropped; the live feed cannot wait on the exchange,
//! so a candle that finds it full is counted (`dropped`, a WARN, `status`,
//! and the run's exit) rather than freezing the coordinator.
//!
//! At most one publish per subject awaits its acknowledgement: if a
//! connection drops the first of two publishes of a subject and the second
//! is stored, the first, sent again, would land after it (a close behind a
//! later candle, refused as stale by the engines).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use protocol::control::CandlePublishing;
use protocol::{Candle, Interval, SymbolName};
use serde::{Deserialize, Serialize};

use super::{Nats, NatsAddr, NatsSettings, token};
use crate::kline::Kline;

/// Candle updates queued for the publisher, at most (about 10 MB).
pub const TAP_BOUND: usize = 65_536;
/// Candles queued past which a finite feed waits before its next batch:
/// the backlog between the ingest and the engines stays short, and so does
/// the wait at the end of a replay.
pub const FINITE_BOUND: usize = 8192;
/// The largest candle message an engine reads; a larger one is bad input.
pub const MAX_MESSAGE: usize = 1024;

/// A candle on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandleMessage {
    /// The symbol.
    pub symbol: String,
    /// The interval.
    pub interval: Interval,
    /// Open time, ms.
    pub open_time: i64,
    /// Prices and volume.
    pub open: f64,
    /// Highest.
    pub high: f64,
    /// Lowest.
    pub low: f64,
    /// Last.
    pub close: f64,
    /// Base-asset volume.
    pub volume: f64,
    /// Final.
    pub closed: bool,
    /// When the ingest's feed delivered it, ms (replays are paced by it).
    pub at: i64,
    /// When the ingest handed it to its publisher (wall clock, us since the
    /// epoch): an engine on a host with the same clock measures the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_us: Option<i64>,
}

/// The wall clock in microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl CandleMessage {
    /// The message of `kline`.
    pub fn of(kline: &Kline) -> Self {
        let c = &kline.candle;
        Self {
            symbol: kline.symbol.as_str().to_owned(),
            interval: kline.interval,
            open_time: c.open_time,
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            closed: kline.closed,
            at: kline.at,
            sent_us: None,
        }
    }

    /// Its subject under `prefix`.
    pub fn subject(&self, prefix: &str) -> String {
        format!("{prefix}.candles.{}.{}", token(&self.symbol), self.interval)
    }

    /// Its `Nats-Msg-Id`: closed candles only.
    pub fn msg_id(&self) -> Option<String> {
        self.closed.then(|| {
            format!(
                "{}|{}|{}|closed",
                self.symbol, self.interval, self.open_time
            )
        })
    }

    /// Reads a message off the wire: bounded, valid JSON of this shape, a
    /// valid symbol, finite values (the writer checks the rest).
    pub fn parse(payload: &[u8]) -> Result<(Kline, Option<i64>), String> {
        if payload.len() > MAX_MESSAGE {
            return Err(format!(
                "{} bytes, over the {MAX_MESSAGE} a candle message may have",
                payload.len()
            ));
        }
        let m: CandleMessage =
            serde_json::from_slice(payload).map_err(|e| format!("not a candle message: {e}"))?;
        let symbol = SymbolName::new(&m.symbol).map_err(|e| e.to_string())?;
        // Times of 2000-2200 in ms, on the interval's grid, as every feed's.
        const MS_2000: i64 = 946_684_800_000;
        const MS_2200: i64 = 7_258_118_400_000;
        if !(MS_2000..MS_2200).contains(&m.open_time) || !(MS_2000..MS_2200).contains(&m.at) {
            return Err(format!(
                "open_time {} or at {}: not a time of 2000-2200 in milliseconds",
                m.open_time, m.at
            ));
        }
        let candle = Candle {
            open_time: m.open_time,
            open: m.open,
            high: m.high,
            low: m.low,
            close: m.close,
            volume: m.volume,
        };
        crate::kline::check(&candle, m.interval).map_err(|e| e.to_string())?;
        let kline = Kline {
            symbol,
            interval: m.interval,
            candle,
            closed: m.closed,
            at: m.at,
        };
        Ok((kline, m.sent_us))
    }
}

/// The feed writer's side of the publisher: every candle it writes.
#[derive(Debug, Clone)]
pub struct CandleTap {
    tx: SyncSender<CandleMessage>,
    counters: Arc<PublisherCounters>,
}

impl CandleTap {
    /// Hands `kline` to the publisher; never waits (see the module's notes).
    pub fn send(&self, kline: &Kline) {
        let mut m = CandleMessage::of(kline);
        m.sent_us = Some(now_us());
        match self.tx.try_send(m) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::AcqRel);
            }
            Err(_) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::AcqRel) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n,
                        bound = TAP_BOUND,
                        "candles not published: the publisher's queue is full (the broker is slower than the live feed, or down)"
                    );
                }
            }
        }
    }

    /// Whether a finite feed may write a batch of `candles` now: the
    /// queue holds it (or is empty: a batch larger than the bound then
    /// waits for nothing but itself, and `--max-symbols` keeps it below).
    pub fn has_room(&self, candles: usize) -> bool {
        let queued = self.counters.queued.load(Ordering::Acquire) as usize;
        queued == 0 || queued + candles <= FINITE_BOUND
    }
}

/// What the publisher did, for `status`.
#[derive(Debug, Default)]
pub struct PublisherCounters {
    /// Candle messages acknowledged by the stream.
    pub published: AtomicU64,
    /// Of those, closes the stream already held (dropped by their id).
    pub duplicates: AtomicU64,
    /// Publishes sent again after a failure.
    pub retries: AtomicU64,
    /// Candles in the tap's queue.
    pub queued: AtomicU64,
    /// Candles the live feed wrote that found the queue full.
    pub dropped: AtomicU64,
}

/// The ingest's publisher: a thread taking the tap's candles and
/// publishing them in order, a window at a time.
pub struct CandlePublisher {
    thread: Option<std::thread::JoinHandle<()>>,
    /// Counters.
    pub counters: Arc<PublisherCounters>,
    /// The connection's health.
    pub health: Arc<super::NatsHealth>,
    /// The stream's name.
    pub stream: String,
}

impl CandlePublisher {
    /// Connects, makes the candle stream if missing, starts the thread;
    /// returns it and the tap for the feed's writer.
    pub fn start(
        addr: &NatsAddr,
        settings: &NatsSettings,
    ) -> Result<(Self, CandleTap), super::NatsError> {
        let nats = Nats::connect(addr, settings)?;
        let stream = addr.stream_name("CANDLES");
        nats.stream(&stream, &addr.subjects("candles"), settings)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(TAP_BOUND);
        let counters = Arc::new(PublisherCounters::default());
        let health = nats.health.clone();
        let window = settings.in_flight;
        let c = counters.clone();
        let counters_for_tap = counters.clone();
        let name = stream.clone();
        let thread = std::thread::Builder::new()
            .name("candle-publisher".into())
            .spawn(move || publish_all(nats, rx, window, &c, &name))
            .map_err(super::NatsError::Runtime)?;
        Ok((
            Self {
                thread: Some(thread),
                counters,
                health,
                stream,
            },
            CandleTap {
                tx,
                counters: counters_for_tap,
            },
        ))
    }

    /// For `status`.
    pub fn status(&self) -> CandlePublishing {
        let c = &self.counters;
        CandlePublishing {
            stream: self.stream.clone(),
            published: c.published.load(Ordering::Acquire),
            duplicates: c.duplicates.load(Ordering::Acquire),
            retries: c.retries.load(Ordering::Acquire),
            queued: c.queued.load(Ordering::Acquire),
            dropped: c.dropped.load(Ordering::Acquire),
            connection: self.health.status(),
        }
    }

    /// Live candles that found the queue full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Acquire)
    }

    /// Waits until everything tapped is acknowledged, or until `timeout`
    /// passes with nothing acknowledged; the taps must be dropped first
    /// (their channel ends the thread).
    pub fn finish(mut self, timeout: Duration, mut stop: impl FnMut() -> bool) -> bool {
        let Some(thread) = self.thread.take() else {
            return true;
        };
        // Waited for as long as it makes progress, like stdout at the end
        // of a run; given up after `timeout` without any.
        let mut moved = (
            std::time::Instant::now(),
            self.counters.published.load(Ordering::Acquire),
        );
        while !thread.is_finished() && moved.0.elapsed() < timeout && !stop() {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.counters.published.load(Ordering::Acquire);
            if now != moved.1 {
                moved = (std::time::Instant::now(), now);
            }
        }
        if thread.is_finished() {
            let _ = thread.join();
            true
        } else {
            false
        }
    }
}

/// The publisher's loop. Per subject a queue of candles in order; a subject
/// with one to send is *ready*; up to `window` subjects have their first
/// candle in flight, and when its acknowledgement comes the subject's next
/// goes at once. A failure sends every subject's first again (same ids), so
/// a subject's candles reach the stream in order whatever is lost.
fn publish_all(
    nats: Nats,
    rx: Receiver<CandleMessage>,
    window: usize,
    counters: &PublisherCounters,
    stream: &str,
) {
    let prefix = nats.addr.prefix.clone();
    let js = nats.js.clone();
    let mut waiting: HashMap<String, VecDeque<CandleMessage>> = HashMap::new();
    let mut ready: VecDeque<String> = VecDeque::new();
    let mut pending: VecDeque<(String, PublishAckFuture)> = VecDeque::new();
    let mut held = 0usize;
    let mut attempt = 0u32;
    let mut open = true;
    let take = |m: CandleMessage,
                waiting: &mut HashMap<String, VecDeque<CandleMessage>>,
                ready: &mut VecDeque<String>,
                held: &mut usize| {
        counters.queued.fetch_sub(1, Ordering::AcqRel);
        let subject = m.subject(&prefix);
        let queue = waiting.entry(subject.clone()).or_default();
        if queue.is_empty() {
            ready.push_back(subject);
        }
        queue.push_back(m);
        *held += 1;
    };
    loop {
        // What the tap queued, up to a bound (the rest waits in its channel).
        while held < TAKE {
            match rx.try_recv() {
                Ok(m) => take(m, &mut waiting, &mut ready, &mut held),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if pending.is_empty() && ready.is_empty() {
            if !open {
                return;
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => take(m, &mut waiting, &mut ready, &mut held),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            continue;
        }
        let failed = nats.block_on(async {
            while pending.len() < window.max(1)
                && let Some(subject) = ready.pop_front()
            {
                let Some(m) = waiting.get(&subject).and_then(|q| q.front()) else {
                    continue;
                };
                let mut headers = async_nats::HeaderMap::new();
                if let Some(id) = m.msg_id() {
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                }
                let payload = serde_json::to_vec(m).unwrap_or_default();
                match js
                    .publish_with_headers(subject.clone(), headers, payload.into())
                    .await
                {
                    Ok(f) => pending.push_back((subject, f)),
                    Err(e) => {
                        ready.push_front(subject);
                        if pending.is_empty() {
                            return Some(e.to_string());
                        }
                        break;
                    }
                }
            }
            let (subject, front) = pending.pop_front()?;
            match front.await {
                Ok(ack) => {
                    counters.published.fetch_add(1, Ordering::AcqRel);
                    if ack.duplicate {
                        counters.duplicates.fetch_add(1, Ordering::AcqRel);
                    }
                    if let Some(queue) = waiting.get_mut(&subject) {
                        queue.pop_front();
                        held -= 1;
                        if queue.is_empty() {
                            waiting.remove(&subject);
                        } else {
                            ready.push_back(subject);
                        }
                    }
                    None
                }
                Err(e) => {
                    // Every subject in flight sends its first again.
                    ready.push_front(subject);
                    ready.extend(pending.drain(..).map(|(s, _)| s));
                    Some(e.to_string())
                }
            }
        });
        if let Some(why) = failed {
            counters.retries.fetch_add(1, Ordering::AcqRel);
            let wait = Duration::from_millis(100 << attempt.min(6));
            if attempt.is_power_of_two() || attempt == 0 {
                tracing::warn!(stream, error = %why, retry_in_ms = wait.as_millis() as u64,
                    "candle publish not acknowledged: publishing again from each series' first unacknowledged");
            }
            attempt += 1;
            std::thread::sleep(wait);
        } else {
            attempt = 0;
        }
    }
}

/// Candles the publisher holds in its per-subject queues, at most (besides
/// the tap's channel).
const TAKE: usize = 16_384;

#[cfg(test)]
mod tests {
    use super::*;

    fn kline(closed: bool) -> Kline {
        Kline {
            symbol: SymbolName::new("BTCUSDT").expect("symbol"),
            interval: Interval::M1,
            candle: Candle {
                open_time: 1_613_692_800_000,
                open: 1.0,
                high: 2.0,
                low: 0.5,
                close: 1.5,
                volume: 3.0,
            },
            closed,
            at: 1_613_692_860_000,
        }
    }

    #[test]
    fn a_candle_round_trips_with_its_subject_and_id() {
        let m = CandleMessage::of(&kline(true));
        assert_eq!(m.subject("p"), "p.candles.BTCUSDT.1m");
        assert_eq!(
            m.msg_id().as_deref(),
            Some("BTCUSDT|1m|1613692800000|closed")
        );
        assert_eq!(CandleMessage::of(&kline(false)).msg_id(), None);
        let wire = serde_json::to_vec(&m).expect("json");
        let (back, sent) = CandleMessage::parse(&wire).expect("parses");
        assert_eq!((CandleMessage::of(&back), sent), (m, None));
    }

    #[test]
    fn bad_messages_say_why() {
        let too_big = vec![b' '; MAX_MESSAGE + 1];
        assert!(
            CandleMessage::parse(&too_big)
                .expect_err("big")
                .contains("over the 1024")
        );
        assert!(
            CandleMessage::parse(b"{}")
                .expect_err("shape")
                .contains("not a candle message")
        );
        let mut m = serde_json::to_value(CandleMessage::of(&kline(true))).expect("json");
        m["symbol"] = "no spaces allowed".into();
        assert!(CandleMessage::parse(m.to_string().as_bytes()).is_err());
        m["symbol"] = "OK".into();
        let good = m.clone();
        m["open_time"] = i64::MAX.into();
        assert!(
            CandleMessage::parse(m.to_string().as_bytes())
                .expect_err("far future")
                .contains("2000-2200")
        );
        m = good.clone();
        m["low"] = (-1.0).into();
        assert!(
            CandleMessage::parse(m.to_string().as_bytes()).is_err(),
            "a low at or below zero"
        );
        m = good.clone();
        m["open_time"] = 1_613_692_800_001i64.into();
        assert!(
            CandleMessage::parse(m.to_string().as_bytes()).is_err(),
            "off the minute grid"
        );
        m = good;
        m["extra"] = 1.into();
        assert!(
            CandleMessage::parse(m.to_string().as_bytes())
                .expect_err("unknown field")
                .contains("unknown field")
        );
    }
}
