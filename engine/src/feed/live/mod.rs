//! The live Binance feed: every (symbol, interval) stream, split over as
//! many WebSocket connections as Binance's limits require, written into the
//! store by one sync thread the moment it arrives (in-progress candles as
//! updates, `x: true` ones as closes), each series backfilled over REST at
//! start, after its connection was lost, and where a close went missing.
//!
//! The rooms: `conn` (a thread per connection: open, read, parse, replace
//! before the 24 h cut or at `serverShutdown`), `sync` (the one writer:
//! symbols checked against `exchangeInfo`, per-series backfill and repair),
//! `rest` (requests only as Binance's limits allow: weight budget, 429,
//! 418, used-weight header, server trouble).
//!
//! Why no closed candle is missed or duplicated: a series' backfill asks
//! for its newest candles only after its connection is open (so every later
//! event reaches us), events of a series being backfilled are stashed and
//! applied after its pages, and the writer drops what it already holds
//! (older: stale; same candle, closed: a repeat).
//!
//! Bounds: [`conn::MAX_CONNECTIONS`] connections, a [`MAX_MESSAGE`] message
//! limit, `max_queued_bytes` of events between the connection threads and
//! the sync thread (past it an event is dropped and its series backfilled
//! again), [`sync::HELD`] events held per series during a repair or a
//! backfill, one HTTP agent keeping at most two idle connections, and a 64
//! Ki-sample latency ring. Nothing is kept per connection, so reconnecting
//! does not grow memory.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::{Interval, SymbolName};
use serde::Serialize;

mod conn;
mod rest;
mod sync;

pub use conn::{MAX_CONNECTIONS, MAX_STREAMS, MAX_URL, OPENS_PER_WINDOW};
pub use rest::{DEFAULT_WEIGHT_PER_MINUTE, EXCHANGE_WEIGHT_LIMIT, KLINES_WEIGHT, Pause};
pub use sync::{SeriesNote, SeriesSummary};

use super::binance::BadLine;
use super::writer::{FeedCounters, FeedWriter};
use crate::instance::SharedStore;
use protocol::samples::Samples;

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
/// Latency samples kept for `status` and `bench feed`.
pub const LATENCY_SAMPLES: usize = 1 << 16;
/// Default bound of the events between the connection threads and the sync
/// thread: about 300,000 events, minutes of 2,000 busy streams.
pub const DEFAULT_QUEUED_BYTES: usize = 64 << 20;
/// How often a blocked read returns to check the stop flag and the timers.
const POLL: Duration = Duration::from_millis(50);

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
    /// Keep (open time, received instant) of the first [`LATENCY_SAMPLES`]
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

