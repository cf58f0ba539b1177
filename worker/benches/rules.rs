//! Criterion benchmark of rule evaluation as a worker does it: a dozen rule
//! families (the ones `shmkline bench traders` runs) on 20 series, one new
//! candle per series per iteration, every rule judged on it, values and
//! recursive states shared through one memo. Beside it, the same candle
//! judged with a fresh memo per rule and series (what every value costs
//! when nothing is kept: the settled warm-up of each recursive indicator).
//!
//! `cargo bench -p shmkline-protocol --bench rules`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use protocol::Candle;
use protocol::rule::{Expr, parse};
use worker::point::{Memo, Point};
use worker::testkit::random_walk;

const SERIES: u32 = 20;
const CANDLES: usize = 40_000;

const RULES: [&str; 12] = [
    "rsi(9) < 22",
    "crosses_above(ema(close, 7), ema(close, 23))",
    "crosses_below(sma(close, 8), sma(close, 35))",
    "crosses_above(macd(9, 26, 9).hist, 0) and rsi(14) > 45",
    "crosses_above(close, bollinger(close, 18, 2.5).upper)",
    "high - low > 4 * atr(14)",
    "roc(close, 8) > 3 and volume > 2 * sma(volume, 20)",
    "crosses_above(close, highest(high, 25)[1])",
    "crosses_above(close, vwap(15)) and rsi(14) < 40",
    "stddev(close, 12) < 0.3 * sma(stddev(close, 20), 20)",
    "crosses_above(wma(close, 9), sma(close, 30)) and rsi(14) < 35",
    "(close - close[4]) / close[4] * 100 > 2.5",
];

fn rules(c: &mut Criterion) {
    let series: Vec<Vec<Candle>> = (0..SERIES)
        .map(|s| random_walk(CANDLES, u64::from(s) + 1))
        .collect();
    let exprs: Vec<Expr> = RULES
        .iter()
        .map(|r| parse(r).expect("a valid rule"))
        .collect();
    let first = exprs.iter().map(Expr::warmup).max().unwrap_or(0);
    let judge = |memo: &mut Memo, s: usize, at: usize| {
        memo.on_series(s as u32);
        for e in &exprs {
            black_box(Point::new(&series[s], 0, memo).value(e, at));
        }
    };
    let mut group = c.benchmark_group("one candle, 12 rules x 20 series");
    // Candle after candle, as a worker goes: `iter_custom` keeps the memo
    // and the position across samples (wrapping starts the memo afresh).
    let mut memo = Memo::new(1 << 16);
    let mut at = first;
    group.bench_function("kept states and values", |b| {
        b.iter_custom(|n| {
            let mut took = Duration::ZERO;
            for _ in 0..n {
                if at == CANDLES {
                    at = first;
                    memo = Memo::new(1 << 16);
                    for s in 0..SERIES as usize {
                        judge(&mut memo, s, at - 1);
                    }
                }
                let started = Instant::now();
                for s in 0..SERIES as usize {
                    judge(&mut memo, s, at);
                }
                took += started.elapsed();
                at += 1;
            }
            took
        })
    });
    let mut at = first;
    group.bench_function("baseline: nothing kept", |b| {
        b.iter(|| {
            for s in 0..SERIES as usize {
                judge(&mut Memo::new(64), s, at);
            }
            at = if at + 1 == CANDLES { first } else { at + 1 };
        })
    });
    group.finish();
}

criterion_group!(benches, rules);
criterion_main!(benches);
