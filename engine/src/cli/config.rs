//! `--config FILE`: a TOML file of `run` flags under the command line, and
//! `shmkline config show`, the effective configuration as TOML.
//!
//! A key is a long flag of `shmkline run` without its dashes (`workers =
//! 3`, `ping-interval = 100`; `ping_interval` is the same key), including
//! the global ones (`instance`, `log-format`, `log-level`). Precedence,
//! highest first: the command line, the environment (`$SHMKLINE_*`), the
//! file, the built-in defaults. The file is turned into flags and parsed by
//! clap like the command line, so a value means exactly what the flag
//! means; each key is checked on its own first, so an error names the file,
//! the line and the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches};
use thiserror::Error;

use super::args::Cli;

/// Largest config file read: far above any real one; a wrong path (a log,
/// a device) is refused instead of read into memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Flags of `run` that are not configuration.
const NOT_KEYS: [&str; 3] = ["config", "help", "version"];

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not one a config can be read from (a device, a
    /// directory, a silent pipe).
    #[error(transparent)]
    Input(crate::input::InputError),
    /// The file is over [`MAX_CONFIG_BYTES`].
    #[error("the config file {} is over the limit of {MAX_CONFIG_BYTES} bytes: is it the right file?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What was read of it (the limit and one byte).
        len: u64,
    },
    /// Not TOML.
    #[error("the config file {} is not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key or its value is wrong.
    #[error("{}:{line}: key `{key}`: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// The key's line (1-based).
        line: usize,
        /// The key as written.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Why the command line could not be parsed.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own error (usage, `--help`, `--version`): it prints and exits.
    Clap(clap::Error),
    /// The config file.
    Config(ConfigError),
}

impl From<clap::Error> for ParseError {
    fn from(e: clap::Error) -> Self {
        Self::Clap(e)
    }
}

/// Parses `argv` with the config file (`--config` of `run` or `config
/// show`) merged under it; also returns that merged command line, which
/// [`show`] prints from: the file is read once (a FIFO or `<(...)` can be
/// read only once).
pub fn parse(argv: Vec<OsString>) -> Result<(Cli, Vec<OsString>), ParseError> {
    let argv = with_config(argv)?;
    let matches = Cli::command().try_get_matches_from(&argv)?;
    Ok((Cli::from_arg_matches(&matches)?, argv))
}

/// `argv` with the config file's flags appended (those the command line
/// and the environment do not set).
fn with_config(mut argv: Vec<OsString>) -> Result<Vec<OsString>, ParseError> {
    let matches = Cli::command().try_get_matches_from(&argv)?;
    if let Some(m) = run_matches(&matches)
        && let Some(path) = m.get_one::<PathBuf>("config")
    {
        let extra = flags_from_file(path, m).map_err(ParseError::Config)?;
        argv.extend(extra);
    }
    Ok(argv)
}

