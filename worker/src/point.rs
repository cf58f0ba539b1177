//! Evaluation candle by candle, with values shared between traders and
//! recursive indicators stepped from candle to candle.
//!
//! The value of an expression at a candle depends only on the candles its
//! warm-up covers, and on nothing else: not on where the window starts, not
//! on what was evaluated before. That makes a verdict the same in every
//! worker and in `backtest`, and lets the traders of a worker share values
//! through a [`Memo`] keyed by (series, indicator, absolute candle index).
//!
//! - A window indicator (SMA, WMA, deviation, Bollinger, ROC, extremes,
//!   VWAP) at candle `i` is its kernel over its source at `i - span ..= i`.
//! - A recursive indicator (EMA, RSI, ATR, MACD) at candle `i` is its state
//!   machine ([`crate::kernel`]) fed from an *anchor* `a(i)` to `i`: the
//!   latest candle at or before `i - span` whose absolute index is
//!   `digest % ANCHOR_EVERY` modulo [`ANCHOR_EVERY`]. The span lets the
//!   seed fade below [`protocol::rule::SETTLE`], so the value is the whole-history
//!   one to 1e-10. The anchor moves only every `ANCHOR_EVERY` candles, so
//!   the memo keeps the state at `i - 1` and the next candle costs one
//!   step; when the anchor moves, the value is computed afresh from the new
//!   one. The offset by digest spreads those fresh computations of
//!   different indicators over different candles, so no one pass pays for
//!   all of them.
//!
//! Stepping a kept state and computing afresh from the anchor run the same
//! operations on the same inputs, so they give the same bits.

use std::collections::HashMap;

use protocol::Candle;
use protocol::rule::{ANCHOR_EVERY, BandPart, Expr, Field, Ind, Indicator, MacdPart};

use crate::kernel::{self, window};

/// Recent values a memo slot keeps per indicator and series at first:
/// enough for crosses (the candle before), cooldowns and short nested
/// windows.
const RECENT: usize = 16;
/// Most values a slot keeps: it grows (in powers of two) when values
/// further back are asked for again, as `sma(rsi(14), 50)` asks for 50
/// `rsi(14)` values on every candle. Older ones are computed again.
const RECENT_MAX: usize = 1024;
/// Values all slots together may keep beyond their first [`RECENT`]
/// (16 bytes each: 64 MiB); past it slots stop growing.
const RECENT_BUDGET: usize = 1 << 22;

/// A recursive indicator's state between candles.
#[derive(Debug, Clone, Copy)]
pub(crate) enum State {
    Ema(kernel::Ema),
    Rsi(kernel::Rsi),
    Atr(kernel::Atr),
    Macd(kernel::Macd, MacdPart),
}

impl State {
    /// A fresh state for `kind` (None: not recursive).
    pub(crate) fn new(kind: &Indicator) -> Option<Self> {
        Some(match kind {
            Indicator::Ema(_, n) => State::Ema(kernel::Ema::new(*n)),
            Indicator::Rsi(_, n) => State::Rsi(kernel::Rsi::new(*n)),
            Indicator::Atr(n) => State::Atr(kernel::Atr::new(*n)),
            Indicator::Macd {
                fast,
                slow,
                signal,
                part,
                ..
            } => State::Macd(kernel::Macd::new(*fast, *slow, *signal), *part),
            _ => return None,
        })
    }
}

/// A recursive indicator fed from `anchor` up to `next - 1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Running {
    pub(crate) anchor: u64,
    pub(crate) next: u64,
    pub(crate) state: State,
    /// The value at `next - 1`.
    pub(crate) last: f64,
}

impl Running {
    /// `state`, to be fed from `anchor` on.
    pub(crate) fn fresh(anchor: u64, state: State) -> Self {
        Self {
            anchor,
            next: anchor,
            state,
            last: f64::NAN,
        }
    }
}

/// What a memo lookup finds.
enum Found {
    /// The value.
    Value(f64),
    /// No value; the state kept, if any.
    Kept(Option<Running>),
}

