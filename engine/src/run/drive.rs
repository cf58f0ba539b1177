//! The coordinator's loop, read top-down in named phases: take an event,
//! see whether to stop, reap, finish a shutdown, restart, start and write
//! the feed, watch it, keep house, catch sinks up, run the timers. And the
//! stop itself: drain, then shutdown.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use protocol::message::Message;

use super::coordinator::Coordinator;
use super::events::Event;
use super::faults::FaultKind;
use super::feeding::backfill_reach;
use super::slot::{Purpose, State};
use super::spawn::Spawner;
use super::stage::Stage;

/// How often the segment's heartbeat is refreshed when nothing is published.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// Longest the loop sleeps between timer checks.
const TICK: Duration = Duration::from_millis(5);

/// CLEANUP's time at least, when the drain before it used up
/// `--shutdown-timeout`.
const CLEANUP_AT_LEAST: Duration = Duration::from_millis(250);

/// What a pass of the loop decided.
enum Pass {
    /// Go on with the next pass.
    Next,
    /// The loop is over: every worker is gone, or the stop's time ran out
    /// (stragglers are killed by the caller).
    Done,
}

/// Runs the loop until an orderly stop (`Ok`) or a failure the run cannot
/// go on from.
pub(super) fn drive(
    coord: &mut Coordinator,
    spawner: &Spawner,
    events: &Receiver<Event>,
) -> Result<()> {
    for s in 0..coord.slots.len() {
        coord.spawn_slot(s, spawner);
    }
    loop {
        coord.take_event(events)?;
        if let Pass::Done = coord.watch_stop_requests() {
            return Ok(());
        }
        coord.reap();
        if let Some(why) = coord.failures.take_fatal() {
            bail!("{why}: giving up");
        }
        if coord.stage.shutting_down() {
            if let Pass::Done = coord.shutdown_step() {
                return Ok(());
            }
            continue;
        }
        if coord.stage.running() {
            coord.restart_due(spawner);
        }
        coord.start_feed_when_ready()?;
        if coord.stage.running() {
            coord.write_feed()?;
        }
        coord.watch_live_feed()?;
        coord.keep_house();
        coord.catch_sinks_up();
        coord.timers();
        if coord.feed_done() && !coord.opts.stay {
            coord.begin_shutdown("the finite feed is done and every trader evaluated every candle");
        }
    }
}

impl Coordinator {
    /// Waits up to a tick for one event and acts on it.
    fn take_event(&mut self, events: &Receiver<Event>) -> Result<()> {
        match events.recv_timeout(TICK) {
            Ok(Event::Worker(slot, no, e)) => self.handle_worker(slot as usize, no, e),
            Ok(Event::Spawned(slot, no, result)) => self.spawned(slot as usize, no, result),
            Ok(Event::OsSignal) => {} // counted in os_signals, acted on below
            Ok(Event::Control(req)) => self.control(req),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the event channel closed"),
        }
        Ok(())
    }

    /// A stop asked for (a signal, the parent gone, stdout closed) begins
    /// the drain; a drain whose workers judged everything, or whose time
    /// ran out, becomes a shutdown. A second signal ends the loop at once.
    fn watch_stop_requests(&mut self) -> Pass {
        let (sigints, sigterms) = self.os_signals.counts();
        if sigints + sigterms >= 2 {
            tracing::warn!("a second signal: killing the workers without waiting");
            return Pass::Done;
        }
        if sigints + sigterms > 0 {
            self.begin_drain(if sigints > 0 { "SIGINT" } else { "SIGTERM" });
        }
        if self
            .opts
            .parent
            .is_some_and(|p| nix::unistd::getppid().as_raw() != p)
        {
            self.begin_drain("the parent process exited (--exit-with-parent)");
        }
        if self.emitter.stdout_closed() {
            self.begin_drain("stdout was closed (its reader went away)");
        }
        if let Stage::Draining(drain) = self.stage
            && (!self.feeding.started()
                || self.drained(drain.target)
                || drain.since.elapsed() >= self.opts.shutdown_timeout)
        {
            self.begin_shutdown(drain.why);
        }
        Pass::Next
    }

    /// While shutting down: answers still owed go out again, and the loop
    /// is done once every worker is gone or the stop's time is up.
    fn shutdown_step(&mut self) -> Pass {
        self.retry_due();
        if self.shutdown_complete() {
            return Pass::Done;
        }
        // One --shutdown-timeout for the whole stop: what the drain used
        // is not given again to CLEANUP (which still gets a moment: a
        // worker answers it in microseconds).
        let by = self
            .stage
            .shutdown_deadline(self.opts.shutdown_timeout, CLEANUP_AT_LEAST);
        if by.is_some_and(|by| Instant::now() >= by) {
            return Pass::Done; // stragglers are killed by the caller
        }
        Pass::Next
    }

    /// The feed starts once every slot's traders are acknowledged, so no
    /// candle precedes a trader.
    fn start_feed_when_ready(&mut self) -> Result<()> {
        if self.feeding.started()
            || !self.stage.running()
            || !self
                .slots
                .iter()
                .all(|s| s.live.as_ref().is_some_and(|i| i.state == State::Ready))
        {
            return Ok(());
        }
        tracing::info!(feed = self.opts.feed.kind(), pace = ?self.opts.pace, "feed started");
        self.feeding.start(
            &self.opts.feed,
            &self.inst.store,
            &self.opts.store.intervals(),
        )
    }

