//! The live feed's client: one connection after another, each backfilled
//! over REST before its buffered events are applied, with backoff between
//! them.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::store::SeriesId;
use protocol::{Interval, SymbolName};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message as WsMessage, WebSocket};

use super::super::binance::{self, BadLine, Message};
use super::super::writer::{Applied, FeedWriter, Refused};
use super::{
    DRAIN_BUDGET, LATENCY_SAMPLES, LiveHealth, LiveOptions, MAX_MESSAGE, MAX_QUEUED, MAX_REST_BODY,
    POLL, REST_PAGE, lock,
};
use crate::instance::SharedStore;
use protocol::samples::{Samples, saturate};
use protocol::splitmix::SplitMix64;

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// One connection: the WebSocket, a handle on its socket (for timeouts) and
/// its clocks.
struct Conn {
    ws: Ws,
    tcp: TcpStream,
    opened: Instant,
    last: Instant,
}

/// Which rows a REST page asks for.
#[derive(Debug, Clone, Copy)]
enum Page {
    /// Opening at or after this time, oldest first.
    From(i64),
    /// The newest ones opening at or before this time (none: the newest).
    Before(Option<i64>),
}

/// Weight of one `/api/v3/klines` request (any limit up to 1,000).
pub(super) const KLINES_WEIGHT: u32 = 2;
/// Request weight per minute this client allows itself: 40% of the 6,000
/// Binance gives an IP, so a backfill never gets it banned and leaves room
/// for whatever else shares the address.
pub(super) const REST_WEIGHT_PER_MINUTE: u32 = 2_400;

/// A token bucket of request weight: full at start (a burst of 1,200
/// requests), then refilled at [`REST_WEIGHT_PER_MINUTE`] per minute.
#[derive(Debug)]
pub(super) struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            tokens: f64::from(REST_WEIGHT_PER_MINUTE),
            at: now,
        }
    }

    /// Takes `weight` if the bucket holds it (None); else how long until it will.
    pub(super) fn take(&mut self, weight: u32, now: Instant) -> Option<Duration> {
        let per_second = f64::from(REST_WEIGHT_PER_MINUTE) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(f64::from(REST_WEIGHT_PER_MINUTE));
        self.at = now;
        let weight = f64::from(weight);
        if self.tokens >= weight {
            self.tokens -= weight;
            None
        } else {
            Some(Duration::from_secs_f64((weight - self.tokens) / per_second))
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    Stopped,
    Silent,
    Aged,
    Closed,
    /// The server announced its shutdown (`serverShutdown`): connect again
    /// at once.
    ShutdownNotice,
    Failed(String),
}

pub(super) struct Client {
    /// With `--ca-file`: the WebSocket's TLS configuration.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) opts: LiveOptions,
    pub(super) store: SharedStore,
    pub(super) writer: FeedWriter<SeriesId>,
    pub(super) subscribed: HashSet<SymbolName>,
    pub(super) agent: ureq::Agent,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) health: Arc<LiveHealth>,
    /// Reconnect jitter.
    pub(super) rng: SplitMix64,
    /// REST request weight left.
    pub(super) budget: Budget,
    /// The current connection received `serverShutdown`.
    pub(super) shutdown_notice: bool,
}

