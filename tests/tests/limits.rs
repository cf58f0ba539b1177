//! Every bound at and past its limit, end to end (issue 11): each test
//! reproduces a way the engine used to die, hang or lose signals at a load
//! users reach, and shows the limit is now checked where the input enters or
//! is harmless when reached.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use harness::{ChildGuard, TestInstance, data_file, normalized_signals};
use nix::sys::signal::Signal;

const STARTUP: Duration = Duration::from_secs(30);

/// Writes `traders` (JSON values) as a trader file in a fresh temp directory.
fn trader_file(dir: &tempfile::TempDir, name: &str, traders: &[serde_json::Value]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(
        &path,
        serde_json::Value::Array(traders.to_vec()).to_string(),
    )
    .expect("write trader file");
    path
}

fn trader(id: &str, rule: &str) -> serde_json::Value {
    serde_json::json!({ "id": id, "symbols": "*", "interval": "1m", "rule": rule })
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {stderr}",
        out.status
    );
    stderr
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sum of a worker field over the workers of a status.
fn workers_sum(status: &serde_json::Value, field: &str) -> u64 {
    status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w[field].as_u64())
        .sum()
}

fn faults(status: &serde_json::Value) -> u64 {
    status["supervision"]["faults"].as_u64().unwrap_or(u64::MAX)
}

/// Item 1: eight traders that fire on every candle, with labels, one
/// worker, the real BTCUSDT week as fast as it goes: a pass's signals fill
/// SIGNALS frames past the 36 KB at which the old decoder refused them
/// (bincode counted claimed memory against the frame size), and the worker
/// crash-looped. Now every signal arrives, equal to the backtest.
#[test]
fn bursts_larger_than_a_frame_reach_stdout_whole() {
    let data = data_file("BTCUSDT-1m-2021-02-19_25.csv");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders: Vec<_> = (2..10)
        .map(|n| {
            let mut t = trader(
                &format!("every{n}"),
                &format!("close > sma(close, {n}) or close <= sma(close, {n})"),
            );
            t["labels"] = serde_json::json!({ "desk": "burst", "n": n.to_string() });
            t
        })
        .collect();
    let file = trader_file(&dir, "every.json", &traders);
    let feed = format!("replay:{}", data.display());
    let inst = TestInstance::new("burst");
    let args = [
        "run",
        "--workers",
        "1",
        "--traders",
        file.to_str().expect("utf-8"),
        "--feed",
        &feed,
        "--stay",
    ];
    let mut run = ChildGuard::spawn(inst.command("shmkline").args(args));
    run.capture_stdout();
    let status = inst.status_when(Duration::from_secs(120), |s| s["feed"]["evaluated"] == true);
    let largest = workers_sum(&status, "largest_signal_frame_bytes");
    assert!(
        largest > 40_000,
        "the bursts reached past where the old decoder refused them: {status}"
    );
    assert_eq!(faults(&status), 0, "no worker fault: {status}");
    run.signal(Signal::SIGTERM);
    let (st, stdout, stderr) = run.wait_output(Duration::from_secs(60));
    assert!(st.success(), "{stderr}");
    let expected =
        inst.backtest_signals(&["--traders", file.to_str().expect("utf-8"), "--feed", &feed]);
    let got = normalized_signals(&stdout);
    assert_eq!(
        got.len(),
        8 * 10_080 - 36,
        "every candle of every trader but the warm-ups"
    );
    assert!(
        got == expected,
        "run == backtest ({} vs {})",
        got.len(),
        expected.len()
    );
    inst.assert_clean();
}

/// A market-wide move: 100 traders on 100 symbols all fire on the same
/// candle, several candles in a row (10,000 signals a candle, many frames
/// each), on two workers: every one printed once, equal to the backtest.
#[test]
fn a_market_wide_move_is_printed_whole_and_equals_the_backtest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let traders: Vec<_> = (0..100)
        .map(|n| trader(&format!("all{n:03}"), &format!("close > {}", n % 3)))
        .collect();
    let file = trader_file(&dir, "all.json", &traders);
    let path = file.to_str().expect("utf-8");
    let inst = TestInstance::new("wide");
    let common = ["--traders", path, "--symbols", "100", "--candles", "6"];
    let out = inst.shmkline(
        &[
            &[
                "run",
                "--workers",
                "2",
                "--rate",
                "20",
                "--ping-interval",
                "100",
            ],
            &common[..],
        ]
        .concat(),
    );
    assert_ok(&out, "run");
    let got = normalized_signals(&out.stdout);
    assert_eq!(
        got.len(),
        100 * 100 * 6,
        "every trader on every symbol on every candle"
    );
    let expected = inst.backtest_signals(&common);
    assert!(got == expected, "run == backtest");
    inst.assert_clean();
}

