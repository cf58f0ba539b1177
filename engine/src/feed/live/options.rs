//! What the live feed is told (`LiveOptions`, checked in `mod.rs` where the
//! connection plan is known) and the fixed figures it works within.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::{Interval, SymbolName};

/// Binance's production endpoints.
pub const BINANCE_WS: &str = "wss://stream.binance.com:9443";
/// Binance's REST API.
pub const BINANCE_REST: &str = "https://api.binance.com";
/// Largest WebSocket message accepted (a kline event is about 400 bytes).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest REST answer read (1000 rows of about 150 bytes).
pub const MAX_REST_BODY: u64 = 4 << 20;
/// `/api/v3/klines` rows per request, Binance's maximum.
pub const REST_PAGE: usize = 1000;
/// Default bound of the events between the connection threads and the sync
/// thread: about 300,000 events, minutes of 2,000 busy streams.
pub const DEFAULT_QUEUED_BYTES: usize = 64 << 20;
/// How often a blocked read returns to check the stop flag and the timers.
pub(super) const POLL: Duration = Duration::from_millis(50);

/// Candles a backfill brings into an empty ring of `ring`: three quarters of
/// it. A full ring's worth would leave no room: the candles streamed
/// meanwhile would push the oldest out before a worker judged them (a
/// gap). The ring plan sizes rings to at least twice the longest trader's
/// need, so this still covers every window.
pub fn backfill_for_ring(ring: usize) -> usize {
    (ring - ring / 4).max(1)
}

/// Everything the live feed is told.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Symbols, upper case.
    pub symbols: Vec<SymbolName>,
    /// One stream per interval per symbol.
    pub intervals: Vec<Interval>,
    /// WebSocket base URL (`wss://host:port`).
    pub ws_url: String,
    /// REST base URL (`https://host`).
    pub rest_url: String,
    /// A connection that delivers nothing (not even a ping) for this long is dead.
    pub silence_timeout: Duration,
    /// Reconnect proactively after this long (Binance cuts at 24 h).
    pub max_connection_age: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Candles fetched per series at most (see [`backfill_for_ring`]).
    pub backfill: BTreeMap<Interval, usize>,
    /// Trust exactly the CA certificates of this PEM file instead of the
    /// built-in webpki roots (a TLS-intercepting proxy, a test server).
    pub ca_file: Option<std::path::PathBuf>,
    /// Keep (open time, received instant) of the first `LATENCY_SAMPLES`
    /// candles written from the stream, for `bench feed`.
    pub trace: bool,
    /// REST request weight spent per minute at most (`--rest-weight-per-minute`).
    pub rest_weight_per_minute: u32,
    /// Leave out symbols the exchange does not list or trade, instead of
    /// refusing to start (`--skip-unknown`).
    pub skip_unknown: bool,
    /// Bound of the events queued for the sync thread, bytes.
    pub max_queued_bytes: usize,
    /// Connections opened per 5 minutes at most (`--max-connection-opens`).
    pub opens_per_window: usize,
}
