//! Indicators over whole series, written after TA-Lib's C code (1.x, default
//! compatibility, unstable period 0) operation for operation, so a series
//! computed here matches TA-Lib's to the last bits, not just to a tolerance:
//! SMA and STDDEV with running sums, EMA seeded with the SMA of its first n
//! values, Wilder's RSI and ATR, MACD with TA-Lib's aligned fast EMA, Bollinger
//! bands from the SMA and the population standard deviation.
//!
//! Every function returns a series as long as its input, `NaN` where the
//! indicator is not defined yet (its warm-up, or a warm-up of its input: the
//! indicator then starts at its input's first defined value, as TA-Lib does
//! when handed the defined part).

/// TA-Lib's `TA_IS_ZERO`.
fn is_zero(v: f64) -> bool {
    -0.000_000_000_000_01 < v && v < 0.000_000_000_000_01
}

/// TA-Lib's `TA_IS_ZERO_OR_NEG`.
fn is_zero_or_neg(v: f64) -> bool {
    v < 0.000_000_000_000_01
}

/// Runs `f` on the defined suffix of `x` (after its leading NaNs) and puts
/// the result back in place.
fn on_defined(x: &[f64], f: impl FnOnce(&[f64], &mut [f64])) -> Vec<f64> {
    let mut out = vec![f64::NAN; x.len()];
    let first = x.iter().position(|v| !v.is_nan()).unwrap_or(x.len());
    f(&x[first..], &mut out[first..]);
    out
}

/// Simple moving average (TA_SMA).
pub fn sma(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        if n == 0 || x.len() < n {
            return;
        }
        let mut total = 0.0;
        for v in &x[..n - 1] {
            total += v;
        }
        for i in n - 1..x.len() {
            total += x[i];
            out[i] = total / n as f64;
            total -= x[i + 1 - n];
        }
    })
}

/// Exponential moving average seeded with the SMA of the first n values
/// (TA_EMA / TA_INT_EMA), with smoothing `k`.
fn ema_k(x: &[f64], n: usize, k: f64, out: &mut [f64], start: usize) {
    // TA_INT_EMA from `start` (>= n - 1): the seed is the SMA of the n
    // values ending at `start`.
    if n == 0 || x.len() <= start || start + 1 < n {
        return;
    }
    let mut today = start + 1 - n;
    let mut total = 0.0;
    for _ in 0..n {
        total += x[today];
        today += 1;
    }
    let mut prev = total / n as f64;
    out[start] = prev;
    while today < x.len() {
        prev = ((x[today] - prev) * k) + prev;
        out[today] = prev;
        today += 1;
    }
}

fn per_to_k(n: usize) -> f64 {
    2.0 / (n as f64 + 1.0)
}

/// Exponential moving average (TA_EMA).
pub fn ema(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        ema_k(x, n, per_to_k(n), out, n.saturating_sub(1))
    })
}

/// Weighted moving average, weights 1..n (TA_WMA).
pub fn wma(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        if n == 0 || x.len() < n {
            return;
        }
        let divider = ((n * (n + 1)) >> 1) as f64;
        let (mut sub, mut sum) = (0.0, 0.0);
        for (i, v) in x[..n - 1].iter().enumerate() {
            sub += v;
            sum += v * (i + 1) as f64;
        }
        let mut trailing = 0.0;
        for i in n - 1..x.len() {
            let v = x[i];
            sub += v;
            sub -= trailing;
            sum += v * n as f64;
            trailing = x[i + 1 - n];
            out[i] = sum / divider;
            sum -= sub;
        }
    })
}

/// Wilder's average gain and loss (TA_RSI's state).
struct Wilder {
    n: f64,
    prev: f64,
    gain: f64,
    loss: f64,
}

impl Wilder {
    /// The averages over the first `n` changes of `x` (needs `n + 1` values).
    fn start(x: &[f64], n: usize) -> Self {
        let mut w = Self {
            n: n as f64,
            prev: x[0],
            gain: 0.0,
            loss: 0.0,
        };
        for &v in &x[1..=n] {
            w.add(v);
        }
        w.loss /= w.n;
        w.gain /= w.n;
        w
    }

