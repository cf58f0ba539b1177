//! A worker slot (its traders and its succession of worker processes) and
//! one incarnation of it (a worker process, its channel and its requests).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Child;
use std::time::{Duration, Instant};

use protocol::control::{Worker, WorkerState};
use protocol::message::Pong;
use protocol::trader::TraderSpec;

use super::emit::Emitter;
use super::faults::{Cause, FaultId, FaultKind};
use super::link::{Budget, Link};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// INIT sent, no READY yet.
    Starting,
    /// READY received; ADD_TRADERs sent, not all acknowledged.
    Syncing,
    /// Every trader acknowledged.
    Ready,
    /// CLEANUP sent.
    Cleaning,
    /// CLEANUP_COMPLETE received (or its channel closed while cleaning).
    Exited,
    /// Faulty: killed, waiting to be reaped and replaced.
    Dead,
}

/// First delay before restarting a slot after a self-inflicted failure;
/// doubled per failure within the intensity period, up to [`RESTART_BACKOFF_CAP`].
pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);

/// Longest delay before a restart.
pub const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// What a pending request was for, to act on its answer.
#[derive(Debug, Clone)]
pub(super) enum Purpose {
    Init,
    AddTrader(String),
    RemoveTrader(String),
    Ping(Instant),
    Cleanup,
}

pub(super) struct Pending {
    pub(super) bytes: Vec<u8>,
    pub(super) purpose: Purpose,
    pub(super) attempts: u32,
    pub(super) retry_at: Option<Instant>,
    /// Frame and byte counts sent to the worker up to and including this
    /// request's first copy: its answer proves the worker read that far.
    pub(super) read_mark: (u64, u64),
}

/// Log2 buckets of round-trip times in microseconds: bucket k holds
/// [2^k, 2^(k+1)) us. Fixed size, so it never grows.
#[derive(Debug, Default, Clone)]
pub(super) struct RttHistogram {
    pub(super) buckets: [u64; 24],
}

impl RttHistogram {
    pub(super) fn record(&mut self, rtt: Duration) {
        let us = rtt.as_micros().max(1) as u64;
        let k = (63 - us.leading_zeros() as usize).min(self.buckets.len() - 1);
        self.buckets[k] += 1;
    }
}

/// One worker process of a slot.
pub(super) struct Incarnation {
    pub(super) no: u64,
    pub(super) pid: u32,
    pub(super) child: Option<Child>,
    pub(super) link: Option<Link>,
    pub(super) state: State,
    pub(super) pending: BTreeMap<u64, Pending>,
    pub(super) next_id: u64,
    pub(super) acked: BTreeSet<String>,
    /// Traders still to send ADD_TRADER for, in order (an id no longer held,
    /// or already acknowledged, is skipped when it comes up): sending the
    /// next costs no scan of the slot's traders, however many it holds.
    pub(super) unsent: VecDeque<String>,
    /// Traders removed whose REMOVE_TRADER this worker has not acknowledged
    /// yet: their signals may still be on the way, so the id cannot be added
    /// again until then.
    pub(super) removing: BTreeSet<String>,
    pub(super) synced_at: Option<Instant>,
    pub(super) last_pong: Option<(Instant, Pong)>,
    pub(super) rtt: Option<Duration>,
    /// Frames and bytes sent so far.
    pub(super) sent: (u64, u64),
    /// Frames and bytes the worker has provably read.
    pub(super) read: (u64, u64),
    /// Its fault in the log, once faulty.
    pub(super) fault: Option<FaultId>,
    /// Whether the process was stopped (state T) when its fault was detected.
    pub(super) stopped: bool,
    /// READY was received.
    pub(super) reached_ready: bool,
    /// The progress its PONGs last reported (publish counter covered,
    /// candles judged), and when either last advanced.
    pub(super) progress: Option<((u64, u64), Instant)>,
    /// Since when a batch it has not covered waits (seen by the watchdog):
    /// a worker idle for long is not stuck the moment a batch comes.
    pub(super) behind_since: Option<Instant>,
    /// For a crash seen on the channel: when to SIGKILL if it has not exited
    /// by itself (so its own exit status, not our kill, tells why it went).
    pub(super) kill_at: Option<Instant>,
}

