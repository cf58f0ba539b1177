//! `shmkline bench sinks`: what each sink costs, with a real `shmkline run`.
//!
//! * Throughput: the same run (every trader fires on every candle of every
//!   symbol, the feed unpaced) into each sink alone: stdout (read by this
//!   process, the baseline), `file:` (fsynced per batch), `webhook:` and
//!   `webhook-batch:` (the loopback receiver). Signals per second from the
//!   first delivered to the last, as the run's `status` counts them, and
//!   the ratio to stdout's.
//! * Latency: a paced run into all four at once (250 signals a second):
//!   candle published to
//!   signal delivered (fsynced, answered 2xx) per sink, p50 and p99, as each
//!   sink measures it (stdout: handed to its thread).
//! * Restart: the coordinator SIGKILLed and the same command started again,
//!   from the kill to the first new line in its file sink, p50 and p99: a
//!   live session on the loopback Binance stand-in with a candle closed while
//!   it is down (start-up, REST backfill, evaluation, fsync), and a replay
//!   (start-up, the file replayed from its start past what the sink holds).

use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::InstanceName;
use serde::Serialize;
use testkit::exchange::{MockBinance, timeline};
use testkit::webhook::Receiver;

use super::burst::status_when;
use super::traders::RunGuard;
use super::{Percentiles, ratio};

/// What to run.
#[derive(Debug, Clone)]
pub struct SinksBench {
    /// Traders, each firing on every candle.
    pub traders: usize,
    /// Synthetic symbols.
    pub symbols: usize,
    /// Candles per symbol in the throughput runs.
    pub candles: u64,
    /// Coordinator restarts measured.
    pub restarts: usize,
}

/// One sink's throughput.
#[derive(Debug, Serialize)]
pub struct Throughput {
    /// The sink's kind.
    pub sink: String,
    /// Signals delivered.
    pub signals: u64,
    /// First to last delivered, seconds.
    pub seconds: f64,
    /// Signals per second.
    pub signals_per_second: f64,
    /// Over stdout's, in the same run of the benchmark.
    pub vs_stdout: f64,
}

/// One sink's latency, candle published to delivered.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// The sink's kind.
    pub sink: String,
    /// Median, us.
    pub p50_us: Option<u64>,
    /// 99th percentile, us.
    pub p99_us: Option<u64>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct SinksReport {
    /// Traders x symbols x candles in each throughput run.
    pub signals_per_run: u64,
    /// Each sink alone, unpaced.
    pub throughput: Vec<Throughput>,
    /// All four at once, paced (25 signals a candle, 10 candles a second).
    pub latency: Vec<Latency>,
    /// SIGKILL of a live coordinator to its first new signal in a file sink.
    pub live_restart_to_first_signal: Option<Percentiles>,
    /// The same for a replay (as fast as the traders keep up): the restart
    /// replays from the start, so this grows with how far the killed run got.
    pub replay_restart_to_first_signal: Option<Percentiles>,
    /// Restarts measured.
    pub restarts: usize,
}

pub(super) fn trader_file(dir: &Path, traders: usize) -> Result<std::path::PathBuf> {
    let set: Vec<_> = (0..traders)
        .map(|k| {
            serde_json::json!({
                "id": format!("sink-{k:03}"), "symbols": "*", "interval": "1m",
                "rule": "close > 0",
            })
        })
        .collect();
    let file = dir.join("traders.json");
    std::fs::write(&file, serde_json::Value::Array(set).to_string())?;
    Ok(file)
}

/// `shmkline run` with `args`, its stdout drained by a thread of its own.
fn start(
    instance: &InstanceName,
    shmkline: &Path,
    dir: &Path,
    args: &[String],
) -> Result<(RunGuard, std::thread::JoinHandle<()>)> {
    let mut child = Command::new(shmkline)
        .arg("--instance")
        .arg(instance.as_str())
        .args(["run", "--exit-with-parent", "--intervals", "1m"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting shmkline run")?;
    let stdout = child.stdout.take().context("the run's stdout")?;
    let reader = std::thread::spawn(move || {
        let _ = std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink());
    });
    Ok((RunGuard(child), reader))
}

/// The sink of `kind` in a status.
pub(super) fn sink_of<'a>(
    status: &'a serde_json::Value,
    kind: &str,
) -> Option<&'a serde_json::Value> {
    status["sinks"]
        .as_array()?
        .iter()
        .find(|s| s["kind"] == kind)
}

