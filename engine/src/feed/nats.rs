//! `--feed nats://HOST:PORT[/PREFIX]`: candles from a JetStream candle
//! stream that an ingest coordinator publishes (`--publish-candles`), in
//! place of an exchange connection, written into this engine's store by the
//! same pump as a replay: at its pace, never further ahead of the slowest
//! worker than the traders' windows allow, so every candle the stream holds
//! is judged, whatever the load.
//!
//! Where it starts: a fresh engine from the time its rings can hold; a
//! restarted one from the last candle its workers had judged (kept in the
//! state directory) less the traders' warm-up, so the rings are warm again
//! and downtime costs catch-up time, never a gap, while the stream holds
//! the candles. What is judged again is dropped by the sinks' positions.
//! Only this shard's symbols are written; a message that is not a candle
//! (bad JSON, too large, a bad symbol) is counted, logged with its stream
//! sequence and skipped. The consumer is an ordered one: a broker restart
//! or a cut connection makes it resume after the last sequence taken.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use protocol::control;
use serde::{Deserialize, Serialize};

use crate::kline::Kline;
use crate::nats::candles::CandleMessage;
use crate::nats::{Nats, NatsAddr, NatsSettings, Shard};
use crate::state::StateDir;

/// Candles taken from the stream and not yet written, at most (the
/// consumer waits while it is full: the pump's backpressure reaches the broker).
pub const INCOMING_BOUND: usize = 8192;
/// How often the judged position is saved.
const SAVE_EVERY: Duration = Duration::from_millis(500);
/// Latency samples kept.
const LATENCY_SAMPLES: usize = 4096;
/// Batches remembered to map a publish to its last stream sequence.
const HISTORY: usize = 65_536;

/// What the consumer hands over.
enum Incoming {
    Candle {
        seq: u64,
        published_ms: i64,
        kline: Kline,
        sent_us: Option<i64>,
    },
    Bad {
        seq: u64,
        why: String,
    },
}

/// The saved position.
#[derive(Serialize, Deserialize)]
struct Saved {
    /// The feed's address and stream.
    feed: String,
    /// The last stream sequence whose candle every worker judged.
    judged_seq: u64,
    /// When the broker stored it (ms since the epoch).
    judged_ms: i64,
}

/// Counters for `status`.
#[derive(Debug, Default)]
pub struct NatsFeedCounters {
    received: AtomicU64,
    bad: AtomicU64,
    other_shard: AtomicU64,
    last_seq: AtomicU64,
    judged_seq: AtomicU64,
    consumer_restarts: AtomicU64,
}

/// The NATS candle feed.
pub struct NatsSource {
    nats: Nats,
    addr: NatsAddr,
    stream: String,
    rx: tokio::sync::mpsc::Receiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
    front: Option<(u64, i64, Kline)>,
    shard: Shard,
    counters: Arc<NatsFeedCounters>,
    state: StateDir,
    file: String,
    /// (batch number, last sequence in it, its broker time) of recent batches.
    batches: VecDeque<(u64, u64, i64)>,
    batch_no: u64,
    /// (store publish, batches written by then), not yet judged.
    publishes: VecDeque<(u64, u64)>,
    saved_at: Instant,
    judged: Option<(u64, i64)>,
    /// Symbols written so far, at most the store's `--max-symbols`.
    symbols: std::collections::HashSet<String>,
    max_symbols: usize,
    /// The front candle's send time on the ingest (us), then the oldest
    /// among those written since the last publish: the path's latency.
    sent: Option<i64>,
    unpublished_sent: Option<i64>,
    /// Ingest sent to visible here (store published), us.
    latency: protocol::samples::Samples,
}

impl std::fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource")
            .field("addr", &self.addr)
            .field("stream", &self.stream)
            .finish()
    }
}

