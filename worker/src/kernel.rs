//! The recursive indicators (EMA, RSI, ATR, MACD) as state machines fed one
//! input at a time, written after TA-Lib's C code operation for operation.
//! The whole-series reference functions (`testkit::series`) are these fed
//! from the first defined value; the pointwise evaluator ([`crate::point`]) feeds
//! them from an anchor and keeps the state between candles, so a new candle
//! costs one step instead of a whole warm-up.
//!
//! Each `push` returns the indicator's value after that input, `NaN` while
//! it is still seeding. The same inputs in the same order give the same bits,
//! whether pushed in one go or across calls: that is what lets a worker step
//! a kept state while a replacement (or `backtest`) computes afresh.

/// TA-Lib's `TA_IS_ZERO`.
pub(crate) fn is_zero(v: f64) -> bool {
    -0.000_000_000_000_01 < v && v < 0.000_000_000_000_01
}

/// TA-Lib's `TA_IS_ZERO_OR_NEG`.
pub(crate) fn is_zero_or_neg(v: f64) -> bool {
    v < 0.000_000_000_000_01
}

/// TA-Lib's EMA smoothing for period `n`.
pub(crate) fn per_to_k(n: usize) -> f64 {
    2.0 / (n as f64 + 1.0)
}

/// Exponential moving average seeded with the SMA of its first `n` inputs
/// (TA_INT_EMA).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ema {
    n: usize,
    k: f64,
    seen: usize,
    /// The running total while seeding, then the average.
    prev: f64,
}

impl Ema {
    /// Period `n` (0: never defined).
    pub fn new(n: usize) -> Self {
        Self {
            n,
            k: per_to_k(n),
            seen: 0,
            prev: 0.0,
        }
    }

    /// One more input.
    pub fn push(&mut self, x: f64) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        if self.seen < self.n {
            self.prev += x;
            self.seen += 1;
            if self.seen < self.n {
                return f64::NAN;
            }
            self.prev /= self.n as f64;
        } else {
            self.prev = ((x - self.prev) * self.k) + self.prev;
        }
        self.prev
    }
}

/// Relative strength index with Wilder's smoothing (TA_RSI, unstable period 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rsi {
    n: usize,
    seen: usize,
    prev: f64,
    gain: f64,
    loss: f64,
}

impl Rsi {
    /// Period `n` (below 2: never defined, as TA-Lib).
    pub fn new(n: usize) -> Self {
        Self {
            n,
            seen: 0,
            prev: 0.0,
            gain: 0.0,
            loss: 0.0,
        }
    }

    /// Adds the change to `x` to the gain or the loss.
    fn add(&mut self, x: f64) {
        let d = x - self.prev;
        self.prev = x;
        if d < 0.0 {
            self.loss -= d;
        } else {
            self.gain += d;
        }
    }

    /// One more input.
    pub fn push(&mut self, x: f64) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        let nf = self.n as f64;
        self.seen += 1;
        if self.seen == 1 {
            self.prev = x;
            return f64::NAN;
        }
        if self.seen <= self.n + 1 {
            // The first n changes are summed, then averaged.
            self.add(x);
            if self.seen <= self.n {
                return f64::NAN;
            }
            self.loss /= nf;
            self.gain /= nf;
        } else {
            // TA-Lib's order: scale, add, divide.
            self.loss *= nf - 1.0;
            self.gain *= nf - 1.0;
            self.add(x);
            self.loss /= nf;
            self.gain /= nf;
        }
        let t = self.gain + self.loss;
        if is_zero(t) {
            0.0
        } else {
            100.0 * (self.gain / t)
        }
    }
}

/// TA_TRANGE of a candle after one that closed at `prev_close`.
pub(crate) fn true_range(high: f64, low: f64, prev_close: f64) -> f64 {
    let mut greatest = high - low;
    let v2 = (prev_close - high).abs();
    if v2 > greatest {
        greatest = v2;
    }
    let v3 = (prev_close - low).abs();
    if v3 > greatest {
        greatest = v3;
    }
    greatest
}

/// Average true range with Wilder's smoothing (TA_ATR): the first value is
/// the mean of the first `n` true ranges (from the second candle on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Atr {
    n: usize,
    seen: usize,
    prev_close: f64,
    prev: f64,
}

impl Atr {
    /// Period `n` (0: never defined).
    pub fn new(n: usize) -> Self {
        Self {
            n,
            seen: 0,
            prev_close: 0.0,
            prev: 0.0,
        }
    }

    /// One more candle.
    pub fn push(&mut self, high: f64, low: f64, close: f64) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        self.seen += 1;
        let prev_close = std::mem::replace(&mut self.prev_close, close);
        if self.seen == 1 {
            return f64::NAN;
        }
        let tr = true_range(high, low, prev_close);
        let nf = self.n as f64;
        if self.seen <= self.n + 1 {
            self.prev += tr;
            if self.seen <= self.n {
                return f64::NAN;
            }
            self.prev /= nf;
        } else {
            self.prev *= nf - 1.0;
            self.prev += tr;
            self.prev /= nf;
        }
        self.prev
    }
}

/// MACD (TA_MACD): both EMAs are seeded at the slow one's first value (the
/// fast one over the `fast` inputs before it), the signal is the EMA of the
/// line, and nothing is defined before the signal is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Macd {
    fast: Ema,
    slow: Ema,
    signal: Ema,
    /// Inputs the fast EMA ignores: `slow - fast`.
    skip: usize,
    seen: usize,
}

