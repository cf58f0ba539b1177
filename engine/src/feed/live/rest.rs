//! The live feed's REST client: `/api/v3/klines` and `/api/v3/exchangeInfo`
//! asked only when Binance's limits allow, every answer classified.
//!
//! Binance bans an IP (418, two minutes to three days) that keeps asking
//! after a 429, so the [`Gate`] is shut, for everyone, by: a 429 (for its
//! `Retry-After`, longer after repeated ones), a 418 (for the ban's
//! length), the exchange's own count of used weight
//! (`X-MBX-USED-WEIGHT-1M`) near its limit (until the minute turns), and,
//! for a capped backoff, server errors or timeouts and a connection that
//! could not be made (a name that does not resolve, a connection refused,
//! a TLS handshake refused: counted apart, as connect errors, since no
//! server was ever asked). Below that, a
//! token bucket spends at most `--rest-weight-per-minute`. A request the
//! gate refuses is never sent: the caller gets [`RestError::Paused`] and
//! comes back later.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protocol::{Interval, SymbolName};
use serde::Deserialize;

use super::super::binance;
use super::health::{LiveHealth, Pause};
use super::options::{LiveOptions, MAX_REST_BODY};
use crate::kline::Kline;

/// Weight of one `/api/v3/klines` request (any limit up to 1,000).
pub const KLINES_WEIGHT: u32 = 2;
/// Weight of `/api/v3/exchangeInfo` for every symbol.
pub const EXCHANGE_INFO_WEIGHT: u32 = 20;
/// Request weight Binance gives an IP per minute.
pub const EXCHANGE_WEIGHT_LIMIT: u32 = 6_000;
/// Default request weight per minute this client allows itself: 40% of the
/// exchange's, leaving room for whatever else shares the address.
pub const DEFAULT_WEIGHT_PER_MINUTE: u32 = 2_400;
/// The gate shuts when the exchange counts this share of its limit used.
const USED_WEIGHT_CEILING: f64 = 0.9;
/// Largest `exchangeInfo` answer read (every symbol is a few MiB).
const MAX_INFO_BODY: u64 = 64 << 20;
/// Pauses after server errors and timeouts: doubled per failure from the
/// first to the last, reset by an answer.
const SERVER_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));
/// Extra pause after each 429 in a row, doubled, on top of `Retry-After`.
const RATE_LIMIT_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
/// When a 429 or 418 comes without `Retry-After` (Binance always sends it).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
const DEFAULT_BAN: Duration = Duration::from_secs(120);

/// Why a request gave no rows.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RestError {
    /// Not sent: REST is paused until then.
    #[error("REST paused for {}ms: {why}", until.saturating_duration_since(Instant::now()).as_millis())]
    Paused {
        /// When a request may go.
        until: Instant,
        /// Why.
        why: Pause,
    },
    /// Sent and answered 429, 418, 5xx or not at all: the gate is paused;
    /// the request was fine and is to be made again.
    #[error("{0}")]
    Exchange(String),
    /// The exchange refused this request (4xx other than 429 and 418: an
    /// unknown symbol, a bad parameter), or answered something that is not
    /// what it documents: this request's fault, retrying soon will not help.
    #[error("{0}")]
    Refused(String),
}

impl RestError {
    /// Whether the request itself is to blame (not the exchange or the
    /// network): its series is isolated and retried on its own schedule.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

/// A token bucket of request weight, full at start.
#[derive(Debug)]
pub struct Budget {
    per_minute: u32,
    tokens: f64,
    at: Instant,
}

impl Budget {
    /// A full bucket of `per_minute` weight, refilled at that rate.
    pub fn new(per_minute: u32, now: Instant) -> Self {
        Self {
            per_minute,
            tokens: f64::from(per_minute),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_second = f64::from(self.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(f64::from(self.per_minute));
        self.at = now;
    }

    /// How long until the bucket holds `weight` (zero: it does).
    pub fn wait(&mut self, weight: u32, now: Instant) -> Duration {
        self.refill(now);
        let missing = f64::from(weight) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing * 60.0 / f64::from(self.per_minute))
        }
    }

