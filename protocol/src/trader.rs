//! Trader specs as carried by ADD_TRADER, and the rules they name.
//!
//! The spec's shape (`id`, `symbols`, `interval`, `rule`, `cooldown`,
//! `labels`, plus a `version` for idempotent re-sends); the rule is in the
//! rule language ([`crate::rule`]). A verdict is a pure function of the
//! candle it is about and the rule's warm-up before it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::candle::Interval;
use crate::names::SymbolName;
use crate::rule::Expr;

/// Longest trader id.
pub const MAX_TRADER_ID: usize = 64;
/// Most traders one worker holds: the coordinator spreads traders so that no
/// worker gets more (more traders need more `--workers`), and a worker
/// refuses ADD_TRADER beyond it.
pub const MAX_TRADERS_PER_WORKER: usize = 10_000;

/// Which symbols a trader watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Symbols {
    /// Every symbol the feed has (`"*"` in spec files).
    All,
    /// These symbols (valid names by construction: a spec naming one no
    /// exchange could list never decodes).
    List(Vec<SymbolName>),
}

/// One trader, as sent to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraderSpec {
    /// Unique id, `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// Bumped when a trader with the same id changes; a re-sent spec of the same
    /// id and version is acknowledged without being added twice.
    pub version: u32,
    /// Watched symbols.
    pub symbols: Symbols,
    /// Candle interval evaluated.
    pub interval: Interval,
    /// The rule, as written.
    pub rule: String,
    /// Candles after a signal during which the trader stays silent on that series.
    pub cooldown: u32,
    /// Carried into every signal.
    pub labels: BTreeMap<String, String>,
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// TEST ONLY (the `testing` feature; never in a release build): the
    /// worker aborts when it evaluates a closed candle at index `after` or
    /// later. It exists so tests can prove a trader that keeps crashing its
    /// workers is quarantined.
    #[cfg(feature = "testing")]
    TestAbortAfter {
        /// First candle index that aborts.
        after: u64,
    },
    /// TEST ONLY, like `TestAbortAfter`: the evaluation loops forever at
    /// candle index `after`, so tests can prove a stuck evaluation is seen.
    #[cfg(feature = "testing")]
    TestSpinAfter {
        /// First candle index that hangs.
        after: u64,
    },
    /// TEST ONLY: every candle judged leaks this many KiB (touched), so
    /// tests can prove the memory-growth alarm sees a leaking worker.
    #[cfg(feature = "testing")]
    TestLeakKib {
        /// KiB leaked per candle.
        kib: u64,
    },
    /// A rule of the rule language.
    Expr(Box<Compiled>),
}

/// A parsed and checked rule with its window.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The condition.
    pub expr: Expr,
    /// Candles a verdict reads: the judged one and its warm-up.
    pub lookback: usize,
}

impl Rule {
    /// The rule of the rule language (`None`: a test rule, which has no
    /// verdicts; its effect is in the worker).
    pub fn compiled(&self) -> Option<&Compiled> {
        match self {
            Rule::Expr(c) => Some(c),
            #[cfg(feature = "testing")]
            _ => None,
        }
    }

    /// Candles a verdict needs: the candle itself and those before it.
    pub fn lookback(&self) -> usize {
        match self {
            Rule::Expr(c) => c.lookback,
            #[cfg(feature = "testing")]
            Rule::TestAbortAfter { .. } | Rule::TestSpinAfter { .. } | Rule::TestLeakKib { .. } => {
                1
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Expr(c) => write!(f, "{}", c.expr),
            #[cfg(feature = "testing")]
            Rule::TestAbortAfter { after } => write!(f, "test_abort_after({after})"),
            #[cfg(feature = "testing")]
            Rule::TestSpinAfter { after } => write!(f, "test_spin_after({after})"),
            #[cfg(feature = "testing")]
            Rule::TestLeakKib { kib } => write!(f, "test_leak_kib({kib})"),
        }
    }
}

/// A spec that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// Bad id.
    #[error(
        "trader id {0:?} is invalid: use 1 to {MAX_TRADER_ID} characters from A-Z, a-z, 0-9, '_', '.' and '-'"
    )]
    Id(String),
    /// Empty symbol list.
    #[error("trader {0}: `symbols` is empty: list symbols or use \"*\"")]
    NoSymbols(String),
    /// Too large for the protocol's frames.
    #[error(
        "trader {id}: {what} would take {bytes} bytes, over the {limit}-byte limit of one frame: {fix}"
    )]
    TooLarge {
        /// The trader.
        id: String,
        /// Which frame.
        what: &'static str,
        /// Its largest encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
        /// What to shorten.
        fix: &'static str,
    },
    /// Bad rule.
    #[error("trader {id}: rule {rule:?} is not understood: {why}")]
    Rule {
        /// The trader.
        id: String,
        /// The rule as written, or the part of it the error is about
        /// (at most [`EXCERPT`] characters).
        rule: String,
        /// What to write instead.
        why: String,
    },
}

fn parse_rule(rule: &str) -> Result<Rule, crate::rule::ParseError> {
    #[cfg(feature = "testing")]
    {
        let compact: String = rule.chars().filter(|c| !c.is_whitespace()).collect();
        let arg = |name: &str| {
            compact
                .strip_prefix(name)
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse().ok())
        };
        if let Some(after) = arg("test_abort_after(") {
            return Ok(Rule::TestAbortAfter { after });
        }
        if let Some(after) = arg("test_spin_after(") {
            return Ok(Rule::TestSpinAfter { after });
        }
        if let Some(kib) = arg("test_leak_kib(") {
            return Ok(Rule::TestLeakKib { kib });
        }
    }
    let expr = crate::rule::parse(rule)?;
    let lookback = expr.warmup() + 1;
    Ok(Rule::Expr(Box::new(Compiled { expr, lookback })))
}

