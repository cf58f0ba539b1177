//! One worker's channels as the coordinator holds them.
//!
//! * Sends happen on the caller's thread, directly on the socket. A send to a
//!   SIGSTOPped worker would block once the socket buffer is full (about 278
//!   small frames, or fewer large ones), so callers must never let more than
//!   a [`Budget`] of frames go unread: the coordinator tracks what each
//!   worker has provably read and declares a worker that falls that far
//!   behind faulty instead of sending.
//! * The reader thread owns the receiver, decodes each frame at once (received
//!   buffers are ~212 KB) and forwards it to the coordinator's loop. It ends
//!   when the worker's end closes, i.e. when the worker exits or is killed.

use std::thread::JoinHandle;

use anyhow::{Context, Result};
use ipc_channel::IpcError;
use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender};
use protocol::frame::{self, FrameError};
use protocol::message::{Kind, Message, RequestId};

/// What a reader thread reports to the coordinator's loop.
#[derive(Debug)]
pub enum FromWorker {
    /// A decoded frame.
    Frame(RequestId, Message),
    /// A frame that did not decode.
    Malformed {
        /// Why.
        error: FrameError,
        /// Its length in bytes.
        len: usize,
        /// The kind its header names, if any.
        kind: Option<Kind>,
    },
    /// The worker's end closed.
    Closed,
}

/// How much may be sent to a worker and not yet be provably read by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Frames.
    pub frames: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Budget {
    /// 64 frames, and at most half of the kernel's default socket send buffer
    /// in bytes (counting ~1 KiB of kernel overhead per frame), so a send can
    /// never find the buffer full.
    pub fn from_system() -> Self {
        let sndbuf = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(212_992);
        let frames = 64;
        Self {
            frames,
            // Never below one largest frame plus room, or a legal frame could
            // never be sent.
            bytes: (sndbuf / 2)
                .saturating_sub(frames * 1024)
                .max(frame::MAX_FRAME as u64 + 4096),
        }
    }
}

impl Budget {
    /// Whether a frame of `len` bytes may be sent when `sent` frames and bytes
    /// went out and the worker provably `read` that many; the error says how
    /// far behind it is.
    pub fn admits(&self, sent: (u64, u64), read: (u64, u64), len: usize) -> Result<(), String> {
        let unread = (sent.0.saturating_sub(read.0), sent.1.saturating_sub(read.1));
        if unread.0 + 1 > self.frames || unread.1 + len as u64 > self.bytes {
            return Err(format!(
                "it is not reading its channel ({} frames, {} bytes unread)",
                unread.0, unread.1
            ));
        }
        Ok(())
    }
}

/// The coordinator's end of one worker's channels.
pub struct Link {
    to_worker: IpcBytesSender,
    reader: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts the reader thread; `deliver` runs on it for each frame.
    /// Its lines are logged in `span` (the worker's slot and pid).
    pub fn start(
        worker_id: u32,
        span: tracing::Span,
        to_worker: IpcBytesSender,
        from_worker: IpcBytesReceiver,
        deliver: impl Fn(FromWorker) + Send + 'static,
    ) -> Result<Self> {
        let reader = std::thread::Builder::new()
            .name(format!("w{worker_id}-recv"))
            .spawn(move || {
                let _span = span.entered();
                loop {
                    match from_worker.recv() {
                        Ok(bytes) => {
                            let event = match frame::decode(&bytes) {
                                Ok((id, msg)) => FromWorker::Frame(id, msg),
                                Err(error) => FromWorker::Malformed {
                                    error,
                                    len: bytes.len(),
                                    kind: frame::header_kind(&bytes),
                                },
                            };
                            drop(bytes);
                            deliver(event);
                        }
                        Err(IpcError::Disconnected) | Err(_) => {
                            deliver(FromWorker::Closed);
                            break;
                        }
                    }
                }
            })
            .context("starting a reader thread")?;
        Ok(Self {
            to_worker,
            reader: Some(reader),
        })
    }

    /// Sends one frame. Callers keep what is unread within a [`Budget`], so
    /// this does not block; an error means the worker's end is closed.
    pub fn send(&self, bytes: &[u8]) -> Result<(), std::io::Error> {
        self.to_worker.send(bytes)
    }

    /// Whether the reader thread has ended (the worker's end closed).
    pub fn is_finished(&self) -> bool {
        self.reader.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Joins the reader thread. Call only once the worker process is dead:
    /// that is what closes the channel the thread waits on.
    pub fn join(mut self) {
        drop(self.to_worker);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_unread_frames_and_bytes() {
        let budget = Budget {
            frames: 3,
            bytes: 1000,
        };
        assert!(budget.admits((0, 0), (0, 0), 100).is_ok());
        assert!(
            budget.admits((2, 200), (0, 0), 100).is_ok(),
            "third unread frame fits"
        );
        let err = budget
            .admits((3, 300), (0, 0), 100)
            .expect_err("a fourth does not");
        assert!(err.contains("3 frames"), "{err}");
        assert!(
            budget.admits((3, 300), (1, 100), 100).is_ok(),
            "an answer frees room"
        );
        assert!(
            budget.admits((1, 900), (0, 0), 200).is_err(),
            "bytes count too"
        );
        let system = Budget::from_system();
        assert!(system.frames > 0 && system.bytes >= 16 * 1024);
    }
}
