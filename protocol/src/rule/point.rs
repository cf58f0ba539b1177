//! Evaluation candle by candle, with values shared between traders.
//!
//! The value of an expression at a candle depends only on the candles its
//! warm-up covers: an indicator's value at candle `i` is the indicator
//! computed over its source's values at `i - span ..= i` (each of those, if
//! the source is itself an indicator, again over its own span). So a
//! verdict is the same whatever window it is read from, as long as the
//! window holds the warm-up, and an indicator's value at a candle is the
//! same for every trader that uses it. A [`Memo`] keyed by (indicator
//! digest, absolute candle index) lets the traders of a worker that judge
//! the same series share those values instead of each recomputing them.

use std::collections::HashMap;

use super::indicators as ta;
use super::{BandPart, Expr, Field, Indicator, MacdPart};
use crate::candle::Candle;

/// Values computed so far, by (indicator digest, absolute candle index).
pub trait Memo {
    /// A value computed before.
    fn get(&self, key: u64, at: u64) -> Option<f64>;
    /// Keeps a value.
    fn put(&mut self, key: u64, at: u64, value: f64);
}

/// A memo that keeps nothing.
#[derive(Debug, Default)]
pub struct NoMemo;

impl Memo for NoMemo {
    fn get(&self, _: u64, _: u64) -> Option<f64> {
        None
    }

    fn put(&mut self, _: u64, _: u64, _: f64) {}
}

/// A bounded memo: past [`MapMemo::capacity`] entries it starts over (the
/// values are recomputed, never wrong).
#[derive(Debug)]
pub struct MapMemo {
    map: HashMap<(u64, u64), f64>,
    capacity: usize,
}

impl MapMemo {
    /// A memo of at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity,
        }
    }

    /// Forgets everything (keeps the allocation).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Memo for MapMemo {
    fn get(&self, key: u64, at: u64) -> Option<f64> {
        self.map.get(&(key, at)).copied()
    }

    fn put(&mut self, key: u64, at: u64, value: f64) {
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert((key, at), value);
    }
}

