//! The pointwise evaluator against a second, obvious one (every node as a
//! whole series, indicators by the reference series functions), and its
//! promises: a value is the same from any window holding its warm-up,
//! memos change nothing, kept states are stepped, and the deepest rules
//! accepted evaluate on a small stack.

use proptest::prelude::*;
use protocol::Candle;
use protocol::rule::*;

use crate::point;
use crate::testkit::series as indicators;

// A second evaluator, the obvious one: every node as a whole series over the
// window, indicators by the series functions. `Point` must agree with it.
/// Columns of a window of candles.
struct Columns {
    open: Vec<f64>,
    high: Vec<f64>,
    low: Vec<f64>,
    close: Vec<f64>,
    volume: Vec<f64>,
}

impl Columns {
    /// The columns of `candles`.
    fn of(candles: &[Candle]) -> Self {
        Self {
            open: candles.iter().map(|c| c.open).collect(),
            high: candles.iter().map(|c| c.high).collect(),
            low: candles.iter().map(|c| c.low).collect(),
            close: candles.iter().map(|c| c.close).collect(),
            volume: candles.iter().map(|c| c.volume).collect(),
        }
    }

    fn len(&self) -> usize {
        self.close.len()
    }

    fn field(&self, f: Field) -> &[f64] {
        match f {
            Field::Open => &self.open,
            Field::High => &self.high,
            Field::Low => &self.low,
            Field::Close => &self.close,
            Field::Volume => &self.volume,
        }
    }
}

fn truth(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// A pointwise combination; NaN (undefined) wherever an input is.
fn zip(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else {
                f(x, y)
            }
        })
        .collect()
}

/// The expression's value at every candle of `cols` (conditions as 1.0 /
/// 0.0), NaN where it is not defined.
fn series(e: &Expr, cols: &Columns) -> Vec<f64> {
    let n = cols.len();
    match e {
        Expr::Num(v) => vec![*v; n],
        Expr::Field(f) => cols.field(*f).to_vec(),
        Expr::Back(e, k) => {
            let s = series(e, cols);
            (0..n)
                .map(|i| if i >= *k { s[i - k] } else { f64::NAN })
                .collect()
        }
        Expr::Neg(e) => series(e, cols).into_iter().map(|v| -v).collect(),
        Expr::Arith(op, a, b) => {
            let (a, b) = (series(a, cols), series(b, cols));
            match *op {
                "+" => zip(&a, &b, |x, y| x + y),
                "-" => zip(&a, &b, |x, y| x - y),
                "*" => zip(&a, &b, |x, y| x * y),
                _ => zip(&a, &b, |x, y| if y == 0.0 { f64::NAN } else { x / y }),
            }
        }
        Expr::Cmp(op, a, b) => {
            // No value compares false: 0.0 where either side has none.
            let (a, b) = (series(a, cols), series(b, cols));
            let cmp = |f: fn(f64, f64) -> bool| -> Vec<f64> {
                a.iter().zip(&b).map(|(&x, &y)| truth(f(x, y))).collect()
            };
            match *op {
                "<" => cmp(|x, y| x < y),
                "<=" => cmp(|x, y| x <= y),
                ">" => cmp(|x, y| x > y),
                ">=" => cmp(|x, y| x >= y),
                "==" => cmp(|x, y| x == y),
                _ => cmp(|x, y| !x.is_nan() && !y.is_nan() && x != y),
            }
        }
        Expr::And(a, b) => series(a, cols)
            .into_iter()
            .zip(series(b, cols))
            .map(|(x, y)| truth(x == 1.0 && y == 1.0))
            .collect(),
        Expr::Or(a, b) => series(a, cols)
            .into_iter()
            .zip(series(b, cols))
            .map(|(x, y)| truth(x == 1.0 || y == 1.0))
            .collect(),
        Expr::Not(a) => series(a, cols)
            .into_iter()
            .map(|v| truth(v != 1.0))
            .collect(),
        Expr::Cross(above, a, b) => {
            let (a, b) = (series(a, cols), series(b, cols));
            (0..n)
                .map(|i| {
                    if i == 0 || [a[i - 1], b[i - 1], a[i], b[i]].iter().any(|v| v.is_nan()) {
                        return truth(false);
                    }
                    truth(if *above {
                        a[i - 1] <= b[i - 1] && a[i] > b[i]
                    } else {
                        a[i - 1] >= b[i - 1] && a[i] < b[i]
                    })
                })
                .collect()
        }
        Expr::Ind(ind) => indicator(&ind.kind, cols),
    }
}

