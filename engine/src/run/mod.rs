//! `shmkline run`: the coordinator and its supervisor. This file wires the
//! rooms together and tears them down; each job has its own file.
//!
//! One loop on the main thread ([`coordinator`]) owns the store writer and
//! every piece of state but one; other threads only feed it events through
//! one bounded channel: each worker's reader thread ([`link`], decoded
//! frames), the spawner thread ([`spawn`], finished handshakes), the
//! OS-signal thread ([`threads`]) and the control socket ([`control`]). The
//! exception is signals, the latency path: a reader thread checks and prints
//! them itself through the emitter ([`emit`]), whose state (live
//! incarnations, the slots' traders, the deduplicator) the loop keeps up to
//! date. Nothing the loop does blocks on a worker: it sends directly, but
//! never lets more than a [`link::Budget`] of frames and bytes go unread by
//! a worker (what a worker has read is proven by its answers), so the
//! socket buffer can never fill ([`requests`]).
//!
//! Each worker **slot** ([`slot`]) holds a set of traders and a succession of
//! worker processes (incarnations). A crash is seen at once (the channel
//! closes, or `waitpid` reports it); a hang when a PING misses its deadline
//! ([`supervise`]). The process is killed if needed and reaped, and a
//! replacement is spawned into the slot: at once for a fault from outside (a
//! signal someone else sent), after a capped exponential backoff and within
//! an intensity limit for a failure the worker caused itself. The
//! replacement gets the slot's traders again with the publish counter the
//! dead worker had confirmed, and evaluates every candle written after it
//! from the ring; repeats are dropped by the signal deduplicator, so the
//! output stays exactly-once.

pub mod control;
mod coordinator;
pub mod dedup;
mod emit;
mod faults;
pub mod link;
mod manage;
pub mod memory;
pub mod metrics;
mod options;
pub mod plan;
mod requests;
pub mod sink;
mod slot;
pub mod spawn;
mod status;
mod stopping;
mod supervise;
mod threads;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::trader::MAX_TRADERS_PER_WORKER;

use crate::feed::FeedConfig;
use crate::instance::Instance;
use control::ControlServer;
use coordinator::{Coordinator, EVENT_BOUND, Event, drive};
use emit::Emitter;
use options::{check_feed, check_trader};
use spawn::Spawner;

pub use memory::MemorySettings;
pub use options::{MAX_RATE, RunOptions};

/// A durable sink opened, before its thread starts.
enum Durable {
    File(sink::FileSink),
    /// The spec, the sink, and what its receiver has confirmed.
    Webhook(
        sink::SinkSpec,
        Box<sink::webhook::WebhookSink>,
        dedup::Dedup,
    ),
    /// The spec, the sink, and what the stream holds.
    Nats(sink::SinkSpec, Box<sink::nats::NatsSink>, dedup::Dedup),
}

/// Batches of signal lines waiting for the output thread, at most. A batch
/// is the signals of one SIGNALS frame (at most 64 KiB encoded, about three
/// times that as JSON), usually one or a few lines: so at most ~800 MiB in
/// theory, a few MiB in practice.
const OUTPUT_BOUND: usize = 4096;

/// How long teardown waits for stdout to take more of what is queued
/// before it gives up (a reader that keeps reading is waited for).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// What a run ended with.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Signals printed.
    pub signals: u64,
    /// Worker faults detected (and recovered from, unless the run stopped first).
    pub faults: usize,
}

