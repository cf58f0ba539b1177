//! The worker as the coordinator runs it: bootstrap, then serve requests on
//! the main thread while an evaluation thread runs the traders.
//!
//! The request loop never waits on the evaluation: the evaluation thread
//! owns the trader table, and the request loop hands it changes through a
//! short-lived queue ([`Changes`]) that the evaluation thread applies between
//! traders. So PING, ADD_TRADER and REMOVE_TRADER are answered within any
//! pass, however long. ADD_TRADER is acknowledged once queued (progress is
//! lowered to the new trader's resume point at once, so no PONG claims
//! candles it has not judged); REMOVE_TRADER is acknowledged by the
//! evaluation thread once the trader is gone and its last signals are sent,
//! so nothing of a removed trader follows its ACK.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::samples::{Samples, saturate};

use anyhow::{Context, Result, bail};
use ipc_channel::IpcError;
use ipc_channel::ipc::{self, IpcBytesSender, IpcSender};
use nix::sys::prctl;
use nix::sys::signal::Signal as OsSignal;
use nix::unistd::{Pid, getppid};
use protocol::InstanceName;
use protocol::bootstrap::Bootstrap;
use protocol::frame;
use protocol::message::{Init, Message, Pong, Ready, Released, RequestId, Signal};
use protocol::shm::scratch::SharedWords;
use protocol::store::{StoreReader, Wait};
use protocol::trader::{MAX_TRADERS_PER_WORKER, black_box_name, trader_hash};

use crate::judge::{Judge, Pass, Trader};
use crate::knobs::Knobs;

/// How long the evaluation thread sleeps on the publish futex before it
/// re-checks for trader changes and for the stop flag.
const EVAL_TICK: Duration = Duration::from_millis(20);
/// The same after a pass that left work for the next one.
const UNFINISHED_TICK: Duration = Duration::from_millis(1);

/// A change to the trader table, queued by the request loop.
enum Change {
    /// Hold this trader (replacing one of the same id).
    Add(Box<Trader>),
    /// Drop this trader, then acknowledge request `request`.
    Remove { id: String, request: RequestId },
}

/// Changes waiting for the evaluation thread. Bounded: an ADD is queued only
/// for an id the worker does not hold yet (at most
/// [`MAX_TRADERS_PER_WORKER`] ids), and REMOVEs wait for their ACK, of which
/// the coordinator keeps at most 64 outstanding; [`QUEUE_BOUND`] backs that
/// up.
#[derive(Default)]
struct Changes {
    queue: VecDeque<Change>,
}

/// Changes queued at most; past it a request is refused.
const QUEUE_BOUND: usize = 2 * MAX_TRADERS_PER_WORKER;

/// State shared by the request loop and the evaluation thread: the change
/// queue and what PONG reports, all of it atomics or short locks.
#[derive(Default)]
struct Shared {
    changes: Mutex<Changes>,
    /// Set with every queued change, so the evaluation thread looks at the
    /// queue only when there is something in it.
    changed: AtomicBool,
    stop: AtomicBool,
    /// Publish counter up to which every trader held or queued evaluated
    /// every closed candle. Written under the `changes` lock only, so a
    /// trader being queued and a pass ending cannot lose each other's update.
    progress: AtomicU64,
    /// Closed candles judged so far (over all traders and series), raised
    /// within passes: a long catch-up shows it is moving.
    judged: AtomicU64,
    signals: AtomicU64,
    signal_frames: AtomicU64,
    largest_signal_frame: AtomicU64,
    gaps: AtomicU64,
    /// Pass durations, as the evaluation thread summarises them.
    passes: AtomicU64,
    /// Every pass by duration (the evaluation thread writes, PONG reads).
    pass_histogram: std::sync::Mutex<protocol::histogram::Log2Histogram>,
    pass_p50_us: AtomicU64,
    pass_p99_us: AtomicU64,
}

