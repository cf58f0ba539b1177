//! `--metrics ADDR`: a read-only HTTP endpoint. `GET /metrics` answers the
//! OpenMetrics text Prometheus scrapes ([`encode`]), or the classic text
//! format to a client that does not ask for OpenMetrics; `GET /status` the
//! same JSON as `shmkline status --json`. Changes stay on the 0600 control
//! socket: nothing here writes.
//!
//! Each answer is one request to the coordinator's loop (a consistent
//! snapshot, through the same bounded channel as the control socket); the
//! encoding happens on the endpoint's threads. Bounds: [`SERVERS`]
//! connections answered at once and [`QUEUED`] waiting (one more is
//! answered 503), a request head of at most [`MAX_HEAD`] bytes (431),
//! complete within [`HEAD_TIMEOUT`] of its accept, time in the queue
//! included (408); one request per connection.

pub mod encode;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::control::Answer;

use super::control::{ControlRequest, Handed, Request, ask_loop};

/// Connections answered at once.
pub const SERVERS: usize = 2;
/// Connections waiting for a server, at most.
pub const QUEUED: usize = 16;
/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// A request head must be complete this long after the connection is
/// accepted. Counted from the accept, not from when a server takes the
/// connection: otherwise each of [`QUEUED`] idle connections would hold a
/// server for this long in turn, and a handful of them deny the endpoint
/// for [`QUEUED`] / [`SERVERS`] times as long.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// The endpoint; dropping it stops its threads.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` (`--metrics`) and answers from `requests`.
    pub fn start(
        addr: SocketAddr,
        requests: impl Fn(ControlRequest) -> Handed + Send + Sync + 'static,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| {
            format!(
                "--metrics {addr}: cannot listen there (in use, or not an address of this host)"
            )
        })?;
        let addr = listener.local_addr().context("the metrics address")?;
        listener
            .set_nonblocking(true)
            .context("configuring the metrics listener")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let requests = Arc::new(requests);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&listener, &flag, &requests))
            .context("starting the metrics thread")?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics, status at http://{addr}/status");
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr,
                "--metrics listens beyond this host: /metrics and /status (traders, sinks, workers) are served to anyone who can reach it, without authentication; bind 127.0.0.1 and put an authenticating proxy in front, or firewall the port");
        }
        Ok(Self {
            stop,
            thread: Some(thread),
            addr,
        })
    }

    /// Where it listens (the port chosen when `--metrics` gave port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The accept loop: connections go to [`SERVERS`] threads through a
