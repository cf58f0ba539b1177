//! `shmkline top`: a full-screen view of a running instance (ratatui over
//! crossterm), refreshed from its control socket: header (instance, feed,
//! signals a second, the coordinator's memory), a row per worker, a row per
//! sink. Keys: up/down select a worker, `k` kills it (after a `y`) so the
//! coordinator replaces it, `t` shows the traders, `q` or Ctrl-C quits.
//!
//! The terminal is restored however it ends: `q`, Ctrl-C, SIGTERM/SIGHUP,
//! the instance stopping (said on stderr after the screen is restored), an
//! error, or a panic (ratatui's hook). One connection is kept and asked
//! once a refresh; nothing accumulates between refreshes (each screen is
//! drawn from the last answer alone), so `top`'s own memory stays flat.

mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::InstanceName;
use protocol::control::{Request, Status, TraderList};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::run::control::ControlClient;

/// Why `top` stopped.
enum Ended {
    /// The user quit.
    Quit,
    /// The instance went away.
    Stopped(String),
}

/// The terminal in raw mode on the alternate screen; restored on drop.
struct Tui(DefaultTerminal);

impl Drop for Tui {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// `shmkline top`.
pub fn top(instance: &InstanceName, every: Duration) -> Result<()> {
    // Keys come from stdin (crossterm would read /dev/tty instead, and the
    // hang-up watch looks at stdin): it must be the terminal.
    if !std::io::IsTerminal::is_terminal(&std::io::stdin())
        || !std::io::IsTerminal::is_terminal(&std::io::stdout())
    {
        anyhow::bail!(
            "shmkline top needs a terminal on stdin and stdout: for a script, use `shmkline status --json` or --metrics"
        );
    }
    let dir = crate::runtime::base_dir().join(instance.as_str());
    // Fails before the screen changes if the instance is not running.
    let mut client = ControlClient::connect(&dir)?;
    client.call::<Status>(&Request::Status)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handlers")?;
    }
    let watchdog = Watchdog::start()?;
    let tui = match ratatui::try_init() {
        Ok(terminal) => Tui(terminal),
        Err(e) => {
            // Raw mode may be on already.
            ratatui::restore();
            return Err(e).context("setting up the terminal");
        }
    };
    let ended = run(tui, &dir, client, every, &stop);
    drop(watchdog);
    match ended? {
        Ended::Quit => Ok(()),
        Ended::Stopped(why) => {
            eprintln!("shmkline top: instance {instance} stopped ({why})");
            Ok(())
        }
    }
}

/// What the loop keeps between refreshes (only the last answer).
struct State {
    status: Status,
    screen: view::Screen,
    /// A kill asked for and not yet confirmed: (slot, pid).
    confirm: Option<(u32, u32)>,
    /// The previous refresh's signal count, for the rate.
    last_count: Option<(Instant, u64)>,
}

fn run(
    mut tui: Tui,
    dir: &std::path::Path,
    mut client: ControlClient,
    every: Duration,
    stop: &AtomicBool,
) -> Result<Ended> {
    let mut state = State {
        status: Status::default(),
        screen: view::Screen::default(),
        confirm: None,
        last_count: None,
    };
    let mut next = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Ended::Quit);
        }
        if Instant::now() >= next {
            next = Instant::now() + every;
            if let Err(why) = refresh(&mut client, dir, &mut state) {
                return Ok(Ended::Stopped(why));
            }
            tui.0
                .draw(|f| view::draw(f, &state.status, &state.screen))
                .context("drawing")?;
        }
        // crossterm's reader loops without end on a terminal that hung up
        // (its reads return 0 bytes, never an error): wait for input here,
        // and call into crossterm only when there is some and the terminal
        // is still there. The watchdog covers a hang-up in between.
        let wait = next.saturating_duration_since(Instant::now());
        match stdin_ready(wait.min(Duration::from_millis(100))) {
            Input::HungUp => return Ok(Ended::Quit),
            Input::None => continue,
            Input::Ready => {}
        }
        // Every event crossterm has: it reads what the terminal holds in
        // one go and hands it out one event at a time, so keys typed
        // together (`t t q`) would otherwise wait in its buffer, unseen by
        // the wait on stdin above, until the next key.
        while event::poll(Duration::ZERO).context("reading keys")? {
            match event::read().context("reading keys")? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || (state.confirm.is_none() && key.code == KeyCode::Char('q')) {
                        return Ok(Ended::Quit);
                    }
                    key_pressed(key.code, &mut state, &mut client);
                    // Show the effect of a key at once.
                    next = Instant::now();
                }
                Event::Resize(..) => next = Instant::now(),
                _ => {}
            }
        }
    }
}

