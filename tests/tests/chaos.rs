//! The chaos test: real coordinator and workers, 50 SIGKILLs and 5 SIGSTOPs
//! on random workers during a paced finite feed. The signals must equal the
//! backtest oracle exactly, with no zombie, no orphan, no `/dev/shm` entry
//! and an unchanged coordinator descriptor count.

use harness::TestInstance;

#[test]
fn fifty_kills_and_five_stops_lose_and_duplicate_nothing() {
    let inst = TestInstance::new("chaos");
    let out = inst.shmkline(&[
        "--instance",
        inst.name.as_str(),
        "chaos",
        "--json",
        "--kills",
        "50",
        "--stops",
        "5",
        "--workers",
        "3",
        "--symbols",
        "3",
        "--candles",
        "900",
        "--rate",
        "45",
        "--ping-interval",
        "100",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr: {stderr}"));
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    assert_eq!(report["injected"]["kill"], 50);
    assert_eq!(report["injected"]["stop"], 5);
    assert!(
        n("detected") >= 55 && n("recovered") >= 55,
        "every fault detected and recovered: {report}"
    );
    assert!(n("signals_expected") > 100, "a meaningful oracle: {report}");
    assert_eq!(n("signals_lost"), 0, "{report}");
    assert_eq!(n("signals_duplicated"), 0, "{report}");
    assert_eq!(n("signals_unexpected"), 0, "{report}");
    assert_eq!(n("signals_received"), n("signals_expected"));
    assert_eq!(n("zombies"), 0);
    assert_eq!(n("orphans"), 0);
    assert_eq!(report["shm_left"], serde_json::json!([]));
    assert_eq!(report["runtime_dir_removed"], true);
    let fds = |k: usize| report["coordinator_fds"][k].as_u64().unwrap_or(u64::MAX);
    assert!(fds(1) <= fds(0), "no descriptor leaked: {report}");
    assert_eq!(report["ok"], true, "{report}");
    assert!(out.status.success(), "{stderr}");
    inst.assert_clean();
}

/// Issue 18, part 2: a one-minute smoke of `shmkline soak` (the full one is
/// `scripts/soak.sh --minutes 60`). Exact checks only: the faults landed
/// (kills, stops, feed cuts, trader churn, sink outages), and nothing was
/// left: no worker, no zombie, no segment, the run's exit 0. The growth
/// figures are reported, not judged (a minute is too short to fit them).
#[test]
fn a_one_minute_soak_leaves_nothing_behind() {
    let inst = TestInstance::new("soak");
    let out = inst.shmkline(&[
        "soak",
        "--minutes",
        "1",
        "--sample-every",
        "2",
        "--warmup",
        "20",
        "--threshold",
        "1000000",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("a JSON report ({e}): {stderr}"));
    assert!(out.status.success(), "soak failed: {report}\n{stderr}");
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k}: {report}"))
    };
    assert!(n("kills") > 0 && n("stops") > 0, "{report}");
    assert!(n("trader_changes") > 0 && n("sink_outages") > 0, "{report}");
    assert!(n("feed_connections") >= 2, "the feed was cut: {report}");
    assert!(n("faults_seen") >= n("kills"), "{report}");
    assert_eq!(n("shm_entries_left"), 0, "{report}");
    assert_eq!(n("workers_left"), 0, "{report}");
    assert_eq!(report["exit_code"], 0, "{report}");
    assert!(report["failures"].as_array().is_some_and(Vec::is_empty));
    let procs = report["processes"].as_array().expect("processes");
    assert!(
        procs
            .iter()
            .any(|p| p["process"] == "coordinator" && p["growth_mb_per_h"].is_f64()),
        "{report}"
    );
    // The spared slot's worker lived through it: a worker's figure too.
    assert!(
        procs.iter().any(|p| p["process"]
            .as_str()
            .is_some_and(|n| n.starts_with("worker 0 "))
            && p["growth_mb_per_h"].is_f64()),
        "{report}"
    );
    inst.assert_clean();
}
