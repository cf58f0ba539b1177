//! A loopback stand-in for Binance: a WebSocket server streaming kline
//! events of a fixed candle timeline by a script of connection episodes
//! (stream, close, drop, go silent, send garbage), and a REST server answering
//! `/api/v3/klines` from the same timeline. The live-feed tests and `bench
//! feed` run against it; it binds 127.0.0.1 only.
//!
//! Longer intervals (1h, ...) are built from the minutes, bucket by bucket,
//! when the server is asked for them (`start_intervals`): their closes are
//! streamed with the minute that completes them, and REST serves them with
//! `startTime` and `endTime` paging as Binance does. Every REST request's
//! target is logged (`rest_log`).
//!
//! The timeline has a clock: the number of candles the "exchange" has closed.
//! Streaming a candle closes it; an episode's `skip` closes candles while
//! no client is connected, which only a REST backfill can recover. REST
//! answers closed candles only (Binance's last row, the candle in progress,
//! is left out so that every row is final, whatever the wall clock says).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::{Candle, Interval, SymbolName};
use tungstenite::{Message, WebSocket};

use super::binance::{RowFormat, format_row};

/// How one client connection is served.
#[derive(Debug, Clone)]
pub struct Episode {
    /// Candles closed before this connection streams (missed by the client).
    pub skip: usize,
    /// Candles streamed (each: `updates` in-progress events, then the close).
    pub stream: usize,
    /// In-progress events per candle before its close.
    pub updates: usize,
    /// Pause between candles.
    pub pause: Duration,
    /// Send a non-JSON text, a binary non-UTF-8 and a non-kline JSON message
    /// halfway through.
    pub garbage: bool,
    /// How the connection ends.
    pub end: End,
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A close frame.
    Close,
    /// The TCP connection is cut without a close frame.
    Drop,
    /// Nothing more is sent (no pings either) until the client leaves.
    Silent,
    /// Pings every 100 ms, nothing else, until the client leaves.
    Idle,
    /// As `Idle` for this long, then as `Drop`.
    IdleFor(Duration),
}

/// A series of a longer interval, built from the minutes.
#[derive(Debug)]
struct Longer {
    interval: Interval,
    /// Minutes per candle.
    ratio: usize,
    series: Vec<(SymbolName, Vec<Candle>)>,
}

/// REST request targets kept, at most (the oldest go first).
const REST_LOG: usize = 100_000;

#[derive(Debug)]
struct State {
    series: Vec<(SymbolName, Vec<Candle>)>,
    longer: Vec<Longer>,
    rest_log: VecDeque<String>,
    clock: usize,
    script: VecDeque<Episode>,
    /// When each candle's close was sent (bench), by candle index.
    sent: Vec<Option<Instant>>,
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// TLS for both servers, when given.
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Mutex<State>,
    connections: AtomicU64,
    pongs: AtomicU64,
    rest_requests: AtomicU64,
    /// An episode is being streamed.
    streaming: AtomicBool,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The two servers; stopped and joined on drop.
#[derive(Debug)]
pub struct MockBinance {
    /// `ws://127.0.0.1:PORT`.
    pub ws_url: String,
    /// `http://127.0.0.1:PORT`.
    pub rest_url: String,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl MockBinance {
    /// Serves `series` (1-minute candles, every series as long as the first),
    /// `history` of them already closed, connections by `script` (then Idle).
    pub fn start(
        series: Vec<(SymbolName, Vec<Candle>)>,
        history: usize,
        script: Vec<Episode>,
    ) -> Result<Self> {
        Self::start_with(series, history, script, None, &[])
    }

    /// [`start`](Self::start), also serving `intervals` longer than a
    /// minute, built from the minutes (the series must start on a bucket
    /// boundary of each, as 2024-01-01 does).
    pub fn start_intervals(
        series: Vec<(SymbolName, Vec<Candle>)>,
        history: usize,
        script: Vec<Episode>,
        intervals: &[Interval],
    ) -> Result<Self> {
        Self::start_with(series, history, script, None, intervals)
    }

    /// [`start`](Self::start) over TLS (`wss://localhost:PORT`,
    /// `https://localhost:PORT`) with `tls` (see [`tls_config`]).
    pub fn start_tls(
        series: Vec<(SymbolName, Vec<Candle>)>,
        history: usize,
        script: Vec<Episode>,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Self> {
        Self::start_with(series, history, script, Some(tls), &[])
    }

    fn start_with(
        series: Vec<(SymbolName, Vec<Candle>)>,
        history: usize,
        script: Vec<Episode>,
        tls: Option<Arc<rustls::ServerConfig>>,
        intervals: &[Interval],
    ) -> Result<Self> {
        let len = series.first().map_or(0, |s| s.1.len());
        let longer = intervals
            .iter()
            .filter(|&&i| i != Interval::M1)
            .map(|&interval| Longer {
                interval,
                ratio: (interval.millis() / 60_000) as usize,
                series: series
                    .iter()
                    .map(|(s, minutes)| (s.clone(), buckets(minutes, interval)))
                    .collect(),
            })
            .collect();
        let secure = tls.is_some();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            tls,
            state: Mutex::new(State {
                series,
                longer,
                rest_log: VecDeque::new(),
                clock: history.min(len),
                script: script.into(),
                sent: vec![None; len],
            }),
            connections: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            rest_requests: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
        });
        let ws = TcpListener::bind("127.0.0.1:0").context("binding the mock WebSocket server")?;
        let rest = TcpListener::bind("127.0.0.1:0").context("binding the mock REST server")?;
        ws.set_nonblocking(true)?;
        rest.set_nonblocking(true)?;
        // Over TLS the URLs name the host of the test certificate.
        let (ws_url, rest_url) = if secure {
            (
                format!("wss://localhost:{}", ws.local_addr()?.port()),
                format!("https://localhost:{}", rest.local_addr()?.port()),
            )
        } else {
            (
                format!("ws://{}", ws.local_addr()?),
                format!("http://{}", rest.local_addr()?),
            )
        };
        let s1 = Arc::clone(&shared);
        let s2 = Arc::clone(&shared);
        let threads = vec![
            std::thread::Builder::new()
                .name("mock-ws".into())
                .spawn(move || accept_loop(&ws, &s1, serve_ws))?,
            std::thread::Builder::new()
                .name("mock-rest".into())
                .spawn(move || accept_loop(&rest, &s2, serve_rest))?,
        ];
        Ok(Self {
            ws_url,
            rest_url,
            shared,
            threads,
        })
    }