/// What the memo holds for one indicator on one series.
#[derive(Debug, Clone)]
struct Slot {
    /// `(index + 1, value)` at `index % len` (0: empty), in `first` until
    /// the slot grows into `more` (a power of two up to [`RECENT_MAX`]):
    /// most slots never do, and their lookups stay inside the slot.
    first: [(u64, f64); RECENT],
    more: Option<Box<[(u64, f64)]>>,
    /// The newest index kept.
    newest: u64,
    run: Option<Running>,
}

impl Slot {
    fn ring(&self) -> &[(u64, f64)] {
        self.more.as_deref().unwrap_or(&self.first)
    }

    fn ring_mut(&mut self) -> &mut [(u64, f64)] {
        match &mut self.more {
            Some(more) => more,
            None => &mut self.first,
        }
    }

    fn at(&self, at: u64) -> Option<f64> {
        let ring = self.ring();
        match ring[(at as usize) & (ring.len() - 1)] {
            (k, v) if k == at + 1 => Some(v),
            _ => None,
        }
    }
}

/// Values and recursive states by (series, indicator digest), shared by the
/// traders of a worker (or a backtest) and kept across candles. Bounded:
/// past `bound` slots it starts over, and whatever was dropped is computed
/// again, never wrong. A slot is about 450 bytes, plus what its values grew
/// by (all slots together at most [`RECENT_BUDGET`] values).
#[derive(Debug)]
pub struct Memo {
    series: u32,
    slots: HashMap<(u32, u64), Slot, FastHash>,
    bound: usize,
    /// Values the slots keep beyond their first [`RECENT`].
    grown: usize,
    /// Buffers for indicators of indicators, reused.
    buffers: Vec<Vec<f64>>,
    /// Recursive indicators computed from their anchor.
    fresh: u64,
    /// Steps of their states (inputs fed).
    steps: u64,
}

impl Memo {
    /// A memo of at most `bound` (indicator, series) slots.
    pub fn new(bound: usize) -> Self {
        Self {
            series: 0,
            slots: HashMap::default(),
            bound: bound.max(1),
            grown: 0,
            buffers: Vec::new(),
            fresh: 0,
            steps: 0,
        }
    }

    /// Recursive indicators computed from their anchor so far, and inputs
    /// fed to recursive states in all: with kept states, the steps are about
    /// one per indicator and candle, and the fresh computations one per
    /// `ANCHOR_EVERY` candles.
    pub fn counters(&self) -> (u64, u64) {
        (self.fresh, self.steps)
    }

    /// The series the next evaluations are about (its index in the store).
    pub fn on_series(&mut self, series: u32) {
        self.series = series;
    }

