//! Replay of real Binance candles (`tests/data/`) through `shmkline run`
//! and `shmkline backtest`: identical signals, the store holding exactly the
//! file's candles and independently aggregated higher intervals, every
//! format variant parsed to the same candles, bad lines reported and skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{ChildGuard, TestInstance, data_file, normalized_signals};
use nix::sys::signal::Signal;
use protocol::store::{StoreReader, StoredCandle};
use protocol::{Candle, Interval};

const BTC: &str = "BTCUSDT-1m-2021-02-19_25.csv";
const WAIT: Duration = Duration::from_secs(60);

/// The file's candles, parsed here without the engine's parser.
fn file_candles(path: &Path) -> Vec<Candle> {
    std::fs::read_to_string(path)
        .expect("read the data file")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let num = |k: usize| f[k].parse::<f64>().expect("a number");
            Candle {
                open_time: f[0].parse().expect("open time"),
                open: num(1),
                high: num(2),
                low: num(3),
                close: num(4),
                volume: num(5),
            }
        })
        .collect()
}

/// Buckets of `len_ms` built the obvious way: group, then take first open,
/// max high, min low, last close, volume summed in time order.
fn aggregate(minutes: &[Candle], len_ms: i64) -> Vec<Candle> {
    let mut out: Vec<Candle> = Vec::new();
    for m in minutes {
        let start = m.open_time - m.open_time.rem_euclid(len_ms);
        match out.last_mut() {
            Some(b) if b.open_time == start => {
                b.high = b.high.max(m.high);
                b.low = b.low.min(m.low);
                b.close = m.close;
                b.volume += m.volume;
            }
            _ => out.push(Candle {
                open_time: start,
                ..*m
            }),
        }
    }
    out
}

fn traders_file(dir: &Path) -> PathBuf {
    let path = dir.join("traders.json");
    let traders = serde_json::json!([
        {"id": "m1-up", "symbols": "*", "interval": "1m", "rule": "crosses_above(close, sma(close, 20))"},
        {"id": "m5-up", "symbols": "*", "interval": "5m", "rule": "crosses_above(close, sma(close, 10))"},
        {"id": "m5-down", "symbols": ["BTCUSDT"], "interval": "5m", "rule": "crosses_below(close, sma(close, 10))"},
        {"id": "h1-up", "symbols": "*", "interval": "1h", "rule": "crosses_above(close, sma(close, 5))"},
    ]);
    std::fs::write(&path, traders.to_string()).expect("write traders");
    path
}

/// Every candle of (BTCUSDT, interval) in the instance's store.
fn stored(inst: &TestInstance, interval: Interval) -> Vec<StoredCandle> {
    let reader = StoreReader::open(&inst.name).expect("open the store");
    let id = reader.symbol_id("BTCUSDT").expect("BTCUSDT registered");
    let series = reader.series(id, interval).expect("series");
    let head = reader.appended(series).expect("head");
    let mut out = Vec::new();
    reader
        .read_range(series, 0, head, &mut out)
        .expect("read everything");
    out
}

/// Runs `run --stay` over `feed`, checks the store with `check` once every
/// candle is evaluated, stops it, and returns (signals, stderr).
fn run_and_inspect(
    inst: &TestInstance,
    feed: &str,
    traders: &Path,
    check: impl FnOnce(&TestInstance),
) -> (Vec<String>, String) {
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--feed", feed, "--stay", "--ping-interval", "20"])
        .args(["--candles-per-series", "16384", "--max-symbols", "8"])
        .arg("--traders")
        .arg(traders);
    let mut child = ChildGuard::spawn(&mut cmd);
    child.capture_stdout();
    let status = inst.status_when(WAIT, |s| s["feed"]["evaluated"] == true);
    assert_eq!(status["feed"]["kind"], "replay");
    check(inst);
    child.signal(Signal::SIGTERM);
    let (exit, stdout, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "run failed: {stderr}");
    (normalized_signals(&stdout), stderr)
}

