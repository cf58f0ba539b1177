//! `shmkline bench burst`: signal bursts and catch-up, with a real `shmkline
//! run`.
//!
//! * Bursts: 100 traders on 100 symbols that all fire on every candle, at a
//!   pace that leaves each burst (10,000 signals) time to drain: from the
//!   candle's publish (seen by this process on the store's futex, as a worker
//!   sees it) to the first and the last of its signals read from the run's
//!   stdout, and the signals per second in between. The baseline, in the
//!   same run: the same path with one trader on one symbol (a single signal).
//! * Catch-up: 100 traders on 100 symbols, the worker stopped while the feed
//!   runs half a ring ahead, then killed: how many candles per second the
//!   replacement judges until it has caught up.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engine::run::control;
use protocol::InstanceName;
use protocol::store::{StoreReader, Wait};
use serde::Serialize;

use super::Percentiles;
use super::traders::{RunGuard, write_traders};

/// What to run.
#[derive(Debug, Clone)]
pub struct BurstBench {
    /// Traders in the burst and catch-up runs.
    pub traders: usize,
    /// Symbols in the burst and catch-up runs.
    pub symbols: usize,
    /// Worker processes of the burst runs.
    pub workers: u32,
    /// Bursts measured (after two warm-up ones).
    pub bursts: u64,
}

/// One burst configuration's figures.
#[derive(Debug, Serialize)]
pub struct BurstFigures {
    /// Traders.
    pub traders: usize,
    /// Symbols.
    pub symbols: usize,
    /// Signals per burst.
    pub signals_per_burst: u64,
    /// Bursts measured.
    pub bursts: usize,
    /// Publish to the burst's first signal on stdout, ns.
    pub first_signal: Option<Percentiles>,
    /// Publish to the burst's last signal on stdout, ns.
    pub last_signal: Option<Percentiles>,
    /// Signals per second within a burst (first to last line), median.
    pub signals_per_second_p50: Option<f64>,
}

