//! `shmkline chaos`: runs `shmkline run` on a paced finite feed as a child
//! process, kills (SIGKILL) and freezes (SIGSTOP) random workers from outside
//! at a steady rate, then compares the run's signals with the backtest of the
//! same feed and checks that nothing leaked. `scripts/chaos.sh` wraps it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engine::backtest::{BacktestOptions, backtest};
use engine::process::kill_and_reap;
use engine::run::control;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::InstanceName;
use protocol::splitmix::SplitMix64;
use protocol::store::StoreConfig;
use protocol::trader::TraderSpec;
use serde::Serialize;

use crate::bench::Percentiles;

/// What to run and what to inject.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Instance for the run.
    pub instance: InstanceName,
    /// Where the instance's runtime directory lives.
    pub runtime_base: PathBuf,
    /// The `shmkline` binary (to start `run`).
    pub shmkline: PathBuf,
    /// Trader file, or the built-in set.
    pub traders_file: Option<PathBuf>,
    /// Traders (for the backtest).
    pub traders: Vec<TraderSpec>,
    /// Worker processes.
    pub workers: u32,
    /// Synthetic symbols.
    pub symbols: usize,
    /// Candles per symbol.
    pub candles: u64,
    /// Candles per second per symbol.
    pub rate: f64,
    /// Feed seed.
    pub seed: u64,
    /// SIGKILLs to send.
    pub kills: u32,
    /// SIGSTOPs to send.
    pub stops: u32,
    /// PING interval of the run.
    pub ping_interval_ms: u64,
    /// PING deadline of the run, if not the default.
    pub ping_deadline_ms: Option<u64>,
    /// Seed of the fault schedule.
    pub chaos_seed: u64,
    /// Time between faults; default: spread over the first 70% of the feed.
    pub fault_interval: Option<Duration>,
}

/// The chaos report.
#[derive(Debug, Serialize)]
pub struct ChaosReport {
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, u32>,
    /// Faults the coordinator reported.
    pub detected: usize,
    /// Faults it recovered from.
    pub recovered: usize,
    /// Fault to detection (SIGKILL: the channel closing; SIGSTOP: the missed
    /// PING), by kind; millisecond resolution.
    pub detection: BTreeMap<&'static str, Option<Percentiles>>,
    /// Fault to recovered (the replacement answered a PING with all traders
    /// acked), by kind; millisecond resolution.
    pub recovery: BTreeMap<&'static str, Option<Percentiles>>,
    /// Signals the backtest of the same feed prints.
    pub signals_expected: usize,
    /// Signals the run printed.
    pub signals_received: usize,
    /// Expected but not printed.
    pub signals_lost: usize,
    /// Printed more than once.
    pub signals_duplicated: usize,
    /// Printed but not expected.
    pub signals_unexpected: usize,
    /// The run's exit code.
    pub run_exit: Option<i32>,
    /// Zombie children of the coordinator once every fault was recovered from.
    pub zombies: usize,
    /// Worker processes alive after the run ended.
    pub orphans: usize,
    /// This instance's `/dev/shm` entries after the run ended.
    pub shm_left: Vec<String>,
    /// Whether the runtime directory is gone after the run.
    pub runtime_dir_removed: bool,
    /// Coordinator open descriptors once ready, and after the last recovery.
    pub coordinator_fds: (usize, usize),
    /// Coordinator private resident memory (RssAnon, KiB) once ready, and
    /// after the last recovery: what a leak would grow.
    pub coordinator_rss_kib: (u64, u64),
    /// Coordinator resident shared memory (RssShmem, KiB): the store pages the
    /// feed has touched so far, bounded by the segment's size.
    pub coordinator_shmem_kib: (u64, u64),
    /// Workers' summed resident set size (bytes, from PONG) once ready and after.
    pub workers_rss_bytes: (u64, u64),
    /// Whether every check passed.
    pub ok: bool,
}

/// Kills the run if the chaos driver fails half-way.
struct RunGuard(Option<Child>);

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            kill_and_reap(&mut c);
        }
    }
}

pub(crate) fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `RssAnon`, `RssShmem`, ...).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The coordinator's own memory: private anonymous pages. `VmRSS` also counts
/// the store's shared pages, which grow as the feed first touches the
/// (fixed-size) ring; those are reported separately.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon")
}

/// Children of `parent` in state Z.
pub(crate) fn zombies_of(parent: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(')').is_some_and(|(_, rest)| {
                let mut f = rest.split_whitespace();
                let state = f.next();
                let ppid = f.next().and_then(|p| p.parse::<u32>().ok());
                state == Some("Z") && ppid == Some(parent)
            })
        })
        .count()
}

/// Live worker processes of `instance` (command line holding both
/// `--instance <name>` and `--worker-id`, as the coordinator starts them).
pub(crate) fn workers_alive(instance: &InstanceName) -> usize {
    let needle = format!("--instance\0{instance}\0");
    let has = |c: &[u8], n: &[u8]| c.windows(n.len()).any(|w| w == n);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| has(&c, needle.as_bytes()) && has(&c, b"--worker-id\0"))
                && std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
                })
        })
        .count()
}

