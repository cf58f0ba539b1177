//! `shmkline backtest`: the same traders over the same feed in one process,
//! with no workers and no shared memory. Because a verdict is a pure function
//! of a candle and a fixed window before it, this is also the oracle that
//! `run` (and the chaos test, with workers killed at random) must match.
//!
//! The feed goes through the same [`Source`](crate::feed::Source) and
//! [`FeedWriter`] as in `run`, into a [`MemorySink`] instead of the segment,
//! so the closed candles of every series (aggregated ones included) are the
//! ones the workers see.

use std::io::Write;

use anyhow::{Context, Result};
use protocol::Interval;
use protocol::message::Signal;
use protocol::trader::TraderSpec;
use worker::judge::{Judge, Trader};

use crate::feed::FeedConfig;
use crate::feed::writer::{FeedWriter, MemorySink};
use crate::signal_line::SignalLine;

/// What a backtest replays.
#[derive(Debug, Clone)]
pub struct BacktestOptions {
    /// Traders.
    pub traders: Vec<TraderSpec>,
    /// The feed (finite).
    pub feed: FeedConfig,
    /// The intervals the store keeps.
    pub intervals: Vec<Interval>,
    /// The intervals built from 1-minute candles.
    pub aggregate: Vec<Interval>,
    /// The store's symbol capacity.
    pub max_symbols: u32,
}

/// Every series' candles after the whole feed, as `run` writes them.
pub fn load(opts: &BacktestOptions) -> Result<MemorySink> {
    if let FeedConfig::Synthetic { candles: None, .. } = opts.feed {
        anyhow::bail!("a backtest needs an end: pass --candles");
    }
    let mut source = opts.feed.source()?;
    let mut sink = MemorySink::new(opts.max_symbols as usize);
    let mut writer = FeedWriter::new(&opts.intervals, &opts.aggregate);
    for symbol in source.known_symbols() {
        writer.register(&mut sink, &symbol)?;
    }
    while crate::feed::write_batch(&mut source, &mut writer, &mut sink)?.is_some() {}
    if let Some(replay) = source.as_replay() {
        replay.bad_lines().log_summary();
        if writer.counters().candles_written == 0 {
            anyhow::bail!("the replay holds no usable candle (see the bad lines above)");
        }
    }
    tracing::info!(counters = ?writer.counters(), "backtest feed loaded");
    Ok(sink)
}

/// Writes every signal as a JSON line to `out`; returns how many.
pub fn backtest(opts: &BacktestOptions, out: &mut impl Write) -> Result<u64> {
    // The worker's evaluator, with every trader: one graph, its nodes shared.
    let mut judge = Judge::default();
    for spec in &opts.traders {
        let rule = protocol::admit::admit(spec)?;
        judge.add(Trader::new(spec.clone(), rule, 0))?;
    }
    let sink = load(opts)?;
    let mut emitted = 0;
    let mut hits: Vec<Signal> = Vec::new();
    for series in &sink.series {
        hits.clear();
        // The candles' absolute indices are their positions, as a worker
        // reads them from the ring: recursive indicators are anchored on them.
        judge.backtest_series(
            series.symbol.as_str(),
            series.interval,
            &series.closed(),
            &mut hits,
        );
        for signal in &hits {
            let mut line = Vec::with_capacity(256);
            SignalLine::new(signal, None).write_to(&mut line);
            line.push(b'\n');
            out.write_all(&line).context("writing a signal")?;
            emitted += 1;
        }
    }
    out.flush().context("writing signals")?;
    Ok(emitted)
}
