//! `shmkline-tools` reads the words `shmkline` hands it as `shmkline` would:
//! its usage names the command typed, and a bad flag is a usage error.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `shmkline-tools` run as `shmkline` runs it: its own path, `shmkline` as
/// `argv[0]`.
fn as_shmkline() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmkline-tools"));
    cmd.arg0("shmkline").env_remove("SHMKLINE_INSTANCE");
    cmd
}

#[test]
fn a_bad_flag_is_a_usage_error_in_shmkline_s_words() {
    let out = as_shmkline()
        .args(["bench", "store", "--bogus"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
    assert!(stderr.contains("Usage: shmkline bench store"), "{stderr}");
}

#[test]
fn its_help_lists_the_tools_and_hides_the_benchmark_children() {
    let out = as_shmkline().arg("--help").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for tool in ["chaos", "soak", "bench"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(tool)),
            "{tool}: {help}"
        );
    }
    assert!(!help.contains("bench-child"), "{help}");
}
