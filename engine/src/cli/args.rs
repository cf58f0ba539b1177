//! The command line's types: every command, flag and default, as clap
//! parses them. Turning them into engine options is [`super::options`]; the
//! tools' commands are only named here (their flags are `shmkline-tools`').

use clap::{Args, Parser, Subcommand};
use protocol::{InstanceName, Interval, SymbolName};

use crate::feed::FeedKind;

/// `shmkline` and its global flag.
#[derive(Debug, Parser)]
#[command(
    name = "shmkline",
    version,
    about = "Shared-memory kline engine: a coordinator writes candles into shared memory, workers read them"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every command takes, wherever they stand on the line:
/// `shmkline-tools` flattens the same ones, so a forwarded command reads
/// them as `shmkline` would.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Instance name, [A-Za-z0-9_-]{1,32}. Default: $SHMKLINE_INSTANCE, else "default"
    /// (benchmarks: a private "bench-<pid>").
    #[arg(long, global = true)]
    pub instance: Option<InstanceName>,
    /// Log lines on stderr: `text`, or `json` (one object per line with
    /// timestamp, level, target, fields and the spans': a worker's slot and
    /// pid). Workers log the same way. Default: $SHMKLINE_LOG_FORMAT, else text.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<protocol::exit::LogFormat>,
    /// What is logged: error, warn, info, debug, trace, or directives like
    /// `info,engine::feed=debug`. Default: $SHMKLINE_LOG, else info.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = log_level)]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: create the store, start the workers, register the traders,
    /// run the synthetic feed and print every signal as a JSON line on stdout.
    Run(Box<RunArgs>),
    /// The same traders over the same feed in one process (no workers, no
    /// shared memory), printing the same signal lines: the oracle for `run`.
    Backtest(Box<BacktestArgs>),
    /// Chaos test: run a paced finite feed, SIGKILL and SIGSTOP random workers
    /// from outside, then compare the signals with the backtest and check for
    /// leaks. Exits non-zero if anything was lost, duplicated, unexpected or leaked.
    #[command(disable_help_flag = true)]
    Chaos(ToolArgs),
    /// Soak: a live run on the loopback stand-in exchange under chaos for
    /// minutes (worker SIGKILLs and SIGSTOPs, feed cuts, trader churn, webhook
    /// outages), every process's private memory sampled; per-process growth
    /// in MB/h as a report; exits non-zero past --threshold or with anything
    /// left behind. `scripts/soak.sh` wraps it.
    #[command(disable_help_flag = true)]
    Soak(ToolArgs),
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
    /// Watch a running instance full-screen: feed, signals a second,
    /// workers (memory growth, RTT, passes, restarts), sinks. Keys: up/down
    /// select a worker, k kills it (the coordinator replaces it), t shows
    /// the traders, q quits.
    Top {
        /// Milliseconds between refreshes.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
        interval: u64,
    },
    /// Show a running instance: workers, segment, feed, signals.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure the store against baselines taken in the same run.
    #[command(disable_help_flag = true)]
    Bench(ToolArgs),
    /// Create, hold and inspect a store segment from a shell.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The configuration file (`--config`): what a run would use.
    #[command(subcommand)]
    Config(Box<ConfigCommand>),
    /// The reader side of cross-process benchmarks (internal).
    #[command(hide = true, disable_help_flag = true)]
    BenchChild(ToolArgs),
}

/// A command `shmkline-tools` runs: its words are not parsed here but
/// handed on whole (`super::tools`), so its flags live in one place.
#[derive(Debug, Args)]
pub struct ToolArgs {
    /// The words after the command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub words: Vec<std::ffi::OsString>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration of `run` with these flags (and
    /// `--config FILE`) as TOML: command line over environment over file
    /// over defaults. `--config` reads it back.
    Show(Box<RunArgs>),
    /// Print a config file documenting every key with its default (what
    /// shmkline.example.toml holds).
    Example,
}

