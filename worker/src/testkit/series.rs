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

use crate::kernel::{self, is_zero_or_neg};

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

/// Exponential moving average (TA_EMA).
pub fn ema(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        let mut e = kernel::Ema::new(n);
        for (o, &v) in out.iter_mut().zip(x) {
            *o = e.push(v);
        }
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

/// Relative strength index, Wilder's smoothing (TA_RSI).
pub fn rsi(x: &[f64], n: usize) -> Vec<f64> {
    on_defined(x, |x, out| {
        let mut r = kernel::Rsi::new(n);
        for (o, &v) in out.iter_mut().zip(x) {
            *o = r.push(v);
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

/// Average true range, Wilder's smoothing (TA_ATR).
pub fn atr(high: &[f64], low: &[f64], close: &[f64], n: usize) -> Vec<f64> {
    let mut a = kernel::Atr::new(n);
    high.iter()
        .zip(low)
        .zip(close)
        .map(|((&h, &l), &c)| a.push(h, l, c))
        .collect()
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
    let mut out = [
        vec![f64::NAN; x.len()],
        vec![f64::NAN; x.len()],
        vec![f64::NAN; x.len()],
    ];
    let first = x.iter().position(|v| !v.is_nan()).unwrap_or(x.len());
    let mut m = kernel::Macd::new(fast, slow, signal);
    for (i, &v) in x.iter().enumerate().skip(first) {
        let [line, sig, hist] = m.push(v);
        (out[0][i], out[1][i], out[2][i]) = (line, sig, hist);
    }
    out
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