/// Why a frame could not be sent.
pub(super) enum SendFailure {
    /// The worker's end is closed: it died (its exit status says why).
    Closed(String),
    /// The worker is not keeping up (not reading, too many requests pending).
    Behind(String),
    /// The request does not encode: a bug here, not the worker's fault
    /// (specs are size-checked where they enter).
    Encode(String),
}

impl SendFailure {
    /// The worker fault it means, if any.
    pub(super) fn kind(&self) -> Option<FaultKind> {
        match self {
            SendFailure::Closed(_) => Some(FaultKind::Crash),
            SendFailure::Behind(_) => Some(FaultKind::Hang),
            SendFailure::Encode(_) => None,
        }
    }

    pub(super) fn why(self) -> String {
        match self {
            SendFailure::Closed(w) | SendFailure::Behind(w) | SendFailure::Encode(w) => w,
        }
    }
}

impl Incarnation {
    /// Worker process `pid`, incarnation `no` of its slot, just spawned:
    /// `link` its channels; INIT is still to be sent.
    pub(super) fn new(no: u64, pid: u32, child: Child, link: Link) -> Self {
        Self {
            no,
            pid,
            child: Some(child),
            link: Some(link),
            state: State::Starting,
            pending: BTreeMap::new(),
            next_id: 0,
            acked: BTreeSet::new(),
            unsent: VecDeque::new(),
            removing: BTreeSet::new(),
            synced_at: None,
            last_pong: None,
            rtt: None,
            sent: (0, 0),
            read: (0, 0),
            fault: None,
            stopped: false,
            reached_ready: false,
            progress: None,
            behind_since: None,
            kill_at: None,
        }
    }

    /// Sends one frame unless that would leave more than `budget` unread.
    pub(super) fn transmit(
        &mut self,
        bytes: &[u8],
        budget: Budget,
    ) -> Result<(u64, u64), SendFailure> {
        budget
            .admits(self.sent, self.read, bytes.len())
            .map_err(SendFailure::Behind)?;
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| SendFailure::Closed("no channel".into()))?;
        link.send(bytes)
            .map_err(|e| SendFailure::Closed(format!("its channel is closed ({e})")))?;
        self.sent = (self.sent.0 + 1, self.sent.1 + bytes.len() as u64);
        Ok(self.sent)
    }

    pub(super) fn live(&self) -> bool {
        matches!(self.state, State::Starting | State::Syncing | State::Ready)
    }
}

/// A worker slot: its traders and its succession of worker processes.
pub(super) struct Slot {
    pub(super) id: u32,
    /// Its traders, by id.
    pub(super) traders: BTreeMap<String, TraderSpec>,
    /// Each trader's window (candles a verdict reads), for `traders list`.
    pub(super) windows: std::collections::HashMap<String, u64>,
    /// The evaluation graph's nodes its traders make, counted as its worker
    /// counts them against the bound.
    pub(super) nodes: protocol::rule::NodeCount,
    /// Traders added while running: the publish counter at which each was
    /// added; its evaluation starts with the candles written after it.
    pub(super) starts: BTreeMap<String, u64>,
    /// Publish counter up to which every trader of the slot evaluated every
    /// candle, as confirmed by a PONG after all traders were acknowledged.
    pub(super) confirmed: u64,
    pub(super) incarnations: u64,
    pub(super) live: Option<Incarnation>,
    pub(super) spawning: bool,
    pub(super) restarts: u32,
    pub(super) self_failures: VecDeque<Instant>,
    /// Starts in a row that never reached READY.
    pub(super) failed_starts: u32,
    pub(super) restart_at: Option<Instant>,
    /// The fault being recovered from, if any.
    pub(super) recovering: Option<FaultId>,
    // Totals over the slot's incarnations.
    /// Gap events reported by its workers (dead ones included).
    pub(super) gaps: u64,
    /// The live incarnation's last reported gap count, included in `gaps`.
    pub(super) live_gaps: u64,
    pub(super) retries: u64,
    pub(super) malformed: u64,
    /// Frames with a valid header whose payload did not decode.
    pub(super) undecodable: u64,
    pub(super) rtt_hist: RttHistogram,
    /// Evaluation passes of its dead incarnations (the live one's are in
    /// its last PONG): the metric never goes back when a worker dies.
    pub(super) passes_retired: protocol::histogram::Log2Histogram,
    /// Restarts by cause (`outside`, `self_inflicted`, `planned`), over
    /// the slot's life.
    pub(super) restarts_by_cause: BTreeMap<Cause, u64>,
}