/// Characters of a rule an error message quotes, at most.
pub const EXCERPT: usize = 80;

/// The part of `rule` an error at `line` and `column` (1-based) is about:
/// the whole rule if it is short, else at most [`EXCERPT`] characters of
/// that line around the column, with `...` where it was cut.
pub fn excerpt(rule: &str, line: usize, column: usize) -> String {
    if rule.chars().count() <= EXCERPT {
        return rule.to_owned();
    }
    let text: Vec<char> = rule
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or_default()
        .chars()
        .collect();
    if text.len() <= EXCERPT {
        return text.into_iter().collect();
    }
    let start = column
        .saturating_sub(1)
        .saturating_sub(EXCERPT / 2)
        .min(text.len() - EXCERPT);
    let end = start + EXCERPT;
    let mut out = String::new();
    if start > 0 {
        out.push_str("...");
    }
    out.extend(&text[start..end]);
    if end < text.len() {
        out.push_str("...");
    }
    out
}

/// The name of worker slot `slot`'s black box: a small shared region the
/// coordinator owns and the worker writes the trader it is evaluating into,
/// so a crash can be pinned on a trader.
pub fn black_box_name(instance: &crate::InstanceName, slot: u32) -> String {
    format!("/shmkline-{instance}-bb{slot}")
}

/// A trader id's 64-bit FNV-1a digest, as written into the black box (never 0).
pub fn trader_hash(id: &str) -> u64 {
    crate::rule::fnv1a(id).max(1)
}

impl TraderSpec {
    /// Checks the spec and compiles its rule. The frames the trader will need
    /// are not measured here: [`crate::admit::admit`] does both, where a
    /// trader enters.
    pub fn compile(&self) -> Result<Rule, SpecError> {
        let id_ok = (1..=MAX_TRADER_ID).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !id_ok {
            return Err(SpecError::Id(self.id.clone()));
        }
        if matches!(&self.symbols, Symbols::List(l) if l.is_empty()) {
            return Err(SpecError::NoSymbols(self.id.clone()));
        }
        let rule = parse_rule(&self.rule).map_err(|e| SpecError::Rule {
            id: self.id.clone(),
            rule: excerpt(&self.rule, e.line, e.column),
            why: e.to_string(),
        })?;
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rule: &str) -> TraderSpec {
        TraderSpec {
            id: "t1".into(),
            version: 1,
            symbols: Symbols::All,
            interval: Interval::M1,
            rule: rule.into(),
            cooldown: 0,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn rules_parse_and_print_back() {
        for text in [
            "crosses_above(close, sma(close, 20))",
            "crosses_below(close,sma(close,5))",
            "rsi(14) < 30 and crosses_above(ema(close, 9), ema(close, 21))",
        ] {
            let rule = spec(text).compile().expect("valid");
            assert_eq!(parse_rule(&rule.to_string()), Ok(rule));
        }
        assert_eq!(
            spec("crosses_above(close, sma(close, 20))")
                .compile()
                .map(|r| r.lookback()),
            Ok(21)
        );
    }

    #[test]
    fn a_refused_rule_is_quoted_around_the_error_not_whole() {
        // 100,000 characters: refused for its length, quoted in part.
        let long = format!("close > 1{}", " ".repeat(99_991));
        let err = spec(&long).compile().expect_err("too long").to_string();
        assert!(err.len() < 300, "{} characters: {err}", err.len());
        assert!(err.contains("at most 4096"), "{err}");
        // An error in the middle of a long rule: the quote is around it.
        let rule = format!("close > {}foo(2)", "1 + ".repeat(500));
        let err = spec(&rule)
            .compile()
            .expect_err("unknown function")
            .to_string();
        let quoted = err.split('"').nth(1).unwrap_or_default();
        assert!(quoted.chars().count() <= EXCERPT + 6, "{quoted}");
        assert!(
            quoted.starts_with("...") && quoted.ends_with("foo(2)") && err.contains("column 2009"),
            "{err}"
        );
        assert_eq!(excerpt("short", 1, 3), "short");
        let line: String = (0..200)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let cut = excerpt(&line, 1, 100);
        assert_eq!(cut.chars().count(), EXCERPT + 6, "{cut}");
        assert!(cut.starts_with("...") && cut.ends_with("..."), "{cut}");
        assert!(excerpt(&line, 1, 1).ends_with("...") && !excerpt(&line, 1, 1).starts_with("..."));
    }

    #[test]
    fn bad_specs_say_what_to_write() {
        let err = spec("rsi(14) <")
            .compile()
            .expect_err("incomplete")
            .to_string();
        assert!(
            err.contains("trader t1") && err.contains("column 10"),
            "{err}"
        );
        let mut s = spec("crosses_above(close, sma(close, 20))");
        s.id = "a b".into();
        assert!(matches!(s.compile(), Err(SpecError::Id(_))));
        s.id = "ok".into();
        s.symbols = Symbols::List(vec![]);
        assert!(matches!(s.compile(), Err(SpecError::NoSymbols(_))));
    }
}
