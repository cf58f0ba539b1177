//! The `nats://HOST:PORT[/PREFIX]` sink: each signal published to a
//! JetStream stream on `<prefix>.signals.<SYMBOL>.<interval>.<trader>`, its
//! payload the stdout line, its `Nats-Msg-Id` the signal key, so the broker
//! drops a repeat inside the stream's duplicate window.
//!
//! A signal is delivered when its publish is acknowledged. Up to
//! `--nats-in-flight` publishes wait for their acknowledgement at once; they
//! are confirmed in the order sent, so a series' watermark only passes
//! acknowledged signals. A failed or timed-out acknowledgement sends that
//! signal and every later one again, same ids (the broker drops the ones it
//! has), after a backoff, until `--drain-timeout` at shutdown.
//!
//! The position survives a restart in two parts: the watermarks saved in
//! the state directory (at most every [`super::marks::SAVE_EVERY`]), then the stream's own
//! tail since that save ([`NatsSink::open`] reads it), so what was
//! acknowledged after the last save is known without relying on the
//! duplicate window, however long the coordinator was down. With no saved
//! position the whole stream is read. Why both: reading only the stream
//! would mean reading all of it at every start (a week of signals); the
//! state file alone would leave the signals acknowledged in the last save
//! interval to the duplicate window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use futures_util::StreamExt;

use super::super::dedup::Dedup;
use super::marks::{Delivers, Jitter, MarksFile, Position, spawn_delivering};
use super::webhook::backoff;
use super::{Batch, Key, Output};
use crate::nats::{Nats, NatsAddr, NatsSettings, token};

/// How long one message of the stream's tail may take to arrive at start.
const TAIL_WAIT: Duration = Duration::from_secs(10);

/// A NATS sink and its thread's state.
pub struct NatsSink {
    nats: Nats,
    /// The signal stream (the last message of a subject, after a failure).
    handle: jetstream::stream::Stream,
    stream: String,
    settings: NatsSettings,
    position: Position,
    jitter: Jitter,
}

impl NatsSink {
    /// Connects, makes the stream if missing, and recovers the position:
    /// the saved watermarks, raised by the stream's tail since they were saved.
    pub fn open(
        addr: &NatsAddr,
        settings: &NatsSettings,
        marks: MarksFile,
    ) -> anyhow::Result<(Self, Dedup)> {
        let nats = Nats::connect(addr, settings)?;
        let stream = settings
            .signal_stream
            .clone()
            .unwrap_or_else(|| addr.stream_name("SIGNALS"));
        let subjects = addr.subjects("signals");
        let handle = nats.stream(&stream, &subjects, settings)?;
        let saved = marks.load_saved()?;
        let (mut confirmed, after) = (saved.marks, saved.stream_seq);
        let read = nats
            .block_on(read_tail(&handle, &subjects, after, &mut confirmed))
            .map_err(|why| crate::nats::NatsError::Stream {
                server: addr.shown_server(),
                stream: stream.clone(),
                why: format!("reading what it holds: {why}"),
            })?;
        tracing::info!(sink = %addr, stream, read, series = confirmed.len(),
            after_seq = after, "NATS sink: position recovered (state dir, then the stream's tail)");
        let mut position = Position::new(confirmed.clone(), marks, "nats");
        position.stream_seq = after.unwrap_or(0);
        let sink = Self {
            nats,
            stream,
            settings: settings.clone(),
            position,
            handle,
            jitter: Jitter::default(),
        };
        Ok((sink, confirmed))
    }

    /// The connection's health, for `status`.
    pub fn health(&self) -> Arc<crate::nats::NatsHealth> {
        self.nats.health.clone()
    }

    /// The sink's thread: each batch acknowledged before the next is taken.
    pub fn spawn(
        self,
        batches: Receiver<Batch>,
        output: Arc<Output>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        spawn_delivering("nats-sink", self, batches, output)
    }
}

impl Delivers for NatsSink {
    fn position(&mut self) -> &mut Position {
        &mut self.position
    }

