//! How a tool prints its report: aligned `key value` lines (a target as
//! `name  value met`), or one JSON line with `--json`.

use anyhow::Result;
use serde::Serialize;

/// Prints `report` as one JSON line, or as aligned `key value` lines.
pub fn emit<T: Serialize>(report: &T, json: bool) -> Result<()> {
    let value = serde_json::to_value(report)?;
    if json {
        println!("{}", serde_json::to_string(&value)?);
        return Ok(());
    }
    pub fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    // Targets read best as "name  value (limit) met".
                    if let Some(name) = v.get("name").and_then(|n| n.as_str()) {
                        let met = if v["met"] == true { "met" } else { "NOT MET" };
                        out.push((format!("{prefix}: {name}"), format!("{} {met}", v["value"])));
                    } else {
                        walk(&format!("{prefix}.{i}"), v, out);
                    }
                }
            }
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut rows = Vec::new();
    walk("", &value, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
    Ok(())
}