#[test]
fn the_real_file_replayed_by_run_and_backtest_gives_the_same_signals_and_candles() {
    let path = data_file(BTC);
    let inst = TestInstance::new("replay-real");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = traders_file(dir.path());
    let minutes = file_candles(&path);
    assert_eq!(minutes.len(), 10_080);
    let feed = format!("replay:{}", path.display());
    let (signals, _) = run_and_inspect(&inst, &feed, &traders, |inst| {
        let m1 = stored(inst, Interval::M1);
        assert_eq!(
            m1.len(),
            minutes.len(),
            "one stored candle per line of the file"
        );
        for (k, (s, want)) in m1.iter().zip(&minutes).enumerate() {
            assert_eq!(s.index, k as u64);
            assert_eq!(&s.candle, want, "candle {k}");
            assert!(s.closed);
        }
        for (interval, len) in [
            (Interval::M5, 300_000),
            (Interval::H1, 3_600_000),
            (Interval::D1, 86_400_000),
        ] {
            let want = aggregate(&minutes, len);
            let got: Vec<Candle> = stored(inst, interval).iter().map(|s| s.candle).collect();
            assert_eq!(got.len(), want.len(), "{interval} candles");
            assert_eq!(
                got, want,
                "{interval} candles differ from an independent aggregation"
            );
        }
    });
    let traders_arg = traders.to_string_lossy().into_owned();
    let oracle = inst.backtest_signals(&["--feed", &feed, "--traders", &traders_arg]);
    assert_eq!(signals, oracle, "run and backtest disagree");
    for trader in ["m1-up", "m5-up", "m5-down", "h1-up"] {
        assert!(
            signals
                .iter()
                .any(|s| s.contains(&format!("\"trader\":\"{trader}\""))),
            "no signal from {trader}: the test would not show its interval works"
        );
    }
    inst.assert_clean();
}

/// The first `n` lines of the real file in every format Binance ships.
fn variants(src: &Path, dir: &Path, n: usize) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(src).expect("read");
    let lines: Vec<&str> = text.lines().take(n).collect();
    let write = |name: &str, body: String| {
        let path = dir.join(name);
        std::fs::write(&path, body).expect("write variant");
        path
    };
    let twelve = |l: &str, scale: i64| {
        let f: Vec<&str> = l.split(',').collect();
        let t = |k: usize| {
            f[k].parse::<i64>().expect("time") * scale + if k == 6 { scale - 1 } else { 0 }
        };
        format!(
            "{},{},{},{},{},{},{},1234.5,42,1.5,2.5,0\n",
            t(0),
            f[1],
            f[2],
            f[3],
            f[4],
            f[5],
            t(6)
        )
    };
    let ws = |l: &str| {
        let f: Vec<&str> = l.split(',').collect();
        let k = format!(
            r#"{{"t":{},"T":{},"s":"BTCUSDT","i":"1m","f":1,"L":2,"o":"{}","c":"{}","h":"{}","l":"{}","v":"{}","n":42,"x":true,"q":"1","V":"1","Q":"1","B":"0"}}"#,
            f[0], f[6], f[1], f[4], f[2], f[3], f[5]
        );
        let close: i64 = f[6].parse().expect("close time");
        format!(r#"{{"e":"kline","E":{},"s":"BTCUSDT","k":{k}}}"#, close + 1)
    };
    vec![
        write("BTCUSDT-1m-ms7.csv", lines.iter().map(|l| format!("{l}\n")).collect()),
        write(
            "BTCUSDT-1m-ms12-header.csv",
            "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n".to_owned()
                + &lines.iter().map(|l| twelve(l, 1)).collect::<String>(),
        ),
        write("BTCUSDT-1m-us12.csv", lines.iter().map(|l| twelve(l, 1000)).collect()),
        write("btcusdt-single.jsonl", lines.iter().map(|l| ws(l) + "\n").collect()),
        write(
            "btcusdt-combined.jsonl",
            lines
                .iter()
                .map(|l| format!("{{\"stream\":\"btcusdt@kline_1m\",\"data\":{}}}\n", ws(l)))
                .collect(),
        ),
    ]
}

