//! `shmkline bench traders`: a real `shmkline run` with many traders on many
//! symbols, and the figures the workers and the coordinator measure
//! themselves: how long an evaluation pass (every trader on the new candle
//! of every symbol) takes, and how long from a candle's publish to its
//! signal being handed to the output thread.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engine::process::kill_and_reap;
use engine::run::control;
use protocol::InstanceName;
use serde::Serialize;

use super::{Percentiles, Target};

/// Wake-ups measured for the latency baseline.
const WAKE_BASELINE_SAMPLES: usize = 4000;

/// Target: every verdict for one closed candle of every symbol, p99.
pub const TARGET_PASS_P99_US: f64 = 10_000.0;
/// Target: candle published to signal out, p99.
pub const TARGET_SIGNAL_P99_US: f64 = 1_000.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct TradersBench {
    /// Traders (spread over the workers).
    pub traders: usize,
    /// Synthetic symbols.
    pub symbols: usize,
    /// Worker processes.
    pub workers: u32,
    /// Candles per symbol (the first ~450 are the rules' warm-up).
    pub candles: u64,
    /// Candles per second per symbol: slow enough that each pass judges one
    /// candle per symbol.
    pub rate: f64,
}

/// One worker's figures.
#[derive(Debug, Serialize)]
pub struct WorkerFigures {
    /// Traders it holds.
    pub traders: u64,
    /// Passes it made.
    pub passes: u64,
    /// Median pass, us.
    pub pass_p50_us: u64,
    /// 99th percentile pass, us.
    pub pass_p99_us: u64,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct TradersReport {
    /// Traders.
    pub traders: usize,
    /// Symbols.
    pub symbols: usize,
    /// Trader-series pairs judged per candle.
    pub pairs: usize,
    /// Candles per symbol.
    pub candles: u64,
    /// Per worker.
    pub workers: Vec<WorkerFigures>,
    /// Signals printed.
    pub signals: u64,
    /// Candle published to signal out, median, us.
    pub signal_p50_us: Option<u64>,
    /// The same, 99th percentile.
    pub signal_p99_us: Option<u64>,
    /// Targets.
    pub targets: Vec<Target>,
}

/// Distinct traders from a dozen rule families, selective as screener rules
/// are (crosses and extremes, with cooldowns), so signals are the exception;
/// some indicators are shared (the same `rsi(14)` in several rules), most
/// are not.
pub fn trader_set(n: usize) -> Vec<serde_json::Value> {
    let families: [&dyn Fn(usize) -> String; 12] = [
        &|k| format!("rsi({}) < {}", 7 + k % 15, 20 + k % 5),
        &|k| {
            format!(
                "crosses_above(ema(close, {}), ema(close, {}))",
                5 + k % 8,
                20 + k % 10
            )
        },
        &|k| {
            format!(
                "crosses_below(sma(close, {}), sma(close, {}))",
                5 + k % 10,
                30 + k % 20
            )
        },
        &|k| {
            format!(
                "crosses_above(macd({}, 26, 9).hist, 0) and rsi(14) > {}",
                8 + k % 4,
                40 + k % 20
            )
        },
        &|k| {
            format!(
                "crosses_above(close, bollinger(close, {}, 2.5).upper)",
                15 + k % 10
            )
        },
        &|k| format!("high - low > {} * atr(14)", 3.0 + (k % 5) as f64 * 0.5),
        &|k| {
            format!(
                "roc(close, {}) > 3 and volume > 2 * sma(volume, 20)",
                5 + k % 10
            )
        },
        &|k| format!("crosses_above(close, highest(high, {})[1])", 20 + k % 20),
        &|k| {
            format!(
                "crosses_above(close, vwap({})) and rsi(14) < 40",
                10 + k % 10
            )
        },
        &|k| {
            format!(
                "stddev(close, {}) < 0.3 * sma(stddev(close, 20), 20)",
                10 + k % 10
            )
        },
        &|k| {
            format!(
                "crosses_above(wma(close, {}), sma(close, 30)) and rsi(14) < 35",
                5 + k % 10
            )
        },
        &|k| format!("(close - close[{0}]) / close[{0}] * 100 > 2.5", 1 + k % 10),
    ];
    (0..n)
        .map(|k| {
            serde_json::json!({
                "id": format!("bench-{k:03}"),
                "symbols": "*",
                "interval": "1m",
                "rule": families[k % families.len()](k / families.len()),
                "cooldown": 5 + k % 5,
            })
        })
        .collect()
}

/// Writes `traders` as `traders.json` in `dir` (a run's `--traders`).
pub(super) fn write_traders(
    dir: &tempfile::TempDir,
    traders: &[serde_json::Value],
) -> Result<std::path::PathBuf> {
    let file = dir.path().join("traders.json");
    std::fs::write(
        &file,
        serde_json::Value::Array(traders.to_vec()).to_string(),
    )?;
    Ok(file)
}

/// A `shmkline run` stopped in order (SIGTERM, then SIGKILL after 10 s) and
/// reaped however the benchmark ends.
pub(super) struct RunGuard(pub(super) Child);

impl Drop for RunGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_and_reap(&mut self.0);
    }
}

