//! The feed's part of `status`: which feed, and its figures. A finite
//! feed (synthetic, replay, a NATS candle stream) is written by the
//! coordinator's loop at a pace; the live Binance feed by its own threads.

use serde::{Deserialize, Serialize};

/// The feed, told apart by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Feed {
    /// The built-in synthetic feed.
    Synthetic(FiniteFeed),
    /// Recorded files.
    Replay(ReplayFeed),
    /// The candle stream an ingest coordinator publishes (`--feed nats://`).
    Nats(NatsFeed),
    /// The live Binance feed.
    Binance(LiveFeed),
}

/// How fast a finite feed is written.
#[derive(Debug, Clone, Default, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// Batches per second (per symbol, one candle each): `{"rate": r}`.
    Rate(f64),
    /// A multiple of real time: `{"speed": x}`.
    Speed(f64),
    /// As fast as the traders keep up: `"fast"`.
    #[default]
    Fast,
}

/// A finite feed written by the loop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FiniteFeed {
    /// Its pace.
    pub pace: Pace,
    /// Batches written (a batch: one candle per symbol).
    pub batches: u64,
    /// What the writer made of the candles.
    #[serde(flatten)]
    pub written: WriterCounters,
    /// Candles the store appended, over every series.
    pub store_appended: u64,
    /// Times the store's publish counter moved.
    pub publishes: u64,
    /// Candles the store refused (older than what it holds, or invalid).
    pub rejected: u64,
    /// Whether its last batch is written.
    pub finished: bool,
    /// Whether every worker judged its last batch.
    pub evaluated: bool,
}

/// A replay: a finite feed read from files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayFeed {
    /// The feed's figures.
    #[serde(flatten)]
    pub feed: FiniteFeed,
    /// Lines skipped as bad (see the log for each, file and line).
    pub bad_lines: u64,
    /// Bytes of the files read so far.
    pub bytes_read: u64,
    /// Bytes of the files in all.
    pub bytes_total: u64,
}

/// The NATS candle stream as a finite feed's source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NatsFeed {
    /// The feed's figures.
    #[serde(flatten)]
    pub feed: FiniteFeed,
    /// The stream's own figures.
    pub nats: NatsSource,
}

/// What the NATS candle consumer took from the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsSource {
    /// The candle stream's name.
    pub stream: String,
    /// The shard taken (`K/N`).
    pub shard: String,
    /// Messages received.
    pub received: u64,
    /// Messages that were no candle (skipped, logged with their sequence).
    pub bad_messages: u64,
    /// Candles of another shard's symbols (skipped).
    pub other_shard: u64,
    /// The last stream sequence received.
    pub last_seq: u64,
    /// The last stream sequence whose candle every worker judged: where a
    /// restart resumes.
    pub judged_seq: u64,
    /// Times the consumer was made again after an error.
    pub consumer_restarts: u64,
    /// Sent by the ingest to visible in this store, median, µs.
    pub sent_to_visible_p50_us: Option<u32>,
    /// The same, 99th percentile, µs.
    pub sent_to_visible_p99_us: Option<u32>,
    /// The connection to the broker.
    pub connection: NatsConnection,
}

/// A NATS client's connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsConnection {
    /// Whether it is up now.
    pub connected: bool,
    /// Times it went down.
    pub disconnects: u64,
    /// Times it came back.
    pub reconnects: u64,
    /// Times the server dropped messages to this slow consumer.
    pub slow_consumer: u64,
    /// The client's last event, in words.
    pub last_event: Option<String>,
}

/// What a feed's writer made of the candles it was handed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterCounters {
    /// Candles written as they came from the feed (updates included).
    pub candles_written: u64,
    /// Of those, closed candles.
    pub closed_written: u64,
    /// Candles written by aggregation into higher intervals.
    pub aggregated_written: u64,
    /// Closed candles the series already held (skipped).
    pub repeats: u64,
    /// Holes in the data: each jump over missing candles counts once.
    pub gaps: u64,
    /// Candles missing in those holes (never invented).
    pub missing_candles: u64,
    /// Closed candles that arrived again, closed, with other values (the
    /// newer values are kept; a trader may have judged the older ones).
    pub corrections: u64,
}

/// The live feed: its figures once started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LiveFeed {
    /// Started (its figures stay after it is stopped).
    Started(Box<LiveFigures>),
    /// Not started yet: it starts once every worker holds its traders.
    NotStarted {
        /// Always false.
        started: bool,
    },
}

