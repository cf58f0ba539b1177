//! A run's start, before any thread: its feed's source opened, its ring
//! plan logged, its durable sinks opened, its instance taken. Each refuses
//! what cannot be run before the next begins.

use anyhow::{Context, Result, bail};

use super::dedup::Dedup;
use super::options::RunOptions;
use super::plan::RingPlan;
use super::sink::{self, SinkSpec};
use crate::feed::nats::NatsSource;
use crate::feed::{FeedConfig, Source};
use crate::instance::Instance;

/// A durable sink opened, before its thread starts.
pub(super) enum Durable {
    File(sink::FileSink),
    /// The spec, the sink, and what its receiver has confirmed.
    Webhook(SinkSpec, Box<sink::webhook::WebhookSink>, Dedup),
    /// The spec, the sink, and what the stream holds.
    Nats(SinkSpec, Box<sink::nats::NatsSink>, Dedup),
}

/// The finite feed's source (none for the live feed, whose options are
/// checked): a replay's files, the synthetic symbols, the NATS candle
/// stream, each cut to this coordinator's shard.
pub(super) fn open_source(opts: &RunOptions) -> Result<Option<Source>> {
    Ok(match &opts.feed {
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
            let span = |candles: u32, p: &RingPlan| i64::from(candles) * p.interval.millis() as i64;
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
            let nats = NatsSource::open(
                addr,
                &opts.nats,
                opts.state.clone(),
                opts.shard,
                warm_ms,
                hold_ms,
                opts.store.symbols as usize,
            )
            .with_context(|| format!("--feed {addr}"))?;
            Some(Source::Nats(Box::new(nats)))
        }
        finite => Some(finite.source()?.sharded(opts.shard)),
    })
}

/// Logs how each interval's ring was sized.
pub(super) fn log_plan(opts: &RunOptions) {
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
}

/// The durable sinks, opened before anything starts: a file that cannot
/// be ours, or a position that does not parse, stops the run first.
pub(super) fn open_sinks(opts: &RunOptions) -> Result<Vec<Durable>> {
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
            SinkSpec::Stdout => {}
            SinkSpec::File(path) => {
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
            SinkSpec::Webhook { url, batch } => {
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
            SinkSpec::Nats(addr) => {
                let marks = sink::marks::MarksFile::new(opts.state.clone(), &spec.key());
                let (sink, confirmed) = sink::nats::NatsSink::open(addr, &opts.nats, marks)
                    .with_context(|| format!("sink {spec}"))?;
                durable.push(Durable::Nats(spec.clone(), Box::new(sink), confirmed));
            }
        }
    }
    Ok(durable)
}

/// Takes the instance (its lock, runtime directory and segment); checked,
/// and the instance ours, the run's traders are the trader set from now on.
pub(super) fn start_instance(opts: &RunOptions) -> Result<Instance> {
    let inst = Instance::start(&opts.instance, &opts.store)?;
    opts.state
        .save_traders(&opts.traders.iter().collect::<Vec<_>>())?;
    // ipc-channel's one-shot sockets go into the private runtime directory
    // (short path, wiped at start) rather than the system temp directory.
    let _ = tempfile::env::override_temp_dir(inst.runtime.dir());
    Ok(inst)
}