/// What waiting on the terminal gave.
enum Input {
    /// Bytes to read.
    Ready,
    /// Nothing within the wait.
    None,
    /// The terminal hung up (its window closed, the tmux server killed, the
    /// ssh connection dropped).
    HungUp,
}

/// Waits up to `wait` for input on stdin.
fn stdin_ready(wait: Duration) -> Input {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(&stdin),
        PollFlags::POLLIN,
    )];
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) | Err(_) => Input::None,
        Ok(_) => match fds[0].revents() {
            Some(r)
                if r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) =>
            {
                Input::HungUp
            }
            Some(r) if r.contains(PollFlags::POLLIN) => Input::Ready,
            _ => Input::None,
        },
    }
}

/// Ends the process if the terminal hangs up while the main thread is
/// inside crossterm (where a hung-up terminal makes it spin): checked every
/// 200 ms until dropped. Nothing is left to restore on a terminal that is
/// gone.
struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start() -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("top-watchdog".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if let Input::HungUp = stdin_ready(Duration::ZERO) {
                        std::process::exit(0);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .context("starting the terminal watchdog")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks for the status (and the traders when shown); an error says why
/// the instance is gone.
fn refresh(
    client: &mut ControlClient,
    dir: &std::path::Path,
    state: &mut State,
) -> Result<(), String> {
    let status: Status = match client.call(&Request::Status) {
        Ok(s) => s,
        // The server closes connections it considers idle, and one that
        // broke: try a new one once before giving up.
        Err(_) => {
            *client = ControlClient::connect(dir).map_err(|e| format!("{e:#}"))?;
            client
                .call(&Request::Status)
                .map_err(|e| format!("{e:#}"))?
        }
    };
    if state.screen.traders.is_some() {
        state.screen.traders = client.call::<TraderList>(&Request::Traders).ok();
    }
    let count = status.signals.emitted;
    let now = Instant::now();
    if let Some((at, before)) = state.last_count {
        let dt = now.duration_since(at).as_secs_f64();
        if dt > 0.0 {
            state.screen.signals_per_s = Some(count.saturating_sub(before) as f64 / dt);
        }
    }
    state.last_count = Some((now, count));
    let workers = status.workers.len();
    state.screen.selected = state.screen.selected.min(workers.saturating_sub(1));
    state.status = status;
    Ok(())
}

fn key_pressed(code: KeyCode, state: &mut State, client: &mut ControlClient) {
    if let Some((slot, pid)) = state.confirm.take() {
        state.screen.message = Some(if code != KeyCode::Char('y') {
            "not killed".to_owned()
        } else {
            // The answer may come long after the question: kill only the
            // process the slot still runs (a pid can be reused).
            let now = client
                .call::<Status>(&Request::Status)
                .ok()
                .and_then(|s| Some(s.workers.iter().find(|w| w.id == slot)?.pid));
            if now != Some(pid) {
                format!("worker {slot} is no longer pid {pid} (replaced meanwhile): not killed")
            } else {
                match crate::cli::client::signal_pid(pid, nix::sys::signal::Signal::SIGKILL) {
                    Ok(()) => {
                        format!("killed worker {slot} (pid {pid}): the coordinator replaces it")
                    }
                    Err(e) => format!("could not kill worker {slot} (pid {pid}): {e}"),
                }
            }
        });
        return;
    }
    state.screen.message = None;
    let workers = state.status.workers.len();
    match code {
        KeyCode::Up => state.screen.selected = state.screen.selected.saturating_sub(1),
        KeyCode::Down => {
            state.screen.selected = (state.screen.selected + 1).min(workers.saturating_sub(1));
        }
        KeyCode::Char('t') => {
            state.screen.traders = match state.screen.traders {
                Some(_) => None,
                None => Some(TraderList::default()),
            };
        }
        KeyCode::Char('k') => {
            let worker = state.status.workers.get(state.screen.selected);
            match worker.map(|w| (w.id, w.pid)) {
                Some((slot, pid)) if pid > 0 => {
                    state.confirm = Some((slot, pid));
                    state.screen.message = Some(format!(
                        "kill worker {slot} (pid {pid})? y to confirm, any other key to keep it"
                    ));
                }
                _ => state.screen.message = Some("that worker has no process now".to_owned()),
            }
        }
        _ => {}
    }
}
