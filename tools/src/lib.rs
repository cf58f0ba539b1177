//! The shmkline tools as a library; `src/main.rs` is the `shmkline-tools`
//! binary that `shmkline bench|chaos|soak` runs. On top of the engine,
//! never below it: nothing here is in a release `shmkline`.
//!
//! * [`args`], [`bench_args`]: what clap parses.
//! * [`commands`]: each command from its arguments; where `shmkline` is.
//! * [`bench`]: `shmkline bench ...`, figures with in-run baselines.
//! * [`chaos`]: random worker kills and freezes against a run, checked against the oracle.
//! * [`soak`]: a live run under chaos for minutes, every process's memory fitted.
//! * [`report`]: how a report is printed.

pub mod args;
pub mod bench;
pub mod bench_args;
pub mod chaos;
pub mod commands;
pub mod report;
pub mod soak;
