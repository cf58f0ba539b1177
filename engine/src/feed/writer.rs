//! Where every feed's candles go: [`FeedWriter`] checks each candle against
//! its series (order, repeats, gaps), writes it, and builds the configured
//! higher intervals from 1-minute candles. It writes through a [`Sink`]: the
//! shared-memory store in `run`, an in-memory copy in `backtest`, so both see
//! exactly the same sequence of writes and the same closed candles.

use std::collections::HashMap;

use protocol::control::WriterCounters;
use protocol::store::{StoreWriter, UpsertError, WriteError};
use protocol::{Candle, Interval, SymbolName};

use super::aggregate::Aggregator;
use crate::kline::{BadLine, Kline};

/// Where candles are written.
pub trait Sink {
    /// A series handle.
    type Series: Copy;
    /// The series of (`symbol`, `interval`), created on first use.
    fn series(
        &mut self,
        symbol: &SymbolName,
        interval: Interval,
    ) -> Result<Self::Series, WriteError>;
    /// Writes (in place if it has the latest open time, appended if newer).
    fn write(
        &mut self,
        series: Self::Series,
        candle: &Candle,
        closed: bool,
    ) -> Result<(), UpsertError>;
}

impl Sink for StoreWriter {
    type Series = protocol::store::SeriesId;

    fn series(
        &mut self,
        symbol: &SymbolName,
        interval: Interval,
    ) -> Result<Self::Series, WriteError> {
        let id = self.register_symbol(symbol)?;
        StoreWriter::series(self, id, interval)
    }

    #[inline]
    fn write(
        &mut self,
        series: Self::Series,
        candle: &Candle,
        closed: bool,
    ) -> Result<(), UpsertError> {
        if closed {
            self.upsert_closed(series, candle).map(drop)
        } else {
            self.upsert(series, candle).map(drop)
        }
    }
}

/// An in-memory store with no ring limit: the backtest's sink, and the
/// reference the tests compare the shared store with.
#[derive(Debug, Default)]
pub struct MemorySink {
    /// Every series, in creation order.
    pub series: Vec<MemorySeries>,
    index: HashMap<(SymbolName, Interval), usize>,
    /// Largest number of symbols (as the store's directory).
    pub max_symbols: usize,
}

/// One series' full history.
#[derive(Debug, Clone)]
pub struct MemorySeries {
    /// The symbol.
    pub symbol: SymbolName,
    /// The interval.
    pub interval: Interval,
    /// Candles in open-time order, each with its closed flag.
    pub candles: Vec<(Candle, bool)>,
}

impl MemorySeries {
    /// The candles a worker evaluates: closed ones, and any with a successor.
    pub fn closed(&self) -> Vec<Candle> {
        let n = self.candles.len();
        self.candles
            .iter()
            .enumerate()
            .filter(|(k, (_, closed))| *closed || k + 1 < n)
            .map(|(_, (c, _))| *c)
            .collect()
    }
}

impl MemorySink {
    /// A sink for at most `max_symbols` symbols.
    pub fn new(max_symbols: usize) -> Self {
        Self {
            max_symbols,
            ..Self::default()
        }
    }
}

impl Sink for MemorySink {
    type Series = usize;

    fn series(&mut self, symbol: &SymbolName, interval: Interval) -> Result<usize, WriteError> {
        if let Some(&k) = self.index.get(&(symbol.clone(), interval)) {
            return Ok(k);
        }
        let symbols = self
            .series
            .iter()
            .filter(|s| s.interval == interval)
            .count();
        if symbols >= self.max_symbols {
            return Err(WriteError::SymbolTableFull {
                capacity: self.max_symbols,
                symbol: symbol.to_string(),
            });
        }
        self.series.push(MemorySeries {
            symbol: symbol.clone(),
            interval,
            candles: Vec::new(),
        });
        self.index
            .insert((symbol.clone(), interval), self.series.len() - 1);
        Ok(self.series.len() - 1)
    }

