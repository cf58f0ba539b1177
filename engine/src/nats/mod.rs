//! NATS JetStream between hosts: the address (`nats://HOST:PORT[/PREFIX]`),
//! the streams' layout and settings, the connection (on a small runtime of
//! its own, so the coordinator's loop never waits on the network) and its
//! health, and symbol shards (`--shard K/N`).
//!
//! Subjects: `<prefix>.signals.<SYMBOL>.<interval>.<trader>` and
//! `<prefix>.candles.<SYMBOL>.<interval>`, so a consumer filters by symbol
//! (`shmkline.signals.BTCUSDT.>`), interval or trader
//! (`shmkline.signals.*.*.rsi_low`). A `.` inside a trader id (which
//! allows it; a symbol never has one) is written `%2E`, which no id can
//! contain.

pub mod candles;
pub mod shard;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use protocol::control::NatsConnection;

use crate::locked::lock;

pub use shard::Shard;

/// The prefix of every subject unless the address names one.
pub const DEFAULT_PREFIX: &str = "shmkline";
/// How long the broker remembers a `Nats-Msg-Id` to drop a repeat, by
/// default (`--nats-duplicate-window`). Repeats after a restart come within
/// a save interval of the sink's position; the position itself covers
/// longer outages.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a stream keeps messages by default (`--nats-max-age`): a week.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A JetStream address: `nats://HOST:PORT[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsAddr {
    /// `HOST:PORT`.
    pub server: String,
    /// The first tokens of every subject (`shmkline` unless given).
    pub prefix: String,
}

impl std::str::FromStr for NatsAddr {
    type Err = String;

    fn from_str(given: &str) -> Result<Self, String> {
        // Echoed in errors as it may be shown.
        let addr = crate::redact::url(given);
        let rest = given
            .strip_prefix("nats://")
            .ok_or_else(|| format!("{addr:?}: a NATS address is nats://HOST:PORT[/PREFIX]"))?;
        let (server, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let port = server
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(port))) if !host.is_empty() && port > 0 => {}
            _ => {
                return Err(format!(
                    "{addr:?}: the server is HOST:PORT (a port from 1 to 65535), as in nats://127.0.0.1:4222"
                ));
            }
        }
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX
        } else {
            prefix
        };
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !prefix.split('.').all(token_ok) {
            return Err(format!(
                "{addr:?}: the subject prefix {prefix:?} is dot-separated tokens of A-Z, a-z, 0-9, '_' and '-'"
            ));
        }
        Ok(Self {
            server: server.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

/// As it may be shown: credentials in the server hidden (`user:***@`).
impl std::fmt::Display for NatsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::redact::url(&self.key()))
    }
}

impl NatsAddr {
    /// The whole address, credentials included: what keys a position in
    /// the state directory. Never shown.
    pub fn key(&self) -> String {
        format!("nats://{}/{}", self.server, self.prefix)
    }

    /// The server as it may be shown (credentials hidden).
    pub fn shown_server(&self) -> String {
        crate::redact::url(&format!("nats://{}", self.server))
            .trim_start_matches("nats://")
            .to_owned()
    }

    /// The default name of the stream of `what` (`SIGNALS`, `CANDLES`):
    /// the prefix upper-cased, `.` and `-` as `_`, then `_` and `what`.
    pub fn stream_name(&self, what: &str) -> String {
        let base: String = self
            .prefix
            .chars()
            .map(|c| match c {
                '.' | '-' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect();
        format!("{base}_{what}")
    }

    /// The subjects of `what` (`signals`, `candles`) under the prefix.
    pub fn subjects(&self, what: &str) -> String {
        format!("{}.{what}.>", self.prefix)
    }
}

/// A symbol or trader id as one subject token: `.` as `%2E`.
pub fn token(s: &str) -> String {
    s.replace('.', "%2E")
}

/// What the streams are made with (and the connection waits for).
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// How long to wait for the broker at start (`--nats-wait`); zero fails at once.
    pub wait: Duration,
    /// `Nats-Msg-Id` memory of a stream this engine creates.
    pub duplicate_window: Duration,
    /// How long a stream this engine creates keeps messages (zero: no limit).
    pub max_age: Duration,
    /// Publishes awaiting their acknowledgement, at most (`--nats-in-flight`).
    pub in_flight: usize,
    /// The signal stream's name (`--nats-signal-stream`), else from the prefix.
    pub signal_stream: Option<String>,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            wait: Duration::ZERO,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: DEFAULT_MAX_AGE,
            in_flight: DEFAULT_IN_FLIGHT,
            signal_stream: None,
        }
    }
}

