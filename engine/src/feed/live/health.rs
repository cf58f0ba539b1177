//! What the live feed counts for `status`: written by its threads, read by
//! the coordinator at any time (atomics, and small mutexes held for a copy).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use protocol::control::{LiveFigures, SeriesSummary, WriterCounters};
use protocol::samples::Samples;

use crate::kline::BadLine;
use crate::locked::lock;

/// Latency samples kept for `status` and `bench feed`.
pub const LATENCY_SAMPLES: usize = 1 << 16;

/// Why REST is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// A 429: too many requests; `Retry-After` is obeyed.
    RateLimited,
    /// A 418: the IP is banned for the `Retry-After` it names.
    Banned,
    /// The exchange counts its weight limit nearly used for this minute.
    WeightCeiling,
    /// Server errors or timeouts: backing off.
    ServerTrouble,
    /// No connection to the exchange could be made (its name not resolved,
    /// the connection refused or unreachable, the TLS handshake failed):
    /// backing off.
    NoConnection,
    /// This client's own budget (`--rest-weight-per-minute`).
    Budget,
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RateLimited => "rate limited (HTTP 429): waiting out Retry-After",
            Self::Banned => "IP banned by the exchange (HTTP 418): no request until the ban ends",
            Self::WeightCeiling => {
                "the exchange's used weight is near its limit: waiting for the next minute"
            }
            Self::ServerTrouble => "server errors or timeouts: backing off",
            Self::NoConnection => {
                "no connection to the exchange could be made (name not resolved, refused, unreachable, TLS handshake failed): backing off"
            }
            Self::Budget => "the --rest-weight-per-minute budget is spent",
        })
    }
}

/// Series listed by name in `status` (failing ones, ones with gaps), at most.
pub const LISTED: usize = 32;

/// Shared counters: written by the feed thread, read by `status`.
#[derive(Debug, Default)]
pub struct LiveHealth {
    /// Connections open now.
    pub(super) connected: AtomicU64,
    pub(super) connections: AtomicU64,
    pub(super) replacements: AtomicU64,
    pub(super) shutdown_notices: AtomicU64,
    pub(super) overflowed: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) bans: AtomicU64,
    pub(super) server_errors: AtomicU64,
    /// Connections (WebSocket) that could not be opened and REST requests
    /// that could not reach the host.
    pub(super) connect_errors: AtomicU64,
    /// The last of those, saying where.
    pub(super) connect_error: Mutex<Option<String>>,
    pub(super) used_weight: AtomicU64,
    pub(super) peak_used_weight: AtomicU64,
    /// Until when (wall ms) and why REST was last paused.
    pub(super) rest_pause: Mutex<Option<(u64, Pause)>>,
    pub(super) missing_closes: AtomicU64,
    pub(super) repaired_closes: AtomicU64,
    pub(super) late_closes: AtomicU64,
    pub(super) provisional_closes: AtomicU64,
    pub(super) series: Mutex<SeriesSummary>,
    /// Why the feed could not start (an unknown symbol).
    pub(super) fatal: Mutex<Option<String>>,
    pub(super) reconnects: AtomicU64,
    pub(super) last_message_ms: AtomicU64,
    pub(super) messages: AtomicU64,
    pub(super) bad_messages: AtomicU64,
    pub(super) stale: AtomicU64,
    pub(super) deferred: AtomicU64,
    pub(super) backfilled: AtomicU64,
    pub(super) backfill_failures: AtomicU64,
    pub(super) rest_requests: AtomicU64,
    pub(super) counters: Mutex<WriterCounters>,
    /// The last [`LATENCY_SAMPLES`] message-received-to-published times, ns.
    pub(super) latency: Mutex<Option<Samples>>,
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) receipts: Mutex<Vec<(i64, Instant)>>,
    pub(super) planned: AtomicU64,
}

impl LiveHealth {
    /// Whether every series is live: none behind, none being repaired.
    /// Cheap (one lock, no copy), for the coordinator's loop; `status`
    /// sorts latency samples and is for the control socket only.
    pub fn all_live(&self) -> bool {
        let series = lock(&self.series);
        series.live > 0 && series.behind == 0 && series.repairing == 0
    }

