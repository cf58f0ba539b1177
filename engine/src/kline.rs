//! One candle as every feed delivers it ([`Kline`]), the checks every
//! candle passes whatever its source, why one is not taken ([`BadLine`]), and
//! where an interval's candles start. Below the feeds and NATS alike, so
//! every source and the candle stream share one type.

use protocol::names::SYMBOL_RULE;
use protocol::{Candle, Interval, SymbolName};
use thiserror::Error;

/// One candle as a feed delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kline {
    /// The symbol, upper case as Binance spells it.
    pub symbol: SymbolName,
    /// The candle's interval.
    pub interval: Interval,
    /// The values; `open_time` in milliseconds.
    pub candle: Candle,
    /// Final (`x: true`, a row of a dump, a REST row whose close time passed).
    pub closed: bool,
    /// When the feed delivered it, ms: the event time of a WebSocket payload,
    /// the close time + 1 of a closed candle otherwise. Replays are paced and
    /// merged by it.
    pub at: i64,
}

/// Why a line (or a message) was not taken: its text's shape (the formats
/// of `feed::binance`) or a candle no feed may write (the checks below, the
/// writer's order). One type, so the replay's report and the live feed's
/// counters name every reason alike.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum BadLine {
    /// Neither the 12 columns of a dump nor their 7-column prefix.
    #[error("{found} columns, expected 12 (a Binance kline dump) or 7 (its first seven)")]
    Columns {
        /// Columns found.
        found: usize,
    },
    /// A field that is not a number.
    #[error("{column} is {value:?}, not a number")]
    Number {
        /// The column.
        column: &'static str,
        /// What it held (cut to 32 characters).
        value: String,
    },
    /// A timestamp in the other unit than the file's first line.
    #[error("timestamp {value} is in {found}, but this file's first candle was in {expected}")]
    Unit {
        /// The timestamp.
        value: i64,
        /// Its unit.
        found: &'static str,
        /// The file's unit.
        expected: &'static str,
    },
    /// A timestamp before 2000 or after 2200, in either unit.
    #[error(
        "timestamp {0} is out of range (not milliseconds or microseconds since 1970 of a date 2000-2200)"
    )]
    TimeRange(i64),
    /// `close_time` that is not `open_time` + the interval - 1.
    #[error(
        "close_time - open_time is {span_ms} ms, but a {interval} candle spans {expected_ms} ms"
    )]
    Span {
        /// The file's interval.
        interval: Interval,
        /// close - open + 1, in ms.
        span_ms: i64,
        /// The interval's length.
        expected_ms: i64,
    },
    /// An open time not on the interval's boundary.
    #[error("open_time {open_time} is not on a {interval} boundary")]
    Unaligned {
        /// The open time, ms.
        open_time: i64,
        /// The interval.
        interval: Interval,
    },
    /// A price or volume that is not finite, negative, or a high below a low.
    #[error("inconsistent candle: {0}")]
    Inconsistent(&'static str),
    /// Not JSON, or JSON of another shape.
    #[error("not a kline payload: {0}")]
    Json(String),
    /// A symbol no exchange could list ([`SymbolName`]).
    #[error("symbol {0:?} is not an exchange symbol: {SYMBOL_RULE}")]
    Symbol(String),
    /// An interval that is not one of Binance's.
    #[error("interval {0:?} is not one of Binance's")]
    Interval(String),
    /// Older than what the series already holds (out of order or repeated).
    #[error("open_time {open_time} is before the series' latest candle {latest}: out of order")]
    Stale {
        /// The candle's open time.
        open_time: i64,
        /// The series' latest open time.
        latest: i64,
    },
    /// A candle for an interval the store does not keep.
    #[error("the store does not keep {0} candles (--intervals)")]
    NotKept(Interval),
    /// A line longer than the replay reads.
    #[error("the line is longer than {limit} bytes (not a kline line)")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// Bytes that are not UTF-8.
    #[error("the line is not UTF-8 text")]
    Encoding,
    /// A candle for an interval the coordinator builds itself from 1m candles.
    #[error("{0} candles are built from 1m candles here (--aggregate); this one is ignored")]
    Aggregated(Interval),
}

/// Largest price or volume accepted: far above any market's, and small
/// enough that a week of summed minute volumes stays finite.
pub const MAX_VALUE: f64 = 1e18;

/// The checks every candle passes, whatever its source.
pub fn check(candle: &Candle, interval: Interval) -> Result<(), BadLine> {
    if !candle.is_finite() {
        return Err(BadLine::Inconsistent("a price or the volume is not finite"));
    }
    if [
        candle.open,
        candle.high,
        candle.low,
        candle.close,
        candle.volume,
    ]
    .iter()
    .any(|v| v.abs() > MAX_VALUE)
    {
        return Err(BadLine::Inconsistent("a price or the volume is above 1e18"));
    }
    if candle.volume < 0.0 {
        return Err(BadLine::Inconsistent("negative volume"));
    }
    if candle.low.is_nan() || candle.low <= 0.0 {
        return Err(BadLine::Inconsistent("low is not above zero"));
    }
    if candle.high < candle.low
        || candle.open > candle.high
        || candle.open < candle.low
        || candle.close > candle.high
        || candle.close < candle.low
    {
        return Err(BadLine::Inconsistent("open or close outside [low, high]"));
    }
    if candle.open_time.rem_euclid(interval.millis() as i64) != interval_offset(interval) {
        return Err(BadLine::Unaligned {
            open_time: candle.open_time,
            interval,
        });
    }
    Ok(())
}

/// Where an interval's candles start, as the remainder of the open time by
/// the interval's length: Binance's weeks start on Monday 00:00 UTC, and the
/// Unix epoch was a Thursday; every other interval is aligned to the epoch.
pub const fn interval_offset(interval: Interval) -> i64 {
    match interval {
        Interval::W1 => 4 * 86_400_000,
        _ => 0,
    }
}

/// The open time of the `interval` candle that contains `t` (ms).
pub const fn bucket_start(t: i64, interval: Interval) -> i64 {
    let len = interval.millis() as i64;
    let offset = interval_offset(interval);
    t - (t - offset).rem_euclid(len)
}
