//! `shmkline`: the coordinator's command line. Thin: parsing, logging, exit
//! codes; the work is in the `engine` library.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use engine::bench::child::{self, WakeMode};
use engine::bench::{store as store_bench, wake};
use engine::hold;
use protocol::store::StoreConfig;
use protocol::{InstanceName, Interval, SymbolName};
use serde::Serialize;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "shmkline",
    version,
    about = "Shared-memory kline engine: a coordinator writes candles into shared memory, workers read them"
)]
struct Cli {
    /// Instance name, [A-Za-z0-9_-]{1,32}. Default: $SHMKLINE_INSTANCE, else "default"
    /// (benchmarks: a private "bench-<pid>").
    #[arg(long, global = true)]
    instance: Option<InstanceName>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the store against baselines taken in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Create, hold and inspect a store segment from a shell.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The reader side of cross-process benchmarks (internal).
    #[command(subcommand, hide = true)]
    BenchChild(ChildCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Upsert and read costs, stall detection, cross-process torn-read stress.
    Store {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Timed rounds per figure (medians are reported).
        #[arg(long, default_value_t = 21, value_parser = clap::value_parser!(u64).range(1..=1000))]
        rounds: u64,
        /// Reader processes in the torn-read stress.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
        readers: u64,
        /// Duration of the torn-read stress, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
        torn_millis: u64,
    },
    /// One-way wake latency to a separate reader process, futex and busy-poll.
    Wake {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Samples per mode (after 100 warm-up samples).
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        samples: u64,
    },
    /// The cross-process torn-read stress alone.
    Torn {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Reader processes.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
        readers: u64,
        /// Duration in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
        millis: u64,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Create the instance's store and keep it until SIGTERM/SIGINT (or --seconds).
    /// Prints {"ready":true,...} on stdout once the segment exists.
    Hold {
        #[command(flatten)]
        capacity: CapacityArgs,
        /// Symbols to register, comma-separated.
        #[arg(long, value_delimiter = ',')]
        symbols: Vec<SymbolName>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Print a running instance's segment header (read-only mapping).
    Inspect {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Store capacities: memory is fixed by them at start.
#[derive(Debug, Args)]
struct CapacityArgs {
    /// Symbol directory capacity.
    #[arg(long, default_value_t = 256)]
    max_symbols: u32,
    /// Intervals kept per symbol, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1m,5m,15m,1h,4h,1d")]
    intervals: Vec<Interval>,
    /// Candles kept per (symbol, interval).
    #[arg(long, default_value_t = 1440)]
    candles_per_series: u32,
}

impl CapacityArgs {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            symbols: self.max_symbols,
            intervals: self.intervals.clone(),
            candles_per_series: self.candles_per_series,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ChildCommand {
    Torn {
        #[arg(long)]
        millis: u64,
    },
    Wake {
        #[arg(long)]
        scratch: String,
        #[arg(long, value_enum)]
        mode: WakeMode,
        #[arg(long)]
        samples: usize,
        #[arg(long)]
        base_ns: u64,
    },
}

fn instance_or_default(given: Option<InstanceName>) -> Result<InstanceName> {
    match given {
        Some(name) => Ok(name),
        None => {
            match std::env::var("SHMKLINE_INSTANCE") {
                Ok(name) if !name.is_empty() => Ok(InstanceName::new(&name)
                    .map_err(|e| anyhow::anyhow!("SHMKLINE_INSTANCE: {e}"))?),
                _ => Ok(InstanceName::new("default")?),
            }
        }
    }
}

fn bench_instance(given: Option<InstanceName>) -> Result<InstanceName> {
    Ok(match given {
        Some(name) => name,
        None => InstanceName::new(&format!("bench-{}", std::process::id()))?,
    })
}

/// Prints `report` as one JSON line, or as aligned `key value` lines.
fn emit<T: Serialize>(report: &T, json: bool) -> Result<()> {
    let value = serde_json::to_value(report)?;
    if json {
        println!("{}", serde_json::to_string(&value)?);
        return Ok(());
    }
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    // Targets read best as "name  value (limit) met".
                    if let Some(name) = v.get("name").and_then(|n| n.as_str()) {
                        let met = if v["met"] == true { "met" } else { "NOT MET" };
                        out.push((format!("{prefix}: {name}"), format!("{} {met}", v["value"])));
                    } else {
                        walk(&format!("{prefix}.{i}"), v, out);
                    }
                }
            }
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut rows = Vec::new();
    walk("", &value, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
    Ok(())
}

fn check_torn(accepted: u64, rejected: u64) -> Result<()> {
    if rejected == 0 {
        tracing::warn!(
            "no torn read was rejected: the race was not exercised (too short a run, or a single CPU?)"
        );
    }
    anyhow::ensure!(
        accepted == 0,
        "{accepted} torn reads were accepted: the seqlock is broken"
    );
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench(BenchCommand::Store {
            json,
            rounds,
            readers,
            torn_millis,
        }) => {
            let opts = store_bench::StoreBenchOptions {
                rounds: rounds as usize,
                readers: readers as usize,
                torn_millis,
            };
            let report = store_bench::run(&bench_instance(cli.instance)?, &opts)?;
            emit(&report, json)?;
            check_torn(report.torn_accepted, report.torn_rejected)
        }
        Command::Bench(BenchCommand::Wake { json, samples }) => emit(
            &wake::run(&bench_instance(cli.instance)?, samples as usize)?,
            json,
        ),
        Command::Bench(BenchCommand::Torn {
            json,
            readers,
            millis,
        }) => {
            let report =
                store_bench::run_torn(&bench_instance(cli.instance)?, readers as usize, millis)?;
            emit(&report, json)?;
            check_torn(report.counts.torn_accepted, report.counts.torn_rejected)
        }
        Command::Store(StoreCommand::Hold {
            capacity,
            symbols,
            seconds,
        }) => hold::hold(
            &instance_or_default(cli.instance)?,
            &capacity.config(),
            &symbols,
            seconds,
        ),
        Command::Store(StoreCommand::Inspect { json }) => {
            let info = hold::inspect(&instance_or_default(cli.instance)?)?;
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                print!("{}", hold::render(&info));
            }
            Ok(())
        }
        Command::BenchChild(role) => {
            let instance = instance_or_default(cli.instance)?;
            match role {
                ChildCommand::Torn { millis } => {
                    println!(
                        "{}",
                        serde_json::to_string(&child::torn_reader(&instance, millis)?)?
                    )
                }
                ChildCommand::Wake {
                    scratch,
                    mode,
                    samples,
                    base_ns,
                } => println!(
                    "{}",
                    serde_json::to_string(&child::wake_reader(
                        &instance, &scratch, mode, samples, base_ns
                    )?)?
                ),
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("SHMKLINE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(protocol::exit::code_for(err.as_ref()))
        }
    }
}
