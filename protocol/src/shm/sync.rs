//! The atomics the seqlock core is written over: std's in a build, loom's
//! under `--cfg loom` so the model checker explores every interleaving and
//! every weak-memory outcome of the same source.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering, fence};