/// Publishes awaiting their acknowledgement by default.
pub const DEFAULT_IN_FLIGHT: usize = 256;
/// The most (`--nats-in-flight`): async-nats holds at most 5,000
/// unacknowledged publishes and waits, without a timeout, for a free one.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Why NATS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The runtime thread could not start.
    #[error("starting the NATS client's thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// No broker answered.
    #[error(
        "no NATS server at {server} ({why}): start one with JetStream (nats-server -js), or pass --nats-wait SECONDS to wait for it"
    )]
    Unreachable {
        /// `HOST:PORT`.
        server: String,
        /// The client's error.
        why: String,
    },
    /// The stream could not be found or made as needed.
    #[error("JetStream stream {stream} on {server}: {why}")]
    Stream {
        /// `HOST:PORT`.
        server: String,
        /// The stream's name.
        stream: String,
        /// What went wrong.
        why: String,
    },
}

/// The connection's health, as `status` and the log show it.
#[derive(Debug, Default)]
pub struct NatsHealth {
    connected: AtomicBool,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    slow_consumer: AtomicU64,
    last_event: Mutex<Option<String>>,
}

impl NatsHealth {
    fn event(&self, event: async_nats::Event, server: &str) {
        match &event {
            async_nats::Event::Connected => {
                if self.connected.swap(true, Ordering::AcqRel) {
                    return;
                }
                if self.disconnects.load(Ordering::Acquire) > 0 {
                    self.reconnects.fetch_add(1, Ordering::AcqRel);
                    tracing::info!(server, "NATS connection back");
                }
            }
            async_nats::Event::Disconnected => {
                self.connected.store(false, Ordering::Release);
                self.disconnects.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(
                    server,
                    "NATS connection lost: reconnecting (publishes wait and are retried)"
                );
            }
            async_nats::Event::SlowConsumer(_) => {
                self.slow_consumer.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(
                    server,
                    "NATS: this client is a slow consumer (the server dropped messages to it; JetStream redelivers)"
                );
            }
            other => tracing::info!(server, event = %other, "NATS event"),
        }
        *lock(&self.last_event) = Some(event.to_string());
    }

    /// Whether the connection is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// For `status`.
    pub fn status(&self) -> NatsConnection {
        NatsConnection {
            connected: self.connected(),
            disconnects: self.disconnects.load(Ordering::Acquire),
            reconnects: self.reconnects.load(Ordering::Acquire),
            slow_consumer: self.slow_consumer.load(Ordering::Acquire),
            last_event: lock(&self.last_event).clone(),
        }
    }
}

/// A connection to one broker with its runtime: one worker thread, so the
/// client's reading, pings and reconnects go on between our calls.
pub struct Nats {
    runtime: tokio::runtime::Runtime,
    /// The client.
    pub client: async_nats::Client,
    /// Its JetStream context.
    pub js: jetstream::Context,
    /// Its health.
    pub health: Arc<NatsHealth>,
    /// Where it is.
    pub addr: NatsAddr,
}

