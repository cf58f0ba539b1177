//! The live feed's connections: its streams split into groups that fit
//! Binance's limits, one thread per group keeping one WebSocket open,
//! parsing what arrives and passing it to the sync thread.
//!
//! Why a thread per connection: each keeps answering pings and reading
//! while the sync thread waits on REST (a backfill paced by the weight
//! budget takes minutes at 2,000 series), and a replacement (the 24 h cut,
//! `serverShutdown`) opens the new connection before closing the old one,
//! so the series see no gap and need no backfill.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] groups; each connection's message at
//! most [`MAX_MESSAGE`]; the events between these threads and the sync
//! thread at most `max_queued_bytes` (an event past it is dropped and its
//! series marked for a backfill, which brings it back); at most
//! [`OPENS_PER_WINDOW`] connections opened per [`OPEN_WINDOW`].

use std::collections::{HashSet, VecDeque};
use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::{Interval, SymbolName};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message as WsMessage, WebSocket};

use super::super::binance::{self, Message};
use super::health::LiveHealth;
use super::options::{LiveOptions, MAX_MESSAGE, POLL};
use crate::kline::{BadLine, Kline};
use crate::locked::lock;
use protocol::splitmix::SplitMix64;

/// Streams on one connection, Binance's limit.
pub const MAX_STREAMS: usize = 1024;
/// Longest combined-stream URL: Binance's handshake fails past about 8,000
/// characters (measured by python-binance's maintainer), well under 1,024
/// kline streams.
pub const MAX_URL: usize = 6_000;
/// Connections one feed keeps (64 x ~350 streams: more series than any
/// store this engine maps).
pub const MAX_CONNECTIONS: usize = 64;
/// Binance allows 300 connection openings per 5 minutes per IP (the
/// default of `--max-connection-opens`).
pub const OPENS_PER_WINDOW: usize = 300;
/// The window of the openings limit.
pub const OPEN_WINDOW: Duration = Duration::from_secs(300);
/// What one queued event is counted as (the event and the channel's node).
pub const EVENT_BYTES: usize = std::mem::size_of::<Event>() + 64;

/// Each connection's WebSocket read buffer.
const READ_BUFFER: usize = 16 << 10;

/// A series: (symbol, interval).
pub type Stream = (SymbolName, Interval);

/// What a connection thread tells the sync thread.
#[derive(Debug)]
pub enum Event {
    /// A connection of `group` is open: every event after this came through
    /// it. Unless it overlapped the one it replaced, the group's series
    /// missed what happened while none was open and need a backfill.
    Opened {
        /// The group.
        group: usize,
        /// It replaced a live connection that was closed only after.
        overlap: bool,
    },
    /// A kline event, and when it arrived.
    Kline(Box<Kline>, Instant),
}

/// One connection's streams and URL.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its index.
    pub index: usize,
    /// Its streams.
    pub streams: Vec<Stream>,
    /// Its combined-stream URL.
    pub url: String,
}

fn stream_name((symbol, interval): &Stream) -> String {
    format!(
        "{}@kline_{}",
        symbol.as_str().to_ascii_lowercase(),
        interval
    )
}

/// Splits `streams` into connections of at most [`MAX_STREAMS`] streams
/// and [`MAX_URL`] characters.
pub fn plan_groups(ws_url: &str, streams: &[Stream]) -> Vec<Group> {
    let base = format!("{}/stream?streams=", ws_url.trim_end_matches('/'));
    let mut groups: Vec<Group> = Vec::new();
    let mut current: Vec<Stream> = Vec::new();
    let mut url = base.clone();
    let flush = |current: &mut Vec<Stream>, url: &mut String, groups: &mut Vec<Group>| {
        if !current.is_empty() {
            groups.push(Group {
                index: groups.len(),
                streams: std::mem::take(current),
                url: std::mem::replace(url, base.clone()),
            });
        }
    };
    for s in streams {
        let name = stream_name(s);
        let grows = name.len() + usize::from(!current.is_empty());
        if current.len() == MAX_STREAMS || url.len() + grows > MAX_URL {
            flush(&mut current, &mut url, &mut groups);
        }
        if !current.is_empty() {
            url.push('/');
        }
        url.push_str(&name);
        current.push(s.clone());
    }
    flush(&mut current, &mut url, &mut groups);
    groups
}

