//! The emitter's unit tests: the live incarnation, a full stdout queue,
//! a durable sink falling behind and caught up.

use super::super::sink::SinkSpec;
use super::*;
use protocol::Interval;

fn signal(trader: &str, open_time: i64) -> Signal {
    Signal {
        trader: trader.into(),
        symbol: "BTCUSDT".into(),
        interval: Interval::M1,
        open_time,
        close: 1.0,
        labels: Default::default(),
        values: Default::default(),
    }
}

#[test]
fn prints_once_what_the_live_incarnation_of_a_holding_slot_sends() {
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let e = Emitter::new(2, tx, Arc::default());
    e.holds(0, ["a", "b"].into_iter());
    e.accept(0, Some(3));
    e.published(60_000);
    e.signal(0, 3, &signal("a", 0));
    e.signal(0, 3, &signal("a", 0)); // a repeat (a replacement re-sent it)
    e.signal(0, 2, &signal("b", 0)); // an incarnation already replaced
    e.signal(1, 0, &signal("b", 0)); // a slot with no live incarnation
    e.holds(0, ["a"].into_iter());
    e.signal(0, 3, &signal("b", 60_000)); // removed a moment ago
    e.signal(0, 3, &signal("a", 60_000));
    let lines: Vec<String> = rx
        .try_iter()
        .map(|b| String::from_utf8_lossy(&b.text).into_owned())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("\"trader\":\"a\"")));
    let f = e.figures();
    assert_eq!((f.emitted, f.duplicates), (2, 1));
    assert_eq!(f.latency_samples, 1, "only the candle with a publish time");
    assert_eq!(e.received(0), 4);
    // A pass's burst: one queue entry, its lines in order, repeats out.
    e.signals(
        0,
        3,
        &[signal("a", 120_000), signal("a", 0), signal("a", 180_000)],
    );
    let batch: Vec<String> = rx
        .try_iter()
        .map(|b| String::from_utf8_lossy(&b.text).into_owned())
        .collect();
    assert_eq!(batch.len(), 1);
    let lines: Vec<&str> = batch[0].lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].contains("120000") && lines[1].contains("180000"));
    e.close_output();
    e.signal(0, 3, &signal("a", 240_000));
    assert!(rx.try_iter().next().is_none(), "closed");
}

#[test]
fn a_full_queue_makes_the_reader_wait_and_teardown_gives_up() {
    use std::sync::Arc;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let e = Arc::new(Emitter::new(1, tx, Arc::default()));
    e.holds(0, ["a"].into_iter());
    e.accept(0, Some(1));
    e.signal(0, 1, &signal("a", 0)); // the queue is full now
    assert!(!e.output_stalled(Duration::ZERO));
    let reader = {
        let e = e.clone();
        std::thread::spawn(move || e.signal(0, 1, &signal("a", 60_000)))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !e.output_stalled(Duration::ZERO) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        e.output_stalled(Duration::ZERO),
        "the reader waits for room"
    );
    let first = String::from_utf8_lossy(&rx.recv().expect("the first batch").text).into_owned();
    reader.join().expect("the reader got room and went on");
    let second = String::from_utf8_lossy(&rx.recv().expect("the second batch, not dropped").text)
        .into_owned();
    assert!(first.contains("\"open_time\":0") && second.contains("60000"));
    assert!(
        e.output_stalled(Duration::from_secs(60)),
        "within the grace"
    );
    assert!(!e.output_stalled(Duration::ZERO), "no one waits now");
    // Teardown with nobody reading: a waiting reader gives up in time.
    e.signal(0, 1, &signal("a", 120_000));
    e.give_up_after(Duration::from_millis(50));
    let started = Instant::now();
    e.signal(0, 1, &signal("a", 180_000));
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(rx.try_iter().count(), 1, "the last batch was dropped");
    let (emitted, output) = e.delivery();
    assert_eq!((emitted, output.lost()), (4, 1), "and counted as lost");
}

