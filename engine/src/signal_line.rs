//! The signal line: one JSON object per signal, as `run` prints it on stdout
//! and `backtest` writes it, from one `Serialize` type (keys in alphabetical
//! order).

use std::collections::BTreeMap;

use protocol::Interval;
use protocol::clock::now_ms;
use protocol::message::Signal;
use serde::Serialize;

/// A signal as printed on stdout: one JSON object per line, its keys in
/// alphabetical order. `worker` is the worker that evaluated it (absent in
/// a backtest).
#[derive(Serialize)]
pub struct SignalLine<'a> {
    close: f64,
    emitted_at: i64,
    interval: Interval,
    labels: &'a BTreeMap<String, String>,
    open_time: i64,
    symbol: &'a str,
    trader: &'a str,
    values: &'a BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<u32>,
}

impl<'a> SignalLine<'a> {
    /// The line for `signal`, emitted now.
    pub fn new(signal: &'a Signal, worker: Option<u32>) -> Self {
        Self {
            close: signal.close,
            emitted_at: now_ms(),
            interval: signal.interval,
            labels: &signal.labels,
            open_time: signal.open_time,
            symbol: &signal.symbol,
            trader: &signal.trader,
            values: &signal.values,
            worker,
        }
    }

    /// Appends the line (no newline) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Cannot fail: every field serialises, into a Vec.
        let _ = serde_json::to_writer(out, self);
    }
}
