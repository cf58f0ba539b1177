//! What the live-feed test binaries (`live.rs`, `binance.rs`, `closes.rs`)
//! share: a run against the loopback stand-in, the store read back, the
//! wait for the store to equal the stand-in's candles, and the backtest
//! oracle's input.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{ChildGuard, TestInstance};
use nix::sys::signal::Signal;
use protocol::store::StoreReader;
use protocol::{Candle, Interval, SymbolName};
use serde_json::Value;
use testkit::exchange::{End, Episode, MockBinance};
use testkit::rows::dump_csv;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn episode(skip: usize, stream: usize, garbage: bool, end: End) -> Episode {
    Episode {
        skip,
        stream,
        updates: 2,
        pause: Duration::from_millis(2),
        garbage,
        end,
    }
}

/// `shmkline run` on the stand-in's 1m streams of `symbols`, with `flags`
/// (ring, symbol capacity and anything else) and `traders`.
pub fn live_command(
    inst: &TestInstance,
    mock: &MockBinance,
    symbols: &str,
    traders: &Path,
    flags: &[&str],
) -> ChildGuard {
    let endpoint = format!("{},{}", mock.ws_url, mock.rest_url);
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--feed", "binance", "--symbols", symbols])
        .args(["--intervals", "1m", "--endpoint", &endpoint])
        .arg("--traders")
        .arg(traders)
        .args(flags);
    let mut child = ChildGuard::spawn(&mut cmd);
    child.capture_stdout();
    child
}

/// [`live_command`] with room for 4 symbols of 2,048 candles, and PINGs
/// every 50 ms (a fault is seen at once).
pub fn live_run(
    inst: &TestInstance,
    mock: &MockBinance,
    symbols: &str,
    traders: &Path,
    extra: &[&str],
) -> ChildGuard {
    let mut flags = vec![
        "--max-symbols",
        "4",
        "--candles-per-series",
        "2048",
        "--ping-interval",
        "50",
    ];
    flags.extend_from_slice(extra);
    live_command(inst, mock, symbols, traders, &flags)
}

/// Room for 4 symbols of 2,048 candles (PINGs at the default interval: the
/// suite runs tests side by side, and a loaded machine must not look like a
/// hung worker).
pub const RING_2048: [&str; 4] = ["--max-symbols", "4", "--candles-per-series", "2048"];

/// `status --json` once the instance answers.
pub fn status(inst: &TestInstance) -> Value {
    inst.status_when(WAIT, |_| true)
}

/// One trader that never fires: these tests are about the candles.
pub fn quiet_traders(dir: &Path) -> PathBuf {
    let path = dir.join("quiet.json");
    let traders = serde_json::json!([
        {"id": "never", "symbols": "*", "interval": "1m", "rule": "close < 0"},
    ]);
    std::fs::write(&path, traders.to_string()).expect("write traders");
    path
}

/// Ends the run; no worker was faulted meanwhile (a paused REST or a
/// backfill must not look like a stuck worker).
pub fn stop(inst: &TestInstance, child: ChildGuard) -> (Vec<u8>, String) {
    let s = status(inst);
    assert_eq!(s["supervision"]["faults"], 0, "{}", s["supervision"]);
    child.signal(Signal::SIGTERM);
    let (exit, stdout, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "run failed: {stderr}");
    (stdout, stderr)
}

pub fn traders_file(dir: &Path) -> PathBuf {
    let path = dir.join("traders.json");
    let traders = serde_json::json!([
        {"id": "up", "symbols": "*", "interval": "1m", "rule": "crosses_above(close, sma(close, 5))"},
        {"id": "down", "symbols": "*", "interval": "1m", "rule": "crosses_below(close, sma(close, 5))"},
    ]);
    std::fs::write(&path, traders.to_string()).expect("write traders");
    path
}

/// Every candle of `symbol`'s 1m series, with its closed flag.
pub fn stored(inst: &TestInstance, symbol: &str) -> Vec<(u64, Candle, bool)> {
    let Ok(reader) = StoreReader::open(&inst.name) else {
        return Vec::new();
    };
    stored_in(&reader, symbol)
}

/// [`stored`] from an open reader.
pub fn stored_in(reader: &StoreReader, symbol: &str) -> Vec<(u64, Candle, bool)> {
    let Some(id) = reader.symbol_id(symbol) else {
        return Vec::new();
    };
    let series = reader.series(id, Interval::M1).expect("series");
    let head = reader.appended(series).expect("head");
    let mut out = Vec::new();
    reader.read_range(series, 0, head, &mut out).expect("read");
    out.into_iter()
        .map(|s| (s.index, s.candle, s.closed))
        .collect()
}

