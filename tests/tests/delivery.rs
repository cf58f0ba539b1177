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

/// `--sink file:PATH` across ten SIGKILLs of the coordinator: a paced
/// replay of the real BTCUSDT week is killed at ten moments and started
/// again with the same command each time; the last run ends in order. The
/// file then equals the backtest exactly: nothing lost, nothing twice, no
/// torn line.
#[test]
fn a_file_sink_is_exactly_once_across_ten_sigkills() {
    let data = harness::data_file("BTCUSDT-1m-2021-02-19_25.csv");
    let inst = TestInstance::new("fsink");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("signals.jsonl");
    let feed = format!("replay:{}", data.display());
    let sink = format!("file:{}", file.display());
    let args = ["run", "--feed", &feed, "--rate", "2000", "--sink", &sink];
    let lines = || {
        std::fs::read_to_string(&file)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    // Deterministic "random" moments (a fixed-seed LCG): 150 ms to 2.5 s in.
    let mut seed: u64 = 0x5eed_5eed;
    let mut mid_stream = 0;
    for kill in 0..10 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let after = Duration::from_millis(150 + (seed >> 33) % 2350);
        let before = lines();
        inst.run_and_sigkill(&args, after);
        let now = lines();
        mid_stream += usize::from(now > before);
        eprintln!("kill {kill} at {after:?}: the file holds {now} lines");
    }
    let mut cmd = inst.command("shmkline");
    cmd.args(args);
    let out = cmd.output().expect("the last run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout is not a sink here");
    let text = std::fs::read(&file).expect("read the sink");
    assert!(text.ends_with(b"\n"), "a torn last line");
    let got = harness::normalized_signals(&text);
    let want = inst.backtest_signals(&["--feed", &feed]);
    assert!(want.len() > 1000, "{}", want.len());
    assert!(
        mid_stream >= 3,
        "the kills landed while signals were being written: {mid_stream} of 10"
    );
    let missing = want.iter().filter(|w| !got.contains(w)).count();
    let extra = got.len() as i64 - want.len() as i64 + missing as i64;
    assert_eq!((missing, extra), (0, 0), "lost, duplicated");
    assert!(got == want, "the file equals the backtest");
    assert_nothing_left(&inst);
}