/// Runs the coordinator until an orderly shutdown: checks, wiring, the
/// loop, teardown.
pub fn run(opts: RunOptions) -> Result<RunSummary> {
    check_feed(&opts)?;
    let capacity = opts.workers as usize * MAX_TRADERS_PER_WORKER;
    if opts.traders.len() > capacity {
        bail!(
            "{} traders need at least {} workers (a worker holds at most {MAX_TRADERS_PER_WORKER}): raise --workers",
            opts.traders.len(),
            opts.traders.len().div_ceil(MAX_TRADERS_PER_WORKER)
        );
    }
    for t in &opts.traders {
        check_trader(&opts.store, t)?;
    }
    if !opts.worker_bin.exists() {
        bail!(
            "worker binary {} not found: build it (cargo build) or pass --worker-bin",
            opts.worker_bin.display()
        );
    }
    // Signals first, so a Ctrl-C during start-up is not lost.
    let signals = threads::catch_signals()?;
    let source = match &opts.feed {
        FeedConfig::Binance(live) => {
            live.check()?;
            None
        }
        FeedConfig::Nats(addr) => {
            if opts.publish_candles.as_ref() == Some(addr) {
                bail!(
                    "--publish-candles {addr} is the stream this engine reads (--feed): it would read its own candles back"
                );
            }
            // Restarted: the traders' warm-up before the last candle judged;
            // fresh: what the rings hold.
            let span =
                |candles: u32, p: &plan::RingPlan| i64::from(candles) * p.interval.millis() as i64;
            let longest = opts
                .plan
                .iter()
                .map(|p| p.interval.millis() as i64)
                .max()
                .unwrap_or(0);
            let warm_ms = opts
                .plan
                .iter()
                .map(|p| span(p.needed, p))
                .max()
                .unwrap_or(0)
                + longest;
            let hold_ms = opts
                .plan
                .iter()
                .map(|p| span(p.candles, p))
                .max()
                .unwrap_or(0);
            let nats = crate::feed::nats::NatsSource::open(
                addr,
                &opts.nats,
                opts.state.clone(),
                opts.shard,
                warm_ms,
                hold_ms,
                opts.store.symbols as usize,
            )
            .with_context(|| format!("--feed {addr}"))?;
            Some(crate::feed::Source::Nats(Box::new(nats)))
        }
        finite => Some(finite.source()?.sharded(opts.shard)),
    };
    for p in &opts.plan {
        tracing::info!(
            interval = %p.interval,
            candles = p.candles,
            needed = p.needed,
            traders = p.traders,
            bytes_per_symbol = p.ring_bytes,
            sized_by = p.sized_by.name(),
            "ring plan"
        );
    }
    // The sinks first: a file that cannot be ours, or a position that does
    // not parse, stops the run before anything starts.
    let hook_tls = match &opts.webhook_ca_file {
        Some(pem) => crate::feed::live::trust_only_named(pem, "--webhook-ca-file")?.1,
        None => ureq::tls::TlsConfig::default(),
    };
    let mut durable = Vec::new();
    // Files by identity: two paths to one file (a symlink, a hard link,
    // `./x` and `x`) would be two sinks writing every signal twice.
    let mut files: Vec<((u64, u64), &std::path::Path)> = Vec::new();
    for spec in &opts.sinks {
        match spec {
            sink::SinkSpec::Stdout => {}
            sink::SinkSpec::File(path) => {
                let file = sink::FileSink::open(path)?;
                let id = file.identity()?;
                if let Some((_, first)) = files.iter().find(|(other, _)| *other == id) {
                    bail!(
                        "--sink file:{} and --sink file:{} are the same file (a link to it, or the same path written another way): give each file once",
                        first.display(),
                        path.display()
                    );
                }
                files.push((id, path));
                tracing::info!(path = %path.display(), lines = file.held, series = file.dedup.len(),
                    "file sink: appending what it does not hold yet");
                durable.push(Durable::File(file));
            }
            sink::SinkSpec::Webhook { url, batch } => {
                let marks = sink::marks::MarksFile::new(opts.state.clone(), &spec.key());
                let confirmed = marks.load()?;
                tracing::info!(sink = %spec, series = confirmed.len(), state = marks.name(),
                    "webhook sink: sending what it has not confirmed yet");
                durable.push(Durable::Webhook(
                    spec.clone(),
                    Box::new(sink::webhook::WebhookSink::new(
                        url,
                        *batch,
                        opts.webhook_timeout,
                        hook_tls.clone(),
                        confirmed.clone(),
                        marks,
                    )),
                    confirmed,
                ));
            }
            sink::SinkSpec::Nats(addr) => {
                let marks = sink::marks::MarksFile::new(opts.state.clone(), &spec.key());
                let (sink, confirmed) = sink::nats::NatsSink::open(addr, &opts.nats, marks)
                    .with_context(|| format!("sink {spec}"))?;
                durable.push(Durable::Nats(spec.clone(), Box::new(sink), confirmed));
            }
        }
    }
    let inst = Instance::start(&opts.instance, &opts.store)?;
    // Checked, and the instance is ours (its lock held): this is the trader
    // set from now on.
    opts.state
        .save_traders(&opts.traders.iter().collect::<Vec<_>>())?;
    // ipc-channel's one-shot sockets go into the private runtime directory
    // (short path, wiped at start) rather than the system temp directory.
    let _ = tempfile::env::override_temp_dir(inst.runtime.dir());

    let (events_tx, events_rx) = mpsc::sync_channel::<Event>(EVENT_BOUND);
    // Joined on every way out of this function, early error returns included.
    let signal_thread = signals.start(events_tx.clone())?;
    let (out_tx, out_rx) = mpsc::sync_channel::<sink::Batch>(OUTPUT_BOUND);
    let output = Arc::new(sink::Output::default());
    let emitter = Arc::new(Emitter::new(opts.workers as usize, out_tx, output.clone()));
    let output_thread =
        sink::stdout::spawn_output(out_rx, output.clone()).context("starting the output thread")?;
    emitter.print_to_stdout(opts.sinks.contains(&sink::SinkSpec::Stdout));
    if opts.signals_from == sink::SignalsFrom::Now {
        emitter.only_closing_after(protocol::clock::now_ms());
    }
    let mut sink_threads = Vec::new();
    for sink in durable {
        // Unbounded as a channel: the emitter bounds it, in signals.
        let (tx, rx) = mpsc::channel::<sink::Batch>();
        let counted = Arc::new(sink::Output::default());
        let (spec, held, thread) = match sink {
            Durable::File(mut file) => {
                let held = std::mem::take(&mut file.dedup);
                let spec = sink::SinkSpec::File(file.path.clone());
                (spec, held, file.spawn(rx, counted.clone()))
            }
            Durable::Webhook(spec, hook, held) => (spec, held, hook.spawn(rx, counted.clone())),
            Durable::Nats(spec, nats, held) => {
                let _ = counted.connection.set(nats.health());
                (spec, held, nats.spawn(rx, counted.clone()))
            }
        };
        let marks = match opts.signals_from {
            sink::SignalsFrom::All => dedup::Dedup::default(),
            sink::SignalsFrom::Resume | sink::SignalsFrom::Now => held,
        };
        emitter.add_sink(spec, marks, tx, counted.clone(), opts.sink_queue);
        sink_threads.push((counted, thread.context("starting a sink's thread")?));
    }
    let control = ControlServer::start(
        inst.runtime.dir(),
        control::forward_to(events_tx.clone(), opts.store.clone()),
    )?;
    let metrics = match opts.metrics {
        Some(addr) => Some(metrics::MetricsServer::start(
            addr,
            control::forward_to(events_tx.clone(), opts.store.clone()),
        )?),
        None => None,
    };
    let spawner = Spawner::start(opts.worker_bin.clone(), opts.instance.clone())?;
    let os_signals = signal_thread.counts();
    let publishing = match &opts.publish_candles {
        Some(addr) => Some(
            crate::nats::candles::CandlePublisher::start(addr, &opts.nats)
                .with_context(|| format!("--publish-candles {addr}"))?,
        ),
        None => None,
    };
    let mut coord = Coordinator::new(opts, inst, source, events_tx, emitter, os_signals)?;
    coord.metrics_addr = metrics.as_ref().map(metrics::MetricsServer::addr);
    if let Some((publisher, tap)) = publishing {
        if let Some(pump) = coord.pump.as_mut() {
            pump.tap(tap.clone());
        }
        coord.candle_tap = Some(tap);
        coord.publisher = Some(publisher);
    }

    let result = drive(&mut coord, &spawner, &events_rx);

    // Teardown, whatever happened: the live feed stopped (the store no
    // longer changes), every worker killed and reaped, then the threads
    // (whose channels close with the workers), then the files. The signal
    // thread lives to the end: a signal now still bounds every wait for
    // the outputs, a second ends them (`stopping`).
    let mut stopping = stopping::Stopping::new(signal_thread.counts(), coord.opts.drain_timeout);
    if let Some(mut live) = coord.live.take() {
        live.stop();
    }
    // Reader threads waiting on a stdout nobody reads must not keep the
    // process alive (their threads are joined below).
    coord
        .emitter
        .give_up_after(stopping.left(Instant::now(), OUTPUT_DRAIN));
    coord.kill_stragglers();
    drop(events_rx);
    for slot in &mut coord.slots {
        if let Some(link) = slot.retire_live() {
            link.join();
        }
    }
    for link in coord.graveyard.drain(..) {
        link.join();
    }
    // A spawn may have been in flight: the spawner finishes it, and its
    // delivery (to a closed channel) drops the process, which is then reaped below.
    drop(spawner);
    drop(control);
    drop(metrics);
    // Let the output thread write what is queued, as long as stdout keeps
    // taking it: a slow reader is waited for (within --drain-timeout of a
    // signal), one that stopped reading is given up on after the drain
    // time (the thread dies with the process).
    coord.emitter.close_output();
    stopping.phase();
    while !output_thread.is_finished()
        && !stopping.left(output.last_moved(), OUTPUT_DRAIN).is_zero()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    if output_thread.is_finished() {
        let _ = output_thread.join();
    }
    // Durable sinks deliver what is queued: a file writes and fsyncs it (a
    // full disk fails fast); a webhook or NATS sink retries while it makes
    // progress, and is given up after --drain-timeout without any (or at
    // the signal's deadline; what it did not confirm is re-sent at the next
    // start).
    stopping.phase();
    while sink_threads.iter().any(|(_, t)| !t.is_finished()) {
        for (counted, t) in &sink_threads {
            if !t.is_finished() && counted.deadline().is_none() && stopping.give_up(counted) {
                counted.stop_by(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (_, t) in sink_threads {
        let _ = t.join();
    }
    // The candles written reach the candle stream: the writers' taps go
    // (the live feed's went with it), then the publisher finishes its queue.
    coord.pump.take();
    coord.candle_tap.take();
    let mut unpublished = None;
    if let Some(publisher) = coord.publisher.take() {
        let stream = publisher.stream.clone();
        let dropped = publisher.dropped();
        if !publisher.finish(coord.opts.drain_timeout, || {
            stopping.look().is_some_and(|d| Instant::now() >= d)
        }) {
            unpublished = Some(format!(
                "candles were still unpublished to {stream} after --drain-timeout without progress (or a signal's deadline)"
            ));
        } else if dropped > 0 {
            unpublished = Some(format!(
                "{dropped} live candles were not published to {stream} (its queue was full: the broker was slower than the feed)"
            ));
        }
    }
    drop(signal_thread);
    result?;
    if let Some(why) = unpublished {
        bail!("{why}: engines reading the stream miss them until an ingest publishes them again");
    }
    outcome(&coord, &output)
}

/// What a run that ended in order amounts to: an error if anything it was
/// asked to do was not done, else its summary.
fn outcome(coord: &Coordinator, output: &sink::Output) -> Result<RunSummary> {
    // A live run stopped before its feed delivered anything did nothing it
    // was started for: most likely a wrong --endpoint, or no route to the
    // exchange. Exit 0 would pass that off as an orderly day.
    if let Some(why) = coord.live_health.as_ref().and_then(|h| h.never_delivered()) {
        bail!("{why}; check --endpoint and the network");
    }
    let mut failed = Vec::new();
    for (spec, emitted, out, behind, lost_traders) in coord.emitter.sink_delivery() {
        if !lost_traders.is_empty() {
            failed.push(format!(
                "{spec}: traders removed while it was behind, whose signals since then it cannot get: {}",
                lost_traders.join(", ")
            ));
        }
        let rejected = out.rejected.load(std::sync::atomic::Ordering::Acquire);
        let undelivered = emitted.saturating_sub(out.written() + rejected);
        if undelivered > 0 {
            // What the next start does: it resumes from the sink's saved
            // position, so what an earlier run had confirmed is not sent
            // again (a run with --signals-from all handed those anyway).
            let covered = out.covered().min(undelivered);
            let next = match (undelivered - covered, covered) {
                (_, 0) => "the next start delivers them".to_owned(),
                (0, _) => "the next start does not send them again: an earlier run had them confirmed (start with --signals-from all to send them anyway)".to_owned(),
                (again, covered) => format!(
                    "the next start delivers {again} of them; the other {covered} an earlier run had confirmed, and are not sent again (--signals-from all sends them anyway)"
                ),
            };
            failed.push(format!(
                "{spec}: {undelivered} of {emitted} signals not confirmed (a write failed or --drain-timeout ran out; see the log); {next}"
            ));
        }
        if behind {
            failed.push(format!(
                "{spec}: fell behind (its queue of {} signals was full: --sink-queue) and had not caught up at the end; the next start delivers what it lacks while the feed still has the candles",
                coord.opts.sink_queue,
            ));
        }
        if rejected > 0 {
            failed.push(format!(
                "{spec}: {rejected} signals refused by the receiver (HTTP 4xx, not retried: see the log)"
            ));
        }
    }
    if !failed.is_empty() {
        bail!("not every signal reached its sink: {}", failed.join("; "));
    }
    let (emitted, _) = coord.emitter.delivery();
    let written = output.written();
    if output.closed() {
        bail!(
            "stdout was closed (its reader went away): the run stopped; {} of {emitted} signals were not written to stdout",
            emitted - written.min(emitted)
        );
    }
    if written < emitted {
        bail!(
            "{} of {emitted} signals were not written to stdout ({}): its reader closed it or stopped reading",
            emitted - written,
            if output.lost() > 0 {
                "stdout closed or given up on"
            } else {
                "still queued when the drain time ran out"
            }
        );
    }
    if let Some(first) = &coord.undecodable {
        let n: u64 = coord.slots.iter().map(|s| s.undecodable).sum();
        bail!(
            "{n} frame(s) from workers could not be decoded (first: {first}): this is a bug in shmkline, please report it; signals they carried are missing"
        );
    }
    if !coord.refused.is_empty() {
        bail!(
            "traders refused by their worker: {}",
            coord.refused.join("; ")
        );
    }
    if !coord.quarantined.is_empty() {
        let names: Vec<String> = coord
            .quarantined
            .iter()
            .map(|(t, slot)| format!("{t} (slot {slot})"))
            .collect();
        bail!(
            "traders quarantined after crashing their workers {} times: {}; the other traders ran to the end",
            coord.opts.quarantine_after,
            names.join(", ")
        );
    }
    if coord.gaps() > 0 {
        bail!(
            "{} gap(s): candles left the ring before a worker could evaluate them (see the log); their signals are missing",
            coord.gaps()
        );
    }
    let figures = coord.emitter.figures();
    let summary = RunSummary {
        signals: figures.emitted,
        faults: coord.events.len(),
    };
    tracing::info!(
        signals = summary.signals,
        duplicates = figures.duplicates,
        faults = summary.faults,
        "coordinator stopped"
    );
    Ok(summary)
}
