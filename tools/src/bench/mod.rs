//! `shmkline bench`: figures for the store, each next to a baseline measured
//! in the same run on the same machine, so ratios are meaningful on shared,
//! noisy hosts where absolute numbers are not.

pub mod backfill;
pub mod burst;
pub mod child;
pub mod fanout;
pub mod feed;
pub mod ipc;
pub mod nats;
pub mod observe;
pub mod sinks;
pub mod store;
pub mod traders;
pub mod wake;

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use engine::process::kill_and_reap;
use nix::time::{ClockId, clock_gettime};
use protocol::samples::quantile;
use serde::Serialize;

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one machine.
pub fn mono_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// Latency distribution of one measurement, in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub samples: usize,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest sample.
    pub max_ns: u64,
}

impl Percentiles {
    /// Sorts `samples` and summarises them; `None` if empty.
    pub fn of(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| quantile(samples, q).unwrap_or(0);
        Some(Self {
            samples: samples.len(),
            p50_ns: at(0.50),
            p99_ns: at(0.99),
            max_ns: at(1.0),
        })
    }
}

/// A figure checked against its target, in the report itself so scripts need
/// no JSON tooling to tell whether a target was met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured and how it is compared.
    pub name: &'static str,
    /// The measured value.
    pub value: f64,
    /// The limit it must not exceed (or, for `min` targets, must reach).
    pub limit: f64,
    /// Whether the target is met.
    pub met: bool,
}

impl Target {
    /// `value <= limit`.
    pub fn at_most(name: &'static str, value: f64, limit: f64) -> Self {
        Self {
            name,
            value,
            limit,
            met: value <= limit,
        }
    }

    /// `value >= limit`.
    pub fn at_least(name: &'static str, value: f64, limit: f64) -> Self {
        Self {
            name,
            value,
            limit,
            met: value >= limit,
        }
    }
}

/// Median of per-round figures.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `value / baseline`, rounded to two decimals.
pub fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        (value / baseline * 100.0).round() / 100.0
    } else {
        f64::NAN
    }
}

/// A child process of this binary (`shmkline-tools bench-child ...`) that is killed
/// and reaped when dropped, so a failed benchmark leaves no process behind.
pub struct BenchChild {
    child: Option<Child>,
}

impl BenchChild {
    /// Starts `shmkline-tools bench-child <args>` with stdout piped.
    pub fn spawn(args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the shmkline-tools executable")?;
        let child = Command::new(exe)
            .arg("bench-child")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a benchmark child process")?;
        Ok(Self { child: Some(child) })
    }

    /// Waits for the child and parses the JSON object it printed.
    pub fn finish<T: serde::de::DeserializeOwned>(mut self) -> Result<T> {
        let child = self.child.take().context("child already finished")?;
        let out = child
            .wait_with_output()
            .context("waiting for a benchmark child")?;
        anyhow::ensure!(
            out.status.success(),
            "benchmark child failed ({}); its stderr is above",
            out.status
        );
        serde_json::from_slice(&out.stdout).context("parsing a benchmark child's report")
    }
}

impl Drop for BenchChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}
