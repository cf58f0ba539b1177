//! Requests to workers: sending within the budget, answers, retries with
//! capped exponential backoff and jitter, the trader window, PINGs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use protocol::frame;
use protocol::message::{Message, RequestId};
use protocol::splitmix::SplitMix64;

use super::coordinator::Coordinator;
use super::faults::FaultKind;
use super::slot::{Pending, Purpose, SendFailure, State};

/// Requests awaiting an answer per worker, at most; past it the worker is faulty.
pub const MAX_OUTSTANDING: usize = 64;

/// ADD_TRADERs in flight per worker; the rest follow as they are acknowledged.
pub const ADD_WINDOW: usize = 16;

/// Bytes of a worker's send budget that ADD_TRADERs leave free, for the
/// PINGs, REMOVEs, CLEANUP and re-sends that go out meanwhile.
pub const CONTROL_RESERVE: u64 = 8 * 1024;

/// Attempts per request (the first send and the retries).
pub const MAX_ATTEMPTS: u32 = 5;

/// First retry delay; doubled per attempt up to [`RETRY_CAP`], with +-25% jitter.
pub const RETRY_BASE: Duration = Duration::from_millis(100);

/// Longest retry delay.
pub const RETRY_CAP: Duration = Duration::from_secs(1);

/// The backoff before attempt `attempt + 1`.
/// With +-25% jitter, so the retries of many workers do not move in step.
pub(super) fn backoff(attempt: u32, jitter: &mut SplitMix64) -> Duration {
    let base = RETRY_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    base.min(RETRY_CAP).mul_f64(0.75 + 0.5 * jitter.unit())
}

impl Coordinator {
    pub(super) fn send(
        &mut self,
        s: usize,
        message: Message,
        purpose: Purpose,
    ) -> Result<(), SendFailure> {
        let budget = self.budget;
        let Some(inc) = self.slots[s].live.as_mut() else {
            return Err(SendFailure::Closed("no worker".into()));
        };
        if inc.pending.len() >= MAX_OUTSTANDING {
            return Err(SendFailure::Behind(format!(
                "{MAX_OUTSTANDING} requests unanswered"
            )));
        }
        inc.next_id += 1;
        let id = inc.next_id;
        let bytes = frame::encode(RequestId(id), &message)
            .map_err(|e| SendFailure::Encode(e.to_string()))?;
        let read_mark = inc.transmit(&bytes, budget)?;
        // PINGs are not retried: a missed PING is a hang, handled as such.
        let retry_at = match purpose {
            Purpose::Ping(_) => None,
            _ => Some(Instant::now() + backoff(1, &mut self.jitter)),
        };
        inc.pending.insert(
            id,
            Pending {
                bytes,
                purpose,
                attempts: 1,
                retry_at,
                read_mark,
            },
        );
        Ok(())
    }

    pub(super) fn request(&mut self, s: usize, message: Message, purpose: Purpose) {
        let kind = message.kind().name();
        if let Err(failure) = self.send(s, message, purpose) {
            match failure.kind() {
                Some(fault) => self.fault(
                    s,
                    fault,
                    format!("could not send {kind}: {}", failure.why()),
                ),
                None => {
                    self.failures.fatal(format!(
                        "could not encode a {kind} request: {} (a bug in shmkline, please report it)",
                        failure.why()
                    ));
                }
            }
        }
    }

    /// A worker's PROGRESS (sent when a pass ends, after its signals): its
    /// slot's confirmed publish moves as soon as the worker judged, so the
    /// feed's backpressure follows evaluation, not the PING timer. Taken
    /// once every trader of the slot is acknowledged (the worker sends it
    /// before acknowledging a trader queued meanwhile, and its figure
    /// already counts one queued before).
    pub(super) fn progressed(&mut self, s: usize, p: protocol::message::Progress) {
        let slot = &mut self.slots[s];
        let Some(inc) = slot.live.as_mut() else {
            return;
        };
        // Before that, its figure may be of no traders at all (a
        // replacement's first passes): taken, it would hide a stall.
        if inc.state != State::Ready {
            return;
        }
        slot.confirmed = slot.confirmed.max(p.last_publish);
        self.emitter.confirmed(s, slot.confirmed);
        let now = (p.last_publish, p.judged);
        if inc
            .progress
            .is_none_or(|((publish, judged), _)| now.0 > publish || now.1 > judged)
        {
            inc.progress = Some((now, Instant::now()));
        }
    }

