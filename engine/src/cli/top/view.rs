//! What `shmkline top` draws, from one `status` answer (and the trader list
//! when it is shown): a pure function of its inputs, so it can be drawn
//! into a test backend.

use protocol::control::{Feed, LiveFeed, Status, TraderList};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState};

/// What the screen shows besides the status itself.
#[derive(Debug, Default)]
pub struct Screen {
    /// The selected worker row.
    pub selected: usize,
    /// Signals per second since the previous refresh.
    pub signals_per_s: Option<f64>,
    /// The trader list (`t`), when shown (empty until the next refresh).
    pub traders: Option<TraderList>,
    /// The bottom line: a question (kill?) or what happened.
    pub message: Option<String>,
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

fn header(status: &Status, screen: &Screen) -> Vec<Line<'static>> {
    let feed = &status.feed;
    let kind = feed.kind();
    let live = match feed {
        Feed::Binance(LiveFeed::Started(live)) => Some(live.as_ref()),
        _ => None,
    };
    let connected = match feed {
        Feed::Binance(_) => format!("{} connected", live.map_or(0, |l| l.connected)),
        Feed::Nats(n) if n.nats.connection.connected => "connected".to_owned(),
        Feed::Nats(_) => "DISCONNECTED".to_owned(),
        Feed::Synthetic(_) | Feed::Replay(_) => "local".to_owned(),
    };
    let (_, reconnects) = feed.connection();
    let last = live
        .and_then(|l| l.last_message_age_ms)
        .map_or_else(|| "-".to_owned(), age);
    let lag = match feed {
        Feed::Nats(n) => n
            .nats
            .sent_to_visible_p99_us
            .map(|us| format!("{:.1}ms", f64::from(us) / 1e3)),
        _ => live
            .and_then(|l| l.latency_p99_ns)
            .map(|ns| format!("{:.1}ms", f64::from(ns) / 1e6)),
    }
    .unwrap_or_else(|| "-".to_owned());
    let gaps = feed.written().map_or(0, |w| w.gaps) + status.gaps;
    let rate = screen
        .signals_per_s
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
    let alert = status.memory.alert_mb_per_h;
    let me = status.memory.of("coordinator");
    let bold = Style::default().add_modifier(Modifier::BOLD);
    vec![
        Line::from(vec![
            Span::styled(format!("shmkline top  {}", status.instance), bold),
            Span::raw(format!(
                "  pid {}  up {}  {}",
                status.pid,
                age(status.uptime_ms),
                status.state
            )),
        ]),
        Line::from(format!(
            "feed {kind}: {connected}, reconnects {reconnects}, last msg {last}, lag p99 {lag}, gaps {gaps}"
        )),
        Line::from(vec![
            Span::raw(format!(
                "signals {rate}/s ({} total, {} dup)  coordinator {} MB ",
                status.signals.emitted,
                status.signals.duplicates_dropped,
                mb(me.and_then(|m| m.private_bytes)),
            )),
            growth(me.and_then(|m| m.growth_mb_per_h), alert),
            Span::raw(" MB/h"),
        ]),
    ]
}

fn workers_table(status: &Status) -> Table<'static> {
    let alert = status.memory.alert_mb_per_h;
    let rows: Vec<Row> = status
        .workers
        .iter()
        .map(|w| {
            let mem = status.memory.of(&format!("worker {}", w.id));
            // `recent` is newest first.
            let fault = status
                .supervision
                .recent
                .iter()
                .find(|f| f.slot == w.id)
                .map(|f| {
                    let cause = f.cause.map_or("?", |c| c.name());
                    format!("{} ({cause})", f.kind.name())
                })
                .unwrap_or_else(|| "-".to_owned());
            let us = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |x| x.to_string());
            Row::new(vec![
                Line::from(w.id.to_string()),
                Line::from(w.pid.to_string()),
                Line::from(w.state.name()),
                Line::from(w.traders.to_string()),
                Line::from(mb(w.rss_bytes)),
                Line::from(growth(mem.and_then(|m| m.growth_mb_per_h), alert)),
                Line::from(us(w.rtt_us)),
                Line::from(us(w.pass_p99_us)),
                Line::from(w.restarts.to_string()),
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

fn sinks_table(status: &Status) -> Table<'static> {
    let rows: Vec<Row> = status
        .sinks
        .iter()
        .map(|s| {
            let (spec, d) = s.spec_and_delivery();
            Row::new(vec![
                spec.to_owned(),
                d.queued.to_string(),
                d.delivered.to_string(),
                d.retries.to_string(),
                d.rejected.to_string(),
                d.lag_ms
                    .map_or_else(|| "-".to_owned(), |ms| age(ms.max(0) as u64)),
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

fn traders_table(traders: &TraderList) -> Table<'static> {
    let rows: Vec<Row> = traders
        .traders
        .iter()
        .map(|t| {
            let (interval, rule) = t.held().map_or_else(
                || ("-".to_owned(), "-".to_owned()),
                |h| (h.interval.to_string(), h.rule.clone()),
            );
            Row::new(vec![
                t.id().to_owned(),
                t.slot().to_string(),
                t.state().to_owned(),
                interval,
                rule,
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
pub fn draw(frame: &mut Frame, status: &Status, screen: &Screen) {
    let sinks = status.sinks.len() as u16;
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
    use protocol::control::{
        Cause, Delivery, FaultEvent, FaultKind, Memory, ProcessMemory, RunState, Signals, Sink,
        StdoutSink, Supervision, Worker, WorkerState,
    };
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn sample() -> Status {
        let worker =
            |id: u32, pid: u32, rss_bytes: u64, rtt_us: u64, pass_p99_us: u64, restarts| Worker {
                id,
                pid,
                state: WorkerState::Ready,
                traders: 2,
                rss_bytes: Some(rss_bytes),
                rtt_us: Some(rtt_us),
                pass_p99_us: Some(pass_p99_us),
                restarts,
                ..Worker::default()
            };
        let process = |process: &str, private_bytes: u64, growth: f64| ProcessMemory {
            process: process.into(),
            private_bytes: Some(private_bytes),
            growth_mb_per_h: Some(growth),
            ..ProcessMemory::default()
        };
        Status {
            instance: "demo".into(),
            pid: 42,
            state: RunState::Running,
            uptime_ms: 3_723_000,
            signals: Signals {
                emitted: 100,
                duplicates_dropped: 2,
                ..Signals::default()
            },
            memory: Memory {
                alert_mb_per_h: 10.0,
                processes: vec![
                    process("coordinator", 3_500_000, 0.4),
                    process("worker 1", 900_000, 25.0),
                ],
                ..Memory::default()
            },
            supervision: Supervision {
                recent: vec![FaultEvent {
                    slot: 1,
                    pid: 1000,
                    kind: FaultKind::Crash,
                    cause: Some(Cause::Outside),
                    reason: "exited".into(),
                    exit: None,
                    detected_at_ms: 0,
                    recovered_at_ms: None,
                    recovery_ms: None,
                }],
                ..Supervision::default()
            },
            workers: vec![
                worker(0, 1001, 8_000_000, 80, 120, 0),
                worker(1, 1002, 8_100_000, 90, 130, 3),
            ],
            sinks: vec![Sink::Stdout(StdoutSink {
                spec: "stdout".into(),
                delivery: Delivery {
                    delivered: 100,
                    ..Delivery::default()
                },
                ..StdoutSink::default()
            })],
            ..Status::default()
        }
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
