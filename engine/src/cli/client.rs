//! The client commands: `status`, `traders add|remove|list` and
//! `kill-worker`, over a running instance's control socket.

use anyhow::{Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::InstanceName;
use protocol::control::{Added, Removed, Request, Status, TraderList};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::args::TradersCommand;
use super::render;
use crate::run::control;

/// Asks the instance `request` and returns its answer, typed.
fn call<T: DeserializeOwned>(instance: &InstanceName, request: &Request) -> Result<T> {
    control::call(&crate::runtime::base_dir().join(instance.as_str()), request)
}

/// Prints an answer as its JSON line.
fn print_json<T: Serialize>(answer: &T) -> Result<()> {
    println!("{}", serde_json::to_string(answer)?);
    Ok(())
}

/// `shmkline status [--json]`.
pub fn status(instance: &InstanceName, json: bool) -> Result<()> {
    let status: Status = call(instance, &Request::Status)?;
    if json {
        print_json(&status)?;
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
            let added: Added = call(instance, &Request::Add(traders))?;
            print_json(&added)?;
        }
        TradersCommand::Remove { id } => {
            let removed: Removed = call(instance, &Request::Remove(id))?;
            print_json(&removed)?;
        }
        TradersCommand::List { json } => {
            let list: TraderList = call(instance, &Request::Traders)?;
            if json {
                print_json(&list)?;
            } else {
                render::print_traders(&list);
            }
        }
    }
    Ok(())
}

/// What `kill-worker` did, as it prints it.
#[derive(Serialize)]
struct Killed<'a> {
    worker: u32,
    pid: u32,
    signal: &'a str,
}

/// `shmkline kill-worker ID --signal SIG`: the worker slot's current pid,
/// as `status` says, gets the signal.
pub fn kill_worker(instance: &InstanceName, id: u32, signal: &str) -> Result<()> {
    let status: Status = call(instance, &Request::Status)?;
    let pid = status
        .workers
        .iter()
        .find(|w| w.id == id)
        .map(|w| w.pid)
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
    print_json(&Killed {
        worker: id,
        pid,
        signal,
    })
}

/// Sends `sig` to the worker process `pid` (as `status` lists it).
pub fn signal_pid(pid: u32, sig: Signal) -> Result<(), nix::Error> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::ESRCH)?;
    kill(Pid::from_raw(pid), sig)
}
