//! Moves events from the spool to their sink, many at a time, and advances the
//! spool's cursor only over events the sink has confirmed.
//!
//! Confirmations arrive out of order; the cursor is the oldest unconfirmed
//! sequence, so a crash replays at most the in-flight window (duplicates, never
//! losses). Retriable failures are retried with capped exponential backoff and
//! jitter, forever; permanent ones go to the dead-letter file, so one poison
//! event never stalls the stream.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ForwardConfig;
use crate::deadletter::DeadLetter;
use crate::event::Accepted;
use crate::metrics;
use crate::sink::{Message, Route, SinkError};
use crate::spool::{Reader, Record, Spool};

mod control;

pub use control::{Control, PAUSED_FILE, State, Status};

/// How often the lag gauge and the cursor file are refreshed.
const TICK: Duration = Duration::from_millis(200);

/// Saves how far delivery got: takes the confirmed cursor, has the sink make what
/// it confirmed durable ([`Sink::sync`]), then persists that cursor and frees the
/// spool behind it (off the async workers). Returns the cursor persisted.
pub async fn checkpoint(spool: Spool, route: Route) -> io::Result<u64> {
    let cursor = spool.cursor();
    if let Err(e) = route.sink.sync().await {
        // The cursor stays where the sink last made it durable, but the synced
        // end is recorded all the same: recovery tells damage from a torn write
        // by it, and a sink failing for hours must not blur that line.
        let kept = spool.persisted_cursor();
        let _ = tokio::task::spawn_blocking(move || spool.checkpoint(kept)).await;
        return Err(io::Error::other(format!(
            "{} sink cannot sync: {e}",
            route.name()
        )));
    }
    tokio::task::spawn_blocking(move || spool.checkpoint(cursor))
        .await
        .map_err(io::Error::other)?
}

/// Why a direct publish (`ack = "broker"`) ended without a confirmation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectError {
    /// Not confirmed in time, or the broker is unreachable: the provider retries.
    #[error("broker did not confirm: {0}")]
    Unconfirmed(String),
    /// The broker will never take this event as it is.
    #[error("broker refused the event: {0}")]
    Refused(String),
}

/// `ack = "broker"`: publishes one accepted event straight to each of its sinks (no
/// spool) and waits for every confirmation, within `timeout`; counted like the
/// forwarder's deliveries. The edge calls this and knows nothing else of sinks.
/// A sink that refuses the event for good makes it `Refused`; else any sink not
/// confirming makes it `Unconfirmed` (the provider retries; sinks that did confirm
/// get a duplicate then, which consumers drop by the event id).
pub async fn publish_direct(
    routes: Arc<[Route]>,
    timeout: Duration,
    event: Accepted,
) -> Result<(), DirectError> {
    let event = Arc::new(event.into_event());
    let each = routes
        .iter()
        .map(|route| publish_one_direct(route, timeout, event.clone()));
    let mut outcome = Ok(());
    for result in futures_util::future::join_all(each).await {
        match (result, &outcome) {
            (Err(e @ DirectError::Refused(_)), _) | (Err(e), Ok(())) => outcome = Err(e),
            _ => {}
        }
    }
    outcome
}

async fn publish_one_direct(
    route: &Route,
    timeout: Duration,
    event: Arc<crate::event::Event>,
) -> Result<(), DirectError> {
    let sent = Instant::now();
    let message = Message {
        seq: 0,
        event: event.clone(),
        replay: false,
    };
    let topic = event.topic();
    match tokio::time::timeout(timeout, route.publish_one(message)).await {
        Ok(Ok(())) => {
            route
                .metrics
                .published(topic, sent.elapsed(), age(event.received_at_ns()));
            Ok(())
        }
        Ok(Err(SinkError::Retriable(e))) => {
            route.metrics.retriable_error(topic);
            Err(DirectError::Unconfirmed(e))
        }
        Ok(Err(SinkError::Permanent(e))) => {
            route.metrics.permanent_error(topic);
            Err(DirectError::Refused(e))
        }
        Err(_) => {
            route.metrics.retriable_error(topic);
            Err(DirectError::Unconfirmed(
                "no confirmation within the ack timeout".into(),
            ))
        }
    }
}

struct Pending {
    msg: Message,
    attempts: u32,
    done: bool,
    /// Read (or due for a retry) while the sink is paused: published on resume.
    parked: bool,
    /// When it was last handed to the sink, for the delivery latency histogram.
    sent_at: Instant,
}

type Confirmed = std::pin::Pin<Box<dyn Future<Output = (u64, Result<(), SinkError>)> + Send>>;

