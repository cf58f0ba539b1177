//! The stand-in's WebSocket side: every connection on its own thread,
//! subscribed to the streams its URL names (`/stream?streams=a/b`, all
//! when it names none). A connection that takes an episode streams it:
//! each candle's events go to every open connection of those streams (its
//! own written at once, the others' through their outboxes).

use std::collections::{HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::locked::lock;
use protocol::{Candle, Interval, SymbolName};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket};

use super::{End, Episode, Shared};

/// Messages waiting for one connection, at most; past it the connection
/// is cut (Binance drops a client that does not keep up).
const OUTBOX: usize = 1 << 17;
/// Idle connections (no episode, or one ended `Idle`) are pinged this often.
const IDLE_PING: Duration = Duration::from_millis(100);

/// One open connection, as the others' episodes see it.
#[derive(Debug)]
pub(super) struct Session {
    /// Stream names (`btcusdt@kline_1m`) it subscribed; empty: all.
    streams: HashSet<String>,
    outbox: Mutex<VecDeque<String>>,
    /// Its outbox overflowed: to be cut.
    overflowed: AtomicBool,
}

impl Session {
    fn wants(&self, stream: &str) -> bool {
        self.streams.is_empty() || self.streams.contains(stream)
    }

    fn post(&self, text: &str) {
        let mut q = lock(&self.outbox);
        if q.len() >= OUTBOX {
            self.overflowed.store(true, Ordering::Release);
        } else {
            q.push_back(text.to_owned());
        }
    }
}

/// Removes a session from the registry however its thread ends.
struct Registered<'a>(&'a Shared, Arc<Session>);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.0.sessions).retain(|s| !Arc::ptr_eq(s, &self.1));
    }
}

/// Clears the `streaming` flag however the streaming ends.
struct StreamingFlag<'a>(&'a AtomicBool);

impl Drop for StreamingFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub(super) fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(tcp) = stream.try_clone() else { return };
    // The handshake (TLS and WebSocket) gets a patient read timeout; the
    // session's reads are short again.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    match &shared.tls {
        None => session(tcp, stream, shared),
        Some(cfg) => {
            if let Ok(conn) = rustls::ServerConnection::new(Arc::clone(cfg)) {
                session(tcp, rustls::StreamOwned::new(conn, stream), shared);
            }
        }
    }
}

fn session<S: Read + Write>(tcp: TcpStream, stream: S, shared: &Shared) {
    let mut path = String::new();
    // tungstenite's callback signature: its error type is its own.
    #[allow(clippy::result_large_err)]
    let Ok(mut ws) = tungstenite::accept_hdr(stream, |req: &Request, resp: Response| {
        path = req.uri().to_string();
        Ok(resp)
    }) else {
        return;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(2)));
    let streams = path
        .split_once("streams=")
        .map(|(_, s)| s.split('/').map(str::to_owned).collect())
        .unwrap_or_default();
    let me = Arc::new(Session {
        streams,
        outbox: Mutex::new(VecDeque::new()),
        overflowed: AtomicBool::new(false),
    });
    lock(&shared.sessions).push(Arc::clone(&me));
    let _registered = Registered(shared, Arc::clone(&me));
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let episode = {
        let mut st = lock(&shared.state);
        let ep = st.script.pop_front();
        // Under the lock, so `script_done` never sees the episode in neither place.
        shared.streaming.store(ep.is_some(), Ordering::Release);
        ep
    };
    let Some(ep) = episode else {
        linger(&mut ws, &me, shared, true, None);
        return;
    };
    let streaming = StreamingFlag(&shared.streaming);
    {
        let mut st = lock(&shared.state);
        let len = st.series.first().map_or(0, |s| s.1.len());
        st.clock = (st.clock + ep.skip).min(len);
    }
    if !stream_candles(shared, &ep, Some((&mut ws, &me))) {
        return;
    }
    drop(streaming);
    match ep.end {
        End::Close => {
            let _ = ws.close(None);
            let _ = ws.flush();
            linger(&mut ws, &me, shared, false, None);
        }
        End::Drop => {
            let _ = tcp.shutdown(Shutdown::Both);
        }
        End::Silent => linger(&mut ws, &me, shared, false, None),
        End::Idle => linger(&mut ws, &me, shared, true, None),
        End::IdleFor(d) => {
            linger(&mut ws, &me, shared, true, Some(Instant::now() + d));
            let _ = tcp.shutdown(Shutdown::Both);
        }
        End::ShutdownNotice(d) => {
            let at = protocol::clock::now_ms();
            let notice = format!(r#"{{"event":{{"e":"serverShutdown","E":{at}}}}}"#);
            if ws.send(Message::text(notice)).is_ok() {
                linger(&mut ws, &me, shared, true, Some(Instant::now() + d));
            }
            let _ = tcp.shutdown(Shutdown::Both);
        }
    }
}

