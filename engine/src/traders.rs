//! Trader files (JSON or TOML) and the built-in trader set, for `run`, `backtest`,
//! `chaos` and `traders add`.
//!
//! A file holds one trader object or an array of them:
//! ```json
//! [{"id": "btc-up", "symbols": ["SYN000"], "interval": "1m",
//!   "rule": "crosses_above(close, sma(close, 20))", "cooldown": 3,
//!   "labels": {"desk": "demo"}}]
//! ```
//! `symbols` is a list or `"*"`; each listed symbol must be one an exchange
//! could list ([`protocol::SymbolName`]). `cooldown`, `labels` and `version`
//! are optional. Every spec is checked before anything starts: an invalid
//! one is refused with the file, the trader and what to write instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use protocol::trader::{Symbols, TraderSpec};
use protocol::{Interval, SymbolName};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SymbolsEntry {
    List(Vec<String>),
    Star(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    symbols: SymbolsEntry,
    interval: Interval,
    rule: String,
    #[serde(default)]
    cooldown: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    version: u32,
}

/// The traders a bare `shmkline run` starts: fast and slow SMA crosses, both
/// ways, on every symbol.
pub fn defaults() -> Vec<TraderSpec> {
    [
        ("sma10-up", "above", 10),
        ("sma10-down", "below", 10),
        ("sma30-up", "above", 30),
        ("sma30-down", "below", 30),
    ]
    .into_iter()
    .map(|(id, dir, n)| TraderSpec {
        id: id.into(),
        version: 0,
        symbols: Symbols::All,
        interval: Interval::M1,
        rule: format!("crosses_{dir}(close, sma(close, {n}))"),
        cooldown: 0,
        labels: BTreeMap::new(),
    })
    .collect()
}

/// Largest trader file read: 64 MiB (some 300,000 traders), far past what
/// 64 workers of 10,000 traders each hold, and bounded memory for a mistake.
pub const MAX_TRADER_FILE: u64 = 64 << 20;

/// Reads and checks a trader file (a regular file, or a pipe such as a
/// shell's `<(...)`), through [`MAX_TRADER_FILE`].
pub fn load(path: &Path) -> Result<Vec<TraderSpec>> {
    let bytes = crate::input::read_bounded(
        path,
        MAX_TRADER_FILE,
        "trader file",
        crate::input::Accept::FilesAndPipes,
        " (64 MiB): split it",
    )?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("trader file {}: not UTF-8 text", path.display()))?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    parse(&text, is_toml, &path.display().to_string())
}

