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

/// `shmkline bench|chaos|soak` are `shmkline-tools`' commands: without it
/// next to `shmkline`, each says how to build it, and `--help` still lists
/// them.
#[test]
fn a_tool_command_without_the_tools_binary_says_how_to_build_it() {
    let dir = runtime("tools");
    std::fs::create_dir_all(&dir).expect("a directory");
    let alone = dir.join("shmkline");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_shmkline"), &alone).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_shmkline"), &alone).expect("a copy of shmkline");
    }
    for words in [
        &["bench", "store"][..],
        &["--instance", "x", "chaos", "--kills", "1"],
        &["soak", "--help"],
        &["help", "bench"],
    ] {
        let out = Command::new(&alone)
            .env("SHMKLINE_RUNTIME_DIR", &dir)
            .args(words)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{words:?}: {stderr}");
        assert!(
            stderr.contains("shmkline-tools")
                && stderr.contains("cargo build --release -p shmkline-tools"),
            "{words:?}: {stderr}"
        );
    }
    let help = Command::new(&alone).arg("--help").output().expect("run");
    let listed = String::from_utf8_lossy(&help.stdout);
    for tool in ["bench", "chaos", "soak"] {
        assert!(
            listed.lines().any(|l| l.trim_start().starts_with(tool)),
            "{tool} listed: {listed}"
        );
    }
    assert!(!listed.contains("bench-child"), "hidden: {listed}");
    let _ = std::fs::remove_dir_all(&dir);
}
