//! `shmkline bench observe`: what watching a run costs the coordinator.
//!
//! A real `shmkline run` (many traders, many symbols, `--metrics` on
//! loopback) is asked, as fast as it answers, N `status` requests (what
//! `top` asks each refresh) and N `/metrics` scrapes, with N `ping`
//! requests (an answer that takes no work) as the baseline in the same run.
//! The coordinator measures the loop time each answer takes itself
//! (`status.control.loop_us`); the coordinator's private memory is read
//! before and after each batch, so a leak per request would show.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engine::run::control::{self, ControlClient};
use protocol::InstanceName;
use serde::Serialize;

use super::traders::{RunGuard, trader_set, write_traders};

/// The target: a refresh or a scrape costs the loop under 1 ms (p99).
pub const TARGET_LOOP_US: u64 = 1000;

/// What to run.
#[derive(Debug, Clone)]
pub struct ObserveBench {
    /// Traders.
    pub traders: usize,
    /// Symbols.
    pub symbols: usize,
    /// Worker processes.
    pub workers: u32,
    /// Requests of each kind.
    pub requests: u64,
}

/// One kind of request's figures.
#[derive(Debug, Serialize)]
pub struct RequestFigures {
    /// `ping` (baseline), `status` (a `top` refresh), `metrics` (a scrape).
    pub request: &'static str,
    /// Requests made.
    pub requests: u64,
    /// Loop time per answer, as the coordinator measured it, µs.
    pub loop_p50_us: Option<f64>,
    /// The same, 99th percentile (of the last 1,024).
    pub loop_p99_us: Option<f64>,
    /// The same, largest.
    pub loop_max_us: Option<f64>,
    /// Round trip seen by the client (socket or HTTP, and encoding), µs, median.
    pub client_p50_us: u64,
    /// The coordinator's private memory before and after the batch, bytes.
    pub private_before: u64,
    /// See `private_before`.
    pub private_after: u64,
    /// `loop_p99_us` over the baseline's.
    pub ratio_to_ping: Option<f64>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct ObserveReport {
    /// Traders.
    pub traders: usize,
    /// Symbols.
    pub symbols: usize,
    /// Workers.
    pub workers: u32,
    /// Per request kind.
    pub requests: Vec<RequestFigures>,
    /// Bytes of one `status` answer and one `/metrics` text.
    pub status_bytes: usize,
    /// See `status_bytes`.
    pub metrics_bytes: usize,
    /// Whether `status` and `metrics` each stayed under [`TARGET_LOOP_US`] at p99.
    pub target_met: bool,
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(addr).context("connecting to --metrics")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => bail!(
            "the metrics endpoint answered {:?}",
            answer.lines().next().unwrap_or_default()
        ),
    }
}

fn private_of(status: &serde_json::Value) -> u64 {
    let pid = status["pid"].as_u64().unwrap_or(0) as u32;
    engine::run::memory::read_memory(pid).map_or(0, |(private, _)| private)
}

/// Runs the benchmark as instance `instance` with the `shmkline` binary given.
pub fn run(
    instance: &InstanceName,
    shmkline: &std::path::Path,
    opts: &ObserveBench,
) -> Result<ObserveReport> {
    let dir = tempfile::tempdir().context("a temporary directory for the trader file")?;
    let file = write_traders(&dir, &trader_set(opts.traders))?;
    let child = Command::new(shmkline)
        .arg("--instance")
        .arg(instance.as_str())
        .args(["run", "--exit-with-parent", "--metrics", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--max-symbols", &(opts.symbols + 1).to_string()])
        .args(["--workers", &opts.workers.to_string()])
        .args(["--symbols", &opts.symbols.to_string()])
        .args(["--rate", "2"])
        .arg("--traders")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting shmkline run")?;
    let mut guard = RunGuard(child);
    let runtime = engine::runtime::base_dir().join(instance.as_str());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Ok(Some(exit)) = guard.0.try_wait() {
            bail!("the run ended early ({exit}); run it by hand to see why");
        }
        if let Ok(s) = control::ask(&runtime, "status")
            && s["workers"]
                .as_array()
                .is_some_and(|w| w.iter().all(|w| w["state"] == "ready"))
            && s["signals"]["emitted"].as_u64() > Some(0)
        {
            break s;
        }
        if Instant::now() > deadline {
            bail!("the run did not get going within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let addr = status["metrics"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://"))
        .and_then(|u| u.strip_suffix("/metrics"))
        .context("the run's metrics address")?
        .to_owned();
    let mut client = ControlClient::connect(&runtime)?;
    let status_bytes = client.ask("status")?.to_string().len();
    let metrics_bytes = http_get(&addr, "/metrics")?.len();
    let mut figures = Vec::new();
    for request in ["ping", "status", "metrics"] {
        let before = private_of(&client.ask("ping").and_then(|_| client.ask("status"))?);
        let mut took = Vec::with_capacity(opts.requests as usize);
        for _ in 0..opts.requests {
            let t = Instant::now();
            match request {
                "metrics" => drop(http_get(&addr, "/metrics")?),
                r => drop(client.ask(r)?),
            }
            took.push(t.elapsed().as_micros() as u64);
        }
        let status = client.ask("status")?;
        let after = private_of(&status);
        took.sort_unstable();
        let cost = &status["control"]["loop_us"][request];
        figures.push(RequestFigures {
            request,
            requests: opts.requests,
            loop_p50_us: cost["p50_us"].as_f64(),
            loop_p99_us: cost["p99_us"].as_f64(),
            loop_max_us: cost["max_us"].as_f64(),
            client_p50_us: took[took.len() / 2],
            private_before: before,
            private_after: after,
            ratio_to_ping: None,
        });
    }
    drop(guard);
    let ping = figures[0].loop_p99_us.filter(|&p| p > 0.0);
    for f in &mut figures {
        f.ratio_to_ping = ping
            .zip(f.loop_p99_us)
            .map(|(base, p)| (p / base * 10.0).round() / 10.0);
    }
    let target_met = figures[1..]
        .iter()
        .all(|f| f.loop_p99_us.is_some_and(|p| p < TARGET_LOOP_US as f64));
    Ok(ObserveReport {
        traders: opts.traders,
        symbols: opts.symbols,
        workers: opts.workers,
        requests: figures,
        status_bytes,
        metrics_bytes,
        target_met,
    })
}
