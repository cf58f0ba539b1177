//! `shmkline`: the coordinator's command line. Thin: parsing, logging, exit
//! codes; the work is in the `engine` library.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use engine::bench::child::{self, WakeMode};
use engine::bench::{store as store_bench, wake};
use engine::feed::replay::ReplayOptions;
use engine::feed::{FeedConfig, FeedKind, Pace};
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
    /// The main job: create the store, start the workers, register the traders,
    /// run the synthetic feed and print every signal as a JSON line on stdout.
    Run(RunArgs),
    /// The same traders over the same feed in one process (no workers, no
    /// shared memory), printing the same signal lines: the oracle for `run`.
    Backtest(BacktestArgs),
    /// Chaos test: run a paced finite feed, SIGKILL and SIGSTOP random workers
    /// from outside, then compare the signals with the backtest and check for
    /// leaks. Exits non-zero if anything was lost, duplicated, unexpected or leaked.
    Chaos(ChaosArgs),
    /// Send a signal to one worker of a running instance (by slot id).
    KillWorker {
        /// The worker slot, as `status` lists it.
        id: u32,
        /// KILL, STOP, TERM or CONT.
        #[arg(long, default_value = "KILL", value_parser = ["KILL", "STOP", "TERM", "CONT"])]
        signal: String,
    },
    /// Manage the traders of a running instance.
    #[command(subcommand)]
    Traders(TradersCommand),
    /// Show a running instance: workers, segment, feed, signals.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
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
enum TradersCommand {
    /// Add the traders of a file (JSON or TOML) to the running engine: each is checked
    /// first, and if any is refused none is added. They start with the next
    /// closed candle.
    Add {
        /// The trader file.
        file: std::path::PathBuf,
    },
    /// Remove a trader: its worker stops evaluating it at once.
    Remove {
        /// The trader's id.
        id: String,
    },
    /// List the traders: slot, state (running, pending, quarantined), rule.
    List {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
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
    /// PING/PONG round trip through the whole protocol stack vs raw ipc-channel.
    Ping {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Round trips per measurement (after 200 warm-up ones).
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        samples: u64,
        /// The worker binary. Default: shmkline-worker next to this executable.
        #[arg(long, env = "SHMKLINE_WORKER_BIN")]
        worker_bin: Option<std::path::PathBuf>,
    },
    /// Spawn-to-READY and CLEANUP-to-CLEANUP_COMPLETE times.
    Spawn {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Workers spawned (one after another), then cleaned up.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=256))]
        workers: u32,
        /// The worker binary. Default: shmkline-worker next to this executable.
        #[arg(long, env = "SHMKLINE_WORKER_BIN")]
        worker_bin: Option<std::path::PathBuf>,
    },
    /// Replay parse and write rates (vs reading lines and bare upserts), and
    /// the live path's latency against a loopback Binance stand-in.
    Feed {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Candles per measured pass.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..=50_000_000))]
        candles: u64,
        /// Timed rounds per figure (medians are reported).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=30))]
        rounds: u64,
        /// Live messages streamed (one every 200 µs; the first 100 are warm-up).
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
        live_messages: u64,
    },
    /// A real run with many traders on many symbols: evaluation pass and
    /// signal latency percentiles, as the workers and coordinator measure them.
    Traders {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Traders.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        traders: u64,
        /// Synthetic symbols.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=4096))]
        symbols: u64,
        /// Worker processes.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        workers: u32,
        /// Candles per symbol (the rules' warm-up is about 450).
        #[arg(long, default_value_t = 600)]
        candles: u64,
        /// Candles per second per symbol.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
    },
    /// Signal bursts (every trader on every symbol firing on one candle),
    /// publish to the last signal on stdout, next to a single signal's; and
    /// how fast a replacement worker catches up half a ring.
    Burst {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Traders (each fires on every candle in the burst run).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        traders: u64,
        /// Synthetic symbols.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=4096))]
        symbols: u64,
        /// Worker processes of the burst runs.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        workers: u32,
        /// Bursts measured (one every 2 s, after two warm-up ones).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        bursts: u64,
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

#[derive(Debug, Args)]
struct RunArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    #[command(flatten)]
    feed: FeedArgs,
    /// Closed candles per symbol, then an orderly exit once every trader has
    /// evaluated every candle. Default: run until SIGINT/SIGTERM.
    #[arg(long)]
    candles: Option<u64>,
    #[command(flatten)]
    pace: PaceArgs,
    /// Milliseconds the workers get to answer CLEANUP before they are killed.
    #[arg(long, default_value_t = 1000)]
    shutdown_timeout: u64,
    /// Milliseconds between PINGs to each worker.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    ping_interval: u64,
    /// Milliseconds a PING may go unanswered before the worker counts as hung
    /// and is replaced. Default: twice --ping-interval. A stop is detected at
    /// most --ping-interval + --ping-deadline after it happens.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    ping_deadline: Option<u64>,
    /// The worker binary. Default: shmkline-worker next to this executable.
    #[arg(long, env = "SHMKLINE_WORKER_BIN")]
    worker_bin: Option<std::path::PathBuf>,
    /// Self-inflicted worker failures (crash, abort, error exit, hang, protocol
    /// violation, failed start) allowed per slot within --restart-period; one
    /// more and the run stops with an error. Kills from outside never count.
    #[arg(long, default_value_t = 5)]
    restart_limit: u32,
    /// The window for --restart-limit, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    restart_period: u64,
    /// Worker crashes pinned on one trader before that trader is quarantined
    /// (taken out, reported; the other traders keep running).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    quarantine_after: u32,
    /// Milliseconds a worker's progress may stand still while newer batches
    /// wait before it counts as stuck (its evaluation loops or blocks even
    /// though it answers PINGs) and is replaced.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    stall_timeout: u64,
    /// Keep the feed's pace even when workers fall behind or are being
    /// replaced, as a live feed would: candles can then leave the ring before
    /// they are evaluated, which is reported as a gap (and fails a finite run).
    /// By default the feed waits for the slowest worker instead.
    #[arg(long)]
    no_backpressure: bool,
    /// After a finite feed is written and evaluated, keep running (store,
    /// workers, control socket) until SIGINT/SIGTERM, so other processes can
    /// read the candles.
    #[arg(long)]
    stay: bool,
    /// Shut down when the process that started this one exits (for scripts
    /// and harnesses that run it in the background: a killed parent must not
    /// leave the engine, its workers and its segment behind).
    #[arg(long)]
    exit_with_parent: bool,
    #[command(flatten)]
    capacity: CapacityArgs,
}

