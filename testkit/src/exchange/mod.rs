//! A loopback stand-in for Binance, written from its spot API documentation:
//! a WebSocket server streaming kline events of a fixed candle timeline to
//! every connection by the streams its URL names, and a REST server
//! answering `/api/v3/klines` and `/api/v3/exchangeInfo` from the same
//! timeline under Binance's request-weight rules. The live-feed tests and
//! `bench feed` run against it; it binds 127.0.0.1 only.
//!
//! Connections follow a script of episodes (stream, close, drop, go silent,
//! send garbage, announce `serverShutdown`): each new connection takes the
//! next episode and, while it streams, every open connection receives the
//! events of its streams (`ws`). [`Behavior`] makes it as unkind as Binance
//! is: pings while streaming and a cut for a client that stops answering,
//! `x: true` dropped or sent late, 429 with `Retry-After` (and a 418 ban for
//! a client that keeps asking), 5xx now and then, weight headers, a 13th
//! column (`rest`).
//!
//! The timeline has a clock: the number of candles the "exchange" has
//! closed. Streaming a candle closes it; an episode's `skip` closes candles
//! while no client is connected, which only a REST backfill can recover.
//! Longer intervals (1h, ...) are built from the minutes (`start_intervals`).
//! The timeline lies in the past (2024); the REST answers' `Date` tells the
//! stand-in's time (half-way through the candle in progress), and their last
//! row is that candle, partial, as Binance's is.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use engine::locked::lock;
use protocol::{Candle, Interval, SymbolName};

mod rest;
mod ws;

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
    /// `serverShutdown`, then as `Idle` (events of other connections'
    /// episodes still delivered) for this long, then as `Drop`: what
    /// Binance does before maintenance.
    ShutdownNotice(Duration),
}

/// How unkind the stand-in is. The default is a well-behaved Binance:
/// pings every 20 s while streaming, 6,000 weight a minute, nothing dropped.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Ping a streaming connection this often.
    pub ping_every: Duration,
    /// Cut a connection whose last ping is unanswered for this long.
    pub pong_timeout: Duration,
    /// Leave out the `x: true` of every n-th 1m candle (0: never).
    pub drop_close_every: usize,
    /// Klines requests asking from a `startTime`, counted from 1: every
    /// n-th of them, m times, answered 429 with `Retry-After:
    /// retry_after_s` ((n, m); None: never). A client asks so for the one
    /// candle whose close it lacks: the pause lands on its repair while the
    /// stream goes on (losing more closes, with `drop_close_every`).
    pub repair_429: Option<(u64, u64)>,
    /// Send the `x: true` of every n-th 1m candle only after the next
    /// candle's first event (0: never).
    pub delay_close_every: usize,
    /// Request weight an IP may use per wall-clock minute; past it, 429.
    pub weight_limit: u32,
    /// Requests (numbered from 1, every path) answered 429 with
    /// `Retry-After: retry_after_s`: (first, how many).
    pub storm: Option<(u64, u64)>,
    /// `Retry-After` of a 429, seconds.
    pub retry_after_s: u64,
    /// Requests made while a `Retry-After` is running that get the IP
    /// banned (418) for `ban_s`.
    pub ban_after_violations: u64,
    /// Request number answered 418 outright.
    pub ban_at: Option<u64>,
    /// `Retry-After` of a 418, seconds.
    pub ban_s: u64,
    /// Every n-th request answered 503 (0: never).
    pub server_error_every: u64,
    /// Add a 13th column (and an object) to every REST row.
    pub extra_column: bool,
    /// Symbols `exchangeInfo` lists as halted (`BREAK`).
    pub halted: Vec<String>,
    /// Symbols `exchangeInfo` does not list (and klines refuses, -1121).
    pub unlisted: Vec<String>,
    /// Symbols `exchangeInfo` lists as trading but klines refuses (-1121):
    /// delisted between the check and the backfill.
    pub refused: Vec<String>,
    /// Every klines answer is this late (a slow exchange: the client's
    /// events pile up meanwhile).
    pub rest_delay: Duration,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            ping_every: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(60),
            drop_close_every: 0,
            repair_429: None,
            delay_close_every: 0,
            weight_limit: 6_000,
            storm: None,
            retry_after_s: 1,
            ban_after_violations: 2,
            ban_at: None,
            ban_s: 2,
            server_error_every: 0,
            extra_column: false,
            halted: Vec::new(),
            unlisted: Vec::new(),
            refused: Vec::new(),
            rest_delay: Duration::ZERO,
        }
    }
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
/// Connections served at once, at most (more are refused).
const MAX_SESSIONS: usize = 256;

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

/// What the REST server counts.
#[derive(Debug, Default)]
struct RestCounters {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    banned: AtomicU64,
    server_errors: AtomicU64,
    /// Requests that arrived while a `Retry-After` or a ban was running.
    violations: AtomicU64,
    peak_weight: AtomicU64,
    /// Klines requests asking from a `startTime` (repairs).
    from_requests: AtomicU64,
}

