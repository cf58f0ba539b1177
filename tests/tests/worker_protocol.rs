//! The worker's side of the protocol, driven directly: this test process
//! plays the coordinator (it is the worker's parent, as the worker checks).

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{ChildGuard, TestInstance, bin};
use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcOneShotServer};
use protocol::Interval;
use protocol::bootstrap::Bootstrap;
use protocol::frame::{decode, encode};
use protocol::message::{Init, Message, RequestId};
use protocol::store::{StoreConfig, StoreWriter};
use protocol::trader::{Symbols, TraderSpec};

struct Peer {
    to: IpcBytesSender,
    from: IpcBytesReceiver,
    next: u64,
}

impl Peer {
    fn call(&mut self, message: Message) -> (RequestId, Message) {
        self.next += 1;
        let id = RequestId(self.next);
        self.to
            .send(&encode(id, &message).expect("encode"))
            .expect("send");
        let bytes = self.from.recv().expect("an answer");
        let (answer_id, answer) = decode(&bytes).expect("the worker's answer decodes");
        assert_eq!(answer_id, id, "the answer carries the request's id");
        (answer_id, answer)
    }
}

fn spec(id: &str, version: u32, rule: &str) -> TraderSpec {
    TraderSpec {
        id: id.into(),
        version,
        symbols: Symbols::All,
        interval: Interval::M1,
        rule: rule.into(),
        cooldown: 0,
        labels: Default::default(),
    }
}

fn traders(peer: &mut Peer) -> u32 {
    match peer.call(Message::Ping).1 {
        Message::Pong(p) => p.traders,
        other => panic!("expected PONG, got {other:?}"),
    }
}

#[test]
fn init_add_nack_idempotency_remove_cleanup() {
    let inst = TestInstance::new("wp");
    let config = StoreConfig::uniform(2, &[Interval::M1], 64);
    let store = StoreWriter::create(&inst.name, &config).expect("store");
    let (server, name) = IpcOneShotServer::<Bootstrap>::new().expect("bootstrap server");
    let mut cmd = Command::new(bin("shmkline-worker"));
    cmd.args([
        "--instance",
        inst.name.as_str(),
        "--bootstrap",
        &name,
        "--worker-id",
        "0",
    ])
    .args(["--coordinator-pid", &std::process::id().to_string()])
    .stdin(Stdio::null());
    let worker = ChildGuard::spawn(&mut cmd);
    let (_boot, channels) = server.accept().expect("the worker connects");
    let Bootstrap::Channels {
        to_worker,
        from_worker,
    } = channels
    else {
        panic!("expected channels")
    };
    let mut peer = Peer {
        to: to_worker,
        from: from_worker,
        next: 0,
    };

    // A wrong generation is refused: the worker will not run on a stale store.
    let wrong = Init {
        instance: inst.name.to_string(),
        generation: store.generation() ^ 1,
        worker_id: 0,
    };
    match peer.call(Message::Init(wrong)).1 {
        Message::Nack { reason } => assert!(reason.contains("stale segment"), "{reason}"),
        other => panic!("expected NACK, got {other:?}"),
    }
    let init = Init {
        instance: inst.name.to_string(),
        generation: store.generation(),
        worker_id: 0,
    };
    assert!(matches!(peer.call(Message::Init(init)).1, Message::Ready(r) if r.pid == worker.pid()));

    // An invalid rule is refused with the reason, and changes nothing.
    match peer
        .call(Message::AddTrader {
            spec: spec("bad", 1, "rsi(14) <"),
            resume_after: 0,
        })
        .1
    {
        Message::Nack { reason } => assert!(
            reason.contains("line 1, column 10: expected a number"),
            "{reason}"
        ),
        other => panic!("expected NACK, got {other:?}"),
    }
    assert_eq!(traders(&mut peer), 0);

    // The same trader twice (a retry): acknowledged twice, held once.
    let good = spec("t1", 1, "crosses_above(close, sma(close, 5))");
    assert_eq!(
        peer.call(Message::AddTrader {
            spec: good.clone(),
            resume_after: 0
        })
        .1,
        Message::Ack
    );
    assert_eq!(
        peer.call(Message::AddTrader {
            spec: good,
            resume_after: 0
        })
        .1,
        Message::Ack
    );
    assert_eq!(traders(&mut peer), 1);
    // A trader on an interval the store does not keep is refused.
    let mut hourly = spec("t2", 1, "crosses_above(close, sma(close, 5))");
    hourly.interval = Interval::H1;
    assert!(matches!(
        peer.call(Message::AddTrader {
            spec: hourly,
            resume_after: 0
        })
        .1,
        Message::Nack { .. }
    ));

    assert_eq!(
        peer.call(Message::RemoveTrader { id: "t1".into() }).1,
        Message::Ack
    );
    assert_eq!(
        peer.call(Message::RemoveTrader { id: "t1".into() }).1,
        Message::Ack,
        "idempotent"
    );
    assert_eq!(traders(&mut peer), 0);

    // A request a worker does not serve is refused, not a crash.
    assert!(matches!(peer.call(Message::Ack).1, Message::Nack { .. }));

    match peer.call(Message::Cleanup).1 {
        Message::CleanupComplete(released) => {
            assert_eq!(released.threads, 1, "the evaluation thread was stopped")
        }
        other => panic!("expected CLEANUP_COMPLETE, got {other:?}"),
    }
    let (status, _) = worker.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "the worker exits 0 after CLEANUP: {status:?}"
    );
    drop(store);
    inst.assert_clean();
}

#[test]
fn a_worker_whose_parent_is_not_the_coordinator_exits() {
    let out = Command::new(bin("shmkline-worker"))
        .args([
            "--instance",
            "x",
            "--bootstrap",
            "/nonexistent",
            "--worker-id",
            "0",
            "--coordinator-pid",
            "1",
        ])
        .output()
        .expect("run worker");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("parent is not the coordinator"));
}