    pub(super) fn answer(&mut self, s: usize, id: RequestId, message: Message) {
        let slot = &mut self.slots[s];
        let Some(inc) = slot.live.as_mut() else {
            return;
        };
        let Some(pending) = inc.pending.remove(&id.0) else {
            // An answer to a request already answered (a retry crossed the
            // first answer) or never made: nothing to do.
            tracing::debug!(
                slot = slot.id,
                id = id.0,
                kind = message.kind().name(),
                "answer to no pending request"
            );
            return;
        };
        // The worker reads in order: answering this request means it read
        // every frame up to the request's first copy.
        inc.read = (
            inc.read.0.max(pending.read_mark.0),
            inc.read.1.max(pending.read_mark.1),
        );
        match (pending.purpose, message) {
            (Purpose::Init, Message::Ready(ready)) => {
                tracing::info!(slot = slot.id, pid = ready.pid, "worker ready");
                inc.state = State::Syncing;
                inc.reached_ready = true;
                slot.failed_starts = 0;
                if slot.traders.is_empty() {
                    self.synced(s);
                } else {
                    inc.unsent = slot.traders.keys().cloned().collect();
                    self.send_traders(s);
                }
            }
            (Purpose::AddTrader(trader), Message::Ack) => {
                // Removed while its ADD was on the way: not held any more.
                if slot.traders.contains_key(&trader) {
                    inc.acked.insert(trader);
                }
                if inc.state == State::Syncing && inc.acked.len() == slot.traders.len() {
                    self.synced(s);
                } else {
                    self.send_traders(s);
                }
            }
            (Purpose::RemoveTrader(trader), Message::Ack) => {
                inc.removing.remove(&trader);
                tracing::info!(slot = slot.id, %trader, "trader removed");
            }
            (Purpose::Ping(sent), Message::Pong(pong)) => {
                let rtt = sent.elapsed();
                inc.rtt = Some(rtt);
                slot.rtt_hist.record(rtt);
                if let Some(synced) = inc.synced_at
                    && synced <= sent
                {
                    // Asked after every trader was acked: the progress it
                    // reports covers all of them.
                    slot.confirmed = slot.confirmed.max(pong.last_publish);
                    self.emitter.confirmed(s, slot.confirmed);
                    if let Some(ev) = slot.recovering.take()
                        && let Some(recovery_ms) = self.faults.recovered(ev)
                    {
                        tracing::info!(slot = slot.id, recovery_ms, "slot recovered");
                    }
                }
                if pong.gaps > slot.live_gaps {
                    tracing::error!(
                        slot = slot.id,
                        gaps = pong.gaps,
                        "the worker reports candles that left the ring unevaluated"
                    );
                    slot.gaps += pong.gaps - slot.live_gaps;
                    slot.live_gaps = pong.gaps;
                }
                // A long catch-up moves the candles judged before the
                // publish counter it covers: either is progress.
                let now = (pong.last_publish, pong.judged);
                if inc
                    .progress
                    .is_none_or(|((publish, judged), _)| now.0 > publish || now.1 > judged)
                {
                    inc.progress = Some((now, Instant::now()));
                }
                inc.last_pong = Some((Instant::now(), pong));
            }
            (Purpose::Cleanup, Message::CleanupComplete(released)) => {
                inc.state = State::Exited;
                tracing::info!(slot = slot.id, ?released, "worker cleaned up");
            }
            (purpose, Message::Nack { reason }) => {
                tracing::error!(slot = slot.id, ?purpose, %reason, "worker refused a request");
                match purpose {
                    Purpose::AddTrader(t) => {
                        // Refused for good: the slot stops expecting it, and the
                        // run will end with an error naming it.
                        slot.drop_trader(&t, &self.emitter);
                        self.failures
                            .refused(format!("{t} (worker {}: {reason})", slot.id));
                        let held = slot.traders.len();
                        if slot
                            .live
                            .as_ref()
                            .is_some_and(|i| i.state == State::Syncing && i.acked.len() == held)
                        {
                            self.synced(s);
                        } else {
                            // The refused one freed a place in the window.
                            self.send_traders(s);
                        }
                    }
                    _ => self.fault(
                        s,
                        FaultKind::Protocol,
                        format!("refused a request: {reason}"),
                    ),
                }
            }
            (purpose, other) => {
                let why = format!("answered {purpose:?} with {}", other.kind().name());
                self.fault(s, FaultKind::Protocol, why);
            }
        }
    }

