//! Fuzzing targets: every input that reaches the engine from outside, each
//! fed to the production function that reads it (the mutation fuzzer that
//! runs them at volume on stable Rust is `volume`).
//!
//! A target must never panic, whatever the bytes; where a cheap property
//! holds (a frame re-encodes to itself, a parsed sink spec prints back to
//! what parses the same), the target checks it too, so a violation is a
//! crash like any other. `tests/fuzz/` runs the same targets under
//! libFuzzer (`cargo fuzz`), `scripts/fuzz.sh` drives both, and every
//! input that ever failed is kept in `tests/fuzz/regressions/<target>/`.

use std::path::Path;

use protocol::trader::{Symbols, TraderSpec};
use protocol::{InstanceName, Interval, SymbolName};

use crate::feed::binance::{CsvFile, parse_rest, parse_ws};

mod volume;

pub use volume::{VolumeReport, regressions, volume};

/// One fuzzing target.
pub struct Target {
    /// Its name (`scripts/fuzz.sh TARGET`, the corpus directories).
    pub name: &'static str,
    /// What it reads.
    pub what: &'static str,
    /// Runs one input; panics only on a defect.
    pub run: fn(&[u8]),
    /// Valid inputs to start from (made by the production encoders where
    /// there are some).
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Words worth splicing in.
    pub dictionary: &'static [&'static str],
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "ipc_frame",
        what: "IPC frames between the coordinator and a worker",
        run: ipc_frame,
        seeds: frame_seeds,
        dictionary: &[],
    },
    Target {
        name: "rule",
        what: "trader rule text, admitted and evaluated over candles",
        run: rule,
        seeds: rule_seeds,
        dictionary: RULE_WORDS,
    },
    Target {
        name: "trader_json",
        what: "trader files (JSON)",
        run: trader_json,
        seeds: trader_json_seeds,
        dictionary: JSON_WORDS,
    },
    Target {
        name: "trader_toml",
        what: "trader files (TOML)",
        run: trader_toml,
        seeds: trader_toml_seeds,
        dictionary: TOML_WORDS,
    },
    Target {
        name: "replay_csv",
        what: "replay CSV lines (Binance dumps)",
        run: replay_csv,
        seeds: csv_seeds,
        dictionary: &[",", "\n", "open_time", "1e400", "-0", "NaN", "inf"],
    },
    Target {
        name: "ws_message",
        what: "live WebSocket messages and JSON-lines replay payloads",
        run: ws_message,
        seeds: ws_seeds,
        dictionary: JSON_WORDS,
    },
    Target {
        name: "rest_rows",
        what: "live REST kline rows (backfill)",
        run: rest_rows,
        seeds: rest_seeds,
        dictionary: JSON_WORDS,
    },
    Target {
        name: "control_request",
        what: "control-socket request lines",
        run: control_request,
        seeds: control_seeds,
        dictionary: JSON_WORDS,
    },
    Target {
        name: "control_stream",
        what: "bytes on the control socket: lines, lengths, encodings",
        run: control_stream,
        seeds: control_stream_seeds,
        dictionary: &["\n", "status\n", "\r\n", "\u{0}", "\u{ff}"],
    },
    Target {
        name: "segment",
        what: "a foreign or stale shared-memory segment: header and tables",
        run: segment,
        seeds: segment_seeds,
        dictionary: &["SHMKLIN1"],
    },
    Target {
        name: "nats_candle",
        what: "candle messages from NATS",
        run: nats_candle,
        seeds: nats_seeds,
        dictionary: JSON_WORDS,
    },
    Target {
        name: "sink_spec",
        what: "--sink values",
        run: sink_spec,
        seeds: sink_seeds,
        dictionary: &[
            "file:",
            "webhook:",
            "webhook-batch:",
            "nats:",
            "http://",
            "https://",
            "@",
            ":",
        ],
    },
    Target {
        name: "config",
        what: "config files (TOML keys of `run`)",
        run: config,
        seeds: config_seeds,
        dictionary: TOML_WORDS,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

const JSON_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "false",
    "1e309",
    "-1",
    "0.0",
    "\"id\"",
    "\"rule\"",
    "\"symbols\"",
    "\"interval\"",
    "\"cmd\"",
    "\"add\"",
    "\"remove\"",
    "\"traders\"",
    "\"k\"",
    "\"kline\"",
    "\"stream\"",
    "\"data\"",
    "\"*\"",
    "\\u0000",
];
const TOML_WORDS: &[&str] = &[
    "=",
    "[[trader]]",
    "\n",
    "\"",
    "'''",
    "workers",
    "sink",
    "feed",
    "rule",
    "symbols",
    "interval",
    "1m",
    "[",
    "]",
    "{",
    "}",
    "true",
    "inf",
    "nan",
];
const RULE_WORDS: &[&str] = &[
    "close",
    "open",
    "high",
    "low",
    "volume",
    "sma(",
    "ema(",
    "rsi(",
    "macd(",
    "bbands(",
    "atr(",
    "crosses_above",
    "and",
    "or",
    "not",
    ">",
    "<",
    "==",
    "(",
    ")",
    ",",
    "[1]",
    "1e308",
    "-",
    "/",
    "0",
    "99999",
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A frame decodes, or says why not; one that decodes encodes to bytes
/// that decode and encode to the same bytes (bytes, not messages: a NaN
/// in a signal's values is a valid payload and never equals itself).
fn ipc_frame(data: &[u8]) {
    use protocol::frame::{decode, encode};
    if let Ok((id, message)) = decode(data) {
        let again = encode(id, &message).expect("a decoded message encodes");
        let (id2, back) = decode(&again).expect("an encoded frame decodes");
        let third = encode(id2, &back).expect("a decoded message encodes");
        assert_eq!(again, third, "a frame round trip");
    }
}

fn frame_seeds() -> Vec<Vec<u8>> {
    use protocol::frame::encode;
    use protocol::message::{Message, RequestId};
    let spec = crate::traders::defaults().remove(0);
    [
        Message::Ping,
        Message::Ack,
        Message::Cleanup,
        Message::Nack {
            reason: "no".to_owned(),
        },
        Message::RemoveTrader {
            id: "t1".to_owned(),
        },
        Message::AddTrader {
            spec,
            resume_after: 7,
        },
    ]
    .iter()
    .filter_map(|m| encode(RequestId(1), m).ok())
    .collect()
}

/// Rules of at most this lookback are evaluated too (the rest only
/// admitted): a fuzzing input must stay fast.
const EVAL_LOOKBACK: usize = 512;

/// A rule is admitted or refused; an admitted one judges a series of
/// candles without panicking.
fn rule(data: &[u8]) {
    let spec = TraderSpec {
        id: "fuzz".to_owned(),
        version: 1,
        symbols: Symbols::List(SymbolName::new("BTCUSDT").into_iter().collect()),
        interval: Interval::M1,
        rule: text(data).into_owned(),
        cooldown: 0,
        labels: Default::default(),
    };
    let Ok(rule) = protocol::admit::admit(&spec) else {
        return;
    };
    let Some(lookback) = rule.compiled().map(|c| c.lookback) else {
        return;
    };
    if lookback == 0 || lookback > EVAL_LOOKBACK {
        return;
    }
    let candles = wave(lookback + 40);
    // Differential: the evaluation graph (what workers and backtest run)
    // and the pointwise definition give the same bits at every candle.
    use worker::graph::program::Values;
    let Some(expr) = rule.compiled().map(|c| c.expr.clone()) else {
        return;
    };
    let mut graph = worker::graph::Graph::default();
    let Ok(compiled) = graph.add(&expr) else {
        return;
    };
    graph.plan(std::iter::once((&compiled, 0)));
    let nodes = graph.closure(&compiled.direct);
    let mut state = worker::graph::series::SeriesState::new(&graph, &nodes, 0);
    let mut memo = worker::point::Memo::new(64);
    for (i, c) in candles.iter().enumerate() {
        state.push(&graph, i as u64, *c);
        let end = i + 1;
        if end < lookback {
            continue;
        }
        let start = end - lookback;
        let window = &candles[start..end];
        let want = worker::verdict::signals_with(&rule, 0, window, start as u64, &mut memo);
        let got = compiled.program.eval(&state, i as u64) == 1.0;
        assert_eq!(
            got, want,
            "the graph's verdict at {i} differs from the definition's"
        );
        let values = worker::verdict::values_with(&rule, window, start as u64, &mut memo);
        for (text, node) in &compiled.values {
            let (got, want) = (state.node(*node, i as u64), values.get(text).copied());
            assert!(
                want.is_some_and(|w| w.to_bits() == got.to_bits() || w.is_nan() && got.is_nan()),
                "{text} at {i}: graph {got}, definition {want:?}"
            );
        }
    }
}

/// A series with flat stretches, jumps and a zero volume: the values that
/// divide by zero in a careless indicator.
fn wave(n: usize) -> Vec<protocol::Candle> {
    (0..n)
        .map(|i| {
            let base = match i % 17 {
                0..=4 => 100.0,
                5..=9 => 100.0 + (i as f64).sin() * 3.0,
                _ => 90.0 + (i % 5) as f64,
            };
            protocol::Candle {
                open_time: 60_000 * i as i64,
                open: base,
                high: base + (i % 3) as f64,
                low: base - (i % 2) as f64,
                close: base + 0.5 * ((i % 4) as f64 - 1.5),
                volume: if i % 11 == 0 { 0.0 } else { 10.0 + i as f64 },
            }
        })
        .collect()
}

fn rule_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = crate::traders::defaults()
        .into_iter()
        .map(|t| t.rule.into_bytes())
        .collect();
    seeds.push(b"close > sma(close, 20) and rsi(close, 14) < 30".to_vec());
    seeds
}

