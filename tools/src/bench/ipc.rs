//! `shmkline bench ping` and `shmkline bench spawn`: the IPC protocol's costs
//! against raw ipc-channel measured in the same run.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engine::instance::Instance;
use engine::process::kill_and_reap;
use engine::run::link::{FromWorker, Link};
use engine::run::spawn::{Spawned, Spawner};
use ipc_channel::ipc::{self, IpcOneShotServer, IpcSender};
use protocol::InstanceName;
use protocol::Interval;
use protocol::bootstrap::Bootstrap;
use protocol::frame::encode;
use protocol::message::{Init, Message, RequestId};
use protocol::store::StoreConfig;
use serde::Serialize;

use super::{BenchChild, Percentiles, Target, ratio};

/// Round trips discarded before measuring.
const WARMUP: usize = 200;
/// How long any single answer may take before the bench gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The `bench ping` report.
#[derive(Debug, Serialize)]
pub struct PingReport {
    /// Always "ping".
    pub bench: &'static str,
    /// PING -> PONG through the whole protocol stack, sent and received on one
    /// thread like the baseline: frame encode, ipc-channel, the worker's
    /// decode, handling and encoded PONG, ipc-channel back, frame decode.
    pub protocol_rtt: Percentiles,
    /// The same, received the way the coordinator does: by the worker's reader
    /// thread, then handed to the loop through its event channel (one more
    /// wake-up).
    pub coordinator_rtt: Percentiles,
    /// Baseline: 16 bytes echoed over a raw ipc-channel byte channel pair by a
    /// child process, sent and received on one thread.
    pub raw_ipc_rtt: Percentiles,
    /// protocol_rtt p50 / raw_ipc_rtt p50 (target <= 1.5).
    pub p50_vs_raw: f64,
    /// The targets.
    pub targets: Vec<Target>,
}

/// The `bench spawn` report.
#[derive(Debug, Serialize)]
pub struct SpawnReport {
    /// Always "spawn".
    pub bench: &'static str,
    /// From fork to READY (handshake, INIT, read-only mapping, generation check).
    pub spawn_to_ready: Percentiles,
    /// From CLEANUP sent to CLEANUP_COMPLETE received.
    pub cleanup: Percentiles,
    /// The targets.
    pub targets: Vec<Target>,
}

struct Live {
    spawned_child: std::process::Child,
    link: Link,
    events: Receiver<FromWorker>,
    next: u64,
}

impl Live {
    fn start(spawner: &Spawner, id: u32) -> Result<Self> {
        let Spawned {
            child,
            to_worker,
            from_worker,
        } = spawner.spawn(id)?;
        let (tx, events) = mpsc::sync_channel(1024);
        let link = Link::start(
            id,
            tracing::Span::none(),
            to_worker,
            from_worker,
            move |e| {
                let _ = tx.send(e);
            },
        )?;
        Ok(Self {
            spawned_child: child,
            link,
            events,
            next: 0,
        })
    }

    /// Sends `message` and waits for the answer with the same id.
    fn call(&mut self, message: Message) -> Result<Message> {
        self.next += 1;
        let id = RequestId(self.next);
        // One request in flight at a time: far inside any send budget.
        self.link
            .send(&encode(id, &message)?)
            .context("sending a request")?;
        loop {
            match self
                .events
                .recv_timeout(ANSWER_TIMEOUT)
                .context("the worker did not answer")?
            {
                FromWorker::Frame(got, answer) if got == id => return Ok(answer),
                FromWorker::Frame(..) => {}
                FromWorker::Malformed { error, .. } => {
                    bail!("malformed frame from the worker: {error}")
                }
                FromWorker::Closed => bail!("the worker's channel closed"),
            }
        }
    }

    fn finish(mut self) -> Result<()> {
        let _ = self.spawned_child.wait();
        self.link.join();
        Ok(())
    }
}

