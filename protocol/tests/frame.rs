//! Frames round-trip, and no input makes the decoder panic: arbitrary bytes,
//! and arbitrary payloads behind a valid header (the case a plain fuzzer
//! rarely reaches). Run in CI as part of `cargo test`.

#![cfg(not(loom))]

use std::collections::BTreeMap;

use proptest::prelude::*;
use protocol::frame::{
    FrameError, HEADER_LEN, MAGIC, MAX_FRAME, MAX_SIGNAL, PROTOCOL_VERSION, SignalTooLarge, decode,
    encode, encode_signals, signal_len,
};
use protocol::message::{Init, Kind, Message, Pong, Ready, Released, RequestId, Signal};
use protocol::trader::{Symbols, TraderSpec};
use protocol::{Interval, SymbolName};

fn interval() -> impl Strategy<Value = Interval> {
    proptest::sample::select(Interval::ALL.to_vec())
}

fn name(s: &str) -> SymbolName {
    SymbolName::new(s).expect("a valid symbol")
}

/// Any symbol name an exchange could list.
fn symbol_name() -> impl Strategy<Value = SymbolName> {
    "[A-Z0-9]{2,20}".prop_map(|s| name(&s))
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..4)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (".{0,32}", any::<u64>(), any::<u32>()).prop_map(|(instance, generation, worker_id)| {
            Message::Init(Init {
                instance,
                generation,
                worker_id,
            })
        }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(worker_id, pid)| Message::Ready(Ready { worker_id, pid })),
        (
            ".{0,64}",
            any::<u32>(),
            proptest::option::of(proptest::collection::vec(symbol_name(), 0..5)),
            interval(),
            ".{0,80}",
            any::<u32>(),
            labels()
        )
            .prop_map(|(id, version, symbols, interval, rule, cooldown, labels)| {
                Message::AddTrader {
                    spec: TraderSpec {
                        id,
                        version,
                        symbols: symbols.map_or(Symbols::All, Symbols::List),
                        interval,
                        rule,
                        cooldown,
                        labels,
                    },
                    resume_after: u64::from(version),
                }
            }),
        ".{0,64}".prop_map(|id| Message::RemoveTrader { id }),
        Just(Message::Ack),
        ".{0,200}".prop_map(|reason| Message::Nack { reason }),
        Just(Message::Ping),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(traders, last_publish, uptime_ms, rss_bytes, signals, gaps)| {
                    Message::Pong(Pong {
                        passes: 1,
                        judged: 4,
                        signal_frames: 5,
                        largest_signal_frame: 6,
                        pass_p50_us: 2,
                        pass_p99_us: 3,
                        pass_histogram: Default::default(),
                        traders,
                        last_publish,
                        uptime_ms,
                        rss_bytes,
                        signals,
                        gaps,
                    })
                }
            ),
        Just(Message::Cleanup),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(traders, threads, cursors)| {
            Message::CleanupComplete(Released {
                traders,
                threads,
                cursors,
            })
        }),
        (
            ".{0,64}",
            "[A-Z]{1,12}",
            interval(),
            any::<i64>(),
            -1e9f64..1e9,
            labels()
        )
            .prop_map(|(trader, symbol, interval, open_time, close, labels)| {
                Message::Signal(Signal {
                    trader,
                    symbol,
                    interval,
                    open_time,
                    close,
                    values: labels.keys().map(|k| (k.clone(), close)).collect(),
                    labels,
                })
            }),
        proptest::collection::vec(("[a-z0-9-]{1,16}", any::<i64>(), -1e9f64..1e9), 0..8).prop_map(
            |signals| Message::Signals(
                signals
                    .into_iter()
                    .map(|(trader, open_time, close)| Signal {
                        trader,
                        symbol: "BTCUSDT".into(),
                        interval: Interval::M1,
                        open_time,
                        close,
                        labels: Default::default(),
                        values: [("rsi(14)".to_owned(), close)].into(),
                    })
                    .collect()
            )
        ),
    ]
}

