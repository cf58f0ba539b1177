//! Where a run is in its life: running, draining (asked to stop: the feed
//! is stopped and the workers judge what was published), shutting down
//! (CLEANUP sent). It only moves forward.

use std::time::{Duration, Instant};

use protocol::control::RunState;

/// A stop asked for: the workers get up to `--shutdown-timeout` to judge
/// what was published before CLEANUP.
#[derive(Debug, Clone, Copy)]
pub(super) struct Drain {
    /// Since when.
    pub(super) since: Instant,
    /// The store's publish count then: what the workers are to judge.
    pub(super) target: u64,
    /// Why it stops.
    pub(super) why: &'static str,
}

/// The run's stage.
#[derive(Debug, Clone, Copy, Default)]
pub(super) enum Stage {
    /// Feeding and judging.
    #[default]
    Running,
    /// Stopping: the feed is stopped; the workers judge what was published.
    Draining(Drain),
    /// CLEANUP sent to every worker.
    ShuttingDown {
        /// Since when.
        since: Instant,
        /// When the drain before it began, if there was one.
        drain_began: Option<Instant>,
    },
}

impl Stage {
    /// Whether it still runs: no stop asked for.
    pub(super) fn running(&self) -> bool {
        matches!(self, Stage::Running)
    }

    /// Whether CLEANUP was sent.
    pub(super) fn shutting_down(&self) -> bool {
        matches!(self, Stage::ShuttingDown { .. })
    }

    /// Draining from now: the workers are to judge publish `target`.
    pub(super) fn drain(&mut self, target: u64, why: &'static str) {
        *self = Stage::Draining(Drain {
            since: Instant::now(),
            target,
            why,
        });
    }

    /// Shutting down from now.
    pub(super) fn shut_down(&mut self) {
        let drain_began = match self {
            Stage::Draining(drain) => Some(drain.since),
            _ => None,
        };
        *self = Stage::ShuttingDown {
            since: Instant::now(),
            drain_began,
        };
    }

    /// When a shutdown must be over: one `timeout` for the whole stop, from
    /// the drain if there was one, so what the drain used is not given
    /// again to CLEANUP (which still gets `at_least`).
    pub(super) fn shutdown_deadline(
        &self,
        timeout: Duration,
        at_least: Duration,
    ) -> Option<Instant> {
        match *self {
            Stage::ShuttingDown { since, drain_began } => {
                Some((drain_began.unwrap_or(since) + timeout).max(since + at_least))
            }
            _ => None,
        }
    }

    /// As `status` names it.
    pub(super) fn run_state(&self) -> RunState {
        match self {
            Stage::Running => RunState::Running,
            Stage::Draining(_) => RunState::Draining,
            Stage::ShuttingDown { .. } => RunState::ShuttingDown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shutdown_timeout_covers_the_drain_and_cleanup() {
        let mut stage = Stage::default();
        assert!(
            stage.running()
                && stage
                    .shutdown_deadline(Duration::ZERO, Duration::ZERO)
                    .is_none()
        );
        stage.drain(7, "SIGTERM");
        assert_eq!(stage.run_state(), RunState::Draining);
        let Stage::Draining(drain) = stage else {
            panic!("draining");
        };
        stage.shut_down();
        assert!(stage.shutting_down());
        let timeout = Duration::from_secs(60);
        let by = stage
            .shutdown_deadline(timeout, Duration::from_millis(250))
            .expect("a deadline");
        assert_eq!(by, drain.since + timeout, "counted from the drain");
        // A drain that used the whole time still leaves CLEANUP its moment.
        let by = stage
            .shutdown_deadline(Duration::ZERO, Duration::from_millis(250))
            .expect("a deadline");
        assert!(by > drain.since + Duration::from_millis(200));
    }
}