#[derive(Debug, Subcommand)]
pub enum TradersCommand {
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
pub enum StoreCommand {
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
pub struct RunArgs {
    /// A TOML file of these flags as top-level keys named like the long
    /// flags (`workers = 3`, `feed = "replay:..."`, `sink = ["file:..."]`);
    /// flags on the command line and in the environment override it. Every
    /// key is documented in shmkline.example.toml.
    #[arg(long, env = "SHMKLINE_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Closed candles per symbol, then an orderly exit once every trader has
    /// evaluated every candle. Default: run until SIGINT/SIGTERM.
    #[arg(long)]
    pub candles: Option<u64>,
    #[command(flatten)]
    pub pace: PaceArgs,
    /// Milliseconds a stop gives the workers to judge what was published and
    /// answer CLEANUP before they are killed (also bounds the drain).
    #[arg(long, default_value_t = 1000)]
    pub shutdown_timeout: u64,
    /// Milliseconds between PINGs to each worker.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub ping_interval: u64,
    /// Milliseconds a PING may go unanswered before the worker counts as hung
    /// and is replaced. Default: twice --ping-interval. A stop is detected at
    /// most --ping-interval + --ping-deadline after it happens.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub ping_deadline: Option<u64>,
    /// The worker binary. Default: shmkline-worker next to this executable.
    #[arg(long, env = "SHMKLINE_WORKER_BIN")]
    pub worker_bin: Option<std::path::PathBuf>,
    /// Self-inflicted worker failures (crash, abort, error exit, hang, protocol
    /// violation, failed start) allowed per slot within --restart-period; one
    /// more and the run stops with an error. Kills from outside never count.
    #[arg(long, default_value_t = 5)]
    pub restart_limit: u32,
    /// The window for --restart-limit, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub restart_period: u64,
    /// Worker crashes pinned on one trader before that trader is quarantined
    /// (taken out, reported; the other traders keep running).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub quarantine_after: u32,
    /// Milliseconds a worker's progress may stand still while newer batches
    /// wait before it counts as stuck (its evaluation loops or blocks even
    /// though it answers PINGs) and is replaced.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub stall_timeout: u64,
    /// Keep the feed's pace even when workers fall behind or are being
    /// replaced, as a live feed would: candles can then leave the ring before
    /// they are evaluated, which is reported as a gap (and fails a finite run).
    /// By default the feed waits for the slowest worker instead.
    #[arg(long)]
    pub no_backpressure: bool,
    /// After a finite feed is written and evaluated, keep running (store,
    /// workers, control socket) until SIGINT/SIGTERM, so other processes can
    /// read the candles.
    #[arg(long)]
    pub stay: bool,
    /// Shut down when the process that started this one exits (for scripts
    /// and harnesses that run it in the background: a killed parent must not
    /// leave the engine, its workers and its segment behind).
    #[arg(long)]
    pub exit_with_parent: bool,
    /// Where signals go: `stdout`; `file:PATH` (append-only JSON lines,
    /// fsynced per batch; a restarted run appends only what the file lacks);
    /// `webhook:URL` (a POST per signal, header `Idempotency-Key:
    /// trader|symbol|interval|open_time`, retried with backoff; its position
    /// kept in the state directory) or `webhook-batch:URL` (a JSON array per
    /// batch). Repeatable; default: stdout alone.
    #[arg(long = "sink", value_name = "SPEC")]
    pub sinks: Vec<crate::run::sink::SinkSpec>,
    /// Which signals the sinks get: `resume` (a file sink appends what it
    /// lacks; stdout gets this run's), `now` (only candles closing after
    /// the start), `all` (everything again, whatever a file holds).
    #[arg(long, value_enum, default_value_t = crate::run::sink::SignalsFrom::Resume)]
    pub signals_from: crate::run::sink::SignalsFrom,
    /// Signals a file or webhook sink may hold queued (handed, not yet
    /// confirmed), at least 10,000 (more than a frame's). A sink whose queue
    /// is full is behind: it is handed nothing (evaluation and the other
    /// sinks go on) until it has drained; then every worker is replaced to
    /// judge again from where it stood, and the sink gets what it missed
    /// (candles that left the ring meanwhile are a reported gap).
    #[arg(long, default_value_t = crate::run::sink::DEFAULT_SINK_QUEUE,
        value_parser = clap::value_parser!(u64).range(crate::run::sink::MIN_SINK_QUEUE..=10_000_000))]
    pub sink_queue: u64,
    /// Milliseconds stdout or a sink may go without delivering at the end of
    /// a run before it is given up (one that keeps delivering is waited
    /// for); after a signal, the most the whole drain may take. What is left
    /// is counted, the run exits in error, and the next start re-sends it.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub drain_timeout: u64,
    /// Milliseconds a webhook request may take (connect, send, answer)
    /// before it is given up and retried.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub webhook_timeout: u64,
    /// Webhooks over https trust exactly the CA certificates in this PEM
    /// file instead of the built-in webpki roots (a private CA, a test server).
    #[arg(long, value_name = "PEM")]
    pub webhook_ca_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub observe: ObserveArgs,
    /// Take only the symbols of shard K of N (`K/N`, 0 <= K < N): those
    /// whose FNV-1a digest of the upper-case name is K modulo N, the same on
    /// every host, so N coordinators cover every symbol exactly once.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::nats::Shard>,
    /// Publish every candle update and close this coordinator writes (its
    /// feed: live Binance, a replay, synthetic) to the JetStream candle
    /// stream at `nats://HOST:PORT[/PREFIX]` (stream `<PREFIX>_CANDLES`,
    /// subjects `<prefix>.candles.<SYMBOL>.<interval>`), for engines that
    /// run with `--feed nats://...`.
    #[arg(long, value_name = "NATS")]
    pub publish_candles: Option<crate::nats::NatsAddr>,
    /// Where this instance keeps what survives a restart (the trader set,
    /// with every `traders add` and `remove`). Default:
    /// `$XDG_STATE_HOME/shmkline/<instance>`, else
    /// `~/.local/state/shmkline/<instance>`.
    #[arg(long, env = "SHMKLINE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub capacity: CapacityArgs,
}

