//! One worker's two channel threads.
//!
//! * The writer thread owns the sender and drains a bounded queue. A send to a
//!   SIGSTOPped worker blocks once its socket buffer is full (about 278 small
//!   frames): only this thread blocks, never the coordinator's loop, which sees
//!   the queue fill up and declares the worker faulty.
//! * The reader thread owns the receiver, decodes each frame at once (received
//!   buffers are ~212 KB) and forwards it to the coordinator's loop. It ends
//!   when the worker's end closes, i.e. when the worker exits or is killed.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use ipc_channel::IpcError;
use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender};
use protocol::frame::{self, FrameError};
use protocol::message::{Message, RequestId};

/// Frames queued to one worker at most.
pub const QUEUE_BOUND: usize = 64;

/// What a reader thread reports to the coordinator's loop.
#[derive(Debug)]
pub enum FromWorker {
    /// A decoded frame.
    Frame(RequestId, Message),
    /// A frame that did not decode.
    Malformed(FrameError),
    /// The worker's end closed.
    Closed,
}

/// The coordinator's end of one worker's channels.
pub struct Link {
    queue: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The worker is not draining its queue (stopped or hung).
    Full,
    /// The writer thread is gone (the worker's end closed).
    Closed,
}

impl Link {
    /// Starts both threads; `deliver` runs on the reader thread for each
    /// frame and must not block for long (it feeds a bounded channel).
    pub fn start(
        worker_id: u32,
        to_worker: IpcBytesSender,
        from_worker: IpcBytesReceiver,
        deliver: impl Fn(FromWorker) + Send + 'static,
    ) -> Result<Self> {
        let (queue, frames) = mpsc::sync_channel::<Vec<u8>>(QUEUE_BOUND);
        let writer = std::thread::Builder::new()
            .name(format!("w{worker_id}-send"))
            .spawn(move || {
                for bytes in frames {
                    if to_worker.send(&bytes).is_err() {
                        break;
                    }
                }
            })
            .context("starting a writer thread")?;
        let reader = std::thread::Builder::new()
            .name(format!("w{worker_id}-recv"))
            .spawn(move || {
                loop {
                    match from_worker.recv() {
                        Ok(bytes) => {
                            let event = match frame::decode(&bytes) {
                                Ok((id, msg)) => FromWorker::Frame(id, msg),
                                Err(e) => FromWorker::Malformed(e),
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
            queue: Some(queue),
            writer: Some(writer),
            reader: Some(reader),
        })
    }

    /// Queues a frame without blocking.
    pub fn send(&self, bytes: Vec<u8>) -> Result<(), QueueError> {
        let queue = self.queue.as_ref().ok_or(QueueError::Closed)?;
        queue.try_send(bytes).map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Full,
            TrySendError::Disconnected(_) => QueueError::Closed,
        })
    }

    /// Stops the writer and joins both threads. Call only once the worker
    /// process is dead: that is what closes the channels the threads wait on.
    pub fn join(mut self) {
        drop(self.queue.take());
        if let Some(t) = self.writer.take() {
            let _ = t.join();
        }
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}