/// One sink's forwarder: its own spool (the sink's backlog), reader, in-flight
/// window and cursor, so that one sink's outage holds only its own events.
pub struct Forwarder {
    spool: Spool,
    reader: Option<Reader>,
    route: Route,
    /// Sources configured now: an event spooled for one that was since removed is
    /// dead-lettered with that reason instead of being published.
    sources: Arc<HashSet<String>>,
    dead_letter: DeadLetter,
    cfg: ForwardConfig,
    /// Unconfirmed events by sequence; the first key is the cursor.
    in_flight: BTreeMap<u64, Pending>,
    /// Body bytes held by `in_flight`.
    in_flight_bytes: usize,
    /// Sequence of the next record to read: the cursor when nothing is in flight.
    next_read: u64,
    retries: BinaryHeap<Reverse<(Instant, u64)>>,
    confirms: FuturesUnordered<Confirmed>,
    last_warn: Option<Instant>,
    /// When waiting retries were last brought forward by a success (see `settle`).
    last_hurry: Option<Instant>,
    /// Topics whose permanent failures were already logged: once per topic, not per event.
    refused_topics: HashSet<String>,
    metrics: metrics::ForwardMetrics,
    /// Fault injection: panic after settling this many more events (`crate::faults`).
    panic_after: Option<u64>,
    control: Arc<Control>,
    paused: watch::Receiver<bool>,
    /// Some entry of `in_flight` is parked: the first dispatch after a resume
    /// publishes those first, so nothing read later overtakes them.
    any_parked: bool,
}

/// `None` while running; `Some(deadline)` once shutdown asks for a drain.
pub type DrainSignal = watch::Receiver<Option<Instant>>;

impl Forwarder {
    pub fn new(
        spool: Spool,
        reader: Reader,
        route: Route,
        sources: Arc<HashSet<String>>,
        dead_letter: DeadLetter,
        cfg: ForwardConfig,
        control: Arc<Control>,
    ) -> Self {
        Self {
            paused: control.subscribe(),
            control,
            any_parked: false,
            next_read: reader.position(),
            spool,
            reader: Some(reader),
            metrics: metrics::ForwardMetrics::new(route.name()),
            route,
            sources,
            dead_letter,
            cfg,
            in_flight: BTreeMap::new(),
            in_flight_bytes: 0,
            retries: BinaryHeap::new(),
            confirms: FuturesUnordered::new(),
            last_warn: None,
            last_hurry: None,
            refused_topics: HashSet::new(),
            panic_after: crate::faults::forwarder_panic_after(),
        }
    }

