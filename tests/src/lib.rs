//! Harness for cross-process tests: the real `shmkline` and `shmkline-worker`
//! binaries, a unique instance per test, and cleanup that runs even when a
//! test fails (everything is released in `Drop`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::InstanceName;

/// A loopback port free now (for a server a test starts next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Path of a workspace binary (`shmkline`, `shmkline-worker`), built next to
/// the test executable by `cargo test --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace`; `cargo test --workspace` does it)",
        path.display()
    );
    path
}

/// A unique instance name with its own runtime directory. Dropping it removes
/// every shared-memory object the instance may have created and the runtime
/// directory, so a failed test leaves nothing behind.
pub struct TestInstance {
    /// The instance name.
    pub name: InstanceName,
    /// Its private runtime base directory (`SHMKLINE_RUNTIME_DIR`).
    pub runtime_dir: PathBuf,
    /// Its state directory (`SHMKLINE_STATE_DIR`): what survives restarts.
    pub state_dir: PathBuf,
}

impl TestInstance {
    /// A fresh instance; `tag` makes names readable in `/dev/shm` listings.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = InstanceName::new(&format!("t{tag}{}_{n}", std::process::id()))
            .expect("valid test instance name");
        let runtime_dir = std::env::temp_dir().join(format!("shmkline-test-{name}"));
        let _ = std::fs::remove_dir_all(&runtime_dir);
        let state_dir = std::env::temp_dir().join(format!("shmkline-state-{name}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        Self {
            name,
            runtime_dir,
            state_dir,
        }
    }