impl Shared {
    fn changes(&self) -> MutexGuard<'_, Changes> {
        // Held for a push or a drain only; a panic there leaves the queue whole.
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, change: Change) {
        let mut changes = self.changes();
        if let Change::Add(t) = &change {
            self.progress.fetch_min(t.covered(), Ordering::AcqRel);
        }
        changes.queue.push_back(change);
        self.changed.store(true, Ordering::Release);
    }
}

/// The last [`PASS_SAMPLES`] pass durations; their median and 99th
/// percentile are published for PONG every 16 passes (sorting on the
/// evaluation thread, never on the request loop).
struct PassTimes(Samples);

/// Pass durations summarised.
const PASS_SAMPLES: usize = 1024;

impl PassTimes {
    fn record(&mut self, took: std::time::Duration, shared: &Shared) {
        self.0.push(saturate(took.as_micros()));
        // Uncontended but for a PONG's copy: a few ns a pass.
        shared
            .pass_histogram
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(took.as_micros().min(u128::from(u64::MAX)) as u64);
        let passes = shared.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if passes < 16 || passes.is_multiple_of(16) {
            let q = |p: f64| u64::from(self.0.quantile(p).unwrap_or(0));
            shared.pass_p50_us.store(q(0.5), Ordering::Relaxed);
            shared.pass_p99_us.store(q(0.99), Ordering::Relaxed);
        }
    }
}

/// Sends frames to the coordinator; shared by both threads.
#[derive(Clone)]
struct Outbox(IpcBytesSender);

impl Outbox {
    fn send(&self, id: RequestId, message: &Message) -> Result<()> {
        let bytes = frame::encode(id, message)?;
        self.0.send(&bytes).context("sending to the coordinator")
    }

    /// Signals, in order, in as many SIGNALS frames as they need. A signal
    /// too large for a frame (traders are checked for that where they
    /// enter, so a bug) is an error naming its trader, after the signals
    /// before it went out.
    fn send_signals(
        &self,
        next_id: &mut u64,
        signals: &[Signal],
        shared: &Shared,
    ) -> Result<(), frame::SignalTooLarge> {
        let mut frames = Vec::new();
        let packed = frame::encode_signals(next_id, signals, &mut frames);
        shared
            .signal_frames
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        for bytes in frames {
            shared
                .largest_signal_frame
                .fetch_max(bytes.len() as u64, Ordering::Relaxed);
            // The coordinator is gone: the request loop sees it too and exits.
            if self.0.send(&bytes).is_err() {
                break;
            }
        }
        packed
    }
}

/// RSS as reported in PONG, read from /proc at most once a second: reading
/// it costs an open/read/close, several times the rest of a PING's handling.
struct RssCache {
    bytes: u64,
    read_at: Option<Instant>,
}

impl RssCache {
    fn get(&mut self) -> u64 {
        if self
            .read_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.bytes = rss_bytes();
            self.read_at = Some(Instant::now());
        }
        self.bytes
    }
}

fn rss_bytes() -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page)
}

/// The evaluation thread and what the request loop knows of its traders.
struct Evaluation {
    store: Arc<StoreReader>,
    thread: JoinHandle<u32>,
    /// Ids and versions of the traders held or queued: the request loop's
    /// own view, so it answers without asking the evaluation thread.
    registry: BTreeMap<String, u32>,
    /// The graph's nodes the traders held or queued make, as the
    /// evaluation thread's graph makes them: an ADD past the node bound is
    /// refused here, before it is acknowledged.
    nodes: NodeCount,
}

/// The graph's nodes of the traders held or queued, counted the way the
/// evaluation thread's graph makes them.
#[derive(Default)]
struct NodeCount(protocol::rule::NodeCount);

impl NodeCount {
    /// Trader `id`'s rule's nodes counted, unless that passes the bound
    /// (a trader of the same id it replaces is not counted against it).
    fn add(&mut self, id: &str, rule: &protocol::trader::Rule) -> Result<(), String> {
        let texts = rule
            .compiled()
            .map(|c| protocol::rule::node_texts(&c.expr))
            .unwrap_or_default();
        let (live, adding) = (self.0.len(), self.0.adding(&texts));
        if live + adding > protocol::rule::NODE_BOUND {
            return Err(format!(
                "trader {id}: this worker's evaluation graph holds {live} distinct indicators and computed series, the rule adds {adding}, past the limit of {}: more --workers, or rules that share indicators",
                protocol::rule::NODE_BOUND
            ));
        }
        self.0.add(id, texts);
        Ok(())
    }