fn indicator(kind: &Indicator, cols: &Columns) -> Vec<f64> {
    use indicators as ta;
    match kind {
        Indicator::Sma(s, p) => ta::sma(&series(s, cols), *p),
        Indicator::Ema(s, p) => ta::ema(&series(s, cols), *p),
        Indicator::Wma(s, p) => ta::wma(&series(s, cols), *p),
        Indicator::Rsi(s, p) => ta::rsi(&series(s, cols), *p),
        Indicator::Stddev(s, p) => ta::stddev(&series(s, cols), *p),
        Indicator::Roc(s, p) => ta::roc(&series(s, cols), *p),
        Indicator::Highest(s, p) => ta::highest(&series(s, cols), *p),
        Indicator::Lowest(s, p) => ta::lowest(&series(s, cols), *p),
        Indicator::Atr(p) => ta::atr(&cols.high, &cols.low, &cols.close, *p),
        Indicator::Vwap(p) => ta::vwap(&cols.high, &cols.low, &cols.close, &cols.volume, *p),
        Indicator::Macd {
            src,
            fast,
            slow,
            signal,
            part,
        } => {
            let [line, sig, hist] = ta::macd(&series(src, cols), *fast, *slow, *signal);
            match part {
                MacdPart::Line => line,
                MacdPart::Signal => sig,
                MacdPart::Hist => hist,
            }
        }
        Indicator::Bollinger { src, n, k, part } => {
            let [upper, middle, lower] = ta::bollinger(&series(src, cols), *n, *k);
            match part {
                BandPart::Upper => upper,
                BandPart::Middle => middle,
                BandPart::Lower => lower,
            }
        }
    }
}

fn candles(closes: &[f64]) -> Vec<Candle> {
    closes
        .iter()
        .enumerate()
        .map(|(i, &c)| Candle {
            open_time: i as i64 * 60_000,
            open: c,
            high: c + 1.0,
            low: c - 1.0,
            close: c,
            volume: 1.0 + i as f64,
        })
        .collect()
}

#[test]
fn verdicts_read_the_window_and_values_name_each_indicator_as_written() {
    let rule = parse("crosses_above(close, sma(close, 3)) and close[1] <= 1").expect("valid");
    assert_eq!(rule.warmup(), 3);
    let cols = Columns::of(&candles(&[1.0, 1.0, 1.0, 5.0]));
    assert_eq!(series(&rule, &cols)[3], 1.0);
    assert_eq!(
        series(&rule, &cols)[2],
        0.0,
        "false before the warm-up: its operands have no value yet"
    );
    let cols = Columns::of(&candles(&[5.0, 5.0, 5.0, 1.0]));
    assert_eq!(series(&rule, &cols)[3], 0.0);
    let rule = protocol::trader::TraderSpec {
        id: "v".into(),
        version: 0,
        symbols: protocol::trader::Symbols::All,
        interval: protocol::Interval::M1,
        rule: "sma( close,3 ) > 1 and rsi(2) > 0".into(),
        cooldown: 0,
        labels: Default::default(),
    }
    .compile()
    .expect("valid");
    // Long enough for the RSI's settled span and anchor (2 + 34 + 31 candles).
    let rising: Vec<f64> = (1..=80).map(f64::from).collect();
    let v = crate::verdict::values(&rule, &candles(&rising));
    assert_eq!(v.len(), 2);
    assert_eq!(v["sma( close,3 )"], 79.0);
    assert_eq!(v["rsi(2)"], 100.0);
}

proptest! {
    #[test]
    fn rule_shaped_text_never_panics(s in "[a-z_]{0,8}\\(?[0-9., ()\\[\\]<>=!+*/-]{0,30}(and|or|not)?[a-z0-9(), .\\[\\]]{0,30}") {
        if let Ok(e) = parse(&s) {
            // Whatever parses evaluates without panicking.
            let cols = Columns::of(&candles(&[1.0, 2.0, 3.0, 2.0, 1.0, 0.0, 5.0]));
            let _ = series(&e, &cols);
            prop_assert_eq!(parse(&e.to_string()).ok(), Some(e));
        }
    }
}

fn walk(n: usize) -> Vec<Candle> {
    crate::testkit::random_walk(n, 7)
}