impl NatsSource {
    /// Connects and starts consuming: from `warm_ms` before the last judged
    /// candle saved in `state`, else from `hold_ms` ago (what the rings hold).
    pub fn open(
        addr: &NatsAddr,
        settings: &NatsSettings,
        state: StateDir,
        shard: Shard,
        warm_ms: i64,
        hold_ms: i64,
        max_symbols: usize,
    ) -> anyhow::Result<Self> {
        let nats = Nats::connect(addr, settings)?;
        let stream = addr.stream_name("CANDLES");
        let handle = nats.stream(&stream, &addr.subjects("candles"), settings)?;
        let file = format!(
            "feed-{:016x}.json",
            protocol::rule::fnv1a(&format!("{addr}|{stream}"))
        );
        let saved: Option<Saved> = match state.read(&file)? {
            None => None,
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                crate::state::StateError::Corrupt {
                    path: state.path().display().to_string(),
                    file: file.clone(),
                    why: e.to_string(),
                    fix: "remove it to start from what the rings can hold",
                }
            })?),
        };
        let from_ms = match &saved {
            Some(s) => {
                tracing::info!(feed = %addr, stream, judged_seq = s.judged_seq,
                    "NATS feed: resuming after the last candle judged, less the warm-up");
                s.judged_ms - warm_ms
            }
            None => protocol::clock::now_ms() - hold_ms,
        };
        let counters = Arc::new(NatsFeedCounters::default());
        let (tx, rx) = tokio::sync::mpsc::channel(INCOMING_BOUND);
        let task = nats.spawn(consume(
            handle,
            addr.subjects("candles"),
            from_ms.max(0),
            tx,
            counters.clone(),
        ));
        Ok(Self {
            nats,
            addr: addr.clone(),
            stream,
            rx,
            task,
            front: None,
            shard,
            counters,
            state,
            file,
            batches: VecDeque::new(),
            batch_no: 0,
            publishes: VecDeque::new(),
            saved_at: Instant::now(),
            judged: saved.map(|s| (s.judged_seq, s.judged_ms)),
            symbols: std::collections::HashSet::new(),
            max_symbols,
            sent: None,
            unpublished_sent: None,
            latency: protocol::samples::Samples::new(LATENCY_SAMPLES),
        })
    }

    /// Takes the next candle of this shard into `front`, if one came.
    fn fill(&mut self) {
        while self.front.is_none() {
            match self.rx.try_recv() {
                Ok(Incoming::Candle {
                    seq,
                    published_ms,
                    kline,
                    sent_us,
                }) => {
                    self.counters.last_seq.store(seq, Ordering::Release);
                    self.sent = sent_us;
                    let symbol = kline.symbol.as_str();
                    if !self.shard.owns(symbol) {
                        self.counters.other_shard.fetch_add(1, Ordering::AcqRel);
                    } else if self.symbols.contains(symbol) || self.symbols.len() < self.max_symbols
                    {
                        self.symbols.insert(symbol.to_owned());
                        self.front = Some((seq, published_ms, kline));
                    } else {
                        self.counters.bad.fetch_add(1, Ordering::AcqRel);
                        tracing::warn!(stream = %self.stream, seq, symbol,
                            max_symbols = self.max_symbols,
                            "a candle of one symbol more than the store holds: skipped (raise --max-symbols)");
                    }
                }
                Ok(Incoming::Bad { seq, why }) => {
                    self.counters.last_seq.store(seq, Ordering::Release);
                    self.counters.bad.fetch_add(1, Ordering::AcqRel);
                    tracing::warn!(stream = %self.stream, seq, reason = %why,
                        "a message on the candle stream that is not a candle: skipped");
                }
                Err(_) => break,
            }
        }
    }

    /// Whether nothing is there to write now.
    pub fn waiting(&mut self) -> bool {
        self.fill();
        self.front.is_none()
    }

    /// The next batch's delivery time, if a candle is there.
    pub fn peek(&mut self) -> Option<i64> {
        self.fill();
        self.front.as_ref().map(|(_, _, k)| k.at)
    }

    /// Hands every candle there now with the front's delivery time to `each`.
    pub fn next_batch(
        &mut self,
        mut each: impl FnMut(&Kline) -> Result<(), super::BadLine>,
    ) -> Option<i64> {
        let at = self.peek()?;
        let mut last = None;
        while let Some((seq, ms, kline)) = self.front.take_if(|(_, _, k)| k.at == at) {
            if let Err(e) = each(&kline) {
                self.counters.bad.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(stream = %self.stream, seq, reason = %e,
                    "a candle from the stream the store refuses: skipped");
            }
            last = Some((seq, ms));
            if let Some(sent) = self.sent.take() {
                self.unpublished_sent = Some(self.unpublished_sent.map_or(sent, |s| s.min(sent)));
            }
            self.fill();
        }
        if let Some((seq, ms)) = last {
            self.batch_no += 1;
            self.batches.push_back((self.batch_no, seq, ms));
            if self.batches.len() > HISTORY {
                self.batches.pop_front();
            }
        }
        Some(at)
    }

    /// The store published `publish` with what was written so far.
    pub fn published(&mut self, publish: u64) {
        if let Some(sent) = self.unpublished_sent.take() {
            let us = crate::nats::candles::now_us() - sent;
            self.latency
                .push(protocol::samples::saturate(us.max(0) as u128));
        }
        self.publishes.push_back((publish, self.batch_no));
        if self.publishes.len() > HISTORY {
            self.publishes.pop_front();
        }
    }

    /// Every worker judged up to publish `slowest`: the position moves and
    /// is saved now and then.
    pub fn judged_up_to(&mut self, slowest: u64) {
        let mut batch = None;
        while let Some(&(p, b)) = self.publishes.front() {
            if p > slowest {
                break;
            }
            batch = Some(b);
            self.publishes.pop_front();
        }
        let Some(batch) = batch else {
            return;
        };
        while self.batches.len() > 1 && self.batches.get(1).is_some_and(|&(b, _, _)| b <= batch) {
            self.batches.pop_front();
        }
        // Never backwards: after a resume the first batches are re-read
        // history, older than the position saved.
        if let Some(&(b, seq, ms)) = self.batches.front()
            && b <= batch
            && self.judged.is_none_or(|(s, _)| seq > s)
        {
            self.judged = Some((seq, ms));
            self.counters.judged_seq.store(seq, Ordering::Release);
        }
        if self.saved_at.elapsed() >= SAVE_EVERY {
            self.save();
        }
    }

    fn save(&mut self) {
        self.saved_at = Instant::now();
        let Some((judged_seq, judged_ms)) = self.judged else {
            return;
        };
        let saved = Saved {
            feed: format!("{}|{}", self.addr, self.stream),
            judged_seq,
            judged_ms,
        };
        let bytes = serde_json::to_vec(&saved).unwrap_or_default();
        if let Err(e) = self.state.write_atomically(&self.file, &bytes) {
            tracing::error!(error = %e, "the NATS feed's position cannot be saved: a restart starts further back");
        }
    }

    /// For `status`.
    pub fn status(&self) -> control::NatsSource {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Acquire);
        control::NatsSource {
            stream: self.stream.clone(),
            shard: self.shard.to_string(),
            received: g(&c.received),
            bad_messages: g(&c.bad),
            other_shard: g(&c.other_shard),
            last_seq: g(&c.last_seq),
            judged_seq: g(&c.judged_seq),
            consumer_restarts: g(&c.consumer_restarts),
            sent_to_visible_p50_us: self.latency.quantile(0.5),
            sent_to_visible_p99_us: self.latency.quantile(0.99),
            connection: self.nats.health.status(),
        }
    }
}