    fn remove(&mut self, id: &str) {
        self.0.remove(id);
    }
}

/// Runs until CLEANUP (exit 0) or until the coordinator goes away.
pub fn serve(bootstrap: &str, coordinator_pid: i32, worker_id: u32) -> Result<()> {
    // Die with the coordinator, whatever kills it; then make sure it had not
    // already died before the line above ran.
    prctl::set_pdeathsig(OsSignal::SIGKILL).context("setting PR_SET_PDEATHSIG")?;
    if getppid() != Pid::from_raw(coordinator_pid) {
        bail!("parent is not the coordinator (pid {coordinator_pid}): it already exited");
    }
    let started = Instant::now();
    let mut knobs = Knobs::from_env()?;
    let (to_worker, requests) = ipc::bytes_channel().context("creating the request channel")?;
    let (out, from_worker) = ipc::bytes_channel().context("creating the answer channel")?;
    let boot = IpcSender::<Bootstrap>::connect(bootstrap.to_owned())
        .with_context(|| format!("connecting to the coordinator's bootstrap server {bootstrap}"))?;
    boot.send(Bootstrap::Channels {
        to_worker,
        from_worker,
    })
    .context("sending the channels to the coordinator")?;
    drop(boot);
    let out = Outbox(out);
    let shared = Arc::new(Shared::default());
    let mut rss = RssCache {
        bytes: 0,
        read_at: None,
    };
    let mut eval: Option<Evaluation> = None;

    loop {
        let bytes = match requests.recv() {
            Ok(bytes) => bytes,
            Err(IpcError::Disconnected) => {
                tracing::info!("the coordinator closed the channel: exiting");
                stop(&shared, eval.take());
                return Ok(());
            }
            Err(e) => bail!("receiving a request: {e:?}"),
        };
        // Decode at once: received buffers are large, never keep them.
        let decoded = frame::decode(&bytes);
        drop(bytes);
        let (id, message) = match decoded {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable request");
                out.send(
                    RequestId(0),
                    &Message::Nack {
                        reason: format!("undecodable frame: {e}"),
                    },
                )?;
                continue;
            }
        };
        if knobs.drop_frame(message.kind()) {
            tracing::warn!(
                kind = message.kind().name(),
                id = id.0,
                "TEST knob: dropping this frame"
            );
            continue;
        }
        let reply = match message {
            Message::Init(init) => match init_store(&init, worker_id) {
                Ok(reader) => {
                    if eval.is_none() {
                        let reader = Arc::new(reader);
                        // The coordinator's black box for this slot, if it made one.
                        let black_box = InstanceName::new(&init.instance)
                            .ok()
                            .and_then(|i| SharedWords::open(&black_box_name(&i, worker_id)).ok())
                            .map(Arc::new);
                        let thread = spawn_eval(
                            Arc::clone(&reader),
                            Arc::clone(&shared),
                            out.clone(),
                            black_box,
                        )?;
                        eval = Some(Evaluation {
                            store: reader,
                            thread,
                            registry: BTreeMap::new(),
                            nodes: NodeCount::default(),
                        });
                    }
                    knobs.after_ready(&out.0)?;
                    Message::Ready(Ready {
                        worker_id,
                        pid: std::process::id(),
                    })
                }
                Err(e) => Message::Nack {
                    reason: format!("{e:#}"),
                },
            },
            Message::AddTrader { spec, resume_after } => {
                add_trader(&shared, eval.as_mut(), spec, resume_after)
            }
            Message::RemoveTrader { id: trader } => match eval.as_mut() {
                // Acknowledged by the evaluation thread once the trader is
                // gone (a retry too: it queues behind the first).
                Some(eval) if shared.changes().queue.len() < QUEUE_BOUND => {
                    eval.registry.remove(&trader);
                    eval.nodes.remove(&trader);
                    shared.queue(Change::Remove {
                        id: trader,
                        request: id,
                    });
                    continue;
                }
                Some(_) => Message::Nack {
                    reason: format!("{QUEUE_BOUND} trader changes are waiting: try again"),
                },
                // Nothing was ever added.
                None => Message::Ack,
            },
            Message::Ping => Message::Pong(Pong {
                traders: eval.as_ref().map_or(0, |e| e.registry.len()) as u32,
                last_publish: shared.progress.load(Ordering::Acquire),
                gaps: shared.gaps.load(Ordering::Relaxed),
                uptime_ms: started.elapsed().as_millis() as u64,
                rss_bytes: rss.get(),
                signals: shared.signals.load(Ordering::Relaxed),
                judged: shared.judged.load(Ordering::Relaxed),
                signal_frames: shared.signal_frames.load(Ordering::Relaxed),
                largest_signal_frame: shared.largest_signal_frame.load(Ordering::Relaxed),
                passes: shared.passes.load(Ordering::Relaxed),
                pass_p50_us: shared.pass_p50_us.load(Ordering::Relaxed),
                pass_histogram: Box::new(
                    *shared
                        .pass_histogram
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                ),
                pass_p99_us: shared.pass_p99_us.load(Ordering::Relaxed),
            }),
            Message::Cleanup => {
                let released = stop(&shared, eval.take());
                out.send(id, &Message::CleanupComplete(released))?;
                tracing::info!("cleanup complete: exiting");
                return Ok(());
            }
            other => Message::Nack {
                reason: format!("{} is not a request a worker serves", other.kind().name()),
            },
        };
        if knobs.drop_reply(reply.kind()) {
            tracing::warn!(
                kind = reply.kind().name(),
                id = id.0,
                "TEST knob: not sending this reply"
            );
            continue;
        }
        out.send(id, &reply)?;
    }
}

