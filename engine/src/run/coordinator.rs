//! The coordinator: one thread owns the store writer and every slot, its
//! state grouped into owned parts (the feed side, the stage, the fault
//! log, the quarantine, the failures, the control costs); everything else
//! reaches it as an [`Event`]. Here: the coordinator made, and its workers
//! spawned, met and heard from. Its loop is in `drive`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender};
use std::time::Instant;

use anyhow::Result;
use protocol::message::{Init, Message};
use protocol::splitmix::SplitMix64;
use protocol::trader::TraderSpec;

use super::control::costs::ControlCosts;
use super::emit::Emitter;
use super::events::Event;
use super::faults::{Failures, FaultKind, FaultLog};
use super::feeding::Feeding;
use super::link::{Budget, FromWorker, Link};
use super::memory::MemoryWatch;
use super::options::RunOptions;
use super::quarantine::Quarantine;
use super::slot::{Incarnation, Purpose, Slot, State};
use super::spawn::{Spawned, Spawner};
use super::stage::Stage;
use super::threads::OsSignals;
use super::wire::LoopParts;
use crate::feed::Source;
use crate::feed::pump::Pump;
use crate::instance::Instance;
use crate::process::kill_and_reap;

/// The coordinator's state: what a run was told, its instance, its slots,
/// and its parts.
pub(super) struct Coordinator {
    pub(super) opts: RunOptions,
    pub(super) inst: Instance,
    pub(super) slots: Vec<Slot>,
    /// Where the threads it starts (a spawn's delivery, a reader thread)
    /// send their events.
    events_tx: SyncSender<Event>,
    /// The feed and the candle publisher.
    pub(super) feeding: Feeding,
    /// Where signals go: checked and printed on the reader threads.
    pub(super) emitter: Arc<Emitter>,
    pub(super) started: Instant,
    pub(super) jitter: SplitMix64,
    /// Running, draining or shutting down.
    pub(super) stage: Stage,
    pub(super) budget: Budget,
    /// Faults and recoveries.
    pub(super) faults: FaultLog,
    /// Black boxes, strikes, quarantined traders.
    pub(super) quarantine: Quarantine,
    /// What ends the run in error.
    pub(super) failures: Failures,
    /// Links of dead incarnations whose reader threads are finishing.
    pub(super) graveyard: Vec<Link>,
    /// A catch-up under way: done once every slot has confirmed this publish.
    pub(super) catching_up_to: Option<u64>,
    /// When the segment's heartbeat was last refreshed.
    pub(super) last_heartbeat: Instant,
    /// OS signals counted by the signal thread (never dropped).
    pub(super) os_signals: Arc<OsSignals>,
    /// Every process's memory and its growth.
    pub(super) memory: MemoryWatch,
    /// Where `--metrics` listens (its port chosen when 0 was given).
    pub(super) metrics_addr: Option<SocketAddr>,
    /// Loop time spent answering control requests.
    pub(super) control_costs: ControlCosts,
}

impl Coordinator {
    /// The coordinator of a run: its slots (traders spread round-robin; a
    /// slot keeps its traders across worker replacements), one black box
    /// per slot, the finite feed if any (its known symbols registered and
    /// published at once), and what it takes from the wiring.
    pub(super) fn new(
        opts: RunOptions,
        inst: Instance,
        source: Option<Source>,
        parts: LoopParts,
    ) -> Result<Self> {
        let LoopParts {
            events_tx,
            emitter,
            os_signals,
            publishing,
            metrics_addr,
        } = parts;
        let mut assignment: Vec<BTreeMap<String, TraderSpec>> =
            vec![BTreeMap::new(); opts.workers as usize];
        for (k, spec) in opts.traders.iter().enumerate() {
            assignment[k % opts.workers as usize].insert(spec.id.clone(), spec.clone());
        }
        let slots = assignment
            .into_iter()
            .enumerate()
            .map(|(id, traders)| Slot::new(id as u32, traders))
            .collect();
        let quarantine = Quarantine::new(&opts.instance, opts.workers);
        let generation = inst.store.lock().generation();
        let mut pump = source
            .map(|source| Pump::new(source, &opts.store.intervals(), &opts.aggregate, opts.pace));
        if let Some(pump) = pump.as_mut() {
            pump.register_known(&mut inst.store.lock())?;
        }
        inst.store.lock().publish();
        let mut feeding = Feeding::new(pump);
        if let Some((publisher, tap)) = publishing {
            feeding.publish_candles(publisher, tap);
        }
        let coord = Coordinator {
            jitter: SplitMix64::new(generation),
            inst,
            slots,
            events_tx,
            feeding,
            emitter,
            started: Instant::now(),
            stage: Stage::default(),
            budget: Budget::from_system(),
            faults: FaultLog::default(),
            quarantine,
            failures: Failures::default(),
            graveyard: Vec::new(),
            catching_up_to: None,
            last_heartbeat: Instant::now(),
            os_signals,
            memory: MemoryWatch::new(opts.memory, opts.workers as usize),
            metrics_addr,
            control_costs: ControlCosts::default(),
            opts,
        };
        for slot in &coord.slots {
            slot.tell_holds(&coord.emitter);
        }
        Ok(coord)
    }