    /// Forgets everything about `series` (its candles changed).
    pub fn forget_series(&mut self, series: u32) {
        let grown = &mut self.grown;
        self.slots.retain(|&(s, _), slot| {
            if s == series {
                *grown -= slot.ring().len() - RECENT;
            }
            s != series
        });
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The bound on slots.
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// The value at `at` if known, else the kept state to continue from.
    fn lookup(&self, key: u64, at: u64) -> Found {
        let Some(slot) = self.slots.get(&(self.series, key)) else {
            return Found::Kept(None);
        };
        match slot.at(at) {
            Some(v) => Found::Value(v),
            None => Found::Kept(slot.run),
        }
    }

    /// Keeps a value, and a state if it is ahead of the one kept.
    fn keep(&mut self, key: u64, at: u64, value: f64, run: Option<Running>) {
        if self.slots.len() >= self.bound && !self.slots.contains_key(&(self.series, key)) {
            self.slots.clear();
            self.grown = 0;
        }
        let grown = &mut self.grown;
        let slot = self
            .slots
            .entry((self.series, key))
            .or_insert_with(|| Slot {
                first: [(0, 0.0); RECENT],
                more: None,
                newest: 0,
                run: None,
            });
        if !value.is_nan() {
            // How far back from the newest value this one is: asked for
            // again, it should still be there next candle.
            let reach = slot.newest.saturating_sub(at).saturating_add(1) as usize;
            let held = slot.ring().len();
            if reach > held && reach <= RECENT_MAX {
                let len = reach.next_power_of_two();
                if *grown + (len - held) <= RECENT_BUDGET {
                    *grown += len - held;
                    let mut ring = vec![(0, 0.0); len].into_boxed_slice();
                    for &(k, v) in slot.ring().iter().filter(|(k, _)| *k > 0) {
                        ring[((k - 1) as usize) & (len - 1)] = (k, v);
                    }
                    slot.more = Some(ring);
                }
            }
            // A value older than the ring holds would push out a newer one.
            let ring = slot.ring_mut();
            let len = ring.len();
            if reach <= len {
                ring[(at as usize) & (len - 1)] = (at + 1, value);
                slot.newest = slot.newest.max(at);
            }
        }
        if let Some(run) = run
            && slot.run.is_none_or(|kept| run.next >= kept.next)
        {
            slot.run = Some(run);
        }
    }
}

/// A multiply-xor hasher for the memo's integer keys (SipHash's resistance
/// to chosen keys buys nothing here: the keys are digests we made).
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

/// [`FastHash`]'s hasher.
#[derive(Debug)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

fn truth(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

pub(crate) fn field(c: &Candle, f: Field) -> f64 {
    match f {
        Field::Open => c.open,
        Field::High => c.high,
        Field::Low => c.low,
        Field::Close => c.close,
        Field::Volume => c.volume,
    }
}

/// Evaluates expressions at candles of a window.
pub struct Point<'a> {
    window: &'a [Candle],
    /// Absolute index (in its series) of `window[0]`.
    base: u64,
    memo: &'a mut Memo,
}

impl<'a> Point<'a> {
    /// Over `window`, whose first candle has absolute index `base` in the
    /// series the memo is on.
    pub fn new(window: &'a [Candle], base: u64, memo: &'a mut Memo) -> Self {
        Self { window, base, memo }
    }

