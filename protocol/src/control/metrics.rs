//! The answer to `metrics`: `status` and what only the metrics endpoint
//! needs, from one consistent snapshot of the loop.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::status::{Cause, Status};
use crate::Interval;
use crate::histogram::Log2Histogram;

/// Every counter `/metrics` exposes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// The status at the same moment.
    pub status: Status,
    /// Signals handed to at least one sink, per trader held now: `[id, n]`.
    pub signals_by_trader: Vec<(String, u64)>,
    /// Candle published to signal handed to stdout, every signal so far.
    pub signal_latency: Log2Histogram,
    /// Per slot, the evaluation passes of its workers, dead ones included.
    pub passes: Vec<SlotPasses>,
    /// Per slot and cause, the workers replaced.
    pub restarts: Vec<SlotRestarts>,
    /// Candles appended to the store, per interval.
    pub candles_written: BTreeMap<Interval, u64>,
}

/// One slot's evaluation passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPasses {
    /// The slot.
    pub slot: u32,
    /// Their durations.
    pub histogram: Log2Histogram,
}

/// One slot's replacements of one cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRestarts {
    /// The slot.
    pub slot: u32,
    /// Who caused them.
    pub cause: Cause,
    /// How many.
    pub count: u64,
}
