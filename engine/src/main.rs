//! `shmkline`: the coordinator's command line. Thin: it parses, starts
//! logging, dispatches to the `engine` library's commands and maps errors to
//! exit codes.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use engine::cli::args::{Cli, Command};
use engine::cli::{bench_instance, client, commands, instance_or_default};

fn run(cli: Cli) -> Result<()> {
    let instance = cli.instance;
    match cli.command {
        Command::Run(args) => commands::run(instance_or_default(instance)?, *args),
        Command::Backtest(args) => commands::backtest(args),
        Command::Chaos(args) => commands::chaos(instance, args),
        Command::Traders(cmd) => client::traders(&instance_or_default(instance)?, cmd),
        Command::KillWorker { id, signal } => {
            client::kill_worker(&instance_or_default(instance)?, id, &signal)
        }
        Command::Status { json } => client::status(&instance_or_default(instance)?, json),
        Command::Bench(cmd) => commands::bench(&bench_instance(instance)?, cmd),
        Command::Store(cmd) => commands::store(&instance_or_default(instance)?, cmd),
        Command::BenchChild(role) => commands::bench_child(&instance_or_default(instance)?, role),
    }
}

fn main() -> ExitCode {
    engine::cli::remember_parent();
    let cli = Cli::parse();
    protocol::exit::init_logging(cli.log_format, cli.log_level.as_deref());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => protocol::exit::report(err.as_ref()),
    }
}
