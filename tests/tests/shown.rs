//! What the operator is shown: a webhook URL's credentials and token never
//! appear in a log line, `status`, `/status`, `/metrics`, `config show` or
//! an exit message (yet the receiver gets them); the signal counters count
//! signals that went only to sinks; an exit message says what the next
//! start will do.

use std::io::{Read, Write};
use std::time::Duration;

use harness::{ChildGuard, TestInstance, live_processes_mentioning};
use nix::sys::signal::Signal;
use testkit::webhook::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(60);
/// Planted in the webhook URL: its password and its token.
const PASSWORD: &str = "hunter2pw";
const TOKEN: &str = "s3cr3ttoken";

fn assert_nothing_left(inst: &TestInstance) {
    let left = live_processes_mentioning(&format!("--instance {} ", inst.name));
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
    inst.assert_clean();
}

/// A GET on loopback: the whole answer, head and body.
fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

/// Fails naming `what` if it shows a planted secret.
fn assert_hidden(what: &str, text: &str) {
    for secret in [PASSWORD, TOKEN] {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret}:\n{text}"
        );
    }
}

/// A webhook URL with a password and a token, a receiver failing for a
/// stretch (retry WARNs), the metrics endpoint, a run stopped while it
/// fails again (the final error names the sink): no output shows either
/// secret, the redacted form shows where it stood, and the receiver got
/// both (the token in the URL, the password as Basic authorization).
#[test]
fn a_webhook_urls_secrets_are_used_and_never_shown() {
    let inst = TestInstance::new("secret");
    let hook = Receiver::start().expect("receiver");
    let url = hook
        .base
        .replace("http://", &format!("http://user:{PASSWORD}@"));
    let sink = format!("webhook:{url}/in?token={TOKEN}");
    let flags = [
        "--rate",
        "20",
        "--symbols",
        "2",
        "--sink",
        &sink,
        "--metrics",
        "127.0.0.1:0",
        "--drain-timeout",
        "1000",
    ];

    // config show: with the sink on the command line and in a file.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("sink = [\"{sink}\"]\n")).expect("config");
    for args in [
        vec!["config", "show", "--sink", &sink],
        vec![
            "config",
            "show",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    ] {
        let out = inst.shmkline(&args);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shown}");
        assert_hidden("config show", &shown);
        assert!(
            shown.contains("user:***@127.0.0.1") && shown.contains("/in?…"),
            "{shown}"
        );
    }

    hook.outage(Some(Reply::Status(503, Some(0))));
    let mut cmd = inst.command("shmkline");
    cmd.arg("run").args(flags);
    let run = ChildGuard::spawn(&mut cmd);
    inst.status_when(WAIT, |s| s["sinks"][0]["retries"].as_u64() >= Some(2));
    hook.outage(None);
    let status = inst.status_when(WAIT, |s| s["sinks"][0]["delivered"].as_u64() >= Some(3));
    let json = status.to_string();
    assert_hidden("status --json", &json);
    assert!(json.contains("user:***@127.0.0.1"), "{json}");
    let text = inst.shmkline(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert_hidden("status", &text);
    assert!(
        text.lines()
            .any(|l| l.starts_with("sink") && l.contains("webhook:http://user:***@")),
        "text status names the sink: {text}"
    );
    let metrics = status["metrics"].as_str().expect("the metrics URL");
    assert_hidden("/metrics", &http_get(metrics));
    let served = http_get(&metrics.replace("/metrics", "/status"));
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert_hidden("/status", &served);

    // The receiver had the secrets it needs.
    let got = hook.requests();
    let used = got
        .iter()
        .find(|r| r.status == Some(200))
        .expect("a delivery");
    assert_eq!(used.target, format!("/in?token={TOKEN}"));
    // "user:hunter2pw" in Base64.
    assert_eq!(
        used.authorization.as_deref(),
        Some("Basic dXNlcjpodW50ZXIycHc=")
    );

    // Failing again as it stops: the exit error names the sink, hidden.
    hook.outage(Some(Reply::Status(503, Some(0))));
    let retries = status["sinks"][0]["retries"].as_u64().unwrap_or(0);
    inst.status_when(WAIT, |s| {
        s["sinks"][0]["retries"].as_u64() > Some(retries + 1)
    });
    run.signal(Signal::SIGTERM);
    let (exit, stderr) = run.wait(WAIT);
    assert!(!exit.success(), "{stderr}");
    assert!(
        stderr.contains("webhook delivery failed: retrying")
            && stderr.contains("not confirmed")
            && stderr.contains("user:***@"),
        "{stderr}"
    );
    assert_hidden("the log", &stderr);
    assert_nothing_left(&inst);
}

/// `--metrics` on an address beyond loopback is warned about: `/status`
/// has no authentication.
#[test]
fn metrics_beyond_loopback_are_warned_about() {
    let inst = TestInstance::new("exposed");
    let out = inst.shmkline(&["run", "--candles", "20", "--metrics", "0.0.0.0:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("listens beyond this host") && stderr.contains("without authentication"),
        "{stderr}"
    );
    let out = inst.shmkline(&["run", "--candles", "20", "--metrics", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("listens beyond this host"), "{stderr}");
    assert_nothing_left(&inst);
}

/// Signals that go only to a file: the run's summary and `status` (JSON
/// and text, which names the sink) count them; they used to read 0.
#[test]
fn signals_into_sinks_only_are_counted() {
    let inst = TestInstance::new("counted");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("signals.jsonl");
    let sink = format!("file:{}", file.display());
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--candles",
        "200",
        "--rate",
        "2000",
        "--stay",
        "--sink",
        &sink,
    ]);
    let run = ChildGuard::spawn(&mut cmd);
    let status = inst.status_when(WAIT, |s| {
        s["feed"]["evaluated"] == true && s["sinks"][0]["queued"] == 0
    });
    let lines = std::fs::read_to_string(&file)
        .expect("the file")
        .lines()
        .count() as u64;
    assert!(lines > 10, "{lines}");
    assert_eq!(
        status["signals"]["emitted"].as_u64(),
        Some(lines),
        "{status}"
    );
    assert_eq!(status["sinks"][0]["delivered"].as_u64(), Some(lines));
    let text = inst.shmkline(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(&format!("signals  {lines} emitted")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("sink")
            && l.contains(&sink)
            && l.contains(&format!("{lines} delivered"))),
        "{text}"
    );
    run.signal(Signal::SIGTERM);
    let (exit, stderr) = run.wait(WAIT);
    assert!(exit.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("signals={lines}")),
        "the summary counts them: {stderr}"
    );
    assert_nothing_left(&inst);
}

