//! What can go wrong: with a worker (the kinds of fault and who caused
//! one, shared with `status` through the control protocol), the log of
//! faults and their recoveries that `status`, `events` and the chaos
//! report read, and the failures that end a run in error.

use std::collections::VecDeque;
use std::time::Instant;

use protocol::clock::now_ms;
pub(super) use protocol::control::{Cause, FaultEvent, FaultKind};

/// Faults kept in the log (the oldest is dropped first).
pub const EVENTS_KEPT: usize = 1024;

/// Faults `status` lists, newest first.
const RECENT: usize = 16;

/// A fault in the [`FaultLog`]: it names the same fault as older ones are
/// dropped, and none once its own is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FaultId(u64);

/// The last [`EVENTS_KEPT`] faults, each with when it was detected.
#[derive(Debug)]
pub(super) struct FaultLog {
    events: VecDeque<(FaultEvent, Instant)>,
    /// Faults dropped from the front so far: the id of the oldest kept.
    dropped: u64,
}

impl Default for FaultLog {
    fn default() -> Self {
        Self {
            // At its bound from the start: no doubling copies while it fills.
            events: VecDeque::with_capacity(EVENTS_KEPT),
            dropped: 0,
        }
    }
}

impl FaultLog {
    /// Records a fault of slot `slot`'s worker `pid` detected now.
    pub(super) fn record(&mut self, slot: u32, pid: u32, kind: FaultKind, why: String) -> FaultId {
        if self.events.len() >= EVENTS_KEPT {
            self.events.pop_front();
            self.dropped += 1;
        }
        let event = FaultEvent {
            slot,
            pid,
            kind,
            cause: None,
            reason: why,
            exit: None,
            detected_at_ms: now_ms(),
            recovered_at_ms: None,
            recovery_ms: None,
        };
        self.events.push_back((event, Instant::now()));
        FaultId(self.dropped + self.events.len() as u64 - 1)
    }

    /// Fault `id`, while it is kept.
    pub(super) fn get(&self, id: FaultId) -> Option<&FaultEvent> {
        self.entry(id).map(|(event, _)| event)
    }

    fn entry(&self, id: FaultId) -> Option<&(FaultEvent, Instant)> {
        let k = id.0.checked_sub(self.dropped)?;
        self.events.get(usize::try_from(k).ok()?)
    }

    fn entry_mut(&mut self, id: FaultId) -> Option<&mut (FaultEvent, Instant)> {
        let k = id.0.checked_sub(self.dropped)?;
        self.events.get_mut(usize::try_from(k).ok()?)
    }

    /// Its worker was reaped: who caused it, and the exit status.
    pub(super) fn reaped(&mut self, id: FaultId, cause: Cause, exit: String) {
        if let Some((event, _)) = self.entry_mut(id) {
            event.cause = Some(cause);
            event.exit = Some(exit);
        }
    }

    /// Its slot recovered now: the time it took, ms, if the fault is kept.
    pub(super) fn recovered(&mut self, id: FaultId) -> Option<f64> {
        let (event, detected) = self.entry_mut(id)?;
        event.recovered_at_ms = Some(now_ms());
        let took = detected.elapsed().as_secs_f64() * 1e3;
        event.recovery_ms = Some(took);
        Some(took)
    }

    /// Faults kept.
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    /// Of those, the recovered.
    pub(super) fn recovered_count(&self) -> usize {
        self.events
            .iter()
            .filter(|(e, _)| e.recovery_ms.is_some())
            .count()
    }

    /// The latest, newest first, for `status`.
    pub(super) fn recent(&self) -> Vec<FaultEvent> {
        self.events
            .iter()
            .rev()
            .take(RECENT)
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// Every fault kept, oldest first (`events`).
    pub(super) fn all(&self) -> Vec<FaultEvent> {
        self.events.iter().map(|(e, _)| e.clone()).collect()
    }
}

/// What ends the run in error: at once (fatal), or at its end.
#[derive(Debug, Default)]
pub(super) struct Failures {
    /// The run cannot go on (a slot out of restarts, a thread gone): the
    /// loop stops with it.
    fatal: Option<String>,
    /// Traders a worker refused, with the reason.
    refused: Vec<String>,
    /// The first frame of this build's protocol that did not decode.
    undecodable: Option<String>,
}

impl Failures {
    /// The run cannot go on, and why (the latest reason is the one told).
    pub(super) fn fatal(&mut self, why: String) {
        self.fatal = Some(why);
    }

    /// Why the run cannot go on, once.
    pub(super) fn take_fatal(&mut self) -> Option<String> {
        self.fatal.take()
    }

    /// A worker refused a trader for good: the run ends naming it.
    pub(super) fn refused(&mut self, what: String) {
        self.refused.push(what);
    }

    /// A frame of this build's protocol did not decode: the first is told.
    pub(super) fn undecodable(&mut self, what: impl FnOnce() -> String) {
        self.undecodable.get_or_insert_with(what);
    }

    /// The first undecodable frame, if any.
    pub(super) fn first_undecodable(&self) -> Option<&str> {
        self.undecodable.as_deref()
    }

    /// The traders refused, with the reasons.
    pub(super) fn refusals(&self) -> &[String] {
        &self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_fault_until_it_is_dropped() {
        let mut log = FaultLog::default();
        let first = log.record(0, 1, FaultKind::Crash, "first".into());
        let second = log.record(1, 2, FaultKind::Hang, "second".into());
        assert!(log.recovered(second).is_some());
        for k in 2..EVENTS_KEPT {
            log.record(0, k as u32, FaultKind::Stall, "more".into());
        }
        assert_eq!(log.get(first).map(|e| e.reason.as_str()), Some("first"));
        log.record(0, 9, FaultKind::Protocol, "one too many".into());
        assert_eq!(log.len(), EVENTS_KEPT);
        assert!(log.get(first).is_none(), "dropped");
        assert_eq!(log.get(second).map(|e| e.reason.as_str()), Some("second"));
        assert_eq!(log.recovered_count(), 1);
        assert_eq!(log.recent()[0].reason, "one too many");
        assert_eq!(log.all()[0].reason, "second");
    }
}