/// Connection openings of the last [`OPEN_WINDOW`], shared by the groups
/// (at most `limit` kept).
#[derive(Debug)]
pub struct Opener {
    limit: usize,
    opened: Mutex<VecDeque<Instant>>,
}

impl Opener {
    /// At most `limit` openings per [`OPEN_WINDOW`].
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            opened: Mutex::new(VecDeque::new()),
        }
    }

    /// Records an opening now, or says how long until one is allowed.
    fn admit(&self, now: Instant) -> Option<Duration> {
        let mut q = lock(&self.opened);
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= OPEN_WINDOW)
        {
            q.pop_front();
        }
        if q.len() >= self.limit {
            return q.front().map(|t| OPEN_WINDOW - now.duration_since(*t));
        }
        q.push_back(now);
        None
    }
}

/// What every connection thread shares.
pub struct Shared {
    pub opts: LiveOptions,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub stop: Arc<AtomicBool>,
    pub health: Arc<LiveHealth>,
    pub opener: Opener,
    /// Bytes of events sent and not yet taken by the sync thread.
    pub queued: AtomicUsize,
    /// Series whose events were dropped at the queue's bound.
    pub overflowed: Mutex<HashSet<Stream>>,
}

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// One open connection: the WebSocket, a handle on its socket (for
/// timeouts) and its clocks.
struct Conn {
    ws: Ws,
    tcp: TcpStream,
    opened: Instant,
    last: Instant,
    /// A kline arrived on it (the reconnect delay starts over only then:
    /// a server that accepts and pings but sends nothing is not healthy).
    data: bool,
    /// It announced `serverShutdown`.
    shutdown: bool,
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    Stopped,
    Silent,
    Closed,
    Failed(String),
    /// It could not be opened (name not resolved, refused, handshake failed).
    NotOpened(String),
}

/// One group's thread.
pub struct Worker {
    pub group: Group,
    pub shared: Arc<Shared>,
    pub tx: Sender<Event>,
    pub rng: SplitMix64,
    subscribed: HashSet<Stream>,
}

impl Worker {
    /// A thread's state for `group`.
    pub fn new(group: Group, shared: Arc<Shared>, tx: Sender<Event>, seed: u64) -> Self {
        let subscribed = group.streams.iter().cloned().collect();
        Self {
            group,
            shared,
            tx,
            rng: SplitMix64::new(seed),
            subscribed,
        }
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    fn send(&self, event: Event) {
        // The sync thread ends only after every connection thread: a closed
        // channel means it is stopping too.
        let _ = self.tx.send(event);
    }

    /// Connections one after another until stopped, with capped backoff and
    /// jitter between them.
    pub fn run(mut self) {
        let opts = self.shared.opts.clone();
        let mut delay = opts.reconnect_min;
        let mut first = true;
        while !self.stopped() {
            if !first {
                self.shared
                    .health
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let (ended, data) = match self.open() {
                Ok(mut conn) => {
                    self.send(Event::Opened {
                        group: self.group.index,
                        overlap: false,
                    });
                    let ended = self.serve(&mut conn);
                    // Best effort: the peer may be gone already.
                    let _ = conn.ws.close(None);
                    let _ = conn.ws.flush();
                    self.shared.health.connected.fetch_sub(1, Ordering::Relaxed);
                    (ended, conn.data)
                }
                Err(e) => {
                    let e = format!("connect: {e:#}");
                    self.shared.health.connect_failed("WebSocket", &e);
                    (Ended::NotOpened(e), false)
                }
            };
            if data {
                delay = opts.reconnect_min;
            }
            let jittered = delay.mul_f64(0.5 + 0.5 * self.rng.unit());
            match &ended {
                Ended::Stopped => break,
                Ended::Silent => tracing::warn!(
                    group = self.group.index,
                    timeout_ms = opts.silence_timeout.as_millis() as u64,
                    "connection silent past the timeout: treating it as dead"
                ),
                Ended::Closed => {
                    tracing::warn!(group = self.group.index, "connection closed by the server");
                }
                Ended::Failed(e) => {
                    tracing::warn!(group = self.group.index, error = %e, "connection failed");
                    self.shared.health.error(e.clone());
                }
                Ended::NotOpened(e) => {
                    let health = &self.shared.health;
                    let retry_ms = jittered.as_millis() as u64;
                    // Said plainly while nothing ever came: a wrong
                    // --endpoint or no route to the exchange is not an
                    // outage of a feed that worked.
                    if health.connections.load(Ordering::Relaxed) == 0 {
                        tracing::warn!(group = self.group.index, error = %e, retry_ms,
                            "the live feed has never connected: its connection could not be opened (retrying)");
                    } else {
                        tracing::warn!(group = self.group.index, error = %e, retry_ms,
                            "connection could not be opened (retrying)");
                    }
                    health.error(e.clone());
                }
            }
            self.sleep(jittered);
            delay = (delay * 2).min(opts.reconnect_max);
        }
    }

    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep((until - Instant::now()).min(POLL));
        }
    }

