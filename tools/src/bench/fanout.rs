//! `shmkline bench fanout`: the comparison the design exists for. Every
//! closed candle of 100 symbols reaches 1, 2, 4 and 8 worker processes
//! (a) through the shared-memory store as built (written once, published,
//! each worker woken by the futex and reading what changed) and (b)
//! serialised with bincode and sent to every worker over ipc-channel,
//! batched the same way (one message a batch, decoded into the worker's own
//! rings). Measured per side: the coordinator's CPU per candle (its thread's
//! CPU clock around writing or encoding and sending, pacing excluded), the
//! workers' CPU per candle (each process's CPU clock, mean), candle to
//! visible in a worker (from the moment the coordinator has the batch to the
//! worker having read or decoded it), memory (the coordinator's and each
//! worker's private memory; the segment). The modes alternate per worker
//! count, the order rotating, so a shared machine's drift hits both alike.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engine::instance::Instance;
use ipc_channel::ipc::{self, IpcBytesSender, IpcOneShotServer, IpcSender};
use protocol::bootstrap::Bootstrap;
use protocol::store::{StoreConfig, StoreReader, Wait};
use protocol::{Candle, InstanceName, Interval, SymbolName};
use serde::{Deserialize, Serialize};

use super::{BenchChild, Percentiles, mono_ns, ratio};

/// Batches a worker reports nothing for (start-up, caches).
const WARMUP: usize = 20;
/// How long a worker waits for the next batch before giving up.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutBench {
    /// Worker counts compared.
    pub workers: Vec<u32>,
    /// Symbols: candles per batch.
    pub symbols: usize,
    /// Batches per run (after the warm-up ones).
    pub batches: usize,
    /// Batches a second.
    pub rate: f64,
}

/// What a worker process reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildReport {
    /// Candle to visible, per batch after the warm-up, ns.
    pub latencies_ns: Vec<u64>,
    /// The process's CPU time, ns.
    pub cpu_ns: u64,
    /// Candles it read or decoded.
    pub candles: u64,
    /// Its private memory (RssAnon) and RSS at the end, bytes.
    pub private_bytes: u64,
    /// See `private_bytes`.
    pub rss_bytes: u64,
}

/// One side's figures at one worker count.
#[derive(Debug, Serialize)]
pub struct SideFigures {
    /// The coordinator's CPU per candle (written once, or encoded once and
    /// sent to every worker), ns.
    pub coordinator_cpu_ns_per_candle: f64,
    /// A worker's CPU per candle it received, ns (mean over workers).
    pub worker_cpu_ns_per_candle: f64,
    /// Candle to visible in a worker, over every worker's batches, ns.
    pub visible: Option<Percentiles>,
    /// The coordinator's private memory at the end, bytes.
    pub coordinator_private_bytes: u64,
    /// A worker's private memory at the end, bytes (mean).
    pub worker_private_bytes: u64,
    /// Shared memory: the segment's size (0 for ipc).
    pub shared_bytes: u64,
}

/// One worker count.
#[derive(Debug, Serialize)]
pub struct FanoutRow {
    /// Worker processes.
    pub workers: u32,
    /// (a) the shared-memory store.
    pub shm: SideFigures,
    /// (b) bincode over ipc-channel to every worker.
    pub ipc: SideFigures,
    /// (b) / (a): coordinator CPU per candle.
    pub coordinator_cpu_ratio: f64,
    /// (b) / (a): worker CPU per candle.
    pub worker_cpu_ratio: f64,
    /// (b) / (a): candle to visible, p50 and p99.
    pub visible_p50_ratio: f64,
    /// See `visible_p50_ratio`.
    pub visible_p99_ratio: f64,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    /// Always "fanout".
    pub bench: &'static str,
    /// Symbols (candles per batch).
    pub symbols: usize,
    /// Batches measured per run.
    pub batches: usize,
    /// Batches a second.
    pub rate: f64,
    /// Per worker count.
    pub rows: Vec<FanoutRow>,
}