/// What the live feed counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveFigures {
    /// Connections open now.
    pub connected: u64,
    /// Connections the streams are split over.
    pub connections_planned: usize,
    /// Connections opened.
    pub connections: u64,
    /// Connections replaced by a new one opened first (the 24 h cut,
    /// `serverShutdown`): no gap, no backfill.
    pub replacements: u64,
    /// `serverShutdown` notices received.
    pub shutdown_notices: u64,
    /// Events dropped at the queue's bound (their series backfilled again).
    pub overflowed: u64,
    /// REST answers 429 (each paused REST for its `Retry-After`).
    pub rate_limited: u64,
    /// REST answers 418 (IP bans).
    pub bans: u64,
    /// REST server errors and timeouts (answers the exchange's servers
    /// gave, or did not give in time).
    pub server_errors: u64,
    /// No WebSocket connection has opened yet: the feed has never been
    /// connected (`connect_error` says why).
    pub never_connected: bool,
    /// Attempts that never reached the exchange: WebSocket connections that
    /// could not be opened (name not resolved, refused, unreachable, TLS or
    /// WebSocket handshake failed) and REST requests that could not connect.
    pub connect_errors: u64,
    /// The last of those, saying where (WebSocket or REST) and naming the host.
    pub connect_error: Option<String>,
    /// The exchange's count of weight used this minute, last answer.
    pub used_weight: u64,
    /// The highest such count seen.
    pub peak_used_weight: u64,
    /// While REST is paused: for how much longer, ms.
    pub rest_paused_ms: Option<u64>,
    /// Why REST is paused, in words.
    pub rest_pause: Option<String>,
    /// Candles whose successor came before their `x: true`.
    pub missing_closes: u64,
    /// Of those, closed from REST.
    pub repaired_closes: u64,
    /// Of those, closed by an `x: true` that came late.
    pub late_closes: u64,
    /// Of those, left as last streamed (REST could not tell in time).
    pub provisional_closes: u64,
    /// The series: live, behind, failing ones named, gaps left.
    pub series: SeriesSummary,
    /// Reconnects (connections after the first, failed attempts included).
    pub reconnects: u64,
    /// Since the last message, ping or pong, ms; `None` before the first.
    pub last_message_age_ms: Option<u64>,
    /// Messages received.
    pub messages: u64,
    /// Messages that were not valid kline events (skipped).
    pub bad_messages: u64,
    /// Events older than the stored candle (normal after a backfill).
    pub stale: u64,
    /// Events that came while their series waited for a backfill: the
    /// newest few per series are applied after it.
    pub deferred: u64,
    /// Candles written from REST.
    pub backfilled: u64,
    /// REST requests made (backfills, repairs, the symbol check).
    pub rest_requests: u64,
    /// Backfill requests that failed.
    pub backfill_failures: u64,
    /// The writer's counters (candles written, gaps...).
    #[serde(flatten)]
    pub counters: WriterCounters,
    /// Received-to-published latency over the recent samples, median, ns.
    pub latency_p50_ns: Option<u32>,
    /// The same, 99th percentile, ns.
    pub latency_p99_ns: Option<u32>,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// The live feed's series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesSummary {
    /// Series written as streamed.
    pub live: usize,
    /// Series waiting for (or in) a backfill.
    pub behind: usize,
    /// Of those, ones whose last backfill was refused (retried on their
    /// own schedule).
    pub failing: usize,
    /// Closes being repaired now.
    pub repairing: usize,
    /// Up to 32 failing series with their last error.
    pub failing_series: Vec<SeriesNote>,
    /// Up to 32 series whose backfills left a gap (outages longer than the
    /// ring's need), with the candles missing.
    pub gaps: Vec<SeriesNote>,
    /// Symbols left out at start (`--skip-unknown`): not listed, or not trading.
    pub skipped_symbols: Vec<String>,
}

/// A series named in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesNote {
    /// `SYMBOL interval`.
    pub series: String,
    /// Failed backfills in a row, or candles missing.
    pub count: u64,
    /// The last error, or where the gap is.
    pub detail: String,
}

impl Default for Feed {
    /// A synthetic feed that wrote nothing yet.
    fn default() -> Self {
        Feed::Synthetic(FiniteFeed::default())
    }
}

impl Feed {
    /// Its kind as `status` names it (`synthetic`, `replay`, `nats`, `binance`).
    pub fn kind(&self) -> &'static str {
        match self {
            Feed::Synthetic(_) => "synthetic",
            Feed::Replay(_) => "replay",
            Feed::Nats(_) => "nats",
            Feed::Binance(_) => "binance",
        }
    }

    /// The writer's counters, once the feed writes.
    pub fn written(&self) -> Option<&WriterCounters> {
        match self {
            Feed::Synthetic(f) => Some(&f.written),
            Feed::Replay(r) => Some(&r.feed.written),
            Feed::Nats(n) => Some(&n.feed.written),
            Feed::Binance(LiveFeed::Started(live)) => Some(&live.counters),
            Feed::Binance(LiveFeed::NotStarted { .. }) => None,
        }
    }

    /// Whether the feed is connected (a local one always is) and its
    /// reconnects: a live feed with a connection up, a NATS feed's broker.
    pub fn connection(&self) -> (bool, u64) {
        match self {
            Feed::Binance(LiveFeed::Started(live)) => (live.connected > 0, live.reconnects),
            Feed::Binance(LiveFeed::NotStarted { .. }) => (false, 0),
            Feed::Nats(n) => (n.nats.connection.connected, n.nats.connection.reconnects),
            Feed::Synthetic(_) | Feed::Replay(_) => (true, 0),
        }
    }
}
