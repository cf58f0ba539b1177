//! Files a user names that are not regular files: devices (`/dev/zero`,
//! `/dev/urandom`), FIFOs and pipes, given as trader files, replays, config
//! files, or left in the state directory. Each is refused with an error
//! naming it, or read once through its bound; none holds a command (each
//! here must end within [`QUICK`], where they used to hang or grow without
//! end) and none leaves anything in `/dev/shm`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{ChildGuard, TestInstance};

/// Every refusal here comes at once; the pipe waits are 10 s at most.
const QUICK: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(60);

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// Runs `cmd` to its end within [`QUICK`]: its exit and stderr.
fn quick(cmd: &mut Command) -> (bool, String, String) {
    let mut child = ChildGuard::spawn(cmd);
    child.capture_stdout();
    let (exit, stdout, stderr) = child.wait_output(QUICK);
    (
        exit.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
    )
}

/// `/dev/zero` and a FIFO with no writer as `--traders`, and as `traders
/// add` to a running instance: refused naming the file, at once (the
/// coordinator used to grow to gigabytes reading `/dev/zero`; a FIFO hung
/// it in `open`); the running instance keeps its traders. A pipe
/// (`<(...)`) is a trader file like any other.
#[test]
fn devices_and_fifos_as_trader_files_are_refused_and_a_pipe_is_read() {
    let inst = TestInstance::new("in-traders");
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("traders.fifo");
    mkfifo(&fifo);
    let (ok, _, stderr) =
        quick(
            inst.command("shmkline")
                .args(["run", "--candles", "5", "--traders", "/dev/zero"]),
        );
    assert!(!ok);
    assert!(
        stderr.contains("trader file /dev/zero: a device, not a file"),
        "{stderr}"
    );
    inst.assert_clean();

    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--rate", "20", "--symbols", "2"]);
    let mut child = ChildGuard::spawn(&mut cmd);
    child.capture_stdout();
    inst.status_when(WAIT, |s| s["feed"]["batches"].as_u64() >= Some(2));
    let before = inst.trader_ids();
    let (ok, _, stderr) = quick(
        inst.command("shmkline")
            .args(["traders", "add", "/dev/zero"]),
    );
    assert!(!ok);
    assert!(stderr.contains("a device, not a file"), "{stderr}");
    let (ok, _, stderr) = quick(inst.command("shmkline").args(["traders", "add"]).arg(&fifo));
    assert!(!ok);
    assert!(
        stderr.contains(&fifo.display().to_string()) && stderr.contains("sent nothing for 10 s"),
        "{stderr}"
    );
    assert_eq!(inst.trader_ids(), before);
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let (exit, _, stderr) = child.wait_output(WAIT);
    assert!(exit.success(), "{stderr}");
    inst.assert_clean();

    // A shell's process substitution: a pipe, read whole.
    let shmkline = inst.command("shmkline");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"exec "$0" backtest --candles 100 --traders <(printf '%s' '[{"id":"p","symbols":"*","interval":"1m","rule":"close > 0"}]')"#)
        .arg(shmkline.get_program());
    let (ok, stdout, stderr) = quick(&mut cmd);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(r#""trader":"p""#), "{stdout}");
}

/// `--feed replay:` of a device or a FIFO: refused before the instance
/// starts (the coordinator's loop used to spin on `/dev/zero` ignoring
/// SIGTERM, or wait on a FIFO until its workers were blamed as stalled).
#[test]
fn a_replay_of_a_device_or_fifo_is_refused_before_anything_starts() {
    let inst = TestInstance::new("in-replay");
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("BTCUSDT-1m-2024-01.csv");
    mkfifo(&fifo);
    for (path, is) in [
        (Path::new("/dev/zero"), "a device"),
        (Path::new("/dev/urandom"), "a device"),
        (fifo.as_path(), "a FIFO or socket"),
    ] {
        let feed = format!("replay:{}", path.display());
        let (ok, _, stderr) = quick(inst.command("shmkline").args([
            "run",
            "--feed",
            &feed,
            "--symbol",
            "BTCUSDT",
            "--interval",
            "1m",
        ]));
        assert!(!ok, "{feed}");
        assert!(
            stderr.contains(&format!(
                "replay file {}: {is}, not a regular file",
                path.display()
            )) && stderr.contains("write the candles to a file first"),
            "{stderr}"
        );
        inst.assert_clean();
    }
}

/// A FIFO where the state directory keeps the trader set or a sink's
/// position: the start is refused naming it (it used to block in `open`
/// with signals ignored until SIGKILL).
#[test]
fn a_fifo_in_the_state_directory_is_refused_not_waited_on() {
    let inst = TestInstance::new("in-state");
    std::fs::create_dir_all(&inst.state_dir).expect("state dir");
    std::fs::set_permissions(
        &inst.state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let traders = inst.state_dir.join("traders.json");
    mkfifo(&traders);
    let (ok, _, stderr) = quick(inst.command("shmkline").args(["run", "--candles", "5"]));
    assert!(!ok);
    assert!(
        stderr.contains("traders.json") && stderr.contains("a FIFO or socket, not a regular file"),
        "{stderr}"
    );
    std::fs::remove_file(&traders).expect("rm");

    let spec = "webhook:http://127.0.0.1:9/in";
    let marks = inst
        .state_dir
        .join(format!("sink-{:016x}.json", protocol::rule::fnv1a(spec)));
    mkfifo(&marks);
    let (ok, _, stderr) = quick(
        inst.command("shmkline")
            .args(["run", "--candles", "5", "--sink"])
            .arg(spec),
    );
    assert!(!ok);
    assert!(
        stderr.contains(&marks.display().to_string())
            && stderr.contains("a FIFO or socket, not a regular file"),
        "{stderr}"
    );
    inst.assert_clean();
}

/// `config show --config` of a pipe or a FIFO reads it once and shows what
/// it says (it used to open the file twice: the second read of `<(...)`
/// was empty, so `workers = 3` showed as the default 2, and a FIFO's
/// second open blocked for ever).
#[test]
fn config_show_reads_a_pipe_or_fifo_config_once() {
    let inst = TestInstance::new("in-config");
    let shmkline = inst.command("shmkline");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"exec "$0" config show --config <(printf 'workers = 3\n')"#)
        .arg(shmkline.get_program());
    let (ok, stdout, stderr) = quick(&mut cmd);
    assert!(ok, "{stderr}");
    assert!(stdout.lines().any(|l| l == "workers = 3"), "{stdout}");

    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("config.fifo");
    mkfifo(&fifo);
    let path = fifo.clone();
    let writer = std::thread::spawn(move || {
        // Blocks until the command opens it; written once.
        std::fs::write(&path, "workers = 5\n").expect("write the fifo");
    });
    let (ok, stdout, stderr) = quick(
        inst.command("shmkline")
            .args(["config", "show", "--config"])
            .arg(&fifo),
    );
    writer.join().expect("writer");
    assert!(ok, "{stderr}");
    assert!(stdout.lines().any(|l| l == "workers = 5"), "{stdout}");

    let (ok, _, stderr) =
        quick(
            inst.command("shmkline")
                .args(["config", "show", "--config", "/dev/urandom"]),
        );
    assert!(!ok);
    assert!(
        stderr.contains("config file /dev/urandom: a device, not a file"),
        "{stderr}"
    );
}
