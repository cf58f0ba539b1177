//! The handshake that sets up a worker's two byte channels.
//!
//! The coordinator creates an `IpcOneShotServer<Bootstrap>` and passes its name
//! in the worker's argv. The **worker** creates both channels and sends the
//! coordinator its ends: so no stray copy of a sender stays in the
//! coordinator, and a dead worker's receiver reports the disconnect.
//! `accept()` has no timeout: the coordinator runs it on a thread and, if the
//! worker never connects, connects itself and sends [`Bootstrap::Abort`].

use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender};
use serde::{Deserialize, Serialize};

/// What arrives on the one-shot bootstrap server.
#[derive(Debug, Serialize, Deserialize)]
pub enum Bootstrap {
    /// From the worker: the coordinator's ends of the two channels.
    Channels {
        /// Coordinator -> worker requests.
        to_worker: IpcBytesSender,
        /// Worker -> coordinator answers and signals.
        from_worker: IpcBytesReceiver,
    },
    /// From the coordinator itself, to unblock its own `accept()` when the
    /// worker died or timed out before connecting.
    Abort,
}
