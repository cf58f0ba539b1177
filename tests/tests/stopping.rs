//! Stopping while an output holds back: a webhook answering 429 with a
//! long `Retry-After`, a stdout read at 50 lines a second, a webhook that
//! fails a quarter of its requests but keeps delivering. A stop the
//! operator asks for ends within `--shutdown-timeout` + `--drain-timeout`
//! of the signal and a second signal ends it at once; a finite run's sink
//! is waited for while it delivers and given up after `--drain-timeout`
//! without progress. Each test shows the output was holding back (the
//! receiver's answers, lines still unread) and that nothing is left in
//! `/dev/shm`.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::{ChildGuard, TestInstance, firing_traders, live_processes_mentioning};
use nix::sys::signal::Signal;
use testkit::webhook::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(60);
/// What a stop may take beyond its timeouts on a loaded machine.
const SLACK: Duration = Duration::from_secs(4);

fn assert_nothing_left(inst: &TestInstance) {
    let left = live_processes_mentioning(&format!("--instance {} ", inst.name));
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
    inst.assert_clean();
}

/// Requests the receiver answered 429.
fn rate_limited(hook: &Receiver) -> usize {
    hook.requests()
        .iter()
        .filter(|r| r.status == Some(429))
        .count()
}

/// A finite run into a webhook answering every request 429 with
/// `Retry-After: 40`: the run ends `--drain-timeout` (3 s) after its feed,
/// not 40 s later (the retry's pause read its deadline once, before
/// teardown set it), and says what it could not deliver.
#[test]
fn a_long_retry_after_does_not_hold_a_finite_run_past_its_drain_time() {
    let inst = TestInstance::new("stop429");
    let hook = Receiver::start().expect("receiver");
    hook.outage(Some(Reply::Status(429, Some(40))));
    let sink = format!("webhook:{}/in", hook.base);
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--candles", "100", "--rate", "5000", "--sink", &sink])
        .args(["--drain-timeout", "3000"]);
    let started = Instant::now();
    let run = ChildGuard::spawn(&mut cmd);
    let (exit, stderr) = run.wait(WAIT);
    let took = started.elapsed();
    assert!(!exit.success(), "{stderr}");
    assert!(
        stderr.contains("not confirmed") && stderr.contains("--drain-timeout"),
        "{stderr}"
    );
    assert!(rate_limited(&hook) >= 1, "the receiver never answered 429");
    assert!(
        took < Duration::from_secs(3) + Duration::from_secs(8) + SLACK,
        "the run took {took:?}: the 40 s Retry-After held it"
    );
    assert_nothing_left(&inst);
}

/// A running instance whose webhook answers 429 with `Retry-After: 120`:
/// SIGTERM starts the stop, which waits for the webhook (the process is
/// still there a second later, within its 60 s drain time), and a SIGINT
/// then ends it at once.
#[test]
fn a_second_signal_ends_a_stop_that_waits_for_a_webhook() {
    let inst = TestInstance::new("stop2nd");
    let hook = Receiver::start().expect("receiver");
    hook.outage(Some(Reply::Status(429, Some(120))));
    let sink = format!("webhook:{}/in", hook.base);
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--rate", "50", "--symbols", "4", "--sink", &sink])
        .args(["--drain-timeout", "60000"]);
    let run = ChildGuard::spawn(&mut cmd);
    inst.status_when(WAIT, |s| s["sinks"][0]["retries"].as_u64() >= Some(1));
    assert!(rate_limited(&hook) >= 1);
    run.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        harness::process_alive(run.pid()),
        "the stop did not wait for the webhook at all"
    );
    let second = Instant::now();
    run.signal(Signal::SIGINT);
    let (exit, stderr) = run.wait(WAIT);
    assert!(
        second.elapsed() < SLACK,
        "the second signal did not end the wait: {:?}",
        second.elapsed()
    );
    assert!(
        !exit.success(),
        "undelivered signals must fail the run: {stderr}"
    );
    assert!(stderr.contains("a second signal"), "{stderr}");
    assert_nothing_left(&inst);
}

/// Spawns a run whose stdout the test reads at 50 lines a second: the
/// reader's line count.
fn slow_reader(run: &mut ChildGuard) -> Arc<AtomicUsize> {
    let stdout = run.stdout();
    let read = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&read);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() {
                break;
            }
            count.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    read
}