/// The matches of `run` or of `config show`: the commands with `--config`.
fn run_matches(matches: &clap::ArgMatches) -> Option<&clap::ArgMatches> {
    match matches.subcommand()? {
        ("run", m) => Some(m),
        ("config", m) => match m.subcommand()? {
            ("show", m) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

/// The `run` command with the global flags propagated into it.
fn run_command() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("run")
        .cloned()
        .unwrap_or_else(clap::Command::default)
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The flags the file at `path` stands for, leaving out those `given`
/// (the command line's matches) already sets.
fn flags_from_file(path: &Path, given: &clap::ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    // Read once, through a bound: a FIFO or a pipe (`<(...)`) is read
    // whole here and never opened again; a device is refused.
    let bytes = crate::input::read_bounded(
        path,
        MAX_CONFIG_BYTES,
        "config file",
        crate::input::Accept::FilesAndPipes,
        ": is it the right file?",
    )
    .map_err(|e| match e {
        crate::input::InputError::TooLarge { .. } => ConfigError::TooLarge {
            path: path.to_owned(),
            len: MAX_CONFIG_BYTES + 1,
        },
        e => ConfigError::Input(e),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not UTF-8 text",
        ))
    })?;
    flags_from_text(&text, path, given)
}

/// The `run` flags a config file's text stands for, with nothing given on
/// the command line, then the whole command line they make parsed as
/// `run` parses it: what `--config` checks, reachable without a file (the
/// fuzzing targets call it).
pub fn check_text(text: &str) -> Result<Vec<OsString>, ParseError> {
    let origin = Path::new("<text>");
    let bare = [OsString::from("shmkline"), OsString::from("run")];
    let matches = Cli::command().try_get_matches_from(&bare)?;
    let Some(given) = run_matches(&matches) else {
        return Ok(Vec::new());
    };
    let flags = flags_from_text(text, origin, given).map_err(ParseError::Config)?;
    let argv: Vec<OsString> = bare.iter().cloned().chain(flags.iter().cloned()).collect();
    Cli::command().try_get_matches_from(&argv)?;
    Ok(flags)
}

/// [`flags_from_file`] on the file's text.
fn flags_from_text(
    text: &str,
    path: &Path,
    given: &clap::ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let syntax = |e: toml::de::Error| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim().replace('\n', " "),
    };
    let spans = toml::de::DeTable::parse(text).map_err(syntax)?;
    let table: toml::Table = toml::from_str(text).map_err(syntax)?;
    let run = run_command();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut flags = Vec::new();
    // In the file's order, so the first error reported is the first one.
    let mut keys: Vec<_> = spans.get_ref().keys().collect();
    keys.sort_by_key(|k| k.span().start);
    for key in keys {
        let written = key.get_ref().as_ref();
        let line = line_of(text, key.span().start);
        let bad = |message: String| ConfigError::Key {
            path: path.to_owned(),
            line,
            key: written.to_owned(),
            message,
        };
        let long = written.replace('_', "-");
        let Some(arg) = run
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !NOT_KEYS.contains(&long.as_str()))
        else {
            return Err(bad(format!(
                "not a setting: the keys are the long flags of `shmkline run` (see shmkline.example.toml or `shmkline run --help`){}",
                hint(&run, &long)
            )));
        };
        if let Some((other, _)) = seen.iter().find(|(_, l)| *l == long) {
            return Err(bad(format!("the same setting as `{other}` above")));
        }
        seen.push((written.to_owned(), long.clone()));
        let Some(value) = table.get(written) else {
            continue;
        };
        let args = to_flags(arg, &long, value).map_err(&bad)?;
        // Each key alone through clap: its error then names this key.
        let mut alone = vec![OsString::from("shmkline"), OsString::from("run")];
        alone.extend(args.iter().cloned());
        if let Err(e) = Cli::command().try_get_matches_from(alone) {
            return Err(bad(clap_message(&e)));
        }
        // The command line and the environment win; so does a flag given
        // there that this key conflicts with (`speed` over a file's `rate`).
        let from_elsewhere = |arg: &clap::Arg| {
            let id = arg.get_id().as_str();
            matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) || env_only(id).is_some()
        };
        if !from_elsewhere(arg)
            && !run
                .get_arg_conflicts_with(arg)
                .into_iter()
                .any(from_elsewhere)
        {
            flags.extend(args);
        }
    }
    Ok(flags)
}

/// The value of a setting read from the environment outside clap
/// (`instance`, `log-format`, `log-level`), if set.
fn env_only(id: &str) -> Option<(&'static str, String)> {
    let name = match id {
        "instance" => "SHMKLINE_INSTANCE",
        "log_format" => protocol::exit::LOG_FORMAT_ENV,
        "log_level" => protocol::exit::LOG_ENV,
        _ => return None,
    };
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| (name, v))
}