/// Rules slow enough that a replacement's catch-up of half a ring takes
/// seconds, and that fire seldom.
fn heavy_traders(n: usize) -> Vec<serde_json::Value> {
    let rules = [
        "rsi(14) < 2 and close < bollinger(close, 40, 3).lower",
        "crosses_above(ema(close, 9), ema(close, 40)) and rsi(21) > 97",
        "macd(12, 26, 9).hist > 1000 and wma(close, 30) > sma(close, 60)",
        "stddev(close, 50) > 1000 or highest(high, 80) < lowest(low, 80)",
    ];
    (0..n)
        .map(|k| trader(&format!("heavy{k:03}"), rules[k % rules.len()]))
        .collect()
}

/// Item 2: a worker killed while the feed runs half a ring ahead of it. The
/// replacement must judge 720 candles for 100 traders on 100 symbols; before,
/// its first pass took longer than the stall timeout with no progress
/// reported in between, so it was killed as stuck, again and again. Passes
/// are bounded now and report the candles judged: a slow replacement is not
/// a stuck one.
#[test]
fn a_replacement_catching_up_half_a_ring_is_not_killed_as_stalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = trader_file(&dir, "heavy.json", &heavy_traders(100));
    let inst = TestInstance::new("catch");
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--workers", "1", "--traders"])
        .arg(&file)
        .args(["--symbols", "100", "--candles", "1500", "--rate", "1000000"])
        .args(["--intervals", "1m", "--ping-interval", "250"])
        // Shorter than the catch-up takes: the old worker was killed by it.
        .args(["--stall-timeout", "3000", "--stay"]);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    // The feed waits for the worker (backpressure): stop the worker, let the
    // feed run half a ring ahead, then kill it.
    let status = inst.status_when(STARTUP, |s| s["workers"][0]["state"] == "ready");
    let first = status["workers"][0]["pid"].as_u64().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGSTOP)
        .expect("SIGSTOP");
    std::thread::sleep(Duration::from_millis(150));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL)
        .expect("SIGKILL");
    let started = Instant::now();
    let status = inst.status_when(Duration::from_secs(300), |s| s["feed"]["evaluated"] == true);
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(3000),
        "the catch-up took longer than the stall timeout: {took:?}"
    );
    assert_eq!(
        faults(&status),
        1,
        "the kill, and no stall after it: {status}"
    );
    let event = &status["supervision"]["recent"][0];
    assert_eq!(event["kind"], "crash", "{status}");
    assert_ne!(
        status["workers"][0]["pid"].as_u64(),
        Some(first),
        "replaced"
    );
    let judged = status["workers"][0]["judged"].as_u64().expect("judged");
    assert!(
        judged >= 100 * 100 * 700,
        "the replacement judged at least half a ring for every pair: {judged}"
    );
    eprintln!("catch-up to the end of the feed: {took:?}, {judged} candles judged");
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(60));
    assert!(st.success(), "{stderr}");
    assert!(!stderr.contains("no progress"), "{stderr}");
    inst.assert_clean();
}