/// Signals from the smallest (the most claimed memory per encoded byte) to
/// ones with many values and labels.
fn signal() -> impl Strategy<Value = Signal> {
    (
        "[a-z0-9]{1,64}",
        "[A-Z]{1,31}",
        interval(),
        any::<i64>(),
        any::<f64>(),
        proptest::collection::btree_map("[a-z]{0,8}", ".{0,12}", 0..6),
        proptest::collection::btree_map("[a-z(), 0-9]{0,24}", any::<f64>(), 0..12),
    )
        .prop_map(
            |(trader, symbol, interval, open_time, close, labels, values)| Signal {
                trader,
                symbol,
                interval,
                open_time,
                close: if close.is_nan() { 0.0 } else { close },
                labels,
                values: values
                    .into_iter()
                    .map(|(k, v)| (k, if v.is_nan() { 0.0 } else { v }))
                    .collect(),
            },
        )
}

/// The signal that claims the most decode memory per byte: one-byte strings,
/// no labels or values.
fn tiny_signal(open_time: i64) -> Signal {
    Signal {
        trader: "t".into(),
        symbol: "B".into(),
        interval: Interval::M1,
        open_time,
        close: 0.0,
        labels: BTreeMap::new(),
        values: BTreeMap::new(),
    }
}

/// Messages sized from nothing to past a frame: the limit is reached.
fn large_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (0usize..5000).prop_map(|n| Message::Signals((0..n as i64).map(tiny_signal).collect())),
        proptest::collection::vec(signal(), 0..600).prop_map(Message::Signals),
        (0usize..MAX_FRAME + 64).prop_map(|n| Message::Nack {
            reason: "x".repeat(n)
        }),
        (0usize..8000).prop_map(|n| Message::AddTrader {
            spec: TraderSpec {
                id: "big".into(),
                version: 1,
                symbols: Symbols::List((0..n).map(|k| name(&format!("S{k}"))).collect()),
                interval: Interval::M1,
                rule: "close > 1".into(),
                cooldown: 0,
                labels: BTreeMap::new(),
            },
            resume_after: u64::MAX,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// What the encoder produces, the decoder accepts, up to the frame limit.
    #[test]
    fn every_message_that_fits_a_frame_decodes_back_equal(id in any::<u64>(), msg in large_message()) {
        match encode(RequestId(id), &msg) {
            Ok(frame) => {
                prop_assert!(frame.len() <= MAX_FRAME);
                prop_assert_eq!(decode(&frame), Ok((RequestId(id), msg)));
            }
            Err(e) => prop_assert!(matches!(e, FrameError::TooLarge { .. }), "{e}"),
        }
    }

    /// A burst of any size goes out in as many frames as it needs, in order,
    /// each frame exactly what `encode` makes of its signals.
    #[test]
    fn bursts_are_packed_in_order_into_frames_that_decode(
        signals in proptest::collection::vec(signal(), 0..800),
        tiny in 0usize..6000,
        start in 0u64..1000,
    ) {
        let mut all = signals;
        all.extend((0..tiny as i64).map(tiny_signal));
        let mut next = start;
        let mut frames = Vec::new();
        encode_signals(&mut next, &all, &mut frames).expect("every signal fits");
        prop_assert_eq!(next, start + frames.len() as u64);
        let mut back = Vec::new();
        for (k, frame) in frames.iter().enumerate() {
            prop_assert!(frame.len() <= MAX_FRAME);
            let (id, msg) = decode(frame).expect("decodes");
            prop_assert_eq!(id, RequestId(start + 1 + k as u64));
            let Message::Signals(batch) = msg else { panic!("not SIGNALS") };
            prop_assert!(!batch.is_empty());
            prop_assert_eq!(&encode(id, &Message::Signals(batch.clone())).expect("encodes"), frame);
            back.extend(batch);
        }
        prop_assert_eq!(back, all);
    }
}

#[test]
fn a_full_frame_of_the_smallest_signals_decodes() {
    // The regression: a 36 KB batch of small signals was refused on decode
    // (bincode counted the 8 bytes each one-byte varint claims against a
    // 64 KiB limit), and the worker crash-looped on it.
    let batch = |n: i64| Message::Signals((0..n).map(tiny_signal).collect());
    // The largest batch that encodes, by bisection.
    let (mut fits, mut over) = (1i64, 1i64 << 16);
    while over - fits > 1 {
        let mid = (fits + over) / 2;
        if encode(RequestId(1), &batch(mid)).is_ok() {
            fits = mid;
        } else {
            over = mid;
        }
    }
    let frame = encode(RequestId(1), &batch(fits)).expect("encodes");
    let largest = frame.len();
    assert_eq!(decode(&frame), Ok((RequestId(1), batch(fits))));
    assert!(
        largest > MAX_FRAME - 200,
        "the limit was reached: {largest}"
    );
}

#[test]
fn a_signal_too_large_for_a_frame_stops_the_packing_there() {
    let mut big = tiny_signal(5);
    big.trader = "culprit".into();
    big.labels.insert("k".into(), "v".repeat(MAX_SIGNAL));
    assert!(signal_len(&big) > MAX_SIGNAL);
    let signals = vec![tiny_signal(1), tiny_signal(2), big, tiny_signal(3)];
    let mut next = 0;
    let mut frames = Vec::new();
    let err = encode_signals(&mut next, &signals, &mut frames).expect_err("too large");
    assert_eq!((err.index, err.trader.as_str()), (2, "culprit"), "{err:?}");
    assert!(err.to_string().contains("culprit"));
    assert_eq!(frames.len(), 1, "the two before it were framed");
    let Ok((_, Message::Signals(sent))) = decode(&frames[0]) else {
        panic!("a SIGNALS frame")
    };
    assert_eq!(sent, signals[..2].to_vec());
    let _: Option<SignalTooLarge> = None;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(id in any::<u64>(), msg in message()) {
        let frame = encode(RequestId(id), &msg).expect("encodes");
        prop_assert!(frame.len() <= MAX_FRAME);
        prop_assert_eq!(decode(&frame), Ok((RequestId(id), msg)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_payload_behind_a_valid_header_never_panics(
        kind in 1u16..=12,
        id in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut frame = Vec::new();
        frame.extend_from_slice(&MAGIC);
        frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        frame.extend_from_slice(&kind.to_le_bytes());
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(&payload);
        let _ = decode(&frame);
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_an_error(msg in message(), cut in any::<prop::sample::Index>()) {
        let frame = encode(RequestId(7), &msg).expect("encodes");
        let at = cut.index(frame.len());
        prop_assert!(decode(&frame[..at]).is_err());
    }
}

#[test]
fn each_bad_header_has_its_own_error() {
    let good = encode(RequestId(1), &Message::Ping).expect("encodes");
    assert_eq!(decode(&good[..5]), Err(FrameError::Truncated { len: 5 }));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(decode(&bad), Err(FrameError::BadMagic { .. })));
    let mut bad = good.clone();
    bad[4] = 9;
    assert_eq!(
        decode(&bad),
        Err(FrameError::UnsupportedVersion { found: 9 })
    );
    let mut bad = good.clone();
    bad[6] = 99;
    assert_eq!(decode(&bad), Err(FrameError::UnknownKind { found: 99 }));
    let mut bad = good.clone();
    bad[6] = Kind::Ack as u8;
    assert_eq!(
        decode(&bad),
        Err(FrameError::KindMismatch {
            header: Kind::Ack,
            payload: Kind::Ping
        })
    );
    let mut bad = good.clone();
    bad.push(0);
    assert_eq!(decode(&bad), Err(FrameError::TrailingBytes(1)));
    let huge = vec![0u8; MAX_FRAME + 1];
    assert_eq!(
        decode(&huge),
        Err(FrameError::TooLarge { len: MAX_FRAME + 1 })
    );
    let big = Message::Nack {
        reason: "x".repeat(MAX_FRAME),
    };
    assert!(matches!(
        encode(RequestId(1), &big),
        Err(FrameError::TooLarge { .. }) | Err(FrameError::Payload(_))
    ));
    assert_eq!(HEADER_LEN, 16);
}

#[test]
fn kinds_have_names_for_knobs() {
    assert_eq!(Kind::from_name("add_trader"), Some(Kind::AddTrader));
    assert_eq!(Kind::from_name("PING"), Some(Kind::Ping));
    assert_eq!(Kind::from_name("nope"), None);
}