/// The traders and the feed: the same flags for `run`, `backtest` and
/// `chaos`, so a backtest replays exactly what a run saw.
#[derive(Debug, Args)]
struct FeedArgs {
    /// Trader file: JSON (one trader object or an array) or TOML (one table, or
    /// `[[trader]]` tables). Default: the built-in
    /// set (SMA 10 and 30 crosses, both ways, every symbol, 1m).
    #[arg(long)]
    traders: Option<std::path::PathBuf>,
    /// The feed: `synthetic` (built in, deterministic), `replay:PATH[,PATH...]`
    /// (Binance kline CSV dumps, 12 or 7 columns, ms or µs timestamps, with or
    /// without a header; or JSON lines of WebSocket kline payloads), or
    /// `binance` (live, with --symbols).
    #[arg(long, default_value = "synthetic")]
    feed: FeedKind,
    /// Seed of the synthetic feed: same seed, same candles.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Synthetic feed: how many symbols (SYN000, SYN001, ...). Live feed: which
    /// symbols, comma-separated (btcusdt,ethusdt).
    #[arg(long, default_value = "4")]
    symbols: String,
    /// Replay: the symbol of every CSV file (default: from each file's name,
    /// as Binance names them: BTCUSDT-1m-2024-01.csv).
    #[arg(long)]
    symbol: Option<SymbolName>,
    /// Replay: the interval of every CSV file (default: from each file's name).
    #[arg(long)]
    interval: Option<Interval>,
    /// Intervals built from 1-minute candles, comma-separated, or `none`.
    /// Default: every interval of --intervals above 1m (synthetic and replay
    /// feeds); none for the live feed, which subscribes to each interval.
    #[arg(long, value_delimiter = ',')]
    aggregate: Option<Vec<String>>,
    /// Replay: stop with an error at the first bad line instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Live feed: the WebSocket base URL, and after a comma the REST base URL
    /// (for a local or test server).
    #[arg(
        long,
        default_value = "wss://stream.binance.com:9443,https://api.binance.com"
    )]
    endpoint: String,
    /// Live feed: milliseconds without any message (Binance pings every 20 s)
    /// after which the connection counts as dead and is replaced.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..))]
    silence_timeout: u64,
    /// Live feed: seconds after which a connection is replaced before
    /// Binance's 24-hour cut.
    #[arg(long, default_value_t = 84_600, value_parser = clap::value_parser!(u64).range(1..=86_000))]
    max_connection_age: u64,
    /// Live feed: first reconnect delay in milliseconds (doubled per failed
    /// attempt up to --reconnect-max, with jitter).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    reconnect_min: u64,
    /// Live feed: trust exactly the CA certificates in this PEM file instead of
    /// the built-in webpki roots (a TLS-intercepting proxy, a test server).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Live feed: largest reconnect delay in milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    reconnect_max: u64,
}

