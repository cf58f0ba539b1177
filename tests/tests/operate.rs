//! The operator's view (issue 17): a control socket many clients use at
//! once, JSON logs, the config file, the memory-growth alarm, metrics, top.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::{ChildGuard, TestInstance};
use nix::sys::signal::Signal;

const STARTUP: Duration = Duration::from_secs(60);

/// A synthetic run that stays up until SIGTERM, once every worker is ready.
fn running(inst: &TestInstance, extra: &[&str]) -> ChildGuard {
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--rate", "20"]).args(extra);
    if !extra.contains(&"--symbols") {
        cmd.args(["--symbols", "2"]);
    }
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    inst.status_when(STARTUP, |s| {
        s["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
    });
    run
}

fn socket(inst: &TestInstance) -> PathBuf {
    inst.runtime_dir
        .join(inst.name.as_str())
        .join("control.sock")
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Item 5: twenty idle connections and a client trickling a byte a second
/// do not hold `status` (one at a time, the sixth connection waited out
/// the others' timeouts and failed); a client past the limit gets an error
/// naming it; idle connections are closed after the idle timeout; a
/// connection carries several requests.
#[test]
fn many_clients_at_once_idle_ones_timed_out_and_a_clear_limit() {
    let inst = TestInstance::new("ctlmany");
    let run = running(&inst, &[]);
    let path = socket(&inst);
    let idle: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&path).expect("connect"))
        .collect();
    let opened = Instant::now();
    // A slow client: one byte a second of a "status" line.
    let slow = UnixStream::connect(&path).expect("connect");
    let trickle = {
        let mut w = slow.try_clone().expect("clone");
        std::thread::spawn(move || {
            for b in b"status".iter() {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    for _ in 0..3 {
        let out = inst.shmkline(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status with 21 other clients connected: {}",
            stderr_of(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["instance"], inst.name.as_str());
    }
    // The trickling client is answered with the line timeout and closed.
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut answer = String::new();
    BufReader::new(&slow)
        .read_line(&mut answer)
        .expect("an answer to the slow client");
    assert!(
        answer.contains("did not end within 2 s of its first byte"),
        "{answer}"
    );
    let _ = trickle.join();
    // One connection, several requests.
    let mut one = UnixStream::connect(&path).expect("connect");
    one.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(one.try_clone().expect("clone"));
    for request in ["status", "traders", "status"] {
        one.write_all(format!("{request}\n").as_bytes())
            .expect("send");
        let mut line = String::new();
        reader.read_line(&mut line).expect("answer");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert!(v.get("error").is_none(), "{request}: {line}");
    }
    drop((one, reader));
    // Still open: the idle timeout (30 s) has not run out. Then the limit,
    // with connections of its own: 64 at once, and `status` is refused.
    for c in &idle {
        c.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 16];
        assert!(
            matches!((&*c).read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "an idle connection was closed {:?} after it opened, before the idle timeout",
            opened.elapsed()
        );
        c.set_nonblocking(false).expect("blocking");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let (refused, more) = loop {
        let more: Vec<UnixStream> = (0..64)
            .map(|_| UnixStream::connect(&path).expect("connect"))
            .collect();
        // Each is admitted once the server's accept thread has seen it.
        std::thread::sleep(Duration::from_millis(300));
        let out = inst.shmkline(&["status", "--json"]);
        if !out.status.success() {
            break (stderr_of(&out), more);
        }
        assert!(
            Instant::now() < deadline,
            "status kept answering with 64 more clients connected"
        );
        drop(more);
    };
    assert!(
        refused.contains("already serves 64 clients, its limit") && refused.contains("idle"),
        "{refused}"
    );
    drop(more);
    inst.status_when(Duration::from_secs(30), |_| true);
    // The idle ones are closed by the server.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        assert_eq!(c.read(&mut buf).expect("EOF, not an error"), 0);
    }
    run.signal(Signal::SIGTERM);
    let (st, stderr) = run.wait(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    inst.assert_clean();
}

/// Item 4: with `--log-format json` every stderr line of a run with kills
/// (the coordinator's and every worker's) is one JSON object; a worker's
/// lines carry its span (slot and pid), and so do the coordinator's lines
/// about a faulty worker. `--log-level` filters; a bad one is refused.
#[test]
fn json_logs_every_line_an_object_with_the_worker_span() {
    let inst = TestInstance::new("logjson");
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "--log-format",
        "json",
        "run",
        "--candles",
        "200",
        "--rate",
        "20",
        "--symbols",
        "2",
        "--workers",
        "2",
    ]);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    let mut killed = Vec::new();
    for round in 0..3u32 {
        let status = inst.status_when(STARTUP, |s| {
            s["workers"]
                .as_array()
                .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
        });
        let slot = round % 2;
        killed.push(
            status["workers"][slot as usize]["pid"]
                .as_u64()
                .expect("pid"),
        );
        let out = inst.shmkline(&["kill-worker", &slot.to_string()]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (st, stderr) = run.wait(Duration::from_secs(60));
    assert!(st.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}"))
        })
        .collect();
    let span_of = |v: &serde_json::Value| {
        v["spans"].as_array().and_then(|s| {
            s.iter()
                .find(|s| s["name"] == "worker")
                .map(|s| (s["slot"].as_u64(), s["pid"].as_u64()))
        })
    };
    let from_workers: Vec<_> = lines
        .iter()
        .filter(|v| {
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("worker"))
        })
        .collect();
    assert!(from_workers.len() >= 10, "{stderr}");
    for v in &from_workers {
        let (slot, pid) = span_of(v).unwrap_or_else(|| panic!("no worker span: {v}"));
        assert!(slot.is_some() && pid.is_some(), "{v}");
    }
    // Each killed worker logged before its death, under its own pid.
    for pid in &killed {
        assert!(
            from_workers
                .iter()
                .any(|v| span_of(v).and_then(|s| s.1) == Some(*pid)),
            "no line from worker {pid}"
        );
    }
    let faults: Vec<_> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == "worker is faulty: replacing it")
        .collect();
    assert_eq!(faults.len(), 3, "the three kills landed: {stderr}");
    for v in &faults {
        let (_, pid) = span_of(v).expect("the coordinator's fault line has the worker span");
        assert!(killed.contains(&pid.expect("pid")), "{v}");
        assert_eq!(v["level"], "WARN");
        assert!(v["timestamp"].is_string(), "{v}");
    }
    // --log-level: only warnings and errors; a bad level is refused.
    let out = inst.shmkline(&[
        "--log-format",
        "json",
        "--log-level",
        "warn",
        "backtest",
        "--candles",
        "50",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("INFO"), "{}", stderr_of(&out));
    let out = inst.shmkline(&["--log-format", "json", "backtest", "--candles", "50"]);
    assert!(
        stderr_of(&out).contains(r#""level":"INFO""#),
        "{}",
        stderr_of(&out)
    );
    let out = inst.shmkline(&["--log-level", "loud", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("\"loud\" is not a log level"),
        "{}",
        stderr_of(&out)
    );
    inst.assert_clean();
}

/// Item 6: a config file under the command line and the environment;
/// unknown keys and bad values named with file, line and key; `config show`
/// round-trips through `--config`; a run takes its settings from the file.
#[test]
fn a_config_file_under_flags_and_environment_round_trips_through_config_show() {
    let inst = TestInstance::new("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a.toml");
    std::fs::write(
        &file,
        "# a comment\nworkers = 3\nsymbols = 3\nping_interval = 100\nsink = [\"stdout\"]\nlog-format = \"json\"\nstate-dir = \"/nowhere/from-file\"\nno-backpressure = true\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let show = |args: &[&str]| {
        let out = inst.shmkline(&[&["config", "show"], args].concat());
        assert!(out.status.success(), "{}", stderr_of(&out));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    // The flag wins over the file; the environment ($SHMKLINE_STATE_DIR,
    // set for every test instance) too; the rest comes from the file.
    let shown = show(&["--config", path, "--workers", "1"]);
    for line in [
        "workers = 1\n",
        "symbols = 3\n",
        "ping-interval = 100\n",
        "sink = [\"stdout\"]\n",
        "log-format = \"json\"\n",
        "no-backpressure = true\n",
        "stay = false\n",
        "seed = 1\n",
    ] {
        assert!(shown.contains(line), "{line:?} missing from:\n{shown}");
    }
    assert!(!shown.contains("from-file"), "{shown}");
    assert!(
        shown.contains(&format!("state-dir = \"{}\"", inst.state_dir.display())),
        "{shown}"
    );
    // The environment beats the file for the settings read outside clap
    // too ($SHMKLINE_LOG is set for every test instance), and a flag beats
    // a file key it conflicts with (--speed over the file's rate).
    let conflicts = dir.path().join("c.toml");
    std::fs::write(
        &conflicts,
        "log-level = \"debug\"\nrate = 5\ninstance = \"007\"\n",
    )
    .expect("write");
    let shown = show(&[
        "--config",
        conflicts.to_str().expect("utf-8"),
        "--speed",
        "60",
    ]);
    assert!(
        shown.contains("log-level = \"info\"  # from $SHMKLINE_LOG"),
        "{shown}"
    );
    assert!(
        shown.contains("speed = 60\n") && shown.contains("# rate: not set"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("instance = \"{}\"", inst.name)),
        "{shown}"
    );
    // Round trip: what config show prints reads back to itself.
    let once = show(&["--config", path]);
    let again_file = dir.path().join("b.toml");
    std::fs::write(&again_file, &once).expect("write");
    let twice = show(&["--config", again_file.to_str().expect("utf-8")]);
    assert_eq!(once, twice);
    // The committed example reads as a config (every key commented out).
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../shmkline.example.toml");
    assert_eq!(show(&["--config", example]), show(&[]));
    // Unknown key, bad value: exit 2, file, line and key named.
    let bad = dir.path().join("bad.toml");
    for (text, expect) in [
        (
            "workers = 2\nwrokers = 3\n",
            "bad.toml:2: key `wrokers`: not a setting",
        ),
        (
            "workers = 2\n\nping-interval = \"soon\"\n",
            "bad.toml:3: key `ping-interval`: invalid value 'soon' for '--ping-interval",
        ),
        ("feed = \"carrier-pigeon\"\n", "bad.toml:1: key `feed`"),
        ("workers = [\n", "is not valid TOML"),
    ] {
        std::fs::write(&bad, text).expect("write");
        for cmd in [&["config", "show"][..], &["run"][..]] {
            let out = inst.shmkline(
                &[
                    cmd,
                    &["--config", bad.to_str().expect("utf-8"), "--candles", "5"],
                ]
                .concat(),
            );
            assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr_of(&out));
            assert!(
                stderr_of(&out).contains(expect),
                "{text}: {}",
                stderr_of(&out)
            );
        }
    }
    // A run takes its settings from the file: three workers, JSON logs.
    let out = inst
        .command("shmkline")
        .env("SHMKLINE_CONFIG", &file)
        .args(["run", "--candles", "40", "--rate", "100"])
        .output()
        .expect("run");
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    let spawned: std::collections::BTreeSet<u64> = stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
        .filter(|v| v["fields"]["message"] == "worker spawned")
        .filter_map(|v| v["fields"]["slot"].as_u64())
        .collect();
    assert_eq!(spawned.len(), 3, "{stderr}");
    let symbols: std::collections::BTreeSet<String> = harness::normalized_signals(&out.stdout)
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["symbol"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(symbols.len(), 3, "three symbols from the file");
    inst.assert_clean();
}

/// The memory section of `status`: (process, growth MB/h, alarms).
fn memory_of(status: &serde_json::Value) -> Vec<(String, Option<f64>, u64)> {
    status["memory"]["processes"]
        .as_array()
        .expect("memory processes")
        .iter()
        .map(|p| {
            (
                p["process"].as_str().expect("name").to_owned(),
                p["growth_mb_per_h"].as_f64(),
                p["alarms"].as_u64().expect("alarms"),
            )
        })
        .collect()
}

/// Item 3: a worker leaking on purpose (a test-only rule, 64 KiB per
/// candle) is named by the growth alarm, in the log and in `status`; the
/// coordinator and the other worker are not.
#[test]
fn the_growth_alarm_names_a_leaking_worker() {
    let inst = TestInstance::new("leak");
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = dir.path().join("t.json");
    std::fs::write(
        &traders,
        serde_json::json!([
            {"id": "leaky", "symbols": "*", "interval": "1m", "rule": "test_leak_kib(64)"},
            {"id": "calm", "symbols": "*", "interval": "1m", "rule": "close > open"},
        ])
        .to_string(),
    )
    .expect("write");
    let run = running(
        &inst,
        &[
            "--traders",
            traders.to_str().expect("utf-8"),
            "--memory-sample-interval",
            "250",
            "--memory-warmup",
            "1",
            "--memory-window",
            "4",
            // The leak is about 9 GB/h; over a 4 s window a few KB of a
            // calm process's allocator would pass 10 MB/h.
            "--memory-growth-alert",
            "500",
        ],
    );
    let status = inst.status_when(Duration::from_secs(60), |s| {
        memory_of(s).iter().any(|(_, _, alarms)| *alarms > 0)
    });
    let leaky_slot = status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| {
            w["trader_ids"]
                .as_array()
                .is_some_and(|t| t.contains(&"leaky".into()))
        })
        .and_then(|w| w["id"].as_u64())
        .expect("the leaky trader's slot");
    let memory = memory_of(&status);
    let leaking = format!("worker {leaky_slot}");
    for (process, growth, alarms) in &memory {
        if *process == leaking {
            assert!(
                *alarms > 0 && growth.is_some_and(|g| g > 500.0),
                "{memory:?}"
            );
        } else {
            assert_eq!(*alarms, 0, "{process} is not leaking: {memory:?}");
        }
    }
    run.signal(Signal::SIGTERM);
    let (st, stderr) = run.wait(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("memory grows faster than --memory-growth-alert"))
        .collect();
    assert!(!warned.is_empty(), "{stderr}");
    assert!(
        warned
            .iter()
            .all(|l| l.contains(&format!("process=\"{leaking}\""))
                && l.contains("limit_mb_per_h=500")),
        "{warned:?}"
    );
    inst.assert_clean();
}

/// Item 3: a normal two-minute run with kills: growth figures computed for
/// the coordinator and a worker left alone (and for replaced workers once
/// warm), all under the alarm, and no alarm raised.
#[test]
fn the_growth_alarm_stays_silent_in_a_normal_run_with_kills() {
    let inst = TestInstance::new("calm");
    let run = running(
        &inst,
        &[
            "--symbols",
            "4",
            "--memory-sample-interval",
            "1000",
            // Figures from 50 s on, the alarm able to fire from 79 s (a
            // whole window) to the end, every kill inside the window.
            "--memory-warmup",
            "20",
            "--memory-window",
            "60",
        ],
    );
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(15));
        if kills < 4 {
            let out = inst.shmkline(&["kill-worker", "0"]);
            assert!(out.status.success(), "{}", stderr_of(&out));
            kills += 1;
        }
    }
    let status = inst.status_when(STARTUP, |_| true);
    assert!(
        status["workers"][0]["restarts"].as_u64() >= Some(kills),
        "the kills landed: {status}"
    );
    let memory = memory_of(&status);
    for process in ["coordinator", "worker 1"] {
        let growth = memory
            .iter()
            .find(|(p, _, _)| p == process)
            .and_then(|(_, g, _)| *g)
            .unwrap_or_else(|| panic!("{process} has a growth figure: {memory:?}"));
        assert!(growth < 10.0, "{process}: {growth} MB/h");
    }
    assert!(
        memory.iter().all(|(_, _, alarms)| *alarms == 0),
        "{memory:?}"
    );
    run.signal(Signal::SIGTERM);
    let (st, stderr) = run.wait(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    assert!(!stderr.contains("memory grows faster"), "{stderr}");
    inst.assert_clean();
}

/// A GET over HTTP/1.0 on loopback: (status code, body).
fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_owned())
}

/// Item 2: `/metrics` passes `promtool check metrics`, a real Prometheus
/// server scrapes it (target up, `shmkline_signals_total` summing to the
/// run's count), `/status` is `status --json`'s JSON, and nothing else is
/// served.
#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    for tool in ["promtool", "prometheus"] {
        assert!(
            std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: scripts/test.sh installs it (Debian package prometheus)"
        );
    }
    let inst = TestInstance::new("metrics");
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--candles",
        "120",
        "--rate",
        "60",
        "--symbols",
        "3",
        "--stay",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    // A kill, so the restart counter has something to say.
    inst.status_when(STARTUP, |s| s["workers"][0]["state"] == "ready");
    let out = inst.shmkline(&["kill-worker", "0"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let status = inst.status_when(Duration::from_secs(120), |s| {
        s["feed"]["finished"] == true
            && s["workers"]
                .as_array()
                .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
            && s["sinks"][0]["queued"] == 0
    });
    let emitted = status["signals"]["emitted"].as_u64().expect("emitted");
    assert!(emitted > 0, "{status}");
    let url = status["metrics"].as_str().expect("the metrics URL");
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .expect("http://ADDR/metrics")
        .to_owned();
    let (code, text) = http_get(&addr, "/metrics", None);
    assert_eq!(code, 200, "{text}");
    for needle in [
        "shmkline_signals_duplicate_total ",
        "shmkline_worker_restarts_total{slot=\"0\",cause=\"outside\"} 1",
        "shmkline_worker_rss_bytes{slot=\"1\"} ",
        "shmkline_eval_pass_seconds_bucket{le=\"+Inf\",slot=\"0\"} ",
        "shmkline_signal_latency_seconds_count ",
        "shmkline_feed_connected 1",
        "shmkline_feed_reconnects_total 0",
        "shmkline_feed_gaps_total 0",
        "shmkline_candles_written_total{interval=\"1m\"} 360",
        "shmkline_sink_queued{sink=\"stdout\",index=\"0\"} 0",
        "shmkline_sink_errors_total{sink=\"stdout\",index=\"0\"} 0",
        "shmkline_process_private_memory_bytes{process=\"coordinator\"} ",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    let by_trader: u64 = text
        .lines()
        .filter(|l| l.starts_with("shmkline_signals_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(by_trader, emitted, "{text}");
    let dir = tempfile::tempdir().expect("tempdir");
    let scraped = dir.path().join("metrics.txt");
    std::fs::write(&scraped, &text).expect("write");
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scraped).expect("open"))
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // OpenMetrics when asked for (as Prometheus does).
    let (_, open) = http_get(&addr, "/metrics", Some("application/openmetrics-text"));
    assert!(open.ends_with("# EOF\n"), "{open}");
    // /status: the same JSON as status --json.
    let (code, body) = http_get(&addr, "/status", None);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["instance"], inst.name.as_str());
    assert_eq!(v["signals"]["emitted"], emitted);
    assert_eq!(http_get(&addr, "/other", None).0, 404);
    // A real Prometheus server scrapes it.
    let port = harness::free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shmkline\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .expect("write");
    let listen = format!("127.0.0.1:{port}");
    let mut prom = ChildGuard::spawn(std::process::Command::new("prometheus").args([
        &format!("--config.file={}", config.display()),
        &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
        &format!("--web.listen-address={listen}"),
    ]));
    prom.capture_stdout();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (health, value) = loop {
        let targets = std::net::TcpStream::connect(&listen)
            .ok()
            .map(|_| http_get(&listen, "/api/v1/targets", None).1);
        let query = std::net::TcpStream::connect(&listen).ok().map(|_| {
            http_get(
                &listen,
                "/api/v1/query?query=sum(shmkline_signals_total)",
                None,
            )
            .1
        });
        let health = targets
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|t| {
                t["data"]["activeTargets"][0]["health"]
                    .as_str()
                    .map(str::to_owned)
            });
        let value = query
            .and_then(|q| serde_json::from_str::<serde_json::Value>(&q).ok())
            .and_then(|q| {
                q["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_owned)
            });
        if health.as_deref() == Some("up") && value.is_some() {
            break (health, value);
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped it: {health:?} {value:?}\n{}",
            prom.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(health.as_deref(), Some("up"));
    assert_eq!(value, Some(emitted.to_string()));
    drop(prom);
    run.signal(Signal::SIGTERM);
    let (st, stderr) = run.wait(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    inst.assert_clean();
}

/// A tmux server of its own (socket in a temp dir), killed on drop.
struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// A detached session `top` of `width` x `height` running `command`
    /// with TERM=xterm; the pane stays after its command exits, so its exit
    /// status and screen can be read.
    fn start(width: u16, height: u16, env: &[(&str, String)], command: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("tmux.sock");
        let conf = dir.path().join("tmux.conf");
        std::fs::write(
            &conf,
            "set -g remain-on-exit on\nset -g default-terminal xterm\n",
        )
        .expect("write");
        let mut cmd = std::process::Command::new("tmux");
        cmd.arg("-S")
            .arg(&socket)
            .arg("-f")
            .arg(&conf)
            .args(["new-session", "-d", "-s", "top"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        let out = cmd.arg(command).output().expect("tmux");
        assert!(out.status.success(), "{}", stderr_of(&out));
        Self { socket, _dir: dir }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        self.tmux(&[&["send-keys", "-t", "top"], keys].concat());
    }

    fn pane(&self, format: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", "top", format])
            .trim()
            .to_owned()
    }

    /// The exit status of `top` in the pane, once it has exited (the
    /// pane's shell prints it: tmux 3.3a sometimes leaves its own
    /// `pane_dead_status` empty).
    fn exit_status(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.tmux(&["capture-pane", "-p", "-J", "-S", "-100", "-t", "top"]);
            if let Some(code) = screen
                .lines()
                .find_map(|l| l.trim().strip_prefix("top exited with "))
            {
                return code.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "top did not exit:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The screen once `pred` holds (panics with it after `timeout`).
    fn screen_when(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed it:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

/// Item 1: `top` in a real terminal (tmux, TERM=xterm, 80x24): every
/// worker's pid as `status` reports it is on the screen; `k` on a selected
/// worker and `y` kill it, and the coordinator replaces it (its restarts go
/// up, a new pid shows); `t` shows the traders; `q` exits 0 with the
/// terminal restored (off the alternate screen).
#[test]
fn top_in_a_real_terminal_kills_a_worker_and_quits_cleanly() {
    let inst = TestInstance::new("top");
    // A generous PING deadline: a loaded machine must not replace a worker
    // on its own while the test counts restarts.
    let run = running(&inst, &["--workers", "3", "--ping-deadline", "10000"]);
    let status = inst.status_when(STARTUP, |s| {
        s["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
    });
    let pids = TestInstance::worker_pids(&status);
    assert_eq!(pids.len(), 3);
    let env = [
        ("SHMKLINE_INSTANCE", inst.name.as_str().to_owned()),
        (
            "SHMKLINE_RUNTIME_DIR",
            inst.runtime_dir.display().to_string(),
        ),
    ];
    let bin = harness::bin("shmkline");
    let top = format!(
        "{} top --interval 200; echo \"top exited with $?\"",
        bin.display()
    );
    let tmux = Tmux::start(80, 24, &env, &top);
    let screen = tmux.screen_when(Duration::from_secs(30), |s| {
        pids.iter().all(|p| s.contains(&p.to_string()))
    });
    assert!(
        screen.contains(&format!("shmkline top  {}", inst.name)),
        "{screen}"
    );
    assert_eq!(
        tmux.pane("#{alternate_on}"),
        "1",
        "top uses the alternate screen"
    );
    // Select slot 1 and kill it.
    tmux.keys(&["Down"]);
    tmux.keys(&["k"]);
    let victim = pids[1];
    tmux.screen_when(Duration::from_secs(10), |s| {
        s.contains(&format!("kill worker 1 (pid {victim})?"))
    });
    tmux.keys(&["y"]);
    let after = inst.status_when(Duration::from_secs(60), |s| {
        s["workers"][1]["restarts"] == 1
            && s["workers"][1]["state"] == "ready"
            && s["workers"][1]["pid"].as_u64() != Some(u64::from(victim))
    });
    assert_eq!(after["workers"][0]["restarts"], 0, "only slot 1 was killed");
    let replacement = after["workers"][1]["pid"].as_u64().expect("pid");
    let screen = tmux.screen_when(Duration::from_secs(30), |s| {
        s.lines()
            .any(|l| l.starts_with("1 ") && l.contains(&replacement.to_string()))
    });
    assert!(
        screen.contains(&format!("killed worker 1 (pid {victim})")),
        "{screen}"
    );
    // The trader list, and back.
    tmux.keys(&["t"]);
    tmux.screen_when(Duration::from_secs(10), |s| s.contains("sma10-up"));
    // Back, and quit, typed together: top reads every key it is given at
    // once (the `q` used to wait in crossterm's buffer until another key).
    tmux.keys(&["t", "q"]);
    assert_eq!(tmux.exit_status(), "0", "top exits 0 on q");
    assert_eq!(
        tmux.pane("#{alternate_on}"),
        "0",
        "the terminal is restored"
    );
    // A top whose terminal hangs up (the tmux server killed under it) ends
    // too: crossterm alone would spin on the dead terminal for ever.
    drop(tmux);
    let hangup = format!("{} top --interval 150", bin.display());
    let tmux = Tmux::start(80, 24, &env, &hangup);
    tmux.screen_when(Duration::from_secs(30), |s| s.contains("workers"));
    // (tmux's own command line mentions it too.)
    let tops: Vec<u32> = harness::live_processes_mentioning("top --interval 150")
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "shmkline")
        })
        .collect();
    assert_eq!(tops.len(), 1, "{tops:?}");
    drop(tmux);
    let deadline = Instant::now() + Duration::from_secs(10);
    while harness::process_alive(tops[0]) {
        assert!(
            Instant::now() < deadline,
            "top {} outlived its terminal",
            tops[0]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second top, then the instance stops under it: it says so and exits 0.
    let tmux = Tmux::start(80, 24, &env, &top);
    tmux.screen_when(Duration::from_secs(30), |s| s.contains("workers"));
    run.signal(Signal::SIGTERM);
    let (st, stderr) = run.wait(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    assert_eq!(
        tmux.exit_status(),
        "0",
        "top exits 0 when the instance stops"
    );
    assert_eq!(tmux.pane("#{alternate_on}"), "0");
    // With what scrolled into the history, wrapped lines joined.
    let screen = tmux.tmux(&["capture-pane", "-p", "-J", "-S", "-100", "-t", "top"]);
    assert!(
        screen.contains(&format!(
            "shmkline top: instance {} stopped (no instance is running there",
            inst.name
        )),
        "{screen}"
    );
    inst.assert_clean();
}