#[test]
fn milliseconds_microseconds_headers_and_websocket_recordings_replay_identically() {
    let path = data_file(BTC);
    let inst = TestInstance::new("replay-formats");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = traders_file(dir.path());
    let traders_arg = traders.to_string_lossy().into_owned();
    let files = variants(&path, dir.path(), 3000);
    let mut results = Vec::new();
    for file in &files {
        let feed = format!("replay:{}", file.display());
        let out = inst.shmkline(&[
            "backtest",
            "--feed",
            &feed,
            "--traders",
            &traders_arg,
            "--candles-per-series",
            "4096",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", file.display());
        assert!(!stderr.contains("bad line"), "{}: {stderr}", file.display());
        results.push((file.clone(), normalized_signals(&out.stdout)));
    }
    assert!(!results[0].1.is_empty());
    for (file, signals) in &results[1..] {
        assert_eq!(
            signals,
            &results[0].1,
            "{} replays differently from the 7-column file",
            file.display()
        );
    }
    // And through shared memory: the microsecond file's store equals the file.
    let minutes = file_candles(&files[0]);
    let feed = format!("replay:{}", files[2].display());
    run_and_inspect(&inst, &feed, &traders, |inst| {
        let got: Vec<Candle> = stored(inst, Interval::M1)
            .iter()
            .map(|s| s.candle)
            .collect();
        assert_eq!(got, minutes);
    });
    inst.assert_clean();
}

#[test]
fn bad_lines_are_reported_by_line_and_skipped_and_strict_stops_at_the_first() {
    let path = data_file(BTC);
    let inst = TestInstance::new("replay-bad");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = traders_file(dir.path());
    let text = std::fs::read_to_string(&path).expect("read");
    // Minutes 700..705 are left out: a gap of 5 candles, kept as a gap.
    let kept = |k: &usize| !(700..705).contains(k);
    let good: Vec<&str> = text
        .lines()
        .take(2000)
        .enumerate()
        .filter(|(k, _)| kept(k))
        .map(|(_, l)| l)
        .collect();
    // Bad lines go in after these good-line counts; each is (text, reason).
    let bad = [
        (10, "garbage,line", "columns"),
        (500, "1613722800000,1,2,3", "columns"),
        (
            1000,
            "1613752800000,abc,1,1,1,1,1613752859999",
            "not a number",
        ),
        (
            1500,
            "1613782800000,10,9,11,10,1,1613782859999",
            "inconsistent",
        ),
        (1990, good[5], "out of order"),
    ];
    let mut body = String::new();
    let mut bad_line_numbers = Vec::new();
    let mut next = 0;
    for (k, line) in good.iter().enumerate() {
        body.push_str(line);
        body.push('\n');
        while next < bad.len() && bad[next].0 == k + 1 {
            body.push_str(bad[next].1);
            body.push('\n');
            bad_line_numbers.push(body.lines().count());
            next += 1;
        }
    }
    assert_eq!(
        bad_line_numbers.len(),
        bad.len(),
        "every bad line was placed"
    );
    let file = dir.path().join("BTCUSDT-1m-2021-02-19.csv");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(body.as_bytes()))
        .expect("write");
    let minutes: Vec<Candle> = file_candles(&path)
        .into_iter()
        .take(2000)
        .enumerate()
        .filter(|(k, _)| kept(k))
        .map(|(_, c)| c)
        .collect();
    let feed = format!("replay:{}", file.display());
    let (_, stderr) = run_and_inspect(&inst, &feed, &traders, |inst| {
        let got: Vec<Candle> = stored(inst, Interval::M1)
            .iter()
            .map(|s| s.candle)
            .collect();
        assert_eq!(got, minutes, "every good line arrives, and only those");
        let status = inst.status_when(WAIT, |_| true);
        assert_eq!(status["feed"]["bad_lines"], bad.len());
        assert_eq!(status["feed"]["gaps"], 1, "{status}");
        assert_eq!(status["feed"]["missing_candles"], 5, "{status}");
        let text = inst.shmkline(&["status"]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("5 bad lines, 1 gaps (5 candles missing)"),
            "{text}"
        );
    });
    let name = file.display().to_string();
    for (n, (_, _, reason)) in bad_line_numbers.iter().zip(&bad) {
        let hit = stderr.lines().any(|l| {
            l.contains("bad line skipped")
                && l.contains(&name)
                && l.contains(&format!("line={n} "))
                && l.contains(reason)
        });
        assert!(hit, "line {n} ({reason}) not reported:\n{stderr}");
    }
    assert!(
        stderr.contains("replay finished with bad lines skipped"),
        "no summary:\n{stderr}"
    );

    let out = inst.shmkline(&["run", "--feed", &feed, "--strict", "--ping-interval", "20"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--strict accepted a bad line");
    assert!(
        stderr.contains(&format!("{name}:{}:", bad_line_numbers[0])) && stderr.contains("--strict"),
        "--strict must name the first bad line:\n{stderr}"
    );
    let out = inst.shmkline(&["backtest", "--feed", &feed, "--strict"]);
    assert!(
        !out.status.success(),
        "backtest --strict accepted a bad line"
    );
    inst.assert_clean();
}

/// Runs a finite replay of `lines` minutes with `pace` flags; returns how long it took.
fn paced_run(inst: &TestInstance, file: &Path, pace: &[&str]) -> Duration {
    let feed = format!("replay:{}", file.display());
    let started = std::time::Instant::now();
    let out = inst.shmkline(&[&["run", "--feed", &feed, "--ping-interval", "20"], pace].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

#[test]
fn speed_and_rate_pace_a_replay() {
    let path = data_file(BTC);
    let inst = TestInstance::new("replay-pace");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(&path).expect("read");
    let file = dir.path().join("BTCUSDT-1m-pace.csv");
    // 11 minutes: 10 steps between the first batch and the last.
    let body: String = text.lines().take(11).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, body).expect("write");
    // Lower bounds only: pacing may be late on a loaded machine, never early.
    // 600x real time: a minute every 100 ms.
    let took = paced_run(&inst, &file, &["--speed", "600"]);
    assert!(
        took >= Duration::from_millis(1000),
        "--speed 600 took {took:?}"
    );
    let took = paced_run(&inst, &file, &["--rate", "10"]);
    assert!(
        took >= Duration::from_millis(1000),
        "--rate 10 took {took:?}"
    );
    let out = inst.shmkline(&[
        "run",
        "--feed",
        "replay:x.csv",
        "--rate",
        "1",
        "--speed",
        "2",
    ]);
    assert!(
        !out.status.success(),
        "--rate and --speed together were accepted"
    );
    inst.assert_clean();
}

#[test]
fn a_small_ring_replayed_as_fast_as_possible_loses_nothing() {
    let path = data_file(BTC);
    let inst = TestInstance::new("replay-small-ring");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = dir.path().join("traders.json");
    std::fs::write(
        &traders,
        r#"[{"id":"fast","symbols":"*","interval":"1m","rule":"crosses_above(close, sma(close, 5))"}]"#,
    )
    .expect("write traders");
    let traders = traders.to_string_lossy().into_owned();
    // 1,500 minutes: the ring lets the feed run only 8 candles ahead of the
    // worker's last confirmation, so this replay is paced by PONGs.
    let text = std::fs::read_to_string(&path).expect("read");
    let file = dir.path().join("BTCUSDT-1m-small.csv");
    let body: String = text.lines().take(1500).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, body).expect("write");
    let feed = format!("replay:{}", file.display());
    // A 16-candle ring: a publish may carry at most 4 batches, or workers
    // would find candles gone before they judged them (the run fails on gaps).
    let args = [
        "--feed",
        &feed,
        "--traders",
        &traders,
        "--candles-per-series",
        "16",
        "--intervals",
        "1m",
    ];
    let out = inst.shmkline(&[&["run", "--ping-interval", "10"], &args[..]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    let signals = normalized_signals(&out.stdout);
    assert!(!signals.is_empty());
    assert_eq!(signals, inst.backtest_signals(&args));
    inst.assert_clean();
}

#[test]
fn twenty_traders_of_the_rule_language_agree_between_run_and_backtest() {
    let path = data_file(BTC);
    let inst = TestInstance::new("replay-rules");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = [
        ("rsi-oversold", "1m", "rsi(14) < 30", 5),
        ("rsi-overbought", "1m", "rsi(close, 14) > 70", 5),
        (
            "ema-cross",
            "1m",
            "crosses_above(ema(close, 9), ema(close, 21))",
            0,
        ),
        (
            "ema-cross-down",
            "1m",
            "crosses_below(ema(close, 9), ema(close, 21))",
            0,
        ),
        (
            "rsi-and-ema",
            "1m",
            "rsi(14) < 40 and crosses_above(ema(close, 9), ema(close, 21))",
            0,
        ),
        (
            "macd-hist",
            "1m",
            "crosses_above(macd(12, 26, 9).hist, 0)",
            0,
        ),
        (
            "macd-signal",
            "5m",
            "crosses_below(macd(close, 12, 26, 9).line, macd(close, 12, 26, 9).signal)",
            0,
        ),
        (
            "bb-upper",
            "1m",
            "close > bollinger(close, 20, 2).upper",
            10,
        ),
        ("bb-lower", "1m", "close < bollinger(20, 2).lower", 10),
        ("atr-spike", "1m", "high - low > 2 * atr(14)", 3),
        ("breakout", "1m", "close > highest(high, 20)[1]", 5),
        ("breakdown", "1m", "close < lowest(low, 20)[1]", 5),
        ("roc", "5m", "roc(close, 12) > 1", 2),
        (
            "wma-sma",
            "1m",
            "crosses_above(wma(close, 10), sma(close, 30))",
            0,
        ),
        (
            "stddev-squeeze",
            "5m",
            "stddev(close, 20) < 0.5 * sma(stddev(close, 20), 50)",
            4,
        ),
        ("vwap", "1m", "crosses_above(close, vwap(20))", 2),
        (
            "volume",
            "1m",
            "volume > 3 * sma(volume, 20) and close > open",
            3,
        ),
        (
            "momentum",
            "1m",
            "(close - close[5]) / close[5] * 100 > 0.5",
            5,
        ),
        (
            "not-rsi",
            "5m",
            "not (rsi(14) > 30) and close > ema(close, 50)",
            0,
        ),
        (
            "hourly",
            "1h",
            "crosses_above(close, sma(close, 5)) or rsi(6) < 25",
            0,
        ),
        ("sma10-up", "1m", "crosses_above(close, sma(close, 10))", 0),
    ];
    let traders: Vec<serde_json::Value> = rules
        .iter()
        .map(|(id, interval, rule, cooldown)| {
            serde_json::json!({"id": id, "symbols": "*", "interval": interval, "rule": rule,
                "cooldown": cooldown, "labels": {"set": "rules"}})
        })
        .collect();
    let traders_path = dir.path().join("traders.json");
    std::fs::write(&traders_path, serde_json::Value::Array(traders).to_string())
        .expect("write traders");
    let traders_arg = traders_path.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&path).expect("read");
    let file = dir.path().join("BTCUSDT-1m-rules.csv");
    let body: String = text.lines().take(3000).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, body).expect("write");
    let feed = format!("replay:{}", file.display());
    let args = ["--feed", &feed, "--traders", &traders_arg];
    let out = inst.shmkline(
        &[
            &["run", "--workers", "3", "--ping-interval", "20"],
            &args[..],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    let signals = normalized_signals(&out.stdout);
    assert_eq!(
        signals,
        inst.backtest_signals(&args),
        "run and backtest disagree"
    );
    let fired: std::collections::BTreeSet<String> = signals
        .iter()
        .filter_map(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .filter_map(|v| v["trader"].as_str().map(str::to_owned))
        .collect();
    assert!(
        fired.len() >= 15,
        "only {} of {} traders signalled: {fired:?}",
        fired.len(),
        rules.len()
    );
    // Every signal names the values of its rule's indicators, as written.
    let ema_cross = signals
        .iter()
        .find(|s| s.contains("\"trader\":\"ema-cross\""))
        .expect("an ema-cross signal");
    let v: serde_json::Value = serde_json::from_str(ema_cross).expect("JSON");
    assert!(
        v["values"]["ema(close, 9)"].as_f64() > v["values"]["ema(close, 21)"].as_f64(),
        "{v}"
    );
    inst.assert_clean();
}
