//! The live Binance feed: one combined-stream WebSocket connection for every
//! (symbol, interval), written into the store by this feed's own thread the
//! moment a message arrives (in-progress candles as updates, `x: true` ones
//! as closes), with REST backfill at start and after every reconnect.
//!
//! Why no closed candle is missed or duplicated across a reconnect: the new
//! connection is open (so the exchange buffers every event from then on)
//! before `/api/v3/klines` is asked for everything from each series' latest
//! stored candle; the buffered events are applied after, and the writer drops
//! what it already holds (older: stale; same candle, closed: a repeat).
//!
//! Connection life: a connection silent for longer than `silence_timeout`
//! is dead (Binance pings every 20 s; tungstenite answers pings as it
//! reads); one older than `max_connection_age` is replaced before Binance's
//! 24 h cut; a lost one is retried with capped exponential backoff and
//! jitter, reset once a connection delivers data.
//!
//! Bounds: one connection, one HTTP agent keeping at most two idle
//! connections, a 1 MiB message limit, at most [`MAX_QUEUED`] events queued
//! during a backfill, the writer's per-symbol state (bounded by the
//! store's symbol directory) and a 64 Ki-sample latency ring. Nothing is
//! kept per connection, so reconnecting does not grow memory.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::{Interval, SymbolName};
use serde::Serialize;

mod client;

use client::Client;

use super::writer::{FeedCounters, FeedWriter};
use crate::instance::SharedStore;
use protocol::samples::Samples;
use protocol::splitmix::SplitMix64;

/// Binance's production endpoints.
pub const BINANCE_WS: &str = "wss://stream.binance.com:9443";
/// Binance's REST API.
pub const BINANCE_REST: &str = "https://api.binance.com";
/// Binance accepts at most this many streams on one connection.
pub const MAX_STREAMS: usize = 1024;
/// Largest WebSocket message accepted (a kline event is about 400 bytes).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest REST answer read (1000 rows of about 150 bytes).
pub const MAX_REST_BODY: u64 = 4 << 20;
/// `/api/v3/klines` rows per request, Binance's maximum.
pub const REST_PAGE: usize = 1000;
/// Latency samples kept for `status` and `bench feed`.
pub const LATENCY_SAMPLES: usize = 1 << 16;
/// Events queued while a backfill runs; more means the backfill is too slow
/// for the stream, and the connection is retried.
pub const MAX_QUEUED: usize = 100_000;
/// Longest a backfill pauses between REST pages to read the socket.
const DRAIN_BUDGET: Duration = Duration::from_millis(2);
/// How often a blocked read returns to check the stop flag and the timers.
const POLL: Duration = Duration::from_millis(50);

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
    /// Candles fetched per series at start (at most the ring).
    pub backfill: BTreeMap<Interval, usize>,
    /// Trust exactly the CA certificates of this PEM file instead of the
    /// built-in webpki roots (a TLS-intercepting proxy, a test server).
    pub ca_file: Option<std::path::PathBuf>,
    /// Keep (open time, received instant) of the first [`LATENCY_SAMPLES`]
    /// candles written from the stream, for `bench feed`.
    pub trace: bool,
}

impl LiveOptions {
    /// Checks the options, saying which flag to fix.
    pub fn check(&self) -> Result<()> {
        if self.symbols.is_empty() {
            bail!("--feed binance needs --symbols, e.g. --symbols btcusdt,ethusdt");
        }
        let streams = self.symbols.len() * self.intervals.len();
        if streams > MAX_STREAMS {
            bail!(
                "{streams} streams ({} symbols x {} intervals): Binance allows {MAX_STREAMS} per connection; pass fewer --symbols or --intervals",
                self.symbols.len(),
                self.intervals.len()
            );
        }
        for (flag, url, schemes) in [
            ("WebSocket", &self.ws_url, ["ws://", "wss://"]),
            ("REST", &self.rest_url, ["http://", "https://"]),
        ] {
            if !schemes.iter().any(|s| url.starts_with(s)) {
                bail!(
                    "--endpoint: the {flag} URL {url:?} must start with {} or {}",
                    schemes[0],
                    schemes[1]
                );
            }
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            bail!("reconnect delays: the minimum must be above 0 and at most the maximum");
        }
        Ok(())
    }

    /// The combined-stream URL.
    pub fn stream_url(&self) -> String {
        let streams: Vec<String> = self
            .symbols
            .iter()
            .flat_map(|s| {
                self.intervals
                    .iter()
                    .map(move |i| format!("{}@kline_{}", s.as_str().to_ascii_lowercase(), i))
            })
            .collect();
        format!(
            "{}/stream?streams={}",
            self.ws_url.trim_end_matches('/'),
            streams.join("/")
        )
    }
}

/// Shared counters: written by the feed thread, read by `status`.
#[derive(Debug, Default)]
pub struct LiveHealth {
    connected: AtomicBool,
    connections: AtomicU64,
    reconnects: AtomicU64,
    last_message_ms: AtomicU64,
    messages: AtomicU64,
    bad_messages: AtomicU64,
    stale: AtomicU64,
    deferred: AtomicU64,
    backfilled: AtomicU64,
    backfill_failures: AtomicU64,
    rest_requests: AtomicU64,
    counters: Mutex<FeedCounters>,
    /// The last [`LATENCY_SAMPLES`] message-received-to-published times, ns.
    latency: Mutex<Option<Samples>>,
    last_error: Mutex<Option<String>>,
    receipts: Mutex<Vec<(i64, Instant)>>,
}