impl FeedArgs {
    /// The trader file's traders, or the built-in set.
    fn traders(&self) -> Result<Vec<protocol::trader::TraderSpec>> {
        match &self.traders {
            Some(path) => engine::traders::load(path),
            None => Ok(engine::traders::defaults()),
        }
    }

    /// The feed, with `candles` for the synthetic one; `capacity` gives the
    /// live feed its intervals and sizes its start-up backfill (a ring's
    /// worth, at most 1000).
    fn config(&self, candles: Option<u64>, capacity: &CapacityArgs) -> Result<FeedConfig> {
        if self.feed != FeedKind::Synthetic && candles.is_some() {
            anyhow::bail!("--candles is for the synthetic feed: a replay ends with its files");
        }
        if !matches!(self.feed, FeedKind::Replay(_))
            && (self.symbol.is_some() || self.interval.is_some() || self.strict)
        {
            anyhow::bail!("--symbol, --interval and --strict are for --feed replay:PATH");
        }
        match &self.feed {
            FeedKind::Synthetic => Ok(FeedConfig::Synthetic {
                seed: self.seed,
                symbols: self.symbols.trim().parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--symbols {:?}: the synthetic feed takes a number of symbols",
                        self.symbols
                    )
                })?,
                candles,
            }),
            FeedKind::Replay(paths) => Ok(FeedConfig::Replay(ReplayOptions {
                paths: paths.clone(),
                symbol: self.symbol.clone(),
                interval: self.interval,
                strict: self.strict,
            })),
            FeedKind::Binance => {
                let mut symbols: Vec<SymbolName> = Vec::new();
                for s in self
                    .symbols
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    let name = SymbolName::new(&s.to_ascii_uppercase())
                        .map_err(|e| anyhow::anyhow!("--symbols: {e}"))?;
                    if !symbols.contains(&name) {
                        symbols.push(name);
                    }
                }
                if symbols
                    .iter()
                    .all(|s| s.as_str().bytes().all(|b| b.is_ascii_digit()))
                {
                    anyhow::bail!(
                        "--feed binance needs the symbols by name: --symbols btcusdt,ethusdt (got {:?})",
                        self.symbols
                    );
                }
                let (ws, rest) = self
                    .endpoint
                    .split_once(',')
                    .unwrap_or((self.endpoint.as_str(), engine::feed::live::BINANCE_REST));
                Ok(FeedConfig::Binance(engine::feed::live::LiveOptions {
                    symbols,
                    intervals: capacity.intervals.clone(),
                    ws_url: ws.trim().to_owned(),
                    rest_url: rest.trim().to_owned(),
                    silence_timeout: std::time::Duration::from_millis(self.silence_timeout),
                    max_connection_age: std::time::Duration::from_secs(self.max_connection_age),
                    reconnect_min: std::time::Duration::from_millis(self.reconnect_min),
                    reconnect_max: std::time::Duration::from_millis(self.reconnect_max),
                    backfill: (capacity.candles_per_series as usize)
                        .min(engine::feed::live::REST_PAGE),
                    ca_file: self.ca_file.clone(),
                    trace: false,
                }))
            }
        }
    }

    /// The intervals to build from 1-minute candles, given the store's.
    fn aggregate(&self, kept: &[Interval]) -> Result<Vec<Interval>> {
        match &self.aggregate {
            None if self.feed == FeedKind::Binance => Ok(Vec::new()),
            Some(_) if self.feed == FeedKind::Binance => anyhow::bail!(
                "--aggregate is for the synthetic and replay feeds: the live feed subscribes to every --intervals stream, built by the exchange"
            ),
            None => Ok(kept
                .iter()
                .copied()
                .filter(|i| *i != Interval::M1)
                .collect()),
            Some(list) if list.len() == 1 && list[0] == "none" => Ok(Vec::new()),
            Some(list) => list
                .iter()
                .map(|i| {
                    let i: Interval = i.parse()?;
                    if i == Interval::M1 {
                        anyhow::bail!("--aggregate 1m: 1-minute candles are the input, not built");
                    }
                    Ok(i)
                })
                .collect(),
        }
    }
}

