//! `shmkline-worker`: maps an instance's candle store read-only.
//!
//! Spawned by the coordinator (`--bootstrap`), it speaks the IPC protocol and
//! runs traders ([`runtime`]). From a shell it attaches, validates the segment
//! and reports it, or watches it: every publish prints, as JSON lines on
//! stdout, the candles that changed in that batch.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use protocol::InstanceName;
use protocol::store::{StoreReader, Wait};

/// Faults a test can ask the worker to commit. Test-only (the `testing`
/// feature): they exist so the test suite can prove a protection holds.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TestFault {
    /// Store into the read-only mapping: the kernel must kill the worker with SIGSEGV.
    WriteSegment,
}

#[derive(Debug, Parser)]
#[command(
    name = "shmkline-worker",
    version,
    about = "Maps a shmkline candle store read-only"
)]
struct Cli {
    /// Instance whose store to map ([A-Za-z0-9_-]{1,32}). Default:
    /// $SHMKLINE_INSTANCE, else "default".
    #[arg(long)]
    instance: Option<InstanceName>,
    /// Watch for this many seconds, printing each batch's changed candles as JSON lines.
    #[arg(long)]
    watch: Option<u64>,
    /// TEST ONLY: commit a deliberate fault after attaching.
    #[cfg(feature = "testing")]
    #[arg(long, value_enum, hide = true)]
    test_fault: Option<TestFault>,
    /// Set by the coordinator: its one-shot bootstrap server.
    #[arg(long, requires_all = ["coordinator_pid", "worker_id"])]
    bootstrap: Option<String>,
    /// Set by the coordinator: its pid (the worker exits if its parent is another).
    #[arg(long)]
    coordinator_pid: Option<i32>,
    /// Set by the coordinator: this worker's slot.
    #[arg(long)]
    worker_id: Option<u32>,
}

fn watch(reader: &StoreReader, seconds: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut symbols = Vec::new();
    let mut seen = reader.publish_counter();
    let mut changed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let now = match reader.wait_for_change(seen, left)? {
            Wait::Changed(now) => now,
            Wait::TimedOut => return Ok(()),
        };
        // The directory is append-only: re-read it only when it grew, which
        // also picks up symbols registered since the last batch.
        if reader.symbol_count() != symbols.len() {
            symbols = reader.symbols_with_ids();
        }
        for (id, symbol) in &symbols {
            for &interval in reader.intervals() {
                let series = reader.series(*id, interval)?;
                let since = reader.changed_since(series, seen, &mut changed)?;
                if since.possible_gap {
                    tracing::warn!(%symbol, %interval, "candles changed faster than the ring keeps them: some were missed");
                }
                for c in &changed {
                    println!(
                        "{}",
                        serde_json::json!({
                            "publish": now,
                            "symbol": symbol,
                            "interval": interval,
                            "index": c.index,
                            "candle": c.candle,
                        })
                    );
                }
            }
        }
        seen = now;
    }
}

fn run(cli: Cli) -> Result<()> {
    if let (Some(bootstrap), Some(pid), Some(id)) =
        (&cli.bootstrap, cli.coordinator_pid, cli.worker_id)
    {
        // Every line this worker logs, from any of its threads, names it.
        let span = tracing::info_span!("worker", slot = id, pid = std::process::id());
        let _entered = span.enter();
        return worker::runtime::serve(bootstrap, pid, id);
    }
    let instance = match cli.instance {
        Some(name) => name,
        None => InstanceName::from_env_or("default")?,
    };
    let reader = StoreReader::open(&instance)?;
    let info = reader.info();
    tracing::info!(
        segment = %info.name,
        generation = format_args!("{:#018x}", info.generation),
        writer_pid = info.writer_pid,
        "mapped the store read-only"
    );
    #[cfg(feature = "testing")]
    if let Some(TestFault::WriteSegment) = cli.test_fault {
        protocol::shm::fault::write_to_read_only_store(&reader);
    }
    match cli.watch {
        Some(seconds) => watch(&reader, seconds),
        None => {
            println!(
                "{}",
                serde_json::to_string(&info).context("encoding the segment info")?
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A coordinator hands its own settings down through the environment.
    protocol::exit::init_logging(None, None);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => protocol::exit::report(err.as_ref()),
    }
}