/// What `status` shows of a live feed.
#[derive(Debug, Clone, Serialize)]
pub struct LiveStatus {
    /// A connection is up.
    pub connected: bool,
    /// Connections opened.
    pub connections: u64,
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
    /// Events left out because their series' backfill failed (the next
    /// connection's backfill brings them).
    pub deferred: u64,
    /// Candles written from REST.
    pub backfilled: u64,
    /// REST requests made (backfills), within the weight budget.
    pub rest_requests: u64,
    /// Backfills that failed (the connection was then retried).
    pub backfill_failures: u64,
    /// The writer's counters (candles written, gaps...).
    #[serde(flatten)]
    pub counters: FeedCounters,
    /// Received-to-published latency over the recent samples, ns.
    pub latency_p50_ns: Option<u32>,
    /// p99 of the same.
    pub latency_p99_ns: Option<u32>,
    /// The last connection error.
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LiveHealth {
    /// A snapshot for `status`.
    pub fn status(&self) -> LiveStatus {
        let last = self.last_message_ms.load(Ordering::Relaxed);
        let lat = lock(&self.latency).clone();
        let q = |p: f64| lat.as_ref().and_then(|s| s.quantile(p));
        LiveStatus {
            connected: self.connected.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_message_age_ms: (last > 0)
                .then(|| (protocol::clock::now_ms() as u64).saturating_sub(last)),
            messages: self.messages.load(Ordering::Relaxed),
            bad_messages: self.bad_messages.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            backfilled: self.backfilled.load(Ordering::Relaxed),
            rest_requests: self.rest_requests.load(Ordering::Relaxed),
            backfill_failures: self.backfill_failures.load(Ordering::Relaxed),
            counters: *lock(&self.counters),
            latency_p50_ns: q(0.5),
            latency_p99_ns: q(0.99),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Every latency sample kept (for `bench feed`).
    pub fn latency_samples(&self) -> Vec<u32> {
        lock(&self.latency)
            .as_ref()
            .map_or_else(Vec::new, |s| s.values().to_vec())
    }

    /// With [`LiveOptions::trace`]: when each streamed candle was received.
    pub fn receipts(&self) -> Vec<(i64, Instant)> {
        lock(&self.receipts).clone()
    }

    fn touch(&self) {
        self.last_message_ms
            .store(protocol::clock::now_ms() as u64, Ordering::Relaxed);
    }

    fn error(&self, e: String) {
        *lock(&self.last_error) = Some(e);
    }
}

/// The running feed: its thread, stopped and joined on drop.
#[derive(Debug)]
pub struct LiveFeed {
    stop: Arc<AtomicBool>,
    health: Arc<LiveHealth>,
    thread: Option<JoinHandle<()>>,
}

impl LiveFeed {
    /// Registers every symbol's series in the store (so readers see them at
    /// once) and starts the feed thread.
    pub fn start(opts: LiveOptions, store: SharedStore, kept: &[Interval]) -> Result<Self> {
        opts.check()?;
        if let Some(i) = opts.intervals.iter().find(|i| !kept.contains(i)) {
            bail!("interval {i} is not kept by the store (--intervals)");
        }
        let mut writer = FeedWriter::new(kept, &[]);
        {
            let mut s = store.lock();
            for symbol in &opts.symbols {
                writer.register(&mut *s, symbol)?;
            }
            s.publish();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let health = Arc::new(LiveHealth::default());
        let (tls, rest_tls) = match &opts.ca_file {
            None => (None, ureq::tls::TlsConfig::default()),
            Some(path) => trust_only(path)?,
        };
        let mut client = Client {
            tls,
            subscribed: opts.symbols.iter().cloned().collect(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                // Keep-alive to the REST host: a reconnect's backfill of
                // many series must not open a TLS connection per request.
                .max_idle_connections(2)
                .max_idle_connections_per_host(2)
                .http_status_as_error(false)
                .tls_config(rest_tls)
                .build()
                .into(),
            opts,
            store,
            writer,
            stop: Arc::clone(&stop),
            health: Arc::clone(&health),
            rng: SplitMix64::new(RandomState::new().hash_one(std::process::id())),
            budget: client::Budget::new(Instant::now()),
            shutdown_notice: false,
        };
        let thread = std::thread::Builder::new()
            .name("live-feed".into())
            .spawn(move || client.run())
            .context("starting the live feed thread")?;
        Ok(Self {
            stop,
            health,
            thread: Some(thread),
        })
    }

    /// The feed's counters.
    pub fn health(&self) -> &Arc<LiveHealth> {
        &self.health
    }

    /// Whether the thread ended (it only does when stopped, or by a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread (it notices within [`POLL`]) and joins it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the live feed thread panicked");
        }
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// TLS configurations (WebSocket, REST) trusting only the CA certificates in
/// `path`.
fn trust_only(
    path: &std::path::Path,
) -> Result<(Option<Arc<rustls::ClientConfig>>, ureq::tls::TlsConfig)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("--ca-file {}: no certificate in it", path.display());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots.add(cert.clone()).with_context(|| {
            format!(
                "--ca-file {}: a certificate rustls cannot use",
                path.display()
            )
        })?;
    }
    let ws = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let rest_roots: Vec<ureq::tls::Certificate<'static>> = certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let rest = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&rest_roots))
        .build();
    Ok((Some(Arc::new(ws)), rest))
}

#[cfg(test)]
mod tests;
