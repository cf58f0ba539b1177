//! What reaches the coordinator's loop: every other thread feeds it
//! [`Event`]s through one bounded channel, and control requests get there
//! through [`forward_to`].

use std::sync::mpsc::{SyncSender, TrySendError};

use protocol::control::{Answer, Request};
use protocol::store::StoreConfig;

use super::control::{ControlRequest, Handed};
use super::link::FromWorker;
use super::options::check_trader;
use super::spawn::Spawned;

/// Events waiting for the loop, at most.
pub(super) const EVENT_BOUND: usize = 4096;

/// What reaches the loop.
pub enum Event {
    /// From the reader thread of a slot's worker incarnation.
    Worker(u32, u64, FromWorker),
    /// A spawn for a slot's incarnation finished (or failed).
    Spawned(u32, u64, Result<Spawned, String>),
    /// SIGTERM or SIGINT: a wake-up (the signal thread's counts are what
    /// the loop acts on).
    OsSignal,
    /// A control-socket request.
    Control(ControlRequest),
}

/// Forwards control requests into the loop's bounded event channel. Traders
/// to add are checked here first, on the client's thread (compiling
/// thousands of rules takes a while): the loop is left only what needs its
/// state (ids taken, room in the workers).
pub(super) fn forward_to(
    events: SyncSender<Event>,
    store: StoreConfig,
) -> impl Fn(ControlRequest) -> Handed + Send + Sync + 'static {
    move |mut req| {
        if let Request::Add(traders) = &req.request {
            match traders
                .iter()
                .map(|t| check_trader(&store, t).map(|w| (w, super::slot::nodes_of(t))))
                .collect::<anyhow::Result<Vec<_>>>()
            {
                Ok(checked) => req.checked = checked,
                Err(e) => {
                    return Handed::Answered(Answer::refused(format!("{e:#}; nothing was added")));
                }
            }
        }
        match events.try_send(Event::Control(req)) {
            Ok(()) => Handed::Queued,
            Err(TrySendError::Full(_)) => Handed::Busy,
            Err(TrySendError::Disconnected(_)) => Handed::Gone,
        }
    }
}
