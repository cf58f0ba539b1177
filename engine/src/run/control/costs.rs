//! What answering control requests costs the coordinator's loop, per kind
//! of request: shown in `status` (`control.loop_us`).

use std::time::Duration;

use protocol::control::{ControlLoad, LoopCost, RequestKind};
use protocol::samples::{Samples, quantile, saturate};

/// Loop time spent answering control requests, per kind: what `top` (a
/// `status` a refresh) and a Prometheus scrape (`metrics`) cost the
/// coordinator. `bench observe` reads it from `status`.
#[derive(Debug)]
pub(in crate::run) struct ControlCosts(Vec<(RequestKind, u64, Samples)>);

/// Durations (ns) kept per kind for the percentiles.
const COST_SAMPLES: usize = 1024;

impl Default for ControlCosts {
    fn default() -> Self {
        Self(
            RequestKind::ALL
                .into_iter()
                .map(|k| (k, 0, Samples::new(COST_SAMPLES)))
                .collect(),
        )
    }
}

impl ControlCosts {
    /// Counts one request of `kind` that took the loop `took`.
    pub(in crate::run) fn record(&mut self, kind: RequestKind, took: Duration) {
        if let Some((_, count, samples)) = self.0.iter_mut().find(|(k, _, _)| *k == kind) {
            *count += 1;
            samples.push(saturate(took.as_nanos()));
        }
    }

    /// Per kind asked at least once: count and recent p50, p99, max (µs,
    /// to the tenth).
    pub(in crate::run) fn status(&self) -> ControlLoad {
        let us = |ns: Option<u32>| ns.map(|ns| (f64::from(ns) / 100.0).round() / 10.0);
        let loop_us = self
            .0
            .iter()
            .filter(|(_, count, _)| *count > 0)
            .map(|(kind, count, samples)| {
                // One sort for the three figures.
                let mut sorted = samples.values().to_vec();
                sorted.sort_unstable();
                let q = |p| quantile(&sorted, p);
                let cost = LoopCost {
                    count: *count,
                    p50_us: us(q(0.5)),
                    p99_us: us(q(0.99)),
                    max_us: us(sorted.last().copied()),
                };
                (*kind, cost)
            })
            .collect();
        ControlLoad { loop_us }
    }
}
