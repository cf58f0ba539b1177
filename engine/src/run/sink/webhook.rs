//! The `webhook:URL` and `webhook-batch:URL` sinks: each signal POSTed as
//! its JSON line (or each batch as a JSON array of them), at least once,
//! with a key that makes it exactly once for a receiver that keys on it.
//!
//! One request at a time, in order, so a series' signals arrive in
//! open-time order and the confirmed watermark is simply the last 2xx.
//! Connection errors, timeouts, 408, 429 and 5xx are retried with capped
//! exponential backoff and jitter, never sooner than a `Retry-After`; any
//! other answer (4xx, or a 3xx: redirects are not followed) is final: the
//! signal is *rejected*, counted, logged with the answer, not retried. The
//! confirmed watermarks are saved in the state directory at most every
//! [`super::marks::SAVE_EVERY`] and when the thread ends; a restart re-sends what was
//! confirmed after the last save, under the same key.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use super::super::dedup::Dedup;
use super::marks::{Delivers, Jitter, MarksFile, Position, spawn_delivering};
use super::{Batch, Output};

/// A request's whole time (connect, send, answer) by default (`--webhook-timeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between tries: doubled from the first to the cap, each wait
/// drawn from its upper half (jitter, so many engines do not retry in step).
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));
/// The longest `Retry-After` honoured (a receiver asking for a day is
/// asked again after this).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Signals in one `webhook-batch` request, at most.
pub const MAX_BATCH_SIGNALS: usize = 500;
/// Bytes of a refusal's body kept for the log and `status`.
const BODY_EXCERPT: u64 = 512;

/// What became of one request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// 2xx.
    Delivered,
    /// A final refusal: the status and the start of the body.
    Rejected(u16, String),
    /// To be tried again, after at least this long (`Retry-After`), and why.
    Retry(Option<Duration>, String),
}

/// Classifies an answer's status.
fn classify(status: u16, retry_after: Option<&str>, body: impl FnOnce() -> String) -> Answer {
    match status {
        200..=299 => Answer::Delivered,
        408 | 429 | 500..=599 => Answer::Retry(
            retry_after.and_then(parse_retry_after),
            format!("HTTP {status}"),
        ),
        _ => Answer::Rejected(status, body()),
    }
}

/// `Retry-After`: seconds, or an HTTP date; capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = crate::http_date::http_date_ms(value)?;
            Duration::from_millis((at - protocol::clock::now_ms()).max(0) as u64)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The wait before try `attempt + 1` (0-based), given a jitter draw in [0, 1).
pub(super) fn backoff(attempt: u32, draw: f64) -> Duration {
    let full = BACKOFF
        .0
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF.1);
    full.mul_f64(0.5 + draw / 2.0)
}

