//! The evaluation graph seen from outside: its node bound refused where
//! traders enter (a start, `traders add`), at its limit and one past it,
//! with traders sharing nodes counted once; and an exchange correction of
//! a closed candle recomputed from the ring, so what follows it equals a
//! fresh backtest of the corrected candles.

use std::path::Path;
use std::time::Duration;

use harness::{ChildGuard, TestInstance, normalized_signals};
use protocol::rule::NODE_BOUND;

const WAIT: Duration = Duration::from_secs(120);

/// `n` traders `k0..` each making two nodes of their own: a computed source
/// `close * k` and its SMA (`sma(close * k, 2)`).
fn two_node_traders(dir: &Path, name: &str, from: usize, n: usize) -> std::path::PathBuf {
    let path = dir.join(name);
    let traders: Vec<serde_json::Value> = (from..from + n)
        .map(|k| {
            serde_json::json!({"id": format!("k{k}"), "symbols": "*", "interval": "1m",
                "rule": format!("sma(close * {}, 2) > 1000000", k + 1)})
        })
        .collect();
    std::fs::write(&path, serde_json::Value::Array(traders).to_string()).expect("write");
    path
}

/// One worker: traders making one node more than its graph may hold are
/// refused at the start; exactly as many start, a `traders add` of a new
/// node is refused naming the limit (nothing added), one whose nodes all
/// exist is accepted at the limit.
#[test]
fn the_node_bound_is_refused_where_traders_enter_at_its_limit() {
    let inst = TestInstance::new("gbound");
    let dir = tempfile::tempdir().expect("tempdir");
    let half = NODE_BOUND / 2;
    let over = two_node_traders(dir.path(), "over.json", 0, half + 1);
    let out = inst
        .command("shmkline")
        .args([
            "run",
            "--workers",
            "1",
            "--symbols",
            "1",
            "--candles",
            "5",
            "--traders",
        ])
        .arg(&over)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} distinct indicators and computed series",
            NODE_BOUND + 2
        )) && stderr.contains(&format!("past the limit of {NODE_BOUND} per worker"))
            && stderr.contains("--workers"),
        "{stderr}"
    );
    inst.assert_clean();

    // Exactly at the limit: it runs.
    let at = two_node_traders(dir.path(), "at.json", 0, half);
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--workers",
        "1",
        "--symbols",
        "1",
        "--rate",
        "5",
        "--traders",
    ])
    .arg(&at);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    let status = inst.status_when(WAIT, |s| {
        s["workers"][0]["state"] == "ready"
            && s["workers"][0]["traders"].as_u64() == Some(half as u64)
    });
    assert_eq!(status["workers"][0]["traders"], half as u64);
    // One more node: refused whole.
    let one_more = two_node_traders(dir.path(), "one.json", half, 1);
    let out = inst.shmkline(&["traders", "add", &one_more.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("past the limit of {NODE_BOUND} per worker"))
            && stderr.contains("nothing was added"),
        "{stderr}"
    );
    assert_eq!(inst.trader_ids().len(), half);
    // A rule whose nodes all exist makes none: accepted at the limit.
    let shared = dir.path().join("shared.json");
    std::fs::write(
        &shared,
        r#"{"id": "shared", "symbols": "*", "interval": "1m", "rule": "sma(close * 1, 2) < 0 and sma(close * 2, 2) < 0"}"#,
    )
    .expect("write");
    let out = inst.shmkline(&["traders", "add", &shared.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(inst.trader_ids().len(), half + 1);
    inst.status_when(WAIT, |s| {
        s["workers"][0]["traders"].as_u64() == Some(half as u64 + 1)
    });
    run.signal(nix::sys::signal::Signal::SIGTERM);
    let (exit, _, stderr) = run.wait_output(WAIT);
    assert!(exit.success(), "{stderr}");
    inst.assert_clean();
}

/// A replay whose candle 300 comes again with another close (an exchange
/// correction of the last closed candle): the run counts it, and every
/// signal after it equals a backtest of the corrected candles (the series'
/// nodes are computed again from the ring, not stepped on from values of
/// the candle as it was).
#[test]
fn a_corrected_candle_is_recomputed_and_what_follows_equals_the_backtest() {
    let inst = TestInstance::new("gcorr");
    let dir = tempfile::tempdir().expect("tempdir");
    let data =
        std::fs::read_to_string(harness::data_file("BTCUSDT-1m-2021-02-19_25.csv")).expect("data");
    let lines: Vec<&str> = data.lines().take(800).collect();
    let corrected = {
        let mut f: Vec<String> = lines[300].split(',').map(str::to_owned).collect();
        let close: f64 = f[4].parse().expect("close");
        f[4] = format!("{:.2}", close * 1.01);
        f[2] = format!(
            "{:.2}",
            f[2].parse::<f64>().expect("high").max(close * 1.01)
        );
        f.join(",")
    };
    let mut text: Vec<String> = lines[..=300].iter().map(|l| (*l).to_owned()).collect();
    text.push(corrected.clone());
    text.extend(lines[301..].iter().map(|l| (*l).to_owned()));
    let replay = dir.path().join("BTCUSDT-1m-corrected.csv");
    std::fs::write(&replay, text.join("\n") + "\n").expect("write");
    let traders = dir.path().join("traders.json");
    std::fs::write(
        &traders,
        r#"[{"id": "rsi", "symbols": "*", "interval": "1m", "rule": "rsi(14) < 45"},
            {"id": "ema", "symbols": "*", "interval": "1m", "rule": "crosses_above(ema(close, 5), sma(close, 20))"},
            {"id": "band", "symbols": "*", "interval": "1m", "rule": "close > bollinger(close, 20, 1.5).upper"}]"#,
    )
    .expect("write");
    let feed = format!("replay:{}", replay.display());
    let traders_arg = traders.to_string_lossy().into_owned();
    let args = [
        "--feed",
        &feed,
        "--traders",
        &traders_arg,
        "--intervals",
        "1m",
    ];
    let mut cmd = inst.command("shmkline");
    cmd.arg("run").args(args).args(["--rate", "400", "--stay"]);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    let status = inst.status_when(WAIT, |s| s["feed"]["evaluated"] == true);
    assert_eq!(
        status["feed"]["corrections"], 1,
        "the correction reached the store: {}",
        status["feed"]
    );
    run.signal(nix::sys::signal::Signal::SIGTERM);
    let (exit, stdout, stderr) = run.wait_output(WAIT);
    assert!(exit.success(), "{stderr}");
    let open_300: i64 = lines[300]
        .split(',')
        .next()
        .and_then(|t| t.parse().ok())
        .expect("open time");
    let after = |signals: Vec<String>| -> Vec<String> {
        signals
            .into_iter()
            .filter(|s| {
                serde_json::from_str::<serde_json::Value>(s).expect("json")["open_time"]
                    .as_i64()
                    .is_some_and(|t| t > open_300)
            })
            .collect()
    };
    let got = after(normalized_signals(&stdout));
    let want = after(inst.backtest_signals(&args));
    assert!(want.len() > 20, "{}", want.len());
    assert_eq!(got, want, "after the correction, run equals the backtest");
    inst.assert_clean();
}