/// Pings and pong deadlines of one connection.
struct Pinger {
    every: Duration,
    timeout: Duration,
    last_ping: Instant,
    /// Sent and not answered yet.
    waiting: Option<Instant>,
}

impl Pinger {
    fn new(every: Duration, timeout: Duration) -> Self {
        Self {
            every,
            timeout,
            last_ping: Instant::now(),
            waiting: None,
        }
    }

    /// Pings if due, reads what the client sent; false: cut the connection
    /// (gone, or silent past the pong timeout).
    fn tend<S: Read + Write>(
        &mut self,
        ws: &mut WebSocket<S>,
        shared: &Shared,
        read: bool,
    ) -> bool {
        if self.last_ping.elapsed() >= self.every {
            self.last_ping = Instant::now();
            self.waiting.get_or_insert(self.last_ping);
            if ws.send(Message::Ping(vec![1, 2, 3].into())).is_err() {
                return false;
            }
        }
        if read || self.waiting.is_some() {
            match ws.read() {
                Ok(Message::Pong(_)) => {
                    shared.pongs.fetch_add(1, Ordering::Relaxed);
                    self.waiting = None;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return false,
            }
        }
        if self.waiting.is_some_and(|t| t.elapsed() > self.timeout) {
            shared.pong_timeouts.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Waits until the client leaves, the stand-in stops or `until`: passes on
/// other connections' events (unless silent) and pings if `ping`.
fn linger<S: Read + Write>(
    ws: &mut WebSocket<S>,
    me: &Session,
    shared: &Shared,
    ping: bool,
    until: Option<Instant>,
) {
    let every = if ping { IDLE_PING } else { Duration::MAX };
    let mut pinger = Pinger::new(every, shared.behavior.pong_timeout);
    while !shared.stop.load(Ordering::Acquire) && until.is_none_or(|u| Instant::now() < u) {
        if me.overflowed.load(Ordering::Acquire) {
            return;
        }
        if ping {
            let out: Vec<String> = lock(&me.outbox).drain(..).collect();
            for text in out {
                if ws.send(Message::text(text)).is_err() {
                    return;
                }
            }
        }
        if !pinger.tend(ws, shared, true) {
            return;
        }
    }
}

fn event(
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

fn stream_name(symbol: &SymbolName, interval: Interval) -> String {
    format!("{}@kline_{interval}", symbol.as_str().to_ascii_lowercase())
}

/// One message of a candle: its stream, text, and whether it is the
/// candle's last (its send time is recorded for `bench feed`).
type Outgoing = (String, String, bool);

/// Streams `ep.stream` candles from the clock on, `ep.pause` apart, to every
/// connection subscribed (`own`, when streaming for a connection, written
/// directly). False: `own` is gone.
pub(super) fn stream_candles<S: Read + Write>(
    shared: &Shared,
    ep: &Episode,
    mut own: Option<(&mut WebSocket<S>, &Arc<Session>)>,
) -> bool {
    let b = &shared.behavior;
    let mut pinger = Pinger::new(b.ping_every, b.pong_timeout);
    // Closes held back to be sent after the next candle's first event.
    let mut late: Vec<Outgoing> = Vec::new();
    for n in 0..ep.stream {
        if shared.stop.load(Ordering::Acquire) {
            return false;
        }
        if let Some((ws, _)) = own.as_mut() {
            if ep.garbage && n == ep.stream / 2 {
                let _ = ws.send(Message::text("this is not JSON"));
                let _ = ws.send(Message::binary(vec![0xff, 0xfe, 0x00]));
                let _ = ws.send(Message::text(r#"{"result":null,"id":1}"#));
            }
            if !pinger.tend(ws, shared, false) {
                return false;
            }
        }
        let Some((messages, k)) = candle_messages(shared, ep.updates, &mut late) else {
            break;
        };
        for (stream, text, last) in &messages {
            if *last {
                lock(&shared.state).sent[k] = Some(Instant::now());
            }
            if let Some((ws, me)) = own.as_mut()
                && me.wants(stream)
                && ws.send(Message::text(text.as_str())).is_err()
            {
                return false;
            }
            for s in lock(&shared.sessions).iter() {
                if own.as_ref().is_none_or(|(_, me)| !Arc::ptr_eq(me, s)) && s.wants(stream) {
                    s.post(text);
                }
            }
        }
        lock(&shared.state).clock = k + 1;
        if !ep.pause.is_zero() {
            std::thread::sleep(ep.pause);
        }
    }
    // A close held back past the episode's last candle still goes out.
    for (stream, text, _) in late {
        if let Some((ws, me)) = own.as_mut()
            && me.wants(&stream)
        {
            let _ = ws.send(Message::text(text.as_str()));
        }
        for s in lock(&shared.sessions).iter() {
            if own.as_ref().is_none_or(|(_, me)| !Arc::ptr_eq(me, s)) && s.wants(&stream) {
                s.post(&text);
            }
        }
    }
    true
}

/// The events of the candle at the clock, for every series and interval,
/// with the closes `late` holds from the previous candle placed after its
/// first event; None past the timeline's end.
fn candle_messages(
    shared: &Shared,
    updates: usize,
    late: &mut Vec<Outgoing>,
) -> Option<(Vec<Outgoing>, usize)> {
    let b = &shared.behavior;
    let st = lock(&shared.state);
    let k = st.clock;
    if st.series.first().is_none_or(|s| k >= s.1.len()) {
        return None;
    }
    let held = std::mem::take(late);
    let nth = |every: usize| every > 0 && (k + 1).is_multiple_of(every);
    let mut messages = Vec::new();
    for (symbol, candles) in &st.series {
        let c = candles[k];
        let stream = stream_name(symbol, Interval::M1);
        for u in 0..updates {
            // Partial values: the close drifts, the volume grows.
            let part = super::partial(&c, (u + 1) as f64 / (updates + 1) as f64);
            messages.push((
                stream.clone(),
                event(
                    symbol,
                    Interval::M1,
                    &part,
                    false,
                    c.open_time + 1 + u as i64,
                ),
                false,
            ));
        }
        let close = (
            stream.clone(),
            event(symbol, Interval::M1, &c, true, c.open_time + 60_000),
            false,
        );
        if nth(b.delay_close_every) {
            late.push(close);
        } else if !nth(b.drop_close_every) {
            messages.push(close);
        }
    }
    if nth(b.drop_close_every) && !nth(b.delay_close_every) {
        super::rest::closes_dropped(shared, st.series.len() as u64);
    }
    // Last candle's late closes go after this candle's first event of
    // their stream.
    for (stream, text, last) in held {
        let at = messages
            .iter()
            .position(|(s, _, _)| *s == stream)
            .map_or(messages.len(), |p| p + 1);
        messages.insert(at, (stream, text, last));
    }
    // The minute that completes a longer candle closes it too.
    for longer in &st.longer {
        if (k + 1).is_multiple_of(longer.ratio) {
            for (symbol, candles) in &longer.series {
                if let Some(c) = candles.get((k + 1) / longer.ratio - 1) {
                    let at = c.open_time + longer.interval.millis() as i64;
                    messages.push((
                        stream_name(symbol, longer.interval),
                        event(symbol, longer.interval, c, true, at),
                        false,
                    ));
                }
            }
        }
    }
    if let Some(m) = messages.last_mut() {
        m.2 = true;
    }
    Some((messages, k))
}
