//! `--sink webhook:URL` and `webhook-batch:URL` against a loopback receiver
//! (issue 15): at-least-once with a stable `Idempotency-Key`, so a receiver
//! that keys on it sees each signal exactly once, across coordinator
//! SIGKILLs, receiver failures and outages; a slow receiver falls behind
//! without holding up anything else, and the next start catches it up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use harness::{TestInstance, live_processes_mentioning, normalized_signals};
use nix::sys::signal::Signal;
use testkit::webhook::{Receiver, Reply};

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
        let key = harness::signal_key(&v);
        again += usize::from(seen.insert(key, line).is_some());
    }
    let text: String = seen.into_values().map(|l| l + "\n").collect();
    (normalized_signals(text.as_bytes()), again)
}

/// Every single-signal request carries the key its body names.
fn assert_keys_match_bodies(hook: &Receiver) {
    for r in hook.requests() {
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("a JSON signal");
        let want = harness::signal_key(&v);
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
    let data = harness::data_file("BTCUSDT-1m-2021-02-19_25.csv");
    let inst = TestInstance::new("hook");
    let hook = Receiver::start().expect("receiver");
    let feed = format!("replay:{}", data.display());
    let sink = format!("webhook:{}/signals", hook.base);
    let args = [
        "run",
        "--feed",
        &feed,
        "--rate",
        "2000",
        "--sink",
        &sink,
        "--webhook-timeout",
        "200",
    ];
    let mut seed: u64 = 0x0bad_5eed;
    let mut mid_stream = 0;
    for kill in 0..6 {
        // Failures among the deliveries, not before them all.
        let ok = |n| std::iter::repeat_n(Reply::Status(200, None), n);
        hook.script(
            ok(20)
                .chain([Reply::Status(503, None), Reply::Drop])
                .chain(ok(50))
                .chain([Reply::Stall(Duration::from_millis(400))])
                .chain(ok(50))
                .chain([Reply::Status(429, Some(1))]),
        );
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Later each time: a run replays the week from its start and sends
        // only past what was confirmed, which moves on with every run.
        let after = Duration::from_millis(1400 + 500 * kill + (seed >> 33) % 400);
        let before = hook.accepted_lines().len();
        std::thread::scope(|scope| {
            if kill == 2 {
                // A stretch of being down, mid-run.
                scope.spawn(|| {
                    std::thread::sleep(Duration::from_millis(600));
                    hook.outage(Some(Reply::Status(503, None)));
                    std::thread::sleep(Duration::from_millis(800));
                    hook.outage(None);
                });
            }
            inst.run_and_sigkill(&args, after);
        });
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
    let timeouts = hook
        .requests()
        .iter()
        .filter(|r| r.status.is_none())
        .count();
    assert!(failed >= 15, "the failures happened: {failed}");
    assert!(timeouts >= 12, "drops and timeouts happened: {timeouts}");
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

/// A receiver that takes 30 ms a signal cannot keep up with 12,000
/// signals: with `--sink-queue 10000` its sink falls behind (handed
/// nothing more) while stdout gets every signal; the receiver quick again,
/// the queue drains, the workers judge again from where they stood and the
/// sink gets exactly what it missed, in the same run: one line per key
/// equals the backtest, and stdout printed nothing twice.
#[test]
fn a_slow_webhook_falls_behind_alone_and_is_caught_up_in_the_run() {
    let inst = TestInstance::new("slowhook");
    let hook = Receiver::start().expect("receiver");
    hook.delay(Duration::from_millis(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = harness::firing_traders(dir.path(), 40, "s")
        .display()
        .to_string();
    let sink = format!("webhook:{}/in", hook.base);
    let feed = [
        "--traders",
        &traders,
        "--symbols",
        "10",
        "--max-symbols",
        "11",
        "--intervals",
        "1m",
        "--candles",
        "30",
    ];
    let mut cmd = inst.command("shmkline");
    cmd.arg("run")
        .args(feed)
        .args(["--rate", "5000", "--sink", &sink, "--sink", "stdout"])
        .args(["--sink-queue", "10000", "--stay"]);
    let mut run = harness::ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    let hook_of = |s: &serde_json::Value| {
        s["sinks"]
            .as_array()
            .and_then(|a| a.iter().find(|k| k["kind"] == "webhook").cloned())
            .unwrap_or_default()
    };
    let behind = inst.status_when(Duration::from_secs(60), |s| {
        hook_of(s)["is_behind"] == true && hook_of(s)["behind"].as_u64() > Some(0)
    });
    // The run is not done while its sink catches up (it still moves).
    assert_eq!(behind["feed"]["evaluated"], false, "{behind}");
    let shown = hook_of(&behind);
    assert!(shown["behind"].as_u64() > Some(0), "{behind}");
    assert_eq!(shown["queue_bound"], 10_000, "{behind}");
    assert!(
        shown["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("--sink-queue")),
        "{behind}"
    );
    hook.delay(Duration::ZERO);
    let want = inst.backtest_signals(&feed);
    assert_eq!(want.len(), 12_000);
    let done = inst.status_when(Duration::from_secs(120), |s| {
        hook_of(s)["is_behind"] == false && hook_of(s)["delivered"].as_u64() == Some(12_000)
    });
    assert_eq!(hook_of(&done)["catch_ups"], 1, "{done}");
    run.signal(Signal::SIGTERM);
    let (st, stdout, stderr) = run.wait_output(Duration::from_secs(60));
    assert!(st.success(), "{stderr}");
    assert!(
        stderr.contains("judge again from its behind point"),
        "the catch-up is logged"
    );
    assert_eq!(
        normalized_signals(&stdout),
        want,
        "stdout: each signal once"
    );
    let (got, again) = by_key(&hook);
    assert!(
        got == want,
        "the webhook: each signal, caught up in the run"
    );
    assert_eq!(again, 0, "and none twice");
    assert_keys_match_bodies(&hook);
    assert_nothing_left(&inst);
}

/// A receiver that refuses a trader's signals (400) gets each once (a 4xx
/// is final: not retried, not re-sent by the next start), `status` and the
/// run say so; one that is down for good is retried until `--drain-timeout`, the
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
    let refused_want = want.iter().filter(|l| l.contains(&needle)).count() as u64;
    assert!(refused_want > 0);
    let mut cmd = inst.command("shmkline");
    cmd.args(single).arg("--stay");
    let run = harness::ChildGuard::spawn(&mut cmd);
    let status = inst.status_when(Duration::from_secs(60), |s| {
        s["feed"]["evaluated"] == true
            && s["sinks"][0]["queued"] == 0
            && s["sinks"][0]["rejected"].as_u64() == Some(refused_want)
    });
    let shown = &status["sinks"][0];
    assert_eq!(shown["kind"], "webhook", "{status}");
    assert_eq!(
        shown["delivered"].as_u64(),
        Some(want.len() as u64 - refused_want),
        "{status}"
    );
    assert!(
        shown["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 400: unknown trader")),
        "{status}"
    );
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(60));
    assert!(!st.success());
    assert!(stderr.contains("refused by the receiver"), "{stderr}");
    let refused_requests = hook
        .requests()
        .iter()
        .filter(|r| r.status == Some(400))
        .count() as u64;
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
    for restart in ["live", "replay"] {
        let r = &report[format!("{restart}_restart_to_first_signal")];
        assert_eq!(r["samples"], 2, "{report}");
        assert!(r["p50_ns"].as_u64() > Some(0), "{report}");
    }
    assert_nothing_left(&inst);
}

/// A malformed `--sink` is refused before anything starts, naming the flag,
/// the value and what a sink is.
#[test]
fn a_malformed_sink_is_refused_naming_it() {
    let inst = TestInstance::new("badsink");
    for (spec, says) in [
        ("webhook:ftp://x", "starts with http:// or https://"),
        ("webhook:http://", "needs a host"),
        ("kafka:x", "a sink is stdout, file:PATH, webhook:URL"),
    ] {
        let out = inst.shmkline(&["run", "--candles", "5", "--sink", spec]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--sink") && stderr.contains(spec) && stderr.contains(says),
            "{stderr}"
        );
    }
    let out = inst.shmkline(&[
        "run",
        "--candles",
        "5",
        "--sink",
        "stdout",
        "--sink",
        "stdout",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--sink stdout is given twice"), "{stderr}");
    // A queue smaller than a frame could carry is refused, naming its range.
    let out = inst.shmkline(&["run", "--candles", "5", "--sink-queue", "9999"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--sink-queue") && stderr.contains("10000..=10000000"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = inst.shmkline(&[
        "run",
        "--candles",
        "5",
        "--sink",
        &format!("file:{}", dir.path().display()),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&dir.path().display().to_string()) && stderr.contains("not a regular file"),
        "{stderr}"
    );
    assert_nothing_left(&inst);
}

/// `webhook:https://...` against a receiver with a private CA: with
/// `--webhook-ca-file` every signal arrives once per key; without it the
/// server's certificate is not trusted, every request fails and is retried
/// until the drain time, and `status` and the exit say why.
#[test]
fn an_https_webhook_trusts_the_ca_it_is_given_and_only_that() {
    let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let identity = testkit::tls::tls_config(&tls.join("server.pem"), &tls.join("server.key"))
        .expect("identity");
    let hook = Receiver::start_tls(identity).expect("receiver");
    assert!(hook.base.starts_with("https://"));
    let inst = TestInstance::new("tlshook");
    let sink = format!("webhook:{}/in", hook.base);
    let base = ["run", "--candles", "150", "--rate", "5000", "--sink", &sink];
    let want = inst.backtest_signals(&["--candles", "150"]);
    assert!(want.len() > 20, "{}", want.len());

    let out = inst
        .command("shmkline")
        .args(base)
        .args(["--drain-timeout", "1000"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not confirmed") && stderr.to_lowercase().contains("certificate"),
        "untrusted: {stderr}"
    );
    assert!(hook.requests().is_empty(), "no request got through TLS");

    let ca = tls.join("ca.pem");
    let out = inst
        .command("shmkline")
        .args(base)
        .arg("--webhook-ca-file")
        .arg(&ca)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (got, again) = by_key(&hook);
    assert!(got == want, "every signal over https");
    assert_eq!(again, 0);
    assert_keys_match_bodies(&hook);

    let out = inst.shmkline(&[
        "run",
        "--candles",
        "5",
        "--webhook-ca-file",
        "/nonexistent.pem",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--webhook-ca-file /nonexistent.pem"),
        "{stderr}"
    );
    assert_nothing_left(&inst);
}
