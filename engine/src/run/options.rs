//! What `shmkline run` is told, and the checks that refuse what cannot run
//! before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use protocol::store::StoreConfig;
use protocol::trader::{MAX_TRADERS_PER_WORKER, TraderSpec};
use protocol::{InstanceName, Interval};

use crate::feed::{FeedConfig, Pace};

/// Highest `--rate` accepted.
pub const MAX_RATE: f64 = 1_000_000.0;

/// Everything `shmkline run` is told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The instance.
    pub instance: InstanceName,
    /// Store capacities (from the plan).
    pub store: StoreConfig,
    /// How the rings were sized, per interval.
    pub plan: Vec<super::plan::RingPlan>,
    /// Worker processes.
    pub workers: u32,
    /// The worker binary.
    pub worker_bin: PathBuf,
    /// Traders to run.
    pub traders: Vec<TraderSpec>,
    /// The feed.
    pub feed: FeedConfig,
    /// How fast a finite feed is written.
    pub pace: Pace,
    /// The intervals built from 1-minute candles (a subset of the store's).
    pub aggregate: Vec<Interval>,
    /// Keep running after a finite feed is done (until SIGINT/SIGTERM), so
    /// the store stays readable.
    pub stay: bool,
    /// Shut down once the parent is no longer this process (it exited and
    /// this one was re-parented).
    pub parent: Option<i32>,
    /// Where signals go (`--sink`; stdout alone by default).
    pub sinks: Vec<super::sink::SinkSpec>,
    /// What survives a restart: the trader set, kept after every change.
    pub state: crate::state::StateDir,
    /// Which signals the sinks get (`--signals-from`).
    pub signals_from: super::sink::SignalsFrom,
    /// Signals a durable sink may hold queued before it is behind (`--sink-queue`).
    pub sink_queue: u64,
    /// How long teardown lets durable sinks deliver what is queued (`--drain-timeout`).
    pub drain_timeout: Duration,
    /// A webhook request's whole time before it is given up and retried (`--webhook-timeout`).
    pub webhook_timeout: Duration,
    /// Webhooks over https trust exactly these CA certificates (`--webhook-ca-file`).
    pub webhook_ca_file: Option<std::path::PathBuf>,
    /// Where every candle written is published too (`--publish-candles`).
    pub publish_candles: Option<crate::nats::NatsAddr>,
    /// Where the read-only HTTP endpoint listens (`--metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// The memory-growth monitor (`--memory-*`).
    pub memory: super::memory::MemorySettings,
    /// The symbols this coordinator takes (`--shard K/N`).
    pub shard: crate::nats::Shard,
    /// NATS settings (`--nats-*`): the wait for the broker, the streams made.
    pub nats: crate::nats::NatsSettings,
    /// PING interval.
    pub ping_interval: Duration,
    /// A PING unanswered for this long means the worker hangs. A stop is
    /// detected at most `ping_interval + ping_deadline` after it happens.
    pub ping_deadline: Duration,
    /// How long CLEANUP may take before stragglers are killed.
    pub shutdown_timeout: Duration,
    /// Self-inflicted failures allowed per slot within [`RunOptions::restart_period`].
    pub restart_limit: u32,
    /// The window for [`RunOptions::restart_limit`].
    pub restart_period: Duration,
    /// Self-inflicted crashes pinned on one trader before it is quarantined.
    pub quarantine_after: u32,
    /// A worker whose reported progress does not advance for this long while
    /// newer batches wait is stuck (its evaluation loops or blocks) even if it
    /// still answers PINGs: it is replaced like a hung one.
    pub stall_timeout: Duration,
    /// Whether the feed waits for the slowest worker (replay) or keeps its
    /// pace whatever happens (like a live feed; candles can then leave the
    /// ring unevaluated, which is reported as a gap).
    pub backpressure: bool,
}