/// Item 3: `traders add` and `remove` while the worker is in long passes.
/// Before, the worker's request loop waited for the pass to end, and the
/// PING behind the request missed its deadline: the worker was killed as hung.
#[test]
fn trader_changes_during_long_passes_are_answered_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = trader_file(&dir, "heavy.json", &heavy_traders(200));
    let inst = TestInstance::new("chg");
    let mut cmd = inst.command("shmkline");
    // As fast as the worker goes: each pass judges up to its budget of
    // candles per trader and series.
    cmd.args(["run", "--workers", "1", "--traders"])
        .arg(&file)
        .args([
            "--symbols",
            "100",
            "--candles",
            "100000",
            "--rate",
            "1000000",
        ])
        .args([
            "--intervals",
            "1m",
            "--ping-interval",
            "50",
            "--ping-deadline",
            "150",
        ]);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    // Passes longer than the PING deadline.
    inst.status_when(Duration::from_secs(120), |s| {
        s["workers"][0]["pass_p99_us"].as_u64() > Some(150_000)
    });
    let extra = trader_file(&dir, "extra.json", &[trader("extra", "rsi(14) < 1")]);
    for round in 0..4 {
        // Re-adding waits for the worker's acknowledgement of the removal.
        let deadline = Instant::now() + STARTUP;
        let out = loop {
            let out = inst.shmkline(&["traders", "add", extra.to_str().expect("utf-8")]);
            if out.status.success()
                || !stderr_of(&out).contains("still being removed")
                || Instant::now() > deadline
            {
                break out;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_ok(&out, &format!("traders add, round {round}"));
        inst.status_when(STARTUP, |s| {
            s["workers"][0]["trader_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == "extra"))
                && s["workers"][0]["traders"] == 201
        });
        let out = inst.shmkline(&["traders", "remove", "extra"]);
        assert_ok(&out, &format!("traders remove, round {round}"));
        inst.status_when(STARTUP, |s| s["workers"][0]["traders"] == 200);
    }
    let status = inst.status_when(STARTUP, |_| true);
    assert_eq!(faults(&status), 0, "no PING missed its deadline: {status}");
    assert!(
        status["workers"][0]["pass_p99_us"].as_u64() > Some(150_000),
        "the passes were longer than the PING deadline: {status}"
    );
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(60));
    assert!(st.success(), "{stderr}");
    inst.assert_clean();
}

/// Item 4: fifteen traders each listing 404 symbols (about 4.5 KB a spec),
/// and twenty with 4 KB rules and labels: together past the worker's socket
/// budget, which the frame-only send window used to overrun at start.
#[test]
fn large_trader_specs_go_out_as_fast_as_the_worker_takes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let symbols: Vec<String> = (0..404).map(|k| format!("SYN{k:03}")).collect();
    let mut traders: Vec<_> = (0..15)
        .map(|k| {
            let mut t = trader(
                &format!("wide{k:02}"),
                "crosses_above(close, sma(close, 5))",
            );
            t["symbols"] = serde_json::json!(symbols);
            t
        })
        .collect();
    let padding = " ".repeat(3800);
    traders.extend((0..20).map(|k| {
        let mut t = trader(
            &format!("long{k:02}"),
            &format!("crosses_below(close,{padding}sma(close, {}))", 3 + k % 5),
        );
        t["labels"] = serde_json::json!({ "note": "n".repeat(4000) });
        t
    }));
    let file = trader_file(&dir, "large.json", &traders);
    let path = file.to_str().expect("utf-8");
    let inst = TestInstance::new("large");
    let common = ["--traders", path, "--symbols", "3", "--candles", "80"];
    let out = inst.shmkline(&[&["run", "--workers", "1", "--rate", "500"], &common[..]].concat());
    let stderr = assert_ok(&out, "run");
    assert!(!stderr.contains("not reading its channel"), "{stderr}");
    let got = normalized_signals(&out.stdout);
    assert!(got.len() > 20, "{}", got.len());
    assert!(got == inst.backtest_signals(&common), "run == backtest");
    inst.assert_clean();
}

/// A running instance. PINGs every 50 ms, but a worker is taken for hung
/// only after 2 s: these tests count faults, and on a loaded 2-core machine
/// (two tests side by side) a PING can wait past 100 ms.
fn running(inst: &TestInstance, extra: &[&str]) -> ChildGuard {
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--rate",
        "20",
        "--symbols",
        "2",
        "--ping-interval",
        "50",
        "--ping-deadline",
        "2000",
    ])
    .args(extra);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    inst.status_when(STARTUP, |s| {
        s["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
    });
    run
}