fn symbol(k: usize) -> String {
    format!("FAN{k:04}")
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    cpu_ns(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_ns(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

fn own_memory() -> (u64, u64) {
    engine::run::memory::read_memory(std::process::id()).unwrap_or((0, 0))
}

/// The candles of batch `b`, stamped (in `volume`) with `stamp`.
fn batch(symbols: usize, b: usize, stamp: u64) -> impl Iterator<Item = Candle> {
    let open_time = 1_700_000_000_000 + b as i64 * 60_000;
    (0..symbols).map(move |k| {
        let price = 100.0 + (k + b % 7) as f64;
        Candle {
            open_time,
            open: price,
            high: price + 1.0,
            low: price - 1.0,
            close: price + 0.5,
            volume: stamp as f64,
        }
    })
}

/// Waits until the next batch is due at `rate` a second from `start`.
fn pace(start: Instant, b: usize, rate: f64) {
    let due = start + Duration::from_secs_f64(b as f64 / rate);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Delivers `total` batches at `rate` a second, each by `send(batch,
/// stamp)` with the stamp taken as it starts; returns this thread's CPU
/// time spent sending the measured ones (pacing excluded).
fn deliver(
    total: usize,
    rate: f64,
    base: u64,
    mut send: impl FnMut(usize, u64) -> Result<()>,
) -> Result<u64> {
    let mut cpu = 0;
    let start = Instant::now();
    for b in 0..total {
        pace(start, b, rate);
        let before = thread_cpu_ns();
        send(b, mono_ns() - base)?;
        if b >= WARMUP {
            cpu += thread_cpu_ns() - before;
        }
    }
    Ok(cpu)
}

/// (a) through the store.
fn run_shm(instance: &InstanceName, workers: u32, opts: &FanoutBench) -> Result<SideFigures> {
    let total = opts.batches + WARMUP;
    let ring = u32::try_from(total + 16).context("too many batches")?;
    let config = StoreConfig::uniform(opts.symbols as u32, &[Interval::M1], ring);
    let inst = Instance::start(instance, &config)?;
    let mut store = inst.store.lock();
    let series = (0..opts.symbols)
        .map(|k| {
            let id = store.register_symbol(&SymbolName::new(&symbol(k))?)?;
            Ok(store.series(id, Interval::M1)?)
        })
        .collect::<Result<Vec<_>>>()?;
    store.publish();
    let shared_bytes = store.size_bytes() as u64;
    let base = mono_ns();
    let children = (0..workers)
        .map(|_| {
            BenchChild::spawn(&[
                "fanout-shm".into(),
                "--instance".into(),
                instance.to_string(),
                "--symbols".into(),
                opts.symbols.to_string(),
                "--batches".into(),
                total.to_string(),
                "--base-ns".into(),
                base.to_string(),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    // Mapped and waiting before the first batch (the warm-up absorbs the rest).
    std::thread::sleep(Duration::from_millis(300));
    let cpu = deliver(total, opts.rate, base, |b, stamp| {
        for (s, candle) in series.iter().zip(batch(opts.symbols, b, stamp)) {
            store.upsert_closed(*s, &candle)?;
        }
        store.publish();
        Ok(())
    })?;
    drop(store);
    let reports = children
        .into_iter()
        .map(BenchChild::finish::<ChildReport>)
        .collect::<Result<Vec<_>>>()?;
    let figures = side(&reports, cpu, opts, shared_bytes);
    drop(inst);
    Ok(figures)
}

/// (b) bincode over ipc-channel to every worker.
fn run_ipc(workers: u32, opts: &FanoutBench) -> Result<SideFigures> {
    let total = opts.batches + WARMUP;
    let base = mono_ns();
    let mut children = Vec::new();
    let mut senders: Vec<IpcBytesSender> = Vec::new();
    for _ in 0..workers {
        let (server, name) = IpcOneShotServer::<Bootstrap>::new()?;
        children.push(BenchChild::spawn(&[
            "fanout-ipc".into(),
            "--bootstrap".into(),
            name,
            "--symbols".into(),
            opts.symbols.to_string(),
            "--base-ns".into(),
            base.to_string(),
        ])?);
        let (_, channels) = server
            .accept()
            .map_err(|e| anyhow::anyhow!("accepting a fan-out child: {e:?}"))?;
        let Bootstrap::Channels { to_worker, .. } = channels else {
            bail!("a fan-out child aborted");
        };
        senders.push(to_worker);
    }
    let cpu = deliver(total, opts.rate, base, |b, stamp| {
        let candles: Vec<Candle> = batch(opts.symbols, b, stamp).collect();
        let bytes = bincode::serde::encode_to_vec(&candles, bincode::config::standard())
            .context("encoding a batch")?;
        for to in &senders {
            to.send(&bytes).context("sending a batch")?;
        }
        Ok(())
    })?;
    // Closing the channels ends the workers.
    drop(senders);
    let reports = children
        .into_iter()
        .map(BenchChild::finish::<ChildReport>)
        .collect::<Result<Vec<_>>>()?;
    Ok(side(&reports, cpu, opts, 0))
}

fn side(reports: &[ChildReport], cpu: u64, opts: &FanoutBench, shared_bytes: u64) -> SideFigures {
    let candles = (opts.batches * opts.symbols) as f64;
    let n = reports.len().max(1) as f64;
    let mut latencies: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.latencies_ns.iter().copied())
        .collect();
    SideFigures {
        coordinator_cpu_ns_per_candle: (cpu as f64 / candles * 10.0).round() / 10.0,
        worker_cpu_ns_per_candle: (reports
            .iter()
            .map(|r| r.cpu_ns as f64 / r.candles.max(1) as f64)
            .sum::<f64>()
            / n
            * 10.0)
            .round()
            / 10.0,
        visible: Percentiles::of(&mut latencies),
        coordinator_private_bytes: own_memory().0,
        worker_private_bytes: (reports.iter().map(|r| r.private_bytes).sum::<u64>() as f64 / n)
            as u64,
        shared_bytes,
    }
}

/// `shmkline bench fanout`.
pub fn run(instance: &InstanceName, opts: &FanoutBench) -> Result<FanoutReport> {
    let mut rows = Vec::new();
    for (k, &workers) in opts.workers.iter().enumerate() {
        // The order alternates with the worker count.
        let (shm, ipc) = if k % 2 == 0 {
            let shm = run_shm(instance, workers, opts)?;
            (shm, run_ipc(workers, opts)?)
        } else {
            let ipc = run_ipc(workers, opts)?;
            (run_shm(instance, workers, opts)?, ipc)
        };
        let p = |s: &SideFigures, f: fn(&Percentiles) -> u64| {
            s.visible.as_ref().map_or(f64::NAN, |v| f(v) as f64)
        };
        rows.push(FanoutRow {
            workers,
            coordinator_cpu_ratio: ratio(
                ipc.coordinator_cpu_ns_per_candle,
                shm.coordinator_cpu_ns_per_candle,
            ),
            worker_cpu_ratio: ratio(ipc.worker_cpu_ns_per_candle, shm.worker_cpu_ns_per_candle),
            visible_p50_ratio: ratio(p(&ipc, |v| v.p50_ns), p(&shm, |v| v.p50_ns)),
            visible_p99_ratio: ratio(p(&ipc, |v| v.p99_ns), p(&shm, |v| v.p99_ns)),
            shm,
            ipc,
        });
    }
    Ok(FanoutReport {
        bench: "fanout",
        symbols: opts.symbols,
        batches: opts.batches,
        rate: opts.rate,
        rows,
    })
}

/// This process's CPU time, ns.
fn process_cpu_ns() -> u64 {
    cpu_ns(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
}

/// The report; `cpu_from` is the CPU time when the first batch was awaited
/// (the start-up before it is not the delivery's cost).
fn child_report(latencies: Vec<u64>, candles: u64, cpu_from: u64) -> ChildReport {
    let (private_bytes, rss_bytes) = own_memory();
    ChildReport {
        latencies_ns: latencies,
        cpu_ns: process_cpu_ns().saturating_sub(cpu_from),
        candles,
        private_bytes,
        rss_bytes,
    }
}

/// The worker side of (a): woken by the store's futex, it reads every
/// candle written since its cursor, as a worker's evaluation does.
pub fn shm_child(
    instance: &InstanceName,
    symbols: usize,
    batches: usize,
    base_ns: u64,
) -> Result<ChildReport> {
    let reader = StoreReader::open(instance)?;
    let series = (0..symbols)
        .map(|k| {
            let id = reader
                .symbol_id(&symbol(k))
                .with_context(|| format!("{} is not in the store", symbol(k)))?;
            Ok(reader.series(id, Interval::M1)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cursors = vec![0u64; symbols];
    let mut out = Vec::new();
    let mut latencies = Vec::with_capacity(batches);
    let mut candles = 0u64;
    let mut seen = reader.publish_counter();
    let cpu_from = process_cpu_ns();
    while cursors.iter().any(|&c| c < batches as u64) {
        seen = match reader.wait_for_change(seen, PEER_TIMEOUT)? {
            Wait::Changed(v) => v,
            Wait::TimedOut => bail!("no publish within {PEER_TIMEOUT:?}"),
        };
        let mut newest = None;
        for (s, cursor) in series.iter().zip(cursors.iter_mut()) {
            let head = reader.appended(*s)?;
            if head > *cursor {
                reader.read_range(*s, *cursor, head, &mut out)?;
                candles += out.len() as u64;
                newest = out.last().map(|c| (c.index, c.candle.volume as u64));
                *cursor = head;
            }
        }
        if let Some((index, stamp)) = newest
            && index as usize >= WARMUP
        {
            latencies.push((mono_ns() - base_ns).saturating_sub(stamp));
        }
    }
    Ok(child_report(latencies, candles, cpu_from))
}

/// The worker side of (b): each message decoded into rings of its own.
pub fn ipc_child(bootstrap: &str, symbols: usize, base_ns: u64) -> Result<ChildReport> {
    let (to_child, batches) = ipc::bytes_channel()?;
    let (unused, from_child) = ipc::bytes_channel()?;
    IpcSender::<Bootstrap>::connect(bootstrap.to_owned())?.send(Bootstrap::Channels {
        to_worker: to_child,
        from_worker: from_child,
    })?;
    let mut rings: Vec<std::collections::VecDeque<Candle>> = (0..symbols)
        .map(|_| std::collections::VecDeque::new())
        .collect();
    let mut latencies = Vec::new();
    let (mut candles, mut received) = (0u64, 0usize);
    let cpu_from = process_cpu_ns();
    while let Ok(bytes) = batches.recv() {
        let (batch, _): (Vec<Candle>, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .context("decoding a batch")?;
        let stamp = batch.last().map_or(0, |c| c.volume as u64);
        for (ring, candle) in rings.iter_mut().zip(batch) {
            if ring.len() == 1440 {
                ring.pop_front();
            }
            ring.push_back(candle);
            candles += 1;
        }
        if received >= WARMUP {
            latencies.push((mono_ns() - base_ns).saturating_sub(stamp));
        }
        received += 1;
    }
    drop(unused);
    Ok(child_report(latencies, candles, cpu_from))
}
