//! The commands that do the work, each from its parsed arguments: `run`,
//! `backtest`, `chaos`, the benchmarks, `store` and the benchmark children.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use protocol::InstanceName;
use protocol::store::StoreConfig;

use super::args::{BacktestArgs, BenchCommand, ChaosArgs, ChildCommand, RunArgs, StoreCommand};
use super::report::emit;
use super::{parent_at_start, worker_bin_or_default};
use crate::bench::child;
use crate::bench::store as store_bench;
use crate::feed::FeedConfig;
use crate::hold;

/// `shmkline run`.
pub fn run(instance: InstanceName, args: RunArgs) -> Result<()> {
    let state_dir = crate::state::StateDir::locate(args.state_dir.as_deref(), &instance)?;
    let state = crate::state::StateDir::open(&state_dir)?;
    let kept = state.traders()?;
    let traders = match (&args.feed.traders, kept) {
        (None, Some(kept)) => {
            tracing::info!(traders = kept.len(), state_dir = %state.path().display(),
                "traders restored from the state directory (with the last run's adds and removes)");
            kept
        }
        (Some(file), Some(kept)) => {
            tracing::info!(file = %file.display(), replaced = kept.len(),
                "the --traders file wins over the trader set in the state directory");
            args.feed.traders()?
        }
        (_, None) => args.feed.traders()?,
    };
    let plan = args.capacity.plan(&traders)?;
    let store = crate::run::plan::store_config(args.capacity.max_symbols, &plan);
    let mut feed = args.feed.config(args.candles, &store)?;
    let shard = args.shard.unwrap_or(crate::nats::Shard::WHOLE);
    if let crate::feed::FeedConfig::Binance(live) = &mut feed {
        let given = live.symbols.len();
        live.symbols.retain(|s| shard.owns(s.as_str()));
        if live.symbols.is_empty() {
            anyhow::bail!(
                "--shard {shard}: none of the {given} symbols given is in this shard: give more symbols or fewer shards"
            );
        }
    }
    let opts = crate::run::RunOptions {
        instance,
        feed,
        shard,
        publish_candles: args.publish_candles,
        store,
        plan,
        workers: args.workers,
        worker_bin: worker_bin_or_default(args.worker_bin)?,
        traders,
        pace: args.pace.pace(&args.feed.feed),
        aggregate: args.feed.aggregate(&args.capacity.intervals)?,
        ping_interval: Duration::from_millis(args.ping_interval),
        ping_deadline: Duration::from_millis(args.ping_deadline.unwrap_or(2 * args.ping_interval)),
        shutdown_timeout: Duration::from_millis(args.shutdown_timeout),
        restart_limit: args.restart_limit,
        restart_period: Duration::from_millis(args.restart_period),
        quarantine_after: args.quarantine_after,
        stall_timeout: Duration::from_millis(args.stall_timeout),
        backpressure: !args.no_backpressure,
        stay: args.stay,
        parent: args.exit_with_parent.then(parent_at_start),
        signals_from: args.signals_from,
        sink_queue: args.sink_queue,
        drain_timeout: Duration::from_millis(args.drain_timeout),
        webhook_timeout: Duration::from_millis(args.webhook_timeout),
        webhook_ca_file: args.webhook_ca_file,
        nats: args.nats.settings(),
        memory: args.observe.memory()?,
        metrics: args.observe.metrics,
        state,
        sinks: if let Some(twice) = args
            .sinks
            .iter()
            .enumerate()
            .find(|(k, spec)| args.sinks[..*k].contains(spec))
        {
            anyhow::bail!(
                "--sink {} is given twice: each sink once (two would share one position)",
                twice.1
            );
        } else if args.sinks.is_empty() {
            vec![crate::run::sink::SinkSpec::Stdout]
        } else {
            args.sinks
        },
    };
    let summary = crate::run::run(opts)?;
    tracing::info!(
        signals = summary.signals,
        faults = summary.faults,
        "run finished"
    );
    Ok(())
}

/// `shmkline backtest`.
pub fn backtest(args: BacktestArgs) -> Result<()> {
    let traders = args.feed.traders()?;
    let store = args.capacity.config_for(&traders)?;
    let opts = crate::backtest::BacktestOptions {
        feed: args.feed.config(args.candles, &store)?,
        traders,
        intervals: args.capacity.intervals.clone(),
        aggregate: args.feed.aggregate(&args.capacity.intervals)?,
        max_symbols: args.capacity.max_symbols,
    };
    let n = crate::backtest::backtest(&opts, &mut std::io::stdout().lock())?;
    tracing::info!(signals = n, "backtest done");
    Ok(())
}