    /// Runs until drained (or the drain deadline passes) after `drain` fires.
    /// Whatever is unconfirmed then stays in the spool for the next start.
    pub async fn run(mut self, mut drain: DrainSignal) {
        let mut durable = match &self.reader {
            Some(r) => r.durable(),
            None => return,
        };
        let mut reading: Option<JoinHandle<(Reader, io::Result<Vec<Record>>)>> = None;
        let mut tick = tokio::time::interval(TICK);
        let mut persisted = self.spool.cursor();
        // The synced end the last checkpoint recorded (recovery tells damage from a
        // torn write by it), so a checkpoint is also taken when only it moved.
        let mut persisted_end = 0;
        // At most one checkpoint (sink syncs, cursor fsync, segment unlinks) at a time.
        let mut saving: Option<(JoinHandle<io::Result<u64>>, u64)> = None;
        // Since when fewer than a batch of synced events have waited for more
        // (`forward.linger_ms`); `None` when not waiting.
        let mut lingering: Option<Instant> = None;
        let linger = Duration::from_millis(self.cfg.linger_ms);
        loop {
            if reading.is_none()
                && (lingering.is_none_or(|since| since.elapsed() >= linger)
                    || drain.borrow().is_some())
                && let Some(mut reader) = self.reader.take()
            {
                // While paused, one record is read and parked: its age is the
                // backlog's oldest, which the admin API and the lag gauge show.
                let room = if *self.paused.borrow() {
                    usize::from(self.in_flight.is_empty())
                } else {
                    self.cfg.max_in_flight.saturating_sub(self.in_flight.len())
                };
                let room_bytes = self
                    .cfg
                    .max_in_flight_bytes
                    .saturating_sub(self.in_flight_bytes);
                let synced = durable
                    .borrow_and_update()
                    .saturating_sub(reader.position());
                let n = room.min(self.cfg.batch_max);
                // A partial batch waits (once) for more, unless draining: fewer,
                // fuller hand-overs to the sink, and fewer wake-ups per event.
                let wait = synced > 0
                    && synced < n as u64
                    && lingering.is_none()
                    && !linger.is_zero()
                    && drain.borrow().is_none();
                if wait {
                    lingering = Some(Instant::now());
                    self.reader = Some(reader);
                } else if room > 0 && room_bytes > 0 && synced > 0 {
                    lingering = None;
                    // Fresh records come from the writer's memory; the disk only when behind.
                    let synced = reader.take_synced(n, room_bytes);
                    if !synced.is_empty() {
                        self.next_read = reader.position();
                        self.reader = Some(reader);
                        self.dispatch(synced.into_iter().map(Message::from).collect())
                            .await;
                        continue;
                    }
                    reading = Some(tokio::task::spawn_blocking(move || {
                        let mut reader = reader;
                        let r = reader.read_batch_within(n, room_bytes);
                        (reader, r)
                    }));
                } else {
                    // Nothing synced, or no room: a new wait starts with the next commit.
                    lingering = None;
                    self.reader = Some(reader);
                }
            }
            let deadline = *drain.borrow();
            if let Some(deadline) = deadline {
                let caught_up = self.in_flight.is_empty()
                    && reading.is_none()
                    && self.next_read >= self.spool.durable_end();
                // Paused with nothing at the sink: waiting for the deadline delivers nothing.
                let held = *self.paused.borrow() && self.in_flight.values().all(|p| p.parked);
                if caught_up || held || Instant::now() >= deadline {
                    if !caught_up {
                        tracing::warn!(
                            unconfirmed = self.spool.durable_end().saturating_sub(self.cursor()),
                            "drain deadline reached; unconfirmed events stay in the spool for the next start"
                        );
                    }
                    break;
                }
            }
            let next_retry = self.retries.peek().map(|Reverse((at, _))| *at);
            let linger_until = lingering.map(|since| since + linger);
            tokio::select! {
                () = sleep_until_opt(linger_until), if linger_until.is_some() => {}
                joined = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                    reading = None;
                    match joined {
                        Ok((reader, Ok(records))) => {
                            self.next_read = reader.position();
                            self.reader = Some(reader);
                            self.dispatch(records.into_iter().map(|r| r.into()).collect()).await;
                        }
                        Ok((reader, Err(e))) => {
                            self.reader = Some(reader);
                            self.warn(&format!("reading the spool failed: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "spool reader task died; forwarding stops");
                            break;
                        }
                    }
                }
                Some((seq, result)) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.settle(seq, result).await;
                }
                _ = sleep_until_opt(next_retry), if next_retry.is_some() => {
                    self.retry_due().await;
                }
                changed = self.paused.changed() => {
                    if changed.is_ok() && !*self.paused.borrow_and_update() {
                        self.unpark().await;
                    }
                    self.report();
                }
                changed = durable.changed(), if self.reader.is_some() && lingering.is_none() => {
                    if changed.is_err() {
                        // The writer is gone; nothing new will arrive. Keep settling.
                        self.reader.take();
                    }
                }
                _ = drain.changed() => {}
                _ = tick.tick() => {
                    self.report();
                    let cursor = self.cursor();
                    // A failed checkpoint leaves `persisted` behind, so the next tick retries.
                    if let Some((done, end)) = saving.take_if(|(c, _)| c.is_finished()) {
                        match done.await {
                            Ok(Ok(written)) => (persisted, persisted_end) = (written, end),
                            Ok(Err(e)) => self.warn(&format!("cannot persist the spool cursor: {e}")),
                            Err(e) => self.warn(&format!("spool checkpoint task failed: {e}")),
                        }
                    }
                    let end = self.spool.durable_end();
                    if (cursor != persisted || end != persisted_end) && saving.is_none() {
                        let task = tokio::spawn(checkpoint(self.spool.clone(), self.route.clone()));
                        saving = Some((task, end));
                    }
                }
            }
        }
        if let Some((c, _)) = saving {
            let _ = c.await;
        }
        if let Err(e) = checkpoint(self.spool.clone(), self.route.clone()).await {
            tracing::warn!(error = %e, "cannot persist the spool cursor at shutdown");
        }
        self.report();
    }

