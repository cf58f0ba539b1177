//! `shmkline traders add|remove|list` against a running engine: a bad file
//! changes nothing; added traders start with the next closed candle and
//! then signal exactly as the backtest says; a removed trader is silent
//! from the moment it is removed.

use std::collections::BTreeSet;
use std::time::Duration;

use harness::{ChildGuard, TestInstance, normalized_signals};

const WAIT: Duration = Duration::from_secs(60);
const STEP_MS: i64 = 60_000;

fn traders_in(inst: &TestInstance) -> BTreeSet<String> {
    inst.trader_ids()
}

#[test]
fn traders_are_added_and_removed_while_running() {
    let inst = TestInstance::new("traders");
    let dir = tempfile::tempdir().expect("tempdir");
    let run_args = ["--candles", "400", "--symbols", "2"];
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--rate", "100", "--ping-interval", "20"])
        .args(run_args);
    let mut child = ChildGuard::spawn(&mut cmd);
    child.capture_stdout();
    inst.status_when(WAIT, |s| s["feed"]["batches"].as_u64() >= Some(60));
    let defaults: BTreeSet<String> = ["sma10-down", "sma10-up", "sma30-down", "sma30-up"]
        .map(String::from)
        .into();
    assert_eq!(traders_in(&inst), defaults);

    // A bad file is refused with its path and the reason; nothing changes.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"id":"fine","symbols":"*","interval":"1m","rule":"rsi(14) < 30"},
            {"id":"broken","symbols":"*","interval":"1m","rule":"rsx(14) < 30"}]"#,
    )
    .expect("write");
    let out = inst.shmkline(&["traders", "add", &bad.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.json") && stderr.contains("unknown function `rsx`"),
        "{stderr}"
    );
    let taken = dir.path().join("taken.json");
    std::fs::write(
        &taken,
        r#"{"id":"sma10-up","symbols":"*","interval":"1m","rule":"rsi(14) < 30"}"#,
    )
    .expect("write");
    let out = inst.shmkline(&["traders", "add", &taken.to_string_lossy()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );
    assert_eq!(
        traders_in(&inst),
        defaults,
        "a refused add changed the traders"
    );

    // Two traders added: they start with the next closed candle.
    let new = dir.path().join("new.json");
    let new_traders = r#"[{"id":"late-rsi","symbols":"*","interval":"1m","rule":"rsi(6) < 45","cooldown":2},
                          {"id":"late-sma","symbols":"*","interval":"1m","rule":"crosses_above(close, sma(close, 5))"}]"#;
    std::fs::write(&new, new_traders).expect("write");
    let out = inst.shmkline(&["traders", "add", &new.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let added_after = added["last_batch_at"]
        .as_i64()
        .expect("the last batch before the add");
    std::thread::sleep(Duration::from_millis(300));

    // One removed.
    let out = inst.shmkline(&["traders", "remove", "sma10-up"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let removed_after = removed["last_batch_at"]
        .as_i64()
        .expect("the last batch before the removal");
    let now: BTreeSet<String> = traders_in(&inst);
    assert!(
        now.contains("late-rsi") && now.contains("late-sma") && !now.contains("sma10-up"),
        "{now:?}"
    );
    let out = inst.shmkline(&["traders", "remove", "sma10-up"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no trader sma10-up"));

    let (exit, stdout, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "run failed: {stderr}");
    let signals = normalized_signals(&stdout);

    // The oracle: every trader over the whole feed, then cut where each joined or left.
    let all = dir.path().join("all.json");
    let mut every: Vec<serde_json::Value> = serde_json::from_str(new_traders).expect("JSON");
    for (id, dir, n) in [
        ("sma10-up", "above", 10),
        ("sma10-down", "below", 10),
        ("sma30-up", "above", 30),
        ("sma30-down", "below", 30),
    ] {
        every.push(
            serde_json::json!({"id": id, "symbols": "*", "interval": "1m",
            "rule": format!("crosses_{dir}(close, sma(close, {n}))")}),
        );
    }
    std::fs::write(&all, serde_json::Value::Array(every).to_string()).expect("write");
    let oracle =
        inst.backtest_signals(&[&["--traders", &all.to_string_lossy()], &run_args[..]].concat());
    let field =
        |s: &str, k: &str| serde_json::from_str::<serde_json::Value>(s).expect("JSON")[k].clone();
    let delivered = |s: &str| field(s, "open_time").as_i64().expect("open time") + STEP_MS;
    let want: Vec<String> = oracle
        .iter()
        .filter(|s| match field(s, "trader").as_str() {
            Some("late-rsi" | "late-sma") => delivered(s) > added_after,
            Some("sma10-up") => false,
            _ => true,
        })
        .cloned()
        .collect();
    let (got_removed, got_rest): (Vec<String>, Vec<String>) = signals
        .into_iter()
        .partition(|s| field(s, "trader") == "sma10-up");
    assert_eq!(
        got_rest, want,
        "added traders must signal exactly from the next candle on"
    );
    assert!(
        want.iter().any(|s| field(s, "trader") == "late-rsi"),
        "the added trader never signalled"
    );
    // The removed trader: only signals from before its removal, all true ones.
    assert!(!got_removed.is_empty());
    for s in &got_removed {
        assert!(
            delivered(s) <= removed_after,
            "a signal after the removal: {s}"
        );
        assert!(oracle.contains(s), "not in the oracle: {s}");
    }
    inst.assert_clean();
}

#[test]
fn bench_traders_reports_pass_and_signal_figures() {
    let inst = TestInstance::new("bench-traders");
    let out = inst.shmkline(&[
        "bench",
        "traders",
        "--json",
        "--traders",
        "12",
        "--symbols",
        "3",
        "--candles",
        "80",
        "--rate",
        "80",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench traders failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for run in ["pairs_run", "latency_run"] {
        let r = &report[run];
        let workers = r["workers"].as_array().expect("workers");
        assert_eq!(workers.len(), 2, "{report}");
        for w in workers {
            assert!(w["passes"].as_u64() >= Some(10), "{report}");
            assert!(w["pass_p99_us"].as_u64() > Some(0), "{report}");
            assert!(
                w["pass_p99_us"].as_u64() >= w["pass_p50_us"].as_u64(),
                "{report}"
            );
        }
        assert_eq!(
            workers
                .iter()
                .map(|w| w["traders"].as_u64().unwrap_or(0))
                .sum::<u64>(),
            12
        );
    }
    assert_eq!(report["pairs_run"]["pairs"], 36);
    assert!(
        report["latency_run"]["signals"].as_u64() > Some(0),
        "{report}"
    );
    assert!(
        report["latency_run"]["signal_p99_us"].as_u64() > Some(0),
        "{report}"
    );
    assert_eq!(
        report["targets"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    inst.assert_clean();
}

#[test]
fn a_trader_removed_and_added_again_runs_again() {
    let inst = TestInstance::new("traders-readd");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--rate",
        "50",
        "--symbols",
        "2",
        "--ping-interval",
        "20",
    ]);
    let mut child = ChildGuard::spawn(&mut cmd);
    child.capture_stdout();
    inst.status_when(WAIT, |s| s["feed"]["batches"].as_u64() >= Some(5));
    let file = dir.path().join("again.json");
    std::fs::write(
        &file,
        r#"{"id":"sma10-up","symbols":"*","interval":"1m","rule":"rsi(6) < 45"}"#,
    )
    .expect("write");
    let out = inst.shmkline(&["traders", "remove", "sma10-up"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Added back at once: refused while the worker still holds the old one,
    // accepted as soon as it let go.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = inst.shmkline(&["traders", "add", &file.to_string_lossy()]);
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("still being removed"), "{stderr}");
        assert!(std::time::Instant::now() < deadline, "never accepted again");
    }
    let status = |inst: &TestInstance| {
        let out = inst.shmkline(&["traders", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["traders"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["id"] == "sma10-up").cloned())
            .expect("listed")
    };
    let deadline = std::time::Instant::now() + WAIT;
    while status(&inst)["state"] != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "the re-added trader never ran: {}",
            status(&inst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(&inst)["rule"], "rsi(6) < 45");
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let (exit, _, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "{stderr}");
    inst.assert_clean();
}

/// The exchange's rule for a symbol, as every refusal says it.
const SYMBOL_RULE: &str =
    "an exchange symbol is 2 to 20 characters from A-Z and 0-9, upper-cased first";

/// Symbols no exchange lists (a path, a dot pair, an emoji, an underscore)
/// used to be taken from a trader file and from the live feed's
/// `--symbols`. Now a trader file naming one is refused at load (exit 1,
/// as any bad trader file: nothing starts, nothing printed) with the file,
/// the trader, the symbol and the rule; `run --feed binance --symbols`
/// with one is a bad command line (exit 2) refused before any connection
/// to the exchange, naming the flag, the symbol and the rule.
#[test]
fn symbols_no_exchange_has_are_refused_where_they_enter() {
    let inst = TestInstance::new("badsym");
    let dir = tempfile::tempdir().expect("tempdir");
    for (k, symbol) in ["BAD/SYM", "..", "\u{1F680}", "BTC_USDT"]
        .iter()
        .enumerate()
    {
        let file = dir.path().join(format!("odd{k}.json"));
        std::fs::write(
            &file,
            serde_json::json!([
                {"id": "fine", "symbols": ["SYN000"], "interval": "1m", "rule": "close > 1"},
                {"id": "odd", "symbols": ["SYN001", symbol], "interval": "1m", "rule": "close > 1"},
            ])
            .to_string(),
        )
        .expect("write");
        let path = file.to_string_lossy();
        for command in ["run", "backtest"] {
            let out = inst.shmkline(&[command, "--candles", "50", "--traders", &path]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {symbol:?}: {stderr}");
            assert!(
                stderr.contains(&format!("odd{k}.json"))
                    && stderr.contains("trader odd")
                    && stderr.contains(&format!("{symbol:?}"))
                    && stderr.contains(SYMBOL_RULE),
                "{command} {symbol:?}: {stderr}"
            );
            assert!(out.stdout.is_empty(), "{command} {symbol:?} ran");
        }
    }
    inst.assert_clean();

    // The exchange stand-in: a listener no one may connect to.
    let exchange = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    exchange.set_nonblocking(true).expect("nonblocking");
    let at = exchange.local_addr().expect("addr");
    let endpoint = format!("ws://{at},http://{at}");
    for symbols in ["bad/sym", "btcusdt,..", "btc_usdt"] {
        let mut cmd = inst.command("shmkline");
        cmd.args(["run", "--feed", "binance", "--symbols", symbols])
            .args(["--endpoint", &endpoint]);
        let run = ChildGuard::spawn(&mut cmd);
        let (status, stderr) = run.wait(WAIT);
        assert_eq!(status.code(), Some(2), "--symbols {symbols}: {stderr}");
        assert!(
            stderr.contains("--symbols") && stderr.contains(SYMBOL_RULE),
            "--symbols {symbols}: {stderr}"
        );
        let named = symbols.rsplit(',').next().unwrap_or_default();
        assert!(stderr.contains(&format!("{named:?}")), "{stderr}");
        assert!(
            matches!(exchange.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "--symbols {symbols}: the exchange was contacted"
        );
    }
    inst.assert_clean();
}

/// Writes `n` traders with ids `prefix0..` (each its own SMA length, so
/// their rules differ) as one JSON file.
fn many_traders(dir: &std::path::Path, prefix: &str, n: usize) -> std::path::PathBuf {
    let path = dir.join(format!("{prefix}.json"));
    let traders: Vec<serde_json::Value> = (0..n)
        .map(|k| {
            serde_json::json!({"id": format!("{prefix}{k}"), "symbols": "*", "interval": "1m",
                "rule": format!("close > sma(close, {})", 5 + k % 50)})
        })
        .collect();
    std::fs::write(&path, serde_json::Value::Array(traders).to_string()).expect("write");
    path
}

/// The trader ids kept in the state directory.
fn kept_ids(inst: &TestInstance) -> BTreeSet<String> {
    let text = std::fs::read(inst.state_dir.join("traders.json")).expect("traders.json");
    let kept: Vec<serde_json::Value> = serde_json::from_slice(&text).expect("JSON");
    kept.iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect()
}

/// Thousands of traders added at once, and an add the loop takes longer
/// to apply than a status request may wait: each client gets the real
/// outcome (added, exit 0), the set is kept, and nothing is applied behind
/// an error. The slow loop is the `testing` hook SHMKLINE_TEST_ADD_DELAY_MS
/// (3 s, past the 2 s a status request waits).
#[test]
fn traders_add_answers_what_happened_however_long_the_change_takes() {
    let inst = TestInstance::new("traders-big");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--rate", "20", "--symbols", "2"])
        .env("SHMKLINE_TEST_ADD_DELAY_MS", "3000");
    let mut child = ChildGuard::spawn(&mut cmd);
    child.capture_stdout();
    inst.status_when(WAIT, |s| s["feed"]["batches"].as_u64() >= Some(2));
    let mut want = traders_in(&inst);
    for (prefix, n) in [("a", 8_000), ("b", 8_000), ("c", 2)] {
        let file = many_traders(dir.path(), prefix, n);
        let out = inst.shmkline(&["traders", "add", &file.to_string_lossy()]);
        assert!(
            out.status.success(),
            "adding {n} traders: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(answer["added"].as_array().map(Vec::len), Some(n), "{n}");
        assert_eq!(answer["persisted"], true);
        want.extend((0..n).map(|k| format!("{prefix}{k}")));
    }
    assert_eq!(traders_in(&inst).len(), 16_006);
    assert_eq!(traders_in(&inst), want);
    assert_eq!(kept_ids(&inst), want);
    // The hook held the loop 3 s for each add: the adds were answered after
    // that, not refused as busy at 2 s.
    let status = inst.status_when(WAIT, |_| true);
    let max_us = status["control"]["loop_us"]["other"]["max_us"]
        .as_f64()
        .expect("the adds' loop time");
    assert!(
        max_us >= 3e6,
        "the loop was not held: {}",
        status["control"]
    );
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let (exit, _, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "{stderr}");
    inst.assert_clean();
}

/// A change the state directory cannot keep (its traders.json made a
/// directory, so the rename into place fails as a full disk would) is not
/// applied, and the client says so with a non-zero exit; once the directory
/// is writable again, changes are kept, and a restart brings back exactly
/// the set the clients were told about.
#[test]
fn a_trader_change_that_cannot_be_kept_is_refused_and_not_applied() {
    let inst = TestInstance::new("traders-kept");
    let dir = tempfile::tempdir().expect("tempdir");
    let start = |inst: &TestInstance| {
        let mut cmd = inst.command("shmkline");
        cmd.args(["run", "--rate", "20", "--symbols", "2"]);
        let mut child = ChildGuard::spawn(&mut cmd);
        child.capture_stdout();
        inst.status_when(WAIT, |s| s["feed"]["batches"].as_u64() >= Some(2));
        child
    };
    let child = start(&inst);
    let before = traders_in(&inst);
    let kept = inst.state_dir.join("traders.json");
    std::fs::remove_file(&kept).expect("remove traders.json");
    std::fs::create_dir(&kept).expect("a directory in its place");
    std::fs::write(kept.join("blocker"), "").expect("make it non-empty");

    let file = many_traders(dir.path(), "x", 3);
    let out = inst.shmkline(&["traders", "add", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an add that was not kept exited 0");
    assert!(
        stderr.contains("could not be kept")
            && stderr.contains("renaming it into place")
            && stderr.contains("nothing was added"),
        "{stderr}"
    );
    let out = inst.shmkline(&["traders", "remove", "sma10-up"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a removal that was not kept exited 0"
    );
    assert!(stderr.contains("nothing was removed"), "{stderr}");
    assert_eq!(traders_in(&inst), before, "a change was applied unkept");

    std::fs::remove_dir_all(&kept).expect("writable again");
    let out = inst.shmkline(&["traders", "add", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = inst.shmkline(&["traders", "remove", "sma10-up"]);
    assert!(out.status.success());
    let told = traders_in(&inst);
    assert!(
        told.contains("x0") && !told.contains("sma10-up"),
        "{told:?}"
    );
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let (exit, _, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "{stderr}");

    let child = start(&inst);
    assert_eq!(
        traders_in(&inst),
        told,
        "the restart brought back another set"
    );
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let (exit, _, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "{stderr}");
    inst.assert_clean();
}