/// The traders and the feed: the same flags for `run`, `backtest` and
/// `chaos`, so a backtest replays exactly what a run saw.
#[derive(Debug, Args)]
pub struct FeedArgs {
    /// Trader file: JSON (one trader object or an array) or TOML (one table, or
    /// `[[trader]]` tables). Default: the built-in
    /// set (SMA 10 and 30 crosses, both ways, every symbol, 1m).
    #[arg(long)]
    pub traders: Option<std::path::PathBuf>,
    /// The feed: `synthetic` (built in, deterministic), `replay:PATH[,PATH...]`
    /// (Binance kline CSV dumps, 12 or 7 columns, ms or µs timestamps, with or
    /// without a header; or JSON lines of WebSocket kline payloads), or
    /// `binance` (live, with --symbols).
    #[arg(long, default_value = "synthetic")]
    pub feed: FeedKind,
    /// Seed of the synthetic feed: same seed, same candles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Synthetic feed: how many symbols (SYN000, SYN001, ...). Live feed: which
    /// symbols, comma-separated (btcusdt,ethusdt), each 2 to 20 characters
    /// from A-Z and 0-9 once upper-cased.
    #[arg(long, default_value = "4", value_parser = symbols_value)]
    pub symbols: String,
    /// Replay: the symbol of every CSV file (default: from each file's name,
    /// as Binance names them: BTCUSDT-1m-2024-01.csv).
    #[arg(long)]
    pub symbol: Option<SymbolName>,
    /// Replay: the interval of every CSV file (default: from each file's name).
    #[arg(long)]
    pub interval: Option<Interval>,
    /// Intervals built from 1-minute candles, comma-separated, or `none`.
    /// Default: every interval of --intervals above 1m (synthetic and replay
    /// feeds); none for the live feed, which subscribes to each interval.
    #[arg(long, value_delimiter = ',')]
    pub aggregate: Option<Vec<String>>,
    /// Replay: stop with an error at the first bad line instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Live feed: the WebSocket base URL, and after a comma the REST base URL
    /// (for a local or test server).
    #[arg(
        long,
        default_value = "wss://stream.binance.com:9443,https://api.binance.com"
    )]
    pub endpoint: String,
    /// Live feed: milliseconds without any message (Binance pings every 20 s)
    /// after which the connection counts as dead and is replaced.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub silence_timeout: u64,
    /// Live feed: seconds after which a connection is replaced before
    /// Binance's 24-hour cut.
    #[arg(long, default_value_t = 84_600, value_parser = clap::value_parser!(u64).range(1..=86_000))]
    pub max_connection_age: u64,
    /// Live feed: first reconnect delay in milliseconds (doubled per failed
    /// attempt up to --reconnect-max, with jitter).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_min: u64,
    /// Live feed: trust exactly the CA certificates in this PEM file instead of
    /// the built-in webpki roots (a TLS-intercepting proxy, a test server).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Live feed: largest reconnect delay in milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_max: u64,
    /// Live feed: REST request weight spent per minute at most (Binance
    /// allows an IP 6,000; klines cost 2). Backfills go at this pace.
    #[arg(long, default_value_t = crate::feed::live::DEFAULT_WEIGHT_PER_MINUTE,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::feed::live::EXCHANGE_WEIGHT_LIMIT)))]
    pub rest_weight_per_minute: u32,
    /// Live feed: WebSocket connections opened per 5 minutes at most
    /// (Binance's limit per IP: 300); reconnects past it wait.
    #[arg(long, default_value_t = crate::feed::live::OPENS_PER_WINDOW as u32,
        value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connection_opens: u32,
    /// Live feed: leave out --symbols the exchange does not list or does not
    /// trade (named in the log and in status) instead of refusing to start.
    #[arg(long)]
    pub skip_unknown: bool,
    /// Live feed: MiB of received events held for the sync thread at most;
    /// past it an event is dropped and its series backfilled again (counted
    /// as `overflowed` in status).
    #[arg(long, default_value_t = (crate::feed::live::DEFAULT_QUEUED_BYTES >> 20) as u64,
        value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_queued_mib: u64,
}

