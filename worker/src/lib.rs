//! The shmkline worker: maps the coordinator's candle store read-only and
//! runs traders over it. The library holds the one evaluator of trader
//! rules, which `shmkline backtest` also uses in-process, so `run` and
//! `backtest` agree bit for bit.
//!
//! * [`point`]: an expression's value at a candle, with a memo of values and
//!   recursive states shared by the traders of a series.
//! * [`kernel`]: the recursive indicators as state machines, after TA-Lib.
//! * [`verdict`]: a trader's verdict, cooldown and signal `values` on a window.
//! * [`eval`]: a trader over the store's series, pass after pass.
//! * [`runtime`]: the worker process as the coordinator runs it.

pub mod eval;
pub mod kernel;
mod knobs;
pub mod point;
pub mod runtime;
#[cfg(any(test, feature = "testing"))]
pub mod testkit;
pub mod verdict;

#[cfg(test)]
mod point_tests;
