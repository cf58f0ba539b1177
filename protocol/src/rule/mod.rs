//! The rule language's syntax: what a trader's `rule` says, parsed into an
//! [`Expr`], checked (a rule is a condition; numbers and conditions are not
//! mixed up), with the warm-up it needs computed. The coordinator and the
//! workers must agree on all of it; evaluation is the worker crate's.
//!
//! ```text
//! rsi(14) < 30 and crosses_above(ema(close, 9), ema(close, 21))
//! close > bollinger(close, 20, 2).upper or macd(12, 26, 9).hist > 0
//! (close - close[1]) / close[1] * 100 > 2 and volume > 2 * sma(volume, 20)
//! ```
//!
//! Candle fields: `open high low close volume`, with history `close[1]`.
//! Arithmetic `+ - * /`, comparisons `< <= > >= == !=`, `and or not`.
//! Indicators (TA-Lib's algorithms): `sma ema wma rsi stddev
//! roc highest lowest` (series, period; `rsi(14)` reads the close), `atr(n)`,
//! `vwap(n)`, `macd([series,] fast, slow, signal).line|signal|hist`,
//! `bollinger([series,] n, width).upper|middle|lower`, and the conditions
//! `crosses_above(a, b)`, `crosses_below(a, b)`.
//!
//! A verdict is a pure function of a fixed window of candles: [`Expr::warmup`]
//! says how many candles before the judged one the rule reads. For a
//! recursive indicator (EMA, RSI, ATR, MACD) that includes enough extra
//! candles for the seed's influence to fall below 1e-10 of its value, so the
//! verdict on the window is the verdict on the whole history.

mod parse;

use std::fmt;

pub use parse::{MAX_DEPTH, MAX_RULE_LEN, ParseError, parse};

/// Largest indicator period.
pub const MAX_PERIOD: usize = 1000;
/// Largest history offset (`close[k]`).
pub const MAX_OFFSET: usize = 1000;
/// A recursive indicator's seed must weigh less than this in its value.
pub const SETTLE: f64 = 1e-10;
/// A recursive indicator is computed from an anchor every this many candles
/// (see [`point`]): a new candle costs one step of its state, and its rule
/// reads up to this many candles more than the settled span.
pub const ANCHOR_EVERY: usize = 32;

/// What an expression is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A number per candle.
    Num,
    /// A condition per candle.
    Bool,
}

/// A candle field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Open.
    Open,
    /// High.
    High,
    /// Low.
    Low,
    /// Close.
    Close,
    /// Volume.
    Volume,
}

impl Field {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "open" => Field::Open,
            "high" => Field::High,
            "low" => Field::Low,
            "close" => Field::Close,
            "volume" => Field::Volume,
            _ => return None,
        })
    }

    /// The field's name in the language.
    pub fn name(self) -> &'static str {
        match self {
            Field::Open => "open",
            Field::High => "high",
            Field::Low => "low",
            Field::Close => "close",
            Field::Volume => "volume",
        }
    }
}

/// A MACD output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacdPart {
    /// Fast EMA - slow EMA.
    Line,
    /// EMA of the line.
    Signal,
    /// Line - signal.
    Hist,
}

/// A Bollinger band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandPart {
    /// Middle + width x deviation.
    Upper,
    /// The SMA.
    Middle,
    /// Middle - width x deviation.
    Lower,
}

/// An indicator call.
#[derive(Debug, Clone, PartialEq)]
pub enum Indicator {
    /// Simple moving average.
    Sma(Box<Expr>, usize),
    /// Exponential moving average (seeded with the SMA).
    Ema(Box<Expr>, usize),
    /// Weighted moving average.
    Wma(Box<Expr>, usize),
    /// Wilder's RSI.
    Rsi(Box<Expr>, usize),
    /// Population standard deviation.
    Stddev(Box<Expr>, usize),
    /// Rate of change, percent.
    Roc(Box<Expr>, usize),
    /// Highest of the last n.
    Highest(Box<Expr>, usize),
    /// Lowest of the last n.
    Lowest(Box<Expr>, usize),
    /// Average true range.
    Atr(usize),
    /// Rolling volume-weighted typical price.
    Vwap(usize),
    /// MACD.
    Macd {
        /// Series.
        src: Box<Expr>,
        /// Fast EMA.
        fast: usize,
        /// Slow EMA.
        slow: usize,
        /// Signal EMA.
        signal: usize,
        /// Which output.
        part: MacdPart,
    },
    /// Bollinger bands.
    Bollinger {
        /// Series.
        src: Box<Expr>,
        /// SMA length.
        n: usize,
        /// Width in deviations.
        k: f64,
        /// Which band.
        part: BandPart,
    },
}

