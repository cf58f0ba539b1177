//! The instance's unix control socket, `<runtime>/<instance>/control.sock`
//! (directory 0700, socket 0600): many clients at once (`top`, scripts,
//! `status`), each on its own thread, each request answered by the
//! coordinator's loop so every answer is a consistent snapshot.
//!
//! A connection carries request lines ([`Request`]: `status`, `events`,
//! `traders`, the JSON trader changes `{"cmd":"add",...}` and
//! `{"cmd":"remove",...}`), one JSON line answering each ([`Answer`]), until
//! the client closes it; the requests and answers are the control
//! protocol's types (`protocol::control`), and `client` the other end.
//! Bounds, so that no client can hold the others or the coordinator:
//! - at most [`MAX_CLIENTS`] connections are served at once; one more gets
//!   an error line naming the limit and is closed;
//! - a connection idle (between requests) for [`IDLE_TIMEOUT`] is closed;
//! - a request line must be complete [`LINE_TIMEOUT`] after its first byte
//!   (a client trickling bytes is answered with an error and closed);
//! - a request line is at most [`MAX_REQUEST`] bytes, its newline not
//!   counted: longer ones are refused with an error naming their length and
//!   the limit, by the client before it connects and by the server if one
//!   arrives anyway (both apply the protocol's `within_limit`);
//! - the loop has [`REQUEST_TIMEOUT`] to answer a request that only reads,
//!   and requests wait in the loop's bounded event channel: when it is full
//!   the answer says the coordinator is busy, instead of queueing without
//!   end. A request that changes the instance (traders add, remove) is
//!   parsed and checked on the client's thread, and its answer is the
//!   loop's real one however long it takes: an answer never hides whether
//!   a change was applied.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::control::{Answer, within_limit};

use crate::locked::lock;

mod client;
pub(super) mod costs;

pub use client::{ControlClient, ask, call};
/// The request type, where the fuzzing targets and their tests find it.
pub use protocol::control::Request;
pub use protocol::control::{MAX_REQUEST, TooLong};

/// The socket's file name in the instance's runtime directory.
pub const SOCKET: &str = "control.sock";
/// How long the coordinator's loop has to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client waits for an answer: the loop's time, and as much again.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// Connections served at once. Each costs a thread with a small stack and
/// at most one request line ([`MAX_REQUEST`]) of memory.
pub const MAX_CLIENTS: usize = 64;
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request line must be complete this long after its first byte.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(2);

/// The error a client past [`MAX_CLIENTS`] gets.
fn too_many() -> String {
    format!(
        "the control socket already serves {MAX_CLIENTS} clients, its limit: close idle ones (shmkline top, scripts holding a connection; idle ones are closed after {} s) and try again",
        IDLE_TIMEOUT.as_secs()
    )
}

/// A request for the coordinator's loop and where to send the answer.
pub struct ControlRequest {
    /// The request, parsed (and a trader to add checked) on the client's
    /// thread: that work never holds the loop.
    pub request: Request,
    /// For traders to add: each one's window (candles a verdict reads) and
    /// evaluation graph nodes, worked out with its checks on the client's
    /// thread, so the loop never compiles a rule.
    pub checked: Vec<(u64, Vec<String>)>,
    /// The answer, serialised by the client's thread, not the loop.
    pub reply: mpsc::Sender<Answer>,
}

/// Whether the loop took a request.
pub enum Handed {
    /// Queued for the loop.
    Queued,
    /// The loop's event channel is full.
    Busy,
    /// The loop is gone (shutting down).
    Gone,
    /// Answered without the loop: a request refused by checks that need
    /// none of its state (a trader whose rule does not compile).
    Answered(Answer),
}

/// Connections being served: a clone of each stream, so that stopping can
/// shut them down and wake their threads at once.
#[derive(Default)]
struct Clients {
    next: u64,
    open: HashMap<u64, (UnixStream, JoinHandle<()>)>,
}

/// The listening side; dropping it stops every thread and removes the socket.
pub struct ControlServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    clients: Arc<Mutex<Clients>>,
    path: PathBuf,
}

