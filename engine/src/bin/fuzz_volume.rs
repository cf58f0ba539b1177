//! `fuzz-volume`: the fuzzing targets at volume without libFuzzer (stable
//! Rust, no sanitizer): mutations of each target's seeds and regression
//! inputs, for a time or a count per target. `scripts/fuzz.sh` runs it
//! when `cargo fuzz` cannot be had, and `--write-seeds` gives libFuzzer
//! its starting corpora.
//!
//!   fuzz-volume [--seconds N | --inputs N] [--seed S] [--save DIR]
//!               [--write-seeds DIR] [--json] [TARGET...]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use engine::fuzz::{TARGETS, regressions, target, volume};

struct Args {
    seconds: Option<u64>,
    inputs: Option<u64>,
    seed: u64,
    save: Option<PathBuf>,
    write_seeds: Option<PathBuf>,
    json: bool,
    targets: Vec<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        seconds: None,
        inputs: None,
        seed: 1,
        save: None,
        write_seeds: None,
        json: false,
        targets: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let number = |flag: &str, v: Option<String>| -> Result<u64, String> {
        v.ok_or_else(|| format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = Some(number("--seconds", it.next())?),
            "--inputs" => a.inputs = Some(number("--inputs", it.next())?),
            "--seed" => a.seed = number("--seed", it.next())?,
            "--save" => a.save = it.next().map(PathBuf::from),
            "--write-seeds" => a.write_seeds = it.next().map(PathBuf::from),
            "--json" => a.json = true,
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            name if target(name).is_some() => a.targets.push(name.to_owned()),
            name => {
                let all: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                return Err(format!(
                    "no target {name:?}: the targets are {}",
                    all.join(", ")
                ));
            }
        }
    }
    if a.targets.is_empty() {
        a.targets = TARGETS.iter().map(|t| t.name.to_owned()).collect();
    }
    Ok(a)
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz-volume: {e}");
            return ExitCode::from(2);
        }
    };
    let kept = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/regressions");
    let mut crashed = false;
    let mut rows = Vec::new();
    for name in &a.targets {
        let Some(t) = target(name) else { continue };
        if let Some(dir) = &a.write_seeds {
            let dir = dir.join(t.name);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("fuzz-volume: {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            for (k, seed) in (t.seeds)().iter().enumerate() {
                let _ = std::fs::write(dir.join(format!("seed-{k}")), seed);
            }
            continue;
        }
        let corpus: Vec<Vec<u8>> = match regressions(&kept, t) {
            Ok(r) => r.into_iter().map(|(_, b)| b).collect(),
            Err(e) => {
                eprintln!("fuzz-volume: reading {}: {e}", kept.display());
                return ExitCode::FAILURE;
            }
        };
        let until = a.seconds.map(|s| Instant::now() + Duration::from_secs(s));
        let budget = a
            .inputs
            .unwrap_or(if until.is_some() { u64::MAX } else { 10_000 });
        let started = Instant::now();
        let report = volume(t, &corpus, a.seed, budget, until);
        let took = started.elapsed().as_secs_f64();
        for (k, (input, message)) in report.crashes.iter().enumerate() {
            crashed = true;
            eprintln!("fuzz-volume: {}: crash: {message}", t.name);
            if let Some(dir) = &a.save {
                let dir = dir.join(t.name);
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("crash-{}-{k}", a.seed));
                let _ = std::fs::write(&file, input);
                eprintln!("  input saved as {}", file.display());
            }
        }
        if !a.json {
            println!(
                "{:<16} {:>10} inputs {:>8.1} s {:>10.0}/s  crashes {}",
                t.name,
                report.tried,
                took,
                report.tried as f64 / took.max(1e-9),
                report.crashes.len()
            );
        }
        rows.push(serde_json::json!({
            "target": t.name, "engine": "volume", "inputs": report.tried,
            "seconds": (took * 10.0).round() / 10.0, "crashes": report.crashes.len(),
        }));
    }
    if a.json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