/// The `x: true` events the stand-in left out (`drop_close_every`).
#[derive(Debug, Default)]
struct DropCounters {
    all: AtomicU64,
    /// Of those, while a 429's `Retry-After` was running.
    in_pauses: AtomicU64,
    /// The most candles of a series left without one during one
    /// `Retry-After`.
    most_in_one_pause: AtomicU64,
}

/// The `x: true` events the stand-in left out so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedCloses {
    /// Every one (every 1m series loses the same candles' closes).
    pub all: u64,
    /// Of those, while a 429's `Retry-After` was running (REST paused for
    /// the client: no repair could end meanwhile).
    pub in_pauses: u64,
    /// The most candles of one series left without it during one
    /// `Retry-After`: past one, the client's repair of the first held the
    /// events of the others.
    pub most_in_one_pause: u64,
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// TLS for both servers, when given.
    tls: Option<Arc<rustls::ServerConfig>>,
    behavior: Behavior,
    state: Mutex<State>,
    sessions: Mutex<Vec<Arc<ws::Session>>>,
    connections: AtomicU64,
    pongs: AtomicU64,
    /// Connections cut for not answering pings.
    pong_timeouts: AtomicU64,
    rest: RestCounters,
    dropped: DropCounters,
    limits: Mutex<rest::Limits>,
    /// An episode is being streamed.
    streaming: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
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
        Self::start_with(series, history, script, None, &[], Behavior::default())
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
        Self::start_with(
            series,
            history,
            script,
            None,
            intervals,
            Behavior::default(),
        )
    }

    /// [`start`](Self::start) over TLS (`wss://localhost:PORT`,
    /// `https://localhost:PORT`) with `tls` (see [`crate::tls::tls_config`]).
    pub fn start_tls(
        series: Vec<(SymbolName, Vec<Candle>)>,
        history: usize,
        script: Vec<Episode>,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Self> {
        Self::start_with(series, history, script, Some(tls), &[], Behavior::default())
    }

    /// [`start`](Self::start), as unkind as `behavior` says.
    pub fn start_behaving(
        series: Vec<(SymbolName, Vec<Candle>)>,
        history: usize,
        script: Vec<Episode>,
        behavior: Behavior,
    ) -> Result<Self> {
        Self::start_with(series, history, script, None, &[], behavior)
    }

    fn start_with(
        series: Vec<(SymbolName, Vec<Candle>)>,
        history: usize,
        script: Vec<Episode>,
        tls: Option<Arc<rustls::ServerConfig>>,
        intervals: &[Interval],
        behavior: Behavior,
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
            behavior,
            state: Mutex::new(State {
                series,
                longer,
                rest_log: VecDeque::new(),
                clock: history.min(len),
                script: script.into(),
                sent: vec![None; len],
            }),
            sessions: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            pong_timeouts: AtomicU64::new(0),
            rest: RestCounters::default(),
            dropped: DropCounters::default(),
            limits: Mutex::new(rest::Limits::default()),
            streaming: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
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
                .spawn(move || accept_loop(&ws, &s1, ws::serve))?,
            std::thread::Builder::new()
                .name("mock-rest".into())
                .spawn(move || accept_loop(&rest, &s2, rest::serve))?,
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
        lock(&self.shared.state).clock
    }

    /// The closed part of every series.
    pub fn closed(&self) -> Vec<(SymbolName, Vec<Candle>)> {
        let st = lock(&self.shared.state);
        st.series
            .iter()
            .map(|(s, c)| (s.clone(), c[..st.clock.min(c.len())].to_vec()))
            .collect()
    }

    /// Whether every episode of the script was streamed to its end.
    pub fn script_done(&self) -> bool {
        let st = lock(&self.shared.state);
        st.script.is_empty() && !self.shared.streaming.load(Ordering::Acquire)
    }

    /// When candle `k`'s close was sent, if it was.
    pub fn sent_at(&self, k: usize) -> Option<Instant> {
        lock(&self.shared.state).sent.get(k).copied().flatten()
    }

    /// WebSocket connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// WebSocket connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.sessions).len()
    }

    /// Pongs received in answer to pings.
    pub fn pongs(&self) -> u64 {
        self.shared.pongs.load(Ordering::Relaxed)
    }

    /// Connections cut because a ping stayed unanswered.
    pub fn pong_timeouts(&self) -> u64 {
        self.shared.pong_timeouts.load(Ordering::Relaxed)
    }

    /// The targets of the last REST requests (at most 100,000), oldest first.
    pub fn rest_log(&self) -> Vec<String> {
        lock(&self.shared.state).rest_log.iter().cloned().collect()
    }

    /// REST requests received.
    pub fn rest_requests(&self) -> u64 {
        self.shared.rest.requests.load(Ordering::Relaxed)
    }

    /// REST answers: (429s, 418s, 5xx).
    pub fn rest_refusals(&self) -> (u64, u64, u64) {
        let r = &self.shared.rest;
        (
            r.rate_limited.load(Ordering::Relaxed),
            r.banned.load(Ordering::Relaxed),
            r.server_errors.load(Ordering::Relaxed),
        )
    }

    /// REST requests that arrived while a `Retry-After` or a ban was running
    /// (each would bring a real IP closer to a ban).
    pub fn violations(&self) -> u64 {
        self.shared.rest.violations.load(Ordering::Relaxed)
    }

    /// The `x: true` events left out so far, and how many of them during
    /// a 429's `Retry-After`.
    pub fn dropped_closes(&self) -> DroppedCloses {
        let d = &self.shared.dropped;
        DroppedCloses {
            all: d.all.load(Ordering::Relaxed),
            in_pauses: d.in_pauses.load(Ordering::Relaxed),
            most_in_one_pause: d.most_in_one_pause.load(Ordering::Relaxed),
        }
    }

    /// The most weight used in one minute.
    pub fn peak_weight(&self) -> u64 {
        self.shared.rest.peak_weight.load(Ordering::Relaxed)
    }

    /// Queues more episodes.
    pub fn push(&self, episodes: impl IntoIterator<Item = Episode>) {
        lock(&self.shared.state).script.extend(episodes);
    }

    /// Closes `n` candles now, streaming each (`updates` in-progress events,
    /// then the close) to every open connection, `pause` apart: the market
    /// moving while the test watches, whoever is connected.
    pub fn stream(&self, n: usize, updates: usize, pause: Duration) {
        let ep = Episode {
            skip: 0,
            stream: n,
            updates,
            pause,
            garbage: false,
            end: End::Idle,
        };
        ws::stream_candles::<std::net::TcpStream>(&self.shared, &ep, None);
    }
}