impl ControlServer {
    /// Binds the socket in `dir` and forwards requests through `requests`.
    pub fn start(
        dir: &Path,
        requests: impl Fn(ControlRequest) -> Handed + Send + Sync + 'static,
    ) -> Result<Self> {
        let path = dir.join(SOCKET);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        // Non-blocking accept polled with a short sleep, so the thread sees the
        // stop flag without anyone having to connect to wake it.
        listener
            .set_nonblocking(true)
            .context("configuring the control socket")?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Mutex::new(Clients::default()));
        let (flag, served) = (Arc::clone(&stop), Arc::clone(&clients));
        let requests = Arc::new(requests);
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => admit(stream, &served, &requests),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            wait_for_client(std::os::fd::AsFd::as_fd(&listener));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "control socket accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .context("starting the control thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
            clients,
            path,
        })
    }

    /// Connections being served now.
    pub fn clients(&self) -> usize {
        lock(&self.clients).open.len()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // No new client can come now; wake the served ones and wait for them.
        let open: Vec<_> = lock(&self.clients).open.drain().collect();
        for (_, (stream, thread)) in open {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits until a client connects to `listener`, or 100 ms: an accept
/// loop wakes at once for a client and still sees its stop flag soon.
pub(super) fn wait_for_client(listener: std::os::fd::BorrowedFd<'_>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(listener, PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(100u8));
}

/// Serves `stream` on a thread of its own, or refuses it past [`MAX_CLIENTS`].
fn admit<F>(stream: UnixStream, clients: &Arc<Mutex<Clients>>, requests: &Arc<F>)
where
    F: Fn(ControlRequest) -> Handed + Send + Sync + 'static,
{
    let mut guard = lock(clients);
    // Finished threads leave their entry behind; collect them first.
    guard.open.retain(|_, (_, t)| !t.is_finished());
    if guard.open.len() >= MAX_CLIENTS {
        drop(guard);
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
        let answer = Answer::refused(too_many()).to_line();
        let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
        tracing::warn!(
            limit = MAX_CLIENTS,
            "control socket: a client refused, at the limit"
        );
        return;
    }
    let Ok(waker) = stream.try_clone() else {
        return;
    };
    let id = guard.next;
    guard.next += 1;
    let requests = Arc::clone(requests);
    let spawned = std::thread::Builder::new()
        .name("control-client".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            if let Err(e) = serve(&stream, &*requests) {
                tracing::debug!(error = %format!("{e:#}"), "control client ended");
            }
            // The server's registry holds a clone of this socket: close the
            // connection itself, not only this handle, so the client sees EOF.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        });
    match spawned {
        Ok(thread) => {
            guard.open.insert(id, (waker, thread));
        }
        Err(e) => tracing::warn!(error = %e, "control socket: no thread for a client"),
    }
}

/// What reading one request line gave.
enum Line {
    Request(Vec<u8>),
    /// The client closed the connection (or was idle too long).
    Closed,
    /// Over [`MAX_REQUEST`]: this many bytes before the newline (`whole`),
    /// or at least this many when the newline was not reached in time.
    TooLong {
        /// Bytes of the line, its newline not counted.
        len: usize,
        /// Whether the newline was read.
        whole: bool,
    },
    /// Not complete within [`LINE_TIMEOUT`] of its first byte.
    Slow,
}

/// Reads one request line within the idle and line timeouts: its bytes
/// without the newline, kept only while within [`MAX_REQUEST`].
fn read_line(reader: &mut BufReader<&UnixStream>) -> Result<Line> {
    let mut line = Vec::new();
    // The line's length so far, newline not counted, kept or not.
    let mut len = 0usize;
    let idle_until = Instant::now() + IDLE_TIMEOUT;
    let mut line_until: Option<Instant> = None;
    loop {
        let until = line_until.unwrap_or(idle_until);
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(if line_until.is_some() {
                Line::Slow
            } else {
                Line::Closed
            });
        }
        reader.get_ref().set_read_timeout(Some(left))?;
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if buf.is_empty() {
            return Ok(Line::Closed);
        }
        line_until.get_or_insert_with(|| Instant::now() + LINE_TIMEOUT);
        // The bytes up to the newline, and the newline itself.
        let (content, take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, i + 1, true),
            None => (buf.len(), buf.len(), false),
        };
        len += content;
        if within_limit(len) {
            line.extend_from_slice(&buf[..content]);
        }
        reader.consume(take);
        if done {
            if !within_limit(len) {
                return Ok(Line::TooLong { len, whole: true });
            }
            return Ok(Line::Request(line));
        }
        if !within_limit(len) {
            // Drain the rest (bounded by the line timeout), so the client
            // gets the answer instead of a broken pipe.
            let mut whole = false;
            let mut sink = [0u8; 64 * 1024];
            while len < 64 * MAX_REQUEST {
                let left = line_until.map_or(LINE_TIMEOUT, |u| {
                    u.saturating_duration_since(Instant::now())
                });
                if left.is_zero() {
                    break;
                }
                reader.get_ref().set_read_timeout(Some(left))?;
                match reader.read(&mut sink) {
                    Ok(n) if n > 0 && !sink[..n].contains(&b'\n') => len += n,
                    Ok(n) => {
                        let end = sink[..n].iter().position(|&b| b == b'\n');
                        whole = end.is_some();
                        len += end.unwrap_or(n);
                        break;
                    }
                    Err(_) => break,
                }
            }
            return Ok(Line::TooLong { len, whole });
        }
    }
}

/// Answers one client's request lines until it closes, goes idle or misbehaves.
pub(crate) fn serve(
    stream: &UnixStream,
    requests: &impl Fn(ControlRequest) -> Handed,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let answer = match read_line(&mut reader)? {
            Line::Closed => return Ok(()),
            Line::TooLong { len, whole } => {
                let error = TooLong { len, whole }.to_string();
                reply(stream, &Answer::refused(error).to_line())?;
                return Ok(());
            }
            Line::Slow => {
                let error = format!(
                    "the request line did not end within {} s of its first byte: send it whole, ending in a newline",
                    LINE_TIMEOUT.as_secs()
                );
                reply(stream, &Answer::refused(error).to_line())?;
                return Ok(());
            }
            Line::Request(line) => match String::from_utf8(line) {
                Ok(line) => match Request::parse(line.trim()) {
                    Ok(request) => ask_loop(request, requests),
                    Err(error) => Answer::refused(error.to_string()),
                },
                Err(_) => Answer::refused("the request is not UTF-8"),
            },
        };
        reply(stream, &answer.to_line())?;
    }
}

