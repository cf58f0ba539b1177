//! The live feed against a stand-in as unkind as Binance (issue 14): 429
//! storms and 418 bans, server errors, unknown and refused symbols, 2,000
//! series at once, `serverShutdown`, a 40-hour outage and a queue driven
//! past its bound (lost and late closes: `closes.rs`). Each test
//! shows the fault happened (the stand-in's own counters) and that the store
//! ended equal to the stand-in's candles.

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{TestInstance, normalized_signals};
use nix::sys::signal::Signal;
use protocol::Candle;
use protocol::store::StoreReader;
use serde_json::Value;
use testkit::exchange::{Behavior, End, Episode, MockBinance, timeline};

mod support;
use support::*;

fn klines_requests(mock: &MockBinance) -> Vec<String> {
    mock.rest_log()
        .into_iter()
        .filter(|t| t.starts_with("/api/v3/klines"))
        .collect()
}

/// A fresh start of `names` whose backfill takes two pages per series (1,400
/// candles of history; a 2,048 ring wants 1,536), `stream` candles closing
/// meanwhile, against a stand-in behaving so.
fn two_page_start(
    inst: &TestInstance,
    traders: &Path,
    names: &[&str],
    stream: usize,
    behavior: Behavior,
) -> (MockBinance, harness::ChildGuard) {
    let mock = MockBinance::start_behaving(
        timeline(names, 1500).expect("timeline"),
        1400,
        vec![episode(0, stream, false, End::Idle)],
        behavior,
    )
    .expect("mock");
    let max = names.len().to_string();
    let flags = ["--max-symbols", &max, "--candles-per-series", "2048"];
    let child = live_command(inst, &mock, &names.join(","), traders, &flags);
    (mock, child)
}

/// A 429 storm and server errors mid-backfill: every `Retry-After` is waited
/// out (the stand-in saw no request inside one), 5xx answers are retried,
/// and the store ends complete. The pauses (1 + 3 + 5 s) outlast the stall
/// timeout (5 s): the batch after them must not get the workers killed as
/// stuck (they were, before the watchdog timed from the batch).
#[test]
fn a_429_storm_and_server_errors_mid_backfill_are_waited_out() {
    let inst = TestInstance::new("b429");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = quiet_traders(dir.path());
    let names = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"];
    let behavior = Behavior {
        // Request 1 is the symbol check; the backfill is under way by 4.
        storm: Some((4, 3)),
        retry_after_s: 1,
        server_error_every: 5,
        ..Behavior::default()
    };
    let (mock, child) = two_page_start(&inst, &traders, &names, 20, behavior);
    wait_in_sync(&inst, &mock, &child);
    assert_store_equals_server(&inst, &mock);
    let (rate_limited, banned, server_errors) = mock.rest_refusals();
    assert_eq!(rate_limited, 3, "the storm landed: 3 answers 429");
    assert!(server_errors >= 2, "server errors landed: {server_errors}");
    assert_eq!(banned, 0);
    assert_eq!(
        mock.violations(),
        0,
        "a request came inside a Retry-After window"
    );
    // The series summary is published every 250 ms.
    let feed = &inst.status_when(WAIT, |s| s["feed"]["series"]["live"] == 5)["feed"];
    assert_eq!(feed["rate_limited"], 3, "{feed}");
    assert_eq!(
        feed["server_errors"].as_u64(),
        Some(server_errors),
        "{feed}"
    );
    let (_, stderr) = stop(&inst, child);
    assert!(
        stderr.contains("429"),
        "the 429 is not in the log:\n{stderr}"
    );
    inst.assert_clean();
}

