//! The live Binance feed: every (symbol, interval) stream, split over as
//! many WebSocket connections as Binance's limits require, written into the
//! store by one sync thread the moment it arrives (in-progress candles as
//! updates, `x: true` ones as closes), each series backfilled over REST at
//! start, after its connection was lost, and where a close went missing.
//!
//! The rooms: `options` (what it is told), `health` (what it counts for
//! `status`), `conn` (a thread per connection: open, read, parse, replace
//! before the 24 h cut or at `serverShutdown`), `sync` (the one writer:
//! symbols checked against `exchangeInfo`, per-series backfill and repair),
//! `rest` (requests only as Binance's limits allow: weight budget, 429,
//! 418, used-weight header, server trouble).
//!
//! Why no closed candle is missed or duplicated: a series' backfill asks
//! for its newest candles only after its connection is open (so every later
//! event reaches us), events of a series being backfilled are stashed and
//! applied after its pages, and the writer drops what it already holds
//! (older: stale; same candle, closed: a repeat).
//!
//! Bounds: [`conn::MAX_CONNECTIONS`] connections, a [`MAX_MESSAGE`] message
//! limit, `max_queued_bytes` of events between the connection threads and
//! the sync thread (past it an event is dropped and its series backfilled
//! again), `sync::HELD` (256) events held per series during a repair or a
//! backfill, one HTTP agent keeping at most two idle connections, and a 64
//! Ki-sample latency ring. Nothing is kept per connection, so reconnecting
//! does not grow memory.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use protocol::Interval;

mod conn;
mod health;
mod options;
mod rest;
mod sync;

pub use conn::{MAX_CONNECTIONS, MAX_STREAMS, MAX_URL, OPENS_PER_WINDOW};
pub use health::{LATENCY_SAMPLES, LISTED, LiveHealth, Pause};
pub use options::{
    BINANCE_REST, BINANCE_WS, DEFAULT_QUEUED_BYTES, LiveOptions, MAX_MESSAGE, MAX_REST_BODY,
    REST_PAGE, backfill_for_ring,
};
pub use rest::{DEFAULT_WEIGHT_PER_MINUTE, EXCHANGE_WEIGHT_LIMIT, KLINES_WEIGHT};

use super::writer::FeedWriter;
use crate::instance::SharedStore;

impl LiveOptions {
    /// Checks the options, saying which flag to fix.
    pub fn check(&self) -> Result<()> {
        if self.symbols.is_empty() {
            bail!("--feed binance needs --symbols, e.g. --symbols btcusdt,ethusdt");
        }
        let groups = self.groups().len();
        if groups > MAX_CONNECTIONS {
            bail!(
                "{} streams ({} symbols x {} intervals) need {groups} connections; at most {MAX_CONNECTIONS} are opened: pass fewer --symbols or --intervals",
                self.symbols.len() * self.intervals.len(),
                self.symbols.len(),
                self.intervals.len()
            );
        }
        if !(1..=EXCHANGE_WEIGHT_LIMIT).contains(&self.rest_weight_per_minute) {
            bail!(
                "--rest-weight-per-minute {}: must be 1 to {EXCHANGE_WEIGHT_LIMIT} (the exchange's limit per IP)",
                self.rest_weight_per_minute
            );
        }
        if self.max_queued_bytes < conn::EVENT_BYTES {
            bail!("the live event queue must hold at least one event");
        }
        for (flag, url, schemes) in [
            ("WebSocket", &self.ws_url, ["ws://", "wss://"]),
            ("REST", &self.rest_url, ["http://", "https://"]),
        ] {
            if !schemes.iter().any(|s| url.starts_with(s)) {
                bail!(
                    "--endpoint: the {flag} URL {url:?} must start with {} or {}",
                    schemes[0],
                    schemes[1]
                );
            }
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            bail!("reconnect delays: the minimum must be above 0 and at most the maximum");
        }
        Ok(())
    }

    /// The connections the streams are split over.
    pub fn groups(&self) -> Vec<conn::Group> {
        let streams: Vec<conn::Stream> = self
            .symbols
            .iter()
            .flat_map(|s| self.intervals.iter().map(move |&i| (s.clone(), i)))
            .collect();
        conn::plan_groups(&self.ws_url, &streams)
    }
}