fn trader_json(data: &[u8]) {
    let _ = crate::traders::parse(&text(data), false, "fuzz.json");
}

fn trader_toml(data: &[u8]) {
    let _ = crate::traders::parse(&text(data), true, "fuzz.toml");
}

/// The default traders as a trader file writes them (`"*"` or a list).
fn trader_json_seeds() -> Vec<Vec<u8>> {
    let entries: Vec<serde_json::Value> = crate::traders::defaults()
        .into_iter()
        .map(|t| {
            let symbols = match t.symbols {
                Symbols::All => serde_json::json!("*"),
                Symbols::List(l) => serde_json::json!(l),
            };
            serde_json::json!({
                "id": t.id, "symbols": symbols, "interval": t.interval,
                "rule": t.rule, "cooldown": 2, "labels": { "side": "buy" },
            })
        })
        .collect();
    let one = entries.first().map(|e| e.to_string().into_bytes());
    let mut seeds = vec![serde_json::Value::Array(entries).to_string().into_bytes()];
    seeds.extend(one);
    seeds
}

fn trader_toml_seeds() -> Vec<Vec<u8>> {
    vec![
        b"id = \"a\"\nsymbols = \"*\"\ninterval = \"1m\"\nrule = \"close > open\"\n".to_vec(),
        b"[[trader]]\nid = \"a\"\nsymbols = [\"BTCUSDT\"]\ninterval = \"5m\"\nrule = \"close > sma(close, 3)\"\ncooldown = 2\n[trader.labels]\nside = \"buy\"\n".to_vec(),
    ]
}

