//! The contract between the shmkline coordinator and its workers.
//!
//! * [`shm`]: the only module with `unsafe` code: named POSIX shared memory,
//!   the per-slot seqlock and the shared futex.
//! * [`store`]: the candle store laid out in that memory: a writer type for the
//!   coordinator and a read-only reader type for workers.
//! * [`frame`] and [`message`]: the binary IPC protocol between coordinator
//!   and workers (fixed header, bincode payload).
//! * [`trader`]: trader specs and their rules, as carried by ADD_TRADER.
//! * [`admit`]: a trader admitted where it enters: compiled, and its frames
//!   (its spec, its largest signal) measured against the frame limit.
//! * [`rule`]: the rule language's syntax: parser, AST, type checks, the
//!   warm-up a rule needs (the coordinator checks windows; the worker crate
//!   evaluates).
//! * [`names`] and [`candle`]: the validated names and the value types both
//!   sides agree on.
//! * [`bootstrap`]: the channel handshake of a new worker.
//! * [`control`]: the control socket's requests and their typed answers
//!   (`status`, the trader list...), shared by the coordinator and its clients.
//! * [`samples`]: bounded rings of measurements and their quantiles.
//! * [`exit`]: exit codes both binaries map errors to.
//! * [`clock`] and [`splitmix`]: the one wall clock and the one seeded
//!   pseudo-random generator, shared by both binaries.
//!
//! Under `--cfg loom` only the seqlock core is compiled, over loom's atomics, so
//! that `tests/loom_seqlock.rs` model-checks the very code the store runs.

#![cfg_attr(not(loom), deny(missing_docs))]

pub mod shm;

#[cfg(not(loom))]
pub mod admit;
#[cfg(not(loom))]
pub mod bootstrap;
#[cfg(not(loom))]
pub mod candle;
#[cfg(not(loom))]
pub mod clock;
#[cfg(not(loom))]
pub mod control;
#[cfg(not(loom))]
pub mod exit;
#[cfg(not(loom))]
pub mod frame;
#[cfg(not(loom))]
/// Fixed log2 histograms of durations (evaluation passes, signal latency).
pub mod histogram;
#[cfg(not(loom))]
pub mod message;
#[cfg(not(loom))]
pub mod names;
/// The rule language's syntax: parser, AST, checks, warm-up.
#[cfg(not(loom))]
pub mod rule;
/// Bounded rings of measurements and their quantiles.
#[cfg(not(loom))]
pub mod samples;
#[cfg(not(loom))]
pub mod splitmix;
#[cfg(not(loom))]
pub mod store;
#[cfg(not(loom))]
pub mod trader;

#[cfg(not(loom))]
pub use candle::{Candle, Interval};
#[cfg(not(loom))]
pub use names::{InstanceName, SymbolName};