    pub(super) fn spawn_slot(&mut self, s: usize, spawner: &Spawner) {
        self.quarantine.clear(s);
        let slot = &mut self.slots[s];
        slot.incarnations += 1;
        slot.spawning = true;
        slot.restart_at = None;
        let (id, no) = (slot.id, slot.incarnations);
        let tx = self.events_tx.clone();
        let requested = spawner.request(
            id,
            Box::new(move |result| {
                let event = Event::Spawned(id, no, result.map_err(|e| format!("{e:#}")));
                // During teardown the loop is gone: the new worker must not be
                // left behind unreaped.
                if let Err(mpsc::SendError(Event::Spawned(_, _, Ok(mut spawned)))) = tx.send(event)
                {
                    kill_and_reap(&mut spawned.child);
                }
            }),
        );
        if let Err(e) = requested {
            self.failures
                .fatal(format!("the spawner thread is gone: {e:#}"));
        }
    }

    pub(super) fn spawned(&mut self, s: usize, no: u64, result: Result<Spawned, String>) {
        let slot = &mut self.slots[s];
        if no != slot.incarnations {
            // Cannot happen while `spawning` gates new spawns; never leak a child if it does.
            if let Ok(mut spawned) = result {
                kill_and_reap(&mut spawned.child);
            }
            return;
        }
        slot.spawning = false;
        let mut spawned = match result {
            Ok(spawned) => spawned,
            Err(why) => {
                tracing::error!(slot = slot.id, reason = %why, "could not start a worker");
                slot.failed_starts += 1;
                self.self_inflicted(s, format!("could not start: {why}"));
                return;
            }
        };
        if self.stage.shutting_down() {
            kill_and_reap(&mut spawned.child);
            return;
        }
        let pid = spawned.child.id();
        let tx = self.events_tx.clone();
        let id = slot.id;
        let emitter = self.emitter.clone();
        let span = tracing::info_span!("worker", slot = id, pid);
        let link = match Link::start(id, span, spawned.to_worker, spawned.from_worker, move |e| {
            match e {
                FromWorker::Frame(_, Message::Signal(signal)) => {
                    emitter.signal(id as usize, no, &signal);
                }
                FromWorker::Frame(_, Message::Signals(signals)) => {
                    emitter.signals(id as usize, no, &signals);
                }
                // The loop is gone only during teardown; then the event is moot.
                e => {
                    let _ = tx.send(Event::Worker(id, no, e));
                }
            }
        }) {
            Ok(link) => link,
            Err(e) => {
                kill_and_reap(&mut spawned.child);
                self.failures
                    .fatal(format!("could not start a reader thread: {e:#}"));
                return;
            }
        };
        tracing::info!(slot = id, pid, incarnation = no, "worker spawned");
        slot.live_gaps = 0;
        self.emitter.accept(id as usize, Some(no));
        slot.live = Some(Incarnation::new(no, pid, spawned.child, link));
        let init = Init {
            instance: self.opts.instance.to_string(),
            generation: self.inst.store.lock().generation(),
            worker_id: id,
        };
        self.request(s, Message::Init(init), Purpose::Init);
    }

    pub(super) fn handle_worker(&mut self, s: usize, no: u64, event: FromWorker) {
        let Some(inc) = self.slots[s].live.as_ref() else {
            return;
        };
        if inc.no != no {
            return; // from an incarnation already replaced
        }
        match event {
            FromWorker::Closed => {
                let inc = self.slots[s].live.as_mut().expect("checked above");
                if inc.state == State::Cleaning {
                    tracing::warn!(slot = s, "channel closed without CLEANUP_COMPLETE");
                    inc.state = State::Exited;
                } else {
                    self.fault(
                        s,
                        FaultKind::Crash,
                        "its channel closed (the process died)".into(),
                    );
                }
            }
            FromWorker::Malformed { error, len, kind } if error.is_payload_error() => {
                // A frame of this protocol whose payload does not decode: a
                // bug on one side, which replacing the worker would only
                // repeat. Reported, counted, and the run ends in error.
                let kind = kind.map_or("an unknown kind", |k| k.name());
                self.slots[s].undecodable += 1;
                tracing::error!(
                    slot = s,
                    kind,
                    bytes = len,
                    error = %error,
                    "a frame from a worker of this build does not decode: this is a bug in shmkline, please report it (if it carried signals, they are missing)"
                );
                self.failures.undecodable(|| {
                    format!("a {kind} frame of {len} bytes from worker {s}: {error}")
                });
            }
            FromWorker::Malformed { error, len, .. } => {
                self.slots[s].malformed += 1;
                tracing::error!(slot = s, error = %error, bytes = len, "malformed frame from worker");
                self.fault(
                    s,
                    FaultKind::Protocol,
                    format!("sent a malformed frame: {error}"),
                );
            }
            FromWorker::Frame(_, Message::Progress(p)) => self.progressed(s, p),
            // Signals never get here: the reader thread emits them.
            FromWorker::Frame(id, message) => self.answer(s, id, message),
        }
    }

    /// True once every slot's worker confirmed it evaluated a finite
    /// feed's final batch.
    pub(super) fn feed_done(&self) -> bool {
        let Some(last) = self.feeding.final_publish() else {
            return false;
        };
        // A sink that fell behind is caught up first, while it moves (one
        // that stopped moving is left to the drain time and named).
        let catching_up =
            self.emitter.any_behind() && self.emitter.sinks_moved_within(self.opts.drain_timeout);
        !catching_up && self.slots.iter().all(|slot| slot.confirmed >= last)
    }

    /// The publish counter every slot confirmed: the slowest slot's.
    pub(super) fn slowest(&self) -> u64 {
        self.slots.iter().map(|s| s.confirmed).min().unwrap_or(0)
    }

    /// Gap events reported by the workers (candles that left the ring before
    /// they could be evaluated), summed over the slots' latest reports.
    pub(super) fn gaps(&self) -> u64 {
        self.slots.iter().map(|s| s.gaps).sum()
    }
}
