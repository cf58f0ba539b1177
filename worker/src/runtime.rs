//! The worker as the coordinator runs it: bootstrap, then serve requests on
//! the main thread while an evaluation thread runs the traders.

use std::collections::BTreeMap;
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
use protocol::trader::{black_box_name, trader_hash};

use crate::eval::{Hit, MAX_TRADERS, Scratch, Trader};
use crate::knobs::Knobs;

/// How long the evaluation thread sleeps on the publish futex before it
/// re-checks for new traders and for the stop flag.
const EVAL_TICK: Duration = Duration::from_millis(20);

/// State shared by the request loop and the evaluation thread.
#[derive(Default)]
struct Shared {
    traders: Mutex<BTreeMap<String, Trader>>,
    /// Set when the trader table changed, so the next pass runs without a publish.
    dirty: AtomicBool,
    stop: AtomicBool,
    /// Publish counter up to which every trader evaluated every closed candle.
    last_publish: AtomicU64,
    /// What PONG reports, kept out of the traders lock (which an evaluation
    /// pass holds for its whole length): progress over all traders, and how many.
    progress: AtomicU64,
    trader_count: AtomicU64,
    signals: AtomicU64,
    gaps: AtomicU64,
    /// Pass durations, as the evaluation thread summarises them.
    passes: AtomicU64,
    pass_p50_us: AtomicU64,
    pass_p99_us: AtomicU64,
}

impl Shared {
    fn traders(&self) -> MutexGuard<'_, BTreeMap<String, Trader>> {
        // A panic while holding the lock already aborted the evaluation; the
        // table itself stays consistent (each entry is replaced whole).
        self.traders.lock().unwrap_or_else(|p| p.into_inner())
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

    /// A pass's signals, in order, in as few SIGNALS frames as fit: a batch
    /// too long for one frame is sent as two halves (a single signal too
    /// long for a frame is an error, as it was alone).
    fn send_signals(&self, next_id: &mut u64, signals: Vec<Signal>) -> Result<()> {
        if signals.is_empty() {
            return Ok(());
        }
        *next_id += 1;
        let message = Message::Signals(signals);
        let error = match frame::encode(RequestId(*next_id), &message) {
            Ok(bytes) => return self.0.send(&bytes).context("sending to the coordinator"),
            Err(e) => e,
        };
        let Message::Signals(mut front) = message else {
            return Err(error.into());
        };
        if front.len() == 1 {
            return Err(error.into());
        }
        let back = front.split_off(front.len() / 2);
        self.send_signals(next_id, front)?;
        self.send_signals(next_id, back)
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
    let mut store: Option<Arc<StoreReader>> = None;
    let mut eval: Option<JoinHandle<()>> = None;

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
                    if store.is_none() {
                        let reader = Arc::new(reader);
                        // The coordinator's black box for this slot, if it made one.
                        let black_box = InstanceName::new(&init.instance)
                            .ok()
                            .and_then(|i| SharedWords::open(&black_box_name(&i, worker_id)).ok())
                            .map(Arc::new);
                        eval = Some(spawn_eval(
                            Arc::clone(&reader),
                            Arc::clone(&shared),
                            out.clone(),
                            black_box,
                        )?);
                        store = Some(reader);
                    }
                    if knobs.malformed {
                        out.0
                            .send(b"this is not a frame")
                            .context("sending the malformed frame")?;
                    }
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
                add_trader(&shared, store.as_deref(), spec, resume_after)
            }
            Message::RemoveTrader { id: trader } => {
                let mut traders = shared.traders();
                traders.remove(&trader);
                publish_progress(&shared, &traders);
                Message::Ack
            }
            Message::Ping => Message::Pong(Pong {
                traders: shared.trader_count.load(Ordering::Acquire) as u32,
                last_publish: shared.progress.load(Ordering::Acquire),
                gaps: shared.gaps.load(Ordering::Relaxed),
                uptime_ms: started.elapsed().as_millis() as u64,
                rss_bytes: rss.get(),
                signals: shared.signals.load(Ordering::Relaxed),
                passes: shared.passes.load(Ordering::Relaxed),
                pass_p50_us: shared.pass_p50_us.load(Ordering::Relaxed),
                pass_p99_us: shared.pass_p99_us.load(Ordering::Relaxed),
            }),
            Message::Cleanup => {
                let threads = u32::from(eval.is_some());
                stop(&shared, eval.take());
                let mut traders = shared.traders();
                let released = Released {
                    traders: traders.len() as u32,
                    threads,
                    cursors: traders.values().map(|t| t.cursors() as u32).sum(),
                };
                traders.clear();
                drop(traders);
                drop(store.take());
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

/// Recomputes what PONG reports; called with the traders lock held, after a
/// pass and after every change to the table. Progress is the minimum over
/// the traders (a trader just added counts from where it resumes), or the
/// last pass's counter when there is none.
fn publish_progress(shared: &Shared, traders: &BTreeMap<String, Trader>) {
    let passed = shared.last_publish.load(Ordering::Acquire);
    let progress = traders
        .values()
        .map(|t| t.covered())
        .min()
        .map_or(passed, |m| m.min(passed));
    shared.progress.store(progress, Ordering::Release);
    shared
        .trader_count
        .store(traders.len() as u64, Ordering::Release);
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
    store: Option<&StoreReader>,
    spec: protocol::trader::TraderSpec,
    resume_after: u64,
) -> Message {
    let Some(store) = store else {
        return Message::Nack {
            reason: "ADD_TRADER before INIT".into(),
        };
    };
    let rule = match spec.compile() {
        Ok(rule) => rule,
        Err(e) => {
            return Message::Nack {
                reason: e.to_string(),
            };
        }
    };
    if !store.intervals().contains(&spec.interval) {
        return Message::Nack {
            reason: format!(
                "trader {}: interval {} is not kept by the store",
                spec.id, spec.interval
            ),
        };
    }
    let mut traders = shared.traders();
    match traders.get(&spec.id) {
        // Idempotent: a re-sent ADD_TRADER (a retry whose ACK was lost) is acked again.
        Some(t) if t.spec.version == spec.version => return Message::Ack,
        Some(_) => {}
        None if traders.len() >= MAX_TRADERS => {
            return Message::Nack {
                reason: format!("this worker already holds {MAX_TRADERS} traders"),
            };
        }
        None => {}
    }
    tracing::info!(trader = %spec.id, version = spec.version, rule = %rule, resume_after, "trader added");
    traders.insert(spec.id.clone(), Trader::new(spec, rule, resume_after));
    publish_progress(shared, &traders);
    shared.dirty.store(true, Ordering::Release);
    Message::Ack
}

fn stop(shared: &Shared, eval: Option<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Release);
    if let Some(handle) = eval {
        let _ = handle.join();
    }
}

fn spawn_eval(
    reader: Arc<StoreReader>,
    shared: Arc<Shared>,
    out: Outbox,
    black_box: Option<Arc<SharedWords>>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("eval".into())
        .spawn(move || {
            // A panic must not leave the worker answering PINGs with frozen
            // progress: it ends the process like an error does.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                eval_loop(&reader, &shared, &out, black_box.as_deref())
            }));
            let outcome =
                outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("the evaluation thread panicked")));
            if let Err(e) = outcome {
                // A worker that cannot evaluate must not keep answering PINGs
                // as if it could: exit, and let the coordinator replace it.
                tracing::error!(error = %format!("{e:#}"), "evaluation failed: exiting");
                std::process::exit(70);
            }
        })
        .context("starting the evaluation thread")
}