/// A stdout read at 50 lines a second, far behind 40 firing traders:
/// SIGTERM ends the run within `--shutdown-timeout` + `--drain-timeout`
/// (SIGTERM used to do nothing for minutes while the queued lines
/// trickled out); two SIGINTs end it at once.
#[test]
fn a_slow_stdout_reader_does_not_hold_a_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = firing_traders(dir.path(), 40, "fire");
    for signals in [&[Signal::SIGTERM][..], &[Signal::SIGINT, Signal::SIGINT]] {
        let inst = TestInstance::new("stopslow");
        let mut cmd = inst.command("shmkline");
        cmd.args(["run", "--rate", "200", "--symbols", "4", "--traders"])
            .arg(&traders)
            .args(["--shutdown-timeout", "1000", "--drain-timeout", "3000"]);
        let mut run = ChildGuard::spawn(&mut cmd);
        let read = slow_reader(&mut run);
        // Far behind: thousands of signals emitted, a few dozen read.
        let status = inst.status_when(WAIT, |s| s["signals"]["emitted"].as_u64() >= Some(5_000));
        let behind = status["signals"]["emitted"].as_u64().unwrap_or(0) as usize
            - read.load(Ordering::Relaxed);
        assert!(behind > 4_000, "the reader was not behind: {behind}");
        let stopped = Instant::now();
        for (k, sig) in signals.iter().enumerate() {
            if k > 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            run.signal(*sig);
        }
        let (_, stderr) = run.wait(WAIT);
        let took = stopped.elapsed();
        let bound = if signals.len() == 2 {
            Duration::from_millis(300) + SLACK
        } else {
            Duration::from_secs(1 + 3) + SLACK
        };
        assert!(
            took < bound,
            "{signals:?}: the stop took {took:?} (bound {bound:?}): {stderr}"
        );
        assert!(
            read.load(Ordering::Relaxed) < 5_000,
            "the reader caught up: nothing was held back"
        );
        assert_nothing_left(&inst);
    }
}

/// A finite run into a webhook that fails a quarter of its requests (500,
/// 429 with `Retry-After: 0`, a dropped connection) and answers slowly:
/// its queue takes far longer than `--drain-timeout` (2 s) to deliver after
/// the feed ends, but it keeps delivering, so it is waited for: exit 0,
/// every signal delivered once by key (the drain used to give up after
/// 2 s with hundreds unconfirmed).
#[test]
fn a_sink_that_keeps_delivering_is_waited_for_past_its_drain_time() {
    let inst = TestInstance::new("stopslowhook");
    let hook = Receiver::start().expect("receiver");
    hook.delay(Duration::from_millis(5));
    let fails = [
        Reply::Status(500, None),
        Reply::Status(429, Some(0)),
        Reply::Drop,
    ];
    hook.script((0..2_000).map(|k| {
        if k % 4 == 3 {
            fails[(k / 4) % 3]
        } else {
            Reply::Status(200, None)
        }
    }));
    let sink = format!("webhook:{}/in", hook.base);
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = firing_traders(dir.path(), 2, "fire");
    let traders = traders.to_string_lossy();
    let args = ["--candles", "150", "--symbols", "2", "--traders", &traders];
    let want = inst.backtest_signals(&args);
    assert_eq!(want.len(), 600);
    let mut cmd = inst.command("shmkline");
    cmd.arg("run")
        .args(args)
        .args(["--rate", "5000", "--sink", &sink, "--drain-timeout", "2000"]);
    let run = ChildGuard::spawn(&mut cmd);
    let (exit, stderr) = run.wait(Duration::from_secs(180));
    assert!(
        exit.success(),
        "gave up on a sink that was delivering: {stderr}"
    );
    let failed = hook
        .requests()
        .iter()
        .filter(|r| r.status.is_none_or(|s| s >= 300))
        .count();
    assert!(
        failed * 5 >= hook.count(),
        "a quarter failed: {failed} of {}",
        hook.count()
    );
    let mut got: Vec<String> = hook.accepted_lines();
    got.sort();
    got.dedup();
    let got = harness::normalized_signals((got.join("\n") + "\n").as_bytes());
    assert_eq!(got, want, "every signal delivered");
    // The feed (150 candles at 5,000 a second) is over within a second of
    // the first signal: deliveries spread over 4 s or more outlasted the
    // 2 s drain time.
    let log = hook.requests();
    let span = log[log.len() - 1].at - log[0].at;
    assert!(
        span > Duration::from_secs(4),
        "the deliveries took {span:?}: the drain never outlasted --drain-timeout"
    );
    assert_nothing_left(&inst);
}
