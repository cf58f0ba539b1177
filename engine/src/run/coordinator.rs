//! The coordinator's loop: one thread owns the store writer and every
//! slot; everything else reaches it as an [`Event`]. `drive` reads top-down:
//! events, OS signals, reaping, shutdown, restarts, the feed, timers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use protocol::message::{Init, Message};
use protocol::shm::scratch::SharedWords;
use protocol::splitmix::SplitMix64;
use protocol::trader::{TraderSpec, black_box_name};

use super::control::ControlRequest;
use super::emit::Emitter;
use super::faults::{FaultKind, FaultLog};
use super::link::{Budget, FromWorker, Link};
use super::options::RunOptions;
use super::slot::{Incarnation, Purpose, Slot, State};
use super::spawn::{Spawned, Spawner};
use crate::feed::live::{LiveFeed, LiveHealth};
use crate::feed::pump::Pump;
use crate::feed::{FeedConfig, Source};
use crate::instance::Instance;
use crate::process::kill_and_reap;

/// How often the segment's heartbeat is refreshed when nothing is published.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(250);

/// Events waiting for the loop, at most.
pub(super) const EVENT_BOUND: usize = 4096;

/// Longest the loop sleeps between timer checks.
pub(super) const TICK: Duration = Duration::from_millis(5);

/// What reaches the loop.
pub enum Event {
    /// From the reader thread of a slot's worker incarnation.
    Worker(u32, u64, FromWorker),
    /// A spawn for a slot's incarnation finished (or failed).
    Spawned(u32, u64, Result<Spawned, String>),
    /// SIGTERM or SIGINT.
    OsSignal(i32),
    /// A control-socket request.
    Control(ControlRequest),
}

