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

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::store::SeriesId;
use protocol::{Interval, SymbolName};
use serde::Serialize;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message as WsMessage, WebSocket};

use super::binance::{self, BadLine, Message};
use super::writer::{Applied, FeedCounters, FeedWriter, Refused};
use crate::instance::SharedStore;
use protocol::samples::{Samples, saturate};

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
    pub backfill: usize,
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
            rng: RandomState::new().hash_one(std::process::id()),
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

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// One connection: the WebSocket, a handle on its socket (for timeouts) and
/// its clocks.
struct Conn {
    ws: Ws,
    tcp: TcpStream,
    opened: Instant,
    last: Instant,
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    Stopped,
    Silent,
    Aged,
    Closed,
    Failed(String),
}

struct Client {
    /// With `--ca-file`: the WebSocket's TLS configuration.
    tls: Option<Arc<rustls::ClientConfig>>,
    opts: LiveOptions,
    store: SharedStore,
    writer: FeedWriter<SeriesId>,
    subscribed: HashSet<SymbolName>,
    agent: ureq::Agent,
    stop: Arc<AtomicBool>,
    health: Arc<LiveHealth>,
    rng: u64,
}

impl Client {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn run(&mut self) {
        let mut delay = self.opts.reconnect_min;
        let mut first = true;
        while !self.stopped() {
            if !first {
                self.health.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let before = self.health.messages.load(Ordering::Relaxed);
            let ended = match self.connect() {
                Ok(mut conn) => {
                    self.health.connections.fetch_add(1, Ordering::Relaxed);
                    self.health.connected.store(true, Ordering::Relaxed);
                    self.health.touch();
                    let ended = match self.backfill(&mut conn) {
                        Ok(()) => self.read_loop(&mut conn),
                        Err(ended) => ended,
                    };
                    // Best effort: the peer may be gone already.
                    let _ = conn.ws.close(None);
                    let _ = conn.ws.flush();
                    self.health.connected.store(false, Ordering::Relaxed);
                    ended
                }
                Err(e) => Ended::Failed(format!("connect: {e:#}")),
            };
            match &ended {
                Ended::Stopped => break,
                Ended::Aged => {
                    tracing::info!(
                        "connection reached --max-connection-age: reconnecting before the exchange cuts it"
                    );
                    delay = self.opts.reconnect_min;
                    continue;
                }
                Ended::Silent => tracing::warn!(
                    timeout_ms = self.opts.silence_timeout.as_millis() as u64,
                    "connection silent past the timeout: treating it as dead"
                ),
                Ended::Closed => tracing::warn!("connection closed by the server"),
                Ended::Failed(e) => {
                    tracing::warn!(error = %e, "connection failed");
                    self.health.error(e.clone());
                }
            }
            if self.health.messages.load(Ordering::Relaxed) > before {
                delay = self.opts.reconnect_min;
            }
            // Jitter: somewhere in [delay/2, delay], so many clients do not
            // reconnect in lockstep.
            let jittered = delay.mul_f64(0.5 + 0.5 * self.unit());
            tracing::info!(delay_ms = jittered.as_millis() as u64, "reconnecting");
            let until = Instant::now() + jittered;
            while !self.stopped() && Instant::now() < until {
                std::thread::sleep((until - Instant::now()).min(POLL));
            }
            delay = (delay * 2).min(self.opts.reconnect_max);
        }
    }

    fn unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn connect(&self) -> Result<Conn> {
        let url = self.opts.stream_url();
        let request = url
            .as_str()
            .into_client_request()
            .context("building the request")?;
        let uri = request.uri();
        let host = uri
            .host()
            .context("the WebSocket URL has no host")?
            .to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("wss") {
                443
            } else {
                80
            });
        // Every address in turn: the first may be unreachable (an IPv6
        // address without a route, one host of several down).
        let mut last_error = None;
        let mut tcp = None;
        for addr in (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
        {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(t) => {
                    tcp = Some(t);
                    break;
                }
                Err(e) => last_error = Some(format!("{addr}: {e}")),
            }
        }
        let tcp = tcp.with_context(|| {
            format!(
                "connecting to {host}:{port}: {}",
                last_error.unwrap_or_else(|| "no address".into())
            )
        })?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let handle = tcp.try_clone()?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let connector = self
            .tls
            .as_ref()
            .map(|c| tungstenite::Connector::Rustls(Arc::clone(c)));
        let (ws, _) = tungstenite::client_tls_with_config(request, tcp, Some(config), connector)
            .map_err(|e| anyhow::anyhow!("WebSocket handshake with {host}: {e}"))?;
        // Short reads from now on, so the loop sees the stop flag and timers.
        handle.set_read_timeout(Some(POLL))?;
        tracing::info!(url = %url, "connected");
        let now = Instant::now();
        Ok(Conn {
            ws,
            tcp: handle,
            opened: now,
            last: now,
        })
    }

