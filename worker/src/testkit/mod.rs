//! Test support (the `testing` feature, never in a release build): the
//! reference series functions the evaluator is checked against, and the
//! candles rule tests and benchmarks judge.

pub mod series;

/// `n` one-minute candles of a deterministic random walk from 100 (steps
/// of up to 1, wicks of 0.5, volumes 1 to 100), the same for the same
/// `seed`: rule tests and benchmarks judge their rules on it.
pub fn random_walk(n: usize, seed: u64) -> Vec<protocol::Candle> {
    let mut state = seed;
    let mut price = 100.0;
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let step = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 2.0;
            let open = price;
            price = (price + step).max(1.0);
            protocol::Candle {
                open_time: i as i64 * 60_000,
                open,
                high: open.max(price) + 0.5,
                low: open.min(price) - 0.5,
                close: price,
                volume: 1.0 + (state % 100) as f64,
            }
        })
        .collect()
}