/// Items 5 and 8: `traders add` of a trader whose spec (a 70 KB label) or
/// whose largest signal (a rule whose indicator texts nest) cannot fit a
/// frame is refused, naming the limit, and the running engine is untouched;
/// one with 5,000 small labels (39 KB) fits and runs. `run` refuses the
/// same traders before anything starts.
#[test]
fn traders_too_large_for_a_frame_are_refused_where_they_enter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut big_label = trader("biglabel", "close > 1");
    big_label["labels"] = serde_json::json!({ "note": "x".repeat(70_000) });
    let mut nested = format!("sma(close{}, 2)", " ".repeat(3000));
    for _ in 0..40 {
        nested = format!("sma({nested}, 2)");
    }
    let big_signal = trader("bigsignal", &format!("{nested} > 1"));
    let mut many = trader("manylabels", "crosses_above(close, sma(close, 3))");
    many["labels"] = (0..5000)
        .map(|k| (format!("k{k}"), serde_json::json!("v")))
        .collect::<serde_json::Map<_, _>>()
        .into();

    let inst = TestInstance::new("big");
    let run = running(&inst, &[]);
    let before = inst.shmkline(&["traders", "list", "--json"]);
    assert_ok(&before, "traders list");
    for (t, want) in [
        (&big_label, "the ADD_TRADER frame"),
        (&big_signal, "its largest signal"),
    ] {
        let file = trader_file(&dir, "one.json", std::slice::from_ref(t));
        let out = inst.shmkline(&["traders", "add", file.to_str().expect("utf-8")]);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "refused: {err}");
        assert!(
            err.contains(want) && err.contains("limit of one frame"),
            "{err}"
        );
        let file_run = inst.shmkline(&["run", "--traders", file.to_str().expect("utf-8")]);
        assert!(
            !file_run.status.success() && stderr_of(&file_run).contains(want),
            "run refuses it before starting: {}",
            stderr_of(&file_run)
        );
    }
    let after = inst.shmkline(&["traders", "list", "--json"]);
    // The traders and their states (the candles held move with the feed).
    let traders = |out: &std::process::Output| -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["traders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| (t["id"].to_string(), t["state"].to_string()))
            .collect()
    };
    assert_eq!(traders(&after), traders(&before), "nothing running changed");
    let file = trader_file(&dir, "many.json", &[many]);
    assert_ok(
        &inst.shmkline(&["traders", "add", file.to_str().expect("utf-8")]),
        "add 5,000 labels",
    );
    let status = inst.status_when(STARTUP, |s| workers_sum(s, "traders") == 5);
    assert_eq!(faults(&status), 0, "{status}");
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    inst.assert_clean();
}

/// Item 6: a finite run whose stdout is read slowly (well past the drain
/// time after the feed ends) prints every signal and exits 0; one whose
/// reader goes away exits non-zero, saying how many were not written.
#[test]
fn a_finite_run_exits_0_only_if_every_signal_reached_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let traders: Vec<_> = (0..4)
        .map(|k| trader(&format!("every{k}"), &format!("close > {k}")))
        .collect();
    let file = trader_file(&dir, "every.json", &traders);
    let args = [
        "run",
        "--traders",
        file.to_str().expect("utf-8"),
        "--symbols",
        "2",
        "--candles",
        "300",
        "--rate",
        "1000",
    ];
    let expected = 4 * 2 * 300;
    // A reader taking 250 lines a second: 2,400 lines take ~10 s, twice the
    // drain time after the feed ends (about a second in).
    let inst = TestInstance::new("slow");
    let mut slow = ChildGuard::spawn(inst.command("shmkline").args(args));
    let mut lines = 0;
    let mut reader = BufReader::with_capacity(64, slow.stdout());
    let mut line = String::new();
    let started = Instant::now();
    while reader.read_line(&mut line).expect("read") > 0 {
        lines += 1;
        line.clear();
        if lines % 25 == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (st, stderr) = slow.wait(Duration::from_secs(60));
    assert!(st.success(), "{stderr}");
    assert_eq!(
        lines,
        expected,
        "every signal, after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() > Duration::from_secs(7),
        "the reader was slow"
    );
    inst.assert_clean();

    // A reader that takes a few lines and goes.
    let inst = TestInstance::new("gone");
    let mut gone = ChildGuard::spawn(inst.command("shmkline").args(args));
    let mut out = gone.stdout();
    let mut first = [0u8; 1024];
    let _ = out.read(&mut first).expect("read some");
    drop(out);
    let (st, stderr) = gone.wait(Duration::from_secs(60));
    // The run stops there (a closed stdout ends it, as it ends any Unix
    // tool: `delivery.rs`), in error, counting what was not printed.
    assert_eq!(st.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stdout was closed (its reader went away)")
            && stderr.contains("signals were not written to stdout"),
        "{stderr}"
    );
    inst.assert_clean();
}

