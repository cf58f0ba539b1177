//! The OS-signal thread: SIGINT and SIGTERM counted in atomics (a full event
//! queue can never swallow one) and the loop woken; closed and joined when
//! its guard drops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use super::events::Event;

/// SIGINT and SIGTERM counts, kept by the signal thread in atomics so that a
/// full event queue can never swallow one.
#[derive(Debug, Default)]
pub struct OsSignals {
    pub(super) sigint: AtomicU32,
    pub(super) sigterm: AtomicU32,
}

impl OsSignals {
    /// SIGINTs and SIGTERMs so far.
    pub(super) fn counts(&self) -> (u32, u32) {
        (
            self.sigint.load(Ordering::SeqCst),
            self.sigterm.load(Ordering::SeqCst),
        )
    }
}

/// SIGINT and SIGTERM caught, not yet served by a thread: installed first
/// thing, so a Ctrl-C during start-up is not lost.
pub(super) struct Caught(Signals);

/// Installs the handlers.
pub(super) fn catch_signals() -> Result<Caught> {
    Signals::new([SIGTERM, SIGINT])
        .map(Caught)
        .context("installing signal handlers")
}

impl Caught {
    /// Counts the signals on a thread of their own, waking the loop through
    /// `events` for each.
    pub(super) fn start(self, events: SyncSender<Event>) -> Result<SignalThread> {
        let mut signals = self.0;
        let handle = signals.handle();
        let counts = Arc::new(OsSignals::default());
        let counted = Arc::clone(&counts);
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let counter = if sig == SIGINT {
                        &counted.sigint
                    } else {
                        &counted.sigterm
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Only a wake-up: the count above is what the loop acts
                    // on, so a full queue cannot swallow a signal.
                    let _ = events.try_send(Event::OsSignal);
                }
            })
            .context("starting the signal thread")?;
        Ok(SignalThread {
            handle,
            thread: Some(thread),
            counts,
        })
    }
}

/// The OS-signal thread: closed and joined when dropped.
pub(super) struct SignalThread {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    counts: Arc<OsSignals>,
}

impl SignalThread {
    /// The counts the loop acts on.
    pub(super) fn counts(&self) -> Arc<OsSignals> {
        Arc::clone(&self.counts)
    }
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