/// A 418 ban: REST stops for the ban's length (the stand-in saw no request
/// during it), `status` says why while it lasts, and the backfill then ends.
#[test]
fn a_418_ban_stops_rest_until_it_ends_and_status_says_so() {
    let inst = TestInstance::new("b418");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = quiet_traders(dir.path());
    let names = ["BTCUSDT", "ETHUSDT", "BNBUSDT"];
    let behavior = Behavior {
        ban_at: Some(3),
        ban_s: 3,
        ..Behavior::default()
    };
    let (mock, child) = two_page_start(&inst, &traders, &names, 10, behavior);
    let banned = inst.status_when(WAIT, |s| s["feed"]["bans"] == 1);
    let feed = &banned["feed"];
    let pause = feed["rest_pause"].as_str().unwrap_or_default();
    assert!(pause.contains("418"), "status does not say why: {feed}");
    assert!(feed["rest_paused_ms"].as_u64() > Some(0), "{feed}");
    let requests_when_banned = mock.rest_requests();
    wait_in_sync(&inst, &mock, &child);
    assert_store_equals_server(&inst, &mock);
    assert_eq!(mock.rest_refusals().1, 1, "the ban landed");
    assert_eq!(mock.violations(), 0, "a request came during the ban");
    assert!(mock.rest_requests() > requests_when_banned);
    let after = status(&inst);
    assert_eq!(after["feed"]["rest_pause"], Value::Null, "{after}");
    let (_, stderr) = stop(&inst, child);
    assert!(
        stderr.contains("banned"),
        "the ban is not in the log:\n{stderr}"
    );
    inst.assert_clean();
}