/// Item 7: a segment larger than /dev/shm (Docker's default is 64 MiB) is
/// a start-up error naming what it needs, what is free and the capacity
/// flags; nothing is left behind. Before, the sparse segment was created
/// and the coordinator died of SIGBUS mid-run.
#[test]
fn too_little_shared_memory_is_a_clear_start_up_error() {
    let free = nix::sys::statvfs::statvfs("/dev/shm").expect("statvfs /dev/shm");
    let free = free.blocks_available() as u64 * free.fragment_size() as u64;
    // Symbols x 2 intervals x candles x 72 bytes, past what is free (and
    // within the layout's 64 GiB bound).
    let candles = (free / (65_536 * 2 * 72) + 64).next_power_of_two();
    assert!(
        65_536 * 2 * 72 * candles <= 64 << 30,
        "/dev/shm is larger than the test expects"
    );
    let inst = TestInstance::new("nospace");
    let started = Instant::now();
    let out = inst.shmkline(&[
        "run",
        "--candles",
        "5",
        "--max-symbols",
        "65536",
        "--intervals",
        "1m,5m",
        "--candles-per-series",
        &candles.to_string(),
    ]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/dev/shm has")
            && err.contains("free")
            && err.contains("--max-symbols")
            && err.contains("--candles-per-series")
            && err.contains("--shm-size"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused at once"
    );
    inst.assert_clean();
}

/// Item 9: a chain of 2,040 `- 1` terms (under the 4,096-byte rule limit)
/// overflowed the worker's evaluation stack while `backtest` judged it. One
/// depth limit now bounds every walk of a rule: both refuse that chain with
/// the same message, and both judge the deepest chain accepted alike.
#[test]
fn run_and_backtest_accept_and_refuse_the_same_deep_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let too_deep = trader_file(
        &dir,
        "deep.json",
        &[trader("deep", &format!("close > 1{}", "-1".repeat(2039)))],
    );
    let inst = TestInstance::new("deep");
    let path = too_deep.to_str().expect("utf-8");
    let run = inst.shmkline(&["run", "--traders", path, "--candles", "10"]);
    let backtest = inst.shmkline(&["backtest", "--traders", path, "--candles", "10"]);
    for out in [&run, &backtest] {
        let err = stderr_of(out);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("levels deep, at most 128"), "{err}");
    }
    // At the limit: 126 subtractions under a comparison.
    let deepest = trader_file(
        &dir,
        "deepest.json",
        &[trader(
            "deepest",
            &format!("close - 90{} > 0", " - 0.01".repeat(125)),
        )],
    );
    let path = deepest.to_str().expect("utf-8");
    let common = ["--traders", path, "--symbols", "2", "--candles", "120"];
    let out = inst.shmkline(&[&["run", "--rate", "2000"], &common[..]].concat());
    assert_ok(&out, "run at the depth limit");
    let got = normalized_signals(&out.stdout);
    assert!(!got.is_empty());
    assert!(got == inst.backtest_signals(&common), "run == backtest");
    inst.assert_clean();
}

