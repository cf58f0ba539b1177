//! Frames round-trip, and no input makes the decoder panic: arbitrary bytes,
//! and arbitrary payloads behind a valid header (the case a plain fuzzer
//! rarely reaches). Run in CI as part of `cargo test`.

#![cfg(not(loom))]

use std::collections::BTreeMap;

use proptest::prelude::*;
use protocol::Interval;
use protocol::frame::{FrameError, HEADER_LEN, MAGIC, MAX_FRAME, PROTOCOL_VERSION, decode, encode};
use protocol::message::{Init, Kind, Message, Pong, Ready, Released, RequestId, Signal};
use protocol::trader::{Symbols, TraderSpec};

fn interval() -> impl Strategy<Value = Interval> {
    proptest::sample::select(Interval::ALL.to_vec())
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
            proptest::option::of(proptest::collection::vec("[A-Z]{1,10}", 0..5)),
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
                        pass_p50_us: 2,
                        pass_p99_us: 3,
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
