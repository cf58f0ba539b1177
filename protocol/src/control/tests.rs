//! Every answer reads back as what was written, in the shapes clients
//! have read by key since before these types (`status --json` consumers).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::*;

/// `value` read as a `T` and written again is `value`, key for key.
fn round_trip<T: Serialize + DeserializeOwned>(value: serde_json::Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).expect("reads as the type");
    assert_eq!(serde_json::to_value(&typed).expect("writes"), value);
    typed
}

fn delivery() -> serde_json::Value {
    json!({
        "latency_p50_us": 925, "latency_p99_us": null, "delivered": 257, "queued": 0,
        "lost": 0, "rejected": 0, "retries": 0, "broker_duplicates": 0, "behind": 0,
        "lag_ms": 0, "last_error": null,
    })
}

fn with(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn durable(kind: &str, spec: &str) -> serde_json::Value {
    with(
        json!({
            "kind": kind, "spec": spec, "emitted": 257, "series": 16, "queue_bound": 100000,
            "is_behind": false, "catching_up": false, "catch_ups": 0, "lost_traders": [],
            "out_of_reach": null,
        }),
        delivery(),
    )
}

fn written() -> serde_json::Value {
    json!({
        "candles_written": 800, "closed_written": 800, "aggregated_written": 4000,
        "repeats": 0, "gaps": 0, "missing_candles": 0, "corrections": 0,
    })
}

fn finite(kind: &str) -> serde_json::Value {
    with(
        json!({
            "kind": kind, "pace": { "rate": 100.0 }, "batches": 200, "store_appended": 1040,
            "publishes": 201, "rejected": 0, "finished": true, "evaluated": true,
        }),
        written(),
    )
}

fn connection() -> serde_json::Value {
    json!({ "connected": true, "disconnects": 1, "reconnects": 1, "slow_consumer": 0, "last_event": "connected" })
}

fn live() -> serde_json::Value {
    with(
        json!({
            "kind": "binance", "connected": 1, "connections_planned": 1, "connections": 2,
            "replacements": 0, "shutdown_notices": 0, "overflowed": 0, "rate_limited": 0,
            "bans": 0, "server_errors": 0, "never_connected": false, "connect_errors": 0,
            "connect_error": null, "used_weight": 4, "peak_used_weight": 8,
            "rest_paused_ms": null, "rest_pause": null, "missing_closes": 0,
            "repaired_closes": 0, "late_closes": 0, "provisional_closes": 0,
            "series": { "live": 2, "behind": 0, "failing": 0, "repairing": 0,
                "failing_series": [], "gaps": [{ "series": "BTCUSDT 1m", "count": 3, "detail": "x" }],
                "skipped_symbols": [] },
            "reconnects": 1, "last_message_age_ms": 120, "messages": 10, "bad_messages": 0,
            "stale": 0, "deferred": 0, "backfilled": 30, "rest_requests": 3,
            "backfill_failures": 0, "latency_p50_ns": 1000, "latency_p99_ns": null,
            "last_error": null,
        }),
        written(),
    )
}

fn workers() -> serde_json::Value {
    json!([{ "id": 0, "pid": 14003, "state": "ready", "traders": 2,
            "trader_ids": ["sma10-up", "sma30-up"], "restarts": 0, "rtt_us": 310,
            "last_pong_age_ms": 80, "retries": 0, "malformed_frames": 0, "undecodable_frames": 0,
            "signals": 128, "rss_bytes": 8409088, "last_publish": 201, "confirmed_publish": 201,
            "gaps": 0, "judged": 1600, "signal_frames": 89, "largest_signal_frame_bytes": 262,
            "passes": 201, "pass_p50_us": 109, "pass_p99_us": 594,
            "rtt_histogram_log2_us": [0, 0, 0, 0, 0, 0, 0, 1, 22, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] },
            { "id": 1, "pid": 0, "state": "backoff", "traders": 0, "trader_ids": [], "restarts": 1,
            "rtt_us": null, "last_pong_age_ms": null, "retries": 0, "malformed_frames": 0,
            "undecodable_frames": 0, "signals": 0, "rss_bytes": null, "last_publish": null,
            "confirmed_publish": 0, "gaps": null, "judged": null, "signal_frames": null,
            "largest_signal_frame_bytes": null, "passes": null, "pass_p50_us": null,
            "pass_p99_us": null, "rtt_histogram_log2_us": [] }])
}

fn status(feed: serde_json::Value, sinks: serde_json::Value) -> serde_json::Value {
    json!({
        "instance": "probe", "pid": 13993, "state": "running", "uptime_ms": 5920,
        "metrics": "http://127.0.0.1:39481/metrics",
        "control": { "loop_us": { "status": { "count": 2, "p50_us": 51.3, "p99_us": 80.0, "max_us": 80.0 },
            "other": { "count": 1, "p50_us": null, "p99_us": null, "max_us": null } } },
        "segment": { "name": "/shmkline-probe", "size_bytes": 159360000u64, "touched_bytes": 188160,
            "generation": 10101676318238389831u64,
            "rings": [{ "interval": "1m", "candles": 1440, "needed": 31, "traders": 4,
                "ring_bytes": 103680, "sized_by": "default" }] },
        "feed": feed,
        "signals": { "emitted": 257, "duplicates_dropped": 0, "latency_samples": 257,
            "latency_p50_us": 459, "latency_p99_us": 860 },
        "sinks": sinks,
        "candles_published": { "stream": "SHMKLINE_CANDLES", "published": 3, "duplicates": 0,
            "retries": 0, "queued": 0, "dropped": 0, "connection": connection() },
        "shard": { "shard": "0/1", "symbols": ["SYN000", "SYN001"] },
        "gaps": 0,
        "quarantined": [{ "trader": "boom", "slot": 1, "strikes": 3 }],
        "supervision": { "faults": 1, "recovered": 1, "recent": [{
            "slot": 1, "pid": 14005, "kind": "crash", "cause": "self_inflicted", "reason": "exited",
            "exit": "signal: 6 (SIGABRT)", "detected_at_ms": 1, "recovered_at_ms": 2, "recovery_ms": 1.5 }] },
        "workers": workers(),
        "memory": { "alert_mb_per_h": 10.0, "sample_interval_ms": 10000, "warmup_s": 120,
            "window_s": 600, "processes": [{ "process": "coordinator", "pid": 13993,
                "private_bytes": 3690496, "rss_bytes": 24903680, "growth_mb_per_h": null,
                "samples": 0, "alarms": 0 }] },
    })
}

#[test]
fn a_status_of_every_feed_and_sink_reads_back_whole() {
    let stdout = with(
        json!({ "kind": "stdout", "spec": "stdout", "emitted": 257, "closed": false, "series": 16 }),
        delivery(),
    );
    let nats_sink = with(
        durable("nats", "nats://127.0.0.1:4222"),
        json!({ "connection": connection() }),
    );
    let sinks = json!([
        stdout,
        durable("file", "file:/tmp/s.jsonl"),
        durable("webhook", "webhook:http://127.0.0.1/hook"),
        durable("webhook-batch", "webhook-batch:http://127.0.0.1/hook"),
        nats_sink,
    ]);
    let replay = with(
        finite("replay"),
        json!({ "bad_lines": 2, "bytes_read": 10, "bytes_total": 20 }),
    );
    let nats = with(
        finite("nats"),
        json!({ "nats": { "stream": "SHMKLINE_CANDLES", "shard": "0/2", "received": 9,
            "bad_messages": 4, "other_shard": 3, "last_seq": 9, "judged_seq": 5,
            "consumer_restarts": 0, "sent_to_visible_p50_us": 800, "sent_to_visible_p99_us": null,
            "connection": connection() } }),
    );
    let feeds = [
        finite("synthetic"),
        replay,
        nats,
        live(),
        json!({ "kind": "binance", "started": false }),
    ];
    for feed in feeds {
        let typed: Status = round_trip(status(feed.clone(), sinks.clone()));
        assert_eq!(typed.feed.kind(), feed["kind"]);
    }
    let typed: Status = round_trip(status(live(), sinks));
    assert!(matches!(&typed.feed, Feed::Binance(LiveFeed::Started(l)) if l.series.live == 2));
    assert_eq!(typed.feed.connection(), (true, 1));
    assert_eq!(typed.workers[1].state, WorkerState::Backoff);
    assert!(matches!(typed.sinks[4], Sink::Nats(_)));
}

#[test]
fn the_trader_answers_read_back_whole() {
    let list: TraderList = round_trip(json!({ "traders": [
        { "state": "running", "id": "sma10-up", "slot": 0, "interval": "1m", "symbols": "All",
          "rule": "crosses_above(close, sma(close, 10))", "cooldown": 0, "labels": {},
          "added_at_publish": null, "window": 11,
          "series": [{ "symbol": "SYN000", "held": 200, "needed": 11, "warm": true }] },
        { "state": "pending", "id": "b", "slot": 1, "interval": "5m",
          "symbols": { "List": ["BTCUSDT"] }, "rule": "close > 1", "cooldown": 2,
          "labels": { "k": "v" }, "added_at_publish": 40, "window": 3, "series": [] },
        { "state": "quarantined", "id": "boom", "slot": 1 },
    ] }));
    assert_eq!(list.traders[2].state(), "quarantined");
    assert_eq!(list.traders[1].id(), "b");
    round_trip::<Added>(
        json!({ "added": [{ "id": "a", "slot": 1 }], "from_publish": 7,
        "last_batch_at": null, "persisted": true }),
    );
    let removed: Removed =
        round_trip(json!({ "removed": "a", "slot": 1, "last_batch_at": 5, "persisted": true }));
    assert!(matches!(removed.from, RemovedFrom::Slot { slot: 1, .. }));
    let removed: Removed =
        round_trip(json!({ "removed": "boom", "was": "quarantined", "persisted": true }));
    assert!(matches!(removed.from, RemovedFrom::Quarantine { .. }));
}

#[test]
fn an_answer_line_is_its_type_or_a_refusal() {
    let line = Answer::Pong(Pong { pong: true }).to_line();
    assert_eq!(line, r#"{"pong":true}"#);
    assert_eq!(decode::<Pong>(&line).expect("a pong"), Pong { pong: true });
    let refused = Answer::refused("no trader x").to_line();
    assert_eq!(refused, r#"{"error":"no trader x"}"#);
    let err = decode::<Pong>(&refused).expect_err("refused");
    assert_eq!(err.to_string(), "the coordinator refused: no trader x");
    let hinted = Refusal {
        error: "busy".into(),
        hint: Some("try again".into()),
    };
    assert_eq!(
        round_trip::<Refusal>(json!({ "error": "busy", "hint": "try again" })),
        hinted
    );
    assert!(matches!(
        decode::<Status>(r#"{"pong":true}"#),
        Err(AnswerError::Unexpected(_))
    ));
    let metrics: MetricsSnapshot = round_trip(json!({
        "status": status(finite("synthetic"), json!([])),
        "signals_by_trader": [["sma10-up", 7]],
        "signal_latency": { "counts": vec![0u64; 24], "sum_us": 0 },
        "passes": [{ "slot": 0, "histogram": { "counts": vec![0u64; 24], "sum_us": 12 } }],
        "restarts": [{ "slot": 0, "cause": "outside", "count": 3 }],
        "candles_written": { "1m": 120, "5m": 24 },
    }));
    assert_eq!(metrics.restarts[0].cause, Cause::Outside);
}