/// FNV-1a, 64 bits.
fn digest(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Gives every indicator of `e` the digest of its canonical text.
pub fn assign_keys(e: &mut Expr) {
    match e {
        Expr::Num(_) | Expr::Field(_) => {}
        Expr::Back(x, _) | Expr::Neg(x) | Expr::Not(x) => assign_keys(x),
        Expr::Arith(_, a, b)
        | Expr::Cmp(_, a, b)
        | Expr::And(a, b)
        | Expr::Or(a, b)
        | Expr::Cross(_, a, b) => {
            assign_keys(a);
            assign_keys(b);
        }
        Expr::Ind(ind) => {
            if let Some(src) = ind.kind.source_mut() {
                assign_keys(src);
            }
            let canonical = e.to_string();
            if let Expr::Ind(ind) = e {
                ind.key = digest(&canonical);
            }
        }
    }
}

fn truth(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn field(c: &Candle, f: Field) -> f64 {
    match f {
        Field::Open => c.open,
        Field::High => c.high,
        Field::Low => c.low,
        Field::Close => c.close,
        Field::Volume => c.volume,
    }
}

/// Evaluates expressions at candles of a window.
pub struct Point<'a, M: Memo> {
    window: &'a [Candle],
    /// Absolute index (in its series) of `window[0]`.
    base: u64,
    memo: &'a mut M,
}

impl<'a, M: Memo> Point<'a, M> {
    /// Over `window`, whose first candle has absolute index `base`.
    pub fn new(window: &'a [Candle], base: u64, memo: &'a mut M) -> Self {
        Self { window, base, memo }
    }

    /// The value of `e` at window position `i` (conditions as 1.0 / 0.0),
    /// NaN when the window does not hold its warm-up.
    pub fn value(&mut self, e: &Expr, i: usize) -> f64 {
        let Some(candle) = self.window.get(i) else {
            return f64::NAN;
        };
        let both = |p: &mut Self, a: &Expr, b: &Expr| (p.value(a, i), p.value(b, i));
        let defined = |x: f64, y: f64, f: &dyn Fn(f64, f64) -> f64| {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else {
                f(x, y)
            }
        };
        match e {
            Expr::Num(v) => *v,
            Expr::Field(f) => field(candle, *f),
            Expr::Back(x, k) => match i.checked_sub(*k) {
                Some(j) => self.value(x, j),
                None => f64::NAN,
            },
            Expr::Neg(x) => -self.value(x, i),
            Expr::Arith(op, a, b) => {
                let (x, y) = both(self, a, b);
                defined(x, y, &|x, y| match *op {
                    "+" => x + y,
                    "-" => x - y,
                    "*" => x * y,
                    _ => x / y,
                })
            }
            Expr::Cmp(op, a, b) => {
                let (x, y) = both(self, a, b);
                defined(x, y, &|x, y| {
                    truth(match *op {
                        "<" => x < y,
                        "<=" => x <= y,
                        ">" => x > y,
                        ">=" => x >= y,
                        "==" => x == y,
                        _ => x != y,
                    })
                })
            }
            Expr::And(a, b) => {
                let (x, y) = both(self, a, b);
                defined(x, y, &|x, y| truth(x == 1.0 && y == 1.0))
            }
            Expr::Or(a, b) => {
                let (x, y) = both(self, a, b);
                defined(x, y, &|x, y| truth(x == 1.0 || y == 1.0))
            }
            Expr::Not(x) => {
                let v = self.value(x, i);
                if v.is_nan() { v } else { truth(v != 1.0) }
            }
            Expr::Cross(above, a, b) => {
                if i == 0 {
                    return f64::NAN;
                }
                let (a0, b0) = (self.value(a, i - 1), self.value(b, i - 1));
                let (a1, b1) = (self.value(a, i), self.value(b, i));
                if [a0, b0, a1, b1].iter().any(|v| v.is_nan()) {
                    return f64::NAN;
                }
                truth(if *above {
                    a0 <= b0 && a1 > b1
                } else {
                    a0 >= b0 && a1 < b1
                })
            }
            Expr::Ind(ind) => {
                let at = self.base + i as u64;
                if let Some(v) = self.memo.get(ind.key, at) {
                    return v;
                }
                let v = self.indicator(&ind.kind, i);
                self.memo.put(ind.key, at, v);
                v
            }
        }
    }

    fn indicator(&mut self, kind: &Indicator, i: usize) -> f64 {
        let span = kind.span();
        let Some(from) = i.checked_sub(span) else {
            return f64::NAN;
        };
        let last = |s: Vec<f64>| s.last().copied().unwrap_or(f64::NAN);
        let w = &self.window[from..=i];
        let col = |f: Field| w.iter().map(|c| field(c, f)).collect::<Vec<f64>>();
        if let Indicator::Atr(n) | Indicator::Vwap(n) = kind {
            let (h, l, c) = (col(Field::High), col(Field::Low), col(Field::Close));
            return match kind {
                Indicator::Atr(_) => ta::last::atr(&h, &l, &c, *n),
                _ => last(ta::vwap(&h, &l, &c, &col(Field::Volume), *n)),
            };
        }
        let Some(src) = kind.source() else {
            return f64::NAN;
        };
        // A candle field is read straight from the window; anything else
        // value by value (each memoised).
        let xs = match src {
            Expr::Field(f) => col(*f),
            _ => {
                let mut xs = Vec::with_capacity(span + 1);
                for j in from..=i {
                    let v = self.value(src, j);
                    if v.is_nan() {
                        return f64::NAN;
                    }
                    xs.push(v);
                }
                xs
            }
        };
        match kind {
            Indicator::Sma(..) => ta::last::sma(&xs),
            Indicator::Ema(_, n) => ta::last::ema(&xs, *n),
            Indicator::Wma(..) => ta::last::wma(&xs),
            Indicator::Rsi(_, n) => ta::last::rsi(&xs, *n),
            Indicator::Stddev(..) => ta::last::stddev(&xs),
            Indicator::Roc(..) => ta::last::roc(&xs),
            Indicator::Highest(..) => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Indicator::Lowest(..) => xs.iter().copied().fold(f64::INFINITY, f64::min),
            Indicator::Bollinger { k, part, .. } => {
                let (upper, middle, lower) = ta::last::bollinger(&xs, *k);
                match part {
                    BandPart::Upper => upper,
                    BandPart::Middle => middle,
                    BandPart::Lower => lower,
                }
            }
            Indicator::Macd {
                fast,
                slow,
                signal,
                part,
                ..
            } => {
                let [line, sig, hist] = ta::macd(&xs, *fast, *slow, *signal);
                last(match part {
                    MacdPart::Line => line,
                    MacdPart::Signal => sig,
                    MacdPart::Hist => hist,
                })
            }
            Indicator::Atr(_) | Indicator::Vwap(_) => f64::NAN,
        }
    }
}
