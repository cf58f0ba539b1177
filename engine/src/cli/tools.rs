//! The commands `shmkline` hands to the `shmkline-tools` binary next to it
//! (`bench`, `chaos`, `soak` and the benchmarks' hidden `bench-child`): the
//! same words and environment, in the same process (exec), as cargo runs its
//! external subcommands. So a release `shmkline` carries no benchmark and no
//! stand-in, and the tools' flags are defined once, in `shmkline-tools`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::CommandFactory;

use super::args::Cli;

/// The tools binary, looked for next to this executable.
const TOOLS_BIN: &str = "shmkline-tools";

/// The commands it runs for `shmkline`.
pub const TOOL_COMMANDS: [&str; 4] = ["bench", "chaos", "soak", "bench-child"];

/// The tool command `argv` names, if any: its first word past the global
/// flags and their values, or the word after `help`. A line clap must answer
/// itself (`-h` or `--version` first, an unknown flag, no command) names none.
pub fn named(argv: &[OsString]) -> Option<&str> {
    let cli = Cli::command();
    let global = |long: &str| {
        cli.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .map(|a| a.get_action().takes_values())
    };
    let mut words = argv.iter().skip(1);
    let mut after_help = false;
    while let Some(word) = words.next() {
        let word = word.to_str()?;
        if let Some(flag) = word.strip_prefix("--") {
            let (long, inline) = flag
                .split_once('=')
                .map_or((flag, false), |(l, _)| (l, true));
            // A flag only the root answers (--help, --version) or none knows.
            let takes_value = global(long)?;
            if takes_value && !inline {
                words.next();
            }
            continue;
        }
        if word.starts_with('-') {
            return None;
        }
        if word == "help" && !after_help {
            after_help = true;
            continue;
        }
        return TOOL_COMMANDS.iter().copied().find(|c| *c == word);
    }
    None
}

/// `shmkline-tools` next to this executable.
fn tools_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the shmkline executable")?;
    exe.parent()
        .map(|dir| dir.join(TOOLS_BIN))
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))
}

/// Replaces this process with `shmkline-tools` run on `argv` (the same
/// words, `argv[0]` included, and the same environment). The pid stays, so
/// whoever waits for or signals `shmkline` reaches the tool. Returns only
/// when the tool cannot be run, saying how to build it.
pub fn exec(command: &str, argv: &[OsString]) -> anyhow::Error {
    let bin = match tools_bin() {
        Ok(bin) => bin,
        Err(e) => return e,
    };
    let mut tool = std::process::Command::new(&bin);
    tool.args(argv.iter().skip(1));
    if let Some(arg0) = argv.first() {
        tool.arg0(arg0);
    }
    let err = tool.exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow!(
            "`shmkline {command}` is run by {TOOLS_BIN}, which is not next to shmkline ({}): build it with `cargo build --release -p shmkline-tools` (a plain `cargo build --release` builds it too)",
            bin.display()
        )
    } else {
        anyhow::Error::new(err).context(format!("running {}", bin.display()))
    }
}