impl Macd {
    /// Periods as TA-Lib takes them (a slow period below the fast one is
    /// swapped with it; 0 anywhere: never defined).
    pub fn new(fast: usize, slow: usize, signal: usize) -> Self {
        let (fast, slow) = if slow < fast {
            (slow, fast)
        } else {
            (fast, slow)
        };
        let signal = if fast == 0 { 0 } else { signal };
        Self {
            fast: Ema::new(fast),
            slow: Ema::new(slow),
            signal: Ema::new(signal),
            skip: slow - fast,
            seen: 0,
        }
    }

    /// One more input: line, signal, histogram.
    pub fn push(&mut self, x: f64) -> [f64; 3] {
        const NONE: [f64; 3] = [f64::NAN; 3];
        self.seen += 1;
        let slow = self.slow.push(x);
        let fast = if self.seen > self.skip {
            self.fast.push(x)
        } else {
            f64::NAN
        };
        if slow.is_nan() {
            return NONE;
        }
        let line = fast - slow;
        let signal = self.signal.push(line);
        if signal.is_nan() {
            return NONE;
        }
        [line, signal, line - signal]
    }
}

/// The kernels over exactly the values an indicator reads, `x(0)` the
/// oldest: no state, so no anchor.
pub mod window {
    use super::is_zero_or_neg;

    /// Mean of `x(0..n)`.
    pub fn sma(n: usize, x: impl Fn(usize) -> f64) -> f64 {
        let mut total = 0.0;
        for j in 0..n {
            total += x(j);
        }
        total / n as f64
    }

    /// Weights 1..n, the newest heaviest (TA_WMA's weights).
    pub fn wma(n: usize, x: impl Fn(usize) -> f64) -> f64 {
        let mut sum = 0.0;
        for j in 0..n {
            sum += x(j) * (j + 1) as f64;
        }
        sum / ((n * (n + 1)) >> 1) as f64
    }

    /// Population standard deviation, two-pass (as the `ta-lib` wheel's).
    pub fn stddev(n: usize, x: impl Fn(usize) -> f64) -> f64 {
        let nf = n as f64;
        let mean = sma(n, &x);
        let mut var = 0.0;
        for j in 0..n {
            let d = x(j) - mean;
            var += d * d;
        }
        var /= nf;
        if is_zero_or_neg(var) { 0.0 } else { var.sqrt() }
    }

    /// (upper, middle, lower) at `k` deviations.
    pub fn bollinger(n: usize, k: f64, x: impl Fn(usize) -> f64) -> (f64, f64, f64) {
        let middle = sma(n, &x);
        let dev = stddev(n, &x);
        let width = if k == 1.0 { dev } else { dev * k };
        (middle + width, middle, middle - width)
    }

    /// Rate of change in percent from `x(0)` to `x(n)` (TA_ROC).
    pub fn roc(n: usize, x: impl Fn(usize) -> f64) -> f64 {
        let (prev, now) = (x(0), x(n));
        if prev != 0.0 {
            ((now / prev) - 1.0) * 100.0
        } else {
            0.0
        }
    }

    /// Largest of `x(0..n)`.
    pub fn highest(n: usize, x: impl Fn(usize) -> f64) -> f64 {
        (0..n).map(x).fold(f64::NEG_INFINITY, f64::max)
    }

    /// Smallest of `x(0..n)`.
    pub fn lowest(n: usize, x: impl Fn(usize) -> f64) -> f64 {
        (0..n).map(x).fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_then_steps() {
        let mut e = Ema::new(3);
        let out: Vec<f64> = [1.0, 2.0, 3.0, 4.0].iter().map(|&x| e.push(x)).collect();
        assert!(out[0].is_nan() && out[1].is_nan());
        assert_eq!(out[2..], [2.0, 3.0]);
        let mut r = Rsi::new(2);
        let out: Vec<f64> = [1.0, 2.0, 3.0, 2.0].iter().map(|&x| r.push(x)).collect();
        assert!(out[1].is_nan());
        assert_eq!(out[2], 100.0);
        // Gain 1, loss 0, then (1*1 + 0)/2, (0*1 + 1)/2: 50%.
        assert_eq!(out[3], 50.0);
        let mut a = Atr::new(1);
        assert!(a.push(2.0, 1.0, 1.5).is_nan());
        assert_eq!(a.push(3.0, 2.5, 3.0), 1.5, "the gap up to the high");
        let mut m = Macd::new(0, 3, 2);
        assert!((0..10).all(|_| m.push(1.0)[0].is_nan()), "period 0");
        let mut rsi1 = Rsi::new(1);
        assert!((0..10).all(|_| rsi1.push(1.0).is_nan()), "period below 2");
    }

    #[test]
    fn macd_is_defined_once_its_signal_is() {
        let mut m = Macd::new(12, 26, 9);
        let all: Vec<[f64; 3]> = (0..200)
            .map(|i| m.push(100.0 + (i as f64 * 0.37).sin()))
            .collect();
        // The slow EMA's first value at 25, the signal's 8 lines later.
        assert!(all[32].iter().all(|v| v.is_nan()));
        assert!(all[33..].iter().flatten().all(|v| v.is_finite()));
        assert_eq!(all[50][2], all[50][0] - all[50][1]);
    }
}