/// How fast a finite feed goes.
#[derive(Debug, Args)]
pub struct PaceArgs {
    /// Candles per second per symbol. Default: 10 for the synthetic feed; a
    /// replay goes as fast as the traders keep up unless --rate or --speed is given.
    #[arg(long, conflicts_with = "speed")]
    pub rate: Option<f64>,
    /// Replay at this multiple of real time (60: a minute of candles per second).
    #[arg(long)]
    pub speed: Option<f64>,
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Synthetic feed: closed candles per symbol (a backtest needs an end).
    #[arg(long)]
    pub candles: Option<u64>,
    /// Accepted so `run`'s flags can be reused as they are; a backtest is not paced.
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub capacity: CapacityArgs,
}

/// Store capacities: memory is fixed by them at start.
#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Symbol directory capacity.
    #[arg(long, default_value_t = 256)]
    pub max_symbols: u32,
    /// Intervals kept per symbol, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1m,5m,15m,1h,4h,1d")]
    pub intervals: Vec<Interval>,
    /// Candles kept per (symbol, interval): one size for every interval
    /// (`1440`), sizes per interval (`1m=1440,1h=6000`), or both. What it
    /// leaves out is sized from the traders: --headroom times the longest
    /// window of the interval's traders, never below 1440.
    #[arg(long)]
    pub candles_per_series: Option<crate::run::plan::RingSpec>,
    /// How many times its traders' longest window an interval's ring holds
    /// when --candles-per-series does not size it (at least 2).
    #[arg(long, default_value_t = 2.0)]
    pub headroom: f64,
}

/// What an operator watches: metrics, the memory-growth monitor.
#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// Serve read-only HTTP on this address (`127.0.0.1:9898`; port 0
    /// picks a free one, shown in `status`): `GET /metrics` for Prometheus
    /// (OpenMetrics text), `GET /status` for the JSON of `status --json`.
    /// Off by default; it has no authentication, so keep it on loopback or
    /// behind a proxy.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Growth of a process's private memory, in MB an hour, fitted over
    /// --memory-window, past which a WARN names the process (0: never).
    /// The figures are in `status` (memory) either way.
    #[arg(long, value_name = "MB_PER_H", default_value_t = 10.0,
        value_parser = non_negative)]
    pub memory_growth_alert: f64,
    /// Milliseconds between samples of every process's memory.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub memory_sample_interval: u64,
    /// Seconds of a process's life not sampled for its growth (start-up
    /// allocations); a replaced worker warms up again.
    #[arg(long, value_name = "SECS", default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub memory_warmup: u64,
    /// Seconds of samples the growth is fitted over (a figure once half of
    /// it is in; at most 4,096 samples are kept).
    #[arg(long, value_name = "SECS", default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub memory_window: u64,
}