fn setup(instance: &InstanceName) -> Result<Instance> {
    let config = StoreConfig::uniform(4, &[Interval::M1], 16);
    let inst = Instance::start(instance, &config)?;
    let _ = tempfile::env::override_temp_dir(inst.runtime.dir());
    Ok(inst)
}

fn init(live: &mut Live, inst: &Instance, id: u32) -> Result<()> {
    let init = Init {
        instance: inst.runtime.instance().to_string(),
        generation: inst.store.lock().generation(),
        worker_id: id,
    };
    match live.call(Message::Init(init))? {
        Message::Ready(_) => Ok(()),
        other => bail!("expected READY, got {other:?}"),
    }
}

/// Round trips per block; blocks of the three paths alternate, in a rotating
/// order, so drift on a shared machine (frequency, placement) hits all three
/// alike. Measured one after another, whichever ran later came out up to 4x
/// slower, which made sequential ratios meaningless.
const BLOCK: usize = 100;

/// One path under measurement: a closure doing one PING/PONG round trip.
type RoundTrip<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// `shmkline bench ping`.
pub fn run_ping(
    instance: &InstanceName,
    worker_bin: PathBuf,
    samples: usize,
) -> Result<PingReport> {
    let inst = setup(instance)?;
    let spawner = Spawner::start(worker_bin, instance.clone())?;

    // Raw baseline: an echo child over a bare byte channel pair.
    let (server, name) = IpcOneShotServer::<Bootstrap>::new()?;
    let echo = BenchChild::spawn(&["ipc-echo".into(), "--bootstrap".into(), name])?;
    let (_boot, channels) = server
        .accept()
        .map_err(|e| anyhow::anyhow!("accepting the echo child: {e:?}"))?;
    let Bootstrap::Channels {
        to_worker: raw_to,
        from_worker: raw_from,
    } = channels
    else {
        bail!("the echo child aborted")
    };
    let frame = [7u8; 16];

    // The protocol stack, received on this thread.
    let Spawned {
        child: mut direct_child,
        to_worker: direct_to,
        from_worker: direct_from,
    } = spawner.spawn(1)?;
    let mut next = 0u64;
    let mut direct_call = move |message: &Message| -> Result<Message> {
        next += 1;
        direct_to.send(&encode(RequestId(next), message)?)?;
        loop {
            let bytes = direct_from
                .recv()
                .map_err(|e| anyhow::anyhow!("the worker went away: {e:?}"))?;
            let (id, answer) = protocol::frame::decode(&bytes)?;
            if id == RequestId(next) {
                return Ok(answer);
            }
        }
    };
    let direct_init = Init {
        instance: inst.runtime.instance().to_string(),
        generation: inst.store.lock().generation(),
        worker_id: 1,
    };
    anyhow::ensure!(
        matches!(direct_call(&Message::Init(direct_init))?, Message::Ready(_)),
        "expected READY"
    );

    // The coordinator's way: reader thread, then an event channel.
    let mut live = Live::start(&spawner, 0)?;
    init(&mut live, &inst, 0)?;

    let result = (|| -> Result<(Percentiles, Percentiles, Percentiles)> {
        let mut paths: Vec<(RoundTrip, Vec<u64>)> = vec![
            (
                Box::new(|| {
                    raw_to.send(&frame)?;
                    let echo = raw_from
                        .recv()
                        .map_err(|e| anyhow::anyhow!("echo: {e:?}"))?;
                    anyhow::ensure!(echo.len() == frame.len(), "bad echo");
                    Ok(())
                }),
                Vec::with_capacity(samples),
            ),
            (
                Box::new(|| {
                    anyhow::ensure!(
                        matches!(direct_call(&Message::Ping)?, Message::Pong(_)),
                        "expected PONG"
                    );
                    Ok(())
                }),
                Vec::with_capacity(samples),
            ),
            (
                Box::new(|| {
                    anyhow::ensure!(
                        matches!(live.call(Message::Ping)?, Message::Pong(_)),
                        "expected PONG"
                    );
                    Ok(())
                }),
                Vec::with_capacity(samples),
            ),
        ];
        // Warm-up for all three, then interleaved blocks.
        for (trip, _) in paths.iter_mut() {
            for _ in 0..WARMUP {
                trip()?;
            }
        }
        let rounds = samples.div_ceil(BLOCK);
        for round in 0..rounds {
            for k in 0..paths.len() {
                let (trip, rtts) = &mut paths[(round + k) % 3];
                for _ in 0..BLOCK {
                    let started = Instant::now();
                    trip()?;
                    rtts.push(started.elapsed().as_nanos() as u64);
                }
            }
        }
        let mut out = paths
            .into_iter()
            .map(|(_, mut rtts)| Percentiles::of(&mut rtts).context("no samples"));
        let raw = out.next().context("raw")??;
        let protocol = out.next().context("protocol")??;
        let coordinator = out.next().context("coordinator")??;
        Ok((raw, protocol, coordinator))
    })();
    let _ = direct_call(&Message::Cleanup);
    kill_and_reap(&mut direct_child);
    let _ = live.call(Message::Cleanup);
    live.finish()?;
    drop(raw_to);
    let _: serde_json::Value = echo.finish()?;
    drop(spawner);
    drop(inst);
    let (raw_ipc_rtt, protocol_rtt, coordinator_rtt) = result?;
    let p50_vs_raw = ratio(protocol_rtt.p50_ns as f64, raw_ipc_rtt.p50_ns as f64);
    Ok(PingReport {
        bench: "ping",
        protocol_rtt,
        coordinator_rtt,
        raw_ipc_rtt,
        p50_vs_raw,
        targets: vec![Target::at_most("p50_vs_raw <= 1.5", p50_vs_raw, 1.5)],
    })
}