    fn write(&mut self, series: usize, candle: &Candle, closed: bool) -> Result<(), UpsertError> {
        let s = self
            .series
            .get_mut(series)
            .ok_or(UpsertError::UnknownSeries(series as u32))?;
        if !candle.is_finite() {
            return Err(UpsertError::NonFinite {
                open_time: candle.open_time,
            });
        }
        match s.candles.last_mut() {
            Some(last) if last.0.open_time == candle.open_time => *last = (*candle, closed),
            Some(last) if last.0.open_time > candle.open_time => {
                return Err(UpsertError::Stale {
                    open_time: candle.open_time,
                    latest: last.0.open_time,
                });
            }
            _ => s.candles.push((*candle, closed)),
        }
        Ok(())
    }
}

/// What the writer did with a candle it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written.
    Written,
    /// The series already holds this candle, closed: nothing to do (a REST
    /// backfill overlapping the stream, a repeated recording line).
    Repeat,
}

#[derive(Debug, Clone, Copy)]
struct SeriesState<T> {
    id: T,
    last: Option<Candle>,
    last_closed: bool,
}

/// Per symbol: its fed series (by interval) and its aggregators.
#[derive(Debug)]
struct SymbolState<T> {
    fed: [Option<SeriesState<T>>; Interval::ALL.len()],
    aggregators: Vec<(Aggregator, T)>,
}

/// Checks and writes candles into a [`Sink`], building higher intervals.
#[derive(Debug)]
pub struct FeedWriter<T> {
    kept: Vec<Interval>,
    aggregate: Vec<Interval>,
    /// Bounded by the sink's symbol capacity: a symbol it refuses is not added.
    symbols: HashMap<SymbolName, SymbolState<T>>,
    counters: WriterCounters,
    /// Every candle written is also handed here (`--publish-candles`).
    tap: Option<crate::nats::candles::CandleTap>,
}

fn slot(interval: Interval) -> usize {
    Interval::ALL
        .iter()
        .position(|i| *i == interval)
        .unwrap_or_else(|| unreachable!("ALL lists every interval"))
}

