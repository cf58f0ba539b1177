//! Binance's kline formats: the public-data CSV dumps, the WebSocket kline
//! payload (single and combined-stream form) and the REST `/api/v3/klines`
//! rows. Pure parsing: every function here turns text into a [`Kline`] or a
//! [`BadLine`] that says what is wrong, and never panics on its input.

use std::path::Path;

use protocol::names::NameError;
use protocol::{Candle, Interval, SymbolName};
use serde::Deserialize;

use crate::kline::{BadLine, Kline, bucket_start, check};

/// The column names of a kline dump, for error messages.
pub const CSV_COLUMNS: [&str; 12] = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
];

/// The unit of a dump's timestamps: Binance's spot dumps switched from
/// milliseconds to microseconds on 2025-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
}

impl TimeUnit {
    fn name(self) -> &'static str {
        match self {
            TimeUnit::Millis => "milliseconds",
            TimeUnit::Micros => "microseconds",
        }
    }

    /// The unit of `t`, unambiguous for dates 2000-2200: those are 9.5e11 to
    /// 7.3e12 in ms and 9.5e14 to 7.3e15 in µs.
    fn of(t: i64) -> Result<Self, BadLine> {
        const MS_2000: i64 = 946_684_800_000;
        const MS_2200: i64 = 7_258_118_400_000;
        if (MS_2000..MS_2200).contains(&t) {
            Ok(TimeUnit::Millis)
        } else if (MS_2000 * 1000..MS_2200 * 1000).contains(&t) {
            Ok(TimeUnit::Micros)
        } else {
            Err(BadLine::TimeRange(t))
        }
    }

    fn to_millis(self, t: i64) -> i64 {
        match self {
            TimeUnit::Millis => t,
            TimeUnit::Micros => t.div_euclid(1000),
        }
    }
}

/// What a dump file's name says: `BTCUSDT-1m-2024-01.csv` names BTCUSDT and
/// 1m. None when the name is not of that shape (no interval second); the
/// symbol's error when the shape is there but the symbol is not one an
/// exchange could list (`BTC_USDT-1m-2024-01.csv`).
pub fn parse_file_name(path: &Path) -> Option<(Result<SymbolName, NameError>, Interval)> {
    let name = path.file_name()?.to_str()?;
    let mut parts = name.split('-');
    let symbol = parts.next()?;
    let interval = parts.next()?.parse().ok()?;
    Some((SymbolName::new(symbol), interval))
}

/// The per-file state of a dump being parsed: its unit is fixed by its first
/// candle, and its interval by the caller (flag or file name).
#[derive(Debug, Clone)]
pub struct CsvFile {
    symbol: SymbolName,
    interval: Interval,
    unit: Option<TimeUnit>,
    /// Whether a data line was seen: a header is accepted only before one.
    seen_data: bool,
}

impl CsvFile {
    /// A dump of `symbol`'s `interval` candles.
    pub fn new(symbol: SymbolName, interval: Interval) -> Self {
        Self {
            symbol,
            interval,
            unit: None,
            seen_data: false,
        }
    }

    /// The file's timestamp unit, once its first candle was read.
    pub fn unit(&self) -> Option<TimeUnit> {
        self.unit
    }

    /// Parses one line: `Ok(None)` for a header line or a blank line.
    pub fn parse_line(&mut self, line: &str) -> Result<Option<Kline>, BadLine> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Ok(None);
        }
        if !self.seen_data && line.starts_with(|c: char| c.is_ascii_alphabetic()) {
            // Newer futures dumps start with `open_time,open,...`.
            self.seen_data = true;
            return Ok(None);
        }
        self.seen_data = true;
        // One pass over the bytes: `split(',')` costs a memchr call per
        // field, a tenth of the whole replay. Slicing next to an ASCII comma
        // is always on a character boundary.
        let mut fields = [""; 7];
        let mut found = 0;
        let mut start = 0;
        for (i, &b) in line.as_bytes().iter().enumerate() {
            if b == b',' {
                if let Some(f) = fields.get_mut(found) {
                    *f = &line[start..i];
                }
                found += 1;
                start = i + 1;
            }
        }
        if let Some(f) = fields.get_mut(found) {
            *f = &line[start..];
        }
        found += 1;
        if found != 7 && found != 12 {
            return Err(BadLine::Columns { found });
        }
        let int = |k: usize| -> Result<i64, BadLine> {
            fields[k]
                .trim()
                .parse::<i64>()
                .map_err(|_| number(k, fields[k]))
        };
        let float = |k: usize| -> Result<f64, BadLine> {
            fields[k]
                .trim()
                .parse::<f64>()
                .map_err(|_| number(k, fields[k]))
        };
        let open_raw = int(0)?;
        let close_raw = int(6)?;
        let unit = TimeUnit::of(open_raw)?;
        let expected = *self.unit.get_or_insert(unit);
        if unit != expected {
            return Err(BadLine::Unit {
                value: open_raw,
                found: unit.name(),
                expected: expected.name(),
            });
        }
        // Old dumps (2017-2018) hold rows with an open time off the
        // interval's grid and close times cut short: such a row is read as
        // what Binance recorded, the candle of the interval it falls in.
        let recorded = unit.to_millis(open_raw);
        let open_time = bucket_start(recorded, self.interval);
        let close_time = unit.to_millis(close_raw);
        let candle = Candle {
            open_time,
            open: float(1)?,
            high: float(2)?,
            low: float(3)?,
            close: float(4)?,
            volume: float(5)?,
        };
        check_span_within(recorded, close_time, self.interval)?;
        check(&candle, self.interval)?;
        Ok(Some(Kline {
            symbol: self.symbol.clone(),
            interval: self.interval,
            candle,
            closed: true,
            at: close_time + 1,
        }))
    }
}