    /// Whether the connection must end now (stop, silence, age).
    fn check_timers(&self, conn: &Conn) -> Result<(), Ended> {
        if self.stopped() {
            Err(Ended::Stopped)
        } else if conn.last.elapsed() > self.opts.silence_timeout {
            Err(Ended::Silent)
        } else if conn.opened.elapsed() > self.opts.max_connection_age {
            Err(Ended::Aged)
        } else {
            Ok(())
        }
    }

    /// One read: a data message with when it arrived, or nothing within the
    /// socket's read timeout. Control frames are handled here (tungstenite
    /// queues the pong for a ping; a read that times out pushes it out).
    fn receive(&self, conn: &mut Conn) -> Result<Option<(WsMessage, Instant)>, Ended> {
        match conn.ws.read() {
            Ok(msg) => {
                let received = Instant::now();
                conn.last = received;
                self.health.touch();
                self.health.messages.fetch_add(1, Ordering::Relaxed);
                match msg {
                    WsMessage::Text(_) | WsMessage::Binary(_) => Ok(Some((msg, received))),
                    WsMessage::Close(_) => Err(Ended::Closed),
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(None),
                }
            }
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                match conn.ws.flush() {
                    Ok(()) => Ok(None),
                    Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(Ended::Failed(e.to_string())),
                }
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Err(Ended::Closed)
            }
            Err(e) => Err(Ended::Failed(e.to_string())),
        }
    }

    /// Writes a data message; `received` is `None` for one queued during a
    /// backfill (its latency would measure the backfill, not the path).
    fn handle(
        &mut self,
        msg: &WsMessage,
        received: Option<Instant>,
        filled: Option<&HashSet<(SymbolName, Interval)>>,
    ) {
        match msg {
            WsMessage::Text(text) => self.on_text(text.as_str(), received, filled),
            WsMessage::Binary(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => self.on_text(text, received, filled),
                Err(_) => self.bad(&BadLine::Json("a binary message that is not UTF-8".into())),
            },
            _ => {}
        }
    }

    fn read_loop(&mut self, conn: &mut Conn) -> Ended {
        loop {
            if let Err(ended) = self.check_timers(conn) {
                return ended;
            }
            match self.receive(conn) {
                Ok(Some((msg, received))) => self.handle(&msg, Some(received), None),
                Ok(None) => {}
                Err(ended) => return ended,
            }
        }
    }

    /// Reads what the socket holds, for at most [`DRAIN_BUDGET`], so pings
    /// are answered while a backfill runs; data messages are queued for
    /// after it. (Without the budget, a busy stream would be read to its end
    /// here and never reach the live path.)
    fn drain(&self, conn: &mut Conn, queue: &mut Vec<WsMessage>) -> Result<(), Ended> {
        let until = Instant::now() + DRAIN_BUDGET;
        let fail = |e: std::io::Error| Ended::Failed(format!("socket: {e}"));
        conn.tcp
            .set_read_timeout(Some(Duration::from_millis(1)))
            .map_err(fail)?;
        let result = loop {
            if let Err(ended) = self.check_timers(conn) {
                break Err(ended);
            }
            if Instant::now() >= until {
                break Ok(());
            }
            match self.receive(conn) {
                Ok(Some((msg, _))) if queue.len() < MAX_QUEUED => queue.push(msg),
                Ok(Some(_)) => {
                    break Err(Ended::Failed(format!(
                        "more than {MAX_QUEUED} messages arrived during the backfill"
                    )));
                }
                Ok(None) => break Ok(()),
                Err(ended) => break Err(ended),
            }
        };
        conn.tcp.set_read_timeout(Some(POLL)).map_err(fail)?;
        result
    }

    fn bad(&self, reason: &BadLine) {
        let n = self.health.bad_messages.fetch_add(1, Ordering::Relaxed) + 1;
        // Every one counted; the log is thinned past the first hundred.
        if n <= 100 || n.is_power_of_two() {
            tracing::warn!(%reason, bad_messages = n, "message skipped");
        }
    }

    /// Parses and writes one message. `filled`: during a backfill that did
    /// not finish, the series that were filled; an event for another one is
    /// left out (writing it would bury its gap under a newer candle; the
    /// next connection's backfill brings both).
    fn on_text(
        &mut self,
        text: &str,
        received: Option<Instant>,
        filled: Option<&HashSet<(SymbolName, Interval)>>,
    ) {
        let kline = match binance::parse_ws(text) {
            Ok(Message::Kline(k)) => k,
            Ok(Message::Other) => return,
            Err(e) => return self.bad(&e),
        };
        if !self.subscribed.contains(&kline.symbol)
            || !self.opts.intervals.contains(&kline.interval)
        {
            return self.bad(&BadLine::Json(format!(
                "{} {} is not a subscribed stream",
                kline.symbol, kline.interval
            )));
        }
        if let Some(filled) = filled
            && !filled.contains(&(kline.symbol.clone(), kline.interval))
        {
            self.health.deferred.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut store = self.store.lock();
        match self.writer.apply(&mut *store, &kline) {
            Ok(Applied::Written) => {
                store.publish();
                drop(store);
                if let Some(received) = received {
                    lock(&self.health.latency)
                        .get_or_insert_with(|| Samples::new(LATENCY_SAMPLES))
                        .push(saturate(received.elapsed().as_nanos()));
                    if self.opts.trace {
                        let mut r = lock(&self.health.receipts);
                        if r.len() < LATENCY_SAMPLES {
                            r.push((kline.candle.open_time, received));
                        }
                    }
                }
                *lock(&self.health.counters) = self.writer.counters();
            }
            Ok(Applied::Repeat) => {}
            Err(Refused::Bad(BadLine::Stale { .. })) => {
                self.health.stale.fetch_add(1, Ordering::Relaxed);
            }
            Err(Refused::Bad(e)) => {
                drop(store);
                self.bad(&e);
            }
            Err(Refused::Store(e)) => {
                drop(store);
                self.bad(&BadLine::Json(e.to_string()));
            }
        }
    }

    /// Fetches, for every series, what the exchange closed since the stored
    /// latest candle (at start: the last `backfill` candles), page by page,
    /// and writes it, one publish per page. Between pages the socket is
    /// drained (pings answered, events queued); the queued events are
    /// applied once every series is filled.
    fn backfill(&mut self, conn: &mut Conn) -> Result<(), Ended> {
        let mut queue = Vec::new();
        let mut filled = HashSet::new();
        let result = self.fill(conn, &mut queue, &mut filled);
        // Events that arrived meanwhile are applied even if the connection
        // ended (they are data), but after a failed backfill only for the
        // series it filled.
        let only = result.is_err().then_some(&filled);
        for msg in queue {
            self.handle(&msg, None, only);
        }
        result
    }

    fn fill(
        &mut self,
        conn: &mut Conn,
        queue: &mut Vec<WsMessage>,
        filled: &mut HashSet<(SymbolName, Interval)>,
    ) -> Result<(), Ended> {
        let symbols = self.opts.symbols.clone();
        let intervals = self.opts.intervals.clone();
        for symbol in &symbols {
            for &interval in &intervals {
                let len = interval.millis() as i64;
                let mut start = self.writer.latest(symbol, interval).map(|(t, _)| t);
                // Never more pages than a ring can hold, plus one.
                let pages = self.opts.backfill.div_ceil(REST_PAGE) + 1;
                for _ in 0..pages {
                    self.drain(conn, queue)?;
                    let limit = match start {
                        Some(_) => REST_PAGE,
                        None => self.opts.backfill.clamp(1, REST_PAGE),
                    };
                    let rows = match self.fetch(symbol, interval, start, limit) {
                        Ok(rows) => rows,
                        Err(e) => {
                            self.health
                                .backfill_failures
                                .fetch_add(1, Ordering::Relaxed);
                            return Err(Ended::Failed(format!("backfill: {e:#}")));
                        }
                    };
                    let mut store = self.store.lock();
                    let mut written = 0;
                    let mut newest = None;
                    for kline in &rows {
                        match self.writer.apply(&mut *store, kline) {
                            Ok(Applied::Written) => written += 1,
                            Ok(Applied::Repeat) | Err(Refused::Bad(BadLine::Stale { .. })) => {}
                            Err(e) => {
                                return Err(Ended::Failed(format!(
                                    "backfill of {symbol} {interval}: {e}"
                                )));
                            }
                        }
                        newest = newest.max(Some(kline.candle.open_time));
                    }
                    if written > 0 {
                        store.publish();
                    }
                    drop(store);
                    self.health.backfilled.fetch_add(written, Ordering::Relaxed);
                    *lock(&self.health.counters) = self.writer.counters();
                    match newest {
                        // A full page: there may be more after its newest row.
                        Some(t) if rows.len() >= limit && start.is_some() => {
                            start = Some(t + len);
                        }
                        _ => break,
                    }
                }
                filled.insert((symbol.clone(), interval));
            }
        }
        self.drain(conn, queue)
    }

    fn fetch(
        &self,
        symbol: &SymbolName,
        interval: Interval,
        start: Option<i64>,
        limit: usize,
    ) -> Result<Vec<binance::Kline>> {
        let url = format!("{}/api/v3/klines", self.opts.rest_url.trim_end_matches('/'));
        let mut req = self
            .agent
            .get(&url)
            .query("symbol", symbol.as_str())
            .query("interval", interval.as_str())
            .query("limit", limit.to_string());
        if let Some(t) = start {
            req = req.query("startTime", t.to_string());
        }
        let mut resp = req.call().with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_REST_BODY)
            .read_to_string()
            .with_context(|| format!("reading the answer of GET {url}"))?;
        if !status.is_success() {
            bail!(
                "GET {url} ({symbol} {interval}): HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            );
        }
        let (rows, bad) = binance::parse_rest(&body, symbol, interval, protocol::clock::now_ms())
            .map_err(|e| anyhow::anyhow!("GET {url} ({symbol} {interval}): {e}"))?;
        for e in &bad {
            self.bad(e);
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LiveOptions {
        LiveOptions {
            symbols: vec![
                SymbolName::new("BTCUSDT").expect("valid"),
                SymbolName::new("ETHUSDT").expect("valid"),
            ],
            intervals: vec![Interval::M1, Interval::M5],
            ws_url: BINANCE_WS.into(),
            rest_url: BINANCE_REST.into(),
            silence_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(23 * 3600),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            backfill: 1000,
            ca_file: None,
            trace: false,
        }
    }

    #[test]
    fn the_stream_url_names_every_symbol_and_interval() {
        assert_eq!(
            opts().stream_url(),
            "wss://stream.binance.com:9443/stream?streams=btcusdt@kline_1m/btcusdt@kline_5m/ethusdt@kline_1m/ethusdt@kline_5m"
        );
    }

    #[test]
    fn bad_options_name_the_flag() {
        let mut o = opts();
        o.symbols.clear();
        assert!(
            o.check()
                .expect_err("no symbols")
                .to_string()
                .contains("--symbols")
        );
        let mut o = opts();
        o.ws_url = "http://x".into();
        assert!(
            o.check()
                .expect_err("scheme")
                .to_string()
                .contains("--endpoint")
        );
        let mut o = opts();
        o.symbols = (0..600)
            .map(|k| SymbolName::new(&format!("S{k}")).expect("valid"))
            .collect();
        assert!(
            o.check()
                .expect_err("too many")
                .to_string()
                .contains("1024")
        );
        assert!(opts().check().is_ok());
    }
}