    /// Adds the change to `v` to the gain or the loss.
    fn add(&mut self, v: f64) {
        let d = v - self.prev;
        self.prev = v;
        if d < 0.0 {
            self.loss -= d;
        } else {
            self.gain += d;
        }
    }

    /// One more value, smoothed (TA-Lib's order: scale, add, divide).
    fn step(&mut self, v: f64) {
        self.loss *= self.n - 1.0;
        self.gain *= self.n - 1.0;
        self.add(v);
        self.loss /= self.n;
        self.gain /= self.n;
    }

    fn rsi(&self) -> f64 {
        let t = self.gain + self.loss;
        if is_zero(t) {
            0.0
        } else {
            100.0 * (self.gain / t)
        }
    }
}

/// Relative strength index, Wilder's smoothing (TA_RSI).
pub fn rsi(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        if n < 2 || x.len() <= n {
            return;
        }
        let mut w = Wilder::start(x, n);
        out[n] = w.rsi();
        for i in n + 1..x.len() {
            w.step(x[i]);
            out[i] = w.rsi();
        }
    })
}

/// Population variance of each window of n, two-pass (mean first, then the
/// squared deviations). TA-Lib 0.4 kept running sums of x and x², which
/// loses about eight digits on prices near 50,000; the TA-Lib of the
/// `ta-lib` wheel (0.6 and later) agrees with the two-pass value to 1e-12,
/// and so does this.
fn variance(x: &[f64], n: usize, out: &mut [f64]) {
    if n == 0 || x.len() < n {
        return;
    }
    let nf = n as f64;
    for i in n - 1..x.len() {
        let w = &x[i + 1 - n..=i];
        let mean = w.iter().sum::<f64>() / nf;
        out[i] = w.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / nf;
    }
}

/// Population standard deviation (TA_STDDEV, one deviation).
pub fn stddev(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        variance(x, n, out);
        for v in out.iter_mut().skip(n.saturating_sub(1)) {
            *v = if is_zero_or_neg(*v) { 0.0 } else { v.sqrt() };
        }
    })
}

/// Rate of change in percent (TA_ROC).
pub fn roc(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        for i in n..x.len() {
            let prev = x[i - n];
            out[i] = if prev != 0.0 {
                ((x[i] / prev) - 1.0) * 100.0
            } else {
                0.0
            };
        }
    })
}

/// Highest value of the last n (TA_MAX).
pub fn highest(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        for i in n.saturating_sub(1)..x.len() {
            out[i] = x[i + 1 - n..=i]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
        }
    })
}

/// Lowest value of the last n (TA_MIN).
pub fn lowest(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        for i in n.saturating_sub(1)..x.len() {
            out[i] = x[i + 1 - n..=i]
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
        }
    })
}

/// The true range of candle `i` (>= 1), as TA_TRANGE computes it.
fn true_range(high: &[f64], low: &[f64], close: &[f64], i: usize) -> f64 {
    let (h, l, c) = (high[i], low[i], close[i - 1]);
    let mut greatest = h - l;
    let v2 = (c - h).abs();
    if v2 > greatest {
        greatest = v2;
    }
    let v3 = (c - l).abs();
    if v3 > greatest {
        greatest = v3;
    }
    greatest
}

/// Average true range, Wilder's smoothing (TA_ATR).
pub fn atr(high: &[f64], low: &[f64], close: &[f64], n: usize) -> Vec<f64> {
    let len = close.len().min(high.len()).min(low.len());
    let mut out = vec![f64::NAN; len];
    if n == 0 || len <= n {
        return out;
    }
    let tr = |i: usize| true_range(high, low, close, i);
    // The first ATR is the SMA of TR[1..=n] (TA_INT_SMA's running sum).
    let mut total = 0.0;
    for i in 1..=n {
        total += tr(i);
    }
    let nf = n as f64;
    let mut prev = total / nf;
    out[n] = prev;
    for (i, slot) in out.iter_mut().enumerate().skip(n + 1) {
        prev *= nf - 1.0;
        prev += tr(i);
        prev /= nf;
        *slot = prev;
    }
    out
}