    /// Candles closed so far.
    pub fn clock(&self) -> usize {
        lock(&self.shared).clock
    }

    /// The closed part of every series.
    pub fn closed(&self) -> Vec<(SymbolName, Vec<Candle>)> {
        let st = lock(&self.shared);
        st.series
            .iter()
            .map(|(s, c)| (s.clone(), c[..st.clock.min(c.len())].to_vec()))
            .collect()
    }

    /// Whether every episode of the script was streamed to its end.
    pub fn script_done(&self) -> bool {
        let st = lock(&self.shared);
        st.script.is_empty() && !self.shared.streaming.load(Ordering::Acquire)
    }

    /// When candle `k`'s close was sent, if it was.
    pub fn sent_at(&self, k: usize) -> Option<Instant> {
        lock(&self.shared).sent.get(k).copied().flatten()
    }

    /// WebSocket connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Pongs received in answer to the idle pings.
    pub fn pongs(&self) -> u64 {
        self.shared.pongs.load(Ordering::Relaxed)
    }

    /// The targets of the last REST requests (at most 100,000), oldest first.
    pub fn rest_log(&self) -> Vec<String> {
        lock(&self.shared).rest_log.iter().cloned().collect()
    }

    /// REST requests answered.
    pub fn rest_requests(&self) -> u64 {
        self.shared.rest_requests.load(Ordering::Relaxed)
    }

    /// Queues more episodes.
    pub fn push(&self, episodes: impl IntoIterator<Item = Episode>) {
        lock(&self.shared).script.extend(episodes);
    }
}

impl Drop for MockBinance {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, serve: fn(TcpStream, &Shared)) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                serve(stream, shared);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn event(symbol: &SymbolName, c: &Candle, closed: bool, event_time: i64) -> String {
    interval_event(symbol, Interval::M1, c, closed, event_time)
}

fn interval_event(
    symbol: &SymbolName,
    interval: Interval,
    c: &Candle,
    closed: bool,
    event_time: i64,
) -> String {
    format!(
        r#"{{"stream":"{lower}@kline_{interval}","data":{{"e":"kline","E":{event_time},"s":"{symbol}","k":{{"t":{t},"T":{tt},"s":"{symbol}","i":"{interval}","f":1,"L":2,"o":"{o}","c":"{c}","h":"{h}","l":"{l}","v":"{v}","n":10,"x":{closed},"q":"0","V":"0","Q":"0","B":"0"}}}}}}"#,
        lower = symbol.as_str().to_ascii_lowercase(),
        t = c.open_time,
        tt = c.open_time + interval.millis() as i64 - 1,
        o = c.open,
        c = c.close,
        h = c.high,
        l = c.low,
        v = c.volume,
    )
}

fn serve_ws(stream: TcpStream, shared: &Shared) {
    let Ok(tcp) = stream.try_clone() else { return };
    // The handshake (TLS and WebSocket) gets a patient read timeout; the
    // session's reads are short again so the script keeps its pace.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    match &shared.tls {
        None => ws_session(tcp, stream, shared),
        Some(cfg) => {
            if let Ok(conn) = rustls::ServerConnection::new(Arc::clone(cfg)) {
                ws_session(tcp, rustls::StreamOwned::new(conn, stream), shared);
            }
        }
    }
}

