//! `shmkline backtest`: the same traders over the same feed in one process,
//! with no workers and no shared memory. Because a verdict is a pure function
//! of a candle and a fixed window before it, this is also the oracle that
//! `run` (and the chaos test, with workers killed at random) must match.

use std::io::Write;

use anyhow::{Context, Result};
use protocol::Interval;
use protocol::message::Signal;
use protocol::trader::{Symbols, TraderSpec, signals};

use crate::run::feed::SymbolStream;
use crate::run::signal_json;

/// What a backtest replays.
#[derive(Debug, Clone)]
pub struct BacktestOptions {
    /// Traders.
    pub traders: Vec<TraderSpec>,
    /// Synthetic feed seed.
    pub seed: u64,
    /// Synthetic symbols.
    pub symbols: usize,
    /// Candles per symbol.
    pub candles: u64,
}

/// Writes every signal as a JSON line to `out`; returns how many.
pub fn backtest(opts: &BacktestOptions, out: &mut impl Write) -> Result<u64> {
    let compiled = opts
        .traders
        .iter()
        .map(|t| t.compile().map(|rule| (t, rule)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut emitted = 0;
    for k in 0..opts.symbols {
        let mut stream = SymbolStream::new(opts.seed, k);
        let candles: Vec<_> = (0..opts.candles).map(|_| stream.next_candle()).collect();
        let symbol = stream.name.to_string();
        for (spec, rule) in &compiled {
            // The synthetic feed has 1-minute candles only.
            if spec.interval != Interval::M1 {
                continue;
            }
            if let Symbols::List(list) = &spec.symbols
                && !list.contains(&symbol)
            {
                continue;
            }
            let window = rule.lookback() + spec.cooldown as usize;
            for end in window..=candles.len() {
                if signals(rule, spec.cooldown as usize, &candles[end - window..end]) {
                    let candle = candles[end - 1];
                    let signal = Signal {
                        trader: spec.id.clone(),
                        symbol: symbol.clone(),
                        interval: spec.interval,
                        open_time: candle.open_time,
                        close: candle.close,
                        labels: spec.labels.clone(),
                    };
                    writeln!(out, "{}", signal_json(&signal, None)).context("writing a signal")?;
                    emitted += 1;
                }
            }
        }
    }
    out.flush().context("writing signals")?;
    Ok(emitted)
}
