//! Lost and late `x: true` events against the stand-in: every candle closed
//! by its successor is repaired from REST or by its late close, also when a
//! 429 pauses REST mid-repair while the stream loses more closes, and
//! across a reconnect. Each test shows the fault happened (the stand-in's
//! counters) and that no candle reached the traders with values other than
//! the exchange's final ones.

use std::time::Duration;

use harness::{TestInstance, normalized_signals};
use testkit::exchange::{Behavior, End, Episode, MockBinance, timeline};

mod support;
use support::*;

/// Dropped and late `x: true` and a 13th REST column: each candle closed by
/// its successor is repaired (from REST, or by the late close with its final
/// values), none stays provisional, and the store equals the stand-in.
#[test]
fn dropped_and_late_closes_are_repaired_and_a_13th_column_is_read() {
    let inst = TestInstance::new("bclose");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = traders_file(dir.path());
    let behavior = Behavior {
        drop_close_every: 5,
        delay_close_every: 7,
        extra_column: true,
        ..Behavior::default()
    };
    // 50 + 61 candles: the last one (111th) is neither dropped nor late.
    let stream = Episode {
        pause: Duration::from_millis(15),
        ..episode(0, 61, false, End::Idle)
    };
    let mock = MockBinance::start_behaving(
        timeline(&["BTCUSDT", "ETHUSDT"], 200).expect("timeline"),
        50,
        vec![stream],
        behavior,
    )
    .expect("mock");
    let child = live_command(&inst, &mock, "BTCUSDT,ETHUSDT", &traders, &RING_2048);
    wait_in_sync(&inst, &mock, &child);
    let feed = inst.status_when(WAIT, |s| s["feed"]["series"]["repairing"] == 0)["feed"].clone();
    assert_store_equals_server(&inst, &mock);
    let n = |k: &str| feed[k].as_u64().unwrap_or_else(|| panic!("{k}: {feed}"));
    assert!(
        n("repaired_closes") > 0,
        "no close repaired from REST: {feed}"
    );
    assert!(n("late_closes") > 0, "no late close: {feed}");
    assert_eq!(n("provisional_closes"), 0, "{feed}");
    assert_eq!(
        n("missing_closes"),
        n("repaired_closes") + n("late_closes"),
        "{feed}"
    );
    // Candles 50..111 with (k + 1) a multiple of 5 or 7, per symbol.
    let faulty = (50..111)
        .filter(|k: &usize| (k + 1).is_multiple_of(5) || (k + 1).is_multiple_of(7))
        .count() as u64;
    assert_eq!(n("missing_closes"), 2 * faulty, "{feed}");
    assert!(n("backfilled") > 0, "13-column rows not read: {feed}");
    let (stdout, _) = stop(&inst, child);
    let oracle = oracle(&inst, &mock, dir.path(), &traders);
    assert_eq!(normalized_signals(&stdout), oracle);
    inst.assert_clean();
}

/// A stand-in losing the `x: true` of every third candle whose REST answers
/// every second repair request 429 (`Retry-After: 1`), four times: while a
/// repair waits out the pause, the stream goes on and loses more closes,
/// whose events the repair holds. Each of those must be repaired too, not
/// closed by its successor with its last partial values.
fn losing_closes_during_repairs() -> Behavior {
    Behavior {
        drop_close_every: 3,
        repair_429: Some((2, 4)),
        retry_after_s: 1,
        ..Behavior::default()
    }
}

/// The fault happened: 429s landed on repairs, and during one of their
/// pauses a series lost more than one close (so a repair held the events
/// of at least one other candle whose close was lost).
fn assert_closes_were_lost_during_429s(mock: &MockBinance) {
    let (rate_limited, banned, _) = mock.rest_refusals();
    let dropped = mock.dropped_closes();
    assert!(rate_limited >= 1, "no 429 landed: {dropped:?}");
    assert_eq!(banned, 0);
    assert!(
        dropped.most_in_one_pause >= 3,
        "no repair held another lost close: {rate_limited} 429s, {dropped:?}"
    );
    assert_eq!(
        mock.violations(),
        0,
        "a request came inside a Retry-After window"
    );
}