pub(crate) fn shm_entries(instance: &InstanceName) -> Vec<String> {
    let prefix = format!("shmkline-{instance}");
    std::fs::read_dir("/dev/shm").map_or_else(
        |_| Vec::new(),
        |d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n == &prefix || n.starts_with(&format!("{prefix}-")))
                .collect()
        },
    )
}

fn key(line: &serde_json::Value) -> String {
    format!(
        "{}|{}|{}|{}",
        line["trader"], line["symbol"], line["interval"], line["open_time"]
    )
}

fn percentiles(mut v: Vec<u64>) -> Option<Percentiles> {
    Percentiles::of(&mut v)
}

/// Runs the chaos experiment.
pub fn run(opts: &ChaosOptions) -> Result<ChaosReport> {
    let dir = opts.runtime_base.join(opts.instance.as_str());
    let shm_before = shm_entries(&opts.instance);
    anyhow::ensure!(
        shm_before.is_empty(),
        "instance {} already has a segment: {shm_before:?}",
        opts.instance
    );
    // A state directory of its own: the run's traders are the built-in
    // ones the report expects, whatever an earlier run of this instance kept.
    let state = tempfile::tempdir().context("a temporary state directory")?;
    let mut cmd = Command::new(&opts.shmkline);
    cmd.args(["--instance", opts.instance.as_str(), "run"])
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .args([
            "--workers",
            &opts.workers.to_string(),
            "--symbols",
            &opts.symbols.to_string(),
        ])
        .args([
            "--candles",
            &opts.candles.to_string(),
            "--rate",
            &opts.rate.to_string(),
        ])
        .args([
            "--seed",
            &opts.seed.to_string(),
            "--ping-interval",
            &opts.ping_interval_ms.to_string(),
        ])
        // Kills from outside never count against the restart limit; this only
        // bounds self-inflicted failures should the run go wrong.
        .env("SHMKLINE_RUNTIME_DIR", &opts.runtime_base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(file) = &opts.traders_file {
        cmd.args(["--traders", &file.to_string_lossy()]);
    }
    if let Some(deadline) = opts.ping_deadline_ms {
        cmd.args(["--ping-deadline", &deadline.to_string()]);
    }
    let mut child = cmd.spawn().context("starting shmkline run")?;
    let coordinator = child.id();
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let mut guard = RunGuard(Some(child));

    let status = |pred: &dyn Fn(&serde_json::Value) -> bool,
                  within: Duration|
     -> Result<serde_json::Value> {
        let until = Instant::now() + within;
        loop {
            if let Ok(s) = control::ask(&dir, "status")
                && pred(&s)
            {
                return Ok(s);
            }
            if Instant::now() > until {
                bail!("the run did not reach the expected state within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let ready = |s: &serde_json::Value| {
        s["workers"]
            .as_array()
            .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w["state"] == "ready"))
    };
    let first = status(&ready, Duration::from_secs(30))?;
    let workers_rss = |s: &serde_json::Value| -> u64 {
        s["workers"].as_array().map_or(0, |w| {
            w.iter().filter_map(|w| w["rss_bytes"].as_u64()).sum()
        })
    };
    // Settled figures: a just-killed worker is a zombie for the few ms until
    // the coordinator reaps it, and a control connection or a dead worker's
    // channel holds a descriptor for a moment; what must not stay is measured
    // as the minimum over a short window.
    let settle = |f: &dyn Fn() -> usize| -> usize {
        (0..10)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(30));
                f()
            })
            .min()
            .unwrap_or(0)
    };
    let before = (
        settle(&|| fd_count(coordinator)),
        rss_kib(coordinator),
        workers_rss(&first),
    );
    let shmem_before = status_kib(coordinator, "RssShmem");

    // The schedule: every fault kind shuffled, evenly spaced over the first 70% of the feed.
    // A seed reproduces the fault schedule.
    let mut rng = SplitMix64::new(opts.chaos_seed);
    let mut kinds: Vec<&'static str> = std::iter::repeat_n("kill", opts.kills as usize)
        .chain(std::iter::repeat_n("stop", opts.stops as usize))
        .collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i + 1));
    }
    let feed_secs = opts.candles as f64 / opts.rate;
    let spacing = opts.fault_interval.unwrap_or_else(|| {
        Duration::from_secs_f64((feed_secs * 0.7 / kinds.len().max(1) as f64).max(0.02))
    });
    let mut injected: Vec<(u32, &'static str, i64)> = Vec::new();
    let mut counts: BTreeMap<&'static str, u32> = BTreeMap::new();
    for kind in &kinds {
        std::thread::sleep(spacing);
        // A worker that is up and not one we already hit.
        let s = status(
            &|s: &serde_json::Value| {
                s["workers"].as_array().is_some_and(|w| {
                    w.iter().any(|w| {
                        w["state"] == "ready"
                            && !injected
                                .iter()
                                .any(|(p, _, _)| Some(u64::from(*p)) == w["pid"].as_u64())
                    })
                })
            },
            Duration::from_secs(30),
        )
        .with_context(|| {
            format!(
                "after {} of {} faults (if the run already ended, make the feed longer with --candles or send fewer faults)",
                injected.len(),
                kinds.len()
            )
        })?;
        let candidates: Vec<u32> = s["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["state"] == "ready")
            .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
            .filter(|p| !injected.iter().any(|(q, _, _)| q == p))
            .collect();
        let pid = candidates[rng.below(candidates.len())];
        let signal = if *kind == "kill" {
            Signal::SIGKILL
        } else {
            Signal::SIGSTOP
        };
        let at = protocol::clock::now_ms();
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("sending {signal} to worker {pid}"))?;
        injected.push((pid, kind, at));
        *counts.entry(kind).or_default() += 1;
    }
    // Every fault recovered from: the "after" figures.
    let total = injected.len();
    let last = status(
        &|s: &serde_json::Value| {
            ready(s) && s["supervision"]["recovered"].as_u64() >= Some(total as u64)
        },
        Duration::from_secs(60),
    )?;
    let zombies = settle(&|| zombies_of(coordinator));
    let after = (
        settle(&|| fd_count(coordinator)),
        rss_kib(coordinator),
        workers_rss(&last),
    );
    let shmem_after = status_kib(coordinator, "RssShmem");
    let events = control::ask(&dir, "events")?;

    // The run ends by itself once the finite feed is evaluated.
    let mut child = guard.0.take().context("run already gone")?;
    let until = Instant::now() + Duration::from_secs_f64(feed_secs * 3.0 + 60.0);
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > until {
            kill_and_reap(&mut child);
            bail!("the run did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;

    // Detection and recovery times per injected fault, matched by pid.
    let mut detection: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    let mut recovery: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    let evs = events["events"].as_array().cloned().unwrap_or_default();
    let mut matched = 0;
    for (pid, kind, at) in &injected {
        if let Some(e) = evs
            .iter()
            .find(|e| e["pid"].as_u64() == Some(u64::from(*pid)))
        {
            matched += 1;
            if let Some(d) = e["detected_at_ms"].as_i64() {
                detection
                    .entry(kind)
                    .or_default()
                    .push((d - at).max(0) as u64 * 1_000_000);
            }
            if let Some(r) = e["recovered_at_ms"].as_i64() {
                recovery
                    .entry(kind)
                    .or_default()
                    .push((r - at).max(0) as u64 * 1_000_000);
            }
        }
    }
    let recovered = evs.iter().filter(|e| e["recovered_at_ms"].is_i64()).count();

    // The oracle.
    let mut oracle = Vec::new();
    backtest(
        &BacktestOptions {
            traders: opts.traders.clone(),
            feed: engine::feed::FeedConfig::Synthetic {
                seed: opts.seed,
                symbols: opts.symbols,
                candles: Some(opts.candles),
            },
            intervals: StoreConfig::default().intervals(),
            aggregate: StoreConfig::default()
                .intervals()
                .into_iter()
                .filter(|i| *i != protocol::Interval::M1)
                .collect(),
            max_symbols: StoreConfig::default().symbols,
        },
        &mut oracle,
    )?;
    let parse = |bytes: &[u8]| -> Result<Vec<String>> {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .map(|v| key(&v))
                    .context("a signal line is not JSON")
            })
            .collect()
    };
    let expected: BTreeSet<String> = parse(&oracle)?.into_iter().collect();
    let received_lines = parse(&stdout)?;
    let received: BTreeSet<String> = received_lines.iter().cloned().collect();
    let duplicated = received_lines.len() - received.len();
    let lost = expected.difference(&received).count();
    let unexpected = received.difference(&expected).count();

    std::thread::sleep(Duration::from_millis(200));
    let orphans = workers_alive(&opts.instance);
    let shm_left = shm_entries(&opts.instance);
    let runtime_dir_removed = !dir.exists();
    let as_ms =
        |m: BTreeMap<&'static str, Vec<u64>>| -> BTreeMap<&'static str, Option<Percentiles>> {
            m.into_iter().map(|(k, v)| (k, percentiles(v))).collect()
        };
    let ok = lost == 0
        && duplicated == 0
        && unexpected == 0
        && exit.success()
        && zombies == 0
        && orphans == 0
        && shm_left.is_empty()
        && runtime_dir_removed
        && matched == total
        && after.0 <= before.0;
    Ok(ChaosReport {
        injected: counts,
        detected: evs.len(),
        recovered,
        detection: as_ms(detection),
        recovery: as_ms(recovery),
        signals_expected: expected.len(),
        signals_received: received_lines.len(),
        signals_lost: lost,
        signals_duplicated: duplicated,
        signals_unexpected: unexpected,
        run_exit: exit.code(),
        zombies,
        orphans,
        shm_left,
        runtime_dir_removed,
        coordinator_fds: (before.0, after.0),
        coordinator_rss_kib: (before.1, after.1),
        coordinator_shmem_kib: (shmem_before, shmem_after),
        workers_rss_bytes: (before.2, after.2),
        ok,
    })
}
