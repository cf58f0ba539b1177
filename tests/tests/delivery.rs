//! Where signals are delivered (issue 15, in part): a closed stdout ends the
//! run in order, as it ends any Unix tool.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{TestInstance, live_processes_mentioning};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Runs `shmkline <args> | <reader>` under bash with `pipefail` (the exit
/// status is shmkline's when it fails), in its own process group, killed
/// whole if it outlives `limit`. Returns (exit code, stdout, stderr, time).
fn pipeline(
    inst: &TestInstance,
    args: &str,
    reader: &str,
    limit: Duration,
) -> (Option<i32>, String, String, Duration) {
    use std::os::unix::process::CommandExt;
    let probe = inst.command("shmkline");
    let mut sh = Command::new("bash");
    sh.arg("-c")
        .arg(format!("set -o pipefail; \"$0\" {args} | {reader}"))
        .arg(probe.get_program())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in probe.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    let started = Instant::now();
    let mut child = sh.spawn().expect("bash");
    let group = Pid::from_raw(child.id() as i32);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait();
            panic!("`shmkline {args} | {reader}` still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let out = child.wait_with_output().expect("output");
    (
        status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    )
}

fn assert_nothing_left(inst: &TestInstance) {
    let left = live_processes_mentioning(&format!("--instance {} ", inst.name));
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
    inst.assert_clean();
}

/// `shmkline run | head -1`: the first signal is printed, `head` exits, the
/// next write fails (EPIPE) and the run stops in order and exits in error,
/// saying why. Before, it ran on, warning for every signal it could not
/// print.
#[test]
fn run_into_head_ends_when_head_exits() {
    let inst = TestInstance::new("head");
    let (code, stdout, stderr, took) = pipeline(
        &inst,
        "run --symbols 4 --rate 200",
        "head -1",
        Duration::from_secs(30),
    );
    eprintln!("`run | head -1` took {took:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let first: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a signal line");
    assert!(first["trader"].is_string(), "{first}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("stdout was closed (its reader went away)"),
        "{stderr}"
    );
    assert!(stderr.contains("not written to stdout"), "{stderr}");
    assert_nothing_left(&inst);
}

/// The same with a reader that exits before any signal and traders that
/// never fire: nothing is ever written, and the closed pipe is still seen.
#[test]
fn a_reader_gone_before_any_signal_ends_a_quiet_run() {
    let inst = TestInstance::new("quietpipe");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = dir.path().join("never.json");
    std::fs::write(
        &traders,
        r#"[{"id":"never","symbols":"*","interval":"1m","rule":"close < 0"}]"#,
    )
    .expect("write traders");
    let args = format!("run --symbols 2 --rate 20 --traders {}", traders.display());
    let (code, stdout, stderr, took) = pipeline(&inst, &args, "true", Duration::from_secs(30));
    eprintln!("`run | true` took {took:?}");
    assert!(stdout.is_empty());
    // Stopped in order, but not done: exit 1, as the run did not finish.
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("0 of 0 signals were not written to stdout"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stdout was closed (its reader went away)"),
        "{stderr}"
    );
    assert_nothing_left(&inst);
}