fn ws_session<S: Read + Write>(tcp: TcpStream, stream: S, shared: &Shared) {
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(20)));
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let episode = {
        let mut st = lock(shared);
        let ep = st.script.pop_front();
        // Under the lock, so `script_done` never sees the episode in neither place.
        shared.streaming.store(ep.is_some(), Ordering::Release);
        ep
    };
    // Clears `streaming` however the streaming below ends.
    let streaming = StreamingFlag(&shared.streaming);
    let Some(ep) = episode else {
        linger(&mut ws, shared, true, None);
        return;
    };
    {
        let mut st = lock(shared);
        let len = st.series.first().map_or(0, |s| s.1.len());
        st.clock = (st.clock + ep.skip).min(len);
    }
    for n in 0..ep.stream {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        if ep.garbage && n == ep.stream / 2 {
            let _ = ws.send(Message::text("this is not JSON"));
            let _ = ws.send(Message::binary(vec![0xff, 0xfe, 0x00]));
            let _ = ws.send(Message::text(r#"{"result":null,"id":1}"#));
        }
        let (messages, k) = {
            let st = lock(shared);
            let k = st.clock;
            if st.series.first().is_none_or(|s| k >= s.1.len()) {
                break;
            }
            let mut messages = Vec::new();
            for (symbol, candles) in &st.series {
                let c = candles[k];
                for u in 0..ep.updates {
                    // Partial values: the close drifts, the volume grows.
                    let part = Candle {
                        close: c.open,
                        high: c.open.max(c.close),
                        low: c.open.min(c.close),
                        volume: c.volume * (u + 1) as f64 / (ep.updates + 1) as f64,
                        ..c
                    };
                    messages.push(event(symbol, &part, false, c.open_time + 1 + u as i64));
                }
                messages.push(event(symbol, &c, true, c.open_time + 60_000));
            }
            // The minute that completes a longer candle closes it too.
            for longer in &st.longer {
                if (k + 1).is_multiple_of(longer.ratio) {
                    for (symbol, candles) in &longer.series {
                        if let Some(c) = candles.get((k + 1) / longer.ratio - 1) {
                            let at = c.open_time + longer.interval.millis() as i64;
                            messages.push(interval_event(symbol, longer.interval, c, true, at));
                        }
                    }
                }
            }
            (messages, k)
        };
        let last = messages.len() - 1;
        for (m, text) in messages.into_iter().enumerate() {
            if m == last {
                let mut st = lock(shared);
                st.sent[k] = Some(Instant::now());
            }
            if ws.send(Message::text(text)).is_err() {
                return;
            }
        }
        lock(shared).clock = k + 1;
        // Drain the client's frames (pongs) without blocking the stream.
        if !ep.pause.is_zero() {
            std::thread::sleep(ep.pause);
        }
    }
    drop(streaming);
    match ep.end {
        End::Close => {
            let _ = ws.close(None);
            let _ = ws.flush();
            linger(&mut ws, shared, false, None);
        }
        End::Drop => {
            let _ = tcp.shutdown(Shutdown::Both);
        }
        End::Silent => linger(&mut ws, shared, false, None),
        End::Idle => linger(&mut ws, shared, true, None),
        End::IdleFor(d) => {
            linger(&mut ws, shared, true, Some(Instant::now() + d));
            let _ = tcp.shutdown(Shutdown::Both);
        }
    }
}

struct StreamingFlag<'a>(&'a AtomicBool);