/// Every line of the input through one file's parser (its unit and header
/// state carry from line to line, as in a file).
fn replay_csv(data: &[u8]) {
    let Ok(symbol) = SymbolName::new("BTCUSDT") else {
        return;
    };
    let mut file = CsvFile::new(symbol, Interval::M1);
    for line in text(data).split('\n') {
        let _ = file.parse_line(line);
    }
}

fn csv_seeds() -> Vec<Vec<u8>> {
    vec![
        b"open_time,open,high,low,close,volume,close_time\n1613692800000,51552.6,51580.0,51500.1,51521.9,45.2,1613692859999\n1613692860000,51521.9,51600.0,51521.9,51590.0,30.1,1613692919999\n".to_vec(),
        b"1613692800000000,51552.6,51580.0,51500.1,51521.9,45.2,1613692859999999,2331000.1,1000,20.1,1036000.5,0\n".to_vec(),
    ]
}

fn ws_message(data: &[u8]) {
    let _ = parse_ws(&text(data));
}

fn ws_seeds() -> Vec<Vec<u8>> {
    vec![
        br#"{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1613692860001,"s":"BTCUSDT","k":{"t":1613692800000,"T":1613692859999,"s":"BTCUSDT","i":"1m","o":"51552.6","c":"51521.9","h":"51580.0","l":"51500.1","v":"45.2","x":true}}}"#.to_vec(),
        br#"{"e":"kline","E":1613692860001,"s":"BTCUSDT","k":{"t":1613692800000,"T":1613692859999,"s":"BTCUSDT","i":"1m","o":"1","c":"1","h":"1","l":"1","v":"0","x":false}}"#.to_vec(),
        br#"{"result":null,"id":1}"#.to_vec(),
    ]
}