    /// Sends the slot's next unacknowledged traders, each resuming from the
    /// slot's confirmed point, keeping at most [`ADD_WINDOW`] frames and
    /// the byte budget less [`CONTROL_RESERVE`] in flight: a trader set of
    /// large specs goes out as fast as the worker acknowledges it, never
    /// faster than its socket takes.
    pub(super) fn send_traders(&mut self, s: usize) {
        let slot = &self.slots[s];
        let Some(inc) = slot.live.as_ref() else {
            return;
        };
        let mut in_flight = BTreeSet::new();
        let mut in_flight_bytes = 0;
        for p in inc.pending.values() {
            if let Purpose::AddTrader(id) = &p.purpose {
                in_flight.insert(id.clone());
                in_flight_bytes += p.bytes.len() as u64;
            }
        }
        let byte_window = self.budget.bytes.saturating_sub(CONTROL_RESERVE);
        let mut next = Vec::new();
        let slot = &mut self.slots[s];
        let Some(inc) = slot.live.as_mut() else {
            return;
        };
        while in_flight.len() + next.len() < ADD_WINDOW {
            let Some(id) = inc.unsent.pop_front() else {
                break;
            };
            let Some(t) = slot.traders.get(&id) else {
                continue; // removed meanwhile
            };
            if inc.acked.contains(&id)
                || in_flight.contains(&id)
                || next.iter().any(|(queued, _)| *queued == id)
            {
                continue;
            }
            let resume_after = slot
                .starts
                .get(&id)
                .map_or(slot.confirmed, |&at| at.max(slot.confirmed));
            let message = Message::AddTrader {
                spec: t.clone(),
                resume_after,
            };
            let len = frame::encode(RequestId(0), &message).map_or(0, |f| f.len() as u64);
            // The first in flight always goes: a frame fits the budget.
            if !(in_flight.is_empty() && next.is_empty()) && in_flight_bytes + len > byte_window {
                inc.unsent.push_front(id);
                break;
            }
            in_flight_bytes += len;
            next.push((id, message));
        }
        for (id, message) in next {
            self.request(s, message, Purpose::AddTrader(id));
        }
    }

    /// Every trader of the slot is acknowledged: ready, and PINGed at once so
    /// the recovery is confirmed without waiting for the next interval.
    pub(super) fn synced(&mut self, s: usize) {
        if let Some(inc) = self.slots[s].live.as_mut() {
            inc.state = State::Ready;
            inc.synced_at = Some(Instant::now());
        }
        self.request(s, Message::Ping, Purpose::Ping(Instant::now()));
    }

    pub(super) fn retry_due(&mut self) {
        let now = Instant::now();
        for s in 0..self.slots.len() {
            let Some(inc) = self.slots[s].live.as_mut() else {
                continue;
            };
            let due: Vec<u64> = inc
                .pending
                .iter()
                .filter(|(_, p)| p.retry_at.is_some_and(|t| t <= now))
                .map(|(&id, _)| id)
                .collect();
            for id in due {
                let budget = self.budget;
                let Some(inc) = self.slots[s].live.as_mut() else {
                    break;
                };
                let Some(p) = inc.pending.get_mut(&id) else {
                    continue;
                };
                if p.attempts >= MAX_ATTEMPTS {
                    let why = format!("no answer to {:?} after {MAX_ATTEMPTS} attempts", p.purpose);
                    self.fault(s, FaultKind::Protocol, why);
                    break;
                }
                p.attempts += 1;
                p.retry_at = Some(now + backoff(p.attempts, &mut self.jitter));
                let bytes = p.bytes.clone();
                let attempt = p.attempts;
                self.slots[s].retries += 1;
                tracing::warn!(slot = s, id, attempt, "no answer yet: re-sending");
                let Some(inc) = self.slots[s].live.as_mut() else {
                    break;
                };
                match inc.transmit(&bytes, budget) {
                    Ok(_) => {}
                    // Too much unread for another copy now: this attempt
                    // is skipped, and a worker that never reads runs out of
                    // attempts (or misses a PING) like one that never answers.
                    Err(SendFailure::Behind(why)) => {
                        tracing::warn!(slot = s, id, attempt, reason = %why, "not re-sent for now");
                    }
                    Err(failure) => {
                        let fault = failure.kind().unwrap_or(FaultKind::Protocol);
                        self.fault(s, fault, format!("could not re-send: {}", failure.why()));
                        break;
                    }
                }
            }
        }
    }

    pub(super) fn ping_due(&mut self) {
        for s in 0..self.slots.len() {
            let Some(inc) = self.slots[s].live.as_ref() else {
                continue;
            };
            if !inc.live() {
                continue;
            }
            let outstanding = inc.pending.values().find_map(|p| match p.purpose {
                Purpose::Ping(sent) => Some(sent),
                _ => None,
            });
            // Its signals arriving since the PING prove it alive: the PONG
            // waits behind them in its socket.
            let sending = self
                .emitter
                .last_signals(s)
                .is_some_and(|t| t.elapsed() <= self.opts.ping_deadline);
            match outstanding {
                Some(sent) if sent.elapsed() > self.opts.ping_deadline && !sending => {
                    let waited = sent.elapsed();
                    self.fault(
                        s,
                        FaultKind::Hang,
                        format!("PING unanswered for {waited:?}"),
                    );
                }
                Some(_) => {}
                None if inc.state == State::Ready => {
                    let due = inc
                        .last_pong
                        .as_ref()
                        .is_none_or(|(at, _)| at.elapsed() >= self.opts.ping_interval);
                    if due {
                        self.request(s, Message::Ping, Purpose::Ping(Instant::now()));
                    }
                }
                None => {}
            }
        }
    }
}
