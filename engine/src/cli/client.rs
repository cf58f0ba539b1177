//! The client commands: `status`, `traders add|remove|list` and
//! `kill-worker`, over a running instance's control socket.

use anyhow::{Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::InstanceName;

use super::args::TradersCommand;
use super::render;
use crate::run::control;

/// Asks the instance `request` and returns its JSON answer.
fn ask(instance: &InstanceName, request: &str) -> Result<serde_json::Value> {
    control::ask(&crate::runtime::base_dir().join(instance.as_str()), request)
}

/// `shmkline status [--json]`.
pub fn status(instance: &InstanceName, json: bool) -> Result<()> {
    let status = ask(instance, "status")?;
    if json {
        println!("{status}");
    } else {
        render::print_status(&status);
    }
    Ok(())
}

/// `shmkline traders add|remove|list`.
pub fn traders(instance: &InstanceName, cmd: TradersCommand) -> Result<()> {
    match cmd {
        TradersCommand::Add { file } => {
            // Checked here first, so a bad file is reported with its path,
            // line and column, and the engine is not asked.
            let traders = crate::traders::load(&file)?;
            let request = serde_json::json!({ "cmd": "add", "traders": traders });
            println!("{}", ask(instance, &request.to_string())?);
        }
        TradersCommand::Remove { id } => {
            let request = serde_json::json!({ "cmd": "remove", "id": id });
            println!("{}", ask(instance, &request.to_string())?);
        }
        TradersCommand::List { json } => {
            let answer = ask(instance, "traders")?;
            if json {
                println!("{answer}");
            } else {
                render::print_traders(&answer);
            }
        }
    }
    Ok(())
}

/// `shmkline kill-worker ID --signal SIG`: the worker slot's current pid,
/// as `status` says, gets the signal.
pub fn kill_worker(instance: &InstanceName, id: u32, signal: &str) -> Result<()> {
    let status = ask(instance, "status")?;
    let pid = status["workers"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["id"].as_u64() == Some(u64::from(id))))
        .and_then(|w| w["pid"].as_u64())
        .filter(|&p| p > 0)
        .ok_or_else(|| anyhow!("instance {instance} has no running worker {id}"))?;
    let sig = match signal {
        "STOP" => Signal::SIGSTOP,
        "TERM" => Signal::SIGTERM,
        "CONT" => Signal::SIGCONT,
        _ => Signal::SIGKILL,
    };
    signal_pid(pid, sig)
        .map_err(|e| anyhow!("sending SIG{signal} to worker {id} (pid {pid}): {e}"))?;
    println!(
        "{}",
        serde_json::json!({ "worker": id, "pid": pid, "signal": signal })
    );
    Ok(())
}

/// Sends `sig` to the worker process `pid` (as `status` lists it).
pub fn signal_pid(pid: u64, sig: Signal) -> Result<(), nix::Error> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::ESRCH)?;
    kill(Pid::from_raw(pid), sig)
}