impl ObserveArgs {
    /// The monitor's settings; a window that needs more samples than are
    /// kept is refused (its growth could never be fitted).
    pub fn memory(&self) -> anyhow::Result<crate::run::MemorySettings> {
        let samples = self.memory_window * 1000 / self.memory_sample_interval;
        let kept = crate::run::memory::MAX_SAMPLES as u64;
        if samples > kept {
            anyhow::bail!(
                "--memory-window {} s at --memory-sample-interval {} ms needs {samples} samples, over the {kept} kept: shorten the window or sample less often",
                self.memory_window,
                self.memory_sample_interval
            );
        }
        Ok(crate::run::MemorySettings {
            alert_mb_per_h: self.memory_growth_alert,
            every: std::time::Duration::from_millis(self.memory_sample_interval),
            warmup: std::time::Duration::from_secs(self.memory_warmup),
            window: std::time::Duration::from_secs(self.memory_window),
        })
    }
}

/// A finite number, 0 or more.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?}: a number, 0 or more")),
    }
}

/// How NATS is used (`--sink nats://...`).
#[derive(Debug, clap::Args)]
pub struct NatsArgs {
    /// Seconds to wait for the NATS server at start, retrying with backoff;
    /// 0 (the default) fails at once, naming the server.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub nats_wait: u64,
    /// Seconds a stream this engine creates remembers a `Nats-Msg-Id` to
    /// drop a repeat (the broker's memory grows with it).
    #[arg(long, default_value_t = crate::nats::DEFAULT_DUPLICATE_WINDOW.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub nats_duplicate_window: u64,
    /// Seconds a stream this engine creates keeps messages (0: no limit).
    #[arg(long, default_value_t = crate::nats::DEFAULT_MAX_AGE.as_secs(),
        value_parser = clap::value_parser!(u64).range(0..=315_360_000))]
    pub nats_max_age: u64,
    /// Signals (and candles) published to NATS and not yet acknowledged, at
    /// most; below the client's own limit of 5,000 unacknowledged publishes.
    #[arg(long, default_value_t = crate::nats::DEFAULT_IN_FLIGHT as u64,
        value_parser = clap::value_parser!(u64).range(1..=crate::nats::MAX_IN_FLIGHT as u64))]
    pub nats_in_flight: u64,
    /// The signal stream's name (default: the prefix upper-cased, then
    /// `_SIGNALS`: `SHMKLINE_SIGNALS`).
    #[arg(long, value_name = "NAME", value_parser = stream_name)]
    pub nats_signal_stream: Option<String>,
}

impl NatsArgs {
    /// The settings these flags make.
    pub fn settings(&self) -> crate::nats::NatsSettings {
        crate::nats::NatsSettings {
            wait: std::time::Duration::from_secs(self.nats_wait),
            duplicate_window: std::time::Duration::from_secs(self.nats_duplicate_window),
            max_age: std::time::Duration::from_secs(self.nats_max_age),
            in_flight: self.nats_in_flight as usize,
            signal_stream: self.nats_signal_stream.clone(),
        }
    }
}

/// A JetStream stream name: 1 to 64 of A-Z, a-z, 0-9, '_' and '-'.
fn stream_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{s:?}: a stream name is 1 to 64 of A-Z, a-z, 0-9, '_' and '-'"
        ));
    }
    Ok(s.to_owned())
}

/// A `--log-level`: a level or a list of filter directives.
fn log_level(s: &str) -> Result<String, String> {
    protocol::exit::check_log_filter(s).map(|()| s.to_owned())
}

/// `--symbols`: a count (the synthetic feed), or symbols an exchange could
/// list (the live feed), checked here so that a bad one is a bad command
/// line, refused before anything starts or connects.
fn symbols_value(s: &str) -> Result<String, String> {
    if s.trim().parse::<u64>().is_err() {
        for symbol in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            SymbolName::new(symbol).map_err(|e| e.to_string())?;
        }
    }
    Ok(s.to_owned())
}