/// A refusal: a bad candle (the line's fault) or a sink that cannot take more
/// (the configuration's fault: fatal).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The candle is bad: skip it and report it.
    #[error(transparent)]
    Bad(#[from] BadLine),
    /// The store cannot take the symbol.
    #[error(transparent)]
    Store(#[from] WriteError),
}

impl<T: Copy> FeedWriter<T> {
    /// Writes the intervals in `kept` (the store's), and builds `aggregate`
    /// (a subset of `kept`, each longer than 1m) from 1-minute candles.
    pub fn new(kept: &[Interval], aggregate: &[Interval]) -> Self {
        Self {
            kept: kept.to_vec(),
            aggregate: aggregate
                .iter()
                .copied()
                .filter(|i| *i != Interval::M1 && kept.contains(i))
                .collect(),
            symbols: HashMap::new(),
            counters: WriterCounters::default(),
            tap: None,
        }
    }

    /// Whether a batch may be written now: without a tap always; with one,
    /// while its queue holds a candle per symbol and interval (a finite
    /// feed waits for the publisher rather than have a candle dropped).
    pub fn tap_has_room(&self) -> bool {
        self.tap
            .as_ref()
            .is_none_or(|t| t.has_room(self.symbols.len().max(1) * self.kept.len()))
    }

    /// Hands every candle written from now on to `tap` too.
    pub fn tap(&mut self, tap: crate::nats::candles::CandleTap) {
        self.tap = Some(tap);
    }

    /// The counters so far.
    pub fn counters(&self) -> WriterCounters {
        self.counters
    }

    /// The latest open time and closed flag of a fed series, if it has one.
    pub fn latest(&self, symbol: &SymbolName, interval: Interval) -> Option<(i64, bool)> {
        let s = self.symbols.get(symbol)?.fed[slot(interval)]?;
        Some((s.last?.open_time, s.last_closed))
    }

    /// Registers `symbol`'s series (fed and aggregated) ahead of its first
    /// candle, so readers see it from the start.
    pub fn register<S: Sink<Series = T>>(
        &mut self,
        sink: &mut S,
        symbol: &SymbolName,
    ) -> Result<(), WriteError> {
        symbol_state(&mut self.symbols, &self.kept, &self.aggregate, sink, symbol).map(drop)
    }

    /// Checks and writes one candle (and the aggregates it changes); a
    /// candle written goes to the tap too, if there is one.
    pub fn apply<S: Sink<Series = T>>(
        &mut self,
        sink: &mut S,
        kline: &Kline,
    ) -> Result<Applied, Refused> {
        let applied = self.apply_untapped(sink, kline);
        if let (Ok(Applied::Written), Some(tap)) = (&applied, &self.tap) {
            tap.send(kline);
        }
        applied
    }

    fn apply_untapped<S: Sink<Series = T>>(
        &mut self,
        sink: &mut S,
        kline: &Kline,
    ) -> Result<Applied, Refused> {
        if self.aggregate.contains(&kline.interval) {
            return Err(BadLine::Aggregated(kline.interval).into());
        }
        if !self.kept.contains(&kline.interval) {
            return Err(BadLine::NotKept(kline.interval).into());
        }
        let Self {
            kept,
            aggregate,
            symbols,
            counters,
            ..
        } = self;
        let state = symbol_state(symbols, kept, aggregate, sink, &kline.symbol)?;
        let Some(series) = state.fed[slot(kline.interval)].as_mut() else {
            return Err(BadLine::NotKept(kline.interval).into());
        };
        let open = kline.candle.open_time;
        if let Some(last) = series.last {
            let latest = last.open_time;
            if open < latest {
                return Err(BadLine::Stale {
                    open_time: open,
                    latest,
                }
                .into());
            }
            if open == latest && series.last_closed {
                // A closed candle is final, but the exchange's own close
                // outranks one inferred earlier (a REST row read just after
                // its close time): different values are written, and counted.
                if !kline.closed || last == kline.candle {
                    counters.repeats += 1;
                    return Ok(Applied::Repeat);
                }
                counters.corrections += 1;
                tracing::warn!(symbol = %kline.symbol, interval = %kline.interval, open_time = open,
                    "a closed candle arrived again with other values: the newer ones are kept");
            }
            let len = kline.interval.millis() as i64;
            if open > latest + len {
                counters.gaps += 1;
                counters.missing_candles += ((open - latest) / len - 1) as u64;
                tracing::warn!(symbol = %kline.symbol, interval = %kline.interval, after = latest, next = open,
                    missing = (open - latest) / len - 1, "gap in the data: candles missing (kept as a gap, none invented)");
            }
        }
        sink.write(series.id, &kline.candle, kline.closed)
            .map_err(|e| match e {
                UpsertError::Stale { open_time, latest } => BadLine::Stale { open_time, latest },
                _ => BadLine::Inconsistent("a price or the volume is not finite"),
            })?;
        series.last = Some(kline.candle);
        series.last_closed = kline.closed;
        counters.candles_written += 1;
        counters.closed_written += u64::from(kline.closed);
        if kline.interval == Interval::M1 {
            for (agg, id) in &mut state.aggregators {
                let id = *id;
                let mut failed = None;
                agg.update(&kline.candle, kline.closed, |candle, closed| {
                    match sink.write(id, candle, closed) {
                        Ok(()) => counters.aggregated_written += 1,
                        Err(e) => failed = Some(e),
                    }
                });
                if let Some(e) = failed {
                    // Cannot happen: buckets only move forward and their
                    // values are built from finite, checked minutes.
                    tracing::error!(error = %e, symbol = %kline.symbol, interval = %agg.target(), "aggregated candle refused");
                }
            }
        }
        Ok(Applied::Written)
    }
}

/// `symbol`'s state, its series created in `sink` on first use.
fn symbol_state<'a, T: Copy, S: Sink<Series = T>>(
    symbols: &'a mut HashMap<SymbolName, SymbolState<T>>,
    kept: &[Interval],
    aggregate: &[Interval],
    sink: &mut S,
    symbol: &SymbolName,
) -> Result<&'a mut SymbolState<T>, WriteError> {
    if !symbols.contains_key(symbol) {
        let mut fed = [None; Interval::ALL.len()];
        for &interval in kept {
            if !aggregate.contains(&interval) {
                fed[slot(interval)] = Some(SeriesState {
                    id: sink.series(symbol, interval)?,
                    last: None,
                    last_closed: false,
                });
            }
        }
        let mut aggregators = Vec::with_capacity(aggregate.len());
        for &target in aggregate {
            aggregators.push((Aggregator::new(target), sink.series(symbol, target)?));
        }
        symbols.insert(symbol.clone(), SymbolState { fed, aggregators });
    }
    Ok(symbols
        .get_mut(symbol)
        .unwrap_or_else(|| unreachable!("inserted above")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kline(minute: i64, closed: bool) -> Kline {
        let open_time = 1_700_000_400_000 - 1_700_000_400_000 % 3_600_000 + minute * 60_000;
        Kline {
            symbol: SymbolName::new("BTCUSDT").expect("valid"),
            interval: Interval::M1,
            candle: Candle {
                open_time,
                open: 10.0,
                high: 12.0,
                low: 9.0,
                close: 11.0,
                volume: 1.0,
            },
            closed,
            at: open_time + 60_000,
        }
    }

    #[test]
    fn order_repeats_and_gaps_are_judged_per_series() {
        let mut sink = MemorySink::new(4);
        let mut w = FeedWriter::new(&[Interval::M1, Interval::M5], &[Interval::M5]);
        assert_eq!(
            w.apply(&mut sink, &kline(0, false)).expect("update"),
            Applied::Written
        );
        assert_eq!(
            w.apply(&mut sink, &kline(0, true)).expect("close"),
            Applied::Written
        );
        assert_eq!(
            w.apply(&mut sink, &kline(0, true)).expect("repeat"),
            Applied::Repeat
        );
        assert_eq!(
            w.apply(&mut sink, &kline(0, false)).expect("late update"),
            Applied::Repeat
        );
        let mut corrected = kline(0, true);
        corrected.candle.close = 11.5;
        assert_eq!(
            w.apply(&mut sink, &corrected).expect("correction"),
            Applied::Written
        );
        assert_eq!(sink.series[0].candles[0].0.close, 11.5);
        assert!(matches!(
            w.apply(&mut sink, &kline(3, true)),
            Ok(Applied::Written)
        ));
        assert!(matches!(
            w.apply(&mut sink, &kline(1, true)),
            Err(Refused::Bad(BadLine::Stale { .. }))
        ));
        let five = Kline {
            interval: Interval::M5,
            ..kline(5, true)
        };
        assert!(matches!(
            w.apply(&mut sink, &five),
            Err(Refused::Bad(BadLine::Aggregated(Interval::M5)))
        ));
        let c = w.counters();
        assert_eq!(
            (
                c.gaps,
                c.missing_candles,
                c.repeats,
                c.closed_written,
                c.corrections
            ),
            (1, 2, 2, 3, 1)
        );
        let m1 = &sink.series[0];
        assert_eq!(m1.candles.len(), 2, "no candle invented in the gap");
        let m5 = &sink.series[1];
        assert_eq!(m5.interval, Interval::M5);
        assert_eq!(m5.candles.len(), 1);
        assert_eq!(m5.candles[0].0.volume, 2.0);
    }

    #[test]
    fn a_full_store_is_a_store_error_not_a_bad_line() {
        let mut sink = MemorySink::new(1);
        let mut w = FeedWriter::new(&[Interval::M1], &[]);
        w.apply(&mut sink, &kline(0, true)).expect("first symbol");
        let other = Kline {
            symbol: SymbolName::new("ETHUSDT").expect("valid"),
            ..kline(0, true)
        };
        assert!(matches!(
            w.apply(&mut sink, &other),
            Err(Refused::Store(WriteError::SymbolTableFull { .. }))
        ));
    }
}