    fn cursor(&self) -> u64 {
        self.in_flight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_read)
    }

    /// Publishes new or retried messages, in order. An event of a source no
    /// longer configured is refused for good (dead-lettered) without publishing.
    /// While the sink is paused they are kept (parked) instead, for [`Self::unpark`].
    async fn dispatch(&mut self, mut msgs: Vec<Message>) {
        let now = Instant::now();
        let parked = *self.paused.borrow();
        if !parked && self.any_parked {
            self.any_parked = false;
            let mut first: Vec<Message> = self
                .in_flight
                .values()
                .filter(|p| p.parked && !p.done)
                .map(|p| p.msg.clone())
                .collect();
            msgs.retain(|m| !self.in_flight.get(&m.seq).is_some_and(|p| p.parked));
            first.append(&mut msgs);
            msgs = first;
        }
        self.any_parked |= parked && !msgs.is_empty();
        let mut batch = Vec::with_capacity(msgs.len());
        for m in msgs {
            let held = &mut self.in_flight_bytes;
            self.in_flight
                .entry(m.seq)
                .and_modify(|p| {
                    p.sent_at = now;
                    p.parked = parked;
                })
                .or_insert_with(|| {
                    *held += m.event.body().len();
                    Pending {
                        msg: m.clone(),
                        attempts: 0,
                        done: false,
                        parked,
                        sent_at: now,
                    }
                });
            if parked {
                continue;
            }
            if self.sources.contains(m.event.source()) {
                batch.push(m);
            } else {
                let why = format!("source '{}' was removed from the config", m.event.source());
                let seq = m.seq;
                self.confirms.push(Box::pin(
                    async move { (seq, Err(SinkError::Permanent(why))) },
                ));
            }
        }
        if batch.is_empty() {
            return;
        }
        let seqs: Vec<u64> = batch.iter().map(|m| m.seq).collect();
        let confirmations = crate::sink::publish_caught(&self.route, batch).await;
        for (seq, c) in seqs.into_iter().zip(confirmations) {
            self.confirms.push(Box::pin(
                async move { (seq, crate::sink::confirmed(c).await) },
            ));
        }
    }

    async fn settle(&mut self, seq: u64, result: Result<(), SinkError>) {
        if let Some(n) = self.panic_after.as_mut() {
            *n = n.saturating_sub(1);
            assert!(*n > 0, "injected forwarder panic (fault injection)");
        }
        let Some(p) = self.in_flight.get_mut(&seq) else {
            return;
        };
        let route = self.route.clone();
        match result {
            Ok(()) => {
                p.done = true;
                route.metrics.published(
                    p.msg.event.topic(),
                    p.sent_at.elapsed(),
                    age(p.msg.event.received_at_ns()),
                );
                self.hurry_retries();
            }
            Err(SinkError::Retriable(reason)) => {
                route.metrics.retriable_error(p.msg.event.topic());
                p.attempts += 1;
                let delay = backoff(&self.cfg, p.attempts);
                self.retries.push(Reverse((Instant::now() + delay, seq)));
                let msg = format!(
                    "{} sink failed for topic {} (attempt {}), retrying in {:?}: {reason}",
                    route.name(),
                    p.msg.event.topic(),
                    p.attempts,
                    delay
                );
                self.warn(&msg);
            }
            Err(SinkError::Permanent(reason)) => {
                route.metrics.permanent_error(p.msg.event.topic());
                self.control.error(&format!(
                    "an event for topic {} was refused for good (dead-lettered): {reason}",
                    p.msg.event.topic()
                ));
                let msg = p.msg.clone();
                // Remembered topics are bounded: senders choose them.
                if self.refused_topics.len() >= 1024 {
                    self.refused_topics.clear();
                }
                if self.refused_topics.insert(msg.event.topic().to_string()) {
                    tracing::error!(sink = route.name(), topic = %msg.event.topic(), reason = %reason,
                        "events for this topic are refused for good; dead-lettering them (logged once per topic)");
                }
                match Self::dead_letter(self.dead_letter.clone(), &route, msg, &reason).await {
                    Ok(()) => {
                        route.metrics.dead_lettered();
                        if let Some(p) = self.in_flight.get_mut(&seq) {
                            p.done = true;
                        }
                    }
                    Err(e) => {
                        // Keep the event; try the whole thing again later.
                        if let Some(p) = self.in_flight.get_mut(&seq) {
                            p.attempts += 1;
                            let delay = backoff(&self.cfg, p.attempts);
                            self.retries.push(Reverse((Instant::now() + delay, seq)));
                        }
                        self.warn(&format!(
                            "cannot dead-letter an event, keeping it in the spool: {e}"
                        ));
                    }
                }
            }
        }
        self.advance();
    }

    /// The sink's own dead-letter destination (a DLQ topic, a dead-letter exchange)
    /// if it has one, else the dead-letter file; the file also catches a
    /// destination that refuses it.
    async fn dead_letter(
        file: DeadLetter,
        route: &Route,
        msg: Message,
        reason: &str,
    ) -> Result<(), String> {
        let why = format!("{}: {reason}", route.name());
        let to_sink = std::panic::AssertUnwindSafe(async {
            match route.sink.dead_letter(msg.clone(), why.clone()) {
                Some(sent) => Some(sent.await),
                None => None,
            }
        });
        let sent = futures_util::FutureExt::catch_unwind(to_sink)
            .await
            .unwrap_or_else(|panic| {
                Some(Err(SinkError::Permanent(format!(
                    "the sink panicked: {}",
                    crate::supervise::panic_text(&*panic)
                ))))
            });
        if let Some(sent) = sent {
            match sent {
                Ok(()) => return Ok(()),
                Err(SinkError::Retriable(e)) => return Err(e),
                Err(SinkError::Permanent(e)) => {
                    tracing::error!(error = %e, "the sink's dead-letter topic or exchange refused an event; using the dead-letter file");
                }
            }
        }
        let sink = route.name().to_string();
        match tokio::task::spawn_blocking(move || file.write(&sink, &msg, &why)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Pops confirmed events off the front and frees the spool behind them.
    fn advance(&mut self) {
        let before = self.cursor();
        while let Some(entry) = self.in_flight.first_entry() {
            if !entry.get().done {
                break;
            }
            let p = entry.remove();
            self.in_flight_bytes -= p.msg.event.body().len();
        }
        let after = self.cursor();
        if after != before {
            self.spool.confirm_until(after);
        }
    }

    /// The sink confirmed something: it is back. The events that failed during
    /// the outage each wait out their own backoff (up to `backoff_max_ms`), the
    /// oldest longest, and the backlog (and the 503s of its sources) would last
    /// that long after the broker returned; so they are all made due now. At most
    /// once a second: a sink failing one topic for good and taking the others must
    /// not retry that topic at the rate of its successes.
    fn hurry_retries(&mut self) {
        let now = Instant::now();
        if self.retries.is_empty()
            || self
                .last_hurry
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_hurry = Some(now);
        let due: Vec<_> = self
            .retries
            .drain()
            .map(|Reverse((at, seq))| Reverse((at.min(now), seq)))
            .collect();
        self.retries.extend(due);
    }

    /// Resumed: publishes, in order, what was read or fell due while paused.
    async fn unpark(&mut self) {
        self.dispatch(Vec::new()).await;
    }

    async fn retry_due(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((at, seq))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            if let Some(p) = self.in_flight.get(&seq) {
                due.push(p.msg.clone());
            }
        }
        due.sort_by_key(|m| m.seq);
        self.dispatch(due).await;
    }

    fn report(&self) {
        let lag = self
            .in_flight
            .values()
            .next()
            .map_or(Duration::ZERO, |p| age(p.msg.event.received_at_ns()));
        let state = if *self.paused.borrow() {
            State::Paused
        } else if !self.spool.has_space() {
            State::Blocked
        } else if !self.retries.is_empty() || !self.route.sink.ready() {
            State::Retrying
        } else {
            State::Connected
        };
        self.metrics
            .set(lag, self.in_flight.len(), state.metric_label());
        let oldest = self.in_flight.values().next().map(|_| lag);
        self.control.report(state, self.in_flight.len(), oldest);
    }

    /// At most one warning a second: an outage fails thousands of events at once.
    /// Every one is kept as the sink's last error for the admin API.
    fn warn(&mut self, msg: &str) {
        self.control.error(msg);
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_warn = Some(now);
            tracing::warn!("{msg}");
        }
    }
}

