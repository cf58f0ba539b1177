//! The client's end of the control socket: one connection for several
//! requests, each answered by one line: typed ([`ControlClient::call`],
//! the answer type of the request), or as JSON for tools that read answers
//! by key ([`ControlClient::ask`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use protocol::control::{Request, TooLong, decode, within_limit};
use serde::de::DeserializeOwned;

use super::{ANSWER_TIMEOUT, IDLE_TIMEOUT, SOCKET};

/// The client's side of the line limit: a request refused before it is sent.
fn check_request(request: &str) -> Result<()> {
    if !within_limit(request.len()) {
        bail!(
            "{}",
            TooLong {
                len: request.len(),
                whole: true
            }
        );
    }
    Ok(())
}

/// A connection to an instance's control socket, for several requests.
pub struct ControlClient {
    pub(super) reader: BufReader<UnixStream>,
    pub(super) path: PathBuf,
}

impl ControlClient {
    /// Connects to the instance whose runtime directory is `dir`.
    pub fn connect(dir: &Path) -> Result<Self> {
        let path = dir.join(SOCKET);
        let stream = match UnixStream::connect(&path) {
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
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(Self {
            reader: BufReader::new(stream),
            path,
        })
    }

    /// Sends `request` and returns its answer as `T`, the request's answer
    /// type (`Status` for [`Request::Status`]...); a refusal is an error.
    pub fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T> {
        let line = self.exchange(&request.to_line(), request.changes())?;
        Ok(decode(&line)?)
    }

    /// Sends the request line `request` as it is and returns the JSON
    /// answer; an answer with an `error` is an error.
    pub fn ask(&mut self, request: &str) -> Result<serde_json::Value> {
        // The JSON requests (traders add and remove) change the instance.
        let line = self.exchange(request, request.starts_with('{'))?;
        let value: serde_json::Value =
            serde_json::from_str(&line).context("the answer is not JSON")?;
        if let Some(refusal) = protocol::control::answer::refused(&value) {
            bail!("the coordinator refused: {refusal}");
        }
        Ok(value)
    }

    /// Sends one request line and reads its answer line; `changes`: the
    /// request changes the instance, so its answer is waited for however
    /// long the change takes.
    fn exchange(&mut self, request: &str, changes: bool) -> Result<String> {
        check_request(request)?;
        let line = format!("{request}\n");
        if let Err(e) = self.reader.get_mut().write_all(line.as_bytes()) {
            // The server closed this connection (idle too long, or it
            // restarted): the request never went out, so a new connection
            // may send it, once.
            if !matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::NotConnected
            ) {
                return Err(e)
                    .with_context(|| format!("sending the request to {}", self.path.display()));
            }
            // It may have said why before it closed (a client past the limit).
            let mut said = String::new();
            if self.reader.read_line(&mut said).is_ok()
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(said.trim())
                && let Some(refusal) = protocol::control::answer::refused(&value)
            {
                bail!("the coordinator refused: {refusal}");
            }
            let dir = self.path.parent().unwrap_or(Path::new("/")).to_owned();
            *self = Self::connect(&dir)?;
            self.reader
                .get_mut()
                .write_all(line.as_bytes())
                .with_context(|| format!("sending the request to {}", self.path.display()))?;
        }
        // The server answers a change when the loop has (or says why
        // nothing changed), so its answer is waited for without a timeout;
        // a timeout here could not say whether the change was applied.
        if changes {
            self.reader.get_ref().set_read_timeout(None)?;
        }
        let mut line = String::new();
        let read = self.reader.read_line(&mut line);
        if changes {
            self.reader
                .get_ref()
                .set_read_timeout(Some(ANSWER_TIMEOUT))?;
        }
        match read {
            Ok(0) if changes => bail!(
                "the coordinator closed the connection without answering: it stopped before it took the change, so nothing was changed"
            ),
            Ok(0) => bail!(
                "the coordinator closed the connection without answering (it is stopping, or this connection was idle for {} s)",
                IDLE_TIMEOUT.as_secs()
            ),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "no answer from the coordinator within {} s: it is busy or stopped (is its process running? its log says why)",
                    ANSWER_TIMEOUT.as_secs()
                )
            }
            Err(e) => return Err(e).context("reading the answer"),
        }
        Ok(line.trim().to_owned())
    }
}

/// Sends the request line `request` to the instance whose runtime
/// directory is `dir` and returns the JSON answer.
pub fn ask(dir: &Path, request: &str) -> Result<serde_json::Value> {
    check_request(request)?;
    ControlClient::connect(dir)?.ask(request)
}

/// Sends `request` to the instance whose runtime directory is `dir` and
/// returns its answer as `T`, the request's answer type.
pub fn call<T: DeserializeOwned>(dir: &Path, request: &Request) -> Result<T> {
    check_request(&request.to_line())?;
    ControlClient::connect(dir)?.call(request)
}