    /// Takes `weight` if the bucket holds it (None); else how long until it will.
    pub fn take(&mut self, weight: u32, now: Instant) -> Option<Duration> {
        let wait = self.wait(weight, now);
        if wait.is_zero() {
            self.tokens -= f64::from(weight);
            None
        } else {
            Some(wait)
        }
    }
}

/// Doubles `current` within `(first, last)`.
fn backoff(current: Duration, (first, last): (Duration, Duration)) -> Duration {
    if current.is_zero() {
        first
    } else {
        (current * 2).min(last)
    }
}

/// Whether (and until when) a request may be sent.
#[derive(Debug)]
pub struct Gate {
    budget: Budget,
    paused: Option<(Instant, Pause)>,
    server_backoff: Duration,
    rate_limit_backoff: Duration,
}

/// What an answer said, for the gate.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// HTTP status; `None`: no answer (timeout, connection refused).
    pub status: Option<u16>,
    /// With no answer: no connection could be made at all (see
    /// [`no_connection`]), rather than a server failing to answer in time.
    pub no_connection: bool,
    /// `Retry-After`, seconds.
    pub retry_after: Option<u64>,
    /// `X-MBX-USED-WEIGHT-1M`.
    pub used_weight: Option<u32>,
    /// Milliseconds into the current wall-clock minute (the exchange's
    /// weight window).
    pub minute_ms: u64,
}

impl Gate {
    /// A gate spending at most `per_minute` weight.
    pub fn new(per_minute: u32, now: Instant) -> Self {
        Self {
            budget: Budget::new(per_minute, now),
            paused: None,
            server_backoff: Duration::ZERO,
            rate_limit_backoff: Duration::ZERO,
        }
    }

    /// The pause in force at `now`, if any.
    pub fn paused(&self, now: Instant) -> Option<(Instant, Pause)> {
        self.paused.filter(|(until, _)| *until > now)
    }

    /// When a request of `weight` may go (`now` or later), and why not sooner.
    pub fn next_slot(&mut self, weight: u32, now: Instant) -> (Instant, Option<Pause>) {
        if let Some((until, why)) = self.paused(now) {
            return (until, Some(why));
        }
        match self.budget.wait(weight, now) {
            w if w.is_zero() => (now, None),
            w => (now + w, Some(Pause::Budget)),
        }
    }

    /// Takes `weight` for a request now, or says until when to wait.
    pub fn admit(&mut self, weight: u32, now: Instant) -> Result<(), (Instant, Pause)> {
        if let Some(p) = self.paused(now) {
            return Err(p);
        }
        match self.budget.take(weight, now) {
            None => Ok(()),
            Some(wait) => Err((now + wait, Pause::Budget)),
        }
    }

    /// Learns from an answer; returns the pause it started, if any.
    pub fn learn(&mut self, a: Answer, now: Instant) -> Option<(Instant, Pause)> {
        let pause = match a.status {
            Some(429) => {
                self.rate_limit_backoff = backoff(self.rate_limit_backoff, RATE_LIMIT_BACKOFF);
                let told = a
                    .retry_after
                    .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
                // Repeated 429s: Retry-After is the least to wait.
                let extra = if self.rate_limit_backoff > RATE_LIMIT_BACKOFF.0 {
                    self.rate_limit_backoff
                } else {
                    Duration::ZERO
                };
                Some((now + told + extra, Pause::RateLimited))
            }
            Some(418) => Some((
                now + a.retry_after.map_or(DEFAULT_BAN, Duration::from_secs),
                Pause::Banned,
            )),
            Some(s) if s >= 500 => {
                self.server_backoff = backoff(self.server_backoff, SERVER_BACKOFF);
                Some((now + self.server_backoff, Pause::ServerTrouble))
            }
            None => {
                self.server_backoff = backoff(self.server_backoff, SERVER_BACKOFF);
                let why = if a.no_connection {
                    Pause::NoConnection
                } else {
                    Pause::ServerTrouble
                };
                Some((now + self.server_backoff, why))
            }
            Some(_) => {
                self.server_backoff = Duration::ZERO;
                self.rate_limit_backoff = Duration::ZERO;
                None
            }
        };
        let ceiling = (f64::from(EXCHANGE_WEIGHT_LIMIT) * USED_WEIGHT_CEILING) as u32;
        let pause = pause.or_else(|| {
            a.used_weight.filter(|&w| w >= ceiling).map(|_| {
                let rest = 60_000u64.saturating_sub(a.minute_ms) + 50;
                (now + Duration::from_millis(rest), Pause::WeightCeiling)
            })
        });
        if let Some(p) = pause
            && self.paused.is_none_or(|(until, _)| until < p.0)
        {
            self.paused = Some(p);
        }
        pause
    }
}