/// How fast a finite feed goes.
#[derive(Debug, Args)]
struct PaceArgs {
    /// Candles per second per symbol. Default: 10 for the synthetic feed; a
    /// replay goes as fast as the traders keep up unless --rate or --speed is given.
    #[arg(long, conflicts_with = "speed")]
    rate: Option<f64>,
    /// Replay at this multiple of real time (60: a minute of candles per second).
    #[arg(long)]
    speed: Option<f64>,
}

impl PaceArgs {
    fn pace(&self, feed: &FeedKind) -> Pace {
        match (self.rate, self.speed) {
            (Some(rate), _) => Pace::Rate(rate),
            (None, Some(speed)) => Pace::Speed(speed),
            (None, None) if *feed == FeedKind::Synthetic => Pace::Rate(10.0),
            (None, None) => Pace::Fast,
        }
    }
}

#[derive(Debug, Args)]
struct BacktestArgs {
    #[command(flatten)]
    feed: FeedArgs,
    /// Synthetic feed: closed candles per symbol (a backtest needs an end).
    #[arg(long)]
    candles: Option<u64>,
    /// Accepted so `run`'s flags can be reused as they are; a backtest is not paced.
    #[command(flatten)]
    pace: PaceArgs,
    #[command(flatten)]
    capacity: CapacityArgs,
}

#[derive(Debug, Args)]
struct ChaosArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// SIGKILLs to send.
    #[arg(long, default_value_t = 50)]
    kills: u32,
    /// SIGSTOPs to send.
    #[arg(long, default_value_t = 5)]
    stops: u32,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: u32,
    #[command(flatten)]
    feed: FeedArgs,
    /// Closed candles per symbol (the run's length with --rate).
    #[arg(long, default_value_t = 1200)]
    candles: u64,
    /// Candles per second per symbol.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Milliseconds between faults. Default: the faults spread evenly over the
    /// first 70% of the feed (--candles / --rate seconds).
    #[arg(long)]
    fault_interval: Option<u64>,
    /// Fault schedule seed (which worker, which kind, in which order).
    #[arg(long, default_value_t = 7)]
    chaos_seed: u64,
    /// PING interval of the run, in ms.
    #[arg(long, default_value_t = 100)]
    ping_interval: u64,
    /// PING deadline of the run, in ms. Default: the run's (twice the interval).
    #[arg(long)]
    ping_deadline: Option<u64>,
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