/// `shmkline chaos`, as instance `instance` (default: a private `chaos-<pid>`).
pub fn chaos(instance: Option<InstanceName>, args: ChaosArgs) -> Result<()> {
    let instance = match instance {
        Some(i) => i,
        None => InstanceName::new(&format!("chaos-{}", std::process::id()))?,
    };
    let symbols = match args
        .feed
        .config(Some(args.candles), &StoreConfig::default())?
    {
        FeedConfig::Synthetic { symbols, .. } => symbols,
        _ => bail!("chaos runs the synthetic feed only"),
    };
    let opts = crate::chaos::ChaosOptions {
        instance,
        runtime_base: crate::runtime::base_dir(),
        shmkline: std::env::current_exe()?,
        traders_file: args.feed.traders.clone(),
        traders: args.feed.traders()?,
        workers: args.workers,
        symbols,
        candles: args.candles,
        rate: args.rate,
        seed: args.feed.seed,
        kills: args.kills,
        stops: args.stops,
        ping_interval_ms: args.ping_interval,
        ping_deadline_ms: args.ping_deadline,
        chaos_seed: args.chaos_seed,
        fault_interval: args.fault_interval.map(Duration::from_millis),
    };
    let report = crate::chaos::run(&opts)?;
    emit(&report, args.json)?;
    ensure!(
        report.ok,
        "chaos run failed its checks (see the report above)"
    );
    Ok(())
}

/// `shmkline soak`.
pub fn soak(instance: Option<InstanceName>, args: crate::cli::args::SoakArgs) -> Result<()> {
    let instance = match instance {
        Some(i) => i,
        None => InstanceName::new(&format!("soak-{}", std::process::id()))?,
    };
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        bail!(
            "--threshold {}: a growth in MB/h, 0 or more",
            args.threshold
        );
    }
    let duration = Duration::from_secs(args.minutes * 60);
    let opts = crate::soak::SoakOptions {
        instance,
        shmkline: std::env::current_exe()?,
        duration,
        sample_every: Duration::from_secs(args.sample_every),
        warmup: Duration::from_secs(args.warmup.unwrap_or((args.minutes * 6).max(30))),
        threshold_mb_per_h: args.threshold,
        seed: args.seed,
    };
    let report = crate::soak::run(&opts)?;
    emit(&report, args.json)?;
    ensure!(
        report.failures.is_empty(),
        "the soak failed: {}",
        report.failures.join("; ")
    );
    Ok(())
}

/// A torn-read stress that accepted a torn read failed; one that rejected
/// none did not exercise the race (worth a warning, not a failure).
fn check_torn(accepted: u64, rejected: u64) -> Result<()> {
    if rejected == 0 {
        tracing::warn!(
            "no torn read was rejected: the race was not exercised (too short a run, or a single CPU?)"
        );
    }
    ensure!(
        accepted == 0,
        "{accepted} torn reads were accepted: the seqlock is broken"
    );
    Ok(())
}

