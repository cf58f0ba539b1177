//! The benchmarks' command lines: `shmkline bench ...` and the hidden
//! `bench-child` roles their other processes run.

use clap::Subcommand;

use crate::bench::child::WakeMode;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
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
    /// A fresh live start of many series against the loopback Binance
    /// stand-in: time to all-live, REST requests and peak weight a minute,
    /// vs the floor the weight budget sets.
    Backfill {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Series (symbols, 1m each).
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        series: u64,
        /// Closed candles the stand-in holds per series at start (a ring of
        /// 1,440 wants 1,080 of them).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        history: u64,
        /// The client's REST budget, weight per minute (Binance allows 6,000).
        #[arg(long, default_value_t = engine::feed::live::DEFAULT_WEIGHT_PER_MINUTE,
            value_parser = clap::value_parser!(u32).range(1..=i64::from(engine::feed::live::EXCHANGE_WEIGHT_LIMIT)))]
        rest_weight_per_minute: u32,
        /// A candle closes this often while the backfill runs, ms.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
        stream_every_ms: u64,
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
    /// What each sink costs in a real run: signals per second into stdout,
    /// a file (fsync per batch), a webhook and a batch webhook (a loopback
    /// receiver), publish-to-delivered latency per sink, and a live
    /// coordinator's SIGKILL to its first new signal after a restart.
    Sinks {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Traders, each firing on every candle.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
        traders: u64,
        /// Synthetic symbols.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
        symbols: u64,
        /// Candles per symbol in the throughput runs.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        candles: u64,
        /// Coordinator restarts measured.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000))]
        restarts: u64,
    },
    /// NATS JetStream on loopback (a real nats-server, from PATH or
    /// $NATS_SERVER_BIN): candles from an ingest coordinator to visible in
    /// an engine's segment, next to the local path in the same run; signals
    /// into JetStream against stdout, and published to acknowledged.
    Nats {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Synthetic symbols the ingest publishes.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
        symbols: u64,
        /// Candles per symbol.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=100_000))]
        candles: u64,
        /// Batches a second (one candle per symbol each).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        rate: u64,
        /// Traders (each firing on every candle) in the signal throughput run.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
        traders: u64,
        /// Candles per symbol in the signal throughput run.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        signal_candles: u64,
    },
    /// What watching a run costs its coordinator: loop time per `status`
    /// (a `top` refresh) and per `/metrics` scrape against a `ping`, and
    /// the coordinator's private memory across each batch.
    Observe {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Traders.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        traders: u64,
        /// Synthetic symbols.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=4096))]
        symbols: u64,
        /// Worker processes.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
        workers: u32,
        /// Requests of each kind.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
        requests: u64,
    },
    /// The comparison the design exists for: every closed candle of 100
    /// symbols to 1, 2, 4 and 8 workers through the shared-memory store,
    /// against bincode over ipc-channel to every worker; CPU per candle on
    /// both sides, candle to visible, memory, and the ratios.
    Fanout {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Worker counts compared, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8",
            value_parser = clap::value_parser!(u32).range(1..=64))]
        workers: Vec<u32>,
        /// Symbols (candles per batch).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=4096))]
        symbols: u64,
        /// Batches measured per run (after 20 warm-up ones).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=100_000))]
        batches: u64,
        /// Batches a second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
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
pub enum ChildCommand {
    IpcEcho {
        #[arg(long)]
        bootstrap: String,
    },
    Torn {
        #[arg(long)]
        millis: u64,
    },
    FanoutShm {
        #[arg(long)]
        symbols: usize,
        #[arg(long)]
        batches: usize,
        #[arg(long)]
        base_ns: u64,
    },
    FanoutIpc {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        symbols: usize,
        #[arg(long)]
        base_ns: u64,
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