impl Client {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub(super) fn run(&mut self) {
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
                Ended::Aged | Ended::ShutdownNotice => {
                    if matches!(ended, Ended::Aged) {
                        tracing::info!(
                            "connection reached --max-connection-age: reconnecting before the exchange cuts it"
                        );
                    } else {
                        tracing::info!("the server announced its shutdown: reconnecting now");
                    }
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
            let jittered = delay.mul_f64(0.5 + 0.5 * self.rng.unit());
            tracing::info!(delay_ms = jittered.as_millis() as u64, "reconnecting");
            let until = Instant::now() + jittered;
            while !self.stopped() && Instant::now() < until {
                std::thread::sleep((until - Instant::now()).min(POLL));
            }
            delay = (delay * 2).min(self.opts.reconnect_max);
        }
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
            if std::mem::take(&mut self.shutdown_notice) {
                return Ended::ShutdownNotice;
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
            Ok(Message::ServerShutdown) => {
                self.shutdown_notice = true;
                return;
            }
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
                let want = self
                    .opts
                    .backfill
                    .get(&interval)
                    .copied()
                    .unwrap_or(REST_PAGE);
                match self.writer.latest(symbol, interval).map(|(t, _)| t) {
                    None => self.fill_fresh(conn, queue, symbol, interval, want)?,
                    Some(latest) => self.fill_since(conn, queue, symbol, interval, latest, want)?,
                }
                filled.insert((symbol.clone(), interval));
            }
        }
        self.drain(conn, queue)
    }

    /// A series with nothing stored: its newest `want` candles, newest page
    /// first (`endTime` paging: the exchange's clock decides what is
    /// newest, not ours), written oldest first once all are in.
    fn fill_fresh(
        &mut self,
        conn: &mut Conn,
        queue: &mut Vec<WsMessage>,
        symbol: &SymbolName,
        interval: Interval,
        want: usize,
    ) -> Result<(), Ended> {
        let mut pages: Vec<Vec<binance::Kline>> = Vec::new();
        let mut have = 0;
        let mut end = None;
        while have < want {
            let limit = (want - have).min(REST_PAGE);
            let rows = self.fetch_paced(conn, queue, symbol, interval, Page::Before(end), limit)?;
            let (n, oldest) = (rows.len(), rows.first().map(|k| k.candle.open_time));
            have += n;
            pages.push(rows);
            match oldest {
                Some(t) if n >= limit => end = Some(t - 1),
                _ => break, // the exchange has no older candle
            }
        }
        for rows in pages.iter().rev() {
            self.write_rows(symbol, interval, rows)?;
        }
        Ok(())
    }

    /// A series with candles stored: what closed since its latest one, page
    /// by page, at most a ring's worth (a longer outage leaves a gap, which
    /// the writer reports).
    fn fill_since(
        &mut self,
        conn: &mut Conn,
        queue: &mut Vec<WsMessage>,
        symbol: &SymbolName,
        interval: Interval,
        latest: i64,
        want: usize,
    ) -> Result<(), Ended> {
        let len = interval.millis() as i64;
        let mut start = latest;
        for _ in 0..want.div_ceil(REST_PAGE) + 1 {
            let rows =
                self.fetch_paced(conn, queue, symbol, interval, Page::From(start), REST_PAGE)?;
            self.write_rows(symbol, interval, &rows)?;
            match rows.last() {
                // A full page: there may be more after its newest row.
                Some(k) if rows.len() >= REST_PAGE => start = k.candle.open_time + len,
                _ => break,
            }
        }
        Ok(())
    }

    /// One REST page, once the weight budget allows it (the socket is
    /// drained while waiting: pings answered, events queued).
    fn fetch_paced(
        &mut self,
        conn: &mut Conn,
        queue: &mut Vec<WsMessage>,
        symbol: &SymbolName,
        interval: Interval,
        page: Page,
        limit: usize,
    ) -> Result<Vec<binance::Kline>, Ended> {
        self.drain(conn, queue)?;
        while let Some(wait) = self.budget.take(KLINES_WEIGHT, Instant::now()) {
            std::thread::sleep(wait.min(DRAIN_BUDGET));
            self.drain(conn, queue)?;
        }
        self.health.rest_requests.fetch_add(1, Ordering::Relaxed);
        self.fetch(symbol, interval, page, limit).map_err(|e| {
            self.health
                .backfill_failures
                .fetch_add(1, Ordering::Relaxed);
            Ended::Failed(format!("backfill: {e:#}"))
        })
    }

    /// Writes one page's rows and publishes them.
    fn write_rows(
        &mut self,
        symbol: &SymbolName,
        interval: Interval,
        rows: &[binance::Kline],
    ) -> Result<(), Ended> {
        let mut store = self.store.lock();
        let mut written = 0;
        for kline in rows {
            match self.writer.apply(&mut *store, kline) {
                Ok(Applied::Written) => written += 1,
                Ok(Applied::Repeat) | Err(Refused::Bad(BadLine::Stale { .. })) => {}
                Err(e) => {
                    return Err(Ended::Failed(format!(
                        "backfill of {symbol} {interval}: {e}"
                    )));
                }
            }
        }
        if written > 0 {
            store.publish();
        }
        drop(store);
        self.health.backfilled.fetch_add(written, Ordering::Relaxed);
        *lock(&self.health.counters) = self.writer.counters();
        Ok(())
    }

    fn fetch(
        &self,
        symbol: &SymbolName,
        interval: Interval,
        page: Page,
        limit: usize,
    ) -> Result<Vec<binance::Kline>> {
        let url = format!("{}/api/v3/klines", self.opts.rest_url.trim_end_matches('/'));
        let mut req = self
            .agent
            .get(&url)
            .query("symbol", symbol.as_str())
            .query("interval", interval.as_str())
            .query("limit", limit.to_string());
        match page {
            Page::From(t) => req = req.query("startTime", t.to_string()),
            Page::Before(Some(t)) => req = req.query("endTime", t.to_string()),
            Page::Before(None) => {}
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