impl Default for CapacityArgs {
    fn default() -> Self {
        let c = StoreConfig::default();
        Self {
            max_symbols: c.symbols,
            intervals: c.intervals,
            candles_per_series: c.candles_per_series,
        }
    }
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
    IpcEcho {
        #[arg(long)]
        bootstrap: String,
    },
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

/// `--instance`, else `$SHMKLINE_INSTANCE`, else a private `bench-<pid>`
/// (never `default`, so a benchmark does not collide with a running engine).
fn bench_instance(given: Option<InstanceName>) -> Result<InstanceName> {
    match given {
        Some(name) => Ok(name),
        None => match std::env::var("SHMKLINE_INSTANCE") {
            Ok(name) if !name.is_empty() => {
                InstanceName::new(&name).map_err(|e| anyhow::anyhow!("SHMKLINE_INSTANCE: {e}"))
            }
            _ => Ok(InstanceName::new(&format!("bench-{}", std::process::id()))?),
        },
    }
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

/// The worker binary given, or `shmkline-worker` next to this executable.
fn worker_bin_or_default(given: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("shmkline-worker"))
            .ok_or_else(|| anyhow::anyhow!("cannot locate shmkline-worker: pass --worker-bin")),
    }
}

fn run_main(instance: InstanceName, args: RunArgs) -> Result<()> {
    let traders = args.feed.traders()?;
    let worker_bin = worker_bin_or_default(args.worker_bin)?;
    let opts = engine::run::RunOptions {
        instance,
        store: args.capacity.config(),
        workers: args.workers,
        worker_bin,
        traders,
        feed: args.feed.config(args.candles, &args.capacity)?,
        pace: args.pace.pace(&args.feed.feed),
        aggregate: args.feed.aggregate(&args.capacity.intervals)?,
        ping_interval: std::time::Duration::from_millis(args.ping_interval),
        ping_deadline: std::time::Duration::from_millis(
            args.ping_deadline.unwrap_or(2 * args.ping_interval),
        ),
        shutdown_timeout: std::time::Duration::from_millis(args.shutdown_timeout),
        restart_limit: args.restart_limit,
        restart_period: std::time::Duration::from_millis(args.restart_period),
        quarantine_after: args.quarantine_after,
        stall_timeout: std::time::Duration::from_millis(args.stall_timeout),
        backpressure: !args.no_backpressure,
        stay: args.stay,
        parent: args
            .exit_with_parent
            .then(|| *PARENT_AT_START.get_or_init(|| nix::unistd::getppid().as_raw())),
    };
    let summary = engine::run::run(opts)?;
    tracing::info!(
        signals = summary.signals,
        faults = summary.faults,
        "run finished"
    );
    Ok(())
}