/// A price or volume given as a decimal string (Binance sends them quoted).
fn decimal(column: &'static str, v: &str) -> Result<f64, BadLine> {
    v.parse::<f64>().map_err(|_| BadLine::Number {
        column,
        value: v.chars().take(32).collect(),
    })
}

fn number(column: usize, value: &str) -> BadLine {
    BadLine::Number {
        column: CSV_COLUMNS[column],
        value: value.chars().take(32).collect(),
    }
}

/// Checks that `close_time` closes the `interval` candle opening at
/// `open_time` (both ms), without overflowing on wild input.
fn check_span(open_time: i64, close_time: i64, interval: Interval) -> Result<(), BadLine> {
    let expected_ms = interval.millis() as i64;
    let span = close_time
        .checked_sub(open_time)
        .and_then(|d| d.checked_add(1));
    if span == Some(expected_ms) {
        return Ok(());
    }
    Err(BadLine::Span {
        interval,
        span_ms: span.unwrap_or(i64::MAX),
        expected_ms,
    })
}

/// Like [`check_span`], for old dump rows: the close time may be cut short,
/// but must lie within the candle's interval.
fn check_span_within(open_time: i64, close_time: i64, interval: Interval) -> Result<(), BadLine> {
    let expected_ms = interval.millis() as i64;
    let span = close_time
        .checked_sub(open_time)
        .and_then(|d| d.checked_add(1));
    match span {
        Some(s) if (1..=expected_ms).contains(&s) => Ok(()),
        _ => Err(BadLine::Span {
            interval,
            span_ms: span.unwrap_or(i64::MAX),
            expected_ms,
        }),
    }
}

/// A timestamp that must be in milliseconds.
fn check_millis(t: i64) -> Result<(), BadLine> {
    match TimeUnit::of(t)? {
        TimeUnit::Millis => Ok(()),
        TimeUnit::Micros => Err(BadLine::Unit {
            value: t,
            found: TimeUnit::Micros.name(),
            expected: TimeUnit::Millis.name(),
        }),
    }
}

/// A WebSocket message, single (`{"e":"kline",...}`) or combined-stream
/// (`{"stream":...,"data":{...}}`), or a connection event
/// (`{"event":{"e":"serverShutdown",...}}`); other fields are ignored.
#[derive(Debug, Default, Deserialize)]
struct Event<'a> {
    #[serde(rename = "e", borrow, default)]
    kind: Option<&'a str>,
    #[serde(rename = "E", default)]
    event_time: Option<i64>,
    #[serde(borrow, default)]
    k: Option<WsKline<'a>>,
    /// The combined-stream wrapper's payload.
    #[serde(borrow, default)]
    data: Option<Box<Event<'a>>>,
    /// A connection event's payload.
    #[serde(borrow, default)]
    event: Option<Box<Event<'a>>>,
}

#[derive(Debug, Deserialize)]
struct WsKline<'a> {
    t: i64,
    #[serde(rename = "T")]
    close_time: i64,
    s: &'a str,
    i: &'a str,
    o: &'a str,
    c: &'a str,
    h: &'a str,
    l: &'a str,
    v: &'a str,
    x: bool,
}

/// What a WebSocket message was.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A kline event.
    Kline(Kline),
    /// The server is about to shut down: connect again now (Binance sends
    /// it before maintenance cuts the connection).
    ServerShutdown,
    /// Valid JSON of another kind (a subscription answer, another stream).
    Other,
}