/// `url` without its `user:password@`, and that user information.
fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some(at) = url.find("://") else {
        return (url.to_owned(), None);
    };
    let rest = &url[at + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(i) => (
            format!("{}{}", &url[..at + 3], &rest[i + 1..]),
            Some(authority[..i].to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

/// A webhook sink and its thread's state.
pub struct WebhookSink {
    /// The URL requested: credentials taken out into `authorization`.
    url: String,
    /// The URL as logs show it (credentials and query hidden).
    shown: String,
    /// `Basic ...` from the URL's `user:password@` (HTTP clients do not
    /// send a URL's credentials on their own).
    authorization: Option<String>,
    batch: bool,
    agent: ureq::Agent,
    /// What the receiver has confirmed (or finally refused), and its saves.
    position: Position,
    jitter: Jitter,
}

impl WebhookSink {
    /// A sink posting to `url` (arrays if `batch`), each request given up
    /// (and retried) after `timeout`, trusting `tls`'s roots for https,
    /// whose receiver has confirmed `confirmed`, saved in `marks`.
    pub fn new(
        url: &str,
        batch: bool,
        timeout: Duration,
        tls: ureq::tls::TlsConfig,
        confirmed: Dedup,
        marks: MarksFile,
    ) -> Self {
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let (bare, userinfo) = split_userinfo(url);
        Self {
            shown: crate::redact::url(url),
            url: bare,
            authorization: userinfo.map(|u| {
                use base64::Engine;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(u.as_bytes())
                )
            }),
            batch,
            agent,
            position: Position::new(confirmed, marks, "webhook"),
            jitter: Jitter::default(),
        }
    }

    /// The sink's thread: each batch delivered before the next is taken.
    pub fn spawn(
        self,
        batches: Receiver<Batch>,
        output: Arc<Output>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        spawn_delivering("webhook-sink", self, batches, output)
    }
}

impl Delivers for WebhookSink {
    fn position(&mut self) -> &mut Position {
        &mut self.position
    }

    /// Delivers one batch, saving the position as it goes.
    fn deliver(&mut self, batch: &Batch, output: &Output) {
        let lines = batch.keyed(output);
        let chunk = if self.batch { MAX_BATCH_SIGNALS } else { 1 };
        for part in lines.chunks(chunk) {
            let (body, key) = if self.batch {
                let mut body = Vec::with_capacity(part.iter().map(|(_, l)| l.len() + 1).sum());
                body.push(b'[');
                for (k, (_, line)) in part.iter().enumerate() {
                    if k > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(line);
                }
                body.push(b']');
                (body, None)
            } else {
                (part[0].1.to_vec(), Some(part[0].0.idempotency_key()))
            };
            let n = part.len() as u64;
            match self.post(&body, key.as_deref(), output) {
                Some(Answer::Delivered) => {
                    output.delivered_since(batch.published);
                    output.count(n, true);
                }
                Some(Answer::Rejected(status, excerpt)) => {
                    tracing::warn!(url = %self.shown, status, body = %excerpt, signals = n,
                        key = key.as_deref().unwrap_or("(a batch)"),
                        "the webhook refused signals: not retried (a 4xx other than 408 and 429 is final)");
                    output.error(format!("HTTP {status}: {excerpt}"));
                    output.rejected.fetch_add(n, Ordering::AcqRel);
                }
                Some(Answer::Retry(..)) | None => {
                    // Out of drain time: not confirmed, so re-sent at the
                    // next start, unless the position already covers them.
                    output.count(n, false);
                    let covered = part.iter().filter(|(k, _)| self.position.covers(k));
                    output.lost_but_covered(covered.count() as u64);
                    continue;
                }
            }
            for (key, _) in part {
                self.position.confirm(key);
                output.confirmed(key.open_time);
            }
            self.position.save_due(output);
        }
    }
}

impl WebhookSink {
    /// Posts `body` until it is delivered or finally refused; `None` once
    /// teardown's drain time is over.
    fn post(&mut self, body: &[u8], key: Option<&str>, output: &Output) -> Option<Answer> {
        let mut attempt = 0;
        loop {
            if output.out_of_time() {
                return None;
            }
            let mut req = self
                .agent
                .post(&self.url)
                .header("Content-Type", "application/json");
            if let Some(key) = key {
                req = req.header("Idempotency-Key", key);
            }
            if let Some(auth) = &self.authorization {
                req = req.header("Authorization", auth);
            }
            let answer = match req.send(body) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    classify(status, retry_after.as_deref(), || {
                        // The start of it, however long it is.
                        let mut start = Vec::new();
                        let _ = resp
                            .body_mut()
                            .as_reader()
                            .take(BODY_EXCERPT)
                            .read_to_end(&mut start);
                        String::from_utf8_lossy(&start).into_owned()
                    })
                }
                Err(e) => Answer::Retry(None, e.to_string()),
            };
            let Answer::Retry(after, why) = answer else {
                return Some(answer);
            };
            output.retries.fetch_add(1, Ordering::AcqRel);
            let wait = backoff(attempt, self.jitter.draw()).max(after.unwrap_or_default());
            if attempt == 0 || attempt.is_power_of_two() {
                tracing::warn!(url = %self.shown, error = %why, attempt = attempt + 1,
                    retry_in_ms = wait.as_millis() as u64, "webhook delivery failed: retrying");
            }
            output.error(why);
            attempt += 1;
            output.pause(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::Key;
    use super::*;
    use crate::locked::lock;

    #[test]
    fn answers_are_delivered_retried_or_final() {
        assert_eq!(classify(204, None, String::new), Answer::Delivered);
        assert_eq!(
            classify(429, Some("3"), String::new),
            Answer::Retry(Some(Duration::from_secs(3)), "HTTP 429".into())
        );
        assert_eq!(
            classify(503, Some("soon"), String::new),
            Answer::Retry(None, "HTTP 503".into())
        );
        assert_eq!(
            classify(408, None, String::new),
            Answer::Retry(None, "HTTP 408".into())
        );
        assert_eq!(
            classify(400, None, || "bad".into()),
            Answer::Rejected(400, "bad".into())
        );
        assert_eq!(
            classify(301, None, String::new),
            Answer::Rejected(301, String::new())
        );
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_capped() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        let in_a_minute = crate::http_date::http_date(protocol::clock::now_ms() + 60_000);
        let wait = parse_retry_after(&in_a_minute).expect("a date");
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        let past = crate::http_date::http_date(0);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("later"), None);
    }

    #[test]
    fn credentials_leave_the_url_for_a_basic_authorization() {
        assert_eq!(
            split_userinfo("https://user:pw@h:1/p?t=1"),
            ("https://h:1/p?t=1".to_owned(), Some("user:pw".to_owned()))
        );
        assert_eq!(
            split_userinfo("http://h/a@b"),
            ("http://h/a@b".to_owned(), None)
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(30, 1.0), BACKOFF.1);
        assert_eq!(backoff(30, 0.0), BACKOFF.1 / 2);
    }

    fn lines(signals: &[(&str, i64)]) -> Batch {
        let mut text = Vec::new();
        for (trader, t) in signals {
            let s = protocol::message::Signal {
                trader: (*trader).into(),
                symbol: "BTCUSDT".into(),
                interval: protocol::Interval::M1,
                open_time: *t,
                close: 1.0,
                labels: Default::default(),
                values: Default::default(),
            };
            crate::signal_line::SignalLine::new(&s, Some(0)).write_to(&mut text);
            text.push(b'\n');
        }
        Batch {
            text,
            lines: signals.len() as u64,
            newest: signals.iter().map(|s| s.1).max().unwrap_or(0),
            published: Some(Instant::now()),
        }
    }

    fn start(
        url: &str,
        batch: bool,
        state: &crate::state::StateDir,
    ) -> (
        std::sync::mpsc::SyncSender<Batch>,
        Arc<Output>,
        std::thread::JoinHandle<()>,
        MarksFile,
    ) {
        let spec = format!("webhook:{url}");
        let marks = MarksFile::new(state.clone(), &spec);
        let sink = WebhookSink::new(
            url,
            batch,
            Duration::from_millis(300),
            ureq::tls::TlsConfig::default(),
            marks.load().expect("marks"),
            marks.clone(),
        );
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let output = Arc::new(Output::default());
        let thread = sink.spawn(rx, output.clone()).expect("thread");
        (tx, output, thread, marks)
    }

    /// Against a loopback receiver: failures retried (a `Retry-After`
    /// honoured), a 400 final, the key stable, the position saved.
    #[test]
    fn delivers_through_failures_refuses_on_4xx_and_saves_its_position() {
        use testkit::webhook::{Receiver, Reply};
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = crate::state::StateDir::open(&tmp.path().join("s")).expect("state");
        let hook = Receiver::start().expect("receiver");
        hook.script([
            Reply::Status(503, None),
            Reply::Drop,
            Reply::Status(429, Some(1)),
            Reply::Status(500, None),
            Reply::Stall(Duration::from_millis(600)),
        ]);
        hook.refuse(Some("\"trader\":\"bad\""));
        let url = format!("{}/signals", hook.base);
        let (tx, output, thread, marks) = start(&url, false, &state);
        tx.send(lines(&[
            ("a", 0),
            ("bad", 0),
            ("a", 60_000),
            ("a", 120_000),
        ]))
        .expect("send");
        drop(tx);
        thread
            .join()
            .expect("the sink's thread ends once its queue is done");

        let accepted = hook.accepted_lines();
        assert_eq!(accepted.len(), 3, "{accepted:?}");
        for (line, t) in accepted.iter().zip([0, 60_000, 120_000]) {
            assert!(line.contains(&format!("\"open_time\":{t},")), "{line}");
        }
        let requests = hook.requests();
        assert_eq!(
            requests.len(),
            9,
            "4 failures + 1 timeout + 1 refusal + 3 deliveries"
        );
        for r in &requests {
            let key: Key = serde_json::from_str(&r.body).expect("a signal line");
            assert_eq!(r.key.as_deref(), Some(key.idempotency_key().as_str()));
        }
        assert_eq!(
            requests[0].key.as_deref(),
            Some("a|BTCUSDT|1m|0"),
            "the key names the signal"
        );
        assert!(
            requests[3].at - requests[2].at >= Duration::from_millis(990),
            "Retry-After: 1 honoured"
        );
        assert_eq!(requests[4].status, None, "no answer within the timeout");
        assert_eq!(requests[6].status, Some(400));
        assert_eq!(output.retries.load(Ordering::Acquire), 5);
        assert_eq!(output.rejected.load(Ordering::Acquire), 1);
        assert_eq!(output.written(), 3);
        let (p50, p99) = output.latency_us();
        assert!(
            p50.is_some() && p99 >= Some(990_000),
            "the 429's second shows"
        );
        assert!(
            lock(&output.last_error)
                .as_deref()
                .is_some_and(|e| e.contains("HTTP 400: unknown trader")),
            "{:?}",
            output.last_error
        );
        let mut saved = marks.load().expect("saved");
        assert_eq!(saved.len(), 2, "a's series and bad's (refused is final)");
        let key = |trader: &str, t| Key {
            trader: trader.into(),
            symbol: "BTCUSDT".into(),
            interval: protocol::Interval::M1,
            open_time: t,
        };
        assert!(!saved.first(&key("a", 120_000).as_signal()));
        assert!(!saved.first(&key("bad", 0).as_signal()));
        assert!(saved.first(&key("a", 180_000).as_signal()));
    }

    #[test]
    fn batches_go_as_arrays_and_the_drain_time_ends_retries() {
        use testkit::webhook::{Receiver, Reply};
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = crate::state::StateDir::open(&tmp.path().join("s")).expect("state");
        let hook = Receiver::start().expect("receiver");
        let url = format!("{}/batch", hook.base);
        let (tx, output, thread, marks) = start(&url, true, &state);
        let many: Vec<(&str, i64)> = (0..700).map(|k| ("a", k * 60_000)).collect();
        tx.send(lines(&many)).expect("send");
        let deadline = Instant::now() + Duration::from_secs(30);
        while output.written() < 700 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(hook.count(), 2, "{MAX_BATCH_SIGNALS} a request at most");
        assert_eq!(hook.accepted_lines().len(), 700);
        assert!(hook.requests().iter().all(|r| r.key.is_none()));

        // Down for good: retried until the drain time, then counted lost
        // and not saved (the next start sends them again).
        hook.outage(Some(Reply::Status(503, None)));
        tx.send(lines(&[("a", 700 * 60_000)])).expect("send");
        std::thread::sleep(Duration::from_millis(300));
        output.stop_by(Instant::now() + Duration::from_millis(200));
        drop(tx);
        thread.join().expect("ends at the drain time");
        assert_eq!((output.written(), output.lost()), (700, 1));
        assert!(output.retries.load(Ordering::Acquire) >= 2);
        let mut saved = marks.load().expect("saved");
        let last = Key {
            trader: "a".into(),
            symbol: "BTCUSDT".into(),
            interval: protocol::Interval::M1,
            open_time: 700 * 60_000,
        };
        assert!(saved.first(&last.as_signal()), "not confirmed, not saved");
    }
}