/// The running feed: its thread, stopped and joined on drop.
#[derive(Debug)]
pub struct LiveFeed {
    stop: Arc<AtomicBool>,
    health: Arc<LiveHealth>,
    thread: Option<JoinHandle<()>>,
}

impl LiveFeed {
    /// Registers every symbol's series in the store (so readers see them at
    /// once) and starts the feed thread.
    pub fn start(
        opts: LiveOptions,
        store: SharedStore,
        kept: &[Interval],
        tap: Option<crate::nats::candles::CandleTap>,
    ) -> Result<Self> {
        opts.check()?;
        if let Some(i) = opts.intervals.iter().find(|i| !kept.contains(i)) {
            bail!("interval {i} is not kept by the store (--intervals)");
        }
        let mut writer = FeedWriter::new(kept, &[]);
        if let Some(tap) = tap {
            writer.tap(tap);
        }
        {
            let mut s = store.lock();
            for symbol in &opts.symbols {
                writer.register(&mut *s, symbol)?;
            }
            s.publish();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let health = Arc::new(LiveHealth::default());
        health
            .planned
            .store(opts.groups().len() as u64, Ordering::Relaxed);
        let (tls, rest_tls) = match &opts.ca_file {
            None => (None, ureq::tls::TlsConfig::default()),
            Some(path) => trust_only(path)?,
        };
        let rest = rest::Rest::new(&opts, rest_tls, Arc::clone(&health));
        let shared = Arc::new(conn::Shared {
            opts: opts.clone(),
            tls,
            stop: Arc::clone(&stop),
            health: Arc::clone(&health),
            opener: conn::Opener::new(opts.opens_per_window),
            queued: std::sync::atomic::AtomicUsize::new(0),
            overflowed: std::sync::Mutex::new(std::collections::HashSet::new()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let seed = RandomState::new().hash_one(std::process::id());
        let sync = sync::Sync::new(
            opts,
            store,
            writer,
            rest,
            Arc::clone(&health),
            shared,
            rx,
            tx,
            seed,
        );
        let thread = std::thread::Builder::new()
            .name("live-feed".into())
            .spawn(move || sync.run())
            .context("starting the live feed thread")?;
        Ok(Self {
            stop,
            health,
            thread: Some(thread),
        })
    }

    /// The feed's counters.
    pub fn health(&self) -> &Arc<LiveHealth> {
        &self.health
    }

    /// Whether the thread ended (it only does when stopped, when it could
    /// not start (see [`LiveHealth::fatal`]), or by a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the threads (they notice within [`POLL`]) and joins them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the live feed thread panicked");
        }
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// TLS configurations (WebSocket, REST) trusting only the CA certificates in
/// `path`.
fn trust_only(
    path: &std::path::Path,
) -> Result<(Option<Arc<rustls::ClientConfig>>, ureq::tls::TlsConfig)> {
    trust_only_named(path, "--ca-file")
}

/// [`trust_only`], its errors naming `flag`; the HTTP half also serves the
/// webhook sinks (`--webhook-ca-file`).
pub fn trust_only_named(
    path: &std::path::Path,
    flag: &str,
) -> Result<(Option<Arc<rustls::ClientConfig>>, ureq::tls::TlsConfig)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    // Certificates: far under 1 MiB; a pipe is read, a device refused.
    let pem = crate::input::read_bounded(
        path,
        1 << 20,
        "certificate file",
        crate::input::Accept::FilesAndPipes,
        ": give a PEM file of CA certificates",
    )
    .map_err(|e| anyhow::anyhow!("{flag} {}: {}", path.display(), e.cause()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no certificate in it", path.display());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots.add(cert.clone()).with_context(|| {
            format!("{flag} {}: a certificate rustls cannot use", path.display())
        })?;
    }
    let ws = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let rest_roots: Vec<ureq::tls::Certificate<'static>> = certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let rest = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&rest_roots))
        .build();
    Ok((Some(Arc::new(ws)), rest))
}

#[cfg(test)]
mod tests;