impl Nats {
    /// Connects to `addr`, waiting up to `settings.wait` for it with backoff.
    pub fn connect(addr: &NatsAddr, settings: &NatsSettings) -> Result<Self, NatsError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nats")
            .enable_all()
            .build()
            .map_err(NatsError::Runtime)?;
        let health = Arc::new(NatsHealth::default());
        // The JetStream context starts timers: it is made on the runtime.
        let _on_runtime = runtime.enter();
        let client = runtime.block_on(connect(addr, settings.wait, health.clone()))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        Ok(Self {
            runtime,
            client,
            js,
            health,
            addr: addr.clone(),
        })
    }

    /// Runs `f` on the client's runtime in the background.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(f)
    }

    /// Runs `f` on the client's runtime until done.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The stream `name` on `subjects`, made with `settings` if missing; an
    /// existing one must take `subjects` (its other settings are its own).
    pub fn stream(
        &self,
        name: &str,
        subjects: &str,
        settings: &NatsSettings,
    ) -> Result<jetstream::stream::Stream, NatsError> {
        let err = |why: String| NatsError::Stream {
            server: self.addr.shown_server(),
            stream: name.to_owned(),
            why,
        };
        let config = jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            duplicate_window: settings.duplicate_window,
            max_age: settings.max_age,
            storage: jetstream::stream::StorageType::File,
            retention: jetstream::stream::RetentionPolicy::Limits,
            ..Default::default()
        };
        self.block_on(async {
            let mut stream = self
                .js
                .get_or_create_stream(config)
                .await
                .map_err(|e| err(e.to_string()))?;
            let info = stream.info().await.map_err(|e| err(e.to_string()))?;
            if !info.config.subjects.iter().any(|s| s == subjects) {
                return Err(err(format!(
                    "it exists on subjects {:?}, not {subjects:?}: name another stream or fix its subjects",
                    info.config.subjects
                )));
            }
            Ok(stream)
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        // What was published is flushed; the runtime's thread is joined when
        // it drops after this.
        let client = self.client.clone();
        let _ = self.runtime.block_on(async move {
            tokio::time::timeout(Duration::from_secs(2), client.flush()).await
        });
    }
}

/// Connects, retrying with backoff until `wait` has passed.
async fn connect(
    addr: &NatsAddr,
    wait: Duration,
    health: Arc<NatsHealth>,
) -> Result<async_nats::Client, NatsError> {
    let until = Instant::now() + wait;
    let mut pause = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        let events = health.clone();
        let server = addr.shown_server();
        let options = async_nats::ConnectOptions::new()
            .name(format!("shmkline {}", std::process::id()))
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .event_callback(move |event| {
                let events = events.clone();
                let server = server.clone();
                async move { events.event(event, &server) }
            });
        match options.connect(addr.server.as_str()).await {
            Ok(client) => {
                health.connected.store(true, Ordering::Release);
                return Ok(client);
            }
            Err(e) if Instant::now() + pause < until => {
                attempt += 1;
                if attempt.is_power_of_two() {
                    tracing::warn!(server = %addr.shown_server(), error = %e, attempt,
                        "no NATS server yet: waiting (--nats-wait)");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(NatsError::Unreachable {
                    server: addr.shown_server(),
                    why: e.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_prefix_or_are_named_bad() {
        let a: NatsAddr = "nats://127.0.0.1:4222".parse().expect("plain");
        assert_eq!(a.server, "127.0.0.1:4222");
        assert_eq!(a.prefix, "shmkline");
        assert_eq!(a.stream_name("SIGNALS"), "SHMKLINE_SIGNALS");
        assert_eq!(a.subjects("signals"), "shmkline.signals.>");
        let b: NatsAddr = "nats://h:1/acme.desk-2/".parse().expect("prefix");
        assert_eq!(b.prefix, "acme.desk-2");
        assert_eq!(b.stream_name("CANDLES"), "ACME_DESK_2_CANDLES");
        assert_eq!(b.to_string(), "nats://h:1/acme.desk-2");
        for bad in [
            "127.0.0.1:4222",
            "nats://host",
            "nats://host:0",
            "nats://host:99999",
            "nats://:4222",
            "nats://h:1/a..b",
            "nats://h:1/a b",
            "nats://h:1/a.>",
        ] {
            let e = bad.parse::<NatsAddr>().expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn dots_in_tokens_are_escaped() {
        assert_eq!(token("BTCUSDT"), "BTCUSDT");
        assert_eq!(token("a.b"), "a%2Eb");
    }

    #[test]
    fn an_absent_broker_is_named_with_the_flag_that_waits() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: NatsAddr = format!("nats://127.0.0.1:{port}").parse().expect("addr");
        let e = Nats::connect(&addr, &NatsSettings::default())
            .err()
            .expect("nobody listens");
        let e = e.to_string();
        assert!(e.contains(&addr.server) && e.contains("--nats-wait"), "{e}");
    }
}