#[test]
fn a_value_is_the_same_from_any_window_holding_its_warmup_and_memos_change_nothing() {
    use point::{Memo, Point};
    let candles = walk(1500);
    for text in [
        "rsi(14) < 40 and crosses_above(ema(close, 9), ema(close, 21))",
        "macd(12, 26, 9).hist > 0 or close > bollinger(20, 2).upper",
        "ema(rsi(6), 5) > 50 and atr(14) > 0.5 and vwap(10) > 0",
        "sma(stddev(close, 20), 20) < stddev(close, 20) and ema(wma(close, 5), 7) > lowest(low, 9)",
        "sma(rsi(14), 50) > 50 and ema(close, 9)[20] < close",
    ] {
        let e = parse(text).expect(text);
        let need = e.warmup() + 1;
        // Candle by candle over the whole series, as a worker goes: kept
        // states are stepped, and re-anchored every ANCHOR_EVERY candles.
        let mut shared = Memo::new(1 << 10);
        let mut undefined = 0;
        for at in need - 1..candles.len() {
            let stepped = Point::new(&candles, 0, &mut shared).value(&e, at);
            // Afresh, from the shortest window that holds the warm-up.
            let base = at + 1 - need;
            let short = Point::new(&candles[base..=at], base as u64, &mut Memo::new(64))
                .value(&e, need - 1);
            assert_eq!(stepped.to_bits(), short.to_bits(), "{text} at {at}");
            assert!(!stepped.is_nan(), "{text} at {at}");
            // One candle too short: an indicator has no value, never a
            // guess. (An anchor is not always as far back as it can be, so
            // the shorter window sometimes holds it; then the value is the
            // same.) The rule is only ever judged on a full window.
            let too_short = &candles[base + 1..=at];
            for ind in e.indicators() {
                let ie = Expr::Ind(ind.clone());
                let full = Point::new(&candles[base..=at], base as u64, &mut Memo::new(64))
                    .value(&ie, need - 1);
                let shorter =
                    Point::new(too_short, base as u64 + 1, &mut Memo::new(64)).value(&ie, need - 2);
                if shorter.is_nan() {
                    undefined += 1;
                } else {
                    assert_eq!(shorter.to_bits(), full.to_bits(), "{} at {at}", ind.text);
                }
            }
        }
        assert!(undefined > 0, "{text}: the warm-up is needed somewhere");
        let (fresh, steps) = shared.counters();
        assert!(
            steps > 10 * fresh && fresh > 0,
            "{text}: states were stepped ({steps} steps, {fresh} fresh runs)"
        );
        // The indicators agree with the whole-series computation once settled.
        let at = 1499;
        for ind in e.indicators() {
            let ie = Expr::Ind(ind.clone());
            let pointwise = Point::new(&candles, 0, &mut Memo::new(64)).value(&ie, at);
            let whole = series(&ie, &Columns::of(&candles))[at];
            assert!(
                (pointwise - whole).abs() <= 1e-9 * whole.abs().max(1.0),
                "{}: {pointwise} vs {whole}",
                ind.text
            );
        }
        assert!(!shared.is_empty() && shared.len() <= shared.bound());
    }
}

#[test]
fn forgetting_a_series_keeps_the_others() {
    use point::{Memo, Point};
    let candles = walk(300);
    let e = parse("ema(close, 5) > 0").expect("valid");
    let mut memo = Memo::new(64);
    for series in [1, 2] {
        memo.on_series(series);
        assert!(!Point::new(&candles, 0, &mut memo).value(&e, 299).is_nan());
    }
    assert_eq!(memo.len(), 2);
    memo.forget_series(1);
    assert_eq!(memo.len(), 1);
    memo.forget_series(2);
    assert!(memo.is_empty());
}

#[test]
fn values_read_far_back_are_kept_not_recomputed() {
    use point::{Memo, Point};
    let candles = walk(1500);
    // 50 rsi(14) values per candle, 34 of them further back than a slot
    // keeps at first, and one ema(close, 9) 20 candles back.
    let e = parse("sma(rsi(14), 50) > 50 and ema(close, 9)[20] < close").expect("valid");
    let mut memo = Memo::new(64);
    let first = e.warmup();
    for at in first..candles.len() {
        assert!(!Point::new(&candles, 0, &mut memo).value(&e, at).is_nan());
    }
    let (fresh, _) = memo.counters();
    let judged = (candles.len() - first) as u64;
    // Recomputing the old values would be ~35 fresh runs per candle; kept,
    // it is about one per indicator per ANCHOR_EVERY candles, plus the start.
    assert!(
        fresh < judged / 4,
        "{fresh} fresh runs for {judged} candles"
    );
}