fn init_store(init: &Init, worker_id: u32) -> Result<StoreReader> {
    anyhow::ensure!(
        init.worker_id == worker_id,
        "INIT for worker {} sent to worker {worker_id}",
        init.worker_id
    );
    let instance = InstanceName::new(&init.instance)?;
    let reader = StoreReader::open(&instance)?;
    anyhow::ensure!(
        reader.generation() == init.generation,
        "store {} has generation {:#x}, the coordinator announced {:#x}: stale segment",
        reader.name(),
        reader.generation(),
        init.generation
    );
    tracing::info!(segment = reader.name(), "mapped the store read-only");
    Ok(reader)
}

fn add_trader(
    shared: &Shared,
    eval: Option<&mut Evaluation>,
    spec: protocol::trader::TraderSpec,
    resume_after: u64,
) -> Message {
    let Some(eval) = eval else {
        return Message::Nack {
            reason: "ADD_TRADER before INIT".into(),
        };
    };
    let rule = match protocol::admit::admit(&spec) {
        Ok(rule) => rule,
        Err(e) => {
            return Message::Nack {
                reason: e.to_string(),
            };
        }
    };
    if !eval.store.intervals().contains(&spec.interval) {
        return Message::Nack {
            reason: format!(
                "trader {}: interval {} is not kept by the store",
                spec.id, spec.interval
            ),
        };
    }
    match eval.registry.get(&spec.id) {
        // Idempotent: a re-sent ADD_TRADER (a retry whose ACK was lost) is acked again.
        Some(&version) if version == spec.version => return Message::Ack,
        Some(_) => {}
        None if eval.registry.len() >= MAX_TRADERS_PER_WORKER => {
            return Message::Nack {
                reason: format!("this worker already holds {MAX_TRADERS_PER_WORKER} traders"),
            };
        }
        None => {}
    }
    if shared.changes().queue.len() >= QUEUE_BOUND {
        return Message::Nack {
            reason: format!("{QUEUE_BOUND} trader changes are waiting: try again"),
        };
    }
    if let Err(reason) = eval.nodes.add(&spec.id, &rule) {
        return Message::Nack { reason };
    }
    tracing::info!(trader = %spec.id, version = spec.version, rule = %rule, resume_after, "trader added");
    eval.registry.insert(spec.id.clone(), spec.version);
    shared.queue(Change::Add(Box::new(Trader::new(spec, rule, resume_after))));
    Message::Ack
}

