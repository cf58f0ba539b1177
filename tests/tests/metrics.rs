//! The `--metrics` endpoint under idle connections: they cannot deny
//! `/metrics` for longer than about the request-head deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use engine::run::metrics::{QUEUED, SERVERS};
use harness::{ChildGuard, TestInstance};
use nix::sys::signal::Signal;

const STARTUP: Duration = Duration::from_secs(60);

/// Idle connections: two past what the endpoint serves and queues.
const IDLE: usize = SERVERS + QUEUED + 2;

/// `GET path` on a connection of its own: the status code (0 when the
/// connection gave no HTTP answer) and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Eighteen idle connections used to deny `/metrics` and `/status` for 25 s:
/// the 2 s head deadline started when a server thread took a connection, so
/// the 16 queued ones held it one after another. Now it starts at accept:
/// the fault is real (a request while they are fresh is refused 503, and
/// every idle connection is answered and closed by the server), and
/// `/metrics` answers 200 within a few seconds, where it used to take 16 or
/// more.
#[test]
fn idle_connections_cannot_hold_the_metrics_endpoint() {
    let inst = TestInstance::new("metidle");
    let mut cmd = inst.command("shmkline");
    cmd.args([
        "run",
        "--rate",
        "20",
        "--symbols",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut run = ChildGuard::spawn(&mut cmd);
    run.capture_stdout();
    let status = inst.status_when(STARTUP, |s| {
        s["metrics"].is_string()
            && s["workers"]
                .as_array()
                .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
    });
    let addr = status["metrics"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://"))
        .and_then(|u| u.strip_suffix("/metrics"))
        .expect("http://ADDR/metrics in status")
        .to_owned();
    assert_eq!(get(&addr, "/metrics").0, 200, "the endpoint serves");

    // Connections that send nothing: first two, which the server threads
    // take, then the rest: sixteen queued, the others refused at once (the
    // queue is full). The pauses let the accept loop and the servers take
    // them in that order.
    let opened = Instant::now();
    let connect = || TcpStream::connect(&addr).expect("connect");
    let mut idle: Vec<TcpStream> = (0..SERVERS).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    idle.extend((SERVERS..IDLE).map(|_| connect()));
    std::thread::sleep(Duration::from_millis(300));
    let (fresh, body) = get(&addr, "/metrics");
    assert_eq!(
        fresh, 503,
        "while the idle connections are fresh the queue is full: {body}"
    );
    assert!(
        body.contains(&format!("{QUEUED} connections waiting")),
        "{body}"
    );

    // Within a few seconds (the deadline, 2 s from accept, and margin for a
    // busy machine), /metrics answers again; before, 16 s or more.
    let bound = Duration::from_secs(10);
    let mut tries = Vec::new();
    let (code, text) = loop {
        let (code, text) = get(&addr, "/metrics");
        tries.push(code);
        if code == 200 {
            break (code, text);
        }
        assert!(
            opened.elapsed() < bound,
            "no 200 from /metrics within {bound:?} of {IDLE} idle connections: {tries:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 200);
    assert!(text.contains("shmkline_uptime_seconds"), "{text}");
    let waited = opened.elapsed();
    assert!(
        waited < bound,
        "/metrics answered 200 only {waited:?} after {IDLE} idle connections opened, past {bound:?}: they held the endpoint (tries {tries:?})"
    );

    // Every idle connection was accepted and then let go by the server: an
    // answer (408 for the head deadline, 503 for the full queue) and the
    // end of the stream, none left open.
    let (mut timed_out, mut refused) = (0, 0);
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("the server closes an idle connection");
        match answer.split_whitespace().nth(1) {
            Some("408") => timed_out += 1,
            Some("503") => refused += 1,
            other => panic!("an idle connection got {other:?}: {answer:?}"),
        }
    }
    assert_eq!(
        (timed_out, refused),
        (SERVERS + QUEUED, IDLE - SERVERS - QUEUED),
        "the servers held two and queued sixteen, the rest were refused"
    );
    eprintln!(
        "{IDLE} idle connections: {timed_out} answered 408, {refused} refused 503; /metrics answered 200 after {waited:?} (tries {tries:?})"
    );

    run.signal(Signal::SIGTERM);
    let (st, stderr) = run.wait(Duration::from_secs(30));
    assert!(st.success(), "{stderr}");
    inst.assert_clean();
}