impl LiveOptions {
    /// Checks the options, saying which flag to fix.
    pub fn check(&self) -> Result<()> {
        if self.symbols.is_empty() {
            bail!("--feed binance needs --symbols, e.g. --symbols btcusdt,ethusdt");
        }
        let groups = self.groups().len();
        if groups > MAX_CONNECTIONS {
            bail!(
                "{} streams ({} symbols x {} intervals) need {groups} connections; at most {MAX_CONNECTIONS} are opened: pass fewer --symbols or --intervals",
                self.symbols.len() * self.intervals.len(),
                self.symbols.len(),
                self.intervals.len()
            );
        }
        if !(1..=EXCHANGE_WEIGHT_LIMIT).contains(&self.rest_weight_per_minute) {
            bail!(
                "--rest-weight-per-minute {}: must be 1 to {EXCHANGE_WEIGHT_LIMIT} (the exchange's limit per IP)",
                self.rest_weight_per_minute
            );
        }
        if self.max_queued_bytes < conn::EVENT_BYTES {
            bail!("the live event queue must hold at least one event");
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

    /// The connections the streams are split over.
    pub fn groups(&self) -> Vec<conn::Group> {
        let streams: Vec<conn::Stream> = self
            .symbols
            .iter()
            .flat_map(|s| self.intervals.iter().map(move |&i| (s.clone(), i)))
            .collect();
        conn::plan_groups(&self.ws_url, &streams)
    }
}

/// Shared counters: written by the feed thread, read by `status`.
#[derive(Debug, Default)]
pub struct LiveHealth {
    /// Connections open now.
    connected: AtomicU64,
    connections: AtomicU64,
    replacements: AtomicU64,
    shutdown_notices: AtomicU64,
    overflowed: AtomicU64,
    rate_limited: AtomicU64,
    bans: AtomicU64,
    server_errors: AtomicU64,
    used_weight: AtomicU64,
    peak_used_weight: AtomicU64,
    /// Until when (wall ms) and why REST was last paused.
    rest_pause: Mutex<Option<(u64, Pause)>>,
    missing_closes: AtomicU64,
    repaired_closes: AtomicU64,
    late_closes: AtomicU64,
    provisional_closes: AtomicU64,
    series: Mutex<SeriesSummary>,
    /// Why the feed could not start (an unknown symbol).
    fatal: Mutex<Option<String>>,
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
    planned: AtomicU64,
}

/// What `status` shows of a live feed.
#[derive(Debug, Clone, Serialize)]
pub struct LiveStatus {
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
    /// REST server errors and timeouts.
    pub server_errors: u64,
    /// The exchange's count of weight used this minute, last answer.
    pub used_weight: u64,
    /// The highest such count seen.
    pub peak_used_weight: u64,
    /// While REST is paused: for how much longer, ms, and why.
    pub rest_paused_ms: Option<u64>,
    /// Why REST is paused.
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
    /// newest `sync::HELD` per series are applied after it.
    pub deferred: u64,
    /// Candles written from REST.
    pub backfilled: u64,
    /// REST requests made (backfills, repairs, the symbol check).
    pub rest_requests: u64,
    /// Backfill requests that failed.
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
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now_ms = protocol::clock::now_ms() as u64;
        let pause = (*lock(&self.rest_pause)).filter(|(until, _)| *until > now_ms);
        LiveStatus {
            connected: g(&self.connected),
            connections_planned: self.planned.load(Ordering::Relaxed) as usize,
            connections: g(&self.connections),
            replacements: g(&self.replacements),
            shutdown_notices: g(&self.shutdown_notices),
            overflowed: g(&self.overflowed),
            rate_limited: g(&self.rate_limited),
            bans: g(&self.bans),
            server_errors: g(&self.server_errors),
            used_weight: g(&self.used_weight),
            peak_used_weight: g(&self.peak_used_weight),
            rest_paused_ms: pause.map(|(until, _)| until - now_ms),
            rest_pause: pause.map(|(_, why)| why.to_string()),
            missing_closes: g(&self.missing_closes),
            repaired_closes: g(&self.repaired_closes),
            late_closes: g(&self.late_closes),
            provisional_closes: g(&self.provisional_closes),
            series: lock(&self.series).clone(),
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

    /// Why the feed could not start, if it could not.
    pub fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    fn bad(&self, reason: &BadLine) {
        let n = self.bad_messages.fetch_add(1, Ordering::Relaxed) + 1;
        // Every one counted; the log is thinned past the first hundred.
        if n <= 100 || n.is_power_of_two() {
            tracing::warn!(%reason, bad_messages = n, "message skipped");
        }
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
        health
            .planned
            .store(opts.groups().len() as u64, Ordering::Relaxed);
        let (tls, rest_tls) = match &opts.ca_file {
            None => (None, ureq::tls::TlsConfig::default()),
            Some(path) => trust_only(path)?,
        };
        let rest = rest::Rest::new(&opts, rest_tls, Arc::clone(&health));
        let shared = Arc::new(conn::Shared {
            opts: opts.clone(),
            tls,
            stop: Arc::clone(&stop),
            health: Arc::clone(&health),
            opener: conn::Opener::new(opts.opens_per_window),
            queued: std::sync::atomic::AtomicUsize::new(0),
            overflowed: Mutex::new(std::collections::HashSet::new()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let seed = RandomState::new().hash_one(std::process::id());
        let sync = sync::Sync::new(
            opts,
            store,
            writer,
            rest,
            Arc::clone(&health),
            shared,
            rx,
            tx,
            seed,
        );
        let thread = std::thread::Builder::new()
            .name("live-feed".into())
            .spawn(move || sync.run())
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

    /// Whether the thread ended (it only does when stopped, when it could
    /// not start (see [`LiveHealth::fatal`]), or by a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the threads (they notice within [`POLL`]) and joins them.
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