impl From<Record> for Message {
    fn from(r: Record) -> Self {
        Message {
            seq: r.seq,
            event: Arc::new(r.event),
            replay: false,
        }
    }
}

fn age(received_at_ns: u64) -> Duration {
    Duration::from_nanos(crate::event::now_ns().saturating_sub(received_at_ns))
}

/// Capped exponential backoff with equal jitter: half fixed, half random.
pub fn backoff(cfg: &ForwardConfig, attempts: u32) -> Duration {
    let exp = cfg
        .backoff_initial_ms
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
    let capped = exp.min(cfg.backoff_max_ms).max(1);
    Duration::from_millis(capped / 2 + fastrand::u64(0..=capped / 2))
}

async fn sleep_until_opt(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Record;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fault injection: fails the first `retriable` publishes, refuses one topic for good.
    struct FlakySink {
        retriable: AtomicUsize,
        poison_topic: &'static str,
        delivered: Mutex<Vec<String>>,
    }

    impl crate::sink::Sink for FlakySink {
        fn publish(
            &self,
            batch: Vec<Message>,
        ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
            Box::pin(async move {
                batch
                    .into_iter()
                    .map(|m| {
                        let r = if m.event.topic() == self.poison_topic {
                            Err(SinkError::Permanent("message too large".into()))
                        } else if self
                            .retriable
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            Err(SinkError::Retriable("broker down".into()))
                        } else {
                            self.delivered
                                .lock()
                                .unwrap()
                                .push(m.event.id().to_string());
                            Ok(())
                        };
                        Box::pin(std::future::ready(r)) as crate::sink::Confirmation
                    })
                    .collect()
            })
        }
    }

    /// Takes every message and never confirms one: a broker that went silent.
    struct SilentSink {
        received: AtomicUsize,
    }

    impl crate::sink::Sink for SilentSink {
        fn publish(
            &self,
            batch: Vec<Message>,
        ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
            self.received.fetch_add(batch.len(), Ordering::SeqCst);
            Box::pin(async move {
                batch
                    .into_iter()
                    .map(|_| Box::pin(std::future::pending()) as crate::sink::Confirmation)
                    .collect()
            })
        }
    }

    /// Large bodies: what is in flight is bounded by bytes, not only by count, both
    /// from the writer's memory and from disk.
    #[tokio::test]
    async fn in_flight_bodies_are_bounded_in_bytes() {
        for from_disk in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("spool");
            let (spool, reader, _) = Spool::open(&path, 1 << 30, 1 << 24, |_: &Record| {}).unwrap();
            for i in 0..100 {
                let e = builder(i, "q.ok").body(vec![b' '; 64 * 1024]).accepted();
                spool.append(e).await.unwrap();
            }
            let (spool, reader) = if from_disk {
                drop((spool, reader));
                let (s, r, _) = Spool::open(&path, 1 << 30, 1 << 24, |_: &Record| {}).unwrap();
                (s, r)
            } else {
                (spool, reader)
            };
            let sink = Arc::new(SilentSink {
                received: AtomicUsize::new(0),
            });
            let cfg = ForwardConfig {
                max_in_flight: 64,
                max_in_flight_bytes: 256 * 1024,
                batch_max: 16,
                linger_ms: 0,
                backoff_initial_ms: 1,
                backoff_max_ms: 4,
            };
            let fwd = Forwarder::new(
                spool,
                reader,
                route("silent", sink.clone()),
                sources(),
                DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap(),
                cfg,
                Arc::new(Control::new(None)),
            );
            let (_tx, rx) = watch::channel(Some(Instant::now() + Duration::from_millis(500)));
            tokio::time::timeout(Duration::from_secs(10), fwd.run(rx))
                .await
                .unwrap();
            // Four 64 KiB bodies fill 256 KiB; the count bound (64) would allow 64.
            assert_eq!(
                sink.received.load(Ordering::SeqCst),
                4,
                "from disk: {from_disk}"
            );
        }
    }

    /// Confirms everything at once, remembering the size of each batch handed over.
    #[derive(Default)]
    struct BatchSizes(Mutex<Vec<usize>>);

    impl crate::sink::Sink for BatchSizes {
        fn publish(
            &self,
            batch: Vec<Message>,
        ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
            self.0.lock().unwrap().push(batch.len());
            Box::pin(async move {
                batch
                    .iter()
                    .map(|_| Box::pin(std::future::ready(Ok(()))) as crate::sink::Confirmation)
                    .collect()
            })
        }
    }

    /// Events synced one at a time, a millisecond apart, reach the sink in a few
    /// full hand-overs with `linger_ms`, and one by one without; all of them either
    /// way, and a drain does not wait out the linger.
    #[tokio::test]
    async fn a_trickle_is_handed_over_in_fuller_batches_with_linger() {
        for linger_ms in [0, 200] {
            let dir = tempfile::tempdir().unwrap();
            let (spool, reader, _) =
                Spool::open(&dir.path().join("spool"), 1 << 24, 1 << 20, |_: &Record| {}).unwrap();
            let sink = Arc::new(BatchSizes::default());
            let cfg = ForwardConfig {
                batch_max: 16,
                linger_ms,
                ..ForwardConfig::default()
            };
            let fwd = Forwarder::new(
                spool.clone(),
                reader,
                route("batches", sink.clone()),
                sources(),
                DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap(),
                cfg,
                Arc::new(Control::new(None)),
            );
            let (drain, rx) = watch::channel(None);
            let running = tokio::spawn(fwd.run(rx));
            for i in 0..20 {
                spool.append(event(i, "q.ok")).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let drained = Instant::now();
            drain
                .send(Some(Instant::now() + Duration::from_secs(10)))
                .unwrap();
            tokio::time::timeout(Duration::from_secs(5), running)
                .await
                .unwrap()
                .unwrap();
            let sizes = sink.0.lock().unwrap().clone();
            assert_eq!(sizes.iter().sum::<usize>(), 20, "{sizes:?}");
            if linger_ms == 0 {
                assert!(sizes.len() >= 10, "linger 0 waits for nothing: {sizes:?}");
            } else {
                // All 20 wait out the linger (or go once the drain starts, not later).
                assert!(sizes.len() <= 3, "{sizes:?}");
                assert!(
                    drained.elapsed() < Duration::from_millis(150),
                    "{:?}",
                    drained.elapsed()
                );
            }
        }
    }

    fn route(name: &str, sink: Arc<dyn crate::sink::Sink>) -> Route {
        Route::new(name, crate::sink::SinkKind::File, sink)
    }

    /// The sources the test events come from (`EventBuilder`'s).
    fn sources() -> Arc<HashSet<String>> {
        Arc::new(HashSet::from(["q".to_string()]))
    }

    fn builder(i: u64, topic: &str) -> crate::event::EventBuilder {
        crate::event::EventBuilder::new(i)
            .id(format!("id-{i}"))
            .topic(topic)
            .received_at_ns(1)
            .body(bytes::Bytes::from_static(b"{}"))
    }

    fn event(i: u64, topic: &str) -> Accepted {
        builder(i, topic).accepted()
    }

    #[tokio::test]
    async fn retries_until_delivered_and_dead_letters_the_poison_without_stalling() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader, _) =
            Spool::open(&dir.path().join("spool"), 1 << 24, 1 << 16, |_: &Record| {}).unwrap();
        for i in 0..300 {
            let topic = if i == 7 { "q.poison" } else { "q.ok" };
            spool.append(event(i, topic)).await.unwrap();
        }
        let sink = Arc::new(FlakySink {
            retriable: AtomicUsize::new(500),
            poison_topic: "q.poison",
            delivered: Mutex::new(Vec::new()),
        });
        let dl_path = dir.path().join("dead.jsonl");
        let cfg = ForwardConfig {
            max_in_flight: 64,
            max_in_flight_bytes: 1 << 20,
            batch_max: 16,
            linger_ms: 0,
            backoff_initial_ms: 1,
            backoff_max_ms: 4,
        };
        let fwd = Forwarder::new(
            spool.clone(),
            reader,
            route("flaky", sink.clone()),
            sources(),
            DeadLetter::open(&dl_path).unwrap(),
            cfg,
            Arc::new(Control::new(None)),
        );
        let (tx, rx) = watch::channel(Some(Instant::now() + Duration::from_secs(20)));
        tokio::time::timeout(Duration::from_secs(30), fwd.run(rx))
            .await
            .unwrap();
        drop(tx);

        let delivered = sink.delivered.lock().unwrap().clone();
        let unique: std::collections::HashSet<_> = delivered.iter().collect();
        assert_eq!(unique.len(), 299, "every good event delivered");
        assert!(!unique.contains(&"id-7".to_string()));
        let dead = std::fs::read_to_string(&dl_path).unwrap();
        assert_eq!(dead.lines().count(), 1);
        let line: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
        assert_eq!(line["headers"]["hookrelay-id"], "id-7");
        assert_eq!(line["reason"], "flaky: message too large");
        // Everything is confirmed: the cursor passed all of it and was saved.
        assert_eq!(spool.cursor(), 300);
        drop(spool);
        let (_s, _r, rec) =
            Spool::open(&dir.path().join("spool"), 1 << 24, 1 << 16, |_: &Record| {}).unwrap();
        assert_eq!(rec.pending, 0);
    }

    /// Fails every publish while `down`; counts what it delivered.
    struct SwitchSink {
        down: std::sync::atomic::AtomicBool,
        delivered: AtomicUsize,
    }

    impl crate::sink::Sink for SwitchSink {
        fn publish(
            &self,
            batch: Vec<Message>,
        ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
            let down = self.down.load(Ordering::SeqCst);
            if !down {
                self.delivered.fetch_add(batch.len(), Ordering::SeqCst);
            }
            Box::pin(async move {
                (0..batch.len())
                    .map(|_| {
                        let r = if down {
                            Err(SinkError::Retriable("broker down".into()))
                        } else {
                            Ok(())
                        };
                        Box::pin(std::future::ready(r)) as crate::sink::Confirmation
                    })
                    .collect()
            })
        }
    }

    /// Once the sink confirms again, what failed during the outage goes out at
    /// once, not each after its own backoff (here 5-10 s).
    #[tokio::test]
    async fn a_success_after_an_outage_brings_the_waiting_retries_forward() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader, _) =
            Spool::open(&dir.path().join("spool"), 1 << 24, 1 << 16, |_: &Record| {}).unwrap();
        for i in 0..100 {
            spool.append(event(i, "q.ok")).await.unwrap();
        }
        let sink = Arc::new(SwitchSink {
            down: true.into(),
            delivered: AtomicUsize::new(0),
        });
        let cfg = ForwardConfig {
            backoff_initial_ms: 10_000,
            backoff_max_ms: 10_000,
            ..ForwardConfig::default()
        };
        let fwd = Forwarder::new(
            spool.clone(),
            reader,
            route("switch", sink.clone()),
            sources(),
            DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap(),
            cfg,
            Arc::new(Control::new(None)),
        );
        let (tx, rx) = watch::channel(None);
        let running = tokio::spawn(fwd.run(rx));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sink.delivered.load(Ordering::SeqCst), 0);
        // The broker is back; one new event is confirmed.
        sink.down.store(false, Ordering::SeqCst);
        let back = Instant::now();
        spool.append(event(100, "q.ok")).await.unwrap();
        while spool.cursor() < 101 {
            assert!(
                back.elapsed() < Duration::from_secs(3),
                "the retries waited out their backoff"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(Some(Instant::now())).unwrap();
        running.await.unwrap();
    }

    /// Confirms everything at once; its sync fails until `durable` is set.
    struct WriteBackSink {
        durable: std::sync::atomic::AtomicBool,
        syncs: AtomicUsize,
    }

    impl crate::sink::Sink for WriteBackSink {
        fn publish(
            &self,
            batch: Vec<Message>,
        ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
            let n = batch.len();
            Box::pin(async move {
                (0..n)
                    .map(|_| Box::pin(std::future::ready(Ok(()))) as crate::sink::Confirmation)
                    .collect()
            })
        }
        fn sync(&self) -> crate::sink::BoxFuture<'_, Result<(), SinkError>> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            let ok = self.durable.load(Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err(SinkError::Retriable("disk gone".into()))
                }
            })
        }
    }

    /// The spool forgets an event only after the sink has synced it: a confirmation
    /// from a write-back sink is not enough to move the persisted cursor.
    #[tokio::test]
    async fn the_persisted_cursor_waits_for_the_sinks_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        for durable in [false, true] {
            let (spool, reader, rec) =
                Spool::open(&path, 1 << 24, 1 << 16, |_: &Record| {}).unwrap();
            assert_eq!(rec.pending, if durable { 50 } else { 0 });
            if !durable {
                for i in 0..50 {
                    spool.append(event(i, "q.ok")).await.unwrap();
                }
            }
            let sink = Arc::new(WriteBackSink {
                durable: durable.into(),
                syncs: AtomicUsize::new(0),
            });
            let fwd = Forwarder::new(
                spool.clone(),
                reader,
                route("write-back", sink.clone()),
                sources(),
                DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap(),
                ForwardConfig::default(),
                Arc::new(Control::new(None)),
            );
            let (_tx, rx) = watch::channel(Some(Instant::now() + Duration::from_secs(5)));
            tokio::time::timeout(Duration::from_secs(10), fwd.run(rx))
                .await
                .unwrap();
            assert_eq!(spool.cursor(), 50, "all confirmed in memory");
            assert!(sink.syncs.load(Ordering::SeqCst) >= 1);
        }
        // The second run's sync succeeded: nothing is pending any more.
        let (_s, _r, rec) = Spool::open(&path, 1 << 24, 1 << 16, |_: &Record| {}).unwrap();
        assert_eq!(rec.pending, 0);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let cfg = ForwardConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..ForwardConfig::default()
        };
        for attempts in 1..40 {
            let d = backoff(&cfg, attempts).as_millis() as u64;
            let full = (100u64 << (attempts - 1).min(30)).min(1000);
            assert!(d >= full / 2 && d <= full, "attempt {attempts}: {d}");
        }
    }
}

