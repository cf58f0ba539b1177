//! `shmkline`: the coordinator's command line. Thin: it parses, starts
//! logging, dispatches to the `engine` library's commands and maps errors to
//! exit codes; the tools' commands it hands to `shmkline-tools` unparsed.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use engine::cli::args::{Cli, Command, ConfigCommand};
use engine::cli::{client, commands, config, instance_or_default, tools};

/// A parse error met again while printing the configuration.
fn parse_error(e: config::ParseError) -> anyhow::Error {
    match e {
        config::ParseError::Clap(e) => anyhow::anyhow!("{e}"),
        config::ParseError::Config(e) => e.into(),
    }
}

fn run(cli: Cli, argv: Vec<OsString>) -> Result<()> {
    let instance = cli.global.instance;
    match cli.command {
        Command::Run(args) => commands::run(instance_or_default(instance)?, *args),
        Command::Backtest(args) => commands::backtest(*args),
        // Named before parsing (`main`); here only if clap reads a line so too.
        Command::Chaos(_) => Err(tools::exec("chaos", &argv)),
        Command::Soak(_) => Err(tools::exec("soak", &argv)),
        Command::Traders(cmd) => client::traders(&instance_or_default(instance)?, cmd),
        Command::KillWorker { id, signal } => {
            client::kill_worker(&instance_or_default(instance)?, id, &signal)
        }
        Command::Top { interval } => engine::cli::top::top(
            &instance_or_default(instance)?,
            std::time::Duration::from_millis(interval),
        ),
        Command::Status { json } => client::status(&instance_or_default(instance)?, json),
        Command::Bench(_) => Err(tools::exec("bench", &argv)),
        Command::Store(cmd) => commands::store(&instance_or_default(instance)?, cmd),
        Command::Config(cmd) if matches!(*cmd, ConfigCommand::Example) => {
            print!("{}", config::example());
            Ok(())
        }
        Command::Config(_) => {
            print!("{}", config::show(argv).map_err(parse_error)?);
            Ok(())
        }
        Command::BenchChild(_) => Err(tools::exec("bench-child", &argv)),
    }
}

fn main() -> ExitCode {
    engine::cli::remember_parent();
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(command) = tools::named(&argv) {
        return protocol::exit::report(tools::exec(command, &argv).as_ref());
    }
    let (cli, argv) = match config::parse(argv) {
        Ok(parsed) => parsed,
        Err(config::ParseError::Clap(e)) => e.exit(),
        Err(config::ParseError::Config(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(protocol::exit::USAGE);
        }
    };
    protocol::exit::init_logging(cli.global.log_format, cli.global.log_level.as_deref());
    match run(cli, argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => protocol::exit::report(err.as_ref()),
    }
}