fn eval_loop(
    reader: &StoreReader,
    shared: &Shared,
    out: &Outbox,
    black_box: Option<&SharedWords>,
) -> Result<()> {
    // The trader being evaluated, for the coordinator to read after a crash;
    // 0 between passes.
    let mark = |value: u64| {
        if let Some(word) = black_box.and_then(|b| b.word(0)) {
            word.store(value, Ordering::Relaxed);
        }
    };
    let mut seen = 0;
    let mut scratch = Scratch::default();
    let mut symbols = Vec::new();
    let mut hits: Vec<Hit> = Vec::new();
    let mut next_signal = 0u64;
    let mut pass_times = PassTimes(Samples::new(PASS_SAMPLES));
    while !shared.stop.load(Ordering::Acquire) {
        let changed = matches!(reader.wait_for_change(seen, EVAL_TICK)?, Wait::Changed(_));
        let dirty = shared.dirty.swap(false, Ordering::AcqRel);
        if !changed && !dirty {
            continue;
        }
        let pass_started = Instant::now();
        // Everything published up to here gets evaluated in this pass.
        let published = reader.publish_counter();
        // Append-only directory: re-read it only when it grew.
        if reader.symbol_count() != symbols.len() {
            symbols = reader.symbols_with_ids();
        }
        let mut gaps = 0;
        let mut traders = shared.traders();
        for trader in traders.values_mut() {
            let _span = tracing::debug_span!("trader", id = %trader.spec.id).entered();
            mark(trader_hash(&trader.spec.id));
            let (g, complete) = trader.evaluate(reader, &symbols, &mut scratch, &mut hits)?;
            gaps += g;
            if complete {
                trader.covered_to(published);
            } else {
                shared.dirty.store(true, Ordering::Release);
            }
        }
        if !hits.is_empty() {
            let signals: Vec<Signal> = hits
                .drain(..)
                .map(|hit| Signal {
                    trader: hit.trader,
                    symbol: hit.symbol,
                    interval: hit.interval,
                    open_time: hit.candle.open_time,
                    close: hit.candle.close,
                    labels: hit.labels,
                    values: hit.values,
                })
                .collect();
            let n = signals.len() as u64;
            out.send_signals(&mut next_signal, signals)?;
            shared.signals.fetch_add(n, Ordering::Relaxed);
        }
        mark(0);
        shared.gaps.fetch_add(gaps, Ordering::Relaxed);
        // After the signals: a PONG carrying this progress proves they were sent.
        shared.last_publish.store(published, Ordering::Release);
        publish_progress(shared, &traders);
        drop(traders);
        seen = published;
        pass_times.record(pass_started.elapsed(), shared);
    }
    Ok(())
}
