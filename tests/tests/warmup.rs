//! Rules users write work from the first minute (issue 13): long-period
//! indicators run with the defaults (the rings are sized from the traders),
//! agree with TA-Lib, show their warm-up, and a trader added at run time
//! that its ring cannot hold is refused with the figure.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use harness::{ChildGuard, TestInstance, data_file, normalized_signals};
use nix::sys::signal::Signal;

const BTC: &str = "BTCUSDT-1m-2021-02-19_25.csv";

fn write(dir: &Path, name: &str, traders: serde_json::Value) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, traders.to_string()).expect("write traders");
    path
}

/// With the defaults, `close > ema(close, 200)` and the EMA golden cross
/// (2,5xx candles of window each; refused before, as "more than half the
/// ring") run on the real week: `run` equals `backtest`, and every verdict
/// and `values` entry agrees with TA-Lib's EMA(50) and EMA(200)
/// (`tests/fixtures/talib/btcusdt-ema-week.json`) past the warm-up.
#[test]
fn long_period_rules_run_with_the_defaults_and_agree_with_talib() {
    let data = data_file(BTC);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "ema.json",
        serde_json::json!([
            {"id": "above200", "symbols": "*", "interval": "1m", "rule": "close > ema(close, 200)"},
            {"id": "golden", "symbols": "*", "interval": "1m",
             "rule": "crosses_above(ema(close, 50), ema(close, 200))"},
        ]),
    );
    let feed = format!("replay:{}", data.display());
    let args = [
        "--traders",
        file.to_str().expect("utf-8"),
        "--feed",
        &feed,
        "--intervals",
        "1m",
    ];
    let inst = TestInstance::new("ema");
    let run = inst.shmkline(&[&["run", "--workers", "2"], &args[..]].concat());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "run refused or failed: {stderr}");
    assert!(stderr.contains("ring plan"), "the plan is logged: {stderr}");
    let got = normalized_signals(&run.stdout);
    let expected = inst.backtest_signals(&args);
    assert!(
        got == expected,
        "run == backtest ({} vs {})",
        got.len(),
        expected.len()
    );

    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/talib/btcusdt-ema-week.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).expect("fixture")).expect("JSON");
    let talib = |n: u32| -> Vec<f64> {
        reference["series"][format!("ema(close, {n})")]
            .as_array()
            .expect("series")
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let (ema50, ema200) = (talib(50), talib(200));
    let rows: Vec<(i64, f64)> = std::fs::read_to_string(&data)
        .expect("data")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().expect("time"), f[4].parse().expect("close"))
        })
        .collect();
    let close = |k: usize| rows[k].1;
    let signals: Vec<serde_json::Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let fired = |trader: &str| -> BTreeSet<i64> {
        signals
            .iter()
            .filter(|s| s["trader"] == trader)
            .filter_map(|s| s["open_time"].as_i64())
            .collect()
    };
    let (above, golden) = (fired("above200"), fired("golden"));
    // The first verdict: the rule's whole window (settled warm-up and
    // anchor) is held.
    let first = signals
        .iter()
        .filter_map(|s| s["open_time"].as_i64())
        .min()
        .expect("signals");
    let start = rows.iter().position(|r| r.0 == first).expect("a candle");
    assert!(start > 2_500, "verdicts start past the warm-up: {start}");
    let (mut checked, mut close_calls) = (0, 0);
    for k in start..rows.len() {
        let t = rows[k].0;
        let want_above = close(k) > ema200[k];
        let want_golden = ema50[k - 1] <= ema200[k - 1] && ema50[k] > ema200[k];
        // Where TA-Lib's EMA is within 1e-9 of the close (or of the other
        // EMA), rounding may decide: those are counted, not judged.
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
        if near(close(k), ema200[k])
            || near(ema50[k], ema200[k])
            || near(ema50[k - 1], ema200[k - 1])
        {
            close_calls += 1;
            continue;
        }
        assert_eq!(
            above.contains(&t),
            want_above,
            "close > ema(close, 200) at {t}"
        );
        assert_eq!(golden.contains(&t), want_golden, "the golden cross at {t}");
        checked += 1;
    }
    assert!(checked > 7_000, "{checked} candles judged against TA-Lib");
    assert!(!golden.is_empty(), "the week has golden crosses");
    assert_eq!(close_calls, 0, "no verdict was a matter of rounding");
    // `values` carry the indicators as TA-Lib computes them.
    for s in &signals {
        let t = s["open_time"].as_i64().expect("time");
        let k = rows.iter().position(|r| r.0 == t).expect("a candle");
        for (text, reference) in [("ema(close, 200)", ema200[k]), ("ema(close, 50)", ema50[k])] {
            if let Some(v) = s["values"][text].as_f64() {
                assert!(
                    (v - reference).abs() <= 1e-9 * reference.abs(),
                    "{text} at {t}: {v} vs TA-Lib {reference}"
                );
            }
        }
    }
    inst.assert_clean();
}

/// A running engine: `traders list` shows each trader's window and, per
/// series, how much of it the store holds; a trader added at run time that
/// its interval's ring cannot hold is refused with the figure and the flag
/// to restart with, and nothing running changes.
#[test]
fn warmup_is_visible_and_a_trader_too_long_for_its_ring_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inst = TestInstance::new("warm");
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--rate",
        "200",
        "--symbols",
        "2",
        "--intervals",
        "1m,5m",
    ])
    .args(["--ping-interval", "50"]);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    inst.status_when(Duration::from_secs(60), |s| {
        s["workers"]
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["state"] == "ready"))
    });
    // The default traders read 31 candles (sma30 crosses): warm once 31 are held.
    let list = |inst: &TestInstance| -> serde_json::Value {
        let out = inst.shmkline(&["traders", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let warm = loop {
        let l = list(&inst);
        let sma30 = l["traders"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["id"] == "sma30-up"))
            .cloned()
            .expect("sma30-up");
        if sma30["series"]
            .as_array()
            .is_some_and(|s| s.len() == 2 && s.iter().all(|x| x["warm"] == true))
        {
            break sma30;
        }
        assert!(std::time::Instant::now() < deadline, "never warm: {sma30}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(warm["window"], 31, "{warm}");
    assert!(warm["series"][0]["held"].as_u64() >= Some(31), "{warm}");
    let before = list(&inst);

    let file = write(
        dir.path(),
        "long.json",
        serde_json::json!({"id": "long", "symbols": "*", "interval": "1m", "rule": "close > ema(close, 200)"}),
    );
    let out = inst.shmkline(&["traders", "add", file.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("more than half the 1m ring (720 of 1440)")
            && err.contains("restart with --candles-per-series 1m=")
            && err.contains("nothing was added"),
        "{err}"
    );
    let after = list(&inst);
    let ids = |l: &serde_json::Value| -> Vec<String> {
        l["traders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(ids(&after), ids(&before), "nothing running changed");
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    inst.assert_clean();
}
