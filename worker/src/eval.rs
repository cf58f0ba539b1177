//! Trader evaluation: a verdict on a closed candle is a pure function of that
//! candle and a fixed window before it, never of when or where it is computed.
//! So a replacement worker, another worker or a single-process replay reach
//! the same verdicts.

use std::collections::{BTreeMap, HashMap};

use protocol::store::{ReadError, SeriesId, StoreReader, StoredCandle};
use protocol::trader::{Direction, Rule, Symbols, TraderSpec};
use protocol::{Candle, Interval};

/// Most traders one worker holds; ADD_TRADER beyond it is refused.
pub const MAX_TRADERS: usize = 10_000;

/// The raw verdict of `rule` on the last candle of `window` (which must hold
/// exactly `rule.lookback()` candles, oldest first).
pub fn verdict(rule: &Rule, window: &[Candle]) -> bool {
    match *rule {
        Rule::CloseCrossesSma { direction, period } => {
            let n = period as usize;
            if window.len() != n + 1 {
                return false;
            }
            let mean = |w: &[Candle]| w.iter().map(|c| c.close).sum::<f64>() / n as f64;
            let (prev, now) = (&window[n - 1], &window[n]);
            let (sma_prev, sma_now) = (mean(&window[..n]), mean(&window[1..]));
            match direction {
                Direction::Above => prev.close <= sma_prev && now.close > sma_now,
                Direction::Below => prev.close >= sma_prev && now.close < sma_now,
            }
        }
    }
}

/// Whether the trader signals on the last candle of `window`: a raw verdict,
/// and no raw verdict on any of the `cooldown` candles before it. `window`
/// holds `lookback + cooldown` candles. Defined over raw verdicts (not over
/// signals already emitted) so that it stays a pure function of the window.
pub fn signals(rule: &Rule, cooldown: usize, window: &[Candle]) -> bool {
    let lookback = rule.lookback();
    if window.len() != lookback + cooldown {
        return false;
    }
    let last = window.len();
    if !verdict(rule, &window[last - lookback..]) {
        return false;
    }
    (1..=cooldown).all(|back| !verdict(rule, &window[last - back - lookback..last - back]))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn closes(values: &[f64]) -> Vec<Candle> {
        values
            .iter()
            .enumerate()
            .map(|(i, &c)| Candle {
                open_time: i as i64 * 60_000,
                open: c,
                high: c,
                low: c,
                close: c,
                volume: 1.0,
            })
            .collect()
    }

    #[test]
    fn cross_above_the_sma() {
        let rule = Rule::CloseCrossesSma {
            direction: Direction::Above,
            period: 3,
        };
        // SMA(3) before: (1+1+1)/3 = 1, previous close 1 <= 1; now (1+1+5)/3 = 2.33 < 5.
        assert!(verdict(&rule, &closes(&[1.0, 1.0, 1.0, 5.0])));
        assert!(!verdict(&rule, &closes(&[5.0, 5.0, 5.0, 1.0])));
        assert!(
            !verdict(&rule, &closes(&[1.0, 5.0])),
            "wrong window length is no verdict"
        );
        let below = Rule::CloseCrossesSma {
            direction: Direction::Below,
            period: 3,
        };
        assert!(verdict(&below, &closes(&[5.0, 5.0, 5.0, 1.0])));
    }

    #[test]
    fn cooldown_suppresses_a_verdict_right_after_another() {
        let rule = Rule::CloseCrossesSma {
            direction: Direction::Above,
            period: 2,
        };
        // Raw verdicts: index 3 (1,1 -> 4) and index 5 (3 -> 9).
        let c = closes(&[1.0, 1.0, 1.0, 4.0, 3.0, 9.0]);
        assert!(verdict(&rule, &c[1..4]));
        assert!(verdict(&rule, &c[3..6]));
        assert!(signals(&rule, 0, &c[3..6]));
        assert!(signals(&rule, 1, &c[2..6]), "index 4 had no verdict");
        assert!(
            !signals(&rule, 2, &c[1..6]),
            "index 3 had one, within the cooldown of 2"
        );
    }
}