/// `shmkline bench ...` as instance `instance`.
pub fn bench(instance: &InstanceName, cmd: BenchCommand) -> Result<()> {
    let this = std::env::current_exe()?;
    match cmd {
        BenchCommand::Store {
            json,
            rounds,
            readers,
            torn_millis,
        } => {
            let opts = store_bench::StoreBenchOptions {
                rounds: rounds as usize,
                readers: readers as usize,
                torn_millis,
            };
            let report = store_bench::run(instance, &opts)?;
            emit(&report, json)?;
            check_torn(report.torn_accepted, report.torn_rejected)
        }
        BenchCommand::Torn {
            json,
            readers,
            millis,
        } => {
            let report = store_bench::run_torn(instance, readers as usize, millis)?;
            emit(&report, json)?;
            check_torn(report.counts.torn_accepted, report.counts.torn_rejected)
        }
        BenchCommand::Backfill {
            json,
            series,
            history,
            rest_weight_per_minute,
            stream_every_ms,
        } => emit(
            &crate::bench::backfill::run(
                instance,
                series as usize,
                history as usize,
                rest_weight_per_minute,
                std::time::Duration::from_millis(stream_every_ms),
            )?,
            json,
        ),
        BenchCommand::Feed {
            json,
            candles,
            rounds,
            live_messages,
        } => emit(
            &crate::bench::feed::run(
                instance,
                candles as usize,
                rounds as usize,
                live_messages as usize,
            )?,
            json,
        ),
        BenchCommand::Traders {
            json,
            traders,
            symbols,
            workers,
            candles,
            rate,
        } => {
            let opts = crate::bench::traders::TradersBench {
                traders: traders as usize,
                symbols: symbols as usize,
                workers,
                candles,
                rate,
            };
            emit(
                &crate::bench::traders::run_both(instance, &this, &opts)?,
                json,
            )
        }
        BenchCommand::Burst {
            json,
            traders,
            symbols,
            workers,
            bursts,
        } => {
            let opts = crate::bench::burst::BurstBench {
                traders: traders as usize,
                symbols: symbols as usize,
                workers,
                bursts,
            };
            emit(&crate::bench::burst::run(instance, &this, &opts)?, json)
        }
        BenchCommand::Observe {
            json,
            traders,
            symbols,
            workers,
            requests,
        } => {
            let opts = crate::bench::observe::ObserveBench {
                traders: traders as usize,
                symbols: symbols as usize,
                workers,
                requests,
            };
            emit(&crate::bench::observe::run(instance, &this, &opts)?, json)
        }
        BenchCommand::Sinks {
            json,
            traders,
            symbols,
            candles,
            restarts,
        } => {
            let opts = crate::bench::sinks::SinksBench {
                traders: traders as usize,
                symbols: symbols as usize,
                candles,
                restarts: restarts as usize,
            };
            emit(&crate::bench::sinks::run(instance, &this, &opts)?, json)
        }
        BenchCommand::Nats {
            json,
            symbols,
            candles,
            rate,
            traders,
            signal_candles,
        } => {
            let opts = crate::bench::nats::NatsBench {
                symbols: symbols as usize,
                candles,
                rate,
                throughput: crate::bench::sinks::SinksBench {
                    traders: traders as usize,
                    symbols: symbols as usize,
                    candles: signal_candles,
                    restarts: 0,
                },
                local_messages: 2000,
            };
            emit(&crate::bench::nats::run(instance, &this, &opts)?, json)
        }
        BenchCommand::Fanout {
            json,
            workers,
            symbols,
            batches,
            rate,
        } => {
            if !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0) {
                anyhow::bail!("--rate {rate}: give batches a second between 0 and 100000");
            }
            let opts = crate::bench::fanout::FanoutBench {
                workers,
                symbols: symbols as usize,
                batches: batches as usize,
                rate,
            };
            emit(&crate::bench::fanout::run(instance, &opts)?, json)
        }
        BenchCommand::Wake { json, samples } => {
            emit(&crate::bench::wake::run(instance, samples as usize)?, json)
        }
        BenchCommand::Ping {
            json,
            samples,
            worker_bin,
        } => emit(
            &crate::bench::ipc::run_ping(
                instance,
                worker_bin_or_default(worker_bin)?,
                samples as usize,
            )?,
            json,
        ),
        BenchCommand::Spawn {
            json,
            workers,
            worker_bin,
        } => emit(
            &crate::bench::ipc::run_spawn(instance, worker_bin_or_default(worker_bin)?, workers)?,
            json,
        ),
    }
}

/// `shmkline store hold|inspect`.
pub fn store(instance: &InstanceName, cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Hold {
            capacity,
            symbols,
            seconds,
        } => hold::hold(instance, &capacity.config_for(&[])?, &symbols, seconds),
        StoreCommand::Inspect { json } => {
            let info = hold::inspect(instance)?;
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                print!("{}", hold::render(&info));
            }
            Ok(())
        }
    }
}

/// The reader side of the cross-process benchmarks.
pub fn bench_child(instance: &InstanceName, role: ChildCommand) -> Result<()> {
    let report = match role {
        ChildCommand::IpcEcho { bootstrap } => crate::bench::ipc::ipc_echo(&bootstrap)?.to_string(),
        ChildCommand::FanoutShm {
            symbols,
            batches,
            base_ns,
        } => serde_json::to_string(&crate::bench::fanout::shm_child(
            instance, symbols, batches, base_ns,
        )?)?,
        ChildCommand::FanoutIpc {
            bootstrap,
            symbols,
            base_ns,
        } => serde_json::to_string(&crate::bench::fanout::ipc_child(
            &bootstrap, symbols, base_ns,
        )?)?,
        ChildCommand::Torn { millis } => {
            serde_json::to_string(&child::torn_reader(instance, millis)?)?
        }
        ChildCommand::Wake {
            scratch,
            mode,
            samples,
            base_ns,
        } => serde_json::to_string(&child::wake_reader(
            instance, &scratch, mode, samples, base_ns,
        )?)?,
    };
    println!("{report}");
    Ok(())
}
