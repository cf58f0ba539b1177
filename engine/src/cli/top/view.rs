//! What `shmkline top` draws, from one `status` answer (and the trader list
//! when it is shown): a pure function of its inputs, so it can be drawn
//! into a test backend.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState};
use serde_json::Value;

/// What the screen shows besides the status itself.
#[derive(Debug, Default)]
pub struct Screen {
    /// The selected worker row.
    pub selected: usize,
    /// Signals per second since the previous refresh.
    pub signals_per_s: Option<f64>,
    /// The trader list (`t`), when shown.
    pub traders: Option<Value>,
    /// The bottom line: a question (kill?) or what happened.
    pub message: Option<String>,
}

fn n(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// `ms` as a short age: 850ms, 12s, 5m03s, 2h10m, 3d04h.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6))
}

/// A growth figure coloured against the alert: green well under it, yellow
/// past a tenth of it, red past it; grey while warming up.
fn growth(mb_per_h: Option<f64>, alert: f64) -> Span<'static> {
    match mb_per_h {
        None => Span::styled("warm", Style::default().fg(Color::DarkGray)),
        Some(g) => {
            let colour = if alert > 0.0 && g > alert {
                Color::Red
            } else if alert > 0.0 && g > alert / 10.0 {
                Color::Yellow
            } else {
                Color::Green
            };
            Span::styled(format!("{g:+.1}"), Style::default().fg(colour))
        }
    }
}

/// The memory figures of `process` (`coordinator`, `worker N`).
fn memory_of<'a>(status: &'a Value, process: &str) -> Option<&'a Value> {
    status["memory"]["processes"]
        .as_array()?
        .iter()
        .find(|p| p["process"] == process)
}

fn header(status: &Value, screen: &Screen) -> Vec<Line<'static>> {
    let feed = &status["feed"];
    let kind = feed["kind"].as_str().unwrap_or("?").to_owned();
    let connected = if kind == "binance" {
        format!("{} connected", n(&feed["connected"]).unwrap_or(0))
    } else if feed["nats"].is_object() {
        if feed["nats"]["connected"] == true {
            "connected".to_owned()
        } else {
            "DISCONNECTED".to_owned()
        }
    } else {
        "local".to_owned()
    };
    let reconnects = n(&feed["reconnects"])
        .or_else(|| n(&feed["nats"]["reconnects"]))
        .unwrap_or(0);
    let last = n(&feed["last_message_age_ms"]).map_or_else(|| "-".to_owned(), age);
    let lag = feed["latency_p99_ns"]
        .as_u64()
        .map(|ns| format!("{:.1}ms", ns as f64 / 1e6))
        .or_else(|| {
            feed["sent_to_visible_p99_us"]
                .as_u64()
                .map(|us| format!("{:.1}ms", us as f64 / 1e3))
        })
        .unwrap_or_else(|| "-".to_owned());
    let gaps = n(&feed["gaps"]).unwrap_or(0) + n(&status["gaps"]).unwrap_or(0);
    let rate = screen
        .signals_per_s
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
    let alert = status["memory"]["alert_mb_per_h"].as_f64().unwrap_or(0.0);
    let me = memory_of(status, "coordinator");
    let bold = Style::default().add_modifier(Modifier::BOLD);
    vec![
        Line::from(vec![
            Span::styled(
                format!(
                    "shmkline top  {}",
                    status["instance"].as_str().unwrap_or("?")
                ),
                bold,
            ),
            Span::raw(format!(
                "  pid {}  up {}  {}",
                status["pid"],
                age(n(&status["uptime_ms"]).unwrap_or(0)),
                status["state"].as_str().unwrap_or("?")
            )),
        ]),
        Line::from(format!(
            "feed {kind}: {connected}, reconnects {reconnects}, last msg {last}, lag p99 {lag}, gaps {gaps}"
        )),
        Line::from(vec![
            Span::raw(format!(
                "signals {rate}/s ({} total, {} dup)  coordinator {} MB ",
                n(&status["signals"]["emitted"]).unwrap_or(0),
                n(&status["signals"]["duplicates_dropped"]).unwrap_or(0),
                mb(me.and_then(|m| n(&m["private_bytes"]))),
            )),
            growth(me.and_then(|m| m["growth_mb_per_h"].as_f64()), alert),
            Span::raw(" MB/h"),
        ]),
    ]
}

fn workers_table(status: &Value) -> Table<'static> {
    let alert = status["memory"]["alert_mb_per_h"].as_f64().unwrap_or(0.0);
    let faults: Vec<&Value> = status["supervision"]["recent"]
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    let rows: Vec<Row> = status["workers"]
        .as_array()
        .map(|ws| ws.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|w| {
            let slot = n(&w["id"]).unwrap_or(0);
            let mem = memory_of(status, &format!("worker {slot}"));
            // `recent` is newest first.
            let fault = faults
                .iter()
                .find(|f| n(&f["slot"]) == Some(slot))
                .map(|f| {
                    format!(
                        "{} ({})",
                        f["kind"].as_str().unwrap_or("?"),
                        f["cause"].as_str().unwrap_or("?")
                    )
                })
                .unwrap_or_else(|| "-".to_owned());
            let us = |v: &Value| n(v).map_or_else(|| "-".to_owned(), |x| x.to_string());
            Row::new(vec![
                Line::from(slot.to_string()),
                Line::from(n(&w["pid"]).unwrap_or(0).to_string()),
                Line::from(w["state"].as_str().unwrap_or("?").to_owned()),
                Line::from(n(&w["traders"]).unwrap_or(0).to_string()),
                Line::from(mb(n(&w["rss_bytes"]))),
                Line::from(growth(
                    mem.and_then(|m| m["growth_mb_per_h"].as_f64()),
                    alert,
                )),
                Line::from(us(&w["rtt_us"])),
                Line::from(us(&w["pass_p99_us"])),
                Line::from(n(&w["restarts"]).unwrap_or(0).to_string()),
                Line::from(fault),
            ])
        })
        .collect();
    Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(4),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(4),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([
            "slot",
            "pid",
            "state",
            "trd",
            "RSS MB",
            "MB/h",
            "RTTus",
            "p99 us",
            "rst",
            "last fault",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::default().borders(Borders::TOP).title(" workers "))
}

