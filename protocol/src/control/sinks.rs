//! Where signals go, as `status` shows each output: stdout, the durable
//! sinks (a file, a webhook, a NATS stream), and the candle publisher of
//! `--publish-candles`.

use serde::{Deserialize, Serialize};

use super::feed::NatsConnection;

/// One sink, told apart by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Sink {
    /// Standard output: every signal of this run, no durable position.
    #[serde(rename = "stdout")]
    Stdout(StdoutSink),
    /// An append-only file of signal lines (`file:PATH`).
    #[serde(rename = "file")]
    File(DurableSink),
    /// A POST per signal (`webhook:URL`).
    #[serde(rename = "webhook")]
    Webhook(DurableSink),
    /// A POST per batch (`webhook-batch:URL`).
    #[serde(rename = "webhook-batch")]
    WebhookBatch(DurableSink),
    /// A JetStream stream (`nats://...`).
    #[serde(rename = "nats")]
    Nats(NatsSink),
}

impl Sink {
    /// Its spec as given (a URL's secrets hidden), and what it delivered.
    pub fn spec_and_delivery(&self) -> (&str, &Delivery) {
        match self {
            Sink::Stdout(s) => (&s.spec, &s.delivery),
            Sink::File(d) | Sink::Webhook(d) | Sink::WebhookBatch(d) => (&d.spec, &d.delivery),
            Sink::Nats(n) => (&n.sink.spec, &n.sink.delivery),
        }
    }

    /// The durable sink's own figures (none for stdout).
    pub fn durable(&self) -> Option<&DurableSink> {
        match self {
            Sink::Stdout(_) => None,
            Sink::File(d) | Sink::Webhook(d) | Sink::WebhookBatch(d) => Some(d),
            Sink::Nats(n) => Some(&n.sink),
        }
    }
}

/// Standard output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StdoutSink {
    /// `stdout`.
    pub spec: String,
    /// Signals handed to it this run.
    pub emitted: u64,
    /// Whether its reader closed it (the run stops).
    pub closed: bool,
    /// Series it holds a watermark for.
    pub series: u64,
    /// What became of them (latency: to the line handed to its thread).
    #[serde(flatten)]
    pub delivery: Delivery,
}

/// A sink with a position that survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DurableSink {
    /// Its spec as given (a URL's credentials and query hidden).
    pub spec: String,
    /// Signals handed to it this run.
    pub emitted: u64,
    /// Series it holds a watermark for.
    pub series: u64,
    /// Signals it may hold queued, at most (`--sink-queue`).
    pub queue_bound: u64,
    /// Behind or catching up: handed nothing new until caught up.
    pub is_behind: bool,
    /// Caught up: the workers judge again what it missed.
    pub catching_up: bool,
    /// Times it fell behind and was caught up.
    pub catch_ups: u64,
    /// Traders removed while it was behind: their signals since cannot be
    /// judged again for it.
    pub lost_traders: Vec<String>,
    /// After a live restart, what the backfill could not bring back to it
    /// (per interval, in words); none until checked.
    pub out_of_reach: Option<Vec<String>>,
    /// What became of what it was handed.
    #[serde(flatten)]
    pub delivery: Delivery,
}

/// A NATS sink: a durable sink and its connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NatsSink {
    /// Its figures.
    #[serde(flatten)]
    pub sink: DurableSink,
    /// Its connection to the broker.
    pub connection: NatsConnection,
}

/// What an output did with the signals it was handed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Candle published to the signal delivered, median, µs.
    pub latency_p50_us: Option<u32>,
    /// The same, 99th percentile, µs.
    pub latency_p99_us: Option<u32>,
    /// Delivered: written (a file: fsynced; a webhook: answered 2xx; NATS:
    /// acknowledged).
    pub delivered: u64,
    /// Handed and not yet delivered, rejected or lost.
    pub queued: u64,
    /// Given up on (a write failed, or teardown's drain time ran out).
    pub lost: u64,
    /// Refused for good by the receiver (HTTP 4xx, not retried).
    pub rejected: u64,
    /// Attempts retried.
    pub retries: u64,
    /// Publishes the broker dropped as repeats (NATS).
    pub broker_duplicates: u64,
    /// Signals not handed to it because it was behind.
    pub behind: u64,
    /// How far its confirmed position trails what it was handed, ms of
    /// candle time (0: caught up; none: handed some, confirmed none yet).
    pub lag_ms: Option<i64>,
    /// Its last error.
    pub last_error: Option<String>,
}

/// The candle publisher of `--publish-candles`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandlePublishing {
    /// The candle stream's name.
    pub stream: String,
    /// Candles the broker acknowledged.
    pub published: u64,
    /// Of those, ones it dropped as repeats.
    pub duplicates: u64,
    /// Publishes retried.
    pub retries: u64,
    /// Candles waiting to be published.
    pub queued: u64,
    /// Live candles that found the queue full (not published: the run
    /// exits 1 naming them).
    pub dropped: u64,
    /// Its connection to the broker.
    pub connection: NatsConnection,
}