/// queue of [`QUEUED`]; one more is answered 503. The threads live as long
/// as the endpoint (no thread per scrape: a thread per connection churned
/// the allocator's arenas, 0.7 KB of the coordinator's memory a scrape).
fn serve<F>(listener: &TcpListener, stop: &AtomicBool, requests: &Arc<F>)
where
    F: Fn(ControlRequest) -> Handed + Send + Sync + 'static,
{
    // Each connection carries the instant it was accepted: its head
    // deadline runs from then, in the queue too.
    let (queue, queued) = std::sync::mpsc::sync_channel::<(TcpStream, Instant)>(QUEUED);
    let queued = Arc::new(std::sync::Mutex::new(queued));
    let stopping = Arc::new(AtomicBool::new(false));
    let servers: Vec<JoinHandle<()>> = (0..SERVERS)
        .filter_map(|k| {
            let (queued, requests) = (Arc::clone(&queued), Arc::clone(requests));
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name(format!("metrics-{k}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    loop {
                        // The lock is held only to take the next connection.
                        let next = crate::locked::lock(&queued).recv();
                        let Ok((stream, accepted)) = next else { return };
                        // Stopping: what waits is dropped, not answered.
                        if stopping.load(Ordering::Acquire) {
                            continue;
                        }
                        if let Err(e) = answer(&stream, accepted, &*requests, &stopping) {
                            tracing::debug!(error = %format!("{e:#}"), "metrics request failed");
                        }
                    }
                })
                .map_err(|e| tracing::warn!(error = %e, "metrics: no server thread"))
                .ok()
        })
        .collect();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(std::sync::mpsc::TrySendError::Full((stream, _))) =
                    queue.try_send((stream, Instant::now()))
                {
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                    let _ = respond(
                        &stream,
                        "503 Service Unavailable",
                        "text/plain",
                        &format!(
                            "the metrics endpoint has {QUEUED} connections waiting, its limit\n"
                        ),
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                super::control::wait_for_client(std::os::fd::AsFd::as_fd(listener));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Closing the queue ends each server: queued connections are dropped,
    // one being read gives up within 100 ms, one being answered is done
    // within the loop's and the write's timeouts.
    stopping.store(true, Ordering::Release);
    drop(queue);
    for t in servers {
        let _ = t.join();
    }
}

/// Reads the request head, due [`HEAD_TIMEOUT`] after `accepted`: what it
/// asks for, or the status to refuse it with. A connection whose deadline
/// passed while it was queued is refused at once, unread.
fn read_head(
    stream: &TcpStream,
    accepted: Instant,
    stopping: &AtomicBool,
) -> Result<Result<Asked, &'static str>> {
    let until = accepted + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Err("408 Request Timeout"));
        }
        if stopping.load(Ordering::Acquire) {
            return Ok(Err("503 Service Unavailable"));
        }
        // In slices, so a stop is seen while a client says nothing.
        stream.set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
        match (&*stream).read(&mut buf) {
            Ok(0) => return Ok(Err("400 Bad Request")),
            Ok(k) => head.extend_from_slice(&buf[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if head.len() > MAX_HEAD {
            return Ok(Err("431 Request Header Fields Too Large"));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let mut words = lines.next().unwrap_or_default().split_whitespace();
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    match (words.next(), words.next()) {
        (Some(method), Some(target)) => Ok(Ok(Asked {
            method: method.to_owned(),
            target: target.to_owned(),
            openmetrics,
        })),
        _ => Ok(Err("400 Bad Request")),
    }
}

/// A request's line, and whether it takes OpenMetrics.
struct Asked {
    method: String,
    target: String,
    openmetrics: bool,
}

fn answer(
    stream: &TcpStream,
    accepted: Instant,
    requests: &impl Fn(ControlRequest) -> Handed,
    stopping: &AtomicBool,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    let Asked {
        method,
        target,
        openmetrics,
    } = match read_head(stream, accepted, stopping)? {
        Ok(asked) => asked,
        Err(status) => {
            // A refusal is a few bytes into an empty socket buffer: it
            // must not hold the server as long as a real answer may.
            stream.set_write_timeout(Some(Duration::from_millis(200)))?;
            return respond(stream, status, "text/plain", &format!("{status}\n"));
        }
    };
    stream.set_write_timeout(Some(HEAD_TIMEOUT))?;
    let path = target.split('?').next().unwrap_or_default();
    if method != "GET" {
        return respond(
            stream,
            "405 Method Not Allowed",
            "text/plain",
            "read-only: GET /metrics or /status (changes go through the control socket)\n",
        );
    }
    let metrics = match path {
        "/metrics" => true,
        "/status" => false,
        _ => {
            return respond(
                stream,
                "404 Not Found",
                "text/plain",
                "not here: GET /metrics (OpenMetrics text) or /status (JSON)\n",
            );
        }
    };
    let request = if metrics {
        Request::Metrics
    } else {
        Request::Status
    };
    match ask_loop(request, requests) {
        // Prometheus asks for OpenMetrics; anything else gets the classic
        // text format.
        Answer::Metrics(snapshot) => match encode::exposition(*snapshot) {
            Ok(text) if openmetrics => respond(
                stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &text,
            ),
            Ok(text) => respond(
                stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &encode::classic(&text),
            ),
            Err(_) => respond(
                stream,
                "500 Internal Server Error",
                "text/plain",
                "the metrics could not be encoded\n",
            ),
        },
        Answer::Refused(refusal) => respond(
            stream,
            "503 Service Unavailable",
            "text/plain",
            &format!("{}\n", refusal.error),
        ),
        answer => respond(
            stream,
            "200 OK",
            "application/json",
            &format!("{}\n", answer.to_line()),
        ),
    }
}

fn respond(mut stream: &TcpStream, status: &str, kind: &str, body: &str) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()?;
    Ok(())
}
