//! Supervision: faults recorded and their workers killed, reaping, the
//! cause of each death, blame on the trader being evaluated, the restart
//! policy (intensity limit, backoff) and the stall watchdog.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal as OsSignal, kill};
use nix::unistd::Pid;

use super::coordinator::Coordinator;
use super::faults::{Cause, FaultKind};
use super::slot::State;
use super::spawn::Spawner;
use crate::process::kill_and_reap;

/// How long a worker whose channel closed may take to exit before it is killed.
pub(super) const CRASH_GRACE: Duration = Duration::from_millis(100);

/// Classifies a worker's exit: was it killed from outside, or did it fail?
pub(super) fn classify(status: &ExitStatus) -> Cause {
    match status.signal() {
        Some(sig)
            if [
                libc_sig(OsSignal::SIGKILL),
                libc_sig(OsSignal::SIGTERM),
                libc_sig(OsSignal::SIGINT),
                libc_sig(OsSignal::SIGHUP),
            ]
            .contains(&sig) =>
        {
            Cause::Outside
        }
        // SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE...: raised by its own code.
        Some(_) => Cause::SelfInflicted,
        // An exit the coordinator did not ask for, whatever the code.
        None => Cause::SelfInflicted,
    }
}

pub(super) fn libc_sig(s: OsSignal) -> i32 {
    s as i32
}

/// Whether `pid` is stopped by a signal (state T or t in /proc).
pub(super) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
        })
        .unwrap_or(false)
}

impl Coordinator {
    /// Declares the slot's live worker faulty: record it, kill it; it is
    /// replaced once reaped.
    pub(super) fn fault(&mut self, s: usize, kind: FaultKind, why: String) {
        let slot = &mut self.slots[s];
        let Some(inc) = slot.live.as_mut() else {
            return;
        };
        if inc.fault.is_some() || matches!(inc.state, State::Exited) {
            return;
        }
        // Never signal a pid already reaped: it may belong to another process now.
        let alive = inc.child.is_some();
        if inc.state == State::Cleaning {
            // Shutting down anyway: just make sure it goes.
            if alive {
                let _ = kill(Pid::from_raw(inc.pid as i32), OsSignal::SIGKILL);
            }
            return;
        }
        // Stopped by a signal (state T) means someone else froze it, whatever
        // symptom gave it away (a missed PING, a retry that ran out).
        inc.stopped = alive && is_stopped(inc.pid);
        let _span = tracing::info_span!("worker", slot = slot.id, pid = inc.pid).entered();
        tracing::warn!(slot = slot.id, pid = inc.pid, ?kind, reason = %why, "worker is faulty: replacing it");
        if alive && kind == FaultKind::Crash {
            // It is dying already: give it a moment to exit by itself, so its
            // exit status (not our kill) says why.
            inc.kill_at = Some(Instant::now() + CRASH_GRACE);
        } else if alive {
            let _ = kill(Pid::from_raw(inc.pid as i32), OsSignal::SIGKILL);
        }
        inc.state = State::Dead;
        inc.pending.clear();
        inc.fault = Some(self.faults.record(slot.id, inc.pid, kind, why));
    }

    /// A failure the worker caused (or a failed start): counts against the
    /// slot's restart intensity and delays the restart; past the limit the
    /// run cannot go on.
    pub(super) fn self_inflicted(&mut self, s: usize, why: String) {
        let (period, limit) = (self.opts.restart_period, self.opts.restart_limit);
        if let Err(fatal) = self.slots[s].failed_itself(&why, period, limit) {
            self.failures.fatal(fatal);
        }
    }

