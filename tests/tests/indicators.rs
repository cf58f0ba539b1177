//! Every indicator of the rule language against TA-Lib's values on the real
//! BTCUSDT candles (`tests/fixtures/talib/btcusdt-2000.json`, made by
//! `scripts/talib_reference.py` from the `ta-lib` wheel): within 1e-9
//! relative wherever TA-Lib has a value, and undefined exactly where TA-Lib's
//! warm-up is.

use std::path::Path;

use harness::data_file;
use protocol::Candle;
use protocol::rule::{self, Expr};
use worker::point::{Memo, Point};
use worker::testkit::series as ta;

const BTC: &str = "BTCUSDT-1m-2021-02-19_25.csv";

#[test]
fn every_indicator_matches_talib_on_real_candles() {
    let path = data_file(BTC);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/talib/btcusdt-2000.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture).expect("the TA-Lib fixture"))
            .expect("JSON");
    let n = reference["candles"].as_u64().expect("candles") as usize;
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(path)
        .expect("data")
        .lines()
        .take(n)
        .map(|l| l.split(',').map(|x| x.parse().expect("number")).collect())
        .collect();
    let col = |k: usize| rows.iter().map(|r| r[k]).collect::<Vec<f64>>();
    let (h, l, c, v) = (col(2), col(3), col(4), col(5));
    let candles: Vec<Candle> = rows
        .iter()
        .map(|r| Candle {
            open_time: r[0] as i64,
            open: r[1],
            high: r[2],
            low: r[3],
            close: r[4],
            volume: r[5],
        })
        .collect();
    let [macd_line, macd_signal, macd_hist] = ta::macd(&c, 12, 26, 9);
    let [upper, middle, lower] = ta::bollinger(&c, 20, 2.0);
    let ours: Vec<(&str, Vec<f64>)> = vec![
        ("sma(close, 20)", ta::sma(&c, 20)),
        ("ema(close, 9)", ta::ema(&c, 9)),
        ("ema(close, 21)", ta::ema(&c, 21)),
        ("wma(close, 10)", ta::wma(&c, 10)),
        ("rsi(close, 14)", ta::rsi(&c, 14)),
        ("stddev(close, 20)", ta::stddev(&c, 20)),
        ("roc(close, 10)", ta::roc(&c, 10)),
        ("highest(high, 20)", ta::highest(&h, 20)),
        ("lowest(low, 20)", ta::lowest(&l, 20)),
        ("atr(14)", ta::atr(&h, &l, &c, 14)),
        ("macd(close, 12, 26, 9).line", macd_line),
        ("macd(close, 12, 26, 9).signal", macd_signal),
        ("macd(close, 12, 26, 9).hist", macd_hist),
        ("bollinger(close, 20, 2).upper", upper),
        ("bollinger(close, 20, 2).middle", middle),
        ("bollinger(close, 20, 2).lower", lower),
        ("vwap(20)", ta::vwap(&h, &l, &c, &v, 20)),
    ];
    let mut report = Vec::new();
    for (name, series) in &ours {
        let want = reference["series"][name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} in the fixture"));
        assert_eq!(want.len(), series.len(), "{name}");
        let mut worst: f64 = 0.0;
        let mut compared = 0;
        for (i, (w, got)) in want.iter().zip(series).enumerate() {
            match w.as_f64() {
                None => assert!(
                    got.is_nan(),
                    "{name}[{i}]: TA-Lib has no value yet, we have {got}"
                ),
                Some(w) => {
                    assert!(!got.is_nan(), "{name}[{i}]: TA-Lib has {w}, we have none");
                    let rel = (got - w).abs() / w.abs().max(1e-300);
                    // Values at zero (a MACD crossing it) compare absolutely.
                    let err = if w.abs() < 1e-6 { (got - w).abs() } else { rel };
                    assert!(
                        err <= 1e-9,
                        "{name}[{i}]: {got} vs TA-Lib {w} (relative {rel:e})"
                    );
                    worst = worst.max(err);
                    compared += 1;
                }
            }
        }
        assert!(compared > n / 2, "{name}: only {compared} values compared");
        report.push(format!(
            "{name}: {compared} values, worst relative error {worst:e}"
        ));
        // What rules see: the same indicator written in the rule language,
        // evaluated candle by candle as a worker does (kept states stepped,
        // re-anchored every ANCHOR_EVERY candles), once past its warm-up.
        let expr = rule::parse(&format!("{name} > 0")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let Expr::Cmp(_, ind, _) = &expr else {
            panic!("{name}: a comparison")
        };
        let mut memo = Memo::new(64);
        let (mut checked, mut worst_rule) = (0, 0.0f64);
        for (i, w) in want.iter().enumerate().skip(ind.warmup()) {
            let got = Point::new(&candles, 0, &mut memo).value(ind, i);
            let Some(w) = w.as_f64() else {
                panic!("{name}[{i}]: past the rule's warm-up TA-Lib has a value")
            };
            let err = (got - w).abs() / if w.abs() < 1e-6 { 1.0 } else { w.abs() };
            assert!(err <= 1e-9, "rule {name}[{i}]: {got} vs TA-Lib {w}");
            worst_rule = worst_rule.max(err);
            checked += 1;
        }
        assert!(
            checked > n / 2,
            "rule {name}: only {checked} values compared"
        );
        report.push(format!(
            "  in a rule: {checked} values, worst relative error {worst_rule:e}"
        ));
    }
    eprintln!("{}", report.join("\n"));
}