/// The catch-up figures.
#[derive(Debug, Serialize)]
pub struct CatchUpFigures {
    /// Traders.
    pub traders: usize,
    /// Symbols.
    pub symbols: usize,
    /// Candles per series the replacement had to judge.
    pub candles_per_series: u64,
    /// From the kill to the replacement having judged them, ms.
    pub took_ms: u64,
    /// Trader-candle verdicts per second.
    pub verdicts_per_second: f64,
    /// Candles per series per second (what the feed can run at while a
    /// replacement catches up).
    pub candles_per_second: f64,
    /// Faults the run saw other than the kill (a stall would be one).
    pub other_faults: u64,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct BurstReport {
    /// The bursts.
    pub burst: BurstFigures,
    /// The baseline: one signal per candle, same path.
    pub single: BurstFigures,
    /// Last signal of a burst over a single signal, p50.
    pub last_p50_vs_single_p50: Option<f64>,
    /// The same, p99.
    pub last_p99_vs_single_p99: Option<f64>,
    /// The catch-up.
    pub catch_up: CatchUpFigures,
}

fn start(
    instance: &InstanceName,
    shmkline: &std::path::Path,
    file: &std::path::Path,
    args: &[String],
) -> Result<RunGuard> {
    let child = Command::new(shmkline)
        .arg("--instance")
        .arg(instance.as_str())
        .args(["run", "--stay", "--exit-with-parent", "--intervals", "1m"])
        .arg("--traders")
        .arg(file)
        // Its own state directory, next to the trader file (a temporary one).
        .arg("--state-dir")
        .arg(file.with_file_name("state"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting shmkline run")?;
    Ok(RunGuard(child))
}

/// `status` once `pred` holds (or an error after `within`, or if the run ended).
pub(super) fn status_when(
    instance: &InstanceName,
    run: &mut RunGuard,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let dir = engine::runtime::base_dir().join(instance.as_str());
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(exit)) = run.0.try_wait() {
            bail!("the run ended early ({exit}); run it by hand to see why");
        }
        if let Ok(s) = control::ask(&dir, "status")
            && pred(&s)
        {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("the run did not get there within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bursts of `traders` x `symbols` signals, one per candle.
fn bursts(
    instance: &InstanceName,
    shmkline: &std::path::Path,
    opts: &BurstBench,
    traders: usize,
    symbols: usize,
) -> Result<BurstFigures> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let set: Vec<_> = (0..traders)
        .map(|k| {
            serde_json::json!({
                "id": format!("burst-{k:03}"), "symbols": "*", "interval": "1m",
                "rule": format!("close > {}", k % 7),
            })
        })
        .collect();
    let file = write_traders(&dir, &set)?;
    let per_burst = (traders * symbols) as u64;
    // A candle every 2 s leaves a burst time to drain before the next.
    let candles = opts.bursts + 2;
    let args = [
        "--workers".to_owned(),
        opts.workers.to_string(),
        "--symbols".to_owned(),
        symbols.to_string(),
        "--max-symbols".to_owned(),
        (symbols + 1).to_string(),
        "--candles".to_owned(),
        candles.to_string(),
        "--rate".to_owned(),
        "0.5".to_owned(),
    ];
    let mut run = start(instance, shmkline, &file, &args)?;
    let stdout = run.0.stdout.take().context("the run's stdout")?;
    // Lines as they arrive, with their arrival time.
    let (tx, rx) = mpsc::channel::<Instant>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() || tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    // The store's publishes, seen as a worker sees them. The feed starts
    // once every trader is acknowledged.
    status_when(instance, &mut run, Duration::from_secs(60), |s| {
        s["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
    })?;
    let store = StoreReader::open(instance).context("mapping the run's store")?;
    // Publish instants, as a worker would see them, from a thread of their own.
    let publishes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (publishes, stop) = (publishes.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = store.publish_counter();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(Wait::Changed(now)) =
                    store.wait_for_change(seen, Duration::from_millis(50))
                {
                    seen = now;
                    if let Ok(mut p) = publishes.lock() {
                        p.push(Instant::now());
                    }
                }
            }
        })
    };
    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut rates = Vec::new();
    let mut failure = None;
    'bursts: for burst in 0..candles {
        let mut arrivals = Vec::with_capacity(per_burst as usize);
        while (arrivals.len() as u64) < per_burst {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(at) => arrivals.push(at),
                Err(_) => {
                    failure = Some(format!(
                        "burst {burst}: {} of {per_burst} signals arrived within 30 s",
                        arrivals.len()
                    ));
                    break 'bursts;
                }
            }
        }
        if burst < 2 {
            continue; // warm-up
        }
        let (a, z) = (arrivals[0], arrivals[arrivals.len() - 1]);
        // The publish that made the candle visible: the last one before
        // its first signal.
        let published = publishes
            .lock()
            .ok()
            .and_then(|p| p.iter().rev().find(|&&t| t <= a).copied());
        let Some(published) = published else {
            continue;
        };
        first.push(a.duration_since(published).as_nanos() as u64);
        last.push(z.duration_since(published).as_nanos() as u64);
        let span = z.duration_since(a).as_secs_f64();
        if per_burst > 1 && span > 0.0 {
            rates.push((per_burst - 1) as f64 / span);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
    if let Some(why) = failure {
        bail!("{why}");
    }
    drop(run);
    let _ = reader.join();
    rates.sort_by(f64::total_cmp);
    Ok(BurstFigures {
        traders,
        symbols,
        signals_per_burst: per_burst,
        bursts: last.len(),
        first_signal: Percentiles::of(&mut first),
        last_signal: Percentiles::of(&mut last),
        signals_per_second_p50: rates.get(rates.len() / 2).copied(),
    })
}

/// A replacement's catch-up of half a ring.
fn catch_up(
    instance: &InstanceName,
    shmkline: &std::path::Path,
    opts: &BurstBench,
) -> Result<CatchUpFigures> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let file = write_traders(&dir, &super::traders::trader_set(opts.traders))?;
    let ring = 1440u64;
    let args = [
        "--workers".to_owned(),
        "1".to_owned(),
        "--symbols".to_owned(),
        opts.symbols.to_string(),
        "--max-symbols".to_owned(),
        (opts.symbols + 1).to_string(),
        "--candles".to_owned(),
        (2 * ring).to_string(),
        "--rate".to_owned(),
        "1000000".to_owned(),
        "--candles-per-series".to_owned(),
        ring.to_string(),
    ];
    let mut run = start(instance, shmkline, &file, &args)?;
    let stdout = run.0.stdout.take().context("the run's stdout")?;
    let reader = std::thread::spawn(move || {
        let _ = std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink());
    });
    let ready = status_when(instance, &mut run, Duration::from_secs(60), |s| {
        s["workers"][0]["state"] == "ready"
    })?;
    let pid = ready["workers"][0]["pid"]
        .as_u64()
        .context("the worker's pid")? as i32;
    let pid = nix::unistd::Pid::from_raw(pid);
    // Stopped, the worker confirms nothing: the feed runs until it is half a
    // ring ahead (backpressure), then waits.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let ahead = status_when(instance, &mut run, Duration::from_secs(60), |s| {
        let written = s["feed"]["publishes"].as_u64().unwrap_or(0);
        let confirmed = s["workers"][0]["confirmed_publish"].as_u64().unwrap_or(0);
        written >= confirmed + ring / 2
    })?;
    let confirmed = ahead["workers"][0]["confirmed_publish"]
        .as_u64()
        .unwrap_or(0);
    let target = ahead["feed"]["publishes"].as_u64().unwrap_or(0);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
    let killed = Instant::now();
    let done = status_when(instance, &mut run, Duration::from_secs(600), |s| {
        s["workers"][0]["pid"].as_i64() != Some(i64::from(pid.as_raw()))
            && s["workers"][0]["confirmed_publish"].as_u64() >= Some(target)
    })?;
    let took = killed.elapsed();
    drop(run);
    let _ = reader.join();
    let candles = target.saturating_sub(confirmed);
    let verdicts = candles * (opts.traders * opts.symbols) as u64;
    Ok(CatchUpFigures {
        traders: opts.traders,
        symbols: opts.symbols,
        candles_per_series: candles,
        took_ms: took.as_millis() as u64,
        verdicts_per_second: verdicts as f64 / took.as_secs_f64(),
        candles_per_second: candles as f64 / took.as_secs_f64(),
        other_faults: done["supervision"]["faults"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(1),
    })
}

/// Runs the three measurements, one after the other.
pub fn run(
    instance: &InstanceName,
    shmkline: &std::path::Path,
    opts: &BurstBench,
) -> Result<BurstReport> {
    let burst = bursts(instance, shmkline, opts, opts.traders, opts.symbols)?;
    let single = bursts(instance, shmkline, opts, 1, 1)?;
    let ratio =
        |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| super::ratio(a as f64, b as f64));
    let last_p50_vs_single_p50 = ratio(
        burst.last_signal.map(|p| p.p50_ns),
        single.last_signal.map(|p| p.p50_ns),
    );
    let last_p99_vs_single_p99 = ratio(
        burst.last_signal.map(|p| p.p99_ns),
        single.last_signal.map(|p| p.p99_ns),
    );
    let catch_up = catch_up(instance, shmkline, opts)?;
    Ok(BurstReport {
        burst,
        single,
        last_p50_vs_single_p50,
        last_p99_vs_single_p99,
        catch_up,
    })
}