fn sinks_table(status: &Value) -> Table<'static> {
    let rows: Vec<Row> = status["sinks"]
        .as_array()
        .map(|s| s.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let num = |v: &Value| n(v).map_or_else(|| "-".to_owned(), |x| x.to_string());
            Row::new(vec![
                s["spec"].as_str().unwrap_or("?").to_owned(),
                num(&s["queued"]),
                num(&s["delivered"]),
                num(&s["retries"]),
                num(&s["rejected"]),
                n(&s["lag_ms"]).map_or_else(|| "-".to_owned(), age),
            ])
        })
        .collect();
    Table::new(
        rows,
        [
            Constraint::Min(14),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new(["sink", "queued", "delivered", "retries", "errors", "lag"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::TOP).title(" sinks "))
}

fn traders_table(traders: &Value) -> Table<'static> {
    let rows: Vec<Row> = traders["traders"]
        .as_array()
        .map(|t| t.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            Row::new(vec![
                t["id"].as_str().unwrap_or("?").to_owned(),
                t["slot"].to_string(),
                t["state"].as_str().unwrap_or("?").to_owned(),
                t["interval"].as_str().unwrap_or("?").to_owned(),
                t["rule"].as_str().unwrap_or("?").to_owned(),
            ])
        })
        .collect();
    Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(5),
            Constraint::Length(12),
            Constraint::Length(5),
            Constraint::Min(20),
        ],
    )
    .header(
        Row::new(["trader", "slot", "state", "int", "rule"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::TOP)
            .title(" traders (t: back) "),
    )
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, status: &Value, screen: &Screen) {
    let sinks = status["sinks"].as_array().map_or(0, Vec::len) as u16;
    let [head, body, lower, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Length((sinks + 2).min(8)),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header(status, screen)), head);
    match &screen.traders {
        Some(traders) => frame.render_widget(traders_table(traders), body),
        None => {
            let mut state = TableState::default().with_selected(Some(screen.selected));
            frame.render_stateful_widget(workers_table(status), body, &mut state);
        }
    }
    frame.render_widget(sinks_table(status), lower);
    footer_line(frame, footer, screen);
}

fn footer_line(frame: &mut Frame, area: Rect, screen: &Screen) {
    let text = screen
        .message
        .clone()
        .unwrap_or_else(|| "up/down: select  k: kill and replace  t: traders  q: quit".to_owned());
    frame.render_widget(
        Paragraph::new(text).style(Style::default().add_modifier(Modifier::REVERSED)),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn sample() -> Value {
        serde_json::json!({
            "instance": "demo", "pid": 42, "state": "running", "uptime_ms": 3_723_000,
            "feed": { "kind": "synthetic", "gaps": 0 },
            "gaps": 0,
            "signals": { "emitted": 100, "duplicates_dropped": 2 },
            "memory": { "alert_mb_per_h": 10.0, "processes": [
                { "process": "coordinator", "private_bytes": 3_500_000, "growth_mb_per_h": 0.4 },
                { "process": "worker 1", "private_bytes": 900_000, "growth_mb_per_h": 25.0 },
            ]},
            "supervision": { "recent": [ { "slot": 1, "kind": "crash", "cause": "outside" } ] },
            "workers": [
                { "id": 0, "pid": 1001, "state": "ready", "traders": 2, "rss_bytes": 8_000_000, "rtt_us": 80, "pass_p99_us": 120, "restarts": 0 },
                { "id": 1, "pid": 1002, "state": "ready", "traders": 2, "rss_bytes": 8_100_000, "rtt_us": 90, "pass_p99_us": 130, "restarts": 3 },
            ],
            "sinks": [ { "spec": "stdout", "queued": 0, "delivered": 100 } ],
        })
    }

    fn text(terminal: &Terminal<TestBackend>) -> String {
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn everything_fits_an_80_by_24_terminal() {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        let screen = Screen {
            selected: 1,
            signals_per_s: Some(12.5),
            ..Screen::default()
        };
        terminal
            .draw(|f| draw(f, &sample(), &screen))
            .expect("draw");
        let shown = text(&terminal);
        for needle in [
            "shmkline top  demo",
            "up 1h02m",
            "signals 12.5/s (100 total, 2 dup)",
            "1001",
            "1002",
            "crash (outside)",
            "+25.0",
            "stdout",
            "k: kill and replace",
        ] {
            assert!(shown.contains(needle), "{needle:?} missing:\n{shown}");
        }
    }

    #[test]
    fn ages_read_short() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_000), "12s");
        assert_eq!(age(303_000), "5m03s");
        assert_eq!(age(7_800_000), "2h10m");
        assert_eq!(age(273_600_000), "3d04h");
    }
}