pub(super) struct Coordinator {
    pub(super) opts: RunOptions,
    pub(super) inst: Instance,
    pub(super) slots: Vec<Slot>,
    pub(super) events_tx: SyncSender<Event>,
    /// The finite feed (synthetic or replay), written by this loop.
    pub(super) pump: Option<Pump>,
    /// The live feed, written by its own thread.
    pub(super) live: Option<LiveFeed>,
    /// Its counters, kept after the feed is stopped: a run whose feed never
    /// delivered a message fails at the end, saying why.
    pub(super) live_health: Option<Arc<LiveHealth>>,
    /// `--publish-candles`: the publisher, and the tap the live feed's
    /// writer gets when it starts (the pump's has it already).
    pub(super) publisher: Option<crate::nats::candles::CandlePublisher>,
    pub(super) candle_tap: Option<crate::nats::candles::CandleTap>,
    /// Whether the durable sinks' positions were checked against what the
    /// live start's backfill brought (once, when every series is live).
    reach_checked: bool,
    /// A catch-up under way: done once every slot has confirmed this publish.
    catching_up_to: Option<u64>,
    pub(super) last_heartbeat: Instant,
    pub(super) feed_started: Option<Instant>,
    pub(super) final_publish: Option<u64>,
    /// Where signals go: checked and printed on the reader threads.
    pub(super) emitter: Arc<Emitter>,
    pub(super) started: Instant,
    pub(super) jitter: SplitMix64,
    pub(super) shutting_down: Option<Instant>,
    /// Asked to stop: the feed is stopped, and the workers get up to
    /// `--shutdown-timeout` to judge what was published (since when, the
    /// store's publish count then, why) before CLEANUP.
    pub(super) draining: Option<(Instant, u64, &'static str)>,
    pub(super) budget: Budget,
    pub(super) events: FaultLog,
    /// Links of dead incarnations whose reader threads are finishing.
    pub(super) graveyard: Vec<Link>,
    /// Set when a slot exhausted its restart intensity.
    pub(super) failed: Option<String>,
    /// Traders a worker refused, with the reason.
    pub(super) refused: Vec<String>,
    /// The first frame of this build's protocol that did not decode.
    pub(super) undecodable: Option<String>,
    /// Per slot: the shared word its worker marks the trader it evaluates in.
    pub(super) black_boxes: Vec<Option<SharedWords>>,
    /// Crashes pinned on each trader.
    pub(super) strikes: BTreeMap<String, u32>,
    /// Traders taken out after repeated crashes, with their slot.
    pub(super) quarantined: Vec<(String, u32)>,
    /// OS signals counted by the signal thread (never dropped).
    pub(super) os_signals: std::sync::Arc<OsSignals>,
    /// Every process's memory and its growth.
    pub(super) memory: super::memory::MemoryWatch,
    /// Where `--metrics` listens (its port chosen when 0 was given).
    pub(super) metrics_addr: Option<std::net::SocketAddr>,
    /// Loop time spent answering control requests.
    pub(super) control_costs: super::status::ControlCosts,
}

/// CLEANUP's time at least, when the drain before it used up
/// `--shutdown-timeout`.
const CLEANUP_AT_LEAST: Duration = Duration::from_millis(250);

/// SIGINT and SIGTERM counts, kept by the signal thread in atomics so that a
/// full event queue can never swallow one.
#[derive(Debug, Default)]
pub struct OsSignals {
    pub(super) sigint: std::sync::atomic::AtomicU32,
    pub(super) sigterm: std::sync::atomic::AtomicU32,
}

impl Coordinator {
    /// The coordinator of a run: its slots (traders spread round-robin; a
    /// slot keeps its traders across worker replacements), one black box
    /// per slot, the finite feed if any (its known symbols registered and
    /// published at once).
    pub(super) fn new(
        opts: RunOptions,
        inst: Instance,
        source: Option<Source>,
        events_tx: SyncSender<Event>,
        emitter: Arc<Emitter>,
        os_signals: Arc<OsSignals>,
    ) -> Result<Self> {
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
        // One black box per slot, owned (and unlinked) here; a leftover of a
        // killed coordinator is stale, as we hold the instance lock.
        let black_boxes = (0..opts.workers)
            .map(|slot| {
                let name = black_box_name(&opts.instance, slot);
                let _ = nix::sys::mman::shm_unlink(name.as_str());
                SharedWords::create(&name, 1)
                    .map_err(|e| tracing::warn!(error = %e, "no black box: crashes cannot be pinned on a trader"))
                    .ok()
            })
            .collect();
        let generation = inst.store.lock().generation();
        let mut pump = source
            .map(|source| Pump::new(source, &opts.store.intervals(), &opts.aggregate, opts.pace));
        if let Some(pump) = pump.as_mut() {
            pump.register_known(&mut inst.store.lock())?;
        }
        inst.store.lock().publish();
        let coord = Coordinator {
            jitter: SplitMix64::new(generation),
            inst,
            slots,
            events_tx,
            pump,
            live: None,
            live_health: None,
            publisher: None,
            candle_tap: None,
            last_heartbeat: Instant::now(),
            feed_started: None,
            final_publish: None,
            emitter,
            started: Instant::now(),
            shutting_down: None,
            reach_checked: false,
            catching_up_to: None,
            draining: None,
            budget: Budget::from_system(),
            events: FaultLog::default(),
            graveyard: Vec::new(),
            failed: None,
            refused: Vec::new(),
            undecodable: None,
            os_signals,
            black_boxes,
            strikes: BTreeMap::new(),
            quarantined: Vec::new(),
            memory: super::memory::MemoryWatch::new(opts.memory, opts.workers as usize),
            metrics_addr: None,
            control_costs: Default::default(),
            opts,
        };
        for slot in &coord.slots {
            slot.tell_holds(&coord.emitter);
        }
        Ok(coord)
    }