/// Closes lost while a 429 pauses a repair: none reaches the traders with
/// partial values, and every one is counted (missing = the stand-in's lost
/// closes = repaired + late + provisional).
#[test]
fn closes_lost_while_a_429_pauses_a_repair_are_repaired_too() {
    let inst = TestInstance::new("bheld");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = traders_file(dir.path());
    let mock = MockBinance::start_behaving(
        timeline(&["BTCUSDT", "ETHUSDT"], 400).expect("timeline"),
        50,
        Vec::new(),
        losing_closes_during_repairs(),
    )
    .expect("mock");
    let child = live_command(&inst, &mock, "BTCUSDT,ETHUSDT", &traders, &RING_2048);
    // Streamed once both series are live: no close is lost during the
    // start's backfill (which would bring it without a repair).
    inst.status_when(WAIT, |s| s["feed"]["series"]["live"] == 2);
    // 50 + 150 candles: the last one (200th) keeps its close.
    mock.stream(150, 2, Duration::from_millis(15));
    wait_in_sync(&inst, &mock, &child);
    let feed = inst.status_when(WAIT, |s| s["feed"]["series"]["repairing"] == 0)["feed"].clone();
    assert_closes_were_lost_during_429s(&mock);
    let (rate_limited, _, _) = mock.rest_refusals();
    let dropped = mock.dropped_closes();
    let wrong = wrong_closes(&inst, &mock);
    assert!(
        wrong.is_empty(),
        "{} of {} lost closes reached the traders with other values than the exchange's ({rate_limited} 429s, {dropped:?}): {wrong:#?}\nfeed: {feed}",
        wrong.len(),
        dropped.all
    );
    let n = |k: &str| feed[k].as_u64().unwrap_or_else(|| panic!("{k}: {feed}"));
    assert_eq!(n("rate_limited"), rate_limited, "{feed}");
    assert_eq!(
        n("missing_closes"),
        dropped.all,
        "every lost close is counted as missing: {feed}"
    );
    assert_eq!(
        n("missing_closes"),
        n("repaired_closes") + n("late_closes") + n("provisional_closes"),
        "{feed}"
    );
    assert_eq!(n("provisional_closes"), 0, "{feed}");
    assert_store_equals_server(&inst, &mock);
    let (stdout, _) = stop(&inst, child);
    let oracle = oracle(&inst, &mock, dir.path(), &traders);
    assert_eq!(normalized_signals(&stdout), oracle);
    inst.assert_clean();
}

/// The same losses, and the connection cut mid-stream (a repair may be in
/// progress then: the backfill after the reconnect takes over): every
/// stored candle ends equal to the exchange's final values.
#[test]
fn closes_lost_during_429s_and_a_reconnect_end_as_the_exchange_closed_them() {
    let inst = TestInstance::new("bheldcut");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = quiet_traders(dir.path());
    let paced = |ep: Episode| Episode {
        pause: Duration::from_millis(15),
        ..ep
    };
    // 50 + 90, 5 missed while cut, + 60: the last (205th) keeps its close.
    let script = vec![
        paced(episode(0, 90, false, End::Drop)),
        paced(episode(5, 60, false, End::Idle)),
    ];
    let mock = MockBinance::start_behaving(
        timeline(&["BTCUSDT", "ETHUSDT"], 400).expect("timeline"),
        50,
        script,
        losing_closes_during_repairs(),
    )
    .expect("mock");
    let child = live_command(
        &inst,
        &mock,
        "BTCUSDT,ETHUSDT",
        &traders,
        &[
            &RING_2048[..],
            &["--reconnect-min", "5", "--reconnect-max", "50"],
        ]
        .concat(),
    );
    wait_in_sync(&inst, &mock, &child);
    let feed = inst.status_when(WAIT, |s| s["feed"]["series"]["repairing"] == 0)["feed"].clone();
    assert_closes_were_lost_during_429s(&mock);
    assert_eq!(mock.connections(), 2, "the connection was cut once: {feed}");
    assert!(feed["reconnects"].as_u64() >= Some(1), "{feed}");
    let wrong = wrong_closes(&inst, &mock);
    assert!(
        wrong.is_empty(),
        "{} candles stored with other values than the exchange's ({:?}): {wrong:#?}\nfeed: {feed}",
        wrong.len(),
        mock.dropped_closes()
    );
    assert!(feed["missing_closes"].as_u64() > Some(0), "{feed}");
    assert_eq!(feed["provisional_closes"], 0, "{feed}");
    assert_store_equals_server(&inst, &mock);
    stop(&inst, child);
    inst.assert_clean();
}
