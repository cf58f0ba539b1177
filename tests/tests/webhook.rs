//! `--sink webhook:URL` and `webhook-batch:URL` against a loopback receiver
//! (issue 15): at-least-once with a stable `Idempotency-Key`, so a receiver
//! that keys on it sees each signal exactly once, across coordinator
//! SIGKILLs, receiver failures and outages; a slow receiver falls behind
//! without holding up anything else, and the next start catches it up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use engine::run::sink::stand_in::{Receiver, Reply};
use harness::{TestInstance, live_processes_mentioning, normalized_signals};
use nix::sys::signal::Signal;

fn assert_nothing_left(inst: &TestInstance) {
    let left = live_processes_mentioning(&format!("--instance {} ", inst.name));
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
    inst.assert_clean();
}

/// What the receiver accepted, once per key (as a receiver keying on
/// `Idempotency-Key` keeps it), normalised like stdout; and how many keys
/// it accepted more than once.
fn by_key(hook: &Receiver) -> (Vec<String>, usize) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut again = 0;
    for line in hook.accepted_lines() {
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON signal");
        let key = format!(
            "{}|{}|{}|{}",
            v["trader"].as_str().expect("trader"),
            v["symbol"].as_str().expect("symbol"),
            v["interval"].as_str().expect("interval"),
            v["open_time"]
        );
        again += usize::from(seen.insert(key, line).is_some());
    }
    let text: String = seen.into_values().map(|l| l + "\n").collect();
    (normalized_signals(text.as_bytes()), again)
}

/// Every single-signal request carries the key its body names.
fn assert_keys_match_bodies(hook: &Receiver) {
    for r in hook.requests() {
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("a JSON signal");
        let want = format!(
            "{}|{}|{}|{}",
            v["trader"].as_str().expect("trader"),
            v["symbol"].as_str().expect("symbol"),
            v["interval"].as_str().expect("interval"),
            v["open_time"]
        );
        assert_eq!(r.key.as_deref(), Some(want.as_str()));
    }
}

/// A paced replay of the real BTCUSDT week into a webhook that fails now and
/// then (503, a dropped connection, 429 with `Retry-After`), the coordinator
/// SIGKILLed at six moments and started again each time; the last run ends
/// in order. The receiver, keeping one signal per key, holds exactly the
/// backtest's signals.
#[test]
fn a_webhook_is_exactly_once_by_key_across_sigkills_and_failures() {
    let Some(data) = harness::data_file("BTCUSDT-1m-2021-02-19_25.csv") else {
        return;
    };
    let inst = TestInstance::new("hook");
    let hook = Receiver::start().expect("receiver");
    let feed = format!("replay:{}", data.display());
    let sink = format!("webhook:{}/signals", hook.base);
    let args = ["run", "--feed", &feed, "--rate", "2000", "--sink", &sink];
    let mut seed: u64 = 0x0bad_5eed;
    let mut mid_stream = 0;
    for kill in 0..6 {
        // Failures among the deliveries, not before them all.
        let ok = |n| std::iter::repeat_n(Reply::Status(200, None), n);
        hook.script(
            ok(20)
                .chain([Reply::Status(503, None), Reply::Drop])
                .chain(ok(100))
                .chain([Reply::Status(429, Some(1))]),
        );
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Later each time: a run replays the week from its start and sends
        // only past what was confirmed, which moves on with every run.
        let after = Duration::from_millis(1400 + 500 * kill + (seed >> 33) % 400);
        let before = hook.accepted_lines().len();
        inst.run_and_sigkill(&args, after);
        let now = hook.accepted_lines().len();
        mid_stream += usize::from(now > before);
        eprintln!("kill {kill} at {after:?}: {now} accepted");
    }
    hook.script([Reply::Status(500, None), Reply::Status(429, Some(1))]);
    let out = inst.command("shmkline").args(args).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout is not a sink here");

    let (got, again) = by_key(&hook);
    let want = inst.backtest_signals(&["--feed", &feed]);
    assert!(want.len() > 1000, "{}", want.len());
    let failed = hook
        .requests()
        .iter()
        .filter(|r| r.status != Some(200))
        .count();
    eprintln!(
        "{} requests, {failed} failed, {again} keys accepted again after a kill",
        hook.count()
    );
    assert!(failed >= 15, "the failures happened: {failed}");
    assert!(
        mid_stream >= 3,
        "the kills landed while signals were being delivered: {mid_stream} of 6"
    );
    let missing = want.iter().filter(|w| !got.contains(w)).count();
    assert_eq!(missing, 0, "lost");
    assert!(got == want, "one per key equals the backtest");
    // Re-sent after a kill only what was confirmed after the last save.
    assert!(again < 6 * 400, "{again}");
    assert_keys_match_bodies(&hook);
    assert_nothing_left(&inst);
}