fn print_status(status: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!(
        "instance {} (pid {}), {}, up {} ms",
        s(&status["instance"]),
        status["pid"],
        s(&status["state"]),
        status["uptime_ms"]
    );
    println!(
        "segment  {} ({} bytes, generation {})",
        s(&status["segment"]["name"]),
        status["segment"]["size_bytes"],
        status["segment"]["generation"]
    );
    let feed = &status["feed"];
    let n = |k: &str| feed[k].as_u64().unwrap_or(0);
    if feed["kind"] == "binance" {
        println!(
            "feed     binance: {}, {} reconnects, last message {} ago, {} candles written ({} backfilled), {} bad messages, {} gaps",
            if feed["connected"] == true {
                "connected"
            } else {
                "DISCONNECTED"
            },
            n("reconnects"),
            feed["last_message_age_ms"]
                .as_u64()
                .map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms")),
            n("candles_written"),
            n("backfilled"),
            n("bad_messages"),
            n("gaps"),
        );
        if let Some(e) = feed["last_error"].as_str() {
            println!("         last error: {e}");
        }
    } else {
        let read = match (feed["bytes_read"].as_u64(), feed["bytes_total"].as_u64()) {
            (Some(r), Some(t)) if t > 0 => format!(", {:.0}% read", 100.0 * r as f64 / t as f64),
            _ => String::new(),
        };
        println!(
            "feed     {}: {} candles written (+{} aggregated), {} bad lines, {} gaps ({} candles missing){read}, finished: {}",
            s(&feed["kind"]),
            n("candles_written"),
            n("aggregated_written"),
            n("bad_lines"),
            n("gaps"),
            n("missing_candles"),
            feed["finished"]
        );
    }
    println!(
        "signals  {} emitted, {} duplicates dropped",
        status["signals"]["emitted"], status["signals"]["duplicates_dropped"]
    );
    println!(
        "{:>3} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7}",
        "id", "pid", "state", "traders", "rtt_us", "pong_ms", "retries"
    );
    for w in status["workers"].as_array().into_iter().flatten() {
        println!(
            "{:>3} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7}",
            s(&w["id"]),
            s(&w["pid"]),
            s(&w["state"]),
            s(&w["traders"]),
            s(&w["rtt_us"]),
            s(&w["last_pong_age_ms"]),
            s(&w["retries"])
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_main(instance_or_default(cli.instance)?, args),
        Command::Backtest(args) => {
            let opts = engine::backtest::BacktestOptions {
                traders: args.feed.traders()?,
                feed: args.feed.config(args.candles, &args.capacity)?,
                intervals: args.capacity.intervals.clone(),
                aggregate: args.feed.aggregate(&args.capacity.intervals)?,
                max_symbols: args.capacity.max_symbols,
            };
            let n = engine::backtest::backtest(&opts, &mut std::io::stdout().lock())?;
            tracing::info!(signals = n, "backtest done");
            Ok(())
        }
        Command::Chaos(args) => {
            let instance = match cli.instance {
                Some(i) => i,
                None => InstanceName::new(&format!("chaos-{}", std::process::id()))?,
            };
            let traders = args.feed.traders()?;
            let opts = engine::chaos::ChaosOptions {
                instance,
                runtime_base: engine::runtime::base_dir(),
                shmkline: std::env::current_exe()?,
                traders_file: args.feed.traders.clone(),
                traders,
                workers: args.workers,
                symbols: match args
                    .feed
                    .config(Some(args.candles), &CapacityArgs::default())?
                {
                    FeedConfig::Synthetic { symbols, .. } => symbols,
                    _ => anyhow::bail!("chaos runs the synthetic feed only"),
                },
                candles: args.candles,
                rate: args.rate,
                seed: args.feed.seed,
                kills: args.kills,
                stops: args.stops,
                ping_interval_ms: args.ping_interval,
                ping_deadline_ms: args.ping_deadline,
                chaos_seed: args.chaos_seed,
                fault_interval: args.fault_interval.map(std::time::Duration::from_millis),
            };
            let report = engine::chaos::run(&opts)?;
            emit(&report, args.json)?;
            anyhow::ensure!(
                report.ok,
                "chaos run failed its checks (see the report above)"
            );
            Ok(())
        }
        Command::Traders(cmd) => {
            let instance = instance_or_default(cli.instance)?;
            let dir = engine::runtime::base_dir().join(instance.as_str());
            let ask = |request: &serde_json::Value| -> Result<serde_json::Value> {
                let line = match request {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                engine::run::control::ask(&dir, &line)
            };
            match cmd {
                TradersCommand::Add { file } => {
                    // Checked here first, so a bad file is reported with its
                    // path, line and column, and the engine is not asked.
                    let traders = engine::traders::load(&file)?;
                    let answer = ask(&serde_json::json!({ "cmd": "add", "traders": traders }))?;
                    println!("{answer}");
                }
                TradersCommand::Remove { id } => {
                    let answer = ask(&serde_json::json!({ "cmd": "remove", "id": id }))?;
                    println!("{answer}");
                }
                TradersCommand::List { json } => {
                    let answer = ask(&serde_json::Value::String("traders".into()))?;
                    if json {
                        println!("{answer}");
                    } else {
                        println!(
                            "{:<24} {:>4} {:<11} {:>8}  rule",
                            "id", "slot", "state", "interval"
                        );
                        for t in answer["traders"].as_array().into_iter().flatten() {
                            let s = |k: &str| {
                                t[k].as_str()
                                    .map_or_else(|| t[k].to_string(), str::to_owned)
                            };
                            println!(
                                "{:<24} {:>4} {:<11} {:>8}  {}",
                                s("id"),
                                t["slot"],
                                s("state"),
                                s("interval"),
                                s("rule")
                            );
                        }
                    }
                }
            }
            Ok(())
        }
        Command::KillWorker { id, signal } => {
            let instance = instance_or_default(cli.instance)?;
            let dir = engine::runtime::base_dir().join(instance.as_str());
            let status = engine::run::control::ask(&dir, "status")?;
            let pid = status["workers"]
                .as_array()
                .and_then(|w| w.iter().find(|w| w["id"].as_u64() == Some(u64::from(id))))
                .and_then(|w| w["pid"].as_u64())
                .filter(|&p| p > 0)
                .ok_or_else(|| anyhow::anyhow!("instance {instance} has no running worker {id}"))?;
            let sig = match signal.as_str() {
                "STOP" => nix::sys::signal::Signal::SIGSTOP,
                "TERM" => nix::sys::signal::Signal::SIGTERM,
                "CONT" => nix::sys::signal::Signal::SIGCONT,
                _ => nix::sys::signal::Signal::SIGKILL,
            };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).map_err(|e| {
                anyhow::anyhow!("sending SIG{signal} to worker {id} (pid {pid}): {e}")
            })?;
            println!(
                "{}",
                serde_json::json!({ "worker": id, "pid": pid, "signal": signal })
            );
            Ok(())
        }
        Command::Status { json } => {
            let instance = instance_or_default(cli.instance)?;
            let dir = engine::runtime::base_dir().join(instance.as_str());
            let status = engine::run::control::ask(&dir, "status")?;
            if json {
                println!("{status}");
            } else {
                print_status(&status);
            }
            Ok(())
        }
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
        Command::Bench(BenchCommand::Feed {
            json,
            candles,
            rounds,
            live_messages,
        }) => {
            let report = engine::bench::feed::run(
                &bench_instance(cli.instance)?,
                candles as usize,
                rounds as usize,
                live_messages as usize,
            )?;
            emit(&report, json)
        }
        Command::Bench(BenchCommand::Traders {
            json,
            traders,
            symbols,
            workers,
            candles,
            rate,
        }) => {
            let report = engine::bench::traders::run_both(
                &bench_instance(cli.instance)?,
                &std::env::current_exe()?,
                &engine::bench::traders::TradersBench {
                    traders: traders as usize,
                    symbols: symbols as usize,
                    workers,
                    candles,
                    rate,
                },
            )?;
            emit(&report, json)
        }
        Command::Bench(BenchCommand::Burst {
            json,
            traders,
            symbols,
            workers,
            bursts,
        }) => emit(
            &engine::bench::burst::run(
                &bench_instance(cli.instance)?,
                &std::env::current_exe()?,
                &engine::bench::burst::BurstBench {
                    traders: traders as usize,
                    symbols: symbols as usize,
                    workers,
                    bursts,
                },
            )?,
            json,
        ),
        Command::Bench(BenchCommand::Wake { json, samples }) => emit(
            &wake::run(&bench_instance(cli.instance)?, samples as usize)?,
            json,
        ),
        Command::Bench(BenchCommand::Ping {
            json,
            samples,
            worker_bin,
        }) => emit(
            &engine::bench::ipc::run_ping(
                &bench_instance(cli.instance)?,
                worker_bin_or_default(worker_bin)?,
                samples as usize,
            )?,
            json,
        ),
        Command::Bench(BenchCommand::Spawn {
            json,
            workers,
            worker_bin,
        }) => emit(
            &engine::bench::ipc::run_spawn(
                &bench_instance(cli.instance)?,
                worker_bin_or_default(worker_bin)?,
                workers,
            )?,
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
                ChildCommand::IpcEcho { bootstrap } => {
                    println!("{}", engine::bench::ipc::ipc_echo(&bootstrap)?)
                }
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

/// The parent process when this one started, read before anything else:
/// `--exit-with-parent` compares against it, and a parent that dies during
/// start-up must still count as gone.
static PARENT_AT_START: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    PARENT_AT_START.get_or_init(|| nix::unistd::getppid().as_raw());
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("SHMKLINE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err
                .downcast_ref::<engine::run::control::NotRunning>()
                .is_some()
            {
                return ExitCode::from(protocol::exit::NOT_RUNNING);
            }
            ExitCode::from(protocol::exit::code_for(err.as_ref()))
        }
    }
}
