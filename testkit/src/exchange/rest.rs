//! The stand-in's REST side: HTTP/1.1 with keep-alive, `/api/v3/klines`
//! and `/api/v3/exchangeInfo`, under Binance's rules: request weight per
//! wall-clock minute reported in `X-MBX-USED-WEIGHT-1M` (past the limit:
//! 429), `Retry-After` on every 429 and 418, and an IP banned (418) once it
//! keeps asking during a `Retry-After`. [`super::Behavior`] adds storms of
//! 429 (by request number, or on repairs), bans, 503s and a 13th column.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine::locked::lock;
use protocol::{Candle, Interval};

use super::{REST_LOG, Shared};
use crate::rows::{RowFormat, format_row};

/// An idle keep-alive connection is closed after this long.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The weight and penalty state of "the IP" (every client of the stand-in).
#[derive(Debug, Default)]
pub(super) struct Limits {
    /// The wall-clock minute `used` counts.
    minute: i64,
    used: u32,
    /// A 429's `Retry-After` runs until then.
    penalty_until: Option<Instant>,
    /// Requests made during that window.
    penalty_violations: u64,
    /// A 418 ban runs until then.
    banned_until: Option<Instant>,
    /// Candles whose `x: true` was left out since the last 429 began its
    /// window.
    dropped_this_penalty: u64,
}

/// Counts the `x: true` of one candle left out on every one of `series`,
/// and whether a 429's `Retry-After` was running then (the client's
/// repairs could not end).
pub(super) fn closes_dropped(shared: &Shared, series: u64) {
    let d = &shared.dropped;
    d.all.fetch_add(series, Ordering::Relaxed);
    let mut lim = lock(&shared.limits);
    if lim.penalty_until.is_some_and(|u| u > Instant::now()) {
        lim.dropped_this_penalty += 1;
        d.in_pauses.fetch_add(series, Ordering::Relaxed);
        d.most_in_one_pause
            .fetch_max(lim.dropped_this_penalty, Ordering::Relaxed);
    }
}

/// One answer: status line, `Retry-After` (seconds), body.
struct Reply {
    status: &'static str,
    retry_after: Option<u64>,
    body: String,
    /// The stand-in's clock when it answered (`Date`); now if unset.
    date_ms: Option<i64>,
}

impl Reply {
    fn json(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            retry_after: None,
            date_ms: None,
            body: body.into(),
        }
    }
}

