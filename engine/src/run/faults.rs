//! What can go wrong with a worker: the kinds of fault, who caused one, and
//! the event recorded for `status` and the chaos report.

use std::time::Instant;

use serde::Serialize;

/// Why a worker was declared faulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum FaultKind {
    /// It died (channel closed or reaped).
    Crash,
    /// A PING missed its deadline.
    Hang,
    /// It answers PINGs but its evaluation makes no progress.
    Stall,
    /// It broke the protocol (malformed frame, no answer after every retry,
    /// wrong answer, not reading its channel).
    Protocol,
    /// Not a fault of the worker: the coordinator replaced it on purpose, so
    /// that its replacement judges again from a sink's behind point and the
    /// sink catches up.
    CatchUp,
}

/// Who caused a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Cause {
    /// A signal someone else sent (an operator, a chaos script).
    Outside,
    /// The worker itself (panic, abort, error exit, a fault in its code, a hang
    /// that is not a stop signal, a protocol violation).
    SelfInflicted,
    /// The coordinator, on purpose (a sink's catch-up): no backoff, no blame.
    Planned,
}

impl Cause {
    /// Its name in `status` and the metrics' `cause` label.
    pub(super) fn name(self) -> &'static str {
        match self {
            Cause::Outside => "outside",
            Cause::SelfInflicted => "self_inflicted",
            Cause::Planned => "planned",
        }
    }
}

/// One fault and its recovery, for `status` and the chaos report.
#[derive(Debug, Clone, Serialize)]
pub(super) struct SupervisionEvent {
    pub(super) slot: u32,
    pub(super) pid: u32,
    pub(super) kind: FaultKind,
    pub(super) cause: Option<Cause>,
    pub(super) reason: String,
    pub(super) exit: Option<String>,
    pub(super) detected_at_ms: i64,
    pub(super) recovered_at_ms: Option<i64>,
    /// From detection to the replacement answering a PING with all traders acked.
    pub(super) recovery_ms: Option<f64>,
    #[serde(skip)]
    pub(super) detected: Instant,
}