#[cfg(test)]
mod pause_tests {
    use super::*;
    use crate::spool::Record;
    use std::sync::Mutex;

    /// Confirms everything at once, recording the order it was handed over in.
    struct OrderSink {
        seqs: Mutex<Vec<u64>>,
    }

    impl crate::sink::Sink for OrderSink {
        fn publish(
            &self,
            batch: Vec<Message>,
        ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
            self.seqs
                .lock()
                .unwrap()
                .extend(batch.iter().map(|m| m.seq));
            Box::pin(async move {
                batch
                    .iter()
                    .map(|_| Box::pin(std::future::ready(Ok(()))) as crate::sink::Confirmation)
                    .collect()
            })
        }
    }

    fn event(i: u64) -> Accepted {
        crate::event::EventBuilder::new(i)
            .source("quickassist")
            .id(format!("id-{i}"))
            .topic("q.t")
            .key("k")
            .body(bytes::Bytes::from(format!("{{\"n\":{i}}}")))
            .accepted()
    }

    /// Paused: events are accepted into the backlog and nothing is published; on
    /// resume everything goes out once, in order, the parked one first, also when
    /// new events arrive at the moment of the resume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_forwarder_publishes_nothing_and_resumes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, reader, _) =
            Spool::open(&dir.path().join("spool"), 1 << 24, 1 << 16, |_: &Record| {}).unwrap();
        let sink = Arc::new(OrderSink {
            seqs: Mutex::new(Vec::new()),
        });
        let control = Arc::new(Control::new(Some(dir.path())));
        control.pause().unwrap();
        let fwd = Forwarder::new(
            spool.clone(),
            reader,
            Route::new("order", crate::sink::SinkKind::File, sink.clone()),
            Arc::new(["quickassist".to_string()].into_iter().collect()),
            DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap(),
            ForwardConfig::default(),
            control.clone(),
        );
        let (tx, rx) = watch::channel(None);
        let running = tokio::spawn(fwd.run(rx));
        for i in 0..100 {
            spool.append(event(i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            sink.seqs.lock().unwrap().is_empty(),
            "published while paused"
        );
        assert_eq!(control.status().state, State::Paused);
        assert!(
            control.status().oldest_age.is_some(),
            "the parked event's age"
        );
        assert_eq!(spool.cursor(), 0);

        control.resume().unwrap();
        for i in 100..200 {
            spool.append(event(i)).await.unwrap();
        }
        let _ = tx.send(Some(Instant::now() + Duration::from_secs(10)));
        tokio::time::timeout(Duration::from_secs(15), running)
            .await
            .unwrap()
            .unwrap();
        let seqs = sink.seqs.lock().unwrap().clone();
        assert_eq!(seqs, (0..200).collect::<Vec<u64>>(), "once each, in order");
        assert_eq!(spool.cursor(), 200);
    }
}