/// The closest key to an unknown one, if there is one close enough.
fn hint(run: &clap::Command, long: &str) -> String {
    run.get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_KEYS.contains(l))
        .find(|l| l.contains(long) || (long.len() > 3 && long.contains(l)))
        .map_or_else(String::new, |l| format!("; did you mean `{l}`?"))
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The command-line words for `arg = value`.
fn to_flags(arg: &clap::Arg, long: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = OsString::from(format!("--{long}"));
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            toml::Value::Datetime(d) => Ok(d.to_string()),
            toml::Value::Array(_) | toml::Value::Table(_) => Err(format!(
                "{v} is not a value for --{long}: give a string or a number"
            )),
        }
    };
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, toml::Value::Boolean(true)) => Ok(vec![flag]),
        (ArgAction::SetTrue, toml::Value::Boolean(false)) => Ok(vec![]),
        (ArgAction::SetTrue, other) => Err(format!(
            "{other} is not a value for the switch --{long}: true or false"
        )),
        (ArgAction::Append, toml::Value::Array(items)) => {
            let mut words = Vec::new();
            for item in items {
                words.push(format!("--{long}={}", scalar(item)?).into());
            }
            Ok(words)
        }
        // `--key=value`: a value starting with `-` stays a value.
        (_, toml::Value::Array(items)) => {
            let parts = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            Ok(vec![format!("--{long}={}", parts.join(",")).into()])
        }
        (_, v) => Ok(vec![format!("--{long}={}", scalar(v)?).into()]),
    }
}

/// The effective configuration of a parsed `config show`, as TOML: every
/// setting that has a value, named and written so `--config` reads it back.
/// `argv` is the command line [`parse`] merged with the config file.
pub fn show(argv: Vec<OsString>) -> Result<String, ParseError> {
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let Some(m) = run_matches(&matches) else {
        return Ok(String::new());
    };
    let run = run_command();
    let mut out = String::from(
        "# The effective configuration of `shmkline run` (command line, then\n# environment, then config file, then defaults). Read back with --config;\n# a URL's credentials and query are shown as user:*** and ?…: put them back first.\n",
    );
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if NOT_KEYS.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let Some(raw) = m.get_raw(id) else {
            match env_only(id) {
                Some((name, v)) => out.push_str(&format!(
                    "{long} = {}  # from ${name}\n",
                    toml::Value::String(v)
                )),
                None => out.push_str(&format!("# {long}: not set\n")),
            }
            continue;
        };
        // A URL's credentials and query (a webhook's token) are hidden.
        let values: Vec<String> = raw
            .map(|v| crate::redact::text(&v.to_string_lossy()))
            .collect();
        let value = match (arg.get_action(), values.as_slice()) {
            (ArgAction::SetTrue, [v]) => toml::Value::Boolean(v == "true"),
            (ArgAction::Append, _) => toml::Value::Array(values.iter().map(|v| typed(v)).collect()),
            (_, [v]) => typed(v),
            _ => toml::Value::Array(values.iter().map(|v| typed(v)).collect()),
        };
        out.push_str(&format!("{long} = {value}\n"));
    }
    Ok(out)
}

/// A template documenting every key: each flag's help, and the key with
/// its default, commented out. `shmkline.example.toml` is this text (a
/// test keeps it so).
pub fn example() -> String {
    let run = run_command();
    let mut out = String::from(
        "# shmkline.example.toml: every setting of `shmkline run`, for `--config FILE`.\n\
         # A key is a long flag without its dashes; each is shown with its default\n\
         # (commented out). The command line and the environment ($SHMKLINE_*)\n\
         # override the file. `shmkline config show --config FILE` prints what a\n\
         # run would use. Generated by `shmkline config example`.\n",
    );
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if NOT_KEYS.contains(&long) {
            continue;
        }
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in wrap(&help, 76) {
            out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# (also ${})\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let value = match (arg.get_action(), defaults.as_slice()) {
            (ArgAction::SetTrue, _) => "false".to_owned(),
            (_, []) => "...".to_owned(),
            (ArgAction::Append, _) => {
                toml::Value::Array(defaults.iter().map(|v| typed(v)).collect()).to_string()
            }
            (_, [v]) => typed(v).to_string(),
            _ => toml::Value::Array(defaults.iter().map(|v| typed(v)).collect()).to_string(),
        };
        out.push_str(&format!("# {long} = {value}\n"));
    }
    out
}