impl Drop for NatsSource {
    fn drop(&mut self) {
        self.save();
        self.task.abort();
    }
}

/// The consumer: an ordered consumer from `from_ms`, each message handed
/// over (waiting while the coordinator's side is full); on an error it is
/// made again after the last sequence taken.
async fn consume(
    stream: jetstream::stream::Stream,
    subjects: String,
    from_ms: i64,
    tx: tokio::sync::mpsc::Sender<Incoming>,
    counters: Arc<NatsFeedCounters>,
) {
    let mut next_seq: Option<u64> = None;
    loop {
        let deliver_policy = match next_seq {
            Some(seq) => jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq,
            },
            None => jetstream::consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(from_ms) * 1_000_000,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            },
        };
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subjects.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    retry(&counters, &e.to_string()).await;
                    continue;
                }
            },
            Err(e) => {
                retry(&counters, &e.to_string()).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    retry(&counters, &e.to_string()).await;
                    break;
                }
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let seq = info.stream_sequence;
            let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
            next_seq = Some(seq + 1);
            counters.received.fetch_add(1, Ordering::AcqRel);
            let incoming = match CandleMessage::parse(&message.payload) {
                Ok((kline, sent_us)) => Incoming::Candle {
                    seq,
                    published_ms,
                    kline,
                    sent_us,
                },
                Err(why) => Incoming::Bad { seq, why },
            };
            if tx.send(incoming).await.is_err() {
                return;
            }
        }
    }
}

async fn retry(counters: &NatsFeedCounters, why: &str) {
    counters.consumer_restarts.fetch_add(1, Ordering::AcqRel);
    tracing::warn!(error = %why, "NATS candle consumer failed: making it again after the last candle taken");
    tokio::time::sleep(Duration::from_millis(500)).await;
}
