//! Trader specs as carried by ADD_TRADER, and the rules they name.
//!
//! The spec's shape (`id`, `symbols`, `interval`, `rule`, `cooldown`,
//! `labels`, plus a `version` for idempotent re-sends) is the one the rule
//! language will extend. For now a rule is one of two forms:
//! `crosses_above(close, sma(close, N))` and `crosses_below(close, sma(close, N))`.
//! A verdict is a pure function of the candle it is about and the N before it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::candle::{Candle, Interval};

/// Longest trader id.
pub const MAX_TRADER_ID: usize = 64;
/// Largest SMA period.
pub const MAX_PERIOD: u32 = 1000;

/// Which symbols a trader watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Symbols {
    /// Every symbol the feed has (`"*"` in spec files).
    All,
    /// These symbols.
    List(Vec<String>),
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

/// Which way a cross goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From at-or-below to above.
    Above,
    /// From at-or-above to below.
    Below,
}

/// A compiled rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// TEST ONLY, accepted only when `SHMKLINE_TEST_RULES=1` is set: the
    /// worker aborts when it evaluates a closed candle at index `after` or
    /// later. It exists so tests can prove a trader that keeps crashing its
    /// workers is quarantined.
    TestAbortAfter {
        /// First candle index that aborts.
        after: u64,
    },
    /// TEST ONLY, like [`Rule::TestAbortAfter`]: the evaluation loops forever
    /// at candle index `after`, so tests can prove a stuck evaluation is seen.
    TestSpinAfter {
        /// First candle index that hangs.
        after: u64,
    },
    /// The close crosses the simple moving average of the last `period` closes.
    CloseCrossesSma {
        /// Which way.
        direction: Direction,
        /// SMA length.
        period: u32,
    },
}

