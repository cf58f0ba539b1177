//! The control socket's request limit over a socket pair: the server and
//! the client take a line of exactly `MAX_REQUEST` bytes and refuse one
//! more, naming its length.

use super::*;
use protocol::control::{Removed, RemovedFrom};
use std::sync::atomic::AtomicUsize;

/// `{"cmd":"remove","id":""}`: a request line without its id.
const REMOVE: usize = 24;

/// A request of exactly `len` bytes (at least [`REMOVE`]): a removal of a
/// trader whose id fills it.
fn request(len: usize) -> String {
    format!(r#"{{"cmd":"remove","id":"{}"}}"#, "x".repeat(len - REMOVE))
}

/// A stand-in for the coordinator's loop: answers each request (a removal)
/// naming the trader removed, and counts the requests that reached it.
fn stand_in(reached: &AtomicUsize) -> impl Fn(ControlRequest) -> Handed + Sync + '_ {
    move |req: ControlRequest| {
        reached.fetch_add(1, Ordering::Relaxed);
        let removed = match req.request {
            Request::Remove(id) => id,
            _ => String::new(),
        };
        let _ = req.reply.send(Answer::Removed(Removed {
            removed,
            from: RemovedFrom::Slot {
                slot: 0,
                last_batch_at: None,
            },
            persisted: true,
        }));
        Handed::Queued
    }
}

/// The length of the request a stand-in answer is for.
fn len_of(answer: &serde_json::Value) -> Option<usize> {
    answer["removed"].as_str().map(|id| id.len() + REMOVE)
}

/// Sends `bytes` on one end of a socket pair served by [`serve`] with
/// the stand-in: the answer lines, and how many requests reached it.
fn served(bytes: Vec<u8>) -> (Vec<serde_json::Value>, usize) {
    let (client, server) = UnixStream::pair().expect("a socket pair");
    let mut writer = client.try_clone().expect("clone");
    let reached = AtomicUsize::new(0);
    let answers = std::thread::scope(|s| {
        s.spawn(move || {
            // The server may stop reading once it has refused the line.
            let _ = writer.write_all(&bytes);
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let reader = s.spawn(move || {
            let mut answers = String::new();
            let _ = (&client).read_to_string(&mut answers);
            answers
        });
        serve(&server, &stand_in(&reached)).expect("served");
        drop(server);
        reader.join().expect("reader")
    });
    let answers = answers
        .lines()
        .map(|l| serde_json::from_str(l).expect("an answer is JSON"))
        .collect();
    (answers, reached.load(Ordering::Relaxed))
}

fn line(len: usize) -> Vec<u8> {
    let mut bytes = request(len).into_bytes();
    bytes.push(b'\n');
    bytes
}

#[test]
fn the_server_takes_a_line_of_max_request_bytes_and_refuses_one_more() {
    // Exactly the limit, its newline not counted: the loop answers it.
    let (answers, reached) = served(line(MAX_REQUEST));
    assert_eq!(answers.len(), 1);
    assert_eq!(len_of(&answers[0]), Some(MAX_REQUEST));
    assert_eq!(reached, 1);
    // One byte more: refused with the request's own length, unseen by
    // the loop.
    let (answers, reached) = served(line(MAX_REQUEST + 1));
    assert_eq!(reached, 0, "{answers:?}");
    let error = answers[0]["error"].as_str().expect("an error");
    assert!(
        error.starts_with(
            "the request is 1048577 bytes, over the control socket's limit of 1048576 bytes"
        ),
        "{error}"
    );
    // Far past it (read on without being kept): the whole length.
    let (answers, reached) = served(line(3 * MAX_REQUEST + 5));
    assert_eq!(reached, 0);
    let error = answers[0]["error"].as_str().expect("an error");
    assert!(error.starts_with("the request is 3145733 bytes"), "{error}");
    // A carriage return before the newline is part of the line.
    let mut crlf = request(MAX_REQUEST).into_bytes();
    crlf.extend_from_slice(b"\r\n");
    assert_eq!(served(crlf).1, 0);
}

#[test]
fn the_client_checks_the_same_limit_as_the_server() {
    let (client, server) = UnixStream::pair().expect("a socket pair");
    let mut asking = ControlClient {
        reader: BufReader::new(client),
        path: PathBuf::from("socket-pair"),
    };
    let reached = AtomicUsize::new(0);
    let (at, over) = std::thread::scope(|s| {
        let served = s.spawn(|| serve(&server, &stand_in(&reached)));
        let at = asking.ask(&request(MAX_REQUEST));
        let over = asking.ask(&request(MAX_REQUEST + 1));
        drop(asking);
        served.join().expect("server").expect("served");
        (at, over)
    });
    // At the limit: sent, and answered by the loop.
    assert_eq!(
        len_of(&at.expect("a request of MAX_REQUEST bytes is taken")),
        Some(MAX_REQUEST)
    );
    // One more: refused by the client itself, naming its length; the
    // server never saw it.
    let error = format!("{:#}", over.expect_err("refused"));
    assert!(error.starts_with("the request is 1048577 bytes"), "{error}");
    assert_eq!(reached.load(Ordering::Relaxed), 1);
    // And before connecting.
    let error = ask(Path::new("/nonexistent"), &request(MAX_REQUEST + 1)).expect_err("refused");
    assert!(
        format!("{error:#}").starts_with("the request is 1048577 bytes"),
        "{error:#}"
    );
}