/// Whether a request failed before any server could answer it: the host's
/// name did not resolve, no connection to it could be made, or its TLS
/// handshake failed (an untrusted certificate). A timeout or a connection
/// cut mid-answer is the server's trouble instead.
fn no_connection(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    use ureq::Timeout;
    match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => true,
        ureq::Error::Io(io) => {
            matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
            // The handshake's refusal comes wrapped in an I/O error.
            || io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
            // A name that does not resolve: std reports getaddrinfo's
            // failure with no stable `ErrorKind`, only this message.
            || io.to_string().contains("failed to lookup address information")
        }
        _ => false,
    }
}

/// The `host[:port]` of a base URL, for messages.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// Which rows a klines request asks for.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    /// Opening at or after this time, oldest first.
    From(i64),
    /// The newest ones opening at or before this time (none: the newest).
    Before(Option<i64>),
}

/// A symbol as `exchangeInfo` lists it.
#[derive(Debug, Deserialize)]
struct InfoSymbol {
    symbol: String,
    status: String,
}

#[derive(Debug, Deserialize)]
struct Info {
    symbols: Vec<InfoSymbol>,
}

/// The REST client: one keep-alive HTTP agent behind the gate.
pub struct Rest {
    agent: ureq::Agent,
    base: String,
    gate: Gate,
    health: Arc<LiveHealth>,
}

