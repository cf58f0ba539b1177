//! The shmkline worker: maps the coordinator's candle store read-only and
//! runs traders over it. The library holds the one evaluator of trader
//! rules, which `shmkline backtest` also uses in-process, so `run` and
//! `backtest` agree bit for bit.
//!
//! * [`graph`]: the evaluation graph: every distinct indicator a node,
//!   computed once per series and candle, rules as flat programs over them.
//! * [`judge`]: traders over the store's series (or a backtest's), pass
//!   after pass, on the graph.
//! * [`kernel`]: the recursive indicators as state machines, after TA-Lib.
//! * [`point`]: an expression's value at a candle, computed on its own from
//!   a window: the definition the graph's values equal bit for bit (its
//!   tests and the `rule` fuzz target compare the two), and the kernels'
//!   home.
//! * [`verdict`]: a trader's verdict, cooldown and values on a window, by
//!   [`point`]: the reference the graph is checked against.
//! * [`runtime`]: the worker process as the coordinator runs it.

pub mod graph;
pub mod judge;
pub mod kernel;
mod knobs;
pub mod point;
pub mod runtime;
#[cfg(any(test, feature = "testing"))]
pub mod testkit;
pub mod verdict;

#[cfg(test)]
mod point_tests;
