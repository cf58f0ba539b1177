//! The rule language's lexer and recursive-descent parser.
//!
//! ```text
//! rule    := or
//! or      := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | cmp
//! cmp     := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/") unary)*
//! unary   := "-" unary | postfix
//! postfix := primary ("[" integer "]" | "." name)*
//! primary := number | field | call | "(" or ")"
//! call    := name "(" (or ("," or)*)? ")"
//! ```
//!
//! Every error carries the byte offset it is about; [`ParseError`] turns it
//! into a line and a column for the message.

use super::{BandPart, Expr, Field, Indicator, MAX_OFFSET, MAX_PERIOD, MacdPart, Type};

/// A rule that does not parse or does not type-check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Name(String),
    Op(&'static str),
    End,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

const OPS: [&str; 16] = [
    "<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "(", ")", ",", "[", "]", ".",
];

/// Longest rule accepted, in bytes.
pub const MAX_RULE_LEN: usize = 4096;
/// Deepest rule accepted: the parser's nesting (brackets, calls, `not`,
/// unary minus) and the levels of the parsed tree (where each operator of a
/// chain like `a + b + c` is a level) are both bounded by it. Every walk of a
/// rule (checks, warm-up, evaluation) recurses at most this deep, so a rule
/// that parses evaluates alike everywhere: in `backtest`, on the main
/// thread, and in a worker's evaluation thread.
pub const MAX_DEPTH: usize = 128;

impl<'a> Lexer<'a> {
    /// The next token and where it starts.
    fn next(&mut self) -> Result<(Tok, usize), (usize, String)> {
        let rest = &self.src[self.pos..];
        let trimmed = rest.trim_start();
        self.pos += rest.len() - trimmed.len();
        let start = self.pos;
        let Some(c) = trimmed.chars().next() else {
            return Ok((Tok::End, start));
        };
        if c.is_ascii_digit()
            || (c == '.' && trimmed[1..].starts_with(|d: char| d.is_ascii_digit()))
        {
            // Digits, '.', an exponent and its sign (`1e-5`).
            let bytes = trimmed.as_bytes();
            let mut len = 0;
            while len < bytes.len() {
                let b = bytes[len];
                let sign_of_exponent =
                    (b == b'-' || b == b'+') && len > 0 && matches!(bytes[len - 1], b'e' | b'E');
                if b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || sign_of_exponent {
                    len += 1;
                } else {
                    break;
                }
            }
            let text = &trimmed[..len];
            self.pos += len;
            return text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| (Tok::Num(v), start))
                .ok_or((start, format!("{text:?} is not a number")));
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let len = trimmed
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(trimmed.len());
            self.pos += len;
            return Ok((Tok::Name(trimmed[..len].to_ascii_lowercase()), start));
        }
        for op in OPS {
            if trimmed.starts_with(op) {
                self.pos += op.len();
                return Ok((Tok::Op(op), start));
            }
        }
        Err((start, format!("unexpected character {c:?}")))
    }
}

struct Parser<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
    tok: Tok,
    at: usize,
    depth: usize,
}

type PResult<T> = Result<T, (usize, String)>;

/// Parses and type-checks `src`: the rule must be a condition (true/false).
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let run = || -> PResult<Expr> {
        if src.len() > MAX_RULE_LEN {
            return Err((
                0,
                format!(
                    "the rule is {} bytes long; at most {MAX_RULE_LEN}",
                    src.len()
                ),
            ));
        }
        let mut p = Parser {
            src,
            lexer: Lexer { src, pos: 0 },
            tok: Tok::End,
            at: 0,
            depth: 0,
        };
        p.bump()?;
        if p.tok == Tok::End {
            return Err((
                0,
                "the rule is empty: write a condition such as `rsi(14) < 30`".into(),
            ));
        }
        let start = p.at;
        let e = p.or()?;
        if p.tok != Tok::End {
            return Err((
                p.at,
                format!(
                    "unexpected {} after a complete rule: join conditions with `and` / `or`",
                    p.describe()
                ),
            ));
        }
        let depth = e.depth();
        if depth > MAX_DEPTH {
            return Err((
                start,
                format!(
                    "the rule is {depth} levels deep, at most {MAX_DEPTH}: each operator of a chain like `a + b + c` is a level; split it with brackets or shorten it"
                ),
            ));
        }
        if e.ty() != Type::Bool {
            return Err((
                start,
                "the rule is a number, not a condition: compare it, e.g. `... > 0`".into(),
            ));
        }
        let mut e = e;
        super::assign_keys(&mut e);
        Ok(e)
    };
    run().map_err(|(offset, message)| {
        let offset = offset.min(src.len());
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ParseError {
            line,
            column,
            message,
        }
    })
}

