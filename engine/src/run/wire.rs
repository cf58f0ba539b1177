//! The threads around the coordinator's loop, started in order: the
//! OS-signal thread, the output thread and each durable sink's, the
//! control socket, the metrics endpoint, the spawner, the candle publisher.
//! [`Wiring`] owns them until teardown takes them apart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use super::control::ControlServer;
use super::dedup::Dedup;
use super::emit::Emitter;
use super::events::{EVENT_BOUND, Event, forward_to};
use super::metrics::MetricsServer;
use super::options::RunOptions;
use super::sink::{self, Batch, Output, SignalsFrom, SinkSpec};
use super::spawn::Spawner;
use super::start::Durable;
use super::threads::{Caught, OsSignals, SignalThread};
use crate::instance::Instance;
use crate::nats::candles::{CandlePublisher, CandleTap};

/// Batches of signal lines waiting for the output thread, at most. A batch
/// is the signals of one SIGNALS frame (at most 64 KiB encoded, about three
/// times that as JSON), usually one or a few lines: so at most ~800 MiB in
/// theory, a few MiB in practice.
const OUTPUT_BOUND: usize = 4096;

/// The threads the loop needs and teardown stops. Dropped in the order of
/// its fields (the reverse of their start) on a way out before teardown.
pub(super) struct Wiring {
    pub(super) spawner: Spawner,
    pub(super) metrics: Option<MetricsServer>,
    pub(super) control: ControlServer,
    /// Each durable sink's counters and thread.
    pub(super) sink_threads: Vec<(Arc<Output>, JoinHandle<()>)>,
    pub(super) output_thread: JoinHandle<()>,
    /// Stdout's counters.
    pub(super) output: Arc<Output>,
    /// Joined on every way out, early error returns included; it lives
    /// through teardown, so a signal bounds every wait for the outputs.
    pub(super) signal_thread: SignalThread,
    /// The loop's end of its event channel.
    pub(super) events: Receiver<Event>,
}

/// What the coordinator takes from the wiring.
pub(super) struct LoopParts {
    /// Where the threads it starts send their events.
    pub(super) events_tx: SyncSender<Event>,
    pub(super) emitter: Arc<Emitter>,
    pub(super) os_signals: Arc<OsSignals>,
    /// `--publish-candles`: the publisher and its tap.
    pub(super) publishing: Option<(CandlePublisher, CandleTap)>,
    /// Where `--metrics` listens.
    pub(super) metrics_addr: Option<SocketAddr>,
}

/// Starts the threads of a run of `opts` on `inst`: `caught`, the signals
/// caught since start; `durable`, the sinks opened.
pub(super) fn wire(
    opts: &RunOptions,
    inst: &Instance,
    caught: Caught,
    durable: Vec<Durable>,
) -> Result<(Wiring, LoopParts)> {
    let (events_tx, events) = mpsc::sync_channel::<Event>(EVENT_BOUND);
    let signal_thread = caught.start(events_tx.clone())?;
    let (out_tx, out_rx) = mpsc::sync_channel::<Batch>(OUTPUT_BOUND);
    let output = Arc::new(Output::default());
    let emitter = Arc::new(Emitter::new(opts.workers as usize, out_tx, output.clone()));
    let output_thread =
        sink::stdout::spawn_output(out_rx, output.clone()).context("starting the output thread")?;
    emitter.print_to_stdout(opts.sinks.contains(&SinkSpec::Stdout));
    if opts.signals_from == SignalsFrom::Now {
        emitter.only_closing_after(protocol::clock::now_ms());
    }
    let sink_threads = start_sinks(opts, &emitter, durable)?;
    let control = ControlServer::start(
        inst.runtime.dir(),
        forward_to(events_tx.clone(), opts.store.clone()),
    )?;
    let metrics = match opts.metrics {
        Some(addr) => Some(MetricsServer::start(
            addr,
            forward_to(events_tx.clone(), opts.store.clone()),
        )?),
        None => None,
    };
    let spawner = Spawner::start(opts.worker_bin.clone(), opts.instance.clone())?;
    let os_signals = signal_thread.counts();
    let publishing = match &opts.publish_candles {
        Some(addr) => Some(
            CandlePublisher::start(addr, &opts.nats)
                .with_context(|| format!("--publish-candles {addr}"))?,
        ),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(MetricsServer::addr);
    Ok((
        Wiring {
            spawner,
            metrics,
            control,
            sink_threads,
            output_thread,
            output,
            signal_thread,
            events,
        },
        LoopParts {
            events_tx,
            emitter,
            os_signals,
            publishing,
            metrics_addr,
        },
    ))
}

/// Starts each durable sink's thread and hands the sink to the emitter
/// with what it holds (`--signals-from all`: nothing).
fn start_sinks(
    opts: &RunOptions,
    emitter: &Emitter,
    durable: Vec<Durable>,
) -> Result<Vec<(Arc<Output>, JoinHandle<()>)>> {
    let mut sink_threads = Vec::new();
    for sink in durable {
        // Unbounded as a channel: the emitter bounds it, in signals.
        let (tx, rx) = mpsc::channel::<Batch>();
        let counted = Arc::new(Output::default());
        let (spec, held, thread) = match sink {
            Durable::File(mut file) => {
                let held = std::mem::take(&mut file.dedup);
                let spec = SinkSpec::File(file.path.clone());
                (spec, held, file.spawn(rx, counted.clone()))
            }
            Durable::Webhook(spec, hook, held) => (spec, held, hook.spawn(rx, counted.clone())),
            Durable::Nats(spec, nats, held) => {
                let _ = counted.connection.set(nats.health());
                (spec, held, nats.spawn(rx, counted.clone()))
            }
        };
        let marks = match opts.signals_from {
            SignalsFrom::All => Dedup::default(),
            SignalsFrom::Resume | SignalsFrom::Now => held,
        };
        emitter.add_sink(spec, marks, tx, counted.clone(), opts.sink_queue);
        sink_threads.push((counted, thread.context("starting a sink's thread")?));
    }
    Ok(sink_threads)
}
