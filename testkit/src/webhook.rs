//! A loopback webhook receiver for the tests and `bench sinks`: it records
//! every request (its `Idempotency-Key` and body) and answers from a script
//! (statuses, `Retry-After`, dropped connections, an outage), else 200,
//! over HTTP or HTTPS. It binds 127.0.0.1 only and stops (its threads
//! joined) on drop.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use engine::locked::lock;

/// Connections served at once, at most (more are closed unanswered).
const MAX_SESSIONS: usize = 32;
/// The largest request body read.
const MAX_BODY: usize = 16 << 20;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// This status, with `Retry-After` seconds if given.
    Status(u16, Option<u64>),
    /// The connection closed without an answer.
    Drop,
    /// No answer for this long (a client's timeout), then the connection closed.
    Stall(Duration),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its target: path and query.
    pub target: String,
    /// Its `Authorization`, if any.
    pub authorization: Option<String>,
    /// Its `Idempotency-Key`, if any.
    pub key: Option<String>,
    /// Its body.
    pub body: String,
    /// What it was answered (`None`: dropped).
    pub status: Option<u16>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Serve HTTPS with this identity.
    tls: Option<Arc<rustls::ServerConfig>>,
    script: Mutex<VecDeque<Reply>>,
    /// While set, every request is answered this (an outage).
    outage: Mutex<Option<Reply>>,
    /// Requests whose body contains this are answered 400.
    refuse: Mutex<Option<String>>,
    /// Wait this long before each answer (a slow receiver).
    delay: Mutex<Duration>,
    log: Mutex<Vec<Request>>,
    sessions: Mutex<Vec<JoinHandle<()>>>,
}

/// The running receiver.
pub struct Receiver {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Starts an HTTPS receiver with this identity (see
    /// [`crate::tls::tls_config`]).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> Result<Self> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the webhook stand-in")?;
        listener.set_nonblocking(true)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            tls,
            ..Shared::default()
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("hook-accept".into())
            .spawn(move || accept_loop(&listener, &s))?;
        Ok(Self {
            shared,
            accept: Some(accept),
            base,
        })
    }

    /// The next requests are answered these, in order (then 200 again).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script).extend(replies);
    }

    /// Every request is answered `reply` until `None` is given.
    pub fn outage(&self, reply: Option<Reply>) {
        *lock(&self.shared.outage) = reply;
    }

    /// Requests whose body contains `needle` are answered 400.
    pub fn refuse(&self, needle: Option<&str>) {
        *lock(&self.shared.refuse) = needle.map(str::to_owned);
    }

    /// Each answer waits this long first.
    pub fn delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    /// Requests so far.
    pub fn count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// The signal lines of every request answered 2xx, in order (a batch's
    /// elements each as a line).
    pub fn accepted_lines(&self) -> Vec<String> {
        let log = lock(&self.shared.log);
        let mut lines = Vec::new();
        for r in log.iter().filter(|r| r.status.is_some_and(|s| s < 300)) {
            match serde_json::from_str::<serde_json::Value>(&r.body) {
                Ok(serde_json::Value::Array(items)) => {
                    lines.extend(items.iter().map(serde_json::Value::to_string));
                }
                _ => lines.push(r.body.clone()),
            }
        }
        lines
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for t in std::mem::take(&mut *lock(&self.shared.sessions)) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        let Ok((stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        let mut sessions = lock(&shared.sessions);
        let (done, running): (Vec<_>, Vec<_>) =
            sessions.drain(..).partition(JoinHandle::is_finished);
        *sessions = running;
        for t in done {
            let _ = t.join();
        }
        if sessions.len() >= MAX_SESSIONS {
            continue;
        }
        let s = Arc::clone(shared);
        if let Ok(t) = std::thread::Builder::new()
            .name("hook-session".into())
            .spawn(move || session(stream, &s))
        {
            sessions.push(t);
        }
    }
}

/// One connection, in the clear or under TLS, until it closes.
fn session(stream: TcpStream, shared: &Shared) {
    let Ok(tcp) = stream.try_clone() else { return };
    match &shared.tls {
        None => serve(stream, shared),
        Some(cfg) => {
            if let Ok(conn) = rustls::ServerConnection::new(Arc::clone(cfg)) {
                let mut tls = rustls::StreamOwned::new(conn, stream);
                serve(&mut tls, shared);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
}

/// Requests one after another on one connection until it closes.
fn serve(mut stream: impl Read + Write, shared: &Shared) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 << 10];
    while !shared.stop.load(Ordering::Acquire) {
        if let Some((head_len, body_len)) = request_bounds(&pending) {
            if pending.len() >= head_len + body_len {
                let head = String::from_utf8_lossy(&pending[..head_len]).into_owned();
                let body =
                    String::from_utf8_lossy(&pending[head_len..head_len + body_len]).into_owned();
                pending.drain(..head_len + body_len);
                if !answer(&mut stream, &head, body, shared) {
                    break;
                }
                continue;
            }
            if body_len > MAX_BODY {
                break;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// The head's length (through the blank line) and the body's
/// (`Content-Length`), once the head is complete.
fn request_bounds(pending: &[u8]) -> Option<(usize, usize)> {
    let end = pending.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&pending[..end]);
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    Some((end, len))
}

/// Answers one request; false if the connection is to close.
fn answer(stream: &mut impl Write, head: &str, body: String, shared: &Shared) -> bool {
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let key = header("idempotency-key");
    let authorization = header("authorization");
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned();
    let delay = *lock(&shared.delay);
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let refused = lock(&shared.refuse)
        .as_deref()
        .is_some_and(|n| body.contains(n));
    let reply = if refused {
        Reply::Status(400, None)
    } else if let Some(r) = *lock(&shared.outage) {
        r
    } else {
        lock(&shared.script)
            .pop_front()
            .unwrap_or(Reply::Status(200, None))
    };
    let status = match reply {
        Reply::Status(s, _) => Some(s),
        Reply::Drop | Reply::Stall(_) => None,
    };
    lock(&shared.log).push(Request {
        target,
        authorization,
        key,
        body,
        status,
        at: Instant::now(),
    });
    let (status, retry_after) = match reply {
        Reply::Status(status, retry_after) => (status, retry_after),
        Reply::Drop => return false,
        Reply::Stall(d) => {
            std::thread::sleep(d);
            return false;
        }
    };
    let text = if refused { "unknown trader" } else { "" };
    let retry = retry_after.map_or_else(String::new, |s| format!("Retry-After: {s}\r\n"));
    let out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{retry}Connection: keep-alive\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(out.as_bytes()).is_ok() && stream.flush().is_ok()
}