/// Every recursion over a rule is bounded by [`MAX_DEPTH`]: the deepest rules
/// the parser accepts (brackets, `not`, unary minus, nested indicators, and
/// chains, whose operators each add a level) parse and evaluate on a thread
/// with the default 2 MiB stack (a worker's evaluation thread has 16), and
/// one level more is refused with the limit named: so whatever `backtest`
/// accepts, a worker evaluates alike. The issue's chain of 2,040 terms (under
/// the 4,096-byte limit) overflowed a worker's stack; it is refused now.
#[test]
fn the_deepest_rules_accepted_evaluate_on_a_small_stack() {
    let n = MAX_DEPTH;
    // Each is exactly MAX_DEPTH levels deep (by the parser's nesting or the
    // tree's levels), then one more.
    let rules = |n: usize| {
        vec![
            format!("{}close{} > 1", "(".repeat(n), ")".repeat(n)),
            format!("close > 1{}", " - 1".repeat(n - 2)),
            format!("{}close > 1", "not ".repeat(n - 2)),
            format!("close > {}1", "-".repeat(n - 2)),
            format!("{}close{} > 1", "sma(".repeat(n - 2), ", 1)".repeat(n - 2)),
            format!(
                "close > 0{}",
                " and close > 0".repeat(n - 2).replace("and", "or")
            ),
        ]
    };
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let candles = candles(&[1.0, 2.0, 3.0, 4.0]);
            for rule in rules(n) {
                let e = parse(&rule).unwrap_or_else(|err| panic!("{rule:.60}: {err}"));
                assert!(e.depth() <= MAX_DEPTH, "{rule:.60}: {}", e.depth());
                let window = &candles[candles.len() - (e.warmup() + 1).min(4)..];
                let mut memo = point::Memo::new(64);
                let _ = point::Point::new(window, 0, &mut memo).value(&e, window.len() - 1);
                let _ = e.to_string();
            }
            for rule in rules(n + 1) {
                let err = parse(&rule).expect_err("one level too deep");
                assert!(
                    err.message.contains(&MAX_DEPTH.to_string()),
                    "{rule:.60}: {err}"
                );
            }
            let chain = format!("close > 1{}", "-1".repeat(2039));
            assert!(chain.len() <= MAX_RULE_LEN);
            let err = parse(&chain).expect_err("2,040 terms");
            assert!(err.message.contains("levels deep"), "{err}");
        })
        .expect("thread")
        .join()
        .expect("no stack overflow");
}

/// No value (TradingView's `na`): division by zero and an indicator
/// without its warm-up have none; arithmetic with no value has none; a
/// comparison or a cross involving no value is false, so `not` of it is
/// true; `and` and `or` combine conditions; a signal's `values` entry for
/// it is null.
#[test]
fn no_value_semantics_case_by_case() {
    // Zero volume throughout, closes 1, 2, 3, ...: `x / 0` has no value.
    let quiet: Vec<Candle> = candles(&(1..=40).map(f64::from).collect::<Vec<_>>())
        .into_iter()
        .map(|c| Candle { volume: 0.0, ..c })
        .collect();
    let at = quiet.len() - 1;
    let cases: &[(&str, f64)] = &[
        ("close / 0 > 1", 0.0),
        ("close / 0 < 1", 0.0),
        ("close / 0 == close / 0", 0.0),
        ("close / 0 != 1", 0.0),
        ("not (close / 0 > 1)", 1.0),
        ("close / 0 + 1 > 0", 0.0),
        ("-(close / 0) < 0", 0.0),
        ("close / 0 > 1 or close > 0", 1.0),
        ("close / 0 > 1 and close > 0", 0.0),
        ("crosses_above(close / 0, 1)", 0.0),
        ("crosses_below(close, close / 0)", 0.0),
        ("volume / sma(volume, 20) > 3", 0.0),
        ("sma(close / 0, 3) > 0", 0.0),
        ("close / 2 > 0", 1.0),
        ("0 / close == 0", 1.0),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|&(text, want)| {
            let e = parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
            let got = point::Point::new(&quiet, 0, &mut point::Memo::new(64)).value(&e, at);
            let series_says = series(&e, &Columns::of(&quiet))[at];
            (got != want || series_says != want).then(|| {
                format!("{text}: {got} (the series evaluator: {series_says}), want {want}")
            })
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The number itself has none, and a signal's `values` say null for it.
    let ratio = parse("close / 0 > 1 or close > 0").expect("valid");
    let Expr::Or(cmp, _) = &ratio else {
        panic!("an or")
    };
    let Expr::Cmp(_, division, _) = cmp.as_ref() else {
        panic!("a comparison")
    };
    let v = point::Point::new(&quiet, 0, &mut point::Memo::new(64)).value(division, at);
    assert!(v.is_nan(), "{v}");
    let rule = protocol::admit::admit(&protocol::trader::TraderSpec {
        id: "thin".into(),
        version: 0,
        symbols: protocol::trader::Symbols::All,
        interval: protocol::Interval::M1,
        rule: "close > sma(volume, 3) / sma(volume, 3) or close > 0".into(),
        cooldown: 0,
        labels: Default::default(),
    })
    .expect("valid");
    let values = crate::verdict::values(&rule, &quiet);
    assert_eq!(values["sma(volume, 3)"], 0.0);
    let line = serde_json::to_string(&values).expect("json");
    assert_eq!(line, r#"{"sma(volume, 3)":0.0}"#);
    let mut with_none = values.clone();
    with_none.insert("x".into(), f64::NAN);
    assert_eq!(
        serde_json::to_string(&with_none).expect("json"),
        r#"{"sma(volume, 3)":0.0,"x":null}"#,
        "no value is null in JSON"
    );
}