    pub(super) fn spawn_slot(&mut self, s: usize, spawner: &Spawner) {
        // A mark left by a predecessor killed from outside must not be pinned
        // on its trader if the new worker fails before its first pass.
        if let Some(word) = self
            .black_boxes
            .get(s)
            .and_then(|b| b.as_ref())
            .and_then(|b| b.word(0))
        {
            word.store(0, std::sync::atomic::Ordering::Relaxed);
        }
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
            self.failed = Some(format!("the spawner thread is gone: {e:#}"));
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
        if self.shutting_down.is_some() {
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
                self.failed = Some(format!("could not start a reader thread: {e:#}"));
                return;
            }
        };
        tracing::info!(slot = id, pid, incarnation = no, "worker spawned");
        slot.live_gaps = 0;
        self.emitter.accept(id as usize, Some(no));
        slot.live = Some(Incarnation {
            no,
            pid,
            child: Some(spawned.child),
            link: Some(link),
            state: State::Starting,
            pending: BTreeMap::new(),
            next_id: 0,
            acked: BTreeSet::new(),
            unsent: VecDeque::new(),
            removing: BTreeSet::new(),
            synced_at: None,
            last_pong: None,
            rtt: None,
            sent: (0, 0),
            read: (0, 0),
            fault: None,
            stopped: false,
            reached_ready: false,
            progress: None,
            behind_since: None,
            kill_at: None,
        });
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
                self.undecodable.get_or_insert_with(|| {
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
            // Signals never get here: the reader thread emits them.
            FromWorker::Frame(id, message) => self.answer(s, id, message),
        }
    }

    /// Writes the batches of a finite feed due by now: with backpressure,
    /// never further ahead of the slowest slot's confirmed progress than the
    /// traders' windows allow (see [`crate::feed::pump`]).
    pub(super) fn feed(&mut self) -> Result<()> {
        if self.feed_started.is_none() || self.final_publish.is_some() {
            return Ok(());
        }
        let slowest = self.slots.iter().map(|s| s.confirmed).min().unwrap_or(0);
        let Some(pump) = self.pump.as_mut() else {
            return Ok(());
        };
        let emitter = &self.emitter;
        let backpressure = self.opts.backpressure.then_some(slowest);
        if let Some(last) = pump.step(&self.inst.store, backpressure, |at| emitter.published(at))? {
            self.final_publish = Some(last);
        }
        // The NATS feed's saved position: what was judged, once every
        // durable sink holds its signals (a restart judges the rest again).
        if self.emitter.sinks_settled() {
            pump.judged_up_to(slowest);
        }
        Ok(())
    }

    /// True once every slot's worker confirmed it evaluated the final batch.
    pub(super) fn feed_done(&self) -> bool {
        let Some(last) = self.final_publish else {
            return false;
        };
        // A sink that fell behind is caught up first, while it moves (one
        // that stopped moving is left to the drain time and named).
        let catching_up =
            self.emitter.any_behind() && self.emitter.sinks_moved_within(self.opts.drain_timeout);
        !catching_up && self.slots.iter().all(|slot| slot.confirmed >= last)
    }

    /// Every series live after a live start: per interval, the oldest
    /// candle the store holds (the backfill's reach), and each durable sink
    /// whose position is older told so.
    fn check_reach(&self) {
        let Ok(reader) = protocol::store::StoreReader::open(&self.opts.instance) else {
            return;
        };
        let mut reach: std::collections::BTreeMap<protocol::Interval, i64> = Default::default();
        for (symbol, _) in reader.symbols_with_ids() {
            for &interval in reader.intervals() {
                let Ok(series) = reader.series(symbol, interval) else {
                    continue;
                };
                let (Ok(Some(latest)), Ok(appended)) =
                    (reader.latest(series), reader.appended(series))
                else {
                    continue;
                };
                let held = appended.min(reader.ring(series) as u64).max(1) as i64;
                let oldest = latest.candle.open_time - (held - 1) * interval.millis() as i64;
                // The reach of an interval is its series' furthest: a
                // symbol listed yesterday holds little, and says nothing
                // about what the others brought back.
                let r = reach.entry(interval).or_insert(oldest);
                *r = (*r).min(oldest);
            }
        }
        self.emitter.check_reach(&reach);
    }