/// Hands one request to the loop and waits for its answer (an error
/// answer when the loop is busy or gone). A request that changes the
/// instance waits for the loop's real answer, however long: an answer
/// always says what happened.
pub(super) fn ask_loop(request: Request, requests: &impl Fn(ControlRequest) -> Handed) -> Answer {
    let changes = request.changes();
    let (reply, answer) = mpsc::channel();
    let error = match requests(ControlRequest {
        request,
        checked: Vec::new(),
        reply,
    }) {
        Handed::Queued if changes => match answer.recv() {
            Ok(answer) => return answer,
            // The loop dropped the request unread (it stopped first).
            Err(_) => "the coordinator stopped before it took the request: nothing was changed"
                .to_owned(),
        },
        Handed::Queued => match answer.recv_timeout(REQUEST_TIMEOUT) {
            Ok(answer) => return answer,
            Err(_) => format!(
                "the coordinator is busy: its loop did not answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        },
        Handed::Busy if changes => {
            "the coordinator is busy: its event queue is full; nothing was changed, try again in a moment"
                .to_owned()
        }
        Handed::Busy => {
            "the coordinator is busy: its event queue is full; try again in a moment".to_owned()
        }
        Handed::Gone => "the coordinator is shutting down".to_owned(),
        Handed::Answered(answer) => return answer,
    };
    Answer::refused(error)
}

fn reply(mut stream: &UnixStream, answer: &str) -> Result<()> {
    stream.write_all(answer.as_bytes())?;
    stream.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests;