/// An unknown symbol among five: refused at start with its name; with
/// `--skip-unknown` left out and named in `status`. A symbol the exchange
/// lists but whose klines it refuses is isolated (retried on its own
/// schedule, named in `status`) while the others go live and give the
/// backtest's signals.
#[test]
fn unknown_and_refused_symbols_are_named_and_the_others_go_live() {
    let inst = TestInstance::new("bsym");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = traders_file(dir.path());
    let good = ["BTCUSDT", "ETHUSDT", "BNBUSDT"];
    let mut listed: Vec<&str> = good.to_vec();
    listed.push("GONEUSDT");
    let behavior = Behavior {
        refused: vec!["GONEUSDT".into()],
        ..Behavior::default()
    };
    let mock = MockBinance::start_behaving(
        timeline(&listed, 300).expect("timeline"),
        100,
        Vec::new(),
        behavior,
    )
    .expect("mock");
    let symbols = "btcusdt,ETHUSDT,BNBUSDT,GONEUSDT,NOPEUSDT";
    let flags = ["--max-symbols", "5", "--candles-per-series", "2048"];

    let refused = live_command(&inst, &mock, symbols, &traders, &flags);
    let (exit, _, stderr) = refused.wait_output(WAIT);
    assert!(!exit.success(), "an unknown symbol was accepted");
    assert!(
        stderr.contains("NOPEUSDT is not listed by the exchange")
            && stderr.contains("--skip-unknown"),
        "the error does not name the symbol and the way out:\n{stderr}"
    );
    assert!(
        !stderr.contains("GONEUSDT is"),
        "a listed symbol was called unknown:\n{stderr}"
    );
    inst.assert_clean();

    let mut flags = flags.to_vec();
    flags.push("--skip-unknown");
    let child = live_command(&inst, &mock, symbols, &traders, &flags);
    let isolated = inst.status_when(WAIT, |s| {
        s["feed"]["series"]["live"] == 3 && s["feed"]["series"]["failing"] == 1
    });
    let summary = &isolated["feed"]["series"];
    assert_eq!(
        summary["skipped_symbols"],
        serde_json::json!(["NOPEUSDT is not listed by the exchange"]),
        "{summary}"
    );
    assert_eq!(
        summary["failing_series"][0]["series"], "GONEUSDT 1m",
        "{summary}"
    );
    assert!(
        summary["failing_series"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("-1121")),
        "{summary}"
    );
    // Each backfill's last row is the candle in progress (the stand-in's
    // `Date` is half-way through it): stored as not yet closed, although by
    // this machine's clock (the timeline is in 2024) it closed long ago.
    for (symbol, candles) in mock
        .closed()
        .iter()
        .filter(|(s, _)| good.contains(&s.as_str()))
    {
        let got = stored(&inst, symbol.as_str());
        let (_, newest, closed) = got.last().expect("backfilled");
        assert!(
            !closed,
            "{symbol}: the candle in progress was stored as closed"
        );
        assert_eq!(
            newest.open_time,
            candles[candles.len() - 1].open_time + 60_000
        );
        assert_eq!(got.len(), candles.len() + 1, "{symbol}");
    }
    mock.stream(40, 2, Duration::from_millis(2));
    let deadline = Instant::now() + WAIT;
    while !good_in_sync(&inst, &mock, &good) {
        assert!(Instant::now() < deadline, "the good series never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = inst.status_when(WAIT, |s| s["feed"]["series"]["live"] == 3);
    assert_eq!(after["feed"]["series"]["failing"], 1, "{after}");
    let retries = klines_requests(&mock)
        .iter()
        .filter(|t| t.contains("symbol=GONEUSDT"))
        .count();
    assert!(retries >= 1, "the refused series was never tried");
    let (stdout, stderr) = stop(&inst, child);
    assert!(
        stderr.contains("NOPEUSDT") && stderr.contains("GONEUSDT"),
        "the log does not name both:\n{stderr}"
    );
    let signals = normalized_signals(&stdout);
    assert!(!signals.is_empty());
    let good_only = tempfile::tempdir().expect("tempdir");
    let files: Vec<String> = mock
        .closed()
        .iter()
        .filter(|(s, _)| good.contains(&s.as_str()))
        .map(|(s, c)| write_csv(good_only.path(), s, c))
        .collect();
    let oracle = inst.backtest_signals(&[
        "--feed",
        &format!("replay:{}", files.join(",")),
        "--traders",
        &traders.to_string_lossy(),
        "--intervals",
        "1m",
    ]);
    assert_same_signals(&signals, &oracle, "the good series against the backtest");
    inst.assert_clean();
}

fn good_in_sync(inst: &TestInstance, mock: &MockBinance, good: &[&str]) -> bool {
    let Ok(reader) = StoreReader::open(&inst.name) else {
        return false;
    };
    mock.closed()
        .iter()
        .filter(|(s, _)| good.contains(&s.as_str()))
        .all(|(s, candles)| {
            let got = closed_part(stored_in(&reader, s.as_str()));
            got.len() == candles.len()
                && got
                    .iter()
                    .zip(candles)
                    .all(|((_, c, closed), want)| *closed && c == want)
        })
}

/// 2,000 series at once: the streams split over several connections (by
/// count and URL length), every series backfilled by one request within the
/// weight budget while candles stream, all live, nothing overflowed.
#[test]
fn two_thousand_series_backfill_within_the_budget_and_go_live() {
    const N: usize = 2000;
    let inst = TestInstance::new("b2000");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = quiet_traders(dir.path());
    let names: Vec<String> = (0..N).map(|k| format!("S{k:04}USDT")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mock =
        MockBinance::start(timeline(&refs, 160).expect("timeline"), 100, Vec::new()).expect("mock");
    let budget = 3_000;
    let child = live_command(
        &inst,
        &mock,
        &names.join(","),
        &traders,
        &[
            "--max-symbols",
            "2000",
            "--candles-per-series",
            "1440",
            "--rest-weight-per-minute",
            &budget.to_string(),
        ],
    );
    // Candles close while the backfill goes on (it needs more weight than
    // the budget holds at start: 2,000 x 2 + 20 > 3,000, so it is paced).
    let up = inst.status_when(WAIT, |s| {
        s["feed"]["connected"].as_u64() >= Some(2)
            && s["feed"]["connected"] == s["feed"]["connections_planned"]
    });
    let planned = up["feed"]["connections_planned"].as_u64().expect("planned");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut streamed = 0;
    loop {
        let s = status(&inst);
        if s["feed"]["series"]["live"] == N {
            break;
        }
        assert!(Instant::now() < deadline, "not all live: {}", s["feed"]);
        if streamed < 40 {
            mock.stream(1, 1, Duration::ZERO);
            streamed += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    mock.stream(3, 1, Duration::from_millis(20));
    wait_in_sync_for(&inst, &mock, &child, Duration::from_secs(120));
    assert_store_equals_server(&inst, &mock);
    let feed = status(&inst)["feed"].clone();
    eprintln!("2,000 series: {feed}");
    assert!(streamed >= 2, "nothing streamed during the backfill");
    assert_eq!(mock.open_connections() as u64, planned, "{feed}");
    assert!(planned >= 2, "2,000 streams on one connection");
    assert_eq!(feed["overflowed"], 0, "{feed}");
    assert_eq!(
        klines_requests(&mock).len(),
        N,
        "one backfill request per series"
    );
    let (rate_limited, _, _) = mock.rest_refusals();
    assert_eq!(
        rate_limited, 0,
        "the budget let the exchange's limit be hit"
    );
    assert_eq!(mock.violations(), 0);
    assert!(
        mock.peak_weight() <= 2 * budget,
        "peak weight {} in a minute, budget {budget} (a bucket full at start spends at most twice it in one wall minute)",
        mock.peak_weight()
    );
    assert!(feed["peak_used_weight"].as_u64() > Some(0), "{feed}");
    stop(&inst, child);
    inst.assert_clean();
}

/// `serverShutdown`: a new connection opens at once and the old one is
/// drained and closed; no candle is missed, so nothing is backfilled after.
#[test]
fn server_shutdown_opens_a_new_connection_first_and_needs_no_backfill() {
    let inst = TestInstance::new("bshut");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = quiet_traders(dir.path());
    let script = vec![
        episode(0, 20, false, End::ShutdownNotice(Duration::from_secs(2))),
        episode(0, 30, false, End::Idle),
    ];
    let mock = MockBinance::start(
        timeline(&["BTCUSDT", "ETHUSDT"], 200).expect("timeline"),
        50,
        script,
    )
    .expect("mock");
    let child = live_command(&inst, &mock, "BTCUSDT,ETHUSDT", &traders, &RING_2048);
    wait_in_sync(&inst, &mock, &child);
    let feed = inst.status_when(WAIT, |s| s["feed"]["replacements"] == 1)["feed"].clone();
    assert_store_equals_server(&inst, &mock);
    assert_eq!(feed["shutdown_notices"], 1, "{feed}");
    assert_eq!(mock.connections(), 2, "{feed}");
    assert_eq!(
        klines_requests(&mock).len(),
        2,
        "only the start-up backfill of each series: {:?}",
        klines_requests(&mock)
    );
    assert_eq!(feed["gaps"], 0, "{feed}");
    stop(&inst, child);
    inst.assert_clean();
}

/// A 1m series cut off for 40 hours (2,400 candles): with a ring of 4,096
/// the backfill pages newest first down to the stored candle and the store
/// equals the stand-in; with a ring of 1,440 it brings the newest 1,080 and
/// reports the gap it left, per series.
#[test]
fn a_forty_hour_outage_is_backfilled_and_a_gap_longer_than_the_ring_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = quiet_traders(dir.path());
    let script = || {
        vec![
            episode(0, 10, false, End::Drop),
            episode(2400, 10, false, End::Idle),
        ]
    };
    let outage_start = 110;

    let inst = TestInstance::new("bout");
    let mock = MockBinance::start(
        timeline(&["BTCUSDT"], 2600).expect("timeline"),
        100,
        script(),
    )
    .expect("mock");
    let flags = ["--max-symbols", "1", "--candles-per-series", "4096"];
    let child = live_command(&inst, &mock, "BTCUSDT", &traders, &flags);
    wait_in_sync(&inst, &mock, &child);
    assert_store_equals_server(&inst, &mock);
    assert_eq!(stored(&inst, "BTCUSDT").len(), 2520);
    let feed = inst.status_when(WAIT, |s| s["feed"]["series"]["live"] == 1)["feed"].clone();
    assert_eq!(feed["series"]["gaps"], serde_json::json!([]), "{feed}");
    let pages = klines_requests(&mock).len();
    assert!(pages >= 4, "the outage took more than a page: {pages}");
    stop(&inst, child);
    inst.assert_clean();

    let inst = TestInstance::new("bgap");
    let mock = MockBinance::start(
        timeline(&["BTCUSDT"], 2600).expect("timeline"),
        100,
        script(),
    )
    .expect("mock");
    let flags = ["--max-symbols", "1", "--candles-per-series", "1440"];
    let child = live_command(&inst, &mock, "BTCUSDT", &traders, &flags);
    let server: Vec<Candle> = loop {
        let closed = mock.closed().remove(0).1;
        let got = stored(&inst, "BTCUSDT");
        if mock.script_done()
            && got
                .last()
                .is_some_and(|l| l.2 && l.1 == closed[closed.len() - 1])
        {
            break closed;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let got = stored(&inst, "BTCUSDT");
    // The candles before the outage, then the newest ones: between them the
    // gap the ring could not take.
    let missing = server.len() - got.len();
    assert!(
        missing >= 2520 - outage_start - 1080 - 10 && missing <= 2520 - 1080 - outage_start,
        "missing {missing}"
    );
    // The gap begins where the outage did: after the last candle streamed,
    // or one later when the candle in progress at the cut was closed by the
    // exchange before the client's first REST page (it lands either side,
    // by timing; CI saw both).
    let split = got
        .iter()
        .zip(&server)
        .position(|((_, c, _), s)| c != s)
        .unwrap_or(got.len());
    assert!(
        split == outage_start || split == outage_start + 1,
        "the gap begins at candle {split}, the outage at {outage_start}"
    );
    for (k, (_, c, _)) in got.iter().enumerate() {
        let want = if k < split {
            &server[k]
        } else {
            &server[k + missing]
        };
        assert_eq!(c, want, "candle {k}");
    }
    // The summary is published every 250 ms: wait for the one after the
    // outage's backfill.
    let feed =
        inst.status_when(WAIT, |s| s["feed"]["series"]["gaps"][0].is_object())["feed"].clone();
    let gaps = &feed["series"]["gaps"];
    assert_eq!(gaps[0]["series"], "BTCUSDT 1m", "{feed}");
    assert_eq!(gaps[0]["count"].as_u64(), Some(missing as u64), "{feed}");
    let (_, stderr) = stop(&inst, child);
    assert!(stderr.contains("a gap before them remains"), "{stderr}");
    inst.assert_clean();
}

/// Events past `--max-queued-mib` while the sync thread waits on a slow
/// exchange: dropped, counted, their series backfilled again; the store still
/// ends equal to the stand-in.
#[test]
fn events_past_the_queue_bound_are_dropped_and_their_series_backfilled_again() {
    let inst = TestInstance::new("bqueue");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = quiet_traders(dir.path());
    let names = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"];
    let behavior = Behavior {
        rest_delay: Duration::from_millis(700),
        ..Behavior::default()
    };
    // 4 symbols x 1,000 candles x 5 events = 20,000 events, past 1 MiB of
    // queue while the first backfill page is held up.
    let burst = Episode {
        updates: 4,
        pause: Duration::ZERO,
        ..episode(0, 1000, false, End::Idle)
    };
    let mock = MockBinance::start_behaving(
        timeline(&names, 1200).expect("timeline"),
        100,
        vec![burst],
        behavior,
    )
    .expect("mock");
    let child = live_command(
        &inst,
        &mock,
        &names.join(","),
        &traders,
        &[
            "--max-symbols",
            "4",
            "--candles-per-series",
            "2048",
            "--max-queued-mib",
            "1",
        ],
    );
    wait_in_sync_for(&inst, &mock, &child, Duration::from_secs(120));
    assert_store_equals_server(&inst, &mock);
    let feed = status(&inst)["feed"].clone();
    let overflowed = feed["overflowed"].as_u64().expect("overflowed");
    assert!(overflowed > 0, "the queue never reached its bound: {feed}");
    assert!(
        klines_requests(&mock).len() > names.len(),
        "no series was backfilled again"
    );
    let (_, stderr) = stop(&inst, child);
    assert!(stderr.contains("max_queued_bytes"), "{stderr}");
    eprintln!("{overflowed} events dropped at the bound");
    inst.assert_clean();
}

/// `bench backfill` runs a fresh start end to end and reports its figures
/// from what the stand-in counted; nothing is left behind.
#[test]
fn bench_backfill_reports_its_figures_and_leaves_nothing_behind() {
    let inst = TestInstance::new("bbf");
    let out = inst.shmkline(&[
        "bench",
        "backfill",
        "--series",
        "40",
        "--history",
        "300",
        "--rest-weight-per-minute",
        "6000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["series"], 40, "{report}");
    // The symbol check, then one page per series (300 < the 1,080 wanted).
    assert_eq!(report["rest_requests"], 41, "{report}");
    assert_eq!(report["rest_weight"], 40.0 * 2.0 + 20.0, "{report}");
    assert_eq!(report["refusals"], 0, "{report}");
    assert!(report["to_all_live_s"].as_f64() > Some(0.0), "{report}");
    assert!(report["streamed"].as_u64() >= Some(1), "{report}");
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 3, "{report}");
    assert!(targets.iter().all(|t| t["met"] == true), "{report}");
    inst.assert_clean();
}

/// SIGTERM right after candles reached the store: the feed stops, and the
/// workers judge what was published before CLEANUP, so every one of those
/// candles has its signals printed. The worker is stopped while the candles
/// are written and continued only after the SIGTERM, so the CLEANUP is
/// already waiting for it (before, its signals for the new candles were
/// lost).
#[test]
fn sigterm_right_after_candles_reach_the_store_loses_none_of_their_signals() {
    let inst = TestInstance::new("bterm");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = dir.path().join("every.json");
    // Many traders: the worker checks for CLEANUP between traders, so a pass
    // cut short by it leaves most of them unjudged.
    let every: Vec<serde_json::Value> = (0..50)
        .map(|k| serde_json::json!({"id": format!("every{k:02}"), "symbols": "*", "interval": "1m", "rule": "close > 0"}))
        .collect();
    let every = serde_json::Value::from(every);
    std::fs::write(&traders, every.to_string()).expect("write traders");
    let mock = MockBinance::start(
        timeline(&["BTCUSDT", "ETHUSDT"], 300).expect("timeline"),
        50,
        vec![episode(0, 5, false, End::Idle)],
    )
    .expect("mock");
    let child = live_command(
        &inst,
        &mock,
        "BTCUSDT,ETHUSDT",
        &traders,
        &[
            "--max-symbols",
            "2",
            "--workers",
            "1",
            "--ping-interval",
            "1000",
            "--ping-deadline",
            "10000",
            "--shutdown-timeout",
            "5000",
        ],
    );
    wait_in_sync(&inst, &mock, &child);
    let ready = inst.status_when(WAIT, |s| s["workers"][0]["state"] == "ready");
    let worker =
        nix::unistd::Pid::from_raw(ready["workers"][0]["pid"].as_u64().expect("pid") as i32);
    nix::sys::signal::kill(worker, Signal::SIGSTOP).expect("SIGSTOP");
    mock.stream(3, 1, Duration::from_millis(5));
    wait_in_sync(&inst, &mock, &child);
    child.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(worker, Signal::SIGCONT).expect("SIGCONT");
    let (exit, stdout, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "{stderr}");
    assert!(
        stderr.contains("the workers judge what was published"),
        "{stderr}"
    );
    let got = normalized_signals(&stdout);
    let want = oracle(&inst, &mock, dir.path(), &traders);
    assert_eq!(
        want.len(),
        50 * 2 * 58,
        "every trader on every closed candle"
    );
    assert_same_signals(&got, &want, "signals after SIGTERM");
    inst.assert_clean();
}

/// A live session into `--sink file:PATH` across coordinator SIGKILLs, with
/// candles closing while it is down: each start backfills what it missed,
/// and the file ends equal to a backtest of the stand-in's candles (0 lost,
/// 0 twice).
#[test]
fn a_file_sink_over_a_live_session_is_exactly_once_across_sigkills() {
    let inst = TestInstance::new("blivefile");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = traders_file(dir.path());
    let file = dir.path().join("signals.jsonl");
    let sink = format!("file:{}", file.display());
    let mock = MockBinance::start(
        timeline(&["BTCUSDT", "ETHUSDT"], 600).expect("timeline"),
        60,
        Vec::new(),
    )
    .expect("mock");
    let flags = [
        "--max-symbols",
        "4",
        "--candles-per-series",
        "2048",
        "--sink",
        sink.as_str(),
    ];
    let lines = || {
        std::fs::read_to_string(&file)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut grew = 0;
    for round in 0..4 {
        let child = live_command(&inst, &mock, "BTCUSDT,ETHUSDT", &traders, &flags);
        wait_in_sync(&inst, &mock, &child);
        let before = lines();
        // Candles close while it runs; it is killed mid-stream.
        std::thread::scope(|scope| {
            scope.spawn(|| mock.stream(30, 1, Duration::from_millis(10)));
            std::thread::sleep(Duration::from_millis(150));
            child.signal(Signal::SIGKILL);
        });
        let (status, _, _) = child.wait_output(WAIT);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        grew += usize::from(lines() > before);
        // And more close while it is down: only a backfill brings them.
        mock.stream(20, 1, Duration::ZERO);
        eprintln!("round {round}: the file holds {} lines", lines());
    }
    let child = live_command(&inst, &mock, "BTCUSDT,ETHUSDT", &traders, &flags);
    wait_in_sync(&inst, &mock, &child);
    let (stdout, _) = stop(&inst, child);
    assert!(stdout.is_empty(), "stdout is not a sink here");
    assert!(grew >= 2, "signals were written between the kills: {grew}");
    let got = normalized_signals(&std::fs::read(&file).expect("the sink"));
    let want = oracle(&inst, &mock, dir.path(), &traders);
    assert!(want.len() > 30, "{}", want.len());
    assert_same_signals(&got, &want, "the file against the backtest");
    inst.assert_clean();
}

/// A coordinator down longer than its start-up backfill reaches: once every
/// series is live, its file sink is told which candles' signals are out of
/// reach (log and `status`, with the count), never a silent drop; a restart
/// within reach tells nothing.
#[test]
fn a_sink_whose_position_is_older_than_the_backfill_is_told_so() {
    let inst = TestInstance::new("breach");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = traders_file(dir.path());
    let file = dir.path().join("signals.jsonl");
    let sink = format!("file:{}", file.display());
    let mock = MockBinance::start(
        timeline(&["BTCUSDT"], 2600).expect("timeline"),
        200,
        Vec::new(),
    )
    .expect("mock");
    let flags = [
        "--max-symbols",
        "2",
        "--candles-per-series",
        "1440",
        "--sink",
        sink.as_str(),
    ];
    let file_sink = |s: &Value| {
        s["sinks"]
            .as_array()
            .and_then(|a| a.iter().find(|k| k["kind"] == "file").cloned())
            .unwrap_or_default()
    };
    let run = |down: usize| {
        mock.stream(down, 1, Duration::ZERO);
        let child = live_command(&inst, &mock, "BTCUSDT", &traders, &flags);
        if down < 1000 {
            wait_in_sync(&inst, &mock, &child);
        }
        // Checked once every series is live (null until then).
        let s = inst.status_when(WAIT, |s| file_sink(s)["out_of_reach"].is_array());
        let (_, stderr) = stop(&inst, child);
        (file_sink(&s), stderr)
    };
    let (first, _) = run(0);
    assert!(first["delivered"].as_u64() > Some(10), "{first}");
    assert_eq!(first["out_of_reach"], serde_json::json!([]), "{first}");
    let (within, stderr) = run(50);
    assert_eq!(within["out_of_reach"], serde_json::json!([]), "{within}");
    assert!(!stderr.contains("out of the backfill's reach"), "{stderr}");
    // Down while 1,500 candles close: the backfill brings the last 1,080.
    let (beyond, stderr) = run(1500);
    let told = beyond["out_of_reach"].as_array().expect("a list").clone();
    assert_eq!(told.len(), 1, "{beyond}");
    let told = told[0].as_str().expect("text");
    assert!(
        told.starts_with("1m:") && told.contains("cannot be delivered"),
        "{told}"
    );
    assert!(
        stderr.contains("out of the backfill's reach"),
        "logged: {stderr}"
    );
    assert!(
        beyond["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("out of the backfill's reach")),
        "{beyond}"
    );
    inst.assert_clean();
}
