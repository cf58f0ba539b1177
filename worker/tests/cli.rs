//! The worker refuses a missing store and a bad instance name clearly.

use std::process::Command;

#[test]
fn missing_store_exits_3_with_a_hint() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmkline-worker"))
        .args(["--instance", &format!("nothere{}", std::process::id())])
        .output()
        .expect("run worker");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is the coordinator for this instance running?")
    );
}

#[test]
fn path_like_instance_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmkline-worker"))
        .args(["--instance", "a/b"])
        .output()
        .expect("run worker");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid instance name"));
}
