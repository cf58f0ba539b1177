//! What both binaries share at their edges: exit codes (scripts rely on
//! them), how an error is reported, and how logging starts.

use std::path::PathBuf;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::store::OpenError;

/// Any failure; the message is on stderr.
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap's own code).
pub const USAGE: u8 = 2;
/// The named instance is not running: it has no store segment.
pub const NOT_RUNNING: u8 = 3;

/// The exit code for an error: [`NOT_RUNNING`] if anything in its chain of
/// causes is a missing store, [`FAILURE`] otherwise.
pub fn code_for(err: &(dyn std::error::Error + 'static)) -> u8 {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(OpenError::NotFound { .. }) = e.downcast_ref::<OpenError>() {
            return NOT_RUNNING;
        }
        if e.downcast_ref::<NotRunning>().is_some() {
            return NOT_RUNNING;
        }
        cause = e.source();
    }
    FAILURE
}

/// No coordinator listens for the instance: its control socket is missing
/// or refuses connections.
#[derive(Debug, thiserror::Error)]
#[error("no instance is running there: no control socket at {}", .0.display())]
pub struct NotRunning(pub PathBuf);

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, the event's
    /// fields, and `spans` (the fields of every span it happened in: a
    /// worker's slot and pid, a trader).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not a log format: text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// The environment variable with the log filter (`info`, `debug`,
/// `info,engine=debug`): what `--log-level` sets, and what a coordinator
/// hands its workers.
pub const LOG_ENV: &str = "SHMKLINE_LOG";
/// The environment variable with the log format (`text` or `json`).
pub const LOG_FORMAT_ENV: &str = "SHMKLINE_LOG_FORMAT";

/// How this process logs, as [`init_logging`] set it up; a coordinator
/// starts its workers with the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Text or JSON.
    pub format: LogFormat,
    /// The filter directives.
    pub filter: String,
}

static SETTINGS: std::sync::OnceLock<LogSettings> = std::sync::OnceLock::new();

/// How this process logs (the defaults before [`init_logging`]).
pub fn log_settings() -> LogSettings {
    SETTINGS.get().cloned().unwrap_or(LogSettings {
        format: LogFormat::Text,
        filter: "info".to_owned(),
    })
}

/// Checks a filter (`--log-level`, `$SHMKLINE_LOG`).
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let bad = |why: String| {
        format!(
            "{filter:?} is not a log level or filter (off, error, warn, info, debug, trace, or directives like info,engine=debug){why}"
        )
    };
    // A bare word is a target to tracing ("loud" would log everything of
    // a module named loud): alone, it must be a level.
    let levels = ["off", "error", "warn", "info", "debug", "trace"];
    if !filter.contains(['=', ',']) && !levels.contains(&filter.to_ascii_lowercase().as_str()) {
        return Err(bad(String::new()));
    }
    EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| bad(format!(": {e}")))
}

/// Logs to stderr. The filter is `level` if given, else `$SHMKLINE_LOG`,
/// else `info`; the format `format` if given, else `$SHMKLINE_LOG_FORMAT`,
/// else text. Text is coloured only on a terminal. A bad filter or format
/// from the environment is reported on stderr and the default used.
pub fn init_logging(format: Option<LogFormat>, level: Option<&str>) {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut complaints = Vec::new();
    let format = format.unwrap_or_else(|| match from_env(LOG_FORMAT_ENV) {
        Some(v) => v.parse().unwrap_or_else(|e| {
            complaints.push(format!("${LOG_FORMAT_ENV}: {e}"));
            LogFormat::Text
        }),
        None => LogFormat::Text,
    });
    let filter = match level.map(str::to_owned).or_else(|| from_env(LOG_ENV)) {
        Some(f) => match check_log_filter(&f) {
            Ok(()) => f,
            Err(e) => {
                complaints.push(e);
                "info".to_owned()
            }
        },
        None => "info".to_owned(),
    };
    let env_filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(env_filter);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    let _ = SETTINGS.set(LogSettings { format, filter });
    for c in complaints {
        tracing::warn!("{c}: using the default");
    }
}

/// Reports `err` on stderr with its chain of causes (`error: what: why`)
/// and gives the exit code for it.
pub fn report(err: &(dyn std::error::Error + 'static)) -> ExitCode {
    let message = chain(err);
    if log_settings().format == LogFormat::Json {
        // Every stderr line stays one JSON object.
        tracing::error!(error = %message, "exiting");
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::from(code_for(err))
}

/// `err` and its causes, `: `-separated; a cause the message before it
/// already ends with (an error whose text includes its source) once.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !message.ends_with(&said) {
            message.push_str(": ");
            message.push_str(&said);
        }
        cause = c.source();
    }
    message
}

#[cfg(test)]
mod chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("reading x: {source}")]
    struct Says {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Wraps(#[source] Says);

    #[test]
    fn a_cause_already_said_is_said_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(
            super::chain(&Says { source: io() }),
            "reading x: entity not found"
        );
        assert_eq!(
            super::chain(&Wraps(Says { source: io() })),
            "starting: reading x: entity not found"
        );
    }
}