/// `--signals-from`: `all` appends everything again to a file that holds it;
/// `now` gives nothing of candles closed before the start (the synthetic
/// feed's lie in 2024). `status` shows each sink with what it delivered.
#[test]
fn signals_from_all_and_now_and_each_sink_in_status() {
    let inst = TestInstance::new("from");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s.jsonl");
    let sink = format!("file:{}", file.display());
    let base = ["run", "--candles", "150", "--rate", "5000", "--sink", &sink];
    let lines = || {
        std::fs::read_to_string(&file)
            .expect("sink")
            .lines()
            .count()
    };
    let ok = |extra: &[&str]| {
        let out = inst
            .command("shmkline")
            .args(base)
            .args(extra)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ok(&[]);
    let first = lines();
    assert!(first > 50, "{first}");
    ok(&[]);
    assert_eq!(lines(), first, "resume: nothing the file holds");
    ok(&["--signals-from", "all"]);
    assert_eq!(lines(), 2 * first, "all: everything again");
    let now = ok(&["--signals-from", "now", "--sink", "stdout"]);
    assert!(
        now.stdout.is_empty(),
        "now: no candle closed after the start"
    );
    assert_eq!(lines(), 2 * first);

    let mut cmd = inst.command("shmkline");
    cmd.args(base).args(["--sink", "stdout", "--stay"]);
    let mut run = harness::ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    let status = inst.status_when(Duration::from_secs(60), |s| s["feed"]["evaluated"] == true);
    let sinks = status["sinks"].as_array().expect("sinks");
    assert_eq!(sinks.len(), 2, "{status}");
    assert_eq!(sinks[0]["kind"], "stdout");
    assert_eq!(
        sinks[0]["delivered"].as_u64(),
        Some(first as u64),
        "{status}"
    );
    assert_eq!(sinks[1]["kind"], "file");
    assert_eq!(sinks[1]["delivered"], 0, "it held them all: {status}");
    assert!(sinks[1]["series"].as_u64() > Some(0), "{status}");
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    assert_nothing_left(&inst);
}

fn trader_ids(inst: &TestInstance) -> Vec<String> {
    inst.trader_ids().into_iter().collect()
}

/// The trader set lives in the state directory: a trader added and one
/// removed at run time are still so after the coordinator is SIGKILLed and
/// started again without `--traders`; a `--traders` file given on the
/// command line wins, and the log says so.
#[test]
fn traders_added_and_removed_at_run_time_survive_a_sigkill() {
    let inst = TestInstance::new("keep");
    let dir = tempfile::tempdir().expect("tempdir");
    let start = |extra: &[&str]| {
        let mut cmd = inst.command("shmkline");
        cmd.args(["run", "--rate", "20", "--symbols", "2"])
            .args(extra);
        let mut run = harness::ChildGuard::spawn(&mut cmd);
        run.capture_stdout();
        inst.status_when(Duration::from_secs(60), |s| {
            s["workers"]
                .as_array()
                .is_some_and(|ws| !ws.is_empty() && ws.iter().all(|w| w["state"] == "ready"))
        });
        run
    };
    let write = |name: &str, id: &str| {
        let path = dir.path().join(name);
        let t = serde_json::json!([{"id": id, "symbols": "*", "interval": "1m", "rule": "crosses_above(close, sma(close, 7))"}]);
        std::fs::write(&path, t.to_string()).expect("write");
        path.display().to_string()
    };
    let run = start(&[]);
    let defaults = trader_ids(&inst);
    assert_eq!(defaults.len(), 4, "{defaults:?}");
    let extra = write("extra.json", "extra");
    let added = inst.shmkline(&["traders", "add", &extra]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let removed = inst.shmkline(&["traders", "remove", "sma10-up"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let changed = trader_ids(&inst);
    assert!(changed.contains(&"extra".to_owned()) && !changed.contains(&"sma10-up".to_owned()));
    run.signal(Signal::SIGKILL);
    let (status, _, _) = run.wait_output(Duration::from_secs(30));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    let run = start(&[]);
    assert_eq!(trader_ids(&inst), changed, "restored after the SIGKILL");
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    assert!(
        stderr.contains("traders restored from the state directory"),
        "{stderr}"
    );

    let file = write("other.json", "other");
    let run = start(&["--traders", &file]);
    assert_eq!(trader_ids(&inst), vec!["other".to_owned()]);
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    assert!(stderr.contains("the --traders file wins"), "{stderr}");
    assert_nothing_left(&inst);
}

/// A state directory that cannot be used is a clear start-up error naming
/// it and the way out; nothing is started or left behind.
#[test]
fn an_unusable_state_directory_is_refused_naming_it() {
    let inst = TestInstance::new("badstate");
    let dir = tempfile::tempdir().expect("tempdir");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "").expect("write");
    for (state, want) in [
        (open.clone(), "lets others in"),
        (plain.join("sub"), "creating it"),
    ] {
        let out = inst
            .command("shmkline")
            .args(["run", "--candles", "5", "--state-dir"])
            .arg(&state)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&state.display().to_string()) && stderr.contains(want),
            "{stderr}"
        );
        inst.assert_clean();
    }
}

/// A file sink on a full disk: the coordinator's file size limit
/// (`ulimit -f`, SIGXFSZ ignored: writes past it fail with EFBIG as on a
/// full filesystem) lets the file grow by about 50 KB. The run says which
/// file failed and how many signals it did not write, and exits in error;
/// the next start, with room again, cuts whatever torn line the failed
/// write left and appends exactly what the file lacks.
#[test]
fn a_file_sink_on_a_full_disk_fails_loudly_and_the_next_start_completes_it() {
    let data = harness::data_file("BTCUSDT-1m-2021-02-19_25.csv");
    let inst = TestInstance::new("fullfs");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("signals.jsonl");
    // The file already holds ~1 MiB of another trader's signals, so the
    // limit is reached soon after the run begins appending (the segment,
    // about 100 KB with one symbol and one interval, is well under it).
    let old: String = (0..3_400)
        .map(|k| {
            format!(
                "{{\"trader\":\"old\",\"symbol\":\"OLDUSDT\",\"interval\":\"1m\",\"open_time\":{},\"close\":1.0,\"labels\":{{}},\"values\":{{}},\"emitted_at\":0,\"worker\":0,\"pad\":\"{}\"}}\n",
                k * 60_000,
                "x".repeat(160)
            )
        })
        .collect();
    std::fs::write(&file, &old).expect("prefill");
    let limit_kib = old.len() / 1024 + 50;
    let feed = format!("replay:{}", data.display());
    let sink = format!("file:{}", file.display());
    let args = [
        "run",
        "--feed",
        &feed,
        "--rate",
        "20000",
        "--sink",
        &sink,
        "--max-symbols",
        "1",
        "--intervals",
        "1m",
    ];
    let probe = inst.command("shmkline");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -f {limit_kib} && trap '' XFSZ && exec \"$0\" \"$@\""
        ))
        .arg(probe.get_program())
        .args(args);
    for (k, v) in probe.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("the run on a full disk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let size = std::fs::metadata(&file).expect("meta").len() as usize;
    assert!(
        size > old.len() && size <= limit_kib * 1024,
        "the disk filled up: {size} bytes, limit {}",
        limit_kib * 1024
    );
    assert!(
        stderr.contains(&format!("file:{}", file.display()))
            && stderr.contains("not confirmed")
            && stderr.contains("File too large"),
        "names the file, the count and the cause: {stderr}"
    );

    let out = inst.command("shmkline").args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with(&old), "what was there stays");
    let appended = &text[old.len()..];
    let got = harness::normalized_signals(appended.as_bytes());
    let want = inst.backtest_signals(&["--feed", &feed]);
    assert!(want.len() > 1000);
    assert!(got == want, "the file holds the backtest once");
    assert_nothing_left(&inst);
}

