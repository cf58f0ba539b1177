//! A trader's verdicts on a window of candles: the raw verdict of its rule,
//! the cooldown on top, and the `values` a signal carries. The one place
//! `run` (through the worker) and `backtest` judge a candle.

use std::collections::BTreeMap;

use protocol::Candle;
use protocol::rule::Expr;
use protocol::trader::Rule;

use crate::point::{Memo, Point};

/// Whether the trader signals on the last candle of `window`: a raw verdict,
/// and no raw verdict on any of the `cooldown` candles before it. `window`
/// holds `lookback + cooldown` candles, the first with absolute index `base`
/// in its series; `memo` shares indicator values with other traders judging
/// the same series (see [`crate::point`]). Defined over raw verdicts
/// (not over signals already emitted) so that it stays a pure function of
/// the window.
pub fn signals_with(
    rule: &Rule,
    cooldown: usize,
    window: &[Candle],
    base: u64,
    memo: &mut Memo,
) -> bool {
    let Some(c) = rule.compiled() else {
        // Never a verdict: their effect is in the worker.
        return false;
    };
    if window.len() != c.lookback + cooldown {
        return false;
    }
    let mut point = Point::new(window, base, memo);
    let last = window.len() - 1;
    point.value(&c.expr, last) == 1.0
        && (1..=cooldown).all(|back| point.value(&c.expr, last - back) != 1.0)
}

/// The raw verdict at position `at` of `window` (whose first candle has
/// absolute index `base`): true only if the window holds the rule's warm-up
/// before `at` and the rule holds there.
pub fn verdict_at(rule: &Rule, window: &[Candle], at: usize, base: u64, memo: &mut Memo) -> bool {
    let Some(c) = rule.compiled() else {
        return false;
    };
    at + 1 >= c.lookback && Point::new(window, base, memo).value(&c.expr, at) == 1.0
}

/// [`signals_with`] on its own, the window taken as the start of its series
/// (recursive indicators are anchored on absolute indices, so a window from
/// elsewhere can differ from a worker's in the last bits): for tests.
#[cfg(test)]
pub(crate) fn signals(rule: &Rule, cooldown: usize, window: &[Candle]) -> bool {
    signals_with(rule, cooldown, window, 0, &mut Memo::new(LOCAL_MEMO))
}

/// The raw verdict of `rule` on the last candle of `window` (exactly
/// `rule.lookback()` candles, oldest first), as [`signals`] does: for tests.
#[cfg(test)]
pub(crate) fn verdict(rule: &Rule, window: &[Candle]) -> bool {
    signals(rule, 0, window)
}

/// Each indicator of the rule (by its text as written) on the last candle
/// of `window`, for the signal's `values`.
pub fn values_with(
    rule: &Rule,
    window: &[Candle],
    base: u64,
    memo: &mut Memo,
) -> BTreeMap<String, f64> {
    let Some(c) = rule.compiled() else {
        return BTreeMap::new();
    };
    let Some(last) = window.len().checked_sub(1) else {
        return BTreeMap::new();
    };
    let mut point = Point::new(window, base, memo);
    c.expr
        .indicators()
        .into_iter()
        .map(|ind| (ind.text.clone(), point.value(&Expr::Ind(ind.clone()), last)))
        .collect()
}

/// [`values_with`] on its own, as [`signals`] does: for tests.
#[cfg(test)]
pub(crate) fn values(rule: &Rule, window: &[Candle]) -> BTreeMap<String, f64> {
    values_with(rule, window, 0, &mut Memo::new(LOCAL_MEMO))
}

/// (Indicator, series) slots a single evaluation keeps.
#[cfg(test)]
const LOCAL_MEMO: usize = 1 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Interval;
    use protocol::trader::{Symbols, TraderSpec};

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

    fn rule(text: &str) -> Rule {
        spec(text).compile().expect(text)
    }

    #[test]
    fn cross_above_the_sma() {
        let above = rule("crosses_above(close, sma(close, 3))");
        // SMA(3) before: (1+1+1)/3 = 1, previous close 1 <= 1; now (1+1+5)/3 = 2.33 < 5.
        assert!(verdict(&above, &closes(&[1.0, 1.0, 1.0, 5.0])));
        assert!(!verdict(&above, &closes(&[5.0, 5.0, 5.0, 1.0])));
        assert!(
            !verdict(&above, &closes(&[1.0, 5.0])),
            "wrong window length is no verdict"
        );
        let below = rule("crosses_below(close, sma(close, 3))");
        assert!(verdict(&below, &closes(&[5.0, 5.0, 5.0, 1.0])));
    }

    #[test]
    fn cooldown_suppresses_a_verdict_right_after_another() {
        let r = rule("crosses_above(close, sma(close, 2))");
        // Raw verdicts: index 3 (1,1 -> 4) and index 5 (3 -> 9).
        let c = closes(&[1.0, 1.0, 1.0, 4.0, 3.0, 9.0]);
        assert!(verdict(&r, &c[1..4]));
        assert!(verdict(&r, &c[3..6]));
        assert!(signals(&r, 0, &c[3..6]));
        assert!(signals(&r, 1, &c[2..6]), "index 4 had no verdict");
        assert!(
            !signals(&r, 2, &c[1..6]),
            "index 3 had one, within the cooldown of 2"
        );
    }
}
