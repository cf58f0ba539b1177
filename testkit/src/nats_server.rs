//! A real `nats-server` with JetStream on a free loopback port, its store
//! in a temporary directory, killed and reaped on drop (for `bench nats`,
//! the tests and the demo's checks); and a reader of what a stream holds.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;

/// The server binary: `$NATS_SERVER_BIN`, else `nats-server` on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nats-server"))
                    .find(|p| p.is_file())
            })
        })
}

/// A running server; its store outlives restarts.
pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `binary` with JetStream on a free loopback port.
    pub fn start(binary: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("a free loopback port")?
            .port();
        let mut server = Self {
            binary: binary.to_owned(),
            child: None,
            port,
            store: tempfile::tempdir().context("a store directory")?,
        };
        server.up()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) -> Result<()> {
        let log = self.store.path().join("server.log");
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready once it accepts connections and says JetStream is up.
        while !(TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server is ready")))
        {
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.up()
    }

    /// Publishes `payload` on `subject` to JetStream, acknowledged.
    pub fn publish(&self, subject: &str, payload: Vec<u8>) -> Result<()> {
        let url = self.url();
        let subject = subject.to_owned();
        block_on(async move {
            let client = async_nats::connect(url).await?;
            let js = async_nats::jetstream::new(client);
            js.publish(subject, payload.into()).await?.await?;
            Ok::<_, anyhow::Error>(())
        })?
    }

    /// Every message `stream` holds: (subject, `Nats-Msg-Id`, payload).
    pub fn messages(&self, stream: &str) -> Result<Vec<(String, Option<String>, String)>> {
        let url = self.url();
        let stream = stream.to_owned();
        block_on(async move {
            let client = async_nats::connect(url).await?;
            let js = async_nats::jetstream::new(client);
            let mut s = js.get_stream(&stream).await?;
            let held = s.info().await?.state.messages;
            let mut out = Vec::new();
            if held == 0 {
                return Ok::<_, anyhow::Error>(out);
            }
            let consumer = s
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                .await?;
            let mut messages = consumer.messages().await?;
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_secs(5), messages.next()).await
            {
                let m = m?;
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned());
                out.push((
                    m.subject.to_string(),
                    id,
                    String::from_utf8_lossy(&m.payload).into_owned(),
                ));
                if out.len() as u64 >= held {
                    break;
                }
            }
            Ok(out)
        })?
    }
}

/// Runs `f` on a runtime of its own, to the end.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime")?
        .block_on(f))
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