/// One throughput run into `spec` alone.
pub(super) fn throughput(
    instance: &InstanceName,
    shmkline: &Path,
    opts: &SinksBench,
    kind: &str,
    spec: &str,
) -> Result<(u64, f64)> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let traders = trader_file(dir.path(), opts.traders)?;
    let expected = (opts.traders * opts.symbols) as u64 * opts.candles;
    let args: Vec<String> = [
        "--traders",
        &traders.display().to_string(),
        "--symbols",
        &opts.symbols.to_string(),
        "--max-symbols",
        &(opts.symbols + 1).to_string(),
        "--candles",
        &opts.candles.to_string(),
        "--rate",
        "1000000",
        "--sink",
        spec,
        "--sink-queue",
        &(expected + 1)
            .max(engine::run::sink::MIN_SINK_QUEUE)
            .to_string(),
        "--stay",
    ]
    .map(str::to_owned)
    .to_vec();
    let (mut run, reader) = start(instance, shmkline, dir.path(), &args)?;
    let delivered = |s: &serde_json::Value| {
        sink_of(s, kind)
            .and_then(|k| k["delivered"].as_u64())
            .unwrap_or(0)
    };
    status_when(instance, &mut run, Duration::from_secs(120), |s| {
        delivered(s) > 0
    })?;
    let first = Instant::now();
    status_when(instance, &mut run, Duration::from_secs(1800), |s| {
        delivered(s) >= expected
    })?;
    let took = first.elapsed().as_secs_f64();
    drop(run);
    let _ = reader.join();
    Ok((expected, took))
}

/// All four sinks at once, paced: each one's latency.
fn latency(
    instance: &InstanceName,
    shmkline: &Path,
    opts: &SinksBench,
    hook: &Receiver,
) -> Result<Vec<Latency>> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    // 25 signals a candle, 10 candles a second: within what one webhook
    // request at a time can take, so the figure is the path, not a queue.
    let traders = trader_file(dir.path(), opts.traders.min(5))?;
    let symbols = opts.symbols.min(5);
    let candles = 100u64;
    let expected = (opts.traders.min(5) * symbols) as u64 * candles;
    let file = dir.path().join("signals.jsonl");
    let args: Vec<String> = [
        "--traders",
        &traders.display().to_string(),
        "--symbols",
        &symbols.to_string(),
        "--max-symbols",
        &(symbols + 1).to_string(),
        "--candles",
        &candles.to_string(),
        "--rate",
        "10",
        "--sink",
        "stdout",
        "--sink",
        &format!("file:{}", file.display()),
        "--sink",
        &format!("webhook:{}/lat", hook.base),
        "--sink",
        &format!("webhook-batch:{}/lat", hook.base),
        "--stay",
    ]
    .map(str::to_owned)
    .to_vec();
    let (mut run, reader) = start(instance, shmkline, dir.path(), &args)?;
    let done = status_when(instance, &mut run, Duration::from_secs(600), |s| {
        s["sinks"].as_array().is_some_and(|all| {
            all.len() == 4
                && all
                    .iter()
                    .all(|k| k["delivered"].as_u64().unwrap_or(0) >= expected)
        })
    })?;
    drop(run);
    let _ = reader.join();
    Ok(["stdout", "file", "webhook", "webhook-batch"]
        .iter()
        .map(|kind| {
            let s = sink_of(&done, kind);
            let us = |q: &str| s.and_then(|s| s[q].as_u64());
            Latency {
                sink: (*kind).to_owned(),
                p50_us: us("latency_p50_us"),
                p99_us: us("latency_p99_us"),
            }
        })
        .collect())
}

/// Lines in `file` (0 if it is not there yet).
fn lines(file: &Path) -> usize {
    std::fs::read(file).map_or(0, |t| t.iter().filter(|b| **b == b'\n').count())
}

