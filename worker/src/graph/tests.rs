//! The graph against the pointwise evaluator it replaces: the same verdict
//! and the same values, bit for bit, at every candle; and nodes shared and
//! dropped by reference.

use protocol::Candle;
use protocol::rule::Expr;
use protocol::trader::{Rule, Symbols, TraderSpec};

use super::program::Values;
use super::series::SeriesState;
use super::*;
use crate::point::{Memo, Point};

fn rule(text: &str) -> Rule {
    TraderSpec {
        id: "t".into(),
        version: 0,
        symbols: Symbols::All,
        interval: protocol::Interval::M1,
        rule: text.into(),
        cooldown: 0,
        labels: Default::default(),
    }
    .compile()
    .unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn expr(r: &Rule) -> &Expr {
    &r.compiled().expect("a rule of the language").expr
}

/// Rules of every shape the language has: each indicator, nested ones,
/// computed sources, history, crosses, `not` of no value.
pub(crate) const RULES: &[&str] = &[
    "rsi(14) < 30",
    "rsi(7) < 25 and rsi(14) > 10",
    "crosses_above(ema(close, 9), ema(close, 21))",
    "crosses_below(sma(close, 5), sma(close, 30))",
    "crosses_above(macd(12, 26, 9).hist, 0) and rsi(14) > 40",
    "crosses_above(close, bollinger(close, 20, 2.5).upper)",
    "close < bollinger(close, 20, 2).lower or close > bollinger(close, 20, 1).middle",
    "high - low > 3 * atr(14)",
    "roc(close, 10) > 3 and volume > 2 * sma(volume, 20)",
    "crosses_above(close, highest(high, 20)[1])",
    "crosses_below(close, lowest(low, 20)[1])",
    "wma(close, 10) > sma(close, 10)",
    "stddev(close, 20) > 1.5",
    "vwap(20) < close",
    "sma(rsi(14), 5) > 50",
    "ema(close - open, 10) > 0",
    "rsi(ema(close, 5), 9) < 40",
    "ema(sma(close, 5), 10) > close[3]",
    "(close - close[1]) / close[1] * 100 > 0.5",
    "not (close > open) or volume > 2 * sma(volume, 20)",
    "crosses_above(macd(close, 8, 21, 5).line, macd(close, 8, 21, 5).signal)",
    "macd(ema(close, 3), 12, 26, 9).signal > 0",
    "highest(rsi(14), 10) > 70",
    "sma(close / open, 4) > 1 and not (ema(close, 3) / 0 > 1)",
    "atr(5)[2] > atr(5)",
];

/// The pointwise evaluator's verdict and values for candle `end - 1`, its
/// window `candles[end - w..end]` as a worker reads it.
fn point_at(
    r: &Rule,
    candles: &[Candle],
    end: usize,
    w: usize,
    memo: &mut Memo,
) -> (f64, Vec<f64>) {
    let c = r.compiled().expect("compiled");
    let (window, base) = (&candles[end - w..end], (end - w) as u64);
    let mut p = Point::new(window, base, memo);
    let verdict = p.value(&c.expr, w - 1);
    let values = c
        .expr
        .indicators()
        .into_iter()
        .map(|ind| p.value(&Expr::Ind(ind.clone()), w - 1))
        .collect();
    (verdict, values)
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Every rule on a long random walk: the graph's verdict and values equal
/// the pointwise evaluator's at every candle with its window, bit for bit
/// (the graph computing every rule at once, sharing nodes).
#[test]
fn every_value_equals_the_pointwise_evaluators() {
    let candles = crate::testkit::random_walk(1500, 7);
    let rules: Vec<Rule> = RULES.iter().map(|t| rule(t)).collect();
    let mut graph = Graph::default();
    let compiled: Vec<Compiled> = rules
        .iter()
        .map(|r| graph.add(expr(r)).expect("added"))
        .collect();
    graph.plan(compiled.iter().map(|c| (c, 0)));
    let all: Vec<NodeId> = compiled.iter().flat_map(|c| c.direct.clone()).collect();
    let mut state = SeriesState::new(&graph, &graph.closure(&all), 0);
    let mut memo = Memo::new(1 << 12);
    let mut checked = 0;
    for (i, c) in candles.iter().enumerate() {
        state.push(&graph, i as u64, *c);
        for (r, comp) in rules.iter().zip(&compiled) {
            let w = r.lookback();
            if i + 1 < w {
                continue;
            }
            let (verdict, values) = point_at(r, &candles, i + 1, w, &mut memo);
            let got = comp.program.eval(&state, i as u64);
            assert!(
                same(got, verdict),
                "{r} at {i}: graph {got}, pointwise {verdict}"
            );
            for ((text, node), want) in comp.values.iter().zip(values) {
                let got = state.node(*node, i as u64);
                assert!(
                    same(got, want),
                    "{text} at {i}: graph {got}, pointwise {want}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20_000, "{checked}");
    let (fresh, steps) = (state.fresh, state.steps);
    assert!(
        steps > 0 && fresh < steps / 4,
        "{fresh} fresh of {steps} steps"
    );
}

/// Two rules reading `rsi(14)`: one node; removing one keeps it, removing
/// both drops it and what it read.
#[test]
fn nodes_are_shared_and_dropped_by_reference() {
    let mut graph = Graph::default();
    let a = graph.add(expr(&rule("rsi(14) < 30"))).expect("a");
    let b = graph
        .add(expr(&rule("rsi(14) > 70 and sma(rsi(14), 5) > 50")))
        .expect("b");
    // rsi(14) (the `rsi(14)` of both rules) and sma(rsi(14), 5).
    assert_eq!(graph.len(), 2);
    assert!(a.direct.iter().any(|n| b.direct.contains(n)));
    let c = graph
        .add(expr(&rule(
            "ema(close - open, 10) > 0 and ema(close-open,10) < 5",
        )))
        .expect("c");
    // ema(...) and the computed `close - open` once each.
    assert_eq!(graph.len(), 4);
    graph.remove(&a);
    assert_eq!(graph.len(), 4, "b still reads rsi(14)");
    graph.remove(&b);
    assert_eq!(graph.len(), 2);
    graph.remove(&c);
    assert!(graph.is_empty());
    // Ids are reused.
    let d = graph.add(expr(&rule("rsi(14) < 30"))).expect("d");
    assert!(d.direct.iter().all(|&n| (n as usize) < 4));
}

/// Past the bound a rule is refused whole, naming the limit.
#[test]
fn the_node_bound_refuses_a_rule_whole() {
    let mut graph = Graph::default();
    let mut added = 0;
    let mut k = 2;
    let e = loop {
        // A computed source and its SMA: two nodes a rule.
        let text = format!("sma(close * {k}, 2) > 0");
        match graph.add(expr(&rule(&text))) {
            Ok(_) => added += 2,
            Err(e) => break e,
        }
        k += 1;
        assert!(k < 20_000, "never refused");
    };
    assert_eq!(graph.len(), added);
    assert!(added <= NODE_BOUND && added + 2 > NODE_BOUND, "{added}");
    assert!(e.to_string().contains(&NODE_BOUND.to_string()), "{e}");
}
