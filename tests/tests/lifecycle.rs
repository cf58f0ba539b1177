//! One coordinator per instance, stale segments reclaimed, nothing left behind.

use std::time::Duration;

use harness::{ChildGuard, TestInstance};
use nix::sys::signal::Signal;

const STARTUP: Duration = Duration::from_secs(20);

fn hold(inst: &TestInstance) -> ChildGuard {
    ChildGuard::spawn(inst.command("shmkline").args([
        "store",
        "hold",
        "--max-symbols",
        "4",
        "--intervals",
        "1m,1h",
        "--candles-per-series",
        "16",
        "--symbols",
        "BTCUSDT,ETHUSDT",
    ]))
}

fn generation(inst: &TestInstance) -> u64 {
    let out = inst.shmkline(&["store", "inspect", "--json"]);
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    info["generation"].as_u64().expect("generation")
}

#[test]
fn second_coordinator_is_refused_with_the_live_pid() {
    let inst = TestInstance::new("lock");
    let mut first = hold(&inst);
    first.wait_for_line(STARTUP, |l| l.contains("\"ready\":true"));
    let second = inst.shmkline(&["store", "hold", "--seconds", "5"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("already running: coordinator pid {}", first.pid())),
        "message names the live pid: {stderr}"
    );
    // The refused coordinator touched nothing: the first one's store is intact.
    assert_eq!(inst.shm_entries().len(), 1);
    generation(&inst);

    first.signal(Signal::SIGTERM);
    let (status, stderr) = first.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "orderly exit on SIGTERM: {status:?} {stderr}"
    );
    inst.assert_clean();
}

#[test]
fn segment_of_a_sigkilled_coordinator_is_reclaimed() {
    let inst = TestInstance::new("reclaim");
    let mut first = hold(&inst);
    first.wait_for_line(STARTUP, |l| l.contains("\"ready\":true"));
    let old = generation(&inst);
    first.signal(Signal::SIGKILL);
    let (status, _) = first.wait(Duration::from_secs(10));
    assert!(!status.success());
    assert_eq!(
        inst.shm_entries().len(),
        1,
        "a SIGKILLed coordinator leaves its segment behind"
    );

    let inspect = inst.shmkline(&["store", "inspect", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("JSON");
    assert_eq!(
        info["writer_running"], false,
        "the stale segment's writer is gone"
    );

    let mut second = hold(&inst);
    second.wait_for_line(STARTUP, |l| l.contains("\"ready\":true"));
    let new = generation(&inst);
    assert_ne!(new, old, "a fresh segment with a new generation");
    second.signal(Signal::SIGINT);
    let (status, stderr) = second.wait(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("reclaiming stale segment"),
        "the log says so: {stderr}"
    );
    assert!(
        stderr.contains("removing the runtime directory left by a previous run"),
        "{stderr}"
    );
    inst.assert_clean();
}

#[test]
fn inspect_of_an_instance_that_is_not_running_exits_3() {
    let inst = TestInstance::new("absent");
    let out = inst.shmkline(&["store", "inspect"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is the coordinator for this instance running?"),
        "{stderr}"
    );
    inst.assert_clean();
}