/// SIGKILL of a coordinator to its first new line in its file sink,
/// `rounds` times: `step` makes a new signal come while it runs, and is
/// called once more while it is down.
fn restarts(
    instance: &InstanceName,
    shmkline: &Path,
    dir: &Path,
    args: &[String],
    rounds: usize,
    step: impl Fn(),
) -> Result<Vec<u64>> {
    let file = dir.join("signals.jsonl");
    let mut args = args.to_vec();
    args.extend(["--sink".to_owned(), format!("file:{}", file.display())]);
    let mut took = Vec::with_capacity(rounds);
    let (mut run, mut reader) = start(instance, shmkline, dir, &args)?;
    for _ in 0..rounds {
        // Running and signalling: new lines land in the file.
        let before = lines(&file);
        let deadline = Instant::now() + Duration::from_secs(60);
        while lines(&file) < before + 2 {
            if let Ok(Some(exit)) = run.0.try_wait() {
                bail!("the run ended ({exit}) before its kill");
            }
            if Instant::now() > deadline {
                bail!("no signal reached the file within 60 s");
            }
            step();
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = run.0.kill();
        let killed = Instant::now();
        let _ = run.0.wait();
        let _ = reader.join();
        let held = lines(&file);
        step();
        (run, reader) = start(instance, shmkline, dir, &args)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while lines(&file) == held {
            if let Ok(Some(exit)) = run.0.try_wait() {
                bail!("the restarted run ended ({exit}); run it by hand to see why");
            }
            if Instant::now() > deadline {
                bail!("the restarted run wrote nothing within 60 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        took.push(killed.elapsed().as_nanos() as u64);
    }
    drop(run);
    let _ = reader.join();
    Ok(took)
}

/// Restarts of a live session on the stand-in: a candle closes while the
/// coordinator is down (only the next start's backfill brings it).
fn live_restarts(instance: &InstanceName, shmkline: &Path, rounds: usize) -> Result<Vec<u64>> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let traders = trader_file(dir.path(), 1)?;
    let mock = MockBinance::start(timeline(&["BTCUSDT"], 200 + 80 * rounds)?, 60, Vec::new())?;
    let endpoint = format!("{},{}", mock.ws_url, mock.rest_url);
    let args = [
        "--feed",
        "binance",
        "--symbols",
        "BTCUSDT",
        "--endpoint",
        &endpoint,
        "--traders",
        &traders.display().to_string(),
        "--max-symbols",
        "2",
    ]
    .map(str::to_owned);
    restarts(instance, shmkline, dir.path(), &args, rounds, || {
        mock.stream(1, 1, Duration::ZERO);
    })
}

/// Restarts of a replay as fast as the traders keep up: the next start
/// replays from the file's start and sends past what the sink holds.
fn replay_restarts(instance: &InstanceName, shmkline: &Path, rounds: usize) -> Result<Vec<u64>> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let traders = trader_file(dir.path(), 1)?;
    let candles = timeline(&["BTCUSDT"], 400_000)?;
    let csv = dir.path().join("BTCUSDT-1m-bench.csv");
    std::fs::write(&csv, testkit::rows::dump_csv(&candles[0].1))?;
    let args = [
        "--feed",
        &format!("replay:{}", csv.display()),
        "--traders",
        &traders.display().to_string(),
        "--max-symbols",
        "2",
    ]
    .map(str::to_owned);
    restarts(instance, shmkline, dir.path(), &args, rounds, || {})
}

/// Runs the measurements, one after the other.
pub fn run(instance: &InstanceName, shmkline: &Path, opts: &SinksBench) -> Result<SinksReport> {
    let hook = Receiver::start()?;
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let file = format!("file:{}", dir.path().join("t.jsonl").display());
    let kinds = [
        ("stdout", "stdout".to_owned()),
        ("file", file),
        ("webhook", format!("webhook:{}/t", hook.base)),
        ("webhook-batch", format!("webhook-batch:{}/t", hook.base)),
    ];
    let mut figures = Vec::new();
    for (kind, spec) in &kinds {
        figures.push((*kind, throughput(instance, shmkline, opts, kind, spec)?));
    }
    let base = figures
        .first()
        .map_or(0.0, |(_, (n, s))| *n as f64 / s.max(1e-9));
    let throughput = figures
        .into_iter()
        .map(|(kind, (n, s))| {
            let rate = n as f64 / s.max(1e-9);
            Throughput {
                sink: kind.to_owned(),
                signals: n,
                seconds: s,
                signals_per_second: rate.round(),
                vs_stdout: ratio(rate, base),
            }
        })
        .collect();
    let latency = latency(instance, shmkline, opts, &hook)?;
    let mut live = live_restarts(instance, shmkline, opts.restarts)?;
    let mut replay = replay_restarts(instance, shmkline, opts.restarts)?;
    Ok(SinksReport {
        signals_per_run: (opts.traders * opts.symbols) as u64 * opts.candles,
        throughput,
        latency,
        live_restart_to_first_signal: Percentiles::of(&mut live),
        replay_restart_to_first_signal: Percentiles::of(&mut replay),
        restarts: opts.restarts,
    })
}