impl Drop for StreamingFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Waits until the client leaves, the mock stops or `until`, pinging if `ping`.
fn linger<S: Read + Write>(
    ws: &mut WebSocket<S>,
    shared: &Shared,
    ping: bool,
    until: Option<Instant>,
) {
    let mut last_ping = Instant::now();
    while !shared.stop.load(Ordering::Acquire) && until.is_none_or(|u| Instant::now() < u) {
        if ping && last_ping.elapsed() >= Duration::from_millis(100) {
            last_ping = Instant::now();
            if ws.send(Message::Ping(vec![1, 2, 3].into())).is_err() {
                return;
            }
        }
        match ws.read() {
            Ok(Message::Pong(_)) => {
                shared.pongs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// One HTTP/1.1 request, one answer, then the connection is closed.
fn serve_rest(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok(tcp) = stream.try_clone() else { return };
    match &shared.tls {
        None => rest_session(stream, shared),
        Some(cfg) => {
            if let Ok(conn) = rustls::ServerConnection::new(Arc::clone(cfg)) {
                let mut tls = rustls::StreamOwned::new(conn, stream);
                rest_session(&mut tls, shared);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    }
    let _ = tcp.shutdown(Shutdown::Write);
}

fn rest_session(mut stream: impl Read + Write, shared: &Shared) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    shared.rest_requests.fetch_add(1, Ordering::Relaxed);
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = klines(target, shared);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.flush();
}

fn klines(target: &str, shared: &Shared) -> (&'static str, String) {
    let Some(query) = target.strip_prefix("/api/v3/klines?") else {
        return ("404 Not Found", r#"{"code":-1,"msg":"not found"}"#.into());
    };
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    };
    let mut st = lock(shared);
    if st.rest_log.len() == REST_LOG {
        st.rest_log.pop_front();
    }
    st.rest_log.push_back(target.to_owned());
    let interval = param("interval").and_then(|i| i.parse::<Interval>().ok());
    let (series, closed) = match interval {
        Some(Interval::M1) => (&st.series, st.clock),
        Some(i) => match st.longer.iter().find(|l| l.interval == i) {
            Some(l) => (&l.series, st.clock / l.ratio),
            None => return invalid_interval(),
        },
        None => return invalid_interval(),
    };
    let limit = param("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(500)
        .clamp(1, 1000);
    let start = param("startTime").and_then(|v| v.parse::<i64>().ok());
    let end = param("endTime").and_then(|v| v.parse::<i64>().ok());
    let Some((_, candles)) = series
        .iter()
        .find(|(s, _)| Some(s.as_str()) == param("symbol"))
    else {
        return (
            "400 Bad Request",
            r#"{"code":-1121,"msg":"Invalid symbol."}"#.into(),
        );
    };
    let closed = &candles[..closed.min(candles.len())];
    let rows: Vec<&Candle> = match (start, end) {
        (Some(t), _) => closed
            .iter()
            .filter(|c| c.open_time >= t && end.is_none_or(|e| c.open_time <= e))
            .take(limit)
            .collect(),
        (None, end) => {
            let upto = closed.partition_point(|c| end.is_none_or(|e| c.open_time <= e));
            closed[upto.saturating_sub(limit)..upto].iter().collect()
        }
    };
    let body: Vec<String> = rows
        .iter()
        .map(|c| format_row(c, interval.unwrap_or(Interval::M1), RowFormat::Rest))
        .collect();
    ("200 OK", format!("[{}]", body.join(",")))
}

fn invalid_interval() -> (&'static str, String) {
    (
        "400 Bad Request",
        r#"{"code":-1120,"msg":"Invalid interval."}"#.into(),
    )
}

/// The complete `interval` candles of `minutes` (which start on a bucket
/// boundary): open of the first minute, close of the last, extremes, summed
/// volume.
fn buckets(minutes: &[Candle], interval: Interval) -> Vec<Candle> {
    let ratio = (interval.millis() / 60_000) as usize;
    minutes
        .chunks_exact(ratio)
        .map(|m| Candle {
            open_time: super::binance::bucket_start(m[0].open_time, interval),
            open: m[0].open,
            high: m.iter().map(|c| c.high).fold(f64::MIN, f64::max),
            low: m.iter().map(|c| c.low).fold(f64::MAX, f64::min),
            close: m[ratio - 1].close,
            volume: m.iter().map(|c| c.volume).sum(),
        })
        .collect()
}

/// A TLS server configuration from PEM files: a certificate chain and its
/// private key (the tests' are in `tests/fixtures/tls/`).
pub fn tls_config(
    cert_chain: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert_chain)
        .with_context(|| format!("reading {}", cert_chain.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_chain.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not form a server identity")?;
    Ok(Arc::new(config))
}

/// `candles` as the 7-column CSV of a Binance dump (what a backtest of the
/// server's candle set replays).
pub fn dump_csv(candles: &[Candle]) -> String {
    candles
        .iter()
        .map(|c| format_row(c, Interval::M1, RowFormat::Dump7) + "\n")
        .collect()
}

/// A deterministic 1-minute timeline for `symbols`, `len` candles each,
/// starting at 2024-01-01 (so every candle is in the past: REST rows are final).
pub fn timeline(symbols: &[&str], len: usize) -> Result<Vec<(SymbolName, Vec<Candle>)>> {
    symbols
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let mut stream = super::synthetic::SymbolStream::new(42, k);
            Ok((
                SymbolName::new(s)?,
                (0..len).map(|_| stream.next_candle()).collect(),
            ))
        })
        .collect()
}