/// Stops the evaluation thread and says what was released.
fn stop(shared: &Shared, eval: Option<Evaluation>) -> Released {
    shared.stop.store(true, Ordering::Release);
    let Some(eval) = eval else {
        return Released::default();
    };
    let cursors = eval.thread.join().unwrap_or(0);
    Released {
        traders: eval.registry.len() as u32,
        threads: 1,
        cursors,
    }
}

/// Stack of the evaluation thread: rules nest at most
/// [`protocol::rule::MAX_DEPTH`] levels, and each level of evaluation takes
/// well under a kilobyte of it; reserved, not touched, until used.
const EVAL_STACK: usize = 16 << 20;

fn spawn_eval(
    reader: Arc<StoreReader>,
    shared: Arc<Shared>,
    out: Outbox,
    black_box: Option<Arc<SharedWords>>,
) -> Result<JoinHandle<u32>> {
    // The worker's span (slot, pid), so this thread's lines name it too.
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("eval".into())
        .stack_size(EVAL_STACK)
        .spawn(move || {
            let _span = span.entered();
            // A panic must not leave the worker answering PINGs with frozen
            // progress: it ends the process like an error does.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Evaluator::new(&reader, &shared, &out, black_box.as_deref()).run()
            }));
            let outcome =
                outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("the evaluation thread panicked")));
            match outcome {
                Ok(cursors) => cursors,
                Err(e) => {
                    // A worker that cannot evaluate must not keep answering
                    // PINGs as if it could: exit, and let the coordinator
                    // replace it.
                    tracing::error!(error = %format!("{e:#}"), "evaluation failed: exiting");
                    std::process::exit(70);
                }
            }
        })
        .context("starting the evaluation thread")
}

/// The evaluation thread's state: it alone holds the traders.
struct Evaluator<'a> {
    reader: &'a StoreReader,
    shared: &'a Shared,
    out: &'a Outbox,
    black_box: Option<&'a SharedWords>,
    judge: Judge,
    hits: Vec<Signal>,
    next_signal: u64,
    /// The publish counter the last complete pass covered.
    last_publish: u64,
    /// The progress last told in a PROGRESS frame.
    progress_sent: u64,
}

impl<'a> Evaluator<'a> {
    fn new(
        reader: &'a StoreReader,
        shared: &'a Shared,
        out: &'a Outbox,
        black_box: Option<&'a SharedWords>,
    ) -> Self {
        Self {
            reader,
            shared,
            out,
            black_box,
            judge: Judge::default(),
            hits: Vec::new(),
            next_signal: 0,
            last_publish: 0,
            progress_sent: 0,
        }
    }

    /// The trader being evaluated, for the coordinator to read after a
    /// crash; 0 between passes.
    fn mark(&self, value: u64) {
        if let Some(word) = self.black_box.and_then(|b| b.word(0)) {
            word.store(value, Ordering::Relaxed);
        }
    }