/// A million signals through the coordinator's sink path (stdout and a
/// file sink, each with its own watermarks): 100 traders firing on every
/// candle of 100 symbols, 100 candles. The coordinator's private memory
/// (RssAnon) after the first 200,000 signals and after the last differ by
/// less than 8 MiB (the key FIFO this replaced held up to 2^20 keys and
/// grew for over an hour).
#[test]
fn a_million_signals_leave_the_coordinators_memory_flat() {
    use std::io::{BufRead, BufReader, Read};
    let inst = TestInstance::new("million");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = harness::firing_traders(dir.path(), 100, "m");
    let file = dir.path().join("signals.jsonl");
    let sink = format!("file:{}", file.display());
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--traders"])
        .arg(&traders)
        .args([
            "--symbols",
            "100",
            "--max-symbols",
            "101",
            "--intervals",
            "1m",
        ])
        .args(["--candles", "100", "--rate", "1000000", "--stay"])
        .args(["--sink", "stdout", "--sink", &sink]);
    let mut run = harness::ChildGuard::spawn(&mut cmd);
    let pid = run.pid();
    let mut lines = 0u64;
    let mut early = 0;
    // Kept open to the end: a closed stdout would end the run.
    let mut reader = BufReader::new(run.stdout());
    for line in reader.by_ref().lines() {
        line.expect("a line");
        lines += 1;
        if lines == 200_000 {
            early = tools::chaos::status_kib(pid, "RssAnon");
        }
        if lines == 1_000_000 {
            break;
        }
    }
    assert_eq!(lines, 1_000_000);
    let status = inst.status_when(Duration::from_secs(120), |s| {
        s["sinks"][1]["delivered"].as_u64() == Some(1_000_000)
    });
    let late = tools::chaos::status_kib(pid, "RssAnon");
    eprintln!("coordinator RssAnon: {early} KiB at 200,000 signals, {late} KiB at 1,000,000");
    assert!(early > 0 && late > 0);
    // Measured here: +3.2 MiB, in steps (the allocator keeping freed batch
    // buffers), none of it per signal; the key FIFO added ~100 bytes a
    // signal (+80 MB over these 800,000).
    assert!(
        late < early + 8192,
        "grew {} KiB over 800,000 signals",
        late - early
    );
    // And no worker was taken for hung while its PONGs waited behind its
    // burst (before, a debug build replaced them in a loop and quarantined
    // two traders).
    assert_eq!(status["supervision"]["faults"], 0, "{status}");
    assert_eq!(status["sinks"][0]["series"], 10_000, "{status}");
    assert_eq!(status["sinks"][1]["series"], 10_000, "{status}");
    run.signal(Signal::SIGTERM);
    let (st, _, stderr) = run.wait_output(Duration::from_secs(60));
    drop(reader);
    assert!(st.success(), "{stderr}");
    assert_nothing_left(&inst);
}