    /// Opens a connection once the opening limit allows it.
    fn open(&self) -> Result<Conn> {
        while let Some(wait) = self.shared.opener.admit(Instant::now()) {
            tracing::warn!(
                wait_ms = wait.as_millis() as u64,
                "{} connections opened in {}s: waiting (--max-connection-opens, Binance's limit)",
                self.shared.opts.opens_per_window,
                OPEN_WINDOW.as_secs()
            );
            self.sleep(wait.min(Duration::from_secs(1)));
            if self.stopped() {
                anyhow::bail!("stopped");
            }
        }
        let conn = connect(&self.group.url, self.shared.tls.as_ref())?;
        let health = &self.shared.health;
        health.connections.fetch_add(1, Ordering::Relaxed);
        health.connected.fetch_add(1, Ordering::Relaxed);
        health.touch();
        Ok(conn)
    }

    /// Reads `conn` until it ends; replaces it (new one first) when it ages
    /// out or the server announces its shutdown.
    fn serve(&mut self, conn: &mut Conn) -> Ended {
        let opts = &self.shared.opts;
        let mut replace_after = opts.max_connection_age;
        loop {
            if self.stopped() {
                return Ended::Stopped;
            }
            if conn.last.elapsed() > opts.silence_timeout {
                return Ended::Silent;
            }
            let aged = conn.opened.elapsed() > replace_after;
            if aged || std::mem::take(&mut conn.shutdown) {
                if aged {
                    tracing::info!(
                        group = self.group.index,
                        "connection reached --max-connection-age: opening its replacement before the exchange cuts it"
                    );
                } else {
                    tracing::info!(
                        group = self.group.index,
                        "the server announced its shutdown: opening a new connection now"
                    );
                    self.shared
                        .health
                        .shutdown_notices
                        .fetch_add(1, Ordering::Relaxed);
                }
                match self.open() {
                    Ok(new) => {
                        // Whatever the old one still holds arrived before
                        // the new one's first event: pass it on first.
                        let _ = conn.tcp.set_read_timeout(Some(Duration::from_millis(1)));
                        while let Ok(Some((msg, at))) = receive(conn, &self.shared.health) {
                            self.on_message(conn, &msg, at);
                        }
                        let _ = conn.ws.close(None);
                        let _ = conn.ws.flush();
                        self.shared.health.connected.fetch_sub(1, Ordering::Relaxed);
                        self.shared
                            .health
                            .replacements
                            .fetch_add(1, Ordering::Relaxed);
                        let data = conn.data;
                        *conn = new;
                        conn.data = data;
                        replace_after = opts.max_connection_age;
                        self.send(Event::Opened {
                            group: self.group.index,
                            overlap: true,
                        });
                    }
                    Err(e) => {
                        // Keep the old one while it lasts; try again soon.
                        tracing::warn!(group = self.group.index, error = %format!("{e:#}"),
                            "could not open the replacement connection: keeping the current one");
                        replace_after = conn.opened.elapsed() + opts.reconnect_min;
                    }
                }
                continue;
            }
            match receive(conn, &self.shared.health) {
                Ok(Some((msg, at))) => self.on_message(conn, &msg, at),
                Ok(None) => {}
                Err(ended) => return ended,
            }
        }
    }

