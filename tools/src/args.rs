//! The tools' command line: `bench`, `chaos`, `soak` and the benchmarks'
//! `bench-child`, as `shmkline` hands them over (the same words, so the
//! same global flags, flattened from the engine's).

use clap::{Args, Parser, Subcommand};
use engine::cli::args::{FeedArgs, GlobalArgs};

pub use crate::bench_args::{BenchCommand, ChildCommand};

/// `shmkline-tools`: what `shmkline bench|chaos|soak` runs.
#[derive(Debug, Parser)]
#[command(
    name = "shmkline-tools",
    version,
    about = "The tools of shmkline: benchmarks, chaos and soak (`shmkline bench|chaos|soak` runs this)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Each doc comment is the one `shmkline --help` lists (a test holds them
/// equal).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chaos test: run a paced finite feed, SIGKILL and SIGSTOP random workers
    /// from outside, then compare the signals with the backtest and check for
    /// leaks. Exits non-zero if anything was lost, duplicated, unexpected or leaked.
    Chaos(Box<ChaosArgs>),
    /// Soak: a live run on the loopback stand-in exchange under chaos for
    /// minutes (worker SIGKILLs and SIGSTOPs, feed cuts, trader churn, webhook
    /// outages), every process's private memory sampled; per-process growth
    /// in MB/h as a report; exits non-zero past --threshold or with anything
    /// left behind. `scripts/soak.sh` wraps it.
    Soak(SoakArgs),
    /// Measure the store against baselines taken in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The reader side of cross-process benchmarks (internal).
    #[command(subcommand, hide = true)]
    BenchChild(ChildCommand),
}

/// `shmkline soak`'s flags.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// How long, in minutes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_080))]
    pub minutes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sample_every: u64,
    /// Seconds of each process's life not counted (start-up allocations;
    /// a replaced worker warms up again). Default: a tenth of the soak,
    /// at least 30 s.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub warmup: Option<u64>,
    /// Growth of any process's private memory, MB/h, past which it fails;
    /// judged only on a fit of at least 5 minutes (shorter ones measure
    /// the allocator settling: reported without a verdict).
    #[arg(long, default_value_t = 1.0)]
    pub threshold: f64,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// `shmkline chaos`'s flags: `run`'s feed and traders, and the faults.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// SIGKILLs to send.
    #[arg(long, default_value_t = 50)]
    pub kills: u32,
    /// SIGSTOPs to send.
    #[arg(long, default_value_t = 5)]
    pub stops: u32,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Closed candles per symbol (the run's length with --rate).
    #[arg(long, default_value_t = 1200)]
    pub candles: u64,
    /// Candles per second per symbol.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Milliseconds between faults. Default: the faults spread evenly over the
    /// first 70% of the feed (--candles / --rate seconds).
    #[arg(long)]
    pub fault_interval: Option<u64>,
    /// Fault schedule seed (which worker, which kind, in which order).
    #[arg(long, default_value_t = 7)]
    pub chaos_seed: u64,
    /// PING interval of the run, in ms.
    #[arg(long, default_value_t = 100)]
    pub ping_interval: u64,
    /// PING deadline of the run, in ms. Default: the run's (twice the interval).
    #[arg(long)]
    pub ping_deadline: Option<u64>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `shmkline --help` lists the tools from its own stubs: each must say
    /// what the tool's own help says, and hide what it hides.
    #[test]
    fn shmkline_lists_each_tool_as_the_tool_describes_itself() {
        let engine = engine::cli::args::Cli::command();
        let tools = super::Cli::command();
        for name in engine::cli::tools::TOOL_COMMANDS {
            let stub = engine.find_subcommand(name).expect("shmkline names it");
            let tool = tools.find_subcommand(name).expect("shmkline-tools runs it");
            assert_eq!(
                stub.get_about().map(ToString::to_string),
                tool.get_about().map(ToString::to_string),
                "{name}"
            );
            assert_eq!(stub.is_hide_set(), tool.is_hide_set(), "{name}");
        }
        assert_eq!(
            tools.get_subcommands().count(),
            engine::cli::tools::TOOL_COMMANDS.len(),
            "every tool is named by shmkline"
        );
    }
}
