use proptest::prelude::*;

use super::*;

#[test]
fn valid_rules_round_trip_through_their_canonical_text() {
    for text in [
        "rsi(14) < 30 and crosses_above(ema(close, 9), ema(close, 21))",
        "close > bollinger(close, 20, 2).upper or macd(12, 26, 9).hist > 0",
        "(close - close[1]) / close[1] * 100 > 2 and volume > 2 * sma(volume, 20)",
        "not (atr(14) > 3) and vwap(20) < close and roc(close, 10) >= -1.5",
        "crosses_below(close, sma(close, 10))",
        "close * 1e-5 < 2.5E+3 and roc(close, 3) > -1e-2",
        "highest(high, 20)[1] < high or lowest(low, 20)[1] > low",
        "wma(close, 5) != stddev(close, 5) and macd(close, 5, 13, 4).signal == 0",
        "bollinger(20, 2).lower > low and rsi(hl2_is_not_a_field_so_this_fails, 3) > 1",
    ]
    .iter()
    .filter(|t| !t.contains("fails"))
    {
        let e = parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
        let canonical = e.to_string();
        let again = parse(&canonical).unwrap_or_else(|err| panic!("{canonical}: {err}"));
        assert_eq!(e, again, "{text} -> {canonical}");
        assert_eq!(again.to_string(), canonical);
    }
}

#[test]
fn invalid_rules_say_what_and_where() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 1, "empty"),
        ("close", 1, "a number, not a condition"),
        ("rsi(14) < ", 11, "expected a number"),
        ("rsi(14) << 30", 10, "expected a number"),
        (
            "rsi(14 < 30",
            12,
            "expected `)` to close the arguments of `rsi`",
        ),
        ("foo(14) > 1", 1, "unknown function `foo`"),
        ("closing > 1", 1, "unknown name `closing`"),
        ("close(1) > 1", 1, "candle field, not a function"),
        ("sma(close) > 1", 1, "sma takes a series and a period"),
        ("sma(close, 0) > 1", 12, "whole number from 1"),
        ("sma(close, 2.5) > 1", 12, "whole number"),
        ("ema(close, 1) > 1", 1, "at least 2"),
        ("close[x] > 1", 7, "whole number of candles back"),
        ("close > 1 close < 2", 11, "join conditions"),
        ("1 < close < 2", 11, "do not chain"),
        ("close and close > 1", 1, "this side is a number"),
        ("close > 1 + (close > 2)", 13, "this side is a condition"),
        (
            "macd(12, 26, 9).upper > 0",
            17,
            "parts line, signal and hist",
        ),
        ("macd(26, 12, 9).line > 0", 1, "fast < slow"),
        ("sma(close > 1, 5) > 1", 5, "not a condition"),
        ("close > 1 $", 11, "unexpected character"),
        ("(close > 1", 11, "expected `)`"),
        ("close >\n  sma(close, 0)", 14, "whole number"),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(rule, column, want)| match parse(rule) {
            Ok(_) => Some(format!("{rule:?} parsed")),
            Err(err) if !err.message.contains(want) || err.column != *column => Some(format!(
                "{rule:?}: {err} (wanted column {column}, {want:?})"
            )),
            Err(_) => None,
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        parse("close >\n  sma(close, 0)").expect_err("line 2").line,
        2
    );
    let deep = format!(
        "{}close > 1{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert!(
        parse(&deep)
            .expect_err("too deep")
            .message
            .contains("nests deeper")
    );
    assert!(parse(&"1".repeat(MAX_RULE_LEN + 1)).is_err());
}

#[test]
fn warmup_covers_each_indicator_and_settles_recursive_ones() {
    let w = |t: &str| parse(t).expect(t).warmup();
    assert_eq!(w("crosses_above(close, sma(close, 10))"), 10);
    assert_eq!(w("close[3] > sma(close, 5)"), 4);
    assert_eq!(w("roc(close, 10) > 0"), 10);
    // An EMA's seed must have faded: far more than its period.
    assert!(w("ema(close, 9) > 0") > 8 + 90);
    assert!(w("rsi(14) > 0") > 14 + 250);
    assert!(w("macd(12, 26, 9).hist > 0") > w("ema(close, 26) > 0"));
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
        let _ = parse(&s);
    }
}

/// One depth limit for the parser's nesting and the tree's levels: the
/// deepest rules accepted parse, one level more is refused naming the limit
/// (that they also evaluate on a small stack is the worker's test).
#[test]
fn the_depth_limit_binds_nesting_and_chains_alike() {
    // Brackets (the parser's nesting) and a chain (the tree's levels: the
    // comparison, then one per subtraction, then the leaf).
    let brackets = |n: usize| format!("{}close{} > 1", "(".repeat(n), ")".repeat(n));
    let chain = |n: usize| format!("close > 1{}", " - 1".repeat(n - 2));
    for rule in [brackets(MAX_DEPTH), chain(MAX_DEPTH)] {
        let e = parse(&rule).unwrap_or_else(|err| panic!("{rule:.60}: {err}"));
        assert!(e.depth() <= MAX_DEPTH, "{rule:.60}: {}", e.depth());
    }
    for rule in [brackets(MAX_DEPTH + 1), chain(MAX_DEPTH + 1)] {
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
}