/// Refuses what cannot run, before anything starts: the feed, the number
/// of traders for the workers, each trader, the worker binary.
pub(super) fn check(opts: &RunOptions) -> Result<()> {
    check_feed(opts)?;
    let capacity = opts.workers as usize * MAX_TRADERS_PER_WORKER;
    if opts.traders.len() > capacity {
        bail!(
            "{} traders need at least {} workers (a worker holds at most {MAX_TRADERS_PER_WORKER}): raise --workers",
            opts.traders.len(),
            opts.traders.len().div_ceil(MAX_TRADERS_PER_WORKER)
        );
    }
    for t in &opts.traders {
        check_trader(&opts.store, t)?;
    }
    // Spread as the coordinator spreads them (round robin): each worker's
    // evaluation graph within its bound.
    let workers = opts.workers.max(1) as usize;
    let mut graphs = vec![protocol::rule::NodeCount::default(); workers];
    for (k, t) in opts.traders.iter().enumerate() {
        graphs[k % workers].add(&t.id, super::slot::nodes_of(t));
    }
    if let Some((s, g)) = graphs
        .iter()
        .enumerate()
        .find(|(_, g)| g.len() > protocol::rule::NODE_BOUND)
    {
        bail!(
            "the traders give worker {s} {} distinct indicators and computed series to compute, past the limit of {} per worker: raise --workers (traders are spread over them), or use fewer distinct indicators",
            g.len(),
            protocol::rule::NODE_BOUND
        );
    }
    if !opts.worker_bin.exists() {
        bail!(
            "worker binary {} not found: build it (cargo build) or pass --worker-bin",
            opts.worker_bin.display()
        );
    }
    Ok(())
}

/// Refuses a trader this store cannot run: a bad spec or rule, a window
/// longer than half the ring, an interval the store does not keep.
pub(super) fn check_trader(store: &StoreConfig, t: &TraderSpec) -> Result<u64> {
    let window = protocol::admit::admit(t)?.lookback() + t.cooldown as usize;
    let Some(ring) = store.ring(t.interval) else {
        bail!(
            "trader {} uses interval {}, which the store does not keep (--intervals)",
            t.id,
            t.interval
        );
    };
    // The feed runs up to half a ring ahead of the slowest worker: a
    // window longer than that could leave the ring before a verdict.
    let half_ring = ring as usize / 2;
    if window > half_ring {
        bail!(
            "trader {}: its rule and cooldown need {window} candles, more than half the {} ring ({half_ring} of {ring}): restart with --candles-per-series {}={} (or more), or shorten the rule",
            t.id,
            t.interval,
            t.interval,
            2 * window
        );
    }
    Ok(window as u64)
}

/// Refuses a feed configuration that cannot run, saying which flag to fix.
fn check_feed(opts: &RunOptions) -> Result<()> {
    if let FeedConfig::Synthetic {
        symbols, candles, ..
    } = &opts.feed
    {
        if *symbols == 0 || *symbols > opts.store.symbols as usize {
            bail!(
                "--symbols {symbols} must be between 1 and the store's --max-symbols {}",
                opts.store.symbols
            );
        }
        if *candles == Some(0) {
            bail!(
                "--candles 0: a finite feed needs at least one candle (omit --candles to run until stopped)"
            );
        }
    }
    match opts.pace {
        Pace::Rate(rate) if !(rate > 0.0 && rate <= MAX_RATE) => bail!(
            "--rate {rate} must be a number of candles per second above 0 and at most {MAX_RATE}"
        ),
        Pace::Speed(speed) if !(speed > 0.0 && speed.is_finite()) => {
            bail!("--speed {speed} must be a positive multiple of real time")
        }
        _ => {}
    }
    if let Some(i) = opts
        .aggregate
        .iter()
        .find(|i| opts.store.ring(**i).is_none())
    {
        bail!("--aggregate {i}: the store does not keep {i} candles: add it to --intervals");
    }
    Ok(())
}