    /// A command for `binary` with this instance's name and runtime directory.
    pub fn command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(bin(binary));
        cmd.env("SHMKLINE_INSTANCE", self.name.as_str())
            .env("SHMKLINE_RUNTIME_DIR", &self.runtime_dir)
            .env("SHMKLINE_STATE_DIR", &self.state_dir)
            .env("SHMKLINE_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `shmkline <args>` to completion.
    pub fn shmkline(&self, args: &[&str]) -> Output {
        self.command("shmkline")
            .args(args)
            .output()
            .expect("run shmkline")
    }

    /// The ids `traders list` shows, sorted.
    pub fn trader_ids(&self) -> std::collections::BTreeSet<String> {
        let out = self.shmkline(&["traders", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["traders"]
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|t| t["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Shared-memory objects of this instance that exist now.
    pub fn shm_entries(&self) -> Vec<String> {
        let prefix = format!("shmkline-{}", self.name);
        std::fs::read_dir("/dev/shm")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n == &prefix || n.starts_with(&format!("{prefix}-")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts the instance left no segment and no runtime files behind.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.shm_entries(),
            Vec::<String>::new(),
            "shared-memory objects left behind"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&self.runtime_dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            leftovers.is_empty(),
            "runtime files left behind: {leftovers:?}"
        );
    }
}

impl Drop for TestInstance {
    fn drop(&mut self) {
        for entry in self.shm_entries() {
            let _ = nix::sys::mman::shm_unlink(format!("/{entry}").as_str());
        }
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A child process that is killed and reaped when dropped. Its stderr is
/// drained from the start (a chatty child must never block on a full pipe);
/// its stdout is read line by line with [`ChildGuard::wait_for_line`] or
/// captured whole with [`ChildGuard::capture_stdout`].
pub struct ChildGuard {
    child: Option<Child>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

fn drain(
    mut from: impl std::io::Read + Send + 'static,
    into: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    // The thread ends when the pipe closes (the child and its children exited).
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(e) = child.stderr.take() {
            drain(e, std::sync::Arc::clone(&stderr));
        }
        Self {
            child: Some(child),
            stderr,
            stdout: std::sync::Arc::default(),
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already reaped")
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child already reaped").id()
    }

    /// Takes the child's stdout.
    pub fn stdout(&mut self) -> ChildStdout {
        self.child().stdout.take().expect("stdout already taken")
    }

    /// Reads all of stdout in the background; [`ChildGuard::wait_output`] returns it.
    pub fn capture_stdout(&mut self) {
        let out = self.stdout();
        drain(out, std::sync::Arc::clone(&self.stdout));
    }

    /// Reads stdout lines until one satisfies `pred`; panics after `timeout`
    /// or at end of output.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let stdout = self.stdout();
        let (tx, rx) = std::sync::mpsc::channel();
        // The reader thread ends when the child's stdout closes (the child is
        // killed at the latest when this guard drops).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("no matching line from child {} ({e})", self.pid()),
            }
        }
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal child");
    }

    /// What the child wrote to stderr so far (its log), for a failure message.
    pub fn stderr_so_far(&self) -> String {
        let bytes = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&bytes);
        // The end is what explains a failure; a long log is cut at its start.
        let cut = text.len().saturating_sub(20_000);
        let cut = (cut..text.len())
            .find(|&k| text.is_char_boundary(k))
            .unwrap_or(cut);
        text[cut..].to_owned()
    }

    /// Waits for the child to exit (at most `timeout`) and returns its status
    /// and stderr.
    pub fn wait(self, timeout: Duration) -> (ExitStatus, String) {
        let (status, _, stderr) = self.wait_output(timeout);
        (status, stderr)
    }

    /// Waits for the child to exit (at most `timeout`) and returns its status,
    /// the captured stdout and stderr.
    pub fn wait_output(mut self, timeout: Duration) -> (ExitStatus, Vec<u8>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                // Reaped by `try_wait`: nothing left for `Drop` to do.
                self.child = None;
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "child {} did not exit within {timeout:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // Let the drain threads catch the last bytes (bounded: a grandchild
        // could hold the pipes open).
        std::thread::sleep(Duration::from_millis(50));
        let take = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner()))
        };
        let stdout = take(&self.stdout);
        let stderr = String::from_utf8_lossy(&take(&self.stderr)).into_owned();
        (status, stdout, stderr)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Signal lines from a run's stdout, without the fields that legitimately
/// differ between runs (`emitted_at`, `worker`), sorted.
pub fn normalized_signals(stdout: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| {
            let mut v: serde_json::Value =
                serde_json::from_str(line).expect("every stdout line is a JSON signal");
            for field in [
                "trader",
                "symbol",
                "interval",
                "open_time",
                "close",
                "emitted_at",
            ] {
                assert!(v.get(field).is_some(), "signal line lacks {field}: {line}");
            }
            let obj = v.as_object_mut().expect("a JSON object");
            obj.remove("emitted_at");
            obj.remove("worker");
            v.to_string()
        })
        .collect();
    lines.sort();
    lines
}

/// A signal's key, `trader|symbol|interval|open_time`, from its JSON line
/// (a webhook's `Idempotency-Key`, a NATS `Nats-Msg-Id`).
pub fn signal_key(v: &serde_json::Value) -> String {
    format!(
        "{}|{}|{}|{}",
        v["trader"].as_str().expect("trader"),
        v["symbol"].as_str().expect("symbol"),
        v["interval"].as_str().expect("interval"),
        v["open_time"]
    )
}

/// Pids of live (not zombie) processes whose command line mentions `needle`.
pub fn live_processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

impl TestInstance {
    /// Starts `shmkline ARGS` of this instance, lets it run for `after`
    /// (it must still be running then), SIGKILLs it and reaps it.
    pub fn run_and_sigkill(&self, args: &[&str], after: Duration) {
        let mut cmd = self.command("shmkline");
        cmd.args(args);
        let run = ChildGuard::spawn(&mut cmd);
        std::thread::sleep(after);
        assert!(
            process_alive(run.pid()),
            "`shmkline {args:?}` ended before its kill at {after:?}"
        );
        run.signal(Signal::SIGKILL);
        let (status, _, _) = run.wait_output(Duration::from_secs(30));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "killed"
        );
    }
}

/// Writes `n` traders that fire on every 1m candle of every symbol
/// (`close > 0`), ids `<prefix>000`..., into `dir/traders.json`.
pub fn firing_traders(dir: &Path, n: usize, prefix: &str) -> PathBuf {
    let set: Vec<serde_json::Value> = (0..n)
        .map(|k| {
            serde_json::json!({"id": format!("{prefix}{k:03}"), "symbols": "*", "interval": "1m",
                "rule": "close > 0"})
        })
        .collect();
    let path = dir.join("traders.json");
    std::fs::write(&path, serde_json::Value::Array(set).to_string()).expect("write traders");
    path
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl TestInstance {
    /// `shmkline backtest ARGS`'s signals, normalised; panics with its stderr
    /// if it fails.
    pub fn backtest_signals(&self, args: &[&str]) -> Vec<String> {
        let out = self.shmkline(&[&["backtest"], args].concat());
        assert!(
            out.status.success(),
            "backtest {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        normalized_signals(&out.stdout)
    }

    /// `shmkline status --json` of this instance, once it answers (or panics after `timeout`).
    pub fn status_when(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.shmkline(&["status", "--json"]);
            if out.status.success() {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("status JSON");
                if pred(&v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "status never satisfied the condition; last: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The worker pids `status` lists.
    pub fn worker_pids(status: &serde_json::Value) -> Vec<u32> {
        status["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter_map(|w| w["pid"].as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A file of `tests/data/` (real Binance candles, kept in the repository):
/// its path. A missing one fails the test (nothing is skipped).
pub fn data_file(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: the test data is part of the repository (tests/data/)",
        path.display()
    );
    path
}
