//! `shmkline-tools`: the benchmarks, chaos and soak, run by `shmkline` on
//! the same words (`shmkline bench store` is `shmkline-tools bench store`).
//! Thin: it parses, starts logging, dispatches and maps errors to exit codes.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use engine::cli::instance_or_default;
use tools::args::{Cli, Command};
use tools::commands;

fn run(cli: Cli) -> Result<()> {
    let instance = cli.global.instance;
    match cli.command {
        Command::Chaos(args) => commands::chaos(instance, *args),
        Command::Soak(args) => commands::soak(instance, args),
        Command::Bench(cmd) => commands::bench(&commands::bench_instance(instance)?, cmd),
        Command::BenchChild(role) => commands::bench_child(&instance_or_default(instance)?, role),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    protocol::exit::init_logging(cli.global.log_format, cli.global.log_level.as_deref());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => protocol::exit::report(err.as_ref()),
    }
}