/// The symbols whose stored closed candles are not yet the stand-in's.
pub fn out_of_sync(inst: &TestInstance, mock: &MockBinance) -> Vec<SymbolName> {
    let Ok(reader) = StoreReader::open(&inst.name) else {
        return mock.closed().into_iter().map(|(s, _)| s).collect();
    };
    mock.closed()
        .into_iter()
        .filter(|(symbol, candles)| {
            let got = closed_part(stored_in(&reader, symbol.as_str()));
            !(got.len() == candles.len()
                && got
                    .last()
                    .is_some_and(|(_, c, _)| c == &candles[candles.len() - 1]))
        })
        .map(|(s, _)| s)
        .collect()
}

/// The closed candles of a stored series: all but the newest, which may be
/// in progress (the stand-in's REST serves it, as Binance's does).
pub fn closed_part(mut got: Vec<(u64, Candle, bool)>) -> Vec<(u64, Candle, bool)> {
    if got.last().is_some_and(|l| !l.2) {
        got.pop();
    }
    got
}

/// Waits until the store holds the server's closed candles for every symbol.
pub fn wait_in_sync(inst: &TestInstance, mock: &MockBinance, child: &ChildGuard) {
    wait_in_sync_for(inst, mock, child, WAIT);
}

/// [`wait_in_sync`] for at most `timeout`.
pub fn wait_in_sync_for(
    inst: &TestInstance,
    mock: &MockBinance,
    child: &ChildGuard,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let behind = out_of_sync(inst, mock);
        if mock.script_done() && behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store never caught up with the server (clock {}; {} series behind, first {:?}); status: {}\nlog: {}",
            mock.clock(),
            behind.len(),
            behind.first(),
            String::from_utf8_lossy(&inst.shmkline(&["status", "--json"]).stdout),
            child.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts every stored candle of every symbol equals the stand-in's closed
/// ones, in order from index 0, closed; only a newest one in progress after
/// them.
pub fn assert_store_equals_server(inst: &TestInstance, mock: &MockBinance) {
    let reader = StoreReader::open(&inst.name).expect("store");
    for (symbol, candles) in mock.closed() {
        let got = closed_part(stored_in(&reader, symbol.as_str()));
        assert_eq!(got.len(), candles.len(), "{symbol}: a gap or a duplicate");
        for (k, ((index, c, closed), want)) in got.iter().zip(&candles).enumerate() {
            assert_eq!(*index, k as u64);
            assert_eq!(c, want, "{symbol} candle {k}");
            assert!(*closed, "{symbol} candle {k} not closed");
        }
    }
}

/// The stored closed candles (closed, or closed by a successor: what the
/// traders judge) that differ from the stand-in's final ones, a close
/// taken from a partial event say, each named with both values.
pub fn wrong_closes(inst: &TestInstance, mock: &MockBinance) -> Vec<String> {
    let reader = StoreReader::open(&inst.name).expect("store");
    let mut wrong = Vec::new();
    for (symbol, candles) in mock.closed() {
        let got = stored_in(&reader, symbol.as_str());
        let newest = got.len().saturating_sub(1);
        for (k, (index, c, closed)) in got.into_iter().enumerate() {
            let Some(want) = candles.iter().find(|w| w.open_time == c.open_time) else {
                continue;
            };
            if (closed || k < newest) && c != *want {
                wrong.push(format!(
                    "{symbol} candle {index} (open {}): stored close {} volume {}, final close {} volume {}",
                    c.open_time, c.close, c.volume, want.close, want.volume
                ));
            }
        }
    }
    wrong
}

pub fn write_csv(dir: &Path, symbol: &SymbolName, candles: &[Candle]) -> String {
    let path = dir.join(format!("{symbol}-1m-live.csv"));
    std::fs::write(&path, dump_csv(candles)).expect("write csv");
    path.display().to_string()
}

/// The signals a backtest of the stand-in's closed candles gives `traders`.
pub fn oracle(inst: &TestInstance, mock: &MockBinance, dir: &Path, traders: &Path) -> Vec<String> {
    let files: Vec<String> = mock
        .closed()
        .iter()
        .map(|(s, c)| write_csv(dir, s, c))
        .collect();
    let feed = format!("replay:{}", files.join(","));
    let traders_arg = traders.to_string_lossy().into_owned();
    inst.backtest_signals(&[
        "--feed",
        &feed,
        "--traders",
        &traders_arg,
        "--intervals",
        "1m",
    ])
}

/// Asserts two sets of normalized signals are equal, naming what one has
/// and the other lacks.
pub fn assert_same_signals(got: &[String], want: &[String], what: &str) {
    let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
    assert!(
        got == want,
        "{what}: {} signals vs {} expected; missing {missing:?}; extra {extra:?}",
        got.len(),
        want.len()
    );
}