impl Slot {
    /// Slot `id` holding `traders`, with no worker yet.
    pub(super) fn new(id: u32, traders: BTreeMap<String, TraderSpec>) -> Self {
        // Worked out once, before the loop runs (the rules were checked).
        let windows = traders
            .values()
            .map(|t| (t.id.clone(), window_of(t)))
            .collect();
        let mut nodes = protocol::rule::NodeCount::default();
        for t in traders.values() {
            nodes.add(&t.id, nodes_of(t));
        }
        Self {
            id,
            traders,
            windows,
            nodes,
            starts: BTreeMap::new(),
            confirmed: 0,
            incarnations: 0,
            live: None,
            spawning: false,
            restarts: 0,
            self_failures: VecDeque::new(),
            failed_starts: 0,
            restart_at: None,
            recovering: None,
            gaps: 0,
            live_gaps: 0,
            retries: 0,
            malformed: 0,
            undecodable: 0,
            rtt_hist: RttHistogram::default(),
            passes_retired: Default::default(),
            restarts_by_cause: BTreeMap::new(),
        }
    }

    /// Ends the live incarnation: its evaluation passes join the slot's
    /// dead ones' (for the metrics), and its link is returned.
    pub(super) fn retire_live(&mut self) -> Option<super::link::Link> {
        let mut inc = self.live.take()?;
        if let Some((_, pong)) = &inc.last_pong {
            self.passes_retired.add(&pong.pass_histogram);
        }
        inc.link.take()
    }

    /// Every evaluation pass of the slot's workers, dead and live.
    pub(super) fn passes(&self) -> protocol::histogram::Log2Histogram {
        let mut all = self.passes_retired;
        if let Some((_, pong)) = self.live.as_ref().and_then(|i| i.last_pong.as_ref()) {
            all.add(&pong.pass_histogram);
        }
        all
    }

    /// Tells the emitter which traders this slot holds now: the one place
    /// that decides whose signals are printed.
    pub(super) fn tell_holds(&self, emitter: &Emitter) {
        emitter.holds(self.id as usize, self.traders.keys().map(String::as_str));
    }

    /// Holds `t` from publish `from_publish` on; the caller tells the
    /// emitter ([`Self::tell_holds`]) once it has added them all.
    pub(super) fn add_trader(&mut self, t: TraderSpec, from_publish: u64, checked: Checked) {
        self.starts.insert(t.id.clone(), from_publish);
        let window = checked.window.unwrap_or_else(|| window_of(&t));
        self.windows.insert(t.id.clone(), window);
        let nodes = checked.nodes.unwrap_or_else(|| nodes_of(&t));
        self.nodes.add(&t.id, nodes);
        if let Some(inc) = self.live.as_mut() {
            inc.unsent.push_back(t.id.clone());
        }
        self.traders.insert(t.id.clone(), t);
    }