/// A file sink on a read-only filesystem (a tmpfs remounted read-only in a
/// private mount namespace, holding one signal line): a start-up error
/// naming the sink, the file and the cause, before anything starts; the
/// file keeps what it held. Skipped, saying so, where mount namespaces are
/// not allowed.
#[test]
fn a_file_sink_on_a_read_only_filesystem_is_a_clear_start_up_error() {
    let probe = Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no mount namespace here (unshare -m failed)");
        return;
    }
    let inst = TestInstance::new("rofs");
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("ro");
    std::fs::create_dir(&mnt).expect("mount point");
    let file = mnt.join("s.jsonl");
    let held = "{\"trader\":\"a\",\"symbol\":\"X\",\"interval\":\"1m\",\"open_time\":0}\n";
    let probe = inst.command("shmkline");
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=1m tmpfs \"$1\" && printf '%s' \"$2\" > \"$1/s.jsonl\" \
             && mount -o remount,ro \"$1\" && d=\"$1\" && shift 2 || exit 99; \
             \"$@\"; rc=$?; cat \"$d/s.jsonl\"; exit $rc",
        )
        .arg("sh")
        .arg(&mnt)
        .arg(held)
        .arg(probe.get_program())
        .args(["run", "--candles", "20", "--sink"])
        .arg(format!("file:{}", file.display()));
    for (k, v) in probe.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "shmkline's error: {stderr}");
    assert!(
        stderr.contains(&format!("--sink file:{}", file.display()))
            && stderr.contains("Read-only file system"),
        "names the sink and the cause: {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        held,
        "the file keeps what it held (and nothing was printed)"
    );
    assert_nothing_left(&inst);
}

/// Two `--sink file:` paths to one file (a symlink, a hard link, the same
/// path written another way) are refused as one file given twice, before
/// a signal is written: compared by device and inode, not by text.
#[test]
fn one_file_reached_by_two_paths_is_refused_as_two_sinks() {
    let inst = TestInstance::new("samefile");
    let dir = tempfile::tempdir().expect("tempdir");
    let x = dir.path().join("x.jsonl");
    std::fs::write(&x, "").expect("create x");
    let symlink = dir.path().join("y.jsonl");
    std::os::unix::fs::symlink(&x, &symlink).expect("symlink");
    let hard = dir.path().join("z.jsonl");
    std::fs::hard_link(&x, &hard).expect("hard link");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let dotted = dir.path().join("sub/../x.jsonl");
    for other in [&symlink, &hard, &dotted] {
        let out = inst
            .command("shmkline")
            .args(["run", "--candles", "50", "--rate", "1000"])
            .arg(format!("--sink=file:{}", x.display()))
            .arg(format!("--sink=file:{}", other.display()))
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {stderr}", other.display());
        assert!(
            stderr.contains("are the same file") && stderr.contains(&other.display().to_string()),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read(&x).expect("x").len(),
            0,
            "a signal was written"
        );
        assert_nothing_left(&inst);
    }
    // Two different files are two sinks, each with every signal once.
    let other = dir.path().join("w.jsonl");
    let out = inst
        .command("shmkline")
        .args(["run", "--candles", "50", "--rate", "1000"])
        .arg(format!("--sink=file:{}", x.display()))
        .arg(format!("--sink=file:{}", other.display()))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = harness::normalized_signals(&std::fs::read(&x).expect("x"));
    let b = harness::normalized_signals(&std::fs::read(&other).expect("w"));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_nothing_left(&inst);
}