    /// Passes until stopped; returns the evaluation cursors it dropped.
    fn run(mut self) -> Result<u32> {
        let mut seen = 0;
        let mut pass_times = PassTimes(Samples::new(PASS_SAMPLES));
        // A pass that left work for the next one (a budget ran out, a read
        // was refused for the moment, trader changes cut it short): the
        // next pass starts at once.
        let mut unfinished = false;
        while !self.shared.stop.load(Ordering::Acquire) {
            // Left work: look again almost at once (a read refused for the
            // moment must not spin the CPU).
            let tick = if unfinished {
                UNFINISHED_TICK
            } else {
                EVAL_TICK
            };
            let changed = matches!(self.reader.wait_for_change(seen, tick)?, Wait::Changed(_));
            let applied = self.apply_changes()?;
            if !changed && !applied && !unfinished {
                continue;
            }
            let pass_started = Instant::now();
            // Everything published up to here gets judged in this pass.
            let published = self.reader.publish_counter();
            let black_box = self.black_box;
            let shared = self.shared;
            let mut pass = Pass {
                hits: &mut self.hits,
                progress: &shared.judged,
                mark: &|id: &str| {
                    if let Some(word) = black_box.and_then(|b| b.word(0)) {
                        word.store(trader_hash(id), Ordering::Relaxed);
                    }
                },
                interrupt: &|| {
                    shared.stop.load(Ordering::Acquire) || shared.changed.load(Ordering::Acquire)
                },
            };
            let judged = self.judge.pass(self.reader, published, &mut pass)?;
            unfinished = !judged.complete;
            self.flush()?;
            self.mark(0);
            self.shared.gaps.fetch_add(judged.gaps, Ordering::Relaxed);
            self.last_publish = published;
            // After the signals: a PONG carrying this progress proves they were sent.
            self.publish_progress();
            seen = published;
            pass_times.record(pass_started.elapsed(), self.shared);
        }
        Ok(self.judge.held().1 as u32)
    }

    /// Applies the queued changes; true if there were any. A removal
    /// first sends the signals found so far, then acknowledges: nothing of
    /// the removed trader follows its ACK.
    fn apply_changes(&mut self) -> Result<bool> {
        if !self.shared.changed.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let queued: Vec<Change> = self.shared.changes().queue.drain(..).collect();
        for change in queued {
            match change {
                Change::Add(trader) => {
                    let id = trader.spec.id.clone();
                    // The request loop counted its nodes against the bound
                    // before it acknowledged: this cannot fail unless the
                    // two counts disagree, which is a bug.
                    if let Err(e) = self.judge.add(*trader) {
                        bail!("trader {id} acknowledged but refused by the graph: {e}");
                    }
                }
                Change::Remove { id, request } => {
                    self.flush()?;
                    self.judge.remove(&id);
                    self.out.send(request, &Message::Ack)?;
                    tracing::info!(trader = %id, "trader removed");
                }
            }
        }
        self.publish_progress();
        Ok(true)
    }

    /// Sends the signals found so far. One too large for a frame is pinned
    /// on its trader (the black box names it) before the worker exits.
    fn flush(&mut self) -> Result<()> {
        if self.hits.is_empty() {
            return Ok(());
        }
        let n = self.hits.len() as u64;
        let sent = self
            .out
            .send_signals(&mut self.next_signal, &self.hits, self.shared);
        self.hits.clear();
        if let Err(e) = sent {
            self.mark(trader_hash(&e.trader));
            bail!("{e}: its trader is to blame");
        }
        self.shared.signals.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Recomputes the progress PONG reports: the minimum over the traders
    /// held and queued (a trader counts from where it resumes), or the last
    /// pass's counter when there is none. Under the queue's lock, as the
    /// request loop's lowering of it is.
    fn publish_progress(&mut self) {
        let changes = self.shared.changes();
        let progress = self
            .judge
            .covered()
            .into_iter()
            .chain(changes.queue.iter().filter_map(|c| match c {
                Change::Add(t) => Some(t.covered()),
                Change::Remove { .. } => None,
            }))
            .min()
            .map_or(self.last_publish, |m| m.min(self.last_publish));
        self.shared.progress.store(progress, Ordering::Release);
        // Told at once (the feed's backpressure waits on it), once per
        // change. Sent under the queue's lock: an ADD queued meanwhile is
        // acknowledged after this frame, so the coordinator never takes it
        // as covering a trader it had not been acknowledged.
        if progress != self.progress_sent {
            let told = Message::Progress(protocol::message::Progress {
                last_publish: progress,
                judged: self.shared.judged.load(Ordering::Relaxed),
            });
            // The coordinator gone: the request loop sees it too and exits.
            if self.out.send(RequestId(0), &told).is_ok() {
                self.progress_sent = progress;
            }
        }
        drop(changes);
    }
}
