//! Spawning workers, from one long-lived thread.
//!
//! Why a thread of its own: PR_SET_PDEATHSIG fires when the *thread* that
//! forked the child exits, so workers must be forked by a thread that lives as
//! long as the coordinator. Why one spawn at a time: the fd `accept()` returns
//! is not close-on-exec, so it must be dropped before the next fork or the
//! next worker inherits it. Each spawn runs the whole handshake before the
//! next begins.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use protocol::InstanceName;
use protocol::bootstrap::Bootstrap;

use crate::process::kill_and_reap;

/// How long a spawned worker has to connect to its bootstrap server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker process with its channel ends, handshake done.
pub struct Spawned {
    /// The process; the caller reaps it.
    pub child: Child,
    /// Requests to the worker.
    pub to_worker: IpcBytesSender,
    /// Answers and signals from the worker.
    pub from_worker: IpcBytesReceiver,
}

/// Called on the spawner thread with the outcome of one spawn.
pub type Deliver = Box<dyn FnOnce(Result<Spawned>) + Send>;

struct Request {
    worker_id: u32,
    deliver: Deliver,
}

/// Handle to the spawner thread. Dropping it stops the thread (after any
/// spawn in progress).
pub struct Spawner {
    requests: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread for workers of `instance` run from `worker_bin`.
    pub fn start(worker_bin: PathBuf, instance: InstanceName) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || serve(&worker_bin, &instance, rx))
            .context("starting the spawner thread")?;
        Ok(Self {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// Spawns worker `worker_id` and completes its handshake, waiting for it.
    pub fn spawn(&self, worker_id: u32) -> Result<Spawned> {
        let (reply, answer) = mpsc::channel();
        self.request(
            worker_id,
            Box::new(move |result| {
                let _ = reply.send(result);
            }),
        )?;
        answer
            .recv()
            .map_err(|_| anyhow!("the spawner thread is gone"))?
    }

    /// Asks for worker `worker_id`; `deliver` gets the outcome on the spawner
    /// thread, so the caller never waits on a handshake.
    pub fn request(&self, worker_id: u32, deliver: Deliver) -> Result<()> {
        self.requests
            .as_ref()
            .context("spawner stopped")?
            .send(Request { worker_id, deliver })
            .map_err(|_| anyhow!("the spawner thread is gone"))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(worker_bin: &PathBuf, instance: &InstanceName, requests: Receiver<Request>) {
    for req in requests {
        (req.deliver)(spawn_one(worker_bin, instance, req.worker_id));
    }
}

fn spawn_one(worker_bin: &PathBuf, instance: &InstanceName, worker_id: u32) -> Result<Spawned> {
    let (server, name) =
        IpcOneShotServer::<Bootstrap>::new().context("creating the bootstrap server")?;
    // Workers log as the coordinator does (`--log-format`, `--log-level`).
    let logging = protocol::exit::log_settings();
    let mut child = Command::new(worker_bin)
        .env(protocol::exit::LOG_FORMAT_ENV, logging.format.to_string())
        .env(protocol::exit::LOG_ENV, &logging.filter)
        .args([
            "--instance",
            instance.as_str(),
            "--bootstrap",
            &name,
            "--worker-id",
            &worker_id.to_string(),
        ])
        .args(["--coordinator-pid", &std::process::id().to_string()])
        // Its own process group: a Ctrl-C in the shell reaches the coordinator
        // only, which then shuts the workers down in order.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting worker {worker_id} from {}", worker_bin.display()))?;
    // accept() has no timeout: run it on a thread we can unblock.
    let (done, accepted) = mpsc::channel();
    let acceptor = std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || {
            let result = server.accept().map(|(bootstrap_rx, message)| {
                // The accepted fd is not close-on-exec: drop it now.
                drop(bootstrap_rx);
                message
            });
            let _ = done.send(result);
        })
        .context("starting the accept thread")?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let outcome = loop {
        match accepted.recv_timeout(Duration::from_millis(5)) {
            Ok(result) => break Some(result),
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            // Unblock our own accept() and clean up.
            if let Ok(sender) = IpcSender::<Bootstrap>::connect(name.clone()) {
                let _ = sender.send(Bootstrap::Abort);
            }
            // Bounded: if even our own connect failed, the accept thread is
            // left blocked (detached) rather than blocking every later spawn.
            if accepted.recv_timeout(Duration::from_secs(1)).is_ok() {
                let _ = acceptor.join();
            }
            let status = kill_and_reap(&mut child);
            let status = status.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
            match exited {
                Some(_) => bail!("worker {worker_id} exited before connecting ({status})"),
                None => bail!(
                    "worker {worker_id} did not connect within {CONNECT_TIMEOUT:?} (killed: {status})"
                ),
            }
        }
    };
    let _ = acceptor.join();
    match outcome {
        Some(Ok(Bootstrap::Channels {
            to_worker,
            from_worker,
        })) => Ok(Spawned {
            child,
            to_worker,
            from_worker,
        }),
        other => {
            kill_and_reap(&mut child);
            bail!(
                "worker {worker_id} handshake failed: {:?}",
                other.map(|r| r.map(|_| ()))
            )
        }
    }
}