    /// A snapshot for `status`.
    pub fn status(&self) -> LiveFigures {
        let last = self.last_message_ms.load(Ordering::Relaxed);
        let lat = lock(&self.latency).clone();
        let q = |p: f64| lat.as_ref().and_then(|s| s.quantile(p));
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now_ms = protocol::clock::now_ms() as u64;
        let pause = (*lock(&self.rest_pause)).filter(|(until, _)| *until > now_ms);
        LiveFigures {
            connected: g(&self.connected),
            connections_planned: self.planned.load(Ordering::Relaxed) as usize,
            connections: g(&self.connections),
            replacements: g(&self.replacements),
            shutdown_notices: g(&self.shutdown_notices),
            overflowed: g(&self.overflowed),
            rate_limited: g(&self.rate_limited),
            bans: g(&self.bans),
            server_errors: g(&self.server_errors),
            never_connected: g(&self.connections) == 0,
            connect_errors: g(&self.connect_errors),
            connect_error: lock(&self.connect_error).clone(),
            used_weight: g(&self.used_weight),
            peak_used_weight: g(&self.peak_used_weight),
            rest_paused_ms: pause.map(|(until, _)| until - now_ms),
            rest_pause: pause.map(|(_, why)| why.to_string()),
            missing_closes: g(&self.missing_closes),
            repaired_closes: g(&self.repaired_closes),
            late_closes: g(&self.late_closes),
            provisional_closes: g(&self.provisional_closes),
            series: lock(&self.series).clone(),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_message_age_ms: (last > 0)
                .then(|| (protocol::clock::now_ms() as u64).saturating_sub(last)),
            messages: self.messages.load(Ordering::Relaxed),
            bad_messages: self.bad_messages.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            backfilled: self.backfilled.load(Ordering::Relaxed),
            rest_requests: self.rest_requests.load(Ordering::Relaxed),
            backfill_failures: self.backfill_failures.load(Ordering::Relaxed),
            counters: *lock(&self.counters),
            latency_p50_ns: q(0.5),
            latency_p99_ns: q(0.99),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Every latency sample kept (for `bench feed`).
    pub fn latency_samples(&self) -> Vec<u32> {
        lock(&self.latency)
            .as_ref()
            .map_or_else(Vec::new, |s| s.values().to_vec())
    }

    /// With [`LiveOptions::trace`]: when each streamed candle was received.
    pub fn receipts(&self) -> Vec<(i64, Instant)> {
        lock(&self.receipts).clone()
    }

    pub(super) fn touch(&self) {
        self.last_message_ms
            .store(protocol::clock::now_ms() as u64, Ordering::Relaxed);
    }

    pub(super) fn error(&self, e: String) {
        *lock(&self.last_error) = Some(e);
    }

    /// Why the feed could not start, if it could not.
    pub fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    /// A connection attempt that never reached the exchange (`what`: the
    /// WebSocket or REST); `error` names the host.
    pub(super) fn connect_failed(&self, what: &str, error: &str) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.connect_error) = Some(format!("{what}: {error}"));
    }

    /// If the feed never delivered anything, no message on a connection
    /// (not even a ping) and no candle over REST: why, for a run that ends
    /// so to fail with. (A run stopped right after its start-up backfill
    /// may have had no message yet: its candles count.)
    pub fn never_delivered(&self) -> Option<String> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        if g(&self.messages) > 0 || g(&self.backfilled) > 0 {
            return None;
        }
        let attempts = self.connect_errors.load(Ordering::Relaxed);
        let last = lock(&self.connect_error)
            .clone()
            .or_else(|| lock(&self.last_error).clone())
            .unwrap_or_else(|| "no attempt failed yet".into());
        Some(if self.connections.load(Ordering::Relaxed) == 0 {
            format!(
                "the live feed never connected to the exchange ({attempts} connection attempts failed, WebSocket and REST; the last: {last})"
            )
        } else {
            format!(
                "the live feed connected but never delivered a message, not even a ping (last error: {last})"
            )
        })
    }

    pub(super) fn bad(&self, reason: &BadLine) {
        let n = self.bad_messages.fetch_add(1, Ordering::Relaxed) + 1;
        // Every one counted; the log is thinned past the first hundred.
        if n <= 100 || n.is_power_of_two() {
            tracing::warn!(%reason, bad_messages = n, "message skipped");
        }
    }

    pub(super) fn used_weight(&self, w: u32) {
        self.used_weight.store(u64::from(w), Ordering::Relaxed);
        self.peak_used_weight
            .fetch_max(u64::from(w), Ordering::Relaxed);
    }

    pub(super) fn pause(&self, until: Instant, why: Pause) {
        let ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        match why {
            Pause::RateLimited => {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    wait_ms = ms,
                    "REST rate limited (429): no request until Retry-After has passed"
                );
            }
            Pause::Banned => {
                self.bans.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    ban_ms = ms,
                    "the exchange banned this IP (418): REST stopped until the ban ends"
                );
            }
            Pause::WeightCeiling => {
                tracing::info!(
                    wait_ms = ms,
                    "the exchange counts its weight limit nearly used: waiting for the next minute"
                );
            }
            Pause::ServerTrouble => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(wait_ms = ms, "REST server error or timeout: backing off");
            }
            // Counted by `connect_failed`, with the error.
            Pause::NoConnection => {
                let error = lock(&self.connect_error).clone().unwrap_or_default();
                tracing::warn!(wait_ms = ms, %error, "REST could not connect to the exchange: backing off");
            }
            Pause::Budget => {}
        }
        *lock(&self.rest_pause) = Some((protocol::clock::now_ms() as u64 + ms, why));
    }
}