/// The child side of the raw baseline: echo every byte frame until the channel closes.
pub fn ipc_echo(bootstrap: &str) -> Result<serde_json::Value> {
    let (to_child, requests) = ipc::bytes_channel()?;
    let (answers, from_child) = ipc::bytes_channel()?;
    IpcSender::<Bootstrap>::connect(bootstrap.to_owned())?.send(Bootstrap::Channels {
        to_worker: to_child,
        from_worker: from_child,
    })?;
    let mut echoed = 0u64;
    while let Ok(bytes) = requests.recv() {
        answers.send(&bytes)?;
        echoed += 1;
    }
    Ok(serde_json::json!({ "echoed": echoed }))
}

/// `shmkline bench spawn`.
pub fn run_spawn(
    instance: &InstanceName,
    worker_bin: PathBuf,
    workers: u32,
) -> Result<SpawnReport> {
    let inst = setup(instance)?;
    let spawner = Spawner::start(worker_bin, instance.clone())?;
    let mut lives = Vec::new();
    let mut ready = Vec::new();
    for id in 0..workers {
        let started = Instant::now();
        let mut live = Live::start(&spawner, id)?;
        init(&mut live, &inst, id)?;
        ready.push(started.elapsed().as_nanos() as u64);
        lives.push(live);
    }
    let mut cleanup = Vec::new();
    for mut live in lives {
        let started = Instant::now();
        match live.call(Message::Cleanup)? {
            Message::CleanupComplete(_) => cleanup.push(started.elapsed().as_nanos() as u64),
            other => bail!("expected CLEANUP_COMPLETE, got {other:?}"),
        }
        live.finish()?;
    }
    drop(spawner);
    drop(inst);
    let spawn_to_ready = Percentiles::of(&mut ready).context("no samples")?;
    let cleanup = Percentiles::of(&mut cleanup).context("no samples")?;
    Ok(SpawnReport {
        bench: "spawn",
        targets: vec![
            Target::at_most(
                "spawn_to_ready p50 <= 5 ms",
                spawn_to_ready.p50_ns as f64 / 1e6,
                5.0,
            ),
            Target::at_most("cleanup p99 <= 100 ms", cleanup.p99_ns as f64 / 1e6, 100.0),
        ],
        spawn_to_ready,
        cleanup,
    })
}