/// An indicator as written in the rule.
#[derive(Debug, Clone)]
pub struct Ind {
    /// The indicator.
    pub kind: Indicator,
    /// Its text in the rule (the key of a signal's `values`).
    pub text: String,
    /// A 64-bit digest of its canonical text: equal indicators of different
    /// traders share computed values under it (see [`point`]).
    pub key: u64,
}

impl PartialEq for Ind {
    /// Equal calls are equal however they were spaced.
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

/// A parsed rule, or part of one.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number.
    Num(f64),
    /// A candle field.
    Field(Field),
    /// A series `k` candles back: `close[1]`.
    Back(Box<Expr>, usize),
    /// `-x`.
    Neg(Box<Expr>),
    /// `a + b`, `a - b`, `a * b`, `a / b`.
    Arith(&'static str, Box<Expr>, Box<Expr>),
    /// `a < b` and the other comparisons.
    Cmp(&'static str, Box<Expr>, Box<Expr>),
    /// `a and b`.
    And(Box<Expr>, Box<Expr>),
    /// `a or b`.
    Or(Box<Expr>, Box<Expr>),
    /// `not a`.
    Not(Box<Expr>),
    /// `crosses_above(a, b)` (true) or `crosses_below(a, b)` (false).
    Cross(bool, Box<Expr>, Box<Expr>),
    /// An indicator.
    Ind(Ind),
}

/// Candles a recursive smoothing with factor `alpha` needs before its seed
/// weighs less than [`SETTLE`].
fn settle(alpha: f64) -> usize {
    if alpha >= 1.0 {
        return 0;
    }
    (SETTLE.ln() / (1.0 - alpha).ln()).ceil() as usize
}

fn ema_alpha(n: usize) -> f64 {
    2.0 / (n as f64 + 1.0)
}

impl Expr {
    /// Number or condition.
    pub fn ty(&self) -> Type {
        match self {
            Expr::Num(_)
            | Expr::Field(_)
            | Expr::Back(..)
            | Expr::Neg(_)
            | Expr::Arith(..)
            | Expr::Ind(_) => Type::Num,
            Expr::Cmp(..) | Expr::And(..) | Expr::Or(..) | Expr::Not(_) | Expr::Cross(..) => {
                Type::Bool
            }
        }
    }

    /// Candles before the judged one the expression reads.
    pub fn warmup(&self) -> usize {
        match self {
            Expr::Num(_) | Expr::Field(_) => 0,
            Expr::Back(e, k) => e.warmup() + k,
            Expr::Neg(e) | Expr::Not(e) => e.warmup(),
            Expr::Arith(_, a, b) | Expr::Cmp(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.warmup().max(b.warmup())
            }
            Expr::Cross(_, a, b) => a.warmup().max(b.warmup()) + 1,
            Expr::Ind(ind) => ind.kind.source().map_or(0, Expr::warmup) + ind.kind.reach(),
        }
    }

    /// The expression's children (an indicator's series, the operands).
    fn children(&self) -> [Option<&Expr>; 2] {
        match self {
            Expr::Num(_) | Expr::Field(_) => [None, None],
            Expr::Back(e, _) | Expr::Neg(e) | Expr::Not(e) => [Some(e), None],
            Expr::Arith(_, a, b)
            | Expr::Cmp(_, a, b)
            | Expr::And(a, b)
            | Expr::Or(a, b)
            | Expr::Cross(_, a, b) => [Some(a), Some(b)],
            Expr::Ind(ind) => [ind.kind.source(), None],
        }
    }

    /// Levels of the expression tree (a leaf is 1). Iterative, so that it
    /// can measure any tree the parser builds before anything recursive
    /// walks it: a chain `a - b - c ...` is built in a loop and is as deep
    /// as it has operators.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 1)];
        while let Some((e, d)) = stack.pop() {
            deepest = deepest.max(d);
            stack.extend(e.children().into_iter().flatten().map(|c| (c, d + 1)));
        }
        deepest
    }

    /// Every indicator in the rule, each once, in the order written.
    pub fn indicators(&self) -> Vec<&Ind> {
        let mut out: Vec<&Ind> = Vec::new();
        self.visit(&mut |ind| {
            if !out.iter().any(|o| o.text == ind.text) {
                out.push(ind);
            }
        });
        out
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Ind)) {
        match self {
            Expr::Num(_) | Expr::Field(_) => {}
            Expr::Back(e, _) | Expr::Neg(e) | Expr::Not(e) => e.visit(f),
            Expr::Arith(_, a, b)
            | Expr::Cmp(_, a, b)
            | Expr::And(a, b)
            | Expr::Or(a, b)
            | Expr::Cross(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Expr::Ind(ind) => {
                f(ind);
                if let Some(src) = ind.kind.source() {
                    src.visit(f);
                }
            }
        }
    }
}

impl Indicator {
    /// The series it reads (`None`: the candle fields themselves).
    pub fn source(&self) -> Option<&Expr> {
        match self {
            Indicator::Sma(s, _)
            | Indicator::Ema(s, _)
            | Indicator::Wma(s, _)
            | Indicator::Rsi(s, _)
            | Indicator::Stddev(s, _)
            | Indicator::Roc(s, _)
            | Indicator::Highest(s, _)
            | Indicator::Lowest(s, _)
            | Indicator::Macd { src: s, .. }
            | Indicator::Bollinger { src: s, .. } => Some(s.as_ref()),
            Indicator::Atr(_) | Indicator::Vwap(_) => None,
        }
    }

