//! `shmkline bench ping` and `shmkline bench spawn`: the IPC protocol's costs
//! against raw ipc-channel measured in the same run.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_channel::ipc::{self, IpcOneShotServer, IpcSender};
use protocol::InstanceName;
use protocol::Interval;
use protocol::bootstrap::Bootstrap;
use protocol::frame::encode;
use protocol::message::{Init, Message, RequestId};
use protocol::store::StoreConfig;
use serde::Serialize;

use super::{BenchChild, Percentiles, Target, ratio};
use crate::instance::Instance;
use crate::run::link::{FromWorker, Link};
use crate::run::spawn::{Spawned, Spawner};

/// Round trips discarded before measuring.
const WARMUP: usize = 200;
/// How long any single answer may take before the bench gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The `bench ping` report.
#[derive(Debug, Serialize)]
pub struct PingReport {
    /// Always "ping".
    pub bench: &'static str,
    /// PING -> PONG through the whole stack: frame encode, the worker link's
    /// writer thread, the worker's decode and answer, the reader thread's
    /// decode, the event channel.
    pub protocol_rtt: Percentiles,
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
        let link = Link::start(id, to_worker, from_worker, move |e| {
            let _ = tx.send(e);
        })?;
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
                FromWorker::Malformed(e) => bail!("malformed frame from the worker: {e}"),
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
    let config = StoreConfig {
        symbols: 4,
        intervals: vec![Interval::M1],
        candles_per_series: 16,
    };
    let inst = Instance::start(instance, &config)?;
    let _ = tempfile::env::override_temp_dir(inst.runtime.dir());
    Ok(inst)
}

fn init(live: &mut Live, inst: &Instance, id: u32) -> Result<()> {
    let init = Init {
        instance: inst.runtime.instance().to_string(),
        generation: inst.store.generation(),
        worker_id: id,
    };
    match live.call(Message::Init(init))? {
        Message::Ready(_) => Ok(()),
        other => bail!("expected READY, got {other:?}"),
    }
}

/// `shmkline bench ping`.
pub fn run_ping(
    instance: &InstanceName,
    worker_bin: PathBuf,
    samples: usize,
) -> Result<PingReport> {
    let inst = setup(instance)?;
    let spawner = Spawner::start(worker_bin, instance.clone())?;
    let mut live = Live::start(&spawner, 0)?;
    init(&mut live, &inst, 0)?;
    let mut rtts = Vec::with_capacity(samples);
    for i in 0..samples + WARMUP {
        let started = Instant::now();
        match live.call(Message::Ping)? {
            Message::Pong(_) => {}
            other => bail!("expected PONG, got {other:?}"),
        }
        if i >= WARMUP {
            rtts.push(started.elapsed().as_nanos() as u64);
        }
    }
    live.call(Message::Cleanup)?;
    live.finish()?;
    drop(spawner);
    let protocol_rtt = Percentiles::of(&mut rtts).context("no samples")?;
    let raw_ipc_rtt = raw_ipc(samples)?;
    let p50_vs_raw = ratio(protocol_rtt.p50_ns as f64, raw_ipc_rtt.p50_ns as f64);
    drop(inst);
    Ok(PingReport {
        bench: "ping",
        protocol_rtt,
        raw_ipc_rtt,
        p50_vs_raw,
        targets: vec![Target::at_most("p50_vs_raw <= 1.5", p50_vs_raw, 1.5)],
    })
}

fn raw_ipc(samples: usize) -> Result<Percentiles> {
    let (server, name) = IpcOneShotServer::<Bootstrap>::new()?;
    let child = BenchChild::spawn(&["ipc-echo".into(), "--bootstrap".into(), name])?;
    let (_boot, channels) = server
        .accept()
        .map_err(|e| anyhow::anyhow!("accepting the echo child: {e:?}"))?;
    let Bootstrap::Channels {
        to_worker,
        from_worker,
    } = channels
    else {
        bail!("the echo child aborted")
    };
    let frame = [7u8; 16];
    let mut rtts = Vec::with_capacity(samples);
    for i in 0..samples + WARMUP {
        let started = Instant::now();
        to_worker.send(&frame)?;
        let echo = from_worker
            .recv()
            .map_err(|e| anyhow::anyhow!("echo: {e:?}"))?;
        if i >= WARMUP {
            rtts.push(started.elapsed().as_nanos() as u64);
        }
        anyhow::ensure!(echo.len() == frame.len(), "bad echo");
    }
    drop(to_worker);
    let _: serde_json::Value = child.finish()?;
    Percentiles::of(&mut rtts).context("no samples")
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