    /// Publishes one batch until every signal is acknowledged (or the
    /// drain time is over).
    fn deliver(&mut self, batch: &Batch, output: &Output) {
        let lines = batch.keyed(output);
        let prefix = self.nats.addr.prefix.clone();
        let subjects: Vec<String> = lines.iter().map(|(k, _)| subject(&prefix, k)).collect();
        let mut remaining: Vec<usize> = (0..lines.len()).collect();
        let mut attempt = 0;
        while !remaining.is_empty() {
            if output.out_of_time() {
                output.count(remaining.len() as u64, false);
                let covered = remaining
                    .iter()
                    .filter(|&&k| self.position.covers(&lines[k].0));
                output.lost_but_covered(covered.count() as u64);
                return;
            }
            let js = self.nats.js.clone();
            let window = self.settings.in_flight;
            let round = self
                .nats
                .block_on(publish_round(&js, &lines, &subjects, &remaining, window));
            let mut done = round.acked;
            if round.failed.is_some() {
                // Stored, its acknowledgement lost (a broker restart): the
                // last message of its subject says so, exactly, as a
                // subject has one publish in flight; past the duplicate
                // window a publish again would store it twice.
                done.extend(self.nats.block_on(stored_already(
                    &self.handle,
                    &lines,
                    &subjects,
                    &round.in_flight,
                )));
            }
            for &(i, duplicate) in &done {
                if duplicate {
                    output.duplicates.fetch_add(1, Ordering::AcqRel);
                }
                let key = &lines[i].0;
                self.position.confirm(key);
                output.delivered_since(batch.published);
                output.count(1, true);
                output.confirmed(key.open_time);
            }
            if let Some(seq) = round.last_seq {
                self.position.stream_seq = self.position.stream_seq.max(seq);
            }
            if !done.is_empty() {
                let done: std::collections::HashSet<usize> = done.iter().map(|&(i, _)| i).collect();
                remaining.retain(|i| !done.contains(i));
                self.position.save_due(output);
                attempt = 0;
            }
            if let Some(why) = round.failed {
                output.retries.fetch_add(1, Ordering::AcqRel);
                let wait = backoff(attempt, self.jitter.draw());
                if attempt == 0 || attempt.is_power_of_two() {
                    tracing::warn!(stream = %self.stream, error = %why, attempt = attempt + 1,
                        retry_in_ms = wait.as_millis() as u64,
                        "NATS publish not acknowledged: publishing again what was not");
                }
                output.error(why);
                attempt += 1;
                output.pause(wait);
            }
        }
    }
}

/// How far one publishing round got.
struct Round {
    /// Signals acknowledged (index, whether the stream had it already).
    acked: Vec<(usize, bool)>,
    /// Signals published and not acknowledged when it failed.
    in_flight: Vec<usize>,
    /// The highest stream sequence among the acknowledgements.
    last_seq: Option<u64>,
    /// Why it stopped, if not done.
    failed: Option<String>,
}

/// Which of the signals `in_flight` (of distinct subjects) the stream holds
/// as the last message of their subject, under their key.
async fn stored_already(
    stream: &jetstream::stream::Stream,
    lines: &[(Key, &[u8])],
    subjects: &[String],
    in_flight: &[usize],
) -> Vec<(usize, bool)> {
    let mut stored = Vec::new();
    for &i in in_flight {
        let Ok(last) = stream.get_last_raw_message_by_subject(&subjects[i]).await else {
            continue;
        };
        let id = last.headers.get(async_nats::header::NATS_MESSAGE_ID);
        if id.map(|v| v.as_str()) == Some(lines[i].0.idempotency_key().as_str()) {
            stored.push((i, false));
        }
    }
    stored
}

/// The subject of a signal.
pub fn subject(prefix: &str, key: &Key) -> String {
    format!(
        "{prefix}.signals.{}.{}.{}",
        token(&key.symbol),
        key.interval,
        token(&key.trader)
    )
}