    /// Its worker failed by its own doing (or could not start), `why`: the
    /// restart policy. At most `limit` such failures within `period`, and
    /// `limit` failed starts in a row; within them the restart waits a
    /// backoff that doubles per failure. Past them, why the run cannot go
    /// on.
    pub(super) fn failed_itself(
        &mut self,
        why: &str,
        period: Duration,
        limit: u32,
    ) -> Result<(), String> {
        let now = Instant::now();
        self.self_failures.push_back(now);
        while self
            .self_failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > period)
        {
            self.self_failures.pop_front();
        }
        let n = self.self_failures.len() as u32;
        if n > limit {
            return Err(format!(
                "worker slot {} failed {n} times within {period:?} (limit {limit}); last: {why}",
                self.id
            ));
        }
        // A slot that cannot start at all gives up once the limit is reached,
        // however slowly its attempts fail (a start can take the connect timeout).
        if self.failed_starts > limit {
            return Err(format!(
                "worker slot {} could not start {} times in a row (limit {limit}); last: {why}",
                self.id, self.failed_starts
            ));
        }
        let delay = RESTART_BACKOFF
            .saturating_mul(1 << (n.saturating_sub(1)).min(16))
            .min(RESTART_BACKOFF_CAP);
        tracing::warn!(
            slot = self.id,
            failures = n,
            limit,
            ?delay,
            "self-inflicted failure: restarting after a backoff"
        );
        self.restart_at = Some(now + delay);
        Ok(())
    }

    /// Where its worker is in its life; `recovering`: the fault it
    /// recovers from is still in the log.
    pub(super) fn state(&self, recovering: bool) -> WorkerState {
        match self.live.as_ref().map(|i| i.state) {
            Some(State::Starting) => WorkerState::Starting,
            Some(State::Syncing) => WorkerState::Syncing,
            // Ready, but the PONG confirming its recovery is still to come.
            Some(State::Ready) if recovering => WorkerState::Recovering,
            Some(State::Ready) => WorkerState::Ready,
            Some(State::Cleaning) => WorkerState::Cleaning,
            Some(State::Exited) => WorkerState::Exited,
            Some(State::Dead) => WorkerState::Dead,
            None if self.spawning => WorkerState::Spawning,
            None if self.restart_at.is_some() => WorkerState::Backoff,
            None => WorkerState::Down,
        }
    }

    /// The slot as `status` shows it: `state` from [`Self::state`],
    /// `signals` received from its workers.
    pub(super) fn status(&self, state: WorkerState, signals: u64) -> Worker {
        let inc = self.live.as_ref();
        let pong = inc.and_then(|i| i.last_pong.as_ref());
        let reported = |f: fn(&Pong) -> u64| pong.map(|(_, p)| f(p));
        Worker {
            id: self.id,
            pid: inc.map_or(0, |i| i.pid),
            state,
            traders: inc.map_or(0, |i| i.acked.len() as u64),
            trader_ids: self.traders.keys().cloned().collect(),
            restarts: self.restarts,
            rtt_us: inc.and_then(|i| i.rtt).map(|d| d.as_micros() as u64),
            last_pong_age_ms: pong.map(|(at, _)| at.elapsed().as_millis() as u64),
            retries: self.retries,
            malformed_frames: self.malformed,
            undecodable_frames: self.undecodable,
            signals,
            rss_bytes: reported(|p| p.rss_bytes),
            last_publish: reported(|p| p.last_publish),
            confirmed_publish: self.confirmed,
            gaps: reported(|p| p.gaps),
            judged: reported(|p| p.judged),
            signal_frames: reported(|p| p.signal_frames),
            largest_signal_frame_bytes: reported(|p| p.largest_signal_frame),
            passes: reported(|p| p.passes),
            pass_p50_us: reported(|p| p.pass_p50_us),
            pass_p99_us: reported(|p| p.pass_p99_us),
            rtt_histogram_log2_us: self.rtt_hist.buckets.to_vec(),
        }
    }

    /// Stops holding trader `id` (refused, quarantined or removed): its
    /// signals are dropped from now on, even ones already in flight.
    pub(super) fn drop_trader(&mut self, id: &str, emitter: &Emitter) {
        self.traders.remove(id);
        self.windows.remove(id);
        self.nodes.remove(id);
        self.starts.remove(id);
        self.tell_holds(emitter);
    }
}

/// A trader's window: its rule's warm-up and its cooldown (0 if the rule
/// does not compile, which a checked trader's always does).
pub(super) fn window_of(t: &TraderSpec) -> u64 {
    t.compile()
        .map_or(0, |r| (r.lookback() + t.cooldown as usize) as u64)
}

/// The evaluation graph's nodes a trader's rule makes (none if it does not
/// compile, which a checked trader's always does).
pub(super) fn nodes_of(t: &TraderSpec) -> Vec<String> {
    t.compile()
        .ok()
        .and_then(|r| r.compiled().map(|c| protocol::rule::node_texts(&c.expr)))
        .unwrap_or_default()
}

/// What the checks on a client's thread worked out about a trader to add,
/// so the loop compiles no rule.
#[derive(Debug, Default, Clone)]
pub(super) struct Checked {
    /// Its window.
    pub(super) window: Option<u64>,
    /// Its graph nodes.
    pub(super) nodes: Option<Vec<String>>,
}
