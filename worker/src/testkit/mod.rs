//! Test support (the `testing` feature, never in a release build): the
//! reference series functions the evaluator is checked against, and the
//! candles rule tests and benchmarks judge.

pub mod series;

/// `n` one-minute candles of a deterministic random walk from 100 (steps
/// of up to 1, wicks of 0.5, volumes 1 to 100), the same for the same
/// `seed`: rule tests and benchmarks judge their rules on it.
pub fn random_walk(n: usize, seed: u64) -> Vec<protocol::Candle> {
    let mut rng = protocol::splitmix::SplitMix64::new(seed);
    let mut price = 100.0;
    (0..n)
        .map(|i| {
            let step = (rng.unit() - 0.5) * 2.0;
            let open = price;
            price = (price + step).max(1.0);
            protocol::Candle {
                open_time: i as i64 * 60_000,
                open,
                high: open.max(price) + 0.5,
                low: open.min(price) - 0.5,
                close: price,
                volume: 1.0 + rng.below(100) as f64,
            }
        })
        .collect()
}