impl Drop for MockBinance {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let sessions = std::mem::take(&mut *lock(&self.shared.threads));
        for t in sessions {
            let _ = t.join();
        }
    }
}

/// Accepts until stopped, serving each connection on its own thread (at
/// most [`MAX_SESSIONS`] at once; finished ones are joined as it goes).
fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    serve: fn(std::net::TcpStream, &Shared),
) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let mut threads = lock(&shared.threads);
                let (done, running): (Vec<_>, Vec<_>) =
                    threads.drain(..).partition(JoinHandle::is_finished);
                *threads = running;
                for t in done {
                    let _ = t.join();
                }
                if threads.len() >= MAX_SESSIONS {
                    continue; // dropped: refused
                }
                let s = Arc::clone(shared);
                if let Ok(t) = std::thread::Builder::new()
                    .name("mock-session".into())
                    .spawn(move || serve(stream, &s))
                {
                    threads.push(t);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The complete `interval` candles of `minutes` (which start on a bucket
/// boundary).
fn buckets(minutes: &[Candle], interval: Interval) -> Vec<Candle> {
    let ratio = (interval.millis() / 60_000) as usize;
    minutes
        .chunks_exact(ratio)
        .filter_map(|m| {
            let at = engine::kline::bucket_start(m[0].open_time, interval);
            fold(m.iter().copied(), at)
        })
        .collect()
}

/// One candle opening at `open_time` of `minutes`: open of the first,
/// close of the last, extremes, summed volume; `None` if there are none.
fn fold(minutes: impl Iterator<Item = Candle>, open_time: i64) -> Option<Candle> {
    let c = minutes.reduce(|a, b| Candle {
        open_time: a.open_time,
        open: a.open,
        high: a.high.max(b.high),
        low: a.low.min(b.low),
        close: b.close,
        volume: a.volume + b.volume,
    })?;
    Some(Candle { open_time, ..c })
}

/// Candle `c` part of the way through (`done` of its volume traded): the
/// close still at the open, the extremes as far as they are.
fn partial(c: &Candle, done: f64) -> Candle {
    Candle {
        close: c.open,
        high: c.open.max(c.close),
        low: c.open.min(c.close),
        volume: c.volume * done,
        ..*c
    }
}

/// The stand-in's clock: half-way through the candle in progress (the
/// first series' candle `clock`), as its REST answers' `Date` says. The
/// last candle closed 30 s ago; the one in progress closes in 30 s.
fn timeline_now(st: &State) -> i64 {
    st.series
        .first()
        .map_or_else(protocol::clock::now_ms, |(_, c)| {
            let last = c.len().saturating_sub(1);
            let open = c.get(st.clock.min(last)).map_or(0, |c| c.open_time);
            open + 30_000 + if st.clock > last { 60_000 } else { 0 }
        })
}

/// A deterministic 1-minute timeline for `symbols`, `len` candles each,
/// starting at 2024-01-01 (so every candle is in the past: REST rows are final).
pub fn timeline(symbols: &[&str], len: usize) -> Result<Vec<(SymbolName, Vec<Candle>)>> {
    symbols
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let mut stream = engine::feed::synthetic::SymbolStream::new(42, k);
            Ok((
                SymbolName::new(s)?,
                (0..len).map(|_| stream.next_candle()).collect(),
            ))
        })
        .collect()
}
