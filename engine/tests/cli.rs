//! The command line refuses bad input with a message that names it, and
//! leaves nothing behind.

use std::process::Command;

fn shmkline(runtime: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmkline"));
    cmd.env("SHMKLINE_RUNTIME_DIR", runtime)
        .env_remove("SHMKLINE_INSTANCE");
    cmd
}

fn runtime(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shmkline-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn bad_instance_name_is_a_usage_error() {
    let rt = runtime("name");
    let out = shmkline(&rt)
        .args(["--instance", "../etc", "store", "inspect"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid instance name \"../etc\""));
}

#[test]
fn bad_environment_instance_is_reported() {
    let rt = runtime("env");
    let out = shmkline(&rt)
        .env("SHMKLINE_INSTANCE", "a b")
        .args(["store", "inspect"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHMKLINE_INSTANCE: invalid instance name")
    );
}

#[test]
fn unknown_interval_is_a_usage_error() {
    let rt = runtime("interval");
    let out = shmkline(&rt)
        .args(["store", "hold", "--intervals", "1m,2m"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown interval \"2m\""));
}

#[test]
fn impossible_capacity_is_refused_before_anything_is_created() {
    let rt = runtime("capacity");
    let instance = format!("cli{}", std::process::id());
    let out = shmkline(&rt)
        .args([
            "--instance",
            &instance,
            "store",
            "hold",
            "--max-symbols",
            "0",
            "--seconds",
            "0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbol capacity 0 is out of range"));
    assert!(!std::path::Path::new(&format!("/dev/shm/shmkline-{instance}")).exists());
    assert!(!rt.join(&instance).exists(), "runtime directory removed");
    assert!(
        !rt.join(format!("{instance}.lock")).exists(),
        "lock file removed"
    );
    let _ = std::fs::remove_dir_all(&rt);
}
