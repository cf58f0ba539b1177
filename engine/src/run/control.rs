//! The instance's unix control socket, `<runtime>/<instance>/control.sock`
//! (directory 0700, socket 0600). One request line in, one JSON line out.
//! Requests are answered by the coordinator's loop, so every answer is a
//! consistent snapshot. Requests: `status`, `events`, `traders`, and the
//! JSON trader commands (`{"cmd":"add",...}`, `{"cmd":"remove",...}`). A
//! request line is at most [`MAX_REQUEST`] bytes: longer ones are refused
//! with an error naming the limit, by the client before it connects and by
//! the server if one arrives anyway.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The socket's file name in the instance's runtime directory.
pub const SOCKET: &str = "control.sock";
/// How long one request may take end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request line: a large trader file's specs fit; memory stays bounded.
pub const MAX_REQUEST: usize = 1 << 20;

/// The error for a request over [`MAX_REQUEST`].
fn too_long(len: usize) -> String {
    format!(
        "the request is {len} bytes, over the control socket's limit of {MAX_REQUEST} bytes (1 MiB): split the trader file and add the parts one by one"
    )
}

/// A request for the coordinator's loop and where to send the answer.
pub struct ControlRequest {
    /// The request line, trimmed.
    pub line: String,
    /// The answer (one JSON line).
    pub reply: mpsc::Sender<String>,
}

/// The listening side; dropping it stops the thread and removes the socket.
pub struct ControlServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ControlServer {
    /// Binds the socket in `dir` and forwards requests through `requests`.
    pub fn start(
        dir: &Path,
        requests: impl Fn(ControlRequest) -> bool + Send + 'static,
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
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = serve(stream, &requests) {
                                tracing::debug!(error = %format!("{e:#}"), "control request failed");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
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
            path,
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, requests: &impl Fn(ControlRequest) -> bool) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new(std::io::Read::take(&stream, MAX_REQUEST as u64 + 1))
        .read_until(b'\n', &mut line)?;
    if line.len() > MAX_REQUEST {
        // Read the rest (bounded by the timeout), so the client gets the
        // answer instead of a broken pipe.
        let mut len = line.len();
        let mut buf = vec![0u8; 64 * 1024];
        let mut rest = &stream;
        while len < 64 * MAX_REQUEST {
            match std::io::Read::read(&mut rest, &mut buf) {
                Ok(n) if n > 0 && !buf[..n].contains(&b'\n') => len += n,
                Ok(n) => {
                    len += buf[..n].iter().position(|&b| b == b'\n').unwrap_or(n);
                    break;
                }
                Err(_) => break,
            }
        }
        let answer = serde_json::json!({ "error": too_long(len) });
        let mut stream = stream;
        stream.write_all(format!("{answer}\n").as_bytes())?;
        return Ok(());
    }
    let line = String::from_utf8(line).map_err(|_| anyhow::anyhow!("the request is not UTF-8"))?;
    let (reply, answer) = mpsc::channel();
    let answer_line = if requests(ControlRequest {
        line: line.trim().to_owned(),
        reply,
    }) {
        answer
            .recv_timeout(REQUEST_TIMEOUT)
            .unwrap_or_else(|_| r#"{"error":"the coordinator did not answer in time"}"#.to_owned())
    } else {
        r#"{"error":"the coordinator is shutting down"}"#.to_owned()
    };
    let mut stream = stream;
    stream.write_all(answer_line.as_bytes())?;
    stream.write_all(b"\n")?;
    Ok(())
}

/// Forwards control requests into a bounded channel; false when it is full or gone.
pub fn forward_to(
    events: SyncSender<super::Event>,
) -> impl Fn(ControlRequest) -> bool + Send + 'static {
    move |req| events.try_send(super::Event::Control(req)).is_ok()
}

/// Sends `request` to the instance whose runtime directory is `dir` and
/// returns the JSON answer.
pub fn ask(dir: &Path, request: &str) -> Result<serde_json::Value> {
    if request.len() > MAX_REQUEST {
        bail!("{}", too_long(request.len()));
    }
    let path = dir.join(SOCKET);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(protocol::exit::NotRunning(path).into());
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    stream.set_read_timeout(Some(REQUEST_TIMEOUT * 2))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("reading the answer")?;
    let value: serde_json::Value =
        serde_json::from_str(line.trim()).context("the answer is not JSON")?;
    if let Some(err) = value.get("error").and_then(|e| e.as_str()) {
        bail!("the coordinator refused: {err}");
    }
    Ok(value)
}