    /// Writes the batches of a finite feed due by now, held back by the
    /// slowest slot's confirmed progress unless `--no-backpressure`.
    fn write_feed(&mut self) -> Result<()> {
        let slowest = self.slowest();
        let backpressure = self.opts.backpressure.then_some(slowest);
        self.feeding
            .step(&self.inst.store, &self.emitter, backpressure, slowest)
    }

    /// A live feed whose thread ended stops the run; once every series is
    /// first live, each durable sink whose position is older than the
    /// backfill's reach is told so.
    fn watch_live_feed(&mut self) -> Result<()> {
        self.feeding.check_live()?;
        if self.feeding.all_live_first()
            && let Some(reach) = backfill_reach(&self.opts.instance)
        {
            self.emitter.check_reach(&reach);
        }
        Ok(())
    }

    /// The memory samples and the segment's heartbeat, when due.
    fn keep_house(&mut self) {
        self.memory
            .tick(self.slots.iter().enumerate().map(|(k, slot)| {
                (
                    k,
                    slot.live
                        .as_ref()
                        .filter(|i| i.child.is_some())
                        .map(|i| i.pid),
                )
            }));
        if self.last_heartbeat.elapsed() >= HEARTBEAT {
            self.last_heartbeat = Instant::now();
            self.inst.store.lock().heartbeat();
        }
    }

    /// A sink behind whose queue drained is caught up (not while stopping:
    /// the workers then judge what is published and go); a catch-up whose
    /// publish every slot confirmed is done.
    fn catch_sinks_up(&mut self) {
        if self.stage.running()
            && let Some(from) = self.emitter.take_catch_up()
        {
            self.catch_up(&from);
        }
        if let Some(target) = self.catching_up_to
            && self.slots.iter().all(|slot| slot.confirmed >= target)
        {
            self.catching_up_to = None;
            self.emitter.caught_up();
            tracing::info!(
                publish = target,
                "the catch-up is done: every worker judged again up to where the run was"
            );
        }
    }

    /// Retries, PINGs and the stall watchdog.
    fn timers(&mut self) {
        // A stdout that does not keep up stops the reader threads from
        // reading the workers' answers: no deadline means anything then.
        let grace = self.opts.ping_deadline.max(self.opts.ping_interval);
        if !self.emitter.output_stalled(grace) {
            self.retry_due();
            self.ping_due();
            self.stall_due();
        }
    }

    /// A sink fell behind and has drained its queue: every worker is
    /// replaced, its replacement judging again from `from[slot]` (the
    /// publish the slot had confirmed when the sink fell behind), so the
    /// sink gets the signals it was not handed; every other sink drops them
    /// as repeats. Candles that left the ring since are a gap, reported as
    /// any other.
    fn catch_up(&mut self, from: &[u64]) {
        self.catching_up_to = Some(self.inst.store.lock().stats().publishes);
        for s in 0..self.slots.len() {
            let point = from.get(s).copied().unwrap_or(0);
            let slot = &mut self.slots[s];
            slot.confirmed = slot.confirmed.min(point);
            self.emitter.confirmed(s, slot.confirmed);
            let why = format!("a sink's catch-up: judging again from publish {point}");
            self.fault(s, FaultKind::CatchUp, why);
        }
    }

    /// Stops the feed, then shuts down once every worker has judged what
    /// was published before (or `--shutdown-timeout` has passed): a candle
    /// that reached the store before SIGTERM has its signals printed.
    pub(super) fn begin_drain(&mut self, why: &'static str) {
        if !self.stage.running() {
            return;
        }
        self.feeding.stop_live();
        let target = self.inst.store.lock().stats().publishes;
        tracing::info!(
            reason = why,
            publish = target,
            "stopping: the feed is stopped; the workers judge what was published"
        );
        self.stage.drain(target, why);
    }

    /// Whether every slot's live worker has judged publish `target` (a
    /// slot whose worker died meanwhile is not restarted: nothing to wait
    /// for).
    fn drained(&self, target: u64) -> bool {
        self.slots
            .iter()
            .all(|slot| !slot.live.as_ref().is_some_and(|i| i.live()) || slot.confirmed >= target)
    }

    /// CLEANUP to every live worker; none is restarted from now.
    pub(super) fn begin_shutdown(&mut self, why: &str) {
        if self.stage.shutting_down() {
            return;
        }
        tracing::info!(reason = why, "shutting down: CLEANUP to every worker");
        self.stage.shut_down();
        for s in 0..self.slots.len() {
            self.slots[s].restart_at = None;
            let live = self.slots[s].live.as_ref().is_some_and(|i| i.live());
            if live {
                if let Some(inc) = self.slots[s].live.as_mut() {
                    inc.pending.clear();
                }
                self.request(s, Message::Cleanup, Purpose::Cleanup);
                if let Some(inc) = self.slots[s].live.as_mut()
                    && inc.state != State::Dead
                {
                    inc.state = State::Cleaning;
                }
            }
        }
    }

    /// Whether every worker is gone: none spawning, none alive or cleaning.
    fn shutdown_complete(&self) -> bool {
        self.slots.iter().all(|slot| {
            !slot.spawning
                && slot
                    .live
                    .as_ref()
                    .is_none_or(|i| i.child.is_none() && i.state != State::Cleaning)
        })
    }
}