    /// The value of `e` at window position `i`: conditions as 1.0 / 0.0,
    /// numbers as numbers, and *no value* (NaN) for a number that has none:
    /// the window does not hold its warm-up, or it divides by zero. As
    /// TradingView's `na`: arithmetic with no value has no value; a
    /// comparison or a cross involving no value is false (so `not` of it is
    /// true); `and`, `or` and `not` combine conditions, which always have one.
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
                    // Division by zero has no value (not infinity, which
                    // would compare greater than anything).
                    _ if y == 0.0 => f64::NAN,
                    _ => x / y,
                })
            }
            Expr::Cmp(op, a, b) => {
                let (x, y) = both(self, a, b);
                truth(
                    !x.is_nan()
                        && !y.is_nan()
                        && match *op {
                            "<" => x < y,
                            "<=" => x <= y,
                            ">" => x > y,
                            ">=" => x >= y,
                            "==" => x == y,
                            _ => x != y,
                        },
                )
            }
            Expr::And(a, b) => {
                let (x, y) = both(self, a, b);
                truth(x == 1.0 && y == 1.0)
            }
            Expr::Or(a, b) => {
                let (x, y) = both(self, a, b);
                truth(x == 1.0 || y == 1.0)
            }
            Expr::Not(x) => truth(self.value(x, i) != 1.0),
            Expr::Cross(above, a, b) => {
                if i == 0 {
                    return truth(false);
                }
                let (a0, b0) = (self.value(a, i - 1), self.value(b, i - 1));
                let (a1, b1) = (self.value(a, i), self.value(b, i));
                if [a0, b0, a1, b1].iter().any(|v| v.is_nan()) {
                    return truth(false);
                }
                truth(if *above {
                    a0 <= b0 && a1 > b1
                } else {
                    a0 >= b0 && a1 < b1
                })
            }
            Expr::Ind(ind) => {
                let at = self.base + i as u64;
                let kept = match self.memo.lookup(ind.key, at) {
                    Found::Value(v) => return v,
                    Found::Kept(kept) => kept,
                };
                let (v, run) = match State::new(&ind.kind) {
                    Some(fresh) => self.recursive(ind, i, fresh, kept),
                    None => (self.windowed(&ind.kind, i), None),
                };
                self.memo.keep(ind.key, at, v, run);
                v
            }
        }
    }

    /// A recursive indicator at position `i`: the kept state stepped to it
    /// when it runs from the same anchor, else `fresh` fed from the anchor.
    fn recursive(
        &mut self,
        ind: &Ind,
        i: usize,
        fresh: State,
        kept: Option<Running>,
    ) -> (f64, Option<Running>) {
        const NONE: (f64, Option<Running>) = (f64::NAN, None);
        let at = self.base + i as u64;
        let every = ANCHOR_EVERY as u64;
        let offset = ind.key % every;
        let Some(latest) = at
            .checked_sub(ind.kind.span() as u64)
            .and_then(|l| l.checked_sub(offset))
        else {
            return NONE;
        };
        let anchor = latest - latest % every + offset;
        if anchor < self.base {
            return NONE;
        }
        let mut run = match kept {
            Some(r) if r.anchor == anchor && r.next <= at + 1 => r,
            _ => {
                self.memo.fresh += 1;
                Running {
                    anchor,
                    next: anchor,
                    state: fresh,
                    last: f64::NAN,
                }
            }
        };
        let source = ind.kind.source();
        while run.next <= at {
            let pos = (run.next - self.base) as usize;
            run.last = match &mut run.state {
                State::Atr(a) => {
                    let c = &self.window[pos];
                    a.push(c.high, c.low, c.close)
                }
                state => {
                    let x = match source {
                        Some(src) => self.value(src, pos),
                        None => f64::NAN,
                    };
                    if x.is_nan() {
                        return NONE;
                    }
                    match state {
                        State::Ema(e) => e.push(x),
                        State::Rsi(r) => r.push(x),
                        State::Macd(m, part) => {
                            let [line, signal, hist] = m.push(x);
                            match part {
                                MacdPart::Line => line,
                                MacdPart::Signal => signal,
                                MacdPart::Hist => hist,
                            }
                        }
                        State::Atr(_) => f64::NAN,
                    }
                }
            };
            run.next += 1;
            self.memo.steps += 1;
        }
        (run.last, Some(run))
    }

    /// A window indicator at position `i`: its kernel over the source's
    /// values at `i - span ..= i`.
    fn windowed(&mut self, kind: &Indicator, i: usize) -> f64 {
        let span = kind.span();
        let Some(from) = i.checked_sub(span) else {
            return f64::NAN;
        };
        let w = &self.window[from..=i];
        if let Indicator::Vwap(_) = kind {
            let (mut pv, mut v) = (0.0, 0.0);
            for c in w {
                pv += (c.high + c.low + c.close) / 3.0 * c.volume;
                v += c.volume;
            }
            return if v > 0.0 { pv / v } else { f64::NAN };
        }
        match kind.source() {
            // A candle field is read straight from the window.
            Some(Expr::Field(f)) => window_kernel(kind, |j| field(&w[j], *f)),
            Some(src) => {
                let mut xs = self.memo.buffers.pop().unwrap_or_default();
                xs.clear();
                for j in from..=i {
                    let v = self.value(src, j);
                    if v.is_nan() {
                        self.memo.buffers.push(xs);
                        return f64::NAN;
                    }
                    xs.push(v);
                }
                let v = window_kernel(kind, |j| xs[j]);
                self.memo.buffers.push(xs);
                v
            }
            None => f64::NAN,
        }
    }
}

/// A window indicator's kernel over `x(0..=span)`.
pub(crate) fn window_kernel(kind: &Indicator, x: impl Fn(usize) -> f64) -> f64 {
    match kind {
        Indicator::Sma(_, n) => window::sma(*n, x),
        Indicator::Wma(_, n) => window::wma(*n, x),
        Indicator::Stddev(_, n) => window::stddev(*n, x),
        Indicator::Roc(_, n) => window::roc(*n, x),
        Indicator::Highest(_, n) => window::highest(*n, x),
        Indicator::Lowest(_, n) => window::lowest(*n, x),
        Indicator::Bollinger { n, k, part, .. } => {
            let (upper, middle, lower) = window::bollinger(*n, *k, x);
            match part {
                BandPart::Upper => upper,
                BandPart::Middle => middle,
                BandPart::Lower => lower,
            }
        }
        _ => f64::NAN,
    }
}
