//! Trader evaluation: a verdict on a closed candle is a pure function of that
//! candle and a fixed window before it, never of when or where it is computed.
//! So a replacement worker, another worker or a single-process replay reach
//! the same verdicts.

use std::collections::{BTreeMap, HashMap};

use protocol::store::{ReadError, SeriesId, StoreReader, StoredCandle};
use protocol::trader::{Rule, Symbols, TraderSpec, signals};
use protocol::{Candle, Interval};

/// Most traders one worker holds; ADD_TRADER beyond it is refused.
pub const MAX_TRADERS: usize = 10_000;

/// A verdict that became a signal.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The trader.
    pub trader: String,
    /// The series' symbol.
    pub symbol: String,
    /// The series' interval.
    pub interval: Interval,
    /// The candle.
    pub candle: Candle,
    /// The trader's labels.
    pub labels: BTreeMap<String, String>,
}

/// One trader and where it stands on each of its series.
#[derive(Debug)]
pub struct Trader {
    /// As received.
    pub spec: TraderSpec,
    rule: Rule,
    /// Next candle index to evaluate, per symbol.
    cursors: HashMap<String, u64>,
}

impl Trader {
    /// A trader that has evaluated nothing yet.
    pub fn new(spec: TraderSpec, rule: Rule) -> Self {
        Self {
            spec,
            rule,
            cursors: HashMap::new(),
        }
    }

    /// Evaluation cursors held (one per series seen).
    pub fn cursors(&self) -> usize {
        self.cursors.len()
    }

    fn window(&self) -> usize {
        self.rule.lookback() + self.spec.cooldown as usize
    }

    /// Evaluates every closed candle of every watched series not evaluated
    /// yet, pushing signals to `hits`. `symbols` is the store's directory.
    /// Returns how many candles were gone from the ring before they could be
    /// evaluated (an explicit gap, never a silent skip).
    pub fn evaluate(
        &mut self,
        reader: &StoreReader,
        symbols: &[String],
        buf: &mut Vec<StoredCandle>,
        hits: &mut Vec<Hit>,
    ) -> Result<u64, ReadError> {
        let mut gaps = 0;
        let watched: Vec<&String> = match &self.spec.symbols {
            Symbols::All => symbols.iter().collect(),
            Symbols::List(list) => symbols.iter().filter(|s| list.contains(s)).collect(),
        };
        for symbol in watched {
            let Some(id) = reader.symbol_id(symbol) else {
                continue;
            };
            let series = reader.series(id, self.spec.interval)?;
            gaps += self.evaluate_series(reader, series, symbol, buf, hits)?;
        }
        Ok(gaps)
    }

    fn evaluate_series(
        &mut self,
        reader: &StoreReader,
        series: SeriesId,
        symbol: &str,
        buf: &mut Vec<StoredCandle>,
        hits: &mut Vec<Hit>,
    ) -> Result<u64, ReadError> {
        let head = reader.appended(series)?;
        let next = self.cursors.get(symbol).copied().unwrap_or(0);
        if head == 0 || next >= head {
            return Ok(0);
        }
        let window = self.window() as u64;
        // Every candle from the first unevaluated one's window up to the head.
        let oldest_kept = head.saturating_sub(reader.candles_per_series() as u64);
        let mut gaps = 0;
        let mut next = next;
        if next < oldest_kept {
            gaps = oldest_kept - next;
            tracing::warn!(trader = %self.spec.id, symbol, missed = gaps, "candles left the ring before they were evaluated");
            next = oldest_kept;
        }
        let start = (next + 1).saturating_sub(window).max(oldest_kept);
        match reader.read_range(series, start, head, buf) {
            Ok(()) => {}
            Err(ReadError::Gone { .. }) => return Ok(gaps), // lapped while reading: next pass
            Err(e) => return Err(e),
        }
        let candles: Vec<Candle> = buf.iter().map(|c| c.candle).collect();
        let mut evaluated_to = next;
        for (k, stored) in buf.iter().enumerate() {
            let index = stored.index;
            if index < next {
                continue;
            }
            // Final only if the feed said so or a newer candle exists.
            if !(stored.closed || index + 1 < head) {
                break;
            }
            evaluated_to = index + 1;
            if (k + 1) < window as usize {
                continue; // not enough history for a verdict
            }
            let w = &candles[k + 1 - window as usize..=k];
            if signals(&self.rule, self.spec.cooldown as usize, w) {
                hits.push(Hit {
                    trader: self.spec.id.clone(),
                    symbol: symbol.to_owned(),
                    interval: self.spec.interval,
                    candle: stored.candle,
                    labels: self.spec.labels.clone(),
                });
            }
        }
        self.cursors.insert(symbol.to_owned(), evaluated_to);
        Ok(gaps)
    }
}