/// Volume-weighted average of the typical price (high + low + close) / 3
/// over the last n candles. (TA-Lib has no VWAP; this is the usual rolling one.)
pub fn vwap(high: &[f64], low: &[f64], close: &[f64], volume: &[f64], n: usize) -> Vec<f64> {
    let len = close.len().min(high.len()).min(low.len()).min(volume.len());
    let mut out = vec![f64::NAN; len];
    for (i, slot) in out.iter_mut().enumerate().skip(n.saturating_sub(1)) {
        let (mut pv, mut v) = (0.0, 0.0);
        for j in i + 1 - n..=i {
            pv += (high[j] + low[j] + close[j]) / 3.0 * volume[j];
            v += volume[j];
        }
        *slot = if v > 0.0 { pv / v } else { f64::NAN };
    }
    out
}

/// MACD line, signal and histogram (TA_MACD): both EMAs start at index
/// slow - 1, the fast one seeded with the SMA of the `fast` values ending
/// there; all three outputs start at slow + signal - 2.
pub fn macd(x: &[f64], fast: usize, slow: usize, signal: usize) -> [Vec<f64>; 3] {
    let mut line = vec![f64::NAN; x.len()];
    let mut sig = vec![f64::NAN; x.len()];
    let mut hist = vec![f64::NAN; x.len()];
    let first = x.iter().position(|v| !v.is_nan()).unwrap_or(x.len());
    let x = &x[first..];
    let (fast, slow) = if slow < fast {
        (slow, fast)
    } else {
        (fast, slow)
    };
    if fast == 0 || signal == 0 || x.len() < slow + signal - 1 {
        return [line, sig, hist];
    }
    let mut slow_ema = vec![f64::NAN; x.len()];
    let mut fast_ema = vec![f64::NAN; x.len()];
    ema_k(x, slow, per_to_k(slow), &mut slow_ema, slow - 1);
    ema_k(x, fast, per_to_k(fast), &mut fast_ema, slow - 1);
    let diff: Vec<f64> = (slow - 1..x.len())
        .map(|i| fast_ema[i] - slow_ema[i])
        .collect();
    let mut diff_sig = vec![f64::NAN; diff.len()];
    ema_k(&diff, signal, per_to_k(signal), &mut diff_sig, signal - 1);
    for j in signal - 1..diff.len() {
        let i = first + slow - 1 + j;
        line[i] = diff[j];
        sig[i] = diff_sig[j];
        hist[i] = diff[j] - diff_sig[j];
    }
    [line, sig, hist]
}

