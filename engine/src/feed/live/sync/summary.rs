//! The series as `status` shows them: how many are live, behind, failing
//! (named, with their last error), repairing, and the gaps long outages
//! left, published by the sync thread every [`SUMMARY_EVERY`].

use std::time::{Duration, Instant};

use protocol::control::{SeriesNote, SeriesSummary};

use super::super::health::LISTED;
use super::{Phase, Sync};
use crate::locked::lock;

/// How often the series summary is published for `status`.
pub(super) const SUMMARY_EVERY: Duration = Duration::from_millis(250);

impl Sync {
    pub(super) fn publish_summary(&mut self) {
        self.summary_at = Instant::now();
        let mut sum = SeriesSummary {
            skipped_symbols: self.skipped.clone(),
            ..SeriesSummary::default()
        };
        let now = Instant::now();
        for s in &self.series {
            let name = || format!("{} {}", s.stream.0, s.stream.1);
            match s.phase {
                Phase::Live => sum.live += 1,
                Phase::Unsubscribed => sum.behind += 1,
                Phase::Behind { due } => {
                    sum.behind += 1;
                    if s.failures > 0 && s.last_error.is_some() {
                        sum.failing += 1;
                        if sum.failing_series.len() < LISTED {
                            sum.failing_series.push(SeriesNote {
                                series: name(),
                                count: u64::from(s.failures),
                                detail: format!(
                                    "{} (retry in {} ms)",
                                    s.last_error.as_deref().unwrap_or(""),
                                    due.saturating_duration_since(now).as_millis()
                                ),
                            });
                        }
                    }
                }
            }
            sum.repairing += usize::from(s.repair.is_some());
            if s.missing > 0 && sum.gaps.len() < LISTED {
                sum.gaps.push(SeriesNote {
                    series: name(),
                    count: s.missing,
                    detail: "before the newest candles backfilled: older than the ring's need"
                        .into(),
                });
            }
        }
        *lock(&self.health.series) = sum;
    }
}