/// Parses one WebSocket message or one line of a JSON-lines recording of them.
pub fn parse_ws(text: &str) -> Result<Message, BadLine> {
    let outer: Event<'_> = serde_json::from_str(text).map_err(|e| BadLine::Json(e.to_string()))?;
    let mut outer = outer;
    let event = match (outer.data.take(), outer.event.take()) {
        (Some(inner), _) | (None, Some(inner)) => *inner,
        (None, None) => outer,
    };
    let Some(k) = event.k else {
        return match event.kind {
            Some("serverShutdown") => Ok(Message::ServerShutdown),
            Some("kline") => Err(BadLine::Json(
                "a kline event without its \"k\" object".into(),
            )),
            _ => Ok(Message::Other),
        };
    };
    let interval: Interval = k.i.parse().map_err(|_| BadLine::Interval(k.i.into()))?;
    let symbol = SymbolName::new(k.s).map_err(|_| BadLine::Symbol(k.s.into()))?;
    check_millis(k.t)?;
    let candle = Candle {
        open_time: k.t,
        open: decimal("k.o", k.o)?,
        high: decimal("k.h", k.h)?,
        low: decimal("k.l", k.l)?,
        close: decimal("k.c", k.c)?,
        volume: decimal("k.v", k.v)?,
    };
    check_span(k.t, k.close_time, interval)?;
    check(&candle, interval)?;
    Ok(Message::Kline(Kline {
        symbol,
        interval,
        candle,
        closed: k.x,
        // An event time that is not a plausible moment of the candle's life
        // (from its open to a minute after its close) would stall or reorder
        // a paced replay: the close is used instead.
        at: event
            .event_time
            .filter(|&e| check_millis(e).is_ok() && e >= k.t && e <= k.close_time + 60_000)
            .unwrap_or(k.close_time + 1),
    }))
}

/// One row of a REST `/api/v3/klines` answer:
/// `[open_time, "o", "h", "l", "c", "v", close_time, "q", n, "V", "Q", "ignore"]`.
/// Only the first seven are read, and columns Binance may add are skipped.
#[derive(Debug)]
struct RestRow(i64, String, String, String, String, String, i64);

impl<'de> Deserialize<'de> for RestRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Row;
        impl<'de> serde::de::Visitor<'de> for Row {
            type Value = RestRow;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a kline row: an array of at least 7 columns")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RestRow, A::Error> {
                fn need<T, E: serde::de::Error>(v: Option<T>, k: usize) -> Result<T, E> {
                    v.ok_or_else(|| E::invalid_length(k, &Row))
                }
                let row = RestRow(
                    need(seq.next_element()?, 0)?,
                    need(seq.next_element()?, 1)?,
                    need(seq.next_element()?, 2)?,
                    need(seq.next_element()?, 3)?,
                    need(seq.next_element()?, 4)?,
                    need(seq.next_element()?, 5)?,
                    need(seq.next_element()?, 6)?,
                );
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(row)
            }
        }
        d.deserialize_seq(Row)
    }
}

/// How long after its close time a REST row counts as final: the exchange
/// may still be finishing the candle, and the local clock may run ahead.
pub const REST_CLOSE_MARGIN_MS: i64 = 5_000;

/// Parses a REST klines answer for `symbol`/`interval`: the good rows, and
/// why each bad one was skipped. A row is closed once its close time is
/// [`REST_CLOSE_MARGIN_MS`] in the past (`now_ms`); the exchange's last row,
/// the candle in progress, is written as an update.
pub fn parse_rest(
    body: &str,
    symbol: &SymbolName,
    interval: Interval,
    now_ms: i64,
) -> Result<(Vec<Kline>, Vec<BadLine>), BadLine> {
    let rows: Vec<RestRow> =
        serde_json::from_str(body).map_err(|e| BadLine::Json(e.to_string()))?;
    let mut out = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        let parsed = (|| {
            check_millis(row.0)?;
            check_span(row.0, row.6, interval)?;
            let candle = Candle {
                open_time: row.0,
                open: decimal("open", &row.1)?,
                high: decimal("high", &row.2)?,
                low: decimal("low", &row.3)?,
                close: decimal("close", &row.4)?,
                volume: decimal("volume", &row.5)?,
            };
            check(&candle, interval)?;
            Ok(Kline {
                symbol: symbol.clone(),
                interval,
                candle,
                closed: row.6 < now_ms.saturating_sub(REST_CLOSE_MARGIN_MS),
                at: row.6 + 1,
            })
        })();
        match parsed {
            Ok(k) => out.push(k),
            Err(e) => bad.push(e),
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests;