pub(super) fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let Ok(tcp) = stream.try_clone() else { return };
    match &shared.tls {
        None => session(stream, shared),
        Some(cfg) => {
            if let Ok(conn) = rustls::ServerConnection::new(Arc::clone(cfg)) {
                let mut tls = rustls::StreamOwned::new(conn, stream);
                session(&mut tls, shared);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
}

/// Requests one after another on one connection, until the client closes
/// it, it idles past [`KEEP_ALIVE`], or the stand-in stops.
fn session(mut stream: impl Read + Write, shared: &Shared) {
    let mut pending: Vec<u8> = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let mut idle_since = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        let end = pending.windows(4).position(|w| w == b"\r\n\r\n");
        let Some(end) = end else {
            if pending.len() > 16 << 10 || idle_since.elapsed() > KEEP_ALIVE {
                return;
            }
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    idle_since = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end + 4);
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (reply, used) = answer(&target, shared);
        let retry = reply
            .retry_after
            .map_or_else(String::new, |s| format!("Retry-After: {s}\r\n"));
        let date = reply
            .date_ms
            .unwrap_or_else(|| super::timeline_now(&lock(&shared.state)));
        let out = format!(
            "HTTP/1.1 {}\r\nDate: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-MBX-USED-WEIGHT-1M: {used}\r\n{retry}Connection: keep-alive\r\n\r\n{}",
            reply.status,
            engine::http_date::http_date(date),
            reply.body.len(),
            reply.body
        );
        if stream.write_all(out.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
        idle_since = Instant::now();
    }
}

fn weight(target: &str) -> u32 {
    if target.starts_with("/api/v3/klines") {
        2
    } else if target.starts_with("/api/v3/exchangeInfo") {
        20
    } else {
        1
    }
}

/// Judges a request against the limits, then answers it; also returns the
/// weight used this minute.
fn answer(target: &str, shared: &Shared) -> (Reply, u32) {
    let b = &shared.behavior;
    let c = &shared.rest;
    let n = c.requests.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut st = lock(&shared.state);
        if st.rest_log.len() == REST_LOG {
            st.rest_log.pop_front();
        }
        st.rest_log.push_back(target.to_owned());
    }
    let now = Instant::now();
    let wall_ms = protocol::clock::now_ms();
    let mut lim = lock(&shared.limits);
    let minute = wall_ms.div_euclid(60_000);
    if lim.minute != minute {
        lim.minute = minute;
        lim.used = 0;
    }
    let secs_left =
        |until: Instant| until.saturating_duration_since(now).as_secs_f64().ceil() as u64;
    let ban = |lim: &mut Limits| {
        c.banned.fetch_add(1, Ordering::Relaxed);
        lim.banned_until = Some(now + Duration::from_secs(b.ban_s));
        Reply {
            status: "418 I'm a teapot",
            retry_after: Some(b.ban_s),
            date_ms: None,
            body: r#"{"code":-1003,"msg":"Way too many requests; IP banned."}"#.into(),
        }
    };
    let rate_limited = |lim: &mut Limits, secs: u64| {
        c.rate_limited.fetch_add(1, Ordering::Relaxed);
        lim.penalty_until = Some(now + Duration::from_secs(secs));
        lim.penalty_violations = 0;
        lim.dropped_this_penalty = 0;
        Reply {
            status: "429 Too Many Requests",
            retry_after: Some(secs),
            date_ms: None,
            body: r#"{"code":-1003,"msg":"Too many requests; current limit is exceeded."}"#.into(),
        }
    };
    if let Some(until) = lim.banned_until.filter(|u| *u > now) {
        c.violations.fetch_add(1, Ordering::Relaxed);
        let used = lim.used;
        return (
            Reply {
                status: "418 I'm a teapot",
                retry_after: Some(secs_left(until)),
                date_ms: None,
                body: r#"{"code":-1003,"msg":"Way too many requests; IP banned."}"#.into(),
            },
            used,
        );
    }
    if let Some(until) = lim.penalty_until.filter(|u| *u > now) {
        c.violations.fetch_add(1, Ordering::Relaxed);
        lim.penalty_violations += 1;
        let reply = if lim.penalty_violations >= b.ban_after_violations {
            ban(&mut lim)
        } else {
            let secs = secs_left(until);
            c.rate_limited.fetch_add(1, Ordering::Relaxed);
            Reply {
                status: "429 Too Many Requests",
                retry_after: Some(secs),
                date_ms: None,
                body: r#"{"code":-1003,"msg":"Too many requests; current limit is exceeded."}"#
                    .into(),
            }
        };
        let used = lim.used;
        return (reply, used);
    }
    if b.ban_at == Some(n) {
        let used = lim.used;
        return (ban(&mut lim), used);
    }
    if b.storm
        .is_some_and(|(first, count)| (first..first + count).contains(&n))
    {
        let used = lim.used;
        return (rate_limited(&mut lim, b.retry_after_s), used);
    }
    if let Some((every, times)) = b.repair_429
        && target.starts_with("/api/v3/klines?")
        && target.contains("startTime=")
    {
        let k = c.from_requests.fetch_add(1, Ordering::Relaxed) + 1;
        if every > 0 && k.is_multiple_of(every) && k / every <= times {
            let used = lim.used;
            return (rate_limited(&mut lim, b.retry_after_s), used);
        }
    }
    if b.server_error_every > 0 && n.is_multiple_of(b.server_error_every) {
        c.server_errors.fetch_add(1, Ordering::Relaxed);
        let used = lim.used;
        return (
            Reply::json(
                "503 Service Unavailable",
                r#"{"code":-1008,"msg":"Server is currently overloaded with other requests. Please try again in a few minutes."}"#,
            ),
            used,
        );
    }
    lim.used += weight(target);
    c.peak_weight
        .fetch_max(u64::from(lim.used), Ordering::Relaxed);
    let used = lim.used;
    if used > b.weight_limit {
        let secs = ((60_000 - wall_ms.rem_euclid(60_000)) as u64).div_ceil(1000);
        return (rate_limited(&mut lim, secs), used);
    }
    drop(lim);
    let reply = if let Some(query) = target.strip_prefix("/api/v3/klines?") {
        klines(query, shared)
    } else if target.starts_with("/api/v3/exchangeInfo") {
        exchange_info(shared)
    } else {
        Reply::json("404 Not Found", r#"{"code":-1,"msg":"not found"}"#)
    };
    (reply, used)
}

fn exchange_info(shared: &Shared) -> Reply {
    let b = &shared.behavior;
    let st = lock(&shared.state);
    let symbols: Vec<String> = st
        .series
        .iter()
        .map(|(s, _)| s.as_str())
        .filter(|s| !b.unlisted.iter().any(|u| u == s))
        .map(|s| {
            let status = if b.halted.iter().any(|h| h == s) {
                "BREAK"
            } else {
                "TRADING"
            };
            format!(
                r#"{{"symbol":"{s}","status":"{status}","baseAsset":"X","quoteAsset":"USDT","orderTypes":["LIMIT","MARKET"],"filters":[]}}"#
            )
        })
        .collect();
    Reply::json(
        "200 OK",
        format!(
            r#"{{"timezone":"UTC","serverTime":{},"rateLimits":[{{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":{}}}],"exchangeFilters":[],"symbols":[{}]}}"#,
            protocol::clock::now_ms(),
            b.weight_limit,
            symbols.join(",")
        ),
    )
}

fn invalid(code: i64, msg: &str) -> Reply {
    Reply::json(
        "400 Bad Request",
        format!(r#"{{"code":{code},"msg":"{msg}"}}"#),
    )
}

fn klines(query: &str, shared: &Shared) -> Reply {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    };
    // Before the state's lock: streaming goes on meanwhile.
    std::thread::sleep(shared.behavior.rest_delay);
    let st = lock(&shared.state);
    let interval = param("interval").and_then(|i| i.parse::<Interval>().ok());
    let (series, closed, ratio) = match interval {
        Some(Interval::M1) => (&st.series, st.clock, 1),
        Some(i) => match st.longer.iter().find(|l| l.interval == i) {
            Some(l) => (&l.series, st.clock / l.ratio, l.ratio),
            None => return invalid(-1120, "Invalid interval."),
        },
        None => return invalid(-1120, "Invalid interval."),
    };
    let interval = interval.unwrap_or(Interval::M1);
    let limit = param("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(500)
        .clamp(1, 1000);
    let start = param("startTime").and_then(|v| v.parse::<i64>().ok());
    let end = param("endTime").and_then(|v| v.parse::<i64>().ok());
    let symbol = param("symbol");
    let b = &shared.behavior;
    let unlisted = b
        .unlisted
        .iter()
        .chain(&b.refused)
        .any(|u| Some(u.as_str()) == symbol);
    let Some(k) = series
        .iter()
        .position(|(s, _)| Some(s.as_str()) == symbol)
        .filter(|_| !unlisted)
    else {
        return invalid(-1121, "Invalid symbol.");
    };
    let candles = &series[k].1;
    // Closed candles, then the one in progress (as Binance's last row): the
    // minutes of its bucket closed so far and half of the current one.
    let mut visible = candles[..closed.min(candles.len())].to_vec();
    let minutes = &st.series[k].1;
    let first = closed * ratio;
    if let Some(now) = minutes.get(st.clock) {
        let part = minutes[first.min(st.clock)..st.clock]
            .iter()
            .copied()
            .chain([super::partial(now, 0.5)]);
        let at = engine::kline::bucket_start(now.open_time, interval);
        visible.extend(super::fold(part, at));
    }
    let closed = &visible[..];
    let rows: Vec<&Candle> = match (start, end) {
        (Some(t), _) => closed
            .iter()
            .filter(|c| c.open_time >= t && end.is_none_or(|e| c.open_time <= e))
            .take(limit)
            .collect(),
        (None, end) => {
            let upto = closed.partition_point(|c| end.is_none_or(|e| c.open_time <= e));
            closed[upto.saturating_sub(limit)..upto].iter().collect()
        }
    };
    let extra = shared.behavior.extra_column;
    let body: Vec<String> = rows
        .iter()
        .map(|c| {
            let row = format_row(c, interval, RowFormat::Rest);
            if extra {
                // A column Binance might add one day, and an object.
                format!(r#"{},"13th",{{"new":1}}]"#, row.trim_end_matches(']'))
            } else {
                row
            }
        })
        .collect();
    Reply {
        date_ms: Some(super::timeline_now(&st)),
        ..Reply::json("200 OK", format!("[{}]", body.join(",")))
    }
}