/// A receiver down at the end of a run: the exit message says what the
/// next start will do. After an earlier run had every signal confirmed, a
/// `--signals-from all` run's unconfirmed signals are not sent again by a
/// start that resumes, and it says so (it used to promise them); without an
/// earlier run, it says the next start delivers them, and it does.
#[test]
fn an_exit_message_says_what_the_next_start_does() {
    let inst = TestInstance::new("nextstart");
    let hook = Receiver::start().expect("receiver");
    let sink = format!("webhook:{}/in", hook.base);
    let base = ["run", "--candles", "100", "--rate", "5000", "--sink", &sink];
    let down = ["--drain-timeout", "1000"];

    // Down with nothing confirmed before: the next start delivers them.
    hook.outage(Some(Reply::Status(503, Some(0))));
    let out = inst
        .command("shmkline")
        .args(base)
        .args(down)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the next start delivers them"), "{stderr}");
    hook.outage(None);
    let out = inst.command("shmkline").args(base).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delivered = hook.accepted_lines().len();
    assert!(delivered > 5, "the next start delivered {delivered}");

    // Everything confirmed; now --signals-from all with the receiver down.
    hook.outage(Some(Reply::Status(503, Some(0))));
    let out = inst
        .command("shmkline")
        .args(base)
        .args(down)
        .args(["--signals-from", "all"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the next start does not send them again")
            && !stderr.contains("the next start delivers them"),
        "{stderr}"
    );
    hook.outage(None);
    let before = hook.accepted_lines().len();
    let out = inst.command("shmkline").args(base).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        hook.accepted_lines().len(),
        before,
        "the next start sent them again"
    );
    assert_nothing_left(&inst);
}