    /// A sink fell behind and has drained its queue: every worker is
    /// replaced, its replacement judging again from `from[slot]` (the
    /// publish the slot had confirmed when the sink fell behind), so the
    /// sink gets the signals it was not handed; every other sink drops them
    /// as repeats. Candles that left the ring since are a gap, reported as
    /// any other.
    pub(super) fn catch_up(&mut self, from: &[u64]) {
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

    /// Gap events reported by the workers (candles that left the ring before
    /// they could be evaluated), summed over the slots' latest reports.
    pub(super) fn gaps(&self) -> u64 {
        self.slots.iter().map(|s| s.gaps).sum()
    }

    /// Stops the feed, then shuts down once every worker has judged what
    /// was published before (or `--shutdown-timeout` has passed): a candle
    /// that reached the store before SIGTERM has its signals printed.
    pub(super) fn begin_drain(&mut self, why: &'static str) {
        if self.shutting_down.is_some() || self.draining.is_some() {
            return;
        }
        if let Some(mut live) = self.live.take() {
            live.stop();
        }
        let target = self.inst.store.lock().stats().publishes;
        tracing::info!(
            reason = why,
            publish = target,
            "stopping: the feed is stopped; the workers judge what was published"
        );
        self.draining = Some((Instant::now(), target, why));
    }

    /// Whether every slot's live worker has judged publish `target` (a
    /// slot whose worker died meanwhile is not restarted: nothing to wait
    /// for).
    fn drained(&self, target: u64) -> bool {
        self.slots
            .iter()
            .all(|slot| !slot.live.as_ref().is_some_and(|i| i.live()) || slot.confirmed >= target)
    }

    pub(super) fn begin_shutdown(&mut self, why: &str) {
        if self.shutting_down.is_some() {
            return;
        }
        tracing::info!(reason = why, "shutting down: CLEANUP to every worker");
        self.shutting_down = Some(Instant::now());
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

    pub(super) fn shutdown_complete(&self) -> bool {
        self.slots.iter().all(|slot| {
            !slot.spawning
                && slot
                    .live
                    .as_ref()
                    .is_none_or(|i| i.child.is_none() && i.state != State::Cleaning)
        })
    }
}

pub(super) fn drive(
    coord: &mut Coordinator,
    spawner: &Spawner,
    events: &Receiver<Event>,
) -> Result<()> {
    for s in 0..coord.slots.len() {
        coord.spawn_slot(s, spawner);
    }
    loop {
        match events.recv_timeout(TICK) {
            Ok(Event::Worker(slot, no, e)) => coord.handle_worker(slot as usize, no, e),
            Ok(Event::Spawned(slot, no, result)) => coord.spawned(slot as usize, no, result),
            Ok(Event::OsSignal(_)) => {} // counted in os_signals, acted on below
            Ok(Event::Control(req)) => coord.control(req),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the event channel closed"),
        }
        let sigints = coord
            .os_signals
            .sigint
            .load(std::sync::atomic::Ordering::SeqCst);
        let sigterms = coord
            .os_signals
            .sigterm
            .load(std::sync::atomic::Ordering::SeqCst);
        if sigints + sigterms >= 2 {
            tracing::warn!("a second signal: killing the workers without waiting");
            return Ok(());
        }
        if sigints + sigterms > 0 {
            coord.begin_drain(if sigints > 0 { "SIGINT" } else { "SIGTERM" });
        }
        if coord
            .opts
            .parent
            .is_some_and(|p| nix::unistd::getppid().as_raw() != p)
        {
            coord.begin_drain("the parent process exited (--exit-with-parent)");
        }
        if coord.emitter.stdout_closed() {
            coord.begin_drain("stdout was closed (its reader went away)");
        }
        if let Some((since, target, why)) = coord.draining
            && (coord.feed_started.is_none()
                || coord.drained(target)
                || since.elapsed() >= coord.opts.shutdown_timeout)
        {
            coord.begin_shutdown(why);
        }
        coord.reap();
        if let Some(why) = coord.failed.take() {
            bail!("{why}: giving up");
        }
        if let Some(since) = coord.shutting_down {
            coord.retry_due();
            if coord.shutdown_complete() {
                return Ok(());
            }
            // One --shutdown-timeout for the whole stop: what the drain
            // used is not given again to CLEANUP (which still gets a
            // moment: a worker answers it in microseconds).
            let began = coord.draining.map_or(since, |(at, _, _)| at);
            let by = (began + coord.opts.shutdown_timeout).max(since + CLEANUP_AT_LEAST);
            if Instant::now() >= by {
                return Ok(()); // stragglers are killed by the caller
            }
            continue;
        }
        if coord.draining.is_none() {
            coord.restart_due(spawner);
        }
        // The feed starts once every slot's traders are acknowledged, so no
        // candle precedes a trader.
        if coord.feed_started.is_none()
            && coord.draining.is_none()
            && coord
                .slots
                .iter()
                .all(|s| s.live.as_ref().is_some_and(|i| i.state == State::Ready))
        {
            tracing::info!(feed = coord.opts.feed.kind(), pace = ?coord.opts.pace, "feed started");
            coord.feed_started = Some(Instant::now());
            if let Some(pump) = coord.pump.as_mut() {
                pump.start();
            }
            if let FeedConfig::Binance(live) = &coord.opts.feed {
                let feed = LiveFeed::start(
                    live.clone(),
                    coord.inst.store.clone(),
                    &coord.opts.store.intervals(),
                    coord.candle_tap.clone(),
                )?;
                coord.live_health = Some(Arc::clone(feed.health()));
                coord.live = Some(feed);
            }
        }
        if coord.draining.is_none() {
            coord.feed()?;
        }
        if let Some(live) = coord.live.as_ref().filter(|l| l.is_finished()) {
            match live.health().fatal() {
                Some(e) => bail!("the live feed cannot start: {e}"),
                None => bail!("the live feed thread stopped unexpectedly (see the log)"),
            }
        }
        if !coord.reach_checked
            && let Some(live) = coord.live.as_ref()
            && live.health().all_live()
        {
            coord.reach_checked = true;
            coord.check_reach();
        }
        coord
            .memory
            .tick(coord.slots.iter().enumerate().map(|(k, slot)| {
                (
                    k,
                    slot.live
                        .as_ref()
                        .filter(|i| i.child.is_some())
                        .map(|i| i.pid),
                )
            }));
        if coord.last_heartbeat.elapsed() >= HEARTBEAT {
            coord.last_heartbeat = Instant::now();
            coord.inst.store.lock().heartbeat();
        }
        // Not while stopping: the workers then judge what is published and go.
        if coord.draining.is_none()
            && coord.shutting_down.is_none()
            && let Some(from) = coord.emitter.take_catch_up()
        {
            coord.catch_up(&from);
        }
        if let Some(target) = coord.catching_up_to
            && coord.slots.iter().all(|slot| slot.confirmed >= target)
        {
            coord.catching_up_to = None;
            coord.emitter.caught_up();
            tracing::info!(
                publish = target,
                "the catch-up is done: every worker judged again up to where the run was"
            );
        }
        // A stdout that does not keep up stops the reader threads from
        // reading the workers' answers: no deadline means anything then.
        let grace = coord.opts.ping_deadline.max(coord.opts.ping_interval);
        if !coord.emitter.output_stalled(grace) {
            coord.retry_due();
            coord.ping_due();
            coord.stall_due();
        }
        if coord.feed_done() && !coord.opts.stay {
            coord.begin_shutdown("the finite feed is done and every trader evaluated every candle");
        }
    }
}