fn rest_rows(data: &[u8]) {
    let Ok(symbol) = SymbolName::new("BTCUSDT") else {
        return;
    };
    let _ = parse_rest(&text(data), &symbol, Interval::M1, 1_613_700_000_000);
}

fn rest_seeds() -> Vec<Vec<u8>> {
    vec![
        br#"[[1613692800000,"51552.6","51580.0","51500.1","51521.9","45.2",1613692859999,"2331000.1",1000,"20.1","1036000.5","0"],[1613692860000,"51521.9","51600.0","51521.9","51590.0","30.1",1613692919999,"1",1,"1","1","0"]]"#.to_vec(),
        b"[]".to_vec(),
    ]
}

/// A request line is understood or answered with an error; traders it
/// carries are admitted or refused as the loop does.
fn control_request(data: &[u8]) {
    if let Ok(crate::run::control::Request::Add(traders)) =
        crate::run::control::Request::parse(&text(data))
    {
        for t in &traders {
            let _ = protocol::admit::admit(t);
        }
    }
}

fn control_seeds() -> Vec<Vec<u8>> {
    let add = crate::run::control::Request::Add(crate::traders::defaults());
    vec![
        b"status".to_vec(),
        b"traders".to_vec(),
        br#"{"cmd":"remove","id":"t1"}"#.to_vec(),
        add.to_line().into_bytes(),
    ]
}

/// The bytes as a client sends them, served by the socket's own reader
/// (a stand-in loop answers each parsed request): every line answered or
/// the connection closed, never a panic or a hang.
fn control_stream(data: &[u8]) {
    use crate::run::control::{ControlRequest, Handed, serve};
    use std::io::{Read, Write};
    let Ok((client, server)) = std::os::unix::net::UnixStream::pair() else {
        return;
    };
    let Ok(mut writer) = client.try_clone() else {
        return;
    };
    let input = data.to_vec();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&input);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut reader = client;
    let drain = std::thread::spawn(move || {
        let mut answers = Vec::new();
        let _ = reader.read_to_end(&mut answers);
        answers
    });
    // Each request answered with its kind (a refusal is the one answer
    // that carries words).
    let answer = |req: ControlRequest| {
        let kind = format!("{:?}", req.request.kind());
        let _ = req.reply.send(protocol::control::Answer::refused(kind));
        Handed::Queued
    };
    let _ = serve(&server, &answer);
    drop(server);
    let _ = sender.join();
    if let Ok(answers) = drain.join() {
        for line in answers.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(
                serde_json::from_slice::<serde_json::Value>(line).is_ok(),
                "every answer is a JSON line"
            );
        }
    }
}

fn control_stream_seeds() -> Vec<Vec<u8>> {
    vec![
        b"status\nping\n".to_vec(),
        b"{\"cmd\":\"remove\",\"id\":\"t1\"}\ntraders\n".to_vec(),
        b"status\r\n\xff\xfe\n".to_vec(),
    ]
}