/// Runs the benchmark as instance `instance` with the `shmkline` binary given.
pub fn run(
    instance: &InstanceName,
    shmkline: &std::path::Path,
    opts: &TradersBench,
) -> Result<TradersReport> {
    let dir = tempfile::tempdir().context("a temporary directory for the trader file")?;
    let file = write_traders(&dir, &trader_set(opts.traders))?;
    let child = Command::new(shmkline)
        .arg("--instance")
        .arg(instance.as_str())
        .args([
            "run",
            "--stay",
            "--exit-with-parent",
            "--ping-interval",
            "100",
        ])
        // Its own state directory, gone with the trader file.
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--max-symbols")
        .arg((opts.symbols + 1).to_string())
        .arg("--workers")
        .arg(opts.workers.to_string())
        .arg("--symbols")
        .arg(opts.symbols.to_string())
        .arg("--candles")
        .arg(opts.candles.to_string())
        .arg("--rate")
        .arg(opts.rate.to_string())
        .arg("--traders")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting shmkline run")?;
    let mut guard = RunGuard(child);
    // The signals must be read, or the output thread blocks.
    let mut stdout = guard.0.stdout.take().context("the run's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
        sink.iter().filter(|&&b| b == b'\n').count()
    });
    let dir = engine::runtime::base_dir().join(instance.as_str());
    let budget =
        Duration::from_secs_f64(opts.candles as f64 / opts.rate) + Duration::from_secs(120);
    let deadline = Instant::now() + budget;
    let status = loop {
        if let Ok(Some(exit)) = guard.0.try_wait() {
            bail!("the run ended early ({exit}); run it by hand to see why");
        }
        if let Ok(s) = control::ask(&dir, "status")
            && s["feed"]["evaluated"] == true
        {
            break s;
        }
        if Instant::now() > deadline {
            bail!("the run did not evaluate its feed within {budget:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(guard);
    let _ = reader.join();
    let workers: Vec<WorkerFigures> = status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| WorkerFigures {
            traders: w["traders"].as_u64().unwrap_or(0),
            passes: w["passes"].as_u64().unwrap_or(0),
            pass_p50_us: w["pass_p50_us"].as_u64().unwrap_or(0),
            pass_p99_us: w["pass_p99_us"].as_u64().unwrap_or(0),
        })
        .collect();
    let worst_pass = workers.iter().map(|w| w.pass_p99_us).max().unwrap_or(0);
    let signal_p99_us = status["signals"]["latency_p99_us"].as_u64();
    let mut targets = vec![Target::at_most(
        "evaluation pass (every trader, one new candle per symbol) p99, us, slowest worker",
        worst_pass as f64,
        TARGET_PASS_P99_US,
    )];
    if let Some(p) = signal_p99_us {
        targets.push(Target::at_most(
            "candle published to signal out p99, us",
            p as f64,
            TARGET_SIGNAL_P99_US,
        ));
    }
    Ok(TradersReport {
        traders: opts.traders,
        symbols: opts.symbols,
        pairs: opts.traders * opts.symbols,
        candles: opts.candles,
        workers,
        signals: status["signals"]["emitted"].as_u64().unwrap_or(0),
        signal_p50_us: status["signals"]["latency_p50_us"].as_u64(),
        signal_p99_us,
        targets,
    })
}

/// Both figures: the evaluation pass with `opts` (100 traders
/// x 100 symbols: 10,000 trader-series pairs), and the signal latency with
/// the same traders on one symbol (the pass is then short, so the latency
/// is the path's: wake, evaluation, IPC, the coordinator).
#[derive(Debug, Serialize)]
pub struct BothReport {
    /// Many symbols: the pass target.
    pub pairs_run: TradersReport,
    /// One symbol: the latency target.
    pub latency_run: TradersReport,
    /// Baseline, measured just before the latency run: one cross-process
    /// futex wake-up alone (`bench wake`'s raw mode), no shmkline code. A
    /// signal's path has two such wake-ups (coordinator to worker, worker to
    /// the coordinator's reader) plus the evaluation, so its tail cannot be
    /// much below twice this one's on the same machine.
    pub wake_baseline: Percentiles,
    /// The latency run's signal p99 over the baseline's wake-up p99.
    pub signal_p99_vs_wake_p99: Option<f64>,
    /// The two targets that matter, from their runs.
    pub targets: Vec<Target>,
}

/// Runs both configurations, one after the other.
pub fn run_both(
    instance: &InstanceName,
    shmkline: &std::path::Path,
    opts: &TradersBench,
) -> Result<BothReport> {
    let pairs_run = run(instance, shmkline, opts)?;
    let wake_baseline = super::wake::run(instance, WAKE_BASELINE_SAMPLES)?.raw_futex;
    let latency_run = run(
        instance,
        shmkline,
        &TradersBench {
            symbols: 1,
            ..opts.clone()
        },
    )?;
    let mut targets = vec![pairs_run.targets[0].clone()];
    if let Some(t) = latency_run.targets.get(1) {
        targets.push(t.clone());
    }
    let signal_p99_vs_wake_p99 = latency_run
        .signal_p99_us
        .map(|p| super::ratio(p as f64 * 1000.0, wake_baseline.p99_ns as f64));
    Ok(BothReport {
        pairs_run,
        latency_run,
        wake_baseline,
        signal_p99_vs_wake_p99,
        targets,
    })
}
