//! How long teardown waits for the outputs (stdout, the durable sinks, the
//! candle publisher), and how the operator cuts it short.
//!
//! An output is waited for while it makes progress and given up after
//! `--drain-timeout` without any. A stop the operator asked for (SIGINT or
//! SIGTERM, before or during teardown) also bounds the whole wait: at most
//! `--drain-timeout` after the first signal. A second signal ends every
//! wait at once. The OS-signal thread keeps counting through teardown, so a
//! signal is never ignored while the process still runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sink::Output;
use super::threads::OsSignals;

/// Teardown's clock: the signals seen, and the deadline they set.
pub(super) struct Stopping {
    signals: Arc<OsSignals>,
    /// `--drain-timeout`.
    drain: Duration,
    /// When teardown began: an output idle since before then gets the
    /// whole drain time from here.
    began: Instant,
    /// Set by the first signal (then plus the drain time), brought to now
    /// by a second.
    deadline: Option<Instant>,
    cut: bool,
}

impl Stopping {
    pub(super) fn new(signals: Arc<OsSignals>, drain: Duration) -> Self {
        let mut stopping = Self {
            signals,
            drain,
            began: Instant::now(),
            deadline: None,
            cut: false,
        };
        stopping.look();
        stopping
    }

    /// A new wait begins: an output idle since before now gets its whole
    /// time from now.
    pub(super) fn phase(&mut self) {
        self.began = Instant::now();
    }

    /// SIGINTs and SIGTERMs so far.
    fn count(&self) -> u32 {
        let (sigints, sigterms) = self.signals.counts();
        sigints + sigterms
    }

    /// Looks at the signals: the deadline they set, if any.
    pub(super) fn look(&mut self) -> Option<Instant> {
        let n = self.count();
        if n >= 2 && !self.cut {
            self.cut = true;
            self.deadline = Some(Instant::now());
            tracing::warn!("a second signal: not waiting for the outputs any longer");
        } else if n == 1 && self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.drain);
            tracing::info!(
                drain_timeout_ms = self.drain.as_millis() as u64,
                "stopping on a signal: the outputs get at most --drain-timeout (a second signal stops at once)"
            );
        }
        self.deadline
    }

    /// How long an output may still be waited for, given when it last
    /// moved (`moved`) and how long it may stay still (`still`): zero once
    /// it is to be given up.
    pub(super) fn left(&mut self, moved: Instant, still: Duration) -> Duration {
        let by_progress = self.began.max(moved) + still;
        let until = self.look().map_or(by_progress, |d| d.min(by_progress));
        until.saturating_duration_since(Instant::now())
    }

    /// Whether `output` is to be given up: no progress for the drain time,
    /// or the operator's deadline passed.
    pub(super) fn give_up(&mut self, output: &Output) -> bool {
        self.left(output.last_moved(), self.drain).is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn signals(sigint: u32, sigterm: u32) -> Arc<OsSignals> {
        let s = Arc::new(OsSignals::default());
        s.sigint.store(sigint, Ordering::SeqCst);
        s.sigterm.store(sigterm, Ordering::SeqCst);
        s
    }

    #[test]
    fn without_a_signal_an_output_is_waited_for_while_it_moves() {
        let mut s = Stopping::new(signals(0, 0), Duration::from_secs(30));
        assert_eq!(s.look(), None);
        let recently = Instant::now();
        assert!(s.left(recently, Duration::from_secs(30)) > Duration::from_secs(29));
        // Idle since long before teardown: the whole drain time from its start.
        let long_ago = Instant::now() - Duration::from_secs(600);
        assert!(s.left(long_ago, Duration::from_secs(30)) > Duration::from_secs(29));
        assert!(!s.cut);
    }

    #[test]
    fn a_signal_bounds_the_wait_and_a_second_ends_it() {
        let counts = signals(0, 1);
        let mut s = Stopping::new(Arc::clone(&counts), Duration::from_secs(3));
        let deadline = s.look().expect("a deadline");
        assert!(deadline <= Instant::now() + Duration::from_secs(3));
        // Moving all the time, yet bounded by the operator's deadline.
        assert!(s.left(Instant::now(), Duration::from_secs(3600)) <= Duration::from_secs(3));
        assert!(!s.cut);
        counts.sigint.fetch_add(1, Ordering::SeqCst);
        s.look();
        assert!(s.cut);
        assert_eq!(
            s.left(Instant::now(), Duration::from_secs(3600)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_signal_during_a_quiet_teardown_starts_the_deadline_then() {
        let counts = signals(0, 0);
        let mut s = Stopping::new(Arc::clone(&counts), Duration::from_millis(100));
        assert_eq!(s.look(), None);
        counts.sigterm.fetch_add(1, Ordering::SeqCst);
        assert!(s.look().is_some());
        assert!(!s.cut);
    }
}