/// Bollinger bands (TA_BBANDS, SMA middle, population deviation, the same
/// width both ways): upper, middle, lower.
pub fn bollinger(x: &[f64], n: usize, k: f64) -> [Vec<f64>; 3] {
    let middle = sma(x, n);
    let mut upper = vec![f64::NAN; x.len()];
    let mut lower = vec![f64::NAN; x.len()];
    let first = x.iter().position(|v| !v.is_nan()).unwrap_or(x.len());
    if n == 0 || x.len() < first + n {
        return [upper, middle, lower];
    }
    let mut var = vec![f64::NAN; x.len()];
    variance(&x[first..], n, &mut var[first..]);
    for i in first + n - 1..x.len() {
        let dev = if is_zero_or_neg(var[i]) {
            0.0
        } else {
            var[i].sqrt()
        };
        let width = if k == 1.0 { dev } else { dev * k };
        upper[i] = middle[i] + width;
        lower[i] = middle[i] - width;
    }
    [upper, middle, lower]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_series_are_all_undefined_and_nothing_panics() {
        let x = [1.0, 2.0];
        for s in [
            sma(&x, 5),
            ema(&x, 5),
            wma(&x, 5),
            rsi(&x, 5),
            stddev(&x, 5),
            roc(&x, 5),
            highest(&x, 5),
            lowest(&x, 5),
        ] {
            assert!(s.iter().all(|v| v.is_nan()));
        }
        assert!(atr(&x, &x, &x, 5).iter().all(|v| v.is_nan()));
        assert!(macd(&x, 2, 3, 2).iter().flatten().all(|v| v.is_nan()));
        assert!(sma(&[], 3).is_empty());
    }

    #[test]
    fn hand_checked_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(sma(&x, 3)[2..], [2.0, 3.0, 4.0]);
        // Seed 2 (SMA of 1,2,3), then k = 0.5: 3, 4.
        assert_eq!(ema(&x, 3)[2..], [2.0, 3.0, 4.0]);
        // (1*1 + 2*2 + 3*3) / 6.
        assert_eq!(wma(&x, 3)[2], 14.0 / 6.0);
        assert_eq!(rsi(&x, 2)[2], 100.0);
        assert_eq!(highest(&x, 2)[4], 5.0);
        assert_eq!(lowest(&x, 2)[4], 4.0);
        assert_eq!(roc(&x, 1)[1], 100.0);
        // Population deviation of 1, 2, 3.
        assert!((stddev(&x, 3)[2] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        // Indicators of indicators start where their input is defined.
        let e = ema(&sma(&x, 2), 2);
        assert!(e[1].is_nan() && e[2] == 2.0);
    }
}

/// The last values only, without building the series. The input is exactly
/// the indicator's span. EMA, RSI, ATR, ROC, the deviation and the extremes
/// run the same operations in the same order as the series functions above
/// (the same bits as their last element); SMA and WMA sum their n values
/// afresh where the series keep running totals, so they agree to rounding
/// (about 1e-16 relative), not to the bit. `run` and `backtest` both use
/// these, so they agree with each other exactly.
pub mod last {
    use super::{Wilder, is_zero_or_neg, per_to_k, true_range};

    /// [`super::sma`] over exactly `n` values.
    pub fn sma(x: &[f64]) -> f64 {
        let mut total = 0.0;
        for v in x {
            total += v;
        }
        total / x.len() as f64
    }

    /// [`super::ema`]: seed over the first `n`, then the rest.
    pub fn ema(x: &[f64], n: usize) -> f64 {
        if n == 0 || x.len() < n {
            return f64::NAN;
        }
        let k = per_to_k(n);
        let mut prev = sma(&x[..n]);
        for v in &x[n..] {
            prev = ((v - prev) * k) + prev;
        }
        prev
    }

    /// [`super::wma`] over exactly `n` values.
    pub fn wma(x: &[f64]) -> f64 {
        let n = x.len();
        let mut sum = 0.0;
        for (i, v) in x[..n - 1].iter().enumerate() {
            sum += v * (i + 1) as f64;
        }
        sum += x[n - 1] * n as f64;
        sum / ((n * (n + 1)) >> 1) as f64
    }

    /// [`super::rsi`].
    pub fn rsi(x: &[f64], n: usize) -> f64 {
        if n < 2 || x.len() <= n {
            return f64::NAN;
        }
        let mut w = Wilder::start(x, n);
        for &v in &x[n + 1..] {
            w.step(v);
        }
        w.rsi()
    }

    /// The population deviation of exactly `n` values, as [`super::stddev`].
    pub fn stddev(x: &[f64]) -> f64 {
        let nf = x.len() as f64;
        let mean = x.iter().sum::<f64>() / nf;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / nf;
        if is_zero_or_neg(var) { 0.0 } else { var.sqrt() }
    }

    /// [`super::bollinger`]'s band over exactly `n` values: (upper, middle, lower).
    pub fn bollinger(x: &[f64], k: f64) -> (f64, f64, f64) {
        let middle = sma(x);
        let dev = stddev(x);
        let width = if k == 1.0 { dev } else { dev * k };
        (middle + width, middle, middle - width)
    }

    /// [`super::roc`] from the first to the last of `x`.
    pub fn roc(x: &[f64]) -> f64 {
        let (prev, now) = (x[0], x[x.len() - 1]);
        if prev != 0.0 {
            ((now / prev) - 1.0) * 100.0
        } else {
            0.0
        }
    }

    /// [`super::atr`] over high, low, close of the same `n + extra + 1` candles.
    pub fn atr(high: &[f64], low: &[f64], close: &[f64], n: usize) -> f64 {
        let len = close.len();
        if n == 0 || len <= n {
            return f64::NAN;
        }
        let tr = |i: usize| true_range(high, low, close, i);
        let mut total = 0.0;
        for i in 1..=n {
            total += tr(i);
        }
        let nf = n as f64;
        let mut prev = total / nf;
        for i in n + 1..len {
            prev *= nf - 1.0;
            prev += tr(i);
            prev /= nf;
        }
        prev
    }
}