    /// Reaps exited workers, records why each went, and schedules replacements.
    pub(super) fn reap(&mut self) {
        for s in 0..self.slots.len() {
            let Some(inc) = self.slots[s].live.as_mut() else {
                continue;
            };
            // A crash seen on the channel gets a moment to exit by itself.
            if inc.kill_at.is_some_and(|t| t <= Instant::now())
                && let Some(child) = inc.child.as_mut()
            {
                inc.kill_at = None;
                let _ = child.kill();
            }
            let Some(child) = inc.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            inc.child = None;
            tracing::info!(slot = s, pid = inc.pid, %status, "worker exited");
            match inc.state {
                State::Cleaning | State::Exited => {}
                State::Dead => {}
                _ => {
                    // Died before anyone noticed otherwise.
                    self.fault(s, FaultKind::Crash, format!("exited ({status})"));
                }
            }
            let Some(inc) = self.slots[s].live.as_mut() else {
                continue;
            };
            if inc.state != State::Dead {
                continue;
            }
            // Why did it go?
            let ev = inc.fault;
            let event = ev.and_then(|id| self.faults.get(id));
            let cause = match event.map(|e| e.kind) {
                Some(FaultKind::CatchUp) => Cause::Planned,
                _ if inc.stopped => Cause::Outside,
                Some(FaultKind::Hang | FaultKind::Stall | FaultKind::Protocol) => {
                    Cause::SelfInflicted
                }
                _ => classify(&status),
            };
            // Only a crash can be pinned on the trader being evaluated;
            // a hang or a protocol fault says nothing about it.
            let blamed =
                event.is_some_and(|e| matches!(e.kind, FaultKind::Crash | FaultKind::Stall));
            let why = event.map_or_else(String::new, |e| e.reason.clone());
            let never_ready = !inc.reached_ready;
            if let Some(id) = ev {
                self.faults.reaped(id, cause, status.to_string());
            }
            let slot = &mut self.slots[s];
            if never_ready && cause == Cause::SelfInflicted {
                slot.failed_starts += 1;
            }
            self.emitter.accept(s, None);
            if let Some(link) = slot.retire_live() {
                self.graveyard.push(link);
            }
            slot.restarts += 1;
            *slot.restarts_by_cause.entry(cause).or_default() += 1;
            slot.recovering = ev;
            match cause {
                Cause::Outside | Cause::Planned => slot.restart_at = Some(Instant::now()),
                Cause::SelfInflicted if blamed => {
                    let limit = self.opts.quarantine_after;
                    self.quarantine
                        .blame(&mut self.slots[s], &self.emitter, limit);
                    self.self_inflicted(s, why);
                }
                Cause::SelfInflicted => self.self_inflicted(s, why),
            }
        }
        // Reader threads of dead workers end once their process is gone.
        let mut i = 0;
        while i < self.graveyard.len() {
            if self.graveyard[i].is_finished() {
                self.graveyard.swap_remove(i).join();
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn restart_due(&mut self, spawner: &Spawner) {
        let now = Instant::now();
        for s in 0..self.slots.len() {
            let slot = &self.slots[s];
            if slot.live.is_none() && !slot.spawning && slot.restart_at.is_some_and(|t| t <= now) {
                self.spawn_slot(s, spawner);
            }
        }
    }

    /// A worker that still answers PINGs but whose progress (neither the
    /// batches it covered nor the candles it judged) has not moved for
    /// `stall_timeout` while newer batches wait is stuck in its evaluation.
    /// A slow one is not: its passes are bounded and report as they go. The
    /// clock runs from the later of its last progress and the moment a batch
    /// it had not covered was first seen waiting: after a quiet minute (a
    /// live feed waiting out a rate limit), the next batch is not late.
    pub(super) fn stall_due(&mut self) {
        let published = self.inst.store.lock().stats().publishes;
        let now = Instant::now();
        for s in 0..self.slots.len() {
            let Some(inc) = self.slots[s].live.as_mut() else {
                continue;
            };
            if inc.state != State::Ready {
                continue;
            }
            let behind = inc
                .progress
                .is_some_and(|((value, _), _)| value < published);
            inc.behind_since = if behind {
                Some(inc.behind_since.unwrap_or(now))
            } else {
                None
            };
            // Signals arriving are progress too: its reports of candles
            // judged may wait behind them in its socket.
            let signalled = self.emitter.last_signals(s);
            if let Some(((value, _), since)) = inc.progress
                && let Some(waiting) = inc.behind_since
                && value < published
                && signalled
                    .map_or(since, |t| t.max(since))
                    .max(waiting)
                    .elapsed()
                    > self.opts.stall_timeout
            {
                let why = format!(
                    "its evaluation made no progress for {:?} (stuck at batch {value} of {published})",
                    since.elapsed()
                );
                self.fault(s, FaultKind::Stall, why);
            }
        }
    }

    /// SIGKILLs every worker still alive and reaps it.
    pub(super) fn kill_stragglers(&mut self) {
        for slot in &mut self.slots {
            if let Some(inc) = slot.live.as_mut()
                && let Some(mut child) = inc.child.take()
            {
                if inc.state == State::Cleaning {
                    // Not a run fault: the deadline is exactly for this case.
                    tracing::warn!(
                        slot = slot.id,
                        pid = inc.pid,
                        "no CLEANUP_COMPLETE by the deadline: killing it"
                    );
                    inc.state = State::Exited;
                }
                kill_and_reap(&mut child);
            }
        }
    }
}