impl Rest {
    /// A client of `opts.rest_url`, spending at most `opts.rest_weight_per_minute`.
    pub fn new(opts: &LiveOptions, tls: ureq::tls::TlsConfig, health: Arc<LiveHealth>) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            // Keep-alive: a backfill of many series must not open a TLS
            // connection per request.
            .max_idle_connections(2)
            .max_idle_connections_per_host(2)
            .http_status_as_error(false)
            .tls_config(tls)
            .build()
            .into();
        Self {
            agent,
            base: opts.rest_url.trim_end_matches('/').to_owned(),
            gate: Gate::new(opts.rest_weight_per_minute, Instant::now()),
            health,
        }
    }

    /// When a request of `weight` may go (`now` if it may now).
    pub fn next_slot(&mut self, weight: u32, now: Instant) -> Instant {
        self.gate.next_slot(weight, now).0
    }

    /// One klines page.
    pub fn klines(
        &mut self,
        symbol: &SymbolName,
        interval: Interval,
        page: Page,
        limit: usize,
    ) -> Result<Vec<Kline>, RestError> {
        let mut query = vec![
            ("symbol", symbol.as_str().to_owned()),
            ("interval", interval.as_str().to_owned()),
            ("limit", limit.to_string()),
        ];
        match page {
            Page::From(t) => query.push(("startTime", t.to_string())),
            Page::Before(Some(t)) => query.push(("endTime", t.to_string())),
            Page::Before(None) => {}
        }
        let what = format!("{symbol} {interval}");
        let (body, date) = self.get(
            "/api/v3/klines",
            &query,
            KLINES_WEIGHT,
            MAX_REST_BODY,
            &what,
        )?;
        // Rows are judged closed by the exchange's clock when it answered
        // (its `Date`), not ours: a local clock running ahead would take the
        // candle in progress for a closed one.
        let now = date.unwrap_or_else(protocol::clock::now_ms);
        let (rows, bad) = binance::parse_rest(&body, symbol, interval, now)
            .map_err(|e| RestError::Refused(format!("GET /api/v3/klines ({what}): {e}")))?;
        for e in &bad {
            self.health.bad(e);
        }
        Ok(rows)
    }

    /// Every symbol the exchange lists, with its status (`TRADING`, `BREAK`...).
    pub fn exchange_info(&mut self) -> Result<HashMap<String, String>, RestError> {
        let (body, _) = self.get(
            "/api/v3/exchangeInfo",
            &[("showPermissionSets", "false".into())],
            EXCHANGE_INFO_WEIGHT,
            MAX_INFO_BODY,
            "every symbol",
        )?;
        let info: Info = serde_json::from_str(&body).map_err(|e| {
            RestError::Refused(format!(
                "GET /api/v3/exchangeInfo: not the documented answer: {e}"
            ))
        })?;
        Ok(info
            .symbols
            .into_iter()
            .map(|s| (s.symbol, s.status))
            .collect())
    }

    fn get(
        &mut self,
        path: &str,
        query: &[(&str, String)],
        weight: u32,
        limit: u64,
        what: &str,
    ) -> Result<(String, Option<i64>), RestError> {
        let now = Instant::now();
        self.gate
            .admit(weight, now)
            .map_err(|(until, why)| RestError::Paused { until, why })?;
        self.health.rest_requests.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        for (k, v) in query {
            req = req.query(k, v);
        }
        let answer = req.call().and_then(|mut resp| {
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            let retry_after = header("retry-after");
            let date = resp
                .headers()
                .get("date")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::http_date::http_date_ms);
            let used = header("x-mbx-used-weight-1m").map(|w| w.min(u64::from(u32::MAX)) as u32);
            let body = resp
                .body_mut()
                .with_config()
                .limit(limit)
                .read_to_string()?;
            Ok((status, retry_after, used, body, date))
        });
        let minute_ms = (protocol::clock::now_ms().rem_euclid(60_000)) as u64;
        let (answer, result) = match answer {
            Ok((status, retry_after, used_weight, body, date)) => (
                Answer {
                    status: Some(status),
                    no_connection: false,
                    retry_after,
                    used_weight,
                    minute_ms,
                },
                Ok((status, body, date)),
            ),
            Err(e) => (
                Answer {
                    status: None,
                    no_connection: no_connection(&e),
                    retry_after: None,
                    used_weight: None,
                    minute_ms,
                },
                Err(e),
            ),
        };
        if let Some(w) = answer.used_weight {
            self.health.used_weight(w);
        }
        let failure = match &result {
            Err(e) if answer.no_connection => Some(format!(
                "GET {path} ({what}): no connection to {}: {e}",
                host_of(&self.base)
            )),
            Err(e) => Some(format!("GET {path} ({what}): no answer: {e}")),
            Ok(_) => None,
        };
        if answer.no_connection
            && let Some(f) = &failure
        {
            // Before the pause, whose log line names it.
            self.health.connect_failed("REST", f);
        }
        let paused = self.gate.learn(answer, Instant::now());
        if let Some((until, why)) = paused {
            self.health.pause(until, why);
        }
        let (status, body, date) = match (result, failure) {
            (Ok(r), _) => r,
            (Err(_), f) => return Err(RestError::Exchange(f.unwrap_or_default())),
        };
        let excerpt = || body.chars().take(200).collect::<String>();
        match status {
            200..=299 => Ok((body, date)),
            429 | 418 => Err(RestError::Exchange(format!(
                "GET {path} ({what}): HTTP {status} ({}s Retry-After): {}",
                answer.retry_after.map_or("no".into(), |s| s.to_string()),
                excerpt()
            ))),
            500.. => Err(RestError::Exchange(format!(
                "GET {path} ({what}): HTTP {status}: {}",
                excerpt()
            ))),
            _ => Err(RestError::Refused(format!(
                "GET {path} ({what}): HTTP {status}: {}",
                excerpt()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<u64>, used: Option<u32>) -> Answer {
        Answer {
            status: Some(status),
            no_connection: false,
            retry_after,
            used_weight: used,
            minute_ms: 30_000,
        }
    }

    #[test]
    fn the_budget_refills_at_its_rate_and_starts_full() {
        let t0 = Instant::now();
        let mut b = Budget::new(600, t0);
        for _ in 0..300 {
            assert_eq!(b.take(2, t0), None);
        }
        let wait = b.take(2, t0).expect("spent");
        // 600 per minute: 10 per second, 2 in 200 ms.
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
        assert_eq!(b.take(2, t0 + Duration::from_millis(200)), None);
    }

    #[test]
    fn a_429_pauses_for_retry_after_and_longer_when_repeated() {
        let t0 = Instant::now();
        let mut g = Gate::new(6_000, t0);
        let (until, why) = g.learn(answer(429, Some(3), None), t0).expect("paused");
        assert_eq!(
            (until - t0, why),
            (Duration::from_secs(3), Pause::RateLimited)
        );
        assert_eq!(g.admit(2, t0 + Duration::from_secs(2)), Err((until, why)));
        assert!(g.admit(2, t0 + Duration::from_secs(3)).is_ok());
        let t1 = t0 + Duration::from_secs(3);
        let (again, _) = g.learn(answer(429, Some(3), None), t1).expect("paused");
        assert!(
            again - t1 > Duration::from_secs(3),
            "a second 429 in a row waits longer"
        );
        // An answer resets the backoff.
        let t2 = again;
        assert!(g.learn(answer(200, None, Some(10)), t2).is_none());
        let (third, _) = g.learn(answer(429, Some(3), None), t2).expect("paused");
        assert_eq!(third - t2, Duration::from_secs(3));
    }

    #[test]
    fn a_418_stops_every_request_for_the_ban() {
        let t0 = Instant::now();
        let mut g = Gate::new(6_000, t0);
        g.learn(answer(418, Some(120), None), t0);
        for s in [0, 1, 60, 119] {
            let at = t0 + Duration::from_secs(s);
            assert!(matches!(g.admit(2, at), Err((_, Pause::Banned))), "{s}s");
        }
        assert!(g.admit(2, t0 + Duration::from_secs(120)).is_ok());
        // A shorter pause learned meanwhile does not shorten the ban.
        let t1 = Instant::now();
        let mut g = Gate::new(6_000, t1);
        g.learn(answer(418, Some(120), None), t1);
        g.learn(answer(503, None, None), t1);
        assert!(matches!(
            g.paused(t1 + Duration::from_secs(60)),
            Some((_, Pause::Banned))
        ));
    }

    #[test]
    fn server_trouble_backs_off_capped_and_used_weight_waits_for_the_minute() {
        let t0 = Instant::now();
        let mut g = Gate::new(6_000, t0);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            let (until, why) = g.learn(answer(503, None, None), t0).expect("paused");
            assert_eq!(why, Pause::ServerTrouble);
            assert!(until - t0 >= last);
            last = until - t0;
        }
        assert_eq!(last, SERVER_BACKOFF.1, "capped");
        let t1 = t0 + Duration::from_secs(60);
        g.learn(answer(200, None, None), t1);
        let (until, why) = g.learn(answer(200, None, Some(5_500)), t1).expect("paused");
        assert_eq!(why, Pause::WeightCeiling);
        // 30 s into the minute: wait out the other 30 (and a little).
        assert_eq!(until - t1, Duration::from_millis(30_050));
        assert!(g.learn(answer(200, None, Some(5_000)), t1).is_none());
    }
}