/// A receiver that takes 30 ms a signal cannot keep up with a fast replay:
/// with `--sink-queue 20` its sink falls behind, stdout gets every signal
/// anyway, the run exits in error saying so, and `status` showed it; the
/// next start (the receiver quick again) delivers exactly what it lacks.
#[test]
fn a_slow_webhook_falls_behind_alone_and_the_next_start_catches_it_up() {
    let inst = TestInstance::new("slowhook");
    let hook = Receiver::start().expect("receiver");
    hook.delay(Duration::from_millis(30));
    let sink = format!("webhook:{}/in", hook.base);
    let feed = ["--candles", "300", "--rate", "5000"];
    let base: Vec<&str> = [&["run"], &feed[..], &["--sink", &sink]].concat();
    let mut cmd = inst.command("shmkline");
    cmd.args(&base)
        .args(["--sink", "stdout", "--sink-queue", "20", "--stay"]);
    let mut run = harness::ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    let hook_of = |s: &serde_json::Value| {
        s["sinks"]
            .as_array()
            .and_then(|a| a.iter().find(|k| k["kind"] == "webhook").cloned())
            .unwrap_or_default()
    };
    let status = inst.status_when(Duration::from_secs(60), |s| {
        s["feed"]["evaluated"] == true && hook_of(s)["behind"].as_u64() > Some(0)
    });
    let hook_status = &hook_of(&status);
    assert_eq!(hook_status["kind"], "webhook", "{status}");
    assert_eq!(hook_status["queue_bound"], 20, "{status}");
    assert!(
        hook_status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("--sink-queue")),
        "{status}"
    );
    run.signal(Signal::SIGTERM);
    let (st, stdout, stderr) = run.wait_output(Duration::from_secs(60));
    assert!(!st.success(), "behind is an error for a finite run");
    assert!(
        stderr.contains("fell behind") && stderr.contains("--sink-queue"),
        "{stderr}"
    );
    let want = inst.backtest_signals(&["--candles", "300"]);
    assert!(want.len() > 50, "{}", want.len());
    assert_eq!(normalized_signals(&stdout), want, "stdout got every signal");
    let (partial, _) = by_key(&hook);
    assert!(
        partial.len() < want.len(),
        "{} of {}",
        partial.len(),
        want.len()
    );

    hook.delay(Duration::ZERO);
    let out = inst.command("shmkline").args(&base).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (got, _) = by_key(&hook);
    assert!(got == want, "caught up: every signal once per key");
    assert_keys_match_bodies(&hook);
    assert_nothing_left(&inst);
}