/// Checks the text of a trader file (TOML when `is_toml`, else JSON);
/// errors name `origin` (the file).
pub fn parse(text: &str, is_toml: bool, origin: &str) -> Result<Vec<TraderSpec>> {
    // Syntax first (errors keep their line and column), then each trader on
    // its own (errors name the trader and the field).
    let value: serde_json::Value = if is_toml {
        // One trader as the top-level table, or many as `[[trader]]` tables.
        let table: toml::Table =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", origin))?;
        let value = serde_json::to_value(table)
            .with_context(|| format!("{}: a value JSON cannot hold", origin))?;
        match value.get("trader") {
            Some(many @ serde_json::Value::Array(_)) => many.clone(),
            Some(_) => bail!(
                "{}: `trader` must be an array of tables: write [[trader]]",
                origin
            ),
            None => value,
        }
    } else {
        serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!("{}: line {} column {}: {e}", origin, e.line(), e.column())
        })?
    };
    let items = match value {
        serde_json::Value::Array(items) => items,
        one @ serde_json::Value::Object(_) => vec![one],
        _ => bail!("{}: expected a trader object or an array of them", origin),
    };
    if items.is_empty() {
        bail!("{}: no traders in the file", origin);
    }
    let mut entries = Vec::with_capacity(items.len());
    for (k, item) in items.into_iter().enumerate() {
        let name = item
            .get("id")
            .and_then(|v| v.as_str())
            .map_or_else(|| format!("#{}", k + 1), |id| id.to_owned());
        let entry: Entry = serde_json::from_value(item).map_err(|e| {
            anyhow::anyhow!(
                "{}: trader {name}: {e} (a trader has id, symbols, interval, rule, and optionally cooldown, labels, version)",
                origin
            )
        })?;
        entries.push(entry);
    }
    let mut seen = BTreeSet::new();
    let mut specs = Vec::with_capacity(entries.len());
    for e in entries {
        let symbols = match e.symbols {
            SymbolsEntry::Star(s) if s == "*" => Symbols::All,
            SymbolsEntry::Star(s) => bail!(
                "{}: trader {}: symbols {s:?}: give a list or \"*\"",
                origin,
                e.id
            ),
            // Read as text, so the error names the file and the trader.
            SymbolsEntry::List(list) => Symbols::List(
                list.iter()
                    .map(|s| SymbolName::new(s))
                    .collect::<Result<_, _>>()
                    .map_err(|err| anyhow::anyhow!("{origin}: trader {}: symbols: {err}", e.id))?,
            ),
        };
        let spec = TraderSpec {
            id: e.id,
            version: e.version,
            symbols,
            interval: e.interval,
            rule: e.rule,
            cooldown: e.cooldown,
            labels: e.labels,
        };
        protocol::admit::admit(&spec).with_context(|| origin.to_owned())?;
        if !seen.insert(spec.id.clone()) {
            bail!(
                "{}: trader id {} appears twice: ids must be unique",
                origin,
                spec.id
            );
        }
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Vec<TraderSpec>> {
        let path = std::env::temp_dir().join(format!(
            "shmkline-traders-{}-{}.json",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text)?;
        let result = load(&path);
        let _ = std::fs::remove_file(&path);
        result
    }

    #[test]
    fn defaults_compile() {
        assert!(defaults().iter().all(|s| s.compile().is_ok()));
    }

    #[test]
    fn files_one_or_many() {
        let one = load_text(r#"{"id":"a","symbols":"*","interval":"1m","rule":"crosses_above(close, sma(close, 5))"}"#)
            .expect("one trader");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].symbols, Symbols::All);
        let many = load_text(
            r#"[{"id":"a","symbols":["SYN000"],"interval":"1m","rule":"crosses_above(close, sma(close, 5))","cooldown":2},
               {"id":"b","symbols":"*","interval":"5m","rule":"crosses_below(close, sma(close, 9))","labels":{"k":"v"}}]"#,
        )
        .expect("two traders");
        assert_eq!(many[1].interval, Interval::M5);
        assert_eq!(many[0].cooldown, 2);
    }

    #[test]
    fn toml_files_one_or_many() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = dir.path().join("one.toml");
        std::fs::write(&one, "id = \"a\"\nsymbols = \"*\"\ninterval = \"5m\"\nrule = \"rsi(14) < 30\"\ncooldown = 2\n[labels]\ndesk = \"x\"\n").expect("write");
        let t = load(&one).expect("one trader");
        assert_eq!(
            (t.len(), t[0].interval, t[0].cooldown),
            (1, Interval::M5, 2)
        );
        assert_eq!(t[0].labels.get("desk").map(String::as_str), Some("x"));
        let many = dir.path().join("many.toml");
        std::fs::write(&many, "[[trader]]\nid = \"a\"\nsymbols = [\"BTCUSDT\"]\ninterval = \"1m\"\nrule = \"close > 1\"\n\n[[trader]]\nid = \"b\"\nsymbols = \"*\"\ninterval = \"1h\"\nrule = \"rsi(14) > 70\"\n").expect("write");
        assert_eq!(load(&many).expect("two").len(), 2);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[trader]]\nid = \"a\"\nsymbols = \"*\"\ninterval = \"1m\"\nrule = \"rsi(14) <\"\n\n[[trader]]\nid = \n").expect("write");
        let err = format!("{:#}", load(&bad).expect_err("syntax"));
        assert!(
            err.contains("bad.toml") && err.contains("line 8, column 6"),
            "{err}"
        );
        std::fs::write(
            &bad,
            "[[trader]]\nid = \"a\"\nsymbols = \"*\"\ninterval = \"1m\"\nrule = \"rsi(14) <\"\n",
        )
        .expect("write");
        let err = format!("{:#}", load(&bad).expect_err("rule"));
        assert!(
            err.contains("trader a") && err.contains("column 10"),
            "{err}"
        );
    }

    #[test]
    fn a_trader_file_past_the_size_limit_is_refused_unread() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file()
            .set_len(MAX_TRADER_FILE + 1)
            .expect("sparse file");
        let err = format!("{:#}", load(file.path()).expect_err("too large"));
        assert!(err.contains("over the limit of 67108864 bytes"), "{err}");
        file.as_file()
            .set_len(MAX_TRADER_FILE)
            .expect("at the limit");
        let err = format!("{:#}", load(file.path()).expect_err("not JSON"));
        assert!(!err.contains("over the limit"), "read, then refused: {err}");
    }

    #[test]
    fn bad_files_say_where_and_what() {
        let err = |t: &str| format!("{:#}", load_text(t).expect_err("refused"));
        assert!(err("[{\"id\":\"a\"").contains("line 1 column"));
        assert!(
            err(r#"{"id":"a","symbols":"*","interval":"2m","rule":"x"}"#)
                .contains("trader a: unknown interval \"2m\"")
        );
        assert!(err(r#"[{"symbols":"*"}]"#).contains("trader #1: missing field `id`"));
        assert!(
            err(r#"{"id":"a","symbols":"*","interval":"1m","rule":"rsx(14) < 30"}"#)
                .contains("trader a: rule \"rsx(14) < 30\" is not understood: line 1, column 1: unknown function `rsx`")
        );
        assert!(err(r#"{"id":"a","symbols":"BTC","interval":"1m","rule":"crosses_above(close, sma(close, 5))"}"#).contains("give a list or"));
        assert!(err(r#"{"id":"a","symbols":"*","interval":"1m","rule":"crosses_above(close, sma(close, 5))","colour":1}"#).contains("unknown field"));
        let dup = r#"[{"id":"a","symbols":"*","interval":"1m","rule":"crosses_above(close, sma(close, 5))"},
                      {"id":"a","symbols":"*","interval":"1m","rule":"crosses_above(close, sma(close, 5))"}]"#;
        assert!(err(dup).contains("appears twice"));
        assert!(err("[]").contains("no traders"));
    }
}