    /// The same, to change it.
    pub fn source_mut(&mut self) -> Option<&mut Expr> {
        match self {
            Indicator::Sma(s, _)
            | Indicator::Ema(s, _)
            | Indicator::Wma(s, _)
            | Indicator::Rsi(s, _)
            | Indicator::Stddev(s, _)
            | Indicator::Roc(s, _)
            | Indicator::Highest(s, _)
            | Indicator::Lowest(s, _)
            | Indicator::Macd { src: s, .. }
            | Indicator::Bollinger { src: s, .. } => Some(s),
            Indicator::Atr(_) | Indicator::Vwap(_) => None,
        }
    }

    /// Whether its value carries state from candle to candle (EMA, RSI,
    /// ATR, MACD): such a value is computed from an anchor (see
    /// [`point`]), not from a window of fixed length.
    pub fn is_recursive(&self) -> bool {
        matches!(
            self,
            Indicator::Ema(..) | Indicator::Rsi(..) | Indicator::Atr(_) | Indicator::Macd { .. }
        )
    }

    /// Values of its source before the judged candle it reads at most: the
    /// span, and for a recursive indicator up to [`ANCHOR_EVERY`]` - 1` more
    /// (how far its anchor can lie behind the span).
    pub fn reach(&self) -> usize {
        self.span()
            + if self.is_recursive() {
                ANCHOR_EVERY - 1
            } else {
                0
            }
    }

    /// Values of its source before the judged candle its computation needs
    /// at least: a recursive one's seed and settling.
    pub fn span(&self) -> usize {
        match self {
            Indicator::Sma(_, n)
            | Indicator::Wma(_, n)
            | Indicator::Stddev(_, n)
            | Indicator::Highest(_, n)
            | Indicator::Lowest(_, n)
            | Indicator::Bollinger { n, .. }
            | Indicator::Vwap(n) => n - 1,
            Indicator::Roc(_, n) => *n,
            Indicator::Ema(_, n) => n - 1 + settle(ema_alpha(*n)),
            Indicator::Rsi(_, n) | Indicator::Atr(n) => n + settle(1.0 / *n as f64),
            Indicator::Macd { slow, signal, .. } => {
                slow - 1 + settle(ema_alpha(*slow)) + signal - 1 + settle(ema_alpha(*signal))
            }
        }
    }
}

impl fmt::Display for Expr {
    /// The canonical text: fully parenthesised where precedence matters, so
    /// it parses back to the same expression.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(v) => write!(f, "{v}"),
            Expr::Field(x) => f.write_str(x.name()),
            Expr::Back(e, k) => write!(f, "({e})[{k}]"),
            Expr::Neg(e) => write!(f, "-({e})"),
            Expr::Arith(op, a, b) | Expr::Cmp(op, a, b) => write!(f, "({a} {op} {b})"),
            Expr::And(a, b) => write!(f, "({a} and {b})"),
            Expr::Or(a, b) => write!(f, "({a} or {b})"),
            Expr::Not(a) => write!(f, "(not {a})"),
            Expr::Cross(above, a, b) => {
                write!(
                    f,
                    "crosses_{}({a}, {b})",
                    if *above { "above" } else { "below" }
                )
            }
            Expr::Ind(ind) => match &ind.kind {
                Indicator::Sma(s, n) => write!(f, "sma({s}, {n})"),
                Indicator::Ema(s, n) => write!(f, "ema({s}, {n})"),
                Indicator::Wma(s, n) => write!(f, "wma({s}, {n})"),
                Indicator::Rsi(s, n) => write!(f, "rsi({s}, {n})"),
                Indicator::Stddev(s, n) => write!(f, "stddev({s}, {n})"),
                Indicator::Roc(s, n) => write!(f, "roc({s}, {n})"),
                Indicator::Highest(s, n) => write!(f, "highest({s}, {n})"),
                Indicator::Lowest(s, n) => write!(f, "lowest({s}, {n})"),
                Indicator::Atr(n) => write!(f, "atr({n})"),
                Indicator::Vwap(n) => write!(f, "vwap({n})"),
                Indicator::Macd {
                    src,
                    fast,
                    slow,
                    signal,
                    part,
                } => {
                    let p = match part {
                        MacdPart::Line => "line",
                        MacdPart::Signal => "signal",
                        MacdPart::Hist => "hist",
                    };
                    write!(f, "macd({src}, {fast}, {slow}, {signal}).{p}")
                }
                Indicator::Bollinger { src, n, k, part } => {
                    let p = match part {
                        BandPart::Upper => "upper",
                        BandPart::Middle => "middle",
                        BandPart::Lower => "lower",
                    };
                    write!(f, "bollinger({src}, {n}, {k}).{p}")
                }
            },
        }
    }
}