/// The bytes as the segment of an instance of this process: opened and,
/// when its header passes, every table and series read.
fn segment(data: &[u8]) {
    // One name per input: tests fuzz from several threads, and one
    // thread's write must not truncate a segment another has mapped.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(instance) = InstanceName::new(&format!("fuzzseg{}-{n}", std::process::id())) else {
        return;
    };
    let path = segment_path(&instance);
    struct Unlink<'a>(&'a Path);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _unlink = Unlink(&path);
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(reader) = protocol::store::StoreReader::open(&instance) else {
        return;
    };
    let _ = (reader.symbol_count(), reader.writer_pid(), reader.info());
    let mut out = Vec::new();
    for (id, name) in reader.symbols_with_ids() {
        // A corrupt table may list a name its lookup does not find: no
        // property to hold there, only no panic.
        let _ = reader.symbol_id(&name);
        for &interval in reader.intervals() {
            let Ok(series) = reader.series(id, interval) else {
                continue;
            };
            let _ = reader.appended(series);
            let _ = reader.latest(series);
            let _ = reader.last_n(series, 64, &mut out);
        }
    }
}

/// Where `instance`'s segment lives as a file.
fn segment_path(instance: &InstanceName) -> std::path::PathBuf {
    Path::new("/dev/shm").join(instance.segment_name().trim_start_matches('/'))
}

fn segment_seeds() -> Vec<Vec<u8>> {
    use protocol::store::StoreConfig;
    use protocol::store::StoreWriter;
    let Ok(instance) = InstanceName::new(&format!("fuzzseed{}", std::process::id())) else {
        return Vec::new();
    };
    let config = StoreConfig::uniform(2, &[Interval::M1, Interval::M5], 8);
    let Ok(mut writer) = StoreWriter::create(&instance, &config) else {
        return Vec::new();
    };
    if let Ok(symbol) = SymbolName::new("BTCUSDT")
        && let Ok(id) = writer.register_symbol(&symbol)
        && let Ok(series) = writer.series(id, Interval::M1)
    {
        for c in wave(5) {
            let _ = writer.upsert(series, &c);
        }
        writer.publish();
    }
    let path = segment_path(&instance);
    std::fs::read(path).map(|b| vec![b]).unwrap_or_default()
}

fn nats_candle(data: &[u8]) {
    let _ = crate::nats::candles::CandleMessage::parse(data);
}

fn nats_seeds() -> Vec<Vec<u8>> {
    let Ok(symbol) = SymbolName::new("BTCUSDT") else {
        return Vec::new();
    };
    let mut file = CsvFile::new(symbol, Interval::M1);
    let Ok(Some(kline)) =
        file.parse_line("1613692800000,51552.6,51580.0,51500.1,51521.9,45.2,1613692859999")
    else {
        return Vec::new();
    };
    let message = crate::nats::candles::CandleMessage::of(&kline);
    serde_json::to_vec(&message)
        .map(|m| vec![m])
        .unwrap_or_default()
}

/// A spec parses or says why not; a parsed one prints as a spec that
/// parses to the same.
fn sink_spec(data: &[u8]) {
    use crate::run::sink::SinkSpec;
    let given = text(data);
    // Shown as it may be, whatever the text.
    let _ = crate::redact::text(&given);
    if let Ok(spec) = given.parse::<SinkSpec>() {
        let whole = spec.key();
        let again: SinkSpec = whole
            .parse()
            .unwrap_or_else(|e| panic!("{whole:?} does not parse back: {e}"));
        assert_eq!(again.key(), whole, "a sink spec round trip");
        assert_eq!(again.to_string(), spec.to_string());
    }
}

fn sink_seeds() -> Vec<Vec<u8>> {
    [
        "stdout",
        "file:/tmp/signals.jsonl",
        "webhook:http://127.0.0.1:8080/hook",
        "webhook-batch:https://example.com/a?b=c",
        "nats://127.0.0.1:4222/signals",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn config(data: &[u8]) {
    let _ = crate::cli::config::check_text(&text(data));
}

fn config_seeds() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../../shmkline.example.toml").to_vec(),
        b"workers = 3\nfeed = \"synthetic\"\nsink = [\"stdout\", \"file:/tmp/x\"]\n".to_vec(),
    ]
}