impl Parser<'_> {
    fn bump(&mut self) -> PResult<()> {
        let (tok, at) = self.lexer.next()?;
        self.tok = tok;
        self.at = at;
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.tok {
            Tok::Num(n) => format!("number {n}"),
            Tok::Name(n) => format!("`{n}`"),
            Tok::Op(o) => format!("`{o}`"),
            Tok::End => "end of rule".into(),
        }
    }

    fn expect(&mut self, op: &'static str, what: &str) -> PResult<()> {
        if self.tok == Tok::Op(op) {
            self.bump()
        } else {
            Err((
                self.at,
                format!("expected `{op}` {what}, found {}", self.describe()),
            ))
        }
    }

    fn is_name(&self, name: &str) -> bool {
        matches!(&self.tok, Tok::Name(n) if n == name)
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> PResult<T>) -> PResult<T> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((
                self.at,
                format!("the rule nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn bool_operand(&self, e: &Expr, at: usize, op: &str) -> PResult<()> {
        if e.ty() == Type::Bool {
            Ok(())
        } else {
            Err((
                at,
                format!(
                    "`{op}` joins conditions, but this side is a number: compare it first, e.g. `x > 0`"
                ),
            ))
        }
    }

    fn num_operand(&self, e: &Expr, at: usize, op: &str) -> PResult<()> {
        if e.ty() == Type::Num {
            Ok(())
        } else {
            Err((
                at,
                format!("`{op}` needs numbers, but this side is a condition"),
            ))
        }
    }

    fn or(&mut self) -> PResult<Expr> {
        let at = self.at;
        let mut left = self.and()?;
        while self.is_name("or") {
            self.bool_operand(&left, at, "or")?;
            self.bump()?;
            let rat = self.at;
            let right = self.and()?;
            self.bool_operand(&right, rat, "or")?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> PResult<Expr> {
        let at = self.at;
        let mut left = self.not()?;
        while self.is_name("and") {
            self.bool_operand(&left, at, "and")?;
            self.bump()?;
            let rat = self.at;
            let right = self.not()?;
            self.bool_operand(&right, rat, "and")?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> PResult<Expr> {
        if self.is_name("not") {
            self.bump()?;
            let at = self.at;
            let e = self.nested(Self::not)?;
            self.bool_operand(&e, at, "not")?;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> PResult<Expr> {
        let at = self.at;
        let left = self.sum()?;
        let op = match self.tok {
            Tok::Op(op @ ("<" | "<=" | ">" | ">=" | "==" | "!=")) => op,
            _ => return Ok(left),
        };
        self.num_operand(&left, at, op)?;
        self.bump()?;
        let rat = self.at;
        let right = self.sum()?;
        self.num_operand(&right, rat, op)?;
        if matches!(self.tok, Tok::Op("<" | "<=" | ">" | ">=" | "==" | "!=")) {
            return Err((
                self.at,
                "comparisons do not chain: write `a < b and b < c`".into(),
            ));
        }
        Ok(Expr::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn sum(&mut self) -> PResult<Expr> {
        let at = self.at;
        let mut left = self.product()?;
        while let Tok::Op(op @ ("+" | "-")) = self.tok {
            self.num_operand(&left, at, op)?;
            self.bump()?;
            let rat = self.at;
            let right = self.product()?;
            self.num_operand(&right, rat, op)?;
            left = Expr::Arith(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn product(&mut self) -> PResult<Expr> {
        let at = self.at;
        let mut left = self.unary()?;
        while let Tok::Op(op @ ("*" | "/")) = self.tok {
            self.num_operand(&left, at, op)?;
            self.bump()?;
            let rat = self.at;
            let right = self.unary()?;
            self.num_operand(&right, rat, op)?;
            left = Expr::Arith(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> PResult<Expr> {
        if self.tok == Tok::Op("-") {
            self.bump()?;
            let at = self.at;
            let e = self.nested(Self::unary)?;
            self.num_operand(&e, at, "-")?;
            return Ok(Expr::Neg(Box::new(e)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> PResult<Expr> {
        let start = self.at;
        let mut e = self.primary()?;
        loop {
            if self.tok == Tok::Op("[") {
                self.bump()?;
                let at = self.at;
                let k = match self.tok {
                    Tok::Num(n) if n.fract() == 0.0 && (0.0..=MAX_OFFSET as f64).contains(&n) => {
                        n as usize
                    }
                    _ => {
                        return Err((
                            at,
                            format!(
                                "`[...]` takes a whole number of candles back, 0 to {MAX_OFFSET}, e.g. `close[1]`"
                            ),
                        ));
                    }
                };
                self.bump()?;
                self.expect("]", "to close `[`")?;
                if e.ty() != Type::Num {
                    return Err((
                        start,
                        "only numbers have history: `[k]` cannot follow a condition".into(),
                    ));
                }
                e = Expr::Back(Box::new(e), k);
            } else if self.tok == Tok::Op(".") {
                self.bump()?;
                let at = self.at;
                let Tok::Name(part) = self.tok.clone() else {
                    return Err((at, "expected a part name after `.`".into()));
                };
                e = select(e, &part).map_err(|m| (at, m))?;
                let end = at + part.len();
                self.bump()?;
                if let Expr::Ind(ind) = &mut e {
                    ind.text = self.src[start..end].to_owned();
                }
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> PResult<Expr> {
        let at = self.at;
        match self.tok.clone() {
            Tok::Num(n) => {
                self.bump()?;
                Ok(Expr::Num(n))
            }
            Tok::Op("(") => {
                self.bump()?;
                let e = self.nested(Self::or)?;
                self.expect(")", "to close `(`")?;
                Ok(e)
            }
            Tok::Name(name) => {
                self.bump()?;
                if let Some(field) = Field::from_name(&name) {
                    if self.tok == Tok::Op("(") {
                        return Err((
                            at,
                            format!(
                                "`{name}` is a candle field, not a function: write `{name}` or `{name}[1]`"
                            ),
                        ));
                    }
                    return Ok(Expr::Field(field));
                }
                if matches!(name.as_str(), "and" | "or" | "not") {
                    return Err((at, format!("`{name}` needs a condition before it")));
                }
                if self.tok != Tok::Op("(") {
                    return Err((
                        at,
                        format!(
                            "unknown name `{name}`: the candle fields are open, high, low, close and volume; functions are called with `(...)`"
                        ),
                    ));
                }
                self.bump()?;
                let mut args = Vec::new();
                if self.tok != Tok::Op(")") {
                    loop {
                        let arg_at = self.at;
                        args.push((self.nested(Self::or)?, arg_at));
                        if self.tok == Tok::Op(",") {
                            self.bump()?;
                        } else {
                            break;
                        }
                    }
                }
                let end = self.at + 1;
                self.expect(")", &format!("to close the arguments of `{name}`"))?;
                let text = self.src[at..end].to_owned();
                call(&name, args, at, text)
            }
            _ => Err((
                at,
                format!(
                    "expected a number, a candle field or a function, found {}",
                    self.describe()
                ),
            )),
        }
    }
}

/// `macd(...).signal`, `bollinger(...).upper`.
fn select(e: Expr, part: &str) -> Result<Expr, String> {
    match e {
        Expr::Ind(mut ind) => {
            match (&mut ind.kind, part) {
                (Indicator::Macd { part: p, .. }, "line" | "signal" | "hist") => {
                    *p = match part {
                        "line" => MacdPart::Line,
                        "signal" => MacdPart::Signal,
                        _ => MacdPart::Hist,
                    };
                }
                (Indicator::Bollinger { part: p, .. }, "upper" | "middle" | "lower") => {
                    *p = match part {
                        "upper" => BandPart::Upper,
                        "middle" => BandPart::Middle,
                        _ => BandPart::Lower,
                    };
                }
                (Indicator::Macd { .. }, _) => {
                    return Err(format!(
                        "macd has parts line, signal and hist, not `{part}`"
                    ));
                }
                (Indicator::Bollinger { .. }, _) => {
                    return Err(format!(
                        "bollinger has parts upper, middle and lower, not `{part}`"
                    ));
                }
                _ => return Err(format!("`.{part}`: only macd and bollinger have parts")),
            }
            Ok(Expr::Ind(ind))
        }
        _ => Err(format!("`.{part}`: only macd and bollinger have parts")),
    }
}

fn period(arg: &(Expr, usize), name: &str) -> PResult<usize> {
    match arg.0 {
        Expr::Num(n) if n.fract() == 0.0 && (1.0..=MAX_PERIOD as f64).contains(&n) => {
            Ok(n as usize)
        }
        _ => Err((
            arg.1,
            format!("{name}'s period must be a whole number from 1 to {MAX_PERIOD}"),
        )),
    }
}

fn number(arg: &(Expr, usize), what: &str) -> PResult<f64> {
    match arg.0 {
        Expr::Num(n) => Ok(n),
        _ => Err((arg.1, format!("{what} must be a number"))),
    }
}

fn source(arg: (Expr, usize), name: &str) -> PResult<Box<Expr>> {
    if arg.0.ty() == Type::Num {
        Ok(Box::new(arg.0))
    } else {
        Err((
            arg.1,
            format!("{name} takes a series of numbers (e.g. `close`), not a condition"),
        ))
    }
}

/// Builds the call `name(args)`; `text` is the call as written.
fn call(name: &str, args: Vec<(Expr, usize)>, at: usize, text: String) -> PResult<Expr> {
    let n = args.len();
    let usage = |u: &str| Err((at, format!("{name} takes {u}")));
    let close = || Box::new(Expr::Field(Field::Close));
    let mut args = args.into_iter();
    let mut next = || args.next().ok_or((at, String::new()));
    let kind = match name {
        "crosses_above" | "crosses_below" => {
            if n != 2 {
                return usage("two series: `crosses_above(ema(close, 9), ema(close, 21))`");
            }
            let a = source(next()?, name)?;
            let b = source(next()?, name)?;
            return Ok(Expr::Cross(name == "crosses_above", a, b));
        }
        "sma" | "ema" | "wma" | "stddev" | "roc" | "highest" | "lowest" | "rsi" => {
            let (src, p) = match n {
                2 => {
                    let src = source(next()?, name)?;
                    let p = next()?;
                    (src, period(&p, name)?)
                }
                // rsi(14): the close.
                1 if name == "rsi" => (close(), period(&next()?, name)?),
                _ => return usage(&format!("a series and a period: `{name}(close, 14)`")),
            };
            if matches!(name, "ema" | "rsi" | "stddev") && p < 2 {
                return Err((at, format!("{name}'s period must be at least 2")));
            }
            match name {
                "sma" => Indicator::Sma(src, p),
                "ema" => Indicator::Ema(src, p),
                "wma" => Indicator::Wma(src, p),
                "stddev" => Indicator::Stddev(src, p),
                "roc" => Indicator::Roc(src, p),
                "highest" => Indicator::Highest(src, p),
                "lowest" => Indicator::Lowest(src, p),
                _ => Indicator::Rsi(src, p),
            }
        }
        "atr" | "vwap" => {
            if n != 1 {
                return usage(&format!(
                    "a period: `{name}(14)` (it reads high, low, close{})",
                    if name == "vwap" { " and volume" } else { "" }
                ));
            }
            let p = period(&next()?, name)?;
            if name == "atr" {
                Indicator::Atr(p)
            } else {
                Indicator::Vwap(p)
            }
        }
        "macd" => {
            let src = match n {
                4 => source(next()?, name)?,
                3 => close(),
                _ => {
                    return usage(
                        "fast, slow and signal periods, after an optional series: `macd(close, 12, 26, 9).hist` (parts: line, signal, hist)",
                    );
                }
            };
            let fast = period(&next()?, name)?;
            let slow = period(&next()?, name)?;
            let signal = period(&next()?, name)?;
            if fast < 2 || slow < 2 || signal < 1 || fast >= slow {
                return Err((
                    at,
                    "macd needs 2 <= fast < slow and signal >= 1, e.g. `macd(12, 26, 9)`".into(),
                ));
            }
            Indicator::Macd {
                src,
                fast,
                slow,
                signal,
                part: MacdPart::Line,
            }
        }
        "bollinger" => {
            let src = match n {
                3 => source(next()?, name)?,
                2 => close(),
                _ => {
                    return usage(
                        "a period and a width in standard deviations, after an optional series: `bollinger(close, 20, 2).lower` (parts: upper, middle, lower)",
                    );
                }
            };
            let p = period(&next()?, name)?;
            let k = number(&next()?, "bollinger's width")?;
            if p < 2 {
                return Err((at, "bollinger's period must be at least 2".into()));
            }
            Indicator::Bollinger {
                src,
                n: p,
                k,
                part: BandPart::Middle,
            }
        }
        _ => {
            return Err((
                at,
                format!(
                    "unknown function `{name}`: use sma, ema, wma, rsi, macd, bollinger, atr, stddev, roc, highest, lowest, vwap, crosses_above or crosses_below"
                ),
            ));
        }
    };
    Ok(Expr::Ind(super::Ind { kind, text, key: 0 }))
}