/// Item 10: the per-worker trader limit (10,000) is the coordinator's to
/// enforce: at start (more traders than the workers hold) and in `traders
/// add` before it answers. Before, `traders add` said `added`, the worker
/// refused it, and the next orderly shutdown exited 1.
#[test]
fn the_per_worker_trader_limit_is_enforced_before_anything_is_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cheap = |n: usize, from: usize| -> Vec<serde_json::Value> {
        (from..from + n)
            .map(|k| {
                let mut t = trader(&format!("c{k}"), "close > 1000000");
                t["symbols"] = serde_json::json!(["SYN000"]);
                t
            })
            .collect()
    };
    let inst = TestInstance::new("cap");
    let over = trader_file(&dir, "over.json", &cheap(10_001, 0));
    let out = inst.shmkline(&[
        "run",
        "--workers",
        "1",
        "--traders",
        over.to_str().expect("utf-8"),
    ]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("10001 traders need at least 2 workers") && err.contains("--workers"),
        "{err}"
    );

    let full = trader_file(&dir, "full.json", &cheap(9_999, 0));
    let run = running(
        &inst,
        &["--workers", "1", "--traders", full.to_str().expect("utf-8")],
    );
    let two = trader_file(&dir, "two.json", &cheap(2, 20_000));
    let out = inst.shmkline(&["traders", "add", two.to_str().expect("utf-8")]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("limit of 10000 per worker") && err.contains("nothing was added"),
        "{err}"
    );
    let one = trader_file(&dir, "one.json", &cheap(1, 30_000));
    assert_ok(
        &inst.shmkline(&["traders", "add", one.to_str().expect("utf-8")]),
        "add the last one",
    );
    let status = inst.status_when(Duration::from_secs(120), |s| {
        s["workers"][0]["traders"] == 10_000
    });
    assert_eq!(faults(&status), 0, "{status}");
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(60));
    assert!(
        st.success(),
        "an orderly shutdown with a full worker: {stderr}"
    );
    inst.assert_clean();
}

/// Item 11: a control request over 1 MiB is refused with the limit named,
/// by the CLI before it connects, and by the server when a client sends one
/// anyway (it used to fail with "Broken pipe" or a JSON parse error).
#[test]
fn a_control_request_over_the_limit_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let traders: Vec<_> = (0..12_000)
        .map(|k| {
            let mut t = trader(&format!("t{k:05}"), "crosses_above(close, sma(close, 5))");
            t["labels"] = serde_json::json!({ "k": "v".repeat(20) });
            t
        })
        .collect();
    let file = trader_file(&dir, "huge.json", &traders);
    assert!(std::fs::metadata(&file).expect("size").len() > 1 << 20);
    let inst = TestInstance::new("ctl");
    let run = running(&inst, &["--workers", "2"]);
    let out = inst.shmkline(&["traders", "add", file.to_str().expect("utf-8")]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("limit of 1048576 bytes") && err.contains("split the trader file"),
        "{err}"
    );
    // A raw client: the server answers with the limit too.
    let socket = inst
        .runtime_dir
        .join(inst.name.as_str())
        .join("control.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let line = format!("{{\"cmd\":\"add\",\"pad\":\"{}\"}}\n", "x".repeat(1 << 21));
    let _ = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .expect("an answer");
    assert!(answer.contains("limit of 1048576 bytes"), "{answer}");
    // The engine is untouched.
    let status = inst.status_when(STARTUP, |_| true);
    assert_eq!(workers_sum(&status, "traders"), 4, "{status}");
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    inst.assert_clean();
}

/// A frame from a worker of this build whose payload does not decode is a
/// bug on one side: it is reported with its kind, length and error, the
/// worker is not replaced (a replacement would only repeat it, the crash
/// loop of item 1), and the run ends in error saying signals may be missing.
/// A frame that is not a shmkline frame at all still faults its worker
/// (`run.rs`: malformed frames).
#[test]
fn an_undecodable_frame_of_this_build_is_reported_as_a_bug_not_crash_looped() {
    let inst = TestInstance::new("bug");
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--candles",
        "100",
        "--rate",
        "1000",
        "--symbols",
        "2",
    ])
    .env("SHMKLINE_TEST_MALFORMED", "payload");
    let out = cmd.output().expect("run");
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a frame from a worker of this build does not decode")
            && err.contains("kind=\"SIGNALS\"")
            && err.contains("bytes=28"),
        "{err}"
    );
    assert!(
        err.contains(
            "frame(s) from workers could not be decoded (first: a SIGNALS frame of 28 bytes"
        ),
        "{err}"
    );
    assert!(
        !err.contains("worker is faulty"),
        "no worker was replaced: {err}"
    );
    inst.assert_clean();
}