/// `text` in lines of at most `width` characters (words kept whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// A flag's text as the TOML value that reads back to it.
fn typed(v: &str) -> toml::Value {
    // Only where the number prints back as the same text ("007" stays a
    // string: as a number it would be 7, another instance).
    if let Ok(i) = v.parse::<i64>()
        && i.to_string() == v
    {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = v.parse::<f64>()
        && f.is_finite()
        && toml::Value::Float(f).to_string() == v
    {
        return toml::Value::Float(f);
    }
    toml::Value::String(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(args: &[&str]) -> clap::ArgMatches {
        let m = Cli::command()
            .try_get_matches_from(["shmkline", "run"].iter().chain(args))
            .expect("parses");
        m.subcommand_matches("run").expect("run").clone()
    }

    fn flags(text: &str, args: &[&str]) -> Result<Vec<String>, String> {
        flags_from_text(text, Path::new("c.toml"), &given(args))
            .map(|f| f.iter().map(|w| w.to_string_lossy().into_owned()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let text = "workers = 3\nping_interval = 100\nsink = [\"stdout\", \"file:/tmp/x\"]\nintervals = [\"1m\", \"5m\"]\nno-backpressure = true\nstay = false\n";
        let words = flags(text, &["--workers", "4"]).expect("valid");
        assert_eq!(
            words,
            [
                "--ping-interval=100",
                "--sink=stdout",
                "--sink=file:/tmp/x",
                "--intervals=1m",
                "--intervals=5m",
                "--no-backpressure",
            ]
        );
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_names_file_line_and_key() {
        let e = flags("workers = 2\n\nwrokers = 3\n", &[]).expect_err("unknown");
        assert!(
            e.starts_with("c.toml:3: key `wrokers`: not a setting"),
            "{e}"
        );
        let e = flags("workers = 2\nping-interval = \"soon\"\n", &[]).expect_err("bad");
        assert!(
            e.starts_with("c.toml:2: key `ping-interval`: invalid value 'soon'"),
            "{e}"
        );
        let e = flags("workers = 0\n", &[]).expect_err("out of range");
        assert!(
            e.contains("c.toml:1: key `workers`") && e.contains("1..=64"),
            "{e}"
        );
        let e = flags("stay = 1\n", &[]).expect_err("not a bool");
        assert!(e.contains("true or false"), "{e}");
        let e = flags("workers = 2\nworkers = 3\n", &[]).expect_err("twice");
        assert!(e.contains("not valid TOML") && e.contains("line 2"), "{e}");
        let e = flags("ping_interval = 100\nping-interval = 200\n", &[]).expect_err("twice");
        assert!(e.contains("the same setting as `ping_interval`"), "{e}");
        let e = flags("[run]\nworkers = 2\n", &[]).expect_err("a table");
        assert!(e.contains("key `run`: not a setting"), "{e}");
        let e = flags("feed = { kind = \"x\" }\n", &[]).expect_err("a table value");
        assert!(e.contains("key `feed`") && e.contains("not a value"), "{e}");
    }

    /// The committed example is what `config example` prints: every key
    /// documented, and it stays so when a flag is added.
    #[test]
    fn the_example_file_documents_every_key() {
        let committed = include_str!("../../../shmkline.example.toml");
        assert_eq!(
            committed,
            example(),
            "shmkline.example.toml is stale: regenerate it with `shmkline config example > shmkline.example.toml`"
        );
        for arg in run_command().get_arguments() {
            if let Some(long) = arg.get_long().filter(|l| !NOT_KEYS.contains(l)) {
                assert!(committed.contains(&format!("\n# {long} = ")), "{long}");
            }
        }
    }
}