/// A receiver that refuses a trader's signals (400) gets each once (a 4xx
/// is final: not retried, not re-sent by the next start) and the run says
/// so; one that is down for good is retried until `--drain-timeout`, the
/// run names what it did not confirm, and the next start sends it.
#[test]
fn refusals_are_final_and_an_outage_is_resent_after_the_drain_time() {
    let inst = TestInstance::new("hookfail");
    let hook = Receiver::start().expect("receiver");
    let sink = format!("webhook-batch:{}/in", hook.base);
    let base = ["run", "--candles", "200", "--rate", "5000", "--sink", &sink];
    let want = inst.backtest_signals(&["--candles", "200"]);
    let refused_trader = want
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["trader"].as_str().expect("trader").to_owned()
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .next()
        .expect("a trader");

    // Down for good: retried until the drain time, then named.
    hook.outage(Some(Reply::Status(503, Some(0))));
    let out = inst
        .command("shmkline")
        .args(base)
        .args(["--drain-timeout", "1500"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not confirmed") && stderr.contains("--drain-timeout"),
        "{stderr}"
    );
    assert!(hook.count() >= 3, "retried: {}", hook.count());
    assert!(hook.accepted_lines().is_empty());

    // Up again, refusing one trader: everything else once, that trader's
    // signals each in one refused request and never again.
    hook.outage(None);
    let needle = format!("\"trader\":\"{refused_trader}\"");
    hook.refuse(Some(&needle));
    let sink_single = format!("webhook:{}/one", hook.base);
    let single = [
        "run",
        "--candles",
        "200",
        "--rate",
        "5000",
        "--sink",
        &sink_single,
    ];
    let out = inst.command("shmkline").args(single).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refused by the receiver"), "{stderr}");
    let refused_requests = hook
        .requests()
        .iter()
        .filter(|r| r.status == Some(400))
        .count();
    let refused_want = want.iter().filter(|l| l.contains(&needle)).count();
    assert!(refused_want > 0);
    assert_eq!(refused_requests, refused_want, "each refused once");
    let before = hook.count();
    let out = inst.command("shmkline").args(single).output().expect("run");
    assert!(
        out.status.success(),
        "nothing left to send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hook.count(), before, "refusals are not re-sent");

    // The batch sink, its outage over: it sends what it did not confirm.
    hook.refuse(None);
    let out = inst.command("shmkline").args(base).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch_lines: Vec<String> = hook
        .requests()
        .iter()
        .filter(|r| r.status == Some(200) && r.body.starts_with('['))
        .flat_map(|r| {
            let items: Vec<serde_json::Value> = serde_json::from_str(&r.body).expect("array");
            items.into_iter().map(|v| v.to_string() + "\n")
        })
        .collect();
    assert_eq!(
        normalized_signals(batch_lines.concat().as_bytes()),
        want,
        "the batch sink got every signal once"
    );
    assert_nothing_left(&inst);
}

/// `bench sinks` runs every measurement and reports a figure for each sink,
/// with ratios to stdout measured in the same run, and leaves nothing behind.
#[test]
fn bench_sinks_reports_each_sink_and_the_restart_latency() {
    let inst = TestInstance::new("bsinks");
    let out = inst.shmkline(&[
        "bench",
        "sinks",
        "--traders",
        "5",
        "--symbols",
        "5",
        "--candles",
        "40",
        "--restarts",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["signals_per_run"], 1000, "{report}");
    let kinds = ["stdout", "file", "webhook", "webhook-batch"];
    let throughput = report["throughput"].as_array().expect("throughput");
    assert_eq!(throughput.len(), 4, "{report}");
    for (t, kind) in throughput.iter().zip(kinds) {
        assert_eq!(t["sink"], kind, "{report}");
        assert_eq!(t["signals"], 1000, "{report}");
        assert!(t["signals_per_second"].as_f64() > Some(0.0), "{report}");
    }
    assert_eq!(throughput[0]["vs_stdout"], 1.0, "{report}");
    let latency = report["latency"].as_array().expect("latency");
    for (l, kind) in latency.iter().zip(kinds) {
        assert_eq!(l["sink"], kind, "{report}");
        assert!(l["p99_us"].as_u64() >= l["p50_us"].as_u64(), "{report}");
        assert!(l["p50_us"].as_u64() > Some(0), "{report}");
    }
    assert_eq!(report["restart_to_first_signal"]["samples"], 2, "{report}");
    assert!(report["restart_to_first_signal"]["p50_ns"].as_u64() > Some(0));
    assert_nothing_left(&inst);
}