/// A durable sink whose queue is full is behind: it is handed nothing
/// while stdout and the other sinks go on, and nobody waits; once it has
/// drained, the slots judge again from where they stood when it fell
/// behind, and it takes exactly what it missed.
#[test]
fn a_full_durable_sink_falls_behind_and_is_caught_up_once_drained() {
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let e = Emitter::new(1, tx, Arc::default());
    let (slow_tx, slow_rx) = std::sync::mpsc::channel();
    let slow = Arc::new(Output::default());
    let spec = SinkSpec::File("/x".into());
    e.add_sink(spec, Dedup::default(), slow_tx, slow.clone(), 3);
    let (ok_tx, ok_rx) = std::sync::mpsc::channel();
    let ok = Arc::new(Output::default());
    let spec = SinkSpec::File("/y".into());
    e.add_sink(spec, Dedup::default(), ok_tx, ok.clone(), 100);
    e.holds(0, ["a"].into_iter());
    e.accept(0, Some(1));
    e.signals(0, 1, &[signal("a", 0), signal("a", 60_000)]);
    e.confirmed(0, 7);
    assert_eq!(slow.queued(), 2, "under the bound: handed");
    // Two more would make four queued, over the bound of three.
    e.signals(0, 1, &[signal("a", 120_000), signal("a", 180_000)]);
    e.signal(0, 1, &signal("a", 240_000));
    assert_eq!((slow.queued(), slow.behind()), (2, 3));
    assert!(!e.output_stalled(Duration::ZERO), "nobody waited");
    assert!(e.any_behind());
    assert_eq!(e.take_catch_up(), None, "not drained yet");
    let lines = |rx: &std::sync::mpsc::Receiver<Batch>| {
        rx.try_iter()
            .map(|b| String::from_utf8_lossy(&b.text).into_owned())
            .collect::<String>()
    };
    assert_eq!(lines(&slow_rx).lines().count(), 2);
    assert_eq!(lines(&ok_rx).lines().count(), 5);
    assert_eq!(rx.try_iter().map(|b| b.lines).sum::<u64>(), 5, "stdout");
    // Durable sink `k` (after stdout) as `status` shows it.
    let durable = |k: usize| {
        e.sinks_status()[k]
            .durable()
            .cloned()
            .expect("a durable sink")
    };
    let status = durable(1);
    assert!(status.is_behind);
    assert!(
        status
            .delivery
            .last_error
            .as_deref()
            .is_some_and(|t| t.contains("--sink-queue")),
        "{status:?}"
    );
    // Drained: caught up from the publish slot 0 had confirmed then.
    slow.count(2, true);
    assert_eq!(e.take_catch_up(), Some(vec![7]));
    assert!(
        e.any_behind(),
        "catching up until the workers have judged again"
    );
    e.signal(0, 1, &signal("a", 300_000));
    assert_eq!(slow.queued(), 0, "the old incarnation no longer counts");
    // Its replacement judges again from there: the slow sink takes what
    // it missed, every other output drops the repeats.
    e.accept(0, Some(2));
    e.signals(0, 2, &[signal("a", 120_000), signal("a", 180_000)]);
    slow.count(2, true);
    e.signals(0, 2, &[signal("a", 240_000), signal("a", 300_000)]);
    let caught = lines(&slow_rx);
    assert_eq!(caught.lines().count(), 4, "{caught}");
    assert!(caught.lines().next().is_some_and(|l| l.contains("120000")));
    assert_eq!(lines(&ok_rx).lines().count(), 1, "only the new one");
    assert_eq!(rx.try_iter().map(|b| b.lines).sum::<u64>(), 1);
    assert_eq!(durable(1).catch_ups, 1);
    assert!(durable(1).catching_up);
    // A trader leaving while a sink catches up is named for it.
    e.holds(0, std::iter::empty());
    assert_eq!(durable(1).lost_traders, ["a"]);
    assert!(durable(2).lost_traders.is_empty());
    e.caught_up();
    assert!(!e.any_behind());
}
