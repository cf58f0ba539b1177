//! The tools' commands, each from its parsed arguments: `chaos`, `soak`,
//! the benchmarks and the benchmark children.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use engine::feed::FeedConfig;
use protocol::InstanceName;
use protocol::store::StoreConfig;

use crate::args::{BenchCommand, ChaosArgs, ChildCommand, SoakArgs};
use crate::bench::child;
use crate::bench::store as store_bench;
use crate::report::emit;

/// The `shmkline` binary next to this one: the runs the tools start are its
/// (`shmkline` itself runs this binary from the same directory).
pub fn shmkline_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the shmkline-tools executable")?;
    exe.parent()
        .map(|dir| dir.join("shmkline"))
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))
}

/// `--instance`, else `$SHMKLINE_INSTANCE`, else a private `bench-<pid>`
/// (never `default`, so a benchmark does not collide with a running engine).
pub fn bench_instance(given: Option<InstanceName>) -> Result<InstanceName> {
    Ok(match given {
        Some(name) => name,
        None => InstanceName::from_env_or(&format!("bench-{}", std::process::id()))?,
    })
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
        runtime_base: engine::runtime::base_dir(),
        shmkline: shmkline_bin()?,
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
pub fn soak(instance: Option<InstanceName>, args: SoakArgs) -> Result<()> {
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
        shmkline: shmkline_bin()?,
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
    let shmkline = shmkline_bin()?;
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
                &crate::bench::traders::run_both(instance, &shmkline, &opts)?,
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
            emit(&crate::bench::burst::run(instance, &shmkline, &opts)?, json)
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
            emit(
                &crate::bench::observe::run(instance, &shmkline, &opts)?,
                json,
            )
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
            emit(&crate::bench::sinks::run(instance, &shmkline, &opts)?, json)
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
            emit(&crate::bench::nats::run(instance, &shmkline, &opts)?, json)
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
                engine::cli::worker_bin_or_default(worker_bin)?,
                samples as usize,
            )?,
            json,
        ),
        BenchCommand::Spawn {
            json,
            workers,
            worker_bin,
        } => emit(
            &crate::bench::ipc::run_spawn(
                instance,
                engine::cli::worker_bin_or_default(worker_bin)?,
                workers,
            )?,
            json,
        ),
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