/// Distinct nodes (computations shared by every trader that uses them:
/// see [`node_texts`]) one worker's evaluation graph holds at most: far
/// past the few hundred distinct indicators thousands of screener rules
/// use; each is a few hundred bytes per series it is computed on.
pub const NODE_BOUND: usize = 16_384;

/// The nodes an evaluation graph makes of `e`, by canonical text: every
/// indicator, and every indicator's source that is neither a candle field
/// nor an indicator (`close - open` in `sma(close - open, 10)`), each once.
/// The coordinator counts them against [`NODE_BOUND`] where traders enter;
/// a worker makes exactly these.
pub fn node_texts(e: &Expr) -> Vec<String> {
    fn walk(e: &Expr, out: &mut Vec<String>) {
        match e {
            Expr::Num(_) | Expr::Field(_) => {}
            Expr::Back(x, _) | Expr::Neg(x) | Expr::Not(x) => walk(x, out),
            Expr::Arith(_, a, b)
            | Expr::Cmp(_, a, b)
            | Expr::And(a, b)
            | Expr::Or(a, b)
            | Expr::Cross(_, a, b) => {
                walk(a, out);
                walk(b, out);
            }
            Expr::Ind(ind) => {
                let text = e.to_string();
                if !out.contains(&text) {
                    out.push(text);
                }
                match ind.kind.source() {
                    None | Some(Expr::Field(_)) => {}
                    Some(src @ Expr::Ind(_)) => walk(src, out),
                    Some(src) => {
                        let text = src.to_string();
                        if !out.contains(&text) {
                            out.push(text);
                        }
                        walk(src, out);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out
}

/// The nodes a worker's traders make (see [`node_texts`]), each with how
/// many traders read it: what the coordinator and a worker count against
/// [`NODE_BOUND`], the same way.
#[derive(Debug, Default, Clone)]
pub struct NodeCount {
    readers: std::collections::HashMap<String, u32>,
    by_trader: std::collections::HashMap<String, Vec<String>>,
}

impl NodeCount {
    /// Distinct nodes held.
    pub fn len(&self) -> usize {
        self.readers.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }

    /// Nodes of `texts` not held yet.
    pub fn adding<'a>(&self, texts: impl IntoIterator<Item = &'a String>) -> usize {
        let mut new: Vec<&String> = texts
            .into_iter()
            .filter(|t| !self.readers.contains_key(*t))
            .collect();
        new.sort_unstable();
        new.dedup();
        new.len()
    }

    /// Counts trader `id`'s nodes `texts` (replacing what it counted before:
    /// as a graph does, the new ones are made before the old ones go).
    pub fn add(&mut self, id: &str, texts: Vec<String>) {
        for t in &texts {
            *self.readers.entry(t.clone()).or_default() += 1;
        }
        self.remove(id);
        self.by_trader.insert(id.to_owned(), texts);
    }

    /// Stops counting trader `id`'s nodes.
    pub fn remove(&mut self, id: &str) {
        for t in self.by_trader.remove(id).unwrap_or_default() {
            if let Some(n) = self.readers.get_mut(&t) {
                *n -= 1;
                if *n == 0 {
                    self.readers.remove(&t);
                }
            }
        }
    }
}

/// FNV-1a, 64 bits: the digest of an indicator's canonical text (its memo
/// key) and of a trader id (its black-box mark).
pub fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Gives every indicator of `e` the digest of its canonical text, so that
/// equal indicators of different rules (however spaced) share one key.
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
                ind.key = fnv1a(&canonical);
            }
        }
    }
}

#[cfg(test)]
mod tests;