    fn on_message(&self, conn: &mut Conn, msg: &WsMessage, received: Instant) {
        let text = match msg {
            WsMessage::Text(t) => t.as_str(),
            WsMessage::Binary(b) => match std::str::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    return self
                        .shared
                        .health
                        .bad(&BadLine::Json("a binary message that is not UTF-8".into()));
                }
            },
            _ => return,
        };
        let kline = match binance::parse_ws(text) {
            Ok(Message::Kline(k)) => k,
            Ok(Message::Other) => return,
            Ok(Message::ServerShutdown) => {
                conn.shutdown = true;
                return;
            }
            Err(e) => return self.shared.health.bad(&e),
        };
        let stream = (kline.symbol.clone(), kline.interval);
        if !self.subscribed.contains(&stream) {
            return self.shared.health.bad(&BadLine::Json(format!(
                "{} {} is not a stream of this connection",
                kline.symbol, kline.interval
            )));
        }
        conn.data = true;
        let max = self.shared.opts.max_queued_bytes;
        let queued = self.shared.queued.fetch_add(EVENT_BYTES, Ordering::AcqRel);
        if queued + EVENT_BYTES > max {
            self.shared.queued.fetch_sub(EVENT_BYTES, Ordering::AcqRel);
            let n = self
                .shared
                .health
                .overflowed
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    max_queued_bytes = max,
                    overflowed = n,
                    "events arrive faster than they are written: dropped, their series backfilled again"
                );
            }
            lock(&self.shared.overflowed).insert(stream);
            return;
        }
        self.send(Event::Kline(Box::new(kline), received));
    }
}

/// One read: a data message with when it arrived, or nothing within the
/// socket's read timeout. Control frames are handled here (tungstenite
/// queues the pong for a ping; a read that times out pushes it out).
fn receive(conn: &mut Conn, health: &LiveHealth) -> Result<Option<(WsMessage, Instant)>, Ended> {
    match conn.ws.read() {
        Ok(msg) => {
            let received = Instant::now();
            conn.last = received;
            health.touch();
            health.messages.fetch_add(1, Ordering::Relaxed);
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

/// Opens the WebSocket of `url`: every address of its host in turn (the
/// first may be unreachable), TLS if `wss`, short reads afterwards so the
/// thread sees the stop flag and its timers.
fn connect(url: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Conn> {
    let request = url.into_client_request().context("building the request")?;
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
    // A kline event is ~400 bytes: a 16 KiB read buffer (not the default
    // 128 KiB, which glibc serves by mmap, then from a heap it fragments
    // over thousands of reconnects).
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let connector = tls.map(|c| tungstenite::Connector::Rustls(Arc::clone(c)));
    let (ws, _) = tungstenite::client_tls_with_config(request, tcp, Some(config), connector)
        .map_err(|e| anyhow::anyhow!("WebSocket handshake with {host}: {e}"))?;
    handle.set_read_timeout(Some(POLL))?;
    tracing::info!(streams = url.matches("@kline_").count(), host = %host, "connected");
    let now = Instant::now();
    Ok(Conn {
        ws,
        tcp: handle,
        opened: now,
        last: now,
        data: false,
        shutdown: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(n: usize) -> Vec<Stream> {
        (0..n)
            .map(|k| {
                (
                    SymbolName::new(&format!("SYM{k}USDT")).expect("valid"),
                    Interval::M1,
                )
            })
            .collect()
    }

    #[test]
    fn groups_hold_every_stream_once_within_count_and_url_length() {
        for n in [1, 10, 300, 1_024, 2_000, 12_000] {
            let all = streams(n);
            let groups = plan_groups("wss://stream.binance.com:9443", &all);
            let flat: Vec<Stream> = groups.iter().flat_map(|g| g.streams.clone()).collect();
            assert_eq!(flat, all, "{n}: every stream once, in order");
            for g in &groups {
                assert!(g.streams.len() <= MAX_STREAMS);
                assert!(g.url.len() <= MAX_URL, "{}", g.url.len());
                assert_eq!(g.url.matches("@kline_").count(), g.streams.len());
            }
            // Packed: only the last group may have room for another stream.
            for g in &groups[..groups.len() - 1] {
                assert!(g.url.len() + "sym9999usdt@kline_1m/".len() > MAX_URL);
            }
        }
        let g = plan_groups("ws://h:1/", &streams(2));
        assert_eq!(
            g[0].url,
            "ws://h:1/stream?streams=sym0usdt@kline_1m/sym1usdt@kline_1m"
        );
    }

    #[test]
    fn openings_are_limited_per_window() {
        let o = Opener::new(OPENS_PER_WINDOW);
        let t0 = Instant::now();
        for k in 0..OPENS_PER_WINDOW {
            assert_eq!(o.admit(t0 + Duration::from_millis(k as u64)), None);
        }
        let wait = o
            .admit(t0 + Duration::from_secs(1))
            .expect("the 301st waits");
        assert_eq!(wait, OPEN_WINDOW - Duration::from_secs(1));
        assert_eq!(o.admit(t0 + OPEN_WINDOW), None, "the first left the window");
    }
}