impl Rule {
    /// Candles a verdict needs: the candle itself and those before it.
    pub fn lookback(&self) -> usize {
        match self {
            // The SMA at this candle and at the previous one.
            Rule::CloseCrossesSma { period, .. } => *period as usize + 1,
            Rule::TestAbortAfter { .. } | Rule::TestSpinAfter { .. } => 1,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::CloseCrossesSma { direction, period } => {
                let name = match direction {
                    Direction::Above => "crosses_above",
                    Direction::Below => "crosses_below",
                };
                write!(f, "{name}(close, sma(close, {period}))")
            }
            Rule::TestAbortAfter { after } => write!(f, "test_abort_after({after})"),
            Rule::TestSpinAfter { after } => write!(f, "test_spin_after({after})"),
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
    /// Bad rule.
    #[error("trader {id}: rule {rule:?} is not understood: {why}")]
    Rule {
        /// The trader.
        id: String,
        /// The rule as written.
        rule: String,
        /// What to write instead.
        why: String,
    },
}

fn parse_rule(rule: &str) -> Result<Rule, String> {
    let compact: String = rule.chars().filter(|c| !c.is_whitespace()).collect();
    if std::env::var("SHMKLINE_TEST_RULES").is_ok_and(|v| v == "1") {
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
    }
    let hint = "this version understands crosses_above(close, sma(close, N)) and crosses_below(close, sma(close, N)) with 2 <= N <= 1000";
    let (direction, rest) =
        if let Some(rest) = compact.strip_prefix("crosses_above(close,sma(close,") {
            (Direction::Above, rest)
        } else if let Some(rest) = compact.strip_prefix("crosses_below(close,sma(close,") {
            (Direction::Below, rest)
        } else {
            return Err(hint.to_owned());
        };
    let digits = rest.strip_suffix("))").ok_or_else(|| hint.to_owned())?;
    let period: u32 = digits
        .parse()
        .map_err(|_| format!("period {digits:?} is not a whole number; {hint}"))?;
    if !(2..=MAX_PERIOD).contains(&period) {
        return Err(format!("period {period} is out of range; {hint}"));
    }
    Ok(Rule::CloseCrossesSma { direction, period })
}

/// The name of worker slot `slot`'s black box: a small shared region the
/// coordinator owns and the worker writes the trader it is evaluating into,
/// so a crash can be pinned on a trader.
pub fn black_box_name(instance: &crate::InstanceName, slot: u32) -> String {
    format!("/shmkline-{instance}-bb{slot}")
}

/// A trader id's 64-bit FNV-1a digest, as written into the black box (never 0).
pub fn trader_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

impl TraderSpec {
    /// Checks the spec and compiles its rule.
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
        parse_rule(&self.rule).map_err(|why| SpecError::Rule {
            id: self.id.clone(),
            rule: self.rule.clone(),
            why,
        })
    }
}

/// The raw verdict of `rule` on the last candle of `window` (which must hold
/// exactly `rule.lookback()` candles, oldest first).
pub fn verdict(rule: &Rule, window: &[Candle]) -> bool {
    match *rule {
        // Never a verdict: their effect is in the worker.
        Rule::TestAbortAfter { .. } | Rule::TestSpinAfter { .. } => false,
        Rule::CloseCrossesSma { direction, period } => {
            let n = period as usize;
            if window.len() != n + 1 {
                return false;
            }
            let mean = |w: &[Candle]| w.iter().map(|c| c.close).sum::<f64>() / n as f64;
            let (prev, now) = (&window[n - 1], &window[n]);
            let (sma_prev, sma_now) = (mean(&window[..n]), mean(&window[1..]));
            match direction {
                Direction::Above => prev.close <= sma_prev && now.close > sma_now,
                Direction::Below => prev.close >= sma_prev && now.close < sma_now,
            }
        }
    }
}

/// Whether the trader signals on the last candle of `window`: a raw verdict,
/// and no raw verdict on any of the `cooldown` candles before it. `window`
/// holds `lookback + cooldown` candles. Defined over raw verdicts (not over
/// signals already emitted) so that it stays a pure function of the window.
pub fn signals(rule: &Rule, cooldown: usize, window: &[Candle]) -> bool {
    let lookback = rule.lookback();
    if window.len() != lookback + cooldown {
        return false;
    }
    let last = window.len();
    if !verdict(rule, &window[last - lookback..]) {
        return false;
    }
    (1..=cooldown).all(|back| !verdict(rule, &window[last - back - lookback..last - back]))
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
    fn bad_rules_say_what_to_write() {
        for bad in [
            "rsi(14) < 30",
            "crosses_above(close, sma(close, 1))",
            "crosses_above(close, sma(close, x))",
            "",
        ] {
            let err = spec(bad).compile().expect_err(bad).to_string();
            assert!(err.contains("crosses_above(close, sma(close, N))"), "{err}");
        }
        let mut s = spec("crosses_above(close, sma(close, 20))");
        s.id = "a b".into();
        assert!(matches!(s.compile(), Err(SpecError::Id(_))));
        s.id = "ok".into();
        s.symbols = Symbols::List(vec![]);
        assert!(matches!(s.compile(), Err(SpecError::NoSymbols(_))));
    }

    fn closes(values: &[f64]) -> Vec<Candle> {
        values
            .iter()
            .enumerate()
            .map(|(i, &c)| Candle {
                open_time: i as i64 * 60_000,
                open: c,
                high: c,
                low: c,
                close: c,
                volume: 1.0,
            })
            .collect()
    }

    #[test]
    fn cross_above_the_sma() {
        let rule = Rule::CloseCrossesSma {
            direction: Direction::Above,
            period: 3,
        };
        // SMA(3) before: (1+1+1)/3 = 1, previous close 1 <= 1; now (1+1+5)/3 = 2.33 < 5.
        assert!(verdict(&rule, &closes(&[1.0, 1.0, 1.0, 5.0])));
        assert!(!verdict(&rule, &closes(&[5.0, 5.0, 5.0, 1.0])));
        assert!(
            !verdict(&rule, &closes(&[1.0, 5.0])),
            "wrong window length is no verdict"
        );
        let below = Rule::CloseCrossesSma {
            direction: Direction::Below,
            period: 3,
        };
        assert!(verdict(&below, &closes(&[5.0, 5.0, 5.0, 1.0])));
    }

    #[test]
    fn cooldown_suppresses_a_verdict_right_after_another() {
        let rule = Rule::CloseCrossesSma {
            direction: Direction::Above,
            period: 2,
        };
        // Raw verdicts: index 3 (1,1 -> 4) and index 5 (3 -> 9).
        let c = closes(&[1.0, 1.0, 1.0, 4.0, 3.0, 9.0]);
        assert!(verdict(&rule, &c[1..4]));
        assert!(verdict(&rule, &c[3..6]));
        assert!(signals(&rule, 0, &c[3..6]));
        assert!(signals(&rule, 1, &c[2..6]), "index 4 had no verdict");
        assert!(
            !signals(&rule, 2, &c[1..6]),
            "index 3 had one, within the cooldown of 2"
        );
    }
}
