//! The fuzzing targets in the suite: every input that ever made one fail
//! (`tests/fuzz/regressions/<target>/`) runs again, and each target runs
//! briefly at volume. `scripts/fuzz.sh` runs them for longer, under
//! libFuzzer where it can.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use engine::fuzz::{TARGETS, regressions, volume};

fn kept() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions")
}

/// Every target's seeds (valid inputs made by the production encoders)
/// and every kept input pass; every kept directory names a target (a
/// renamed target would otherwise drop its inputs unseen).
#[test]
fn every_seed_and_every_input_that_ever_failed_passes() {
    let dir = kept();
    let (mut seeds, mut inputs) = (0, 0);
    let mut failed = Vec::new();
    for t in TARGETS {
        let kept = regressions(&dir, t).expect("reading the regression inputs");
        inputs += kept.len();
        let own = (t.seeds)();
        assert!(!own.is_empty(), "{} has seeds", t.name);
        seeds += own.len();
        let all = own
            .into_iter()
            .enumerate()
            .map(|(k, b)| (format!("seed {k}"), b))
            .chain(kept);
        for (name, input) in all {
            if std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input))).is_err() {
                failed.push(format!("{}/{name}", t.name));
            }
        }
    }
    assert!(failed.is_empty(), "inputs fail: {failed:?}");
    for entry in std::fs::read_dir(&dir).expect("the regressions directory") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|t| t.name == name) || name == "README.md",
            "{name} in {} is not a target",
            dir.display()
        );
    }
    println!("{seeds} seeds and {inputs} kept inputs passed");
}

/// Each target, briefly at volume: a fixed count of mutations of its seeds
/// and regression inputs (deterministic: the same inputs each run).
#[test]
fn every_target_survives_a_brief_volume_run() {
    let dir = kept();
    let mut crashed = Vec::new();
    for t in TARGETS {
        let corpus: Vec<Vec<u8>> = regressions(&dir, t)
            .expect("reading the regression inputs")
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        // The slow ones: config builds clap's command per key, and
        // control_stream two threads and a socket pair per input.
        let budget = match t.name {
            "config" => 300,
            "control_stream" => 500,
            _ => 3_000,
        };
        let report = volume(t, &corpus, 0x5eed, budget, None);
        assert_eq!(report.tried, budget, "{}", t.name);
        crashed.extend(
            report
                .crashes
                .into_iter()
                .map(|(input, message)| (t.name, message, input)),
        );
    }
    assert!(crashed.is_empty(), "crashes: {crashed:?}");
}

/// A target that panics is caught and reported with its input: the volume
/// runner can fail.
#[test]
fn a_panicking_target_is_reported_with_its_input() {
    fn boom(data: &[u8]) {
        assert!(!data.contains(&b'{'), "a brace");
    }
    fn seeds() -> Vec<Vec<u8>> {
        vec![b"{}".to_vec()]
    }
    let t = engine::fuzz::Target {
        name: "boom",
        what: "a test",
        run: boom,
        seeds,
        dictionary: &[],
    };
    let report = volume(&t, &[], 1, 200, None);
    assert_eq!(report.tried, 200);
    assert!(!report.crashes.is_empty());
    assert!(
        report
            .crashes
            .iter()
            .all(|(input, message)| input.contains(&b'{') && message == "a brace")
    );
}

/// The seeds are inputs the parsers accept, so the fuzzers start past the
/// first check of each (a seed refused early would leave most of a parser
/// unexplored, silently).
#[test]
fn the_seeds_are_accepted_by_their_parsers() {
    use engine::fuzz::target;
    let seeds = |name: &str| (target(name).expect(name).seeds)();
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8");
    for s in seeds("ipc_frame") {
        protocol::frame::decode(&s).expect("a frame seed decodes");
    }
    for s in seeds("rule") {
        let spec = protocol::trader::TraderSpec {
            id: "t".into(),
            version: 1,
            symbols: protocol::trader::Symbols::All,
            interval: protocol::Interval::M1,
            rule: text(&s),
            cooldown: 0,
            labels: Default::default(),
        };
        protocol::admit::admit(&spec).expect("a rule seed is admitted");
    }
    for s in seeds("trader_json") {
        engine::traders::parse(&text(&s), false, "seed").expect("a JSON trader seed");
    }
    for s in seeds("trader_toml") {
        engine::traders::parse(&text(&s), true, "seed").expect("a TOML trader seed");
    }
    for s in seeds("control_request") {
        engine::run::control::Request::parse(&text(&s)).expect("a request seed");
    }
    for s in seeds("sink_spec") {
        text(&s)
            .parse::<engine::run::sink::SinkSpec>()
            .expect("a sink seed");
    }
    for s in seeds("config") {
        engine::cli::config::check_text(&text(&s))
            .map_err(|e| format!("{e:?}"))
            .expect("a config seed");
    }
    for s in seeds("nats_candle") {
        engine::nats::candles::CandleMessage::parse(&s).expect("a NATS candle seed");
    }
    for s in seeds("ws_message").iter().take(2) {
        engine::feed::binance::parse_ws(&text(s)).expect("a WebSocket seed");
    }
    let symbol = protocol::SymbolName::new("BTCUSDT").expect("a symbol");
    let (rows, bad) = engine::feed::binance::parse_rest(
        &text(&seeds("rest_rows")[0]),
        &symbol,
        protocol::Interval::M1,
        1_613_700_000_000,
    )
    .expect("a REST seed");
    assert!(rows.len() == 2 && bad.is_empty());
    for s in seeds("replay_csv") {
        let mut file = engine::feed::binance::CsvFile::new(symbol.clone(), protocol::Interval::M1);
        let klines = text(&s)
            .lines()
            .filter_map(|l| file.parse_line(l).expect("a CSV seed line"))
            .count();
        assert!(klines > 0);
    }
    let segment = seeds("segment");
    assert_eq!(segment.len(), 1, "a real segment's bytes");
    assert_eq!(&segment[0][..8], b"SHMKLIN1");
}