/// Publishes the signals `remaining` (indices into `lines`, in order) with
/// up to `window` awaiting acknowledgement and at most one per subject (a
/// series: if a connection lost the first of two and the second were
/// stored, the stream's last message of the series would pass a signal it
/// does not hold), so a series' signals go in order while the others'
/// overlap; stops at the first failure.
async fn publish_round(
    js: &jetstream::Context,
    lines: &[(Key, &[u8])],
    subjects: &[String],
    remaining: &[usize],
    window: usize,
) -> Round {
    // Per subject, its signals in order; subjects with one to send, ready.
    let mut waiting: HashMap<&str, VecDeque<usize>> = HashMap::new();
    let mut ready: VecDeque<&str> = VecDeque::new();
    for &i in remaining {
        let queue = waiting.entry(subjects[i].as_str()).or_default();
        if queue.is_empty() {
            ready.push_back(subjects[i].as_str());
        }
        queue.push_back(i);
    }
    let mut pending: VecDeque<(usize, PublishAckFuture)> = VecDeque::with_capacity(window);
    let mut round = Round {
        acked: Vec::new(),
        in_flight: Vec::new(),
        last_seq: None,
        failed: None,
    };
    loop {
        while pending.len() < window.max(1)
            && let Some(subject) = ready.pop_front()
        {
            let Some(&i) = waiting.get(subject).and_then(|q| q.front()) else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                lines[i].0.idempotency_key().as_str(),
            );
            match js
                .publish_with_headers(subjects[i].clone(), headers, lines[i].1.to_vec().into())
                .await
            {
                Ok(ack) => pending.push_back((i, ack)),
                Err(e) => {
                    ready.push_front(subject);
                    if pending.is_empty() {
                        round.failed = Some(e.to_string());
                        return round;
                    }
                    // Await what is in flight first; this one goes again.
                    break;
                }
            }
        }
        let Some((i, front)) = pending.pop_front() else {
            return round;
        };
        match front.await {
            Ok(ack) => {
                round.acked.push((i, ack.duplicate));
                round.last_seq = Some(round.last_seq.unwrap_or(0).max(ack.sequence));
                let subject = subjects[i].as_str();
                if let Some(queue) = waiting.get_mut(subject) {
                    queue.pop_front();
                    if !queue.is_empty() {
                        ready.push_back(subject);
                    }
                }
            }
            Err(e) => {
                round.in_flight = std::iter::once(i)
                    .chain(pending.iter().map(|(j, _)| *j))
                    .collect();
                round.failed = Some(e.to_string());
                return round;
            }
        }
    }
}

/// Raises `confirmed` by every signal the stream holds on `subjects` after
/// sequence `after` (all of them if `None`), up to its last message now;
/// how many were read.
async fn read_tail(
    stream: &jetstream::stream::Stream,
    subjects: &str,
    after: Option<u64>,
    confirmed: &mut Dedup,
) -> Result<u64, String> {
    let mut info = stream.clone();
    let last = info
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let start = after.map_or(1, |s| s + 1);
    if last < start {
        return Ok(0);
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects.to_owned(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut read = 0;
    loop {
        let message = match tokio::time::timeout(TAIL_WAIT, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => break,
            Err(_) => {
                return Err(format!(
                    "sequences {start} to {last} did not all arrive within {TAIL_WAIT:?} (read {read})"
                ));
            }
        };
        read += 1;
        match serde_json::from_slice::<Key>(&message.payload) {
            Ok(key) => {
                confirmed.first(&key.as_signal());
            }
            Err(e) => tracing::warn!(subject = %message.subject, error = %e,
                "a message on the signal stream that is not a signal: skipped"),
        }
        // Up to the last message when we looked (others may keep publishing).
        let (seq, pending) = message
            .info()
            .map_or((last, 0), |i| (i.stream_sequence, i.pending));
        if seq >= last || pending == 0 {
            break;
        }
    }
    confirmed.duplicates = 0;
    Ok(read)
}
