//! Replay: a time window of a sink's archive (see `spool::archive`) sent to the
//! sink again, as a job the admin API starts and polls.
//!
//! A replayed message is the archived event as it was received (same id, same
//! body) with the header `hookrelay-replay: true`, so consumers that deduplicate
//! by id drop what they already have and can tell a replay from a retry.
//!
//! A replay shares the sink with live delivery, so it is kept small: at most
//! [`MAX_RUNNING`] jobs at once, [`WINDOW`] messages in flight each, the archive
//! read on a blocking thread a batch at a time through a bounded channel (memory
//! stays at a few batches whatever the window). Retriable failures are retried with
//! the forwarder's backoff until the job's deadline; permanent ones are counted as
//! failed and not dead-lettered (the event is still in the archive, and in the
//! dead-letter file if live delivery refused it too). Nothing of a job survives a
//! restart: it is an operator's request, not a promise made to a sender.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::config::ForwardConfig;
use crate::event::now_ns;
use crate::forward::backoff;
use crate::sink::{Confirmation, Message, Route, SinkError, confirmed, publish_caught};
use crate::spool::{Archive, Record};

/// Jobs running at once, at most: each adds its window to a sink's load.
pub const MAX_RUNNING: usize = 2;
/// Finished jobs remembered for `get`, the oldest forgotten first.
pub const REMEMBERED: usize = 64;
/// Messages of one job handed to a sink and not yet confirmed, at most.
pub const WINDOW: usize = 256;
/// A job gives up this long after it started (what is left counts as failed).
pub const DEADLINE: Duration = Duration::from_secs(3600);
/// Records read from the archive and handed over at a time.
const BATCH: usize = 512;
/// Messages handed to the sink in one publish.
const CHUNK: usize = 64;

/// What to replay: the events received in `[since_ns, until_ns)`, of `source`
/// and of type `event` when given, to `sink` (every target given when `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySpec {
    pub source: Option<String>,
    pub event: Option<String>,
    pub since_ns: u64,
    pub until_ns: u64,
    pub sink: Option<String>,
}

impl ReplaySpec {
    fn matches(&self, r: &Record) -> bool {
        self.source.as_deref().is_none_or(|s| s == r.event.source())
            && self
                .event
                .as_deref()
                .is_none_or(|e| e == r.event.event_type())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Done,
    /// Stopped before the end of its window: `error` says why.
    Failed,
}

/// A job as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub job: u64,
    pub state: State,
    pub sinks: Vec<String>,
    /// Records of the window read from the archives.
    pub scanned: u64,
    /// Of those, the ones of the source and event type asked for.
    pub matched: u64,
    /// Confirmed by their sink.
    pub published: u64,
    /// Refused for good by their sink, or still failing at the deadline. Matched
    /// events neither published nor failed were never sent (the job stopped).
    pub failed: u64,
    pub error: Option<String>,
    pub started_at_ns: u64,
    pub finished_at_ns: Option<u64>,
}

type Shared = Arc<Mutex<Progress>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The replay jobs of this process: started, running, and the last few finished.
/// Cheap to clone (the admin API holds one).
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    /// The forwarder's settings: a replay retries as it does.
    forward: ForwardConfig,
    deadline: Duration,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u64,
    running: usize,
    /// Oldest first.
    jobs: VecDeque<Shared>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs::new(ForwardConfig::default())
    }
}

impl Jobs {
    /// `forward`: its backoff settings pace a replay's retries.
    pub fn new(forward: ForwardConfig) -> Jobs {
        Jobs {
            inner: Arc::new(Inner {
                forward,
                deadline: DEADLINE,
                table: Mutex::new(Table {
                    next: 1,
                    ..Table::default()
                }),
            }),
        }
    }

    /// Starts replaying `spec` to each target (sink name, its archive, its route)
    /// that `spec.sink` selects, one sink after the other; returns the job's id.
    /// Refused, saying why, while [`MAX_RUNNING`] jobs run, for an empty window, or
    /// when no target is selected. Call it inside the runtime (the job is a task).
    pub fn start(
        &self,
        spec: ReplaySpec,
        targets: Vec<(String, Archive, Route)>,
    ) -> Result<u64, String> {
        if spec.since_ns >= spec.until_ns {
            return Err("the window is empty: since must be before until".into());
        }
        let targets: Vec<_> = targets
            .into_iter()
            .filter(|(name, ..)| spec.sink.as_deref().is_none_or(|s| s == name))
            .collect();
        if targets.is_empty() {
            return Err(match &spec.sink {
                Some(s) => format!("sink '{s}' has no archive"),
                None => "no sink has an archive".into(),
            });
        }
        let progress = {
            let mut table = lock(&self.inner.table);
            if table.running >= MAX_RUNNING {
                return Err(format!(
                    "{MAX_RUNNING} replays are running already: try again when one is done"
                ));
            }
            let job = table.next;
            table.next += 1;
            table.running += 1;
            let progress = Arc::new(Mutex::new(Progress {
                job,
                state: State::Running,
                sinks: targets.iter().map(|(name, ..)| name.clone()).collect(),
                scanned: 0,
                matched: 0,
                published: 0,
                failed: 0,
                error: None,
                started_at_ns: now_ns(),
                finished_at_ns: None,
            }));
            table.jobs.push_back(progress.clone());
            while table.jobs.len() > REMEMBERED {
                match table
                    .jobs
                    .iter()
                    .position(|p| lock(p).state != State::Running)
                {
                    Some(i) => table.jobs.remove(i),
                    None => break,
                };
            }
            progress
        };
        let job = lock(&progress).job;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let running = std::panic::AssertUnwindSafe(run(&inner, &spec, targets, &progress));
            let error = match running.catch_unwind().await {
                Ok(ran) => ran.err(),
                Err(panic) => Some(format!(
                    "the replay panicked: {}",
                    crate::supervise::panic_text(&*panic)
                )),
            };
            // Before the job reads as finished: whoever sees it so may start another.
            lock(&inner.table).running -= 1;
            let mut p = lock(&progress);
            if let Some(e) = &error {
                tracing::warn!(job, error = %e, "replay stopped");
            }
            p.state = if error.is_some() {
                State::Failed
            } else {
                State::Done
            };
            p.error = error;
            p.finished_at_ns = Some(now_ns());
            tracing::info!(
                job,
                scanned = p.scanned,
                matched = p.matched,
                published = p.published,
                failed = p.failed,
                "replay finished"
            );
        });
        Ok(job)
    }

    /// A job's progress, if it is running or among the last [`REMEMBERED`].
    pub fn get(&self, job: u64) -> Option<Progress> {
        let table = lock(&self.inner.table);
        let found = table.jobs.iter().find(|p| lock(p).job == job)?;
        Some(lock(found).clone())
    }

    /// Every job remembered, oldest first.
    pub fn list(&self) -> Vec<Progress> {
        let table = lock(&self.inner.table);
        table.jobs.iter().map(|p| lock(p).clone()).collect()
    }
}

async fn run(
    inner: &Inner,
    spec: &ReplaySpec,
    targets: Vec<(String, Archive, Route)>,
    progress: &Shared,
) -> Result<(), String> {
    let deadline = Instant::now() + inner.deadline;
    for (name, archive, route) in targets {
        replay_to(inner, spec, archive, route, progress, deadline)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Replays one archive to its sink; returns once every message sent is settled.
async fn replay_to(
    inner: &Inner,
    spec: &ReplaySpec,
    archive: Archive,
    route: Route,
    progress: &Shared,
    deadline: Instant,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<Vec<Record>>(2);
    let (since, until) = (spec.since_ns, spec.until_ns);
    let scan = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(BATCH);
        archive.scan(since, until, |r| {
            batch.push(r);
            if batch.len() < BATCH {
                return ControlFlow::Continue(());
            }
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            match tx.blocking_send(full) {
                Ok(()) => ControlFlow::Continue(()),
                // The job stopped.
                Err(_) => ControlFlow::Break(()),
            }
        })?;
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        Ok::<_, std::io::Error>(())
    });
    let window = Arc::new(Semaphore::new(WINDOW));
    let past = || format!("the deadline ({} s) passed", inner.deadline.as_secs());
    let sent = async {
        while let Some(batch) = rx.recv().await {
            let messages: Vec<Message> = {
                let mut p = lock(progress);
                p.scanned += batch.len() as u64;
                let matching: Vec<Message> = batch
                    .into_iter()
                    .filter(|r| spec.matches(r))
                    .map(|r| Message {
                        seq: r.seq,
                        event: Arc::new(r.event),
                        replay: true,
                    })
                    .collect();
                p.matched += matching.len() as u64;
                matching
            };
            for chunk in messages.chunks(CHUNK) {
                let mut permits = Vec::with_capacity(chunk.len());
                for _ in chunk {
                    let permit = window.clone().acquire_owned();
                    match tokio::time::timeout_at(deadline.into(), permit).await {
                        Ok(Ok(p)) => permits.push(p),
                        _ => return Err(past()),
                    }
                }
                let confirmations = tokio::time::timeout_at(
                    deadline.into(),
                    publish_caught(&route, chunk.to_vec()),
                )
                .await
                .map_err(|_| past())?;
                for ((m, c), permit) in chunk.iter().zip(confirmations).zip(permits) {
                    let settle =
                        settle(inner.forward.clone(), route.clone(), m.clone(), c, deadline);
                    let progress = progress.clone();
                    tokio::spawn(async move {
                        let ok = settle.await;
                        let mut p = lock(&progress);
                        if ok {
                            p.published += 1;
                        } else {
                            p.failed += 1;
                        }
                        drop(permit);
                    });
                }
            }
        }
        Ok::<(), String>(())
    }
    .await;
    // Stops the scan if the sending stopped early.
    drop(rx);
    let scanned = scan.await;
    // Every message sent is settled (each gives up at the deadline).
    let all = u32::try_from(WINDOW).unwrap_or(u32::MAX);
    let settled = tokio::time::timeout_at(
        (deadline + Duration::from_secs(5)).into(),
        window.acquire_many(all),
    )
    .await;
    sent?;
    match scanned {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("reading the archive: {e}")),
        Err(e) => return Err(format!("reading the archive: {e}")),
    }
    if settled.is_err() {
        return Err(past());
    }
    Ok(())
}

/// Awaits one message's confirmation, publishing it again after retriable
/// failures (with the forwarder's backoff) until `deadline`. True once confirmed.
async fn settle(
    cfg: ForwardConfig,
    route: Route,
    message: Message,
    first: Confirmation,
    deadline: Instant,
) -> bool {
    let mut confirmation = first;
    let mut attempts = 0;
    loop {
        match tokio::time::timeout_at(deadline.into(), confirmed(confirmation)).await {
            Ok(Ok(())) => return true,
            Ok(Err(SinkError::Permanent(_))) | Err(_) => return false,
            Ok(Err(SinkError::Retriable(_))) => {}
        }
        attempts += 1;
        let wait = backoff(&cfg, attempts);
        if Instant::now() + wait >= deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
        let again = publish_caught(&route, vec![message.clone()]);
        match tokio::time::timeout_at(deadline.into(), again).await {
            Ok(mut c) => match c.pop() {
                Some(c) => confirmation = c,
                None => return false,
            },
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBuilder;
    use crate::sink::{BoxFuture, FileSink, Sink, SinkKind};
    use crate::spool::{Archives, Spool};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn stamp(i: u64) -> u64 {
        T0 + i * SEC
    }

    /// A spool at `root/spool/s` that archived (at least) events 0..n-50: event `i`
    /// received at `stamp(i)`, of source `other` when `i % 3 == 0`, else `q`.
    async fn archived(root: &Path, n: u64) -> Archive {
        let archives = Archives::new(&root.join("spool"), Duration::from_secs(3600), 1 << 30);
        let (spool, _reader, _) = Spool::open(
            &root.join("spool").join("s"),
            1 << 30,
            4096,
            |_: &Record| {},
        )
        .unwrap();
        spool.set_archive(Some(archives.clone()));
        for i in 0..n {
            let source = if i % 3 == 0 { "other" } else { "q" };
            let e = EventBuilder::new(i)
                .source(source)
                .id(format!("e{i}"))
                .received_at_ns(stamp(i))
                .accepted();
            spool.append(e).await.unwrap();
        }
        spool.confirm_until(n);
        let s = spool.clone();
        tokio::task::spawn_blocking(move || s.checkpoint(n))
            .await
            .unwrap()
            .unwrap();
        let archive = archives.archive("s");
        let mut last = 0;
        archive
            .scan(0, u64::MAX, |r| {
                last = r.seq;
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(last + 50 >= n, "archived up to {last} of {n}");
        archive
    }

    async fn finished(jobs: &Jobs, job: u64) -> Progress {
        let start = Instant::now();
        loop {
            let p = jobs.get(job).unwrap();
            if p.state != State::Running {
                return p;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{p:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The window of one source, replayed to a file sink: exactly its events, in
    /// order, with their ids and bodies and the replay header; progress says so.
    #[tokio::test]
    async fn replays_exactly_the_window_to_a_file_sink() {
        let root = tempfile::tempdir().unwrap();
        let archive = archived(root.path(), 300).await;
        let events = root.path().join("events");
        let sink = FileSink::open(&events, 8, 100).unwrap();
        let route = Route::new("s", SinkKind::File, Arc::new(sink));
        let jobs = Jobs::default();
        let spec = ReplaySpec {
            source: Some("q".into()),
            event: Some("message.read".into()),
            since_ns: stamp(50),
            until_ns: stamp(150),
            sink: None,
        };
        let job = jobs
            .start(spec, vec![("s".into(), archive, route)])
            .unwrap();
        let p = finished(&jobs, job).await;
        let want: Vec<u64> = (50..150).filter(|i| i % 3 != 0).collect();
        assert_eq!(p.state, State::Done, "{p:?}");
        assert_eq!((p.scanned, p.matched), (100, want.len() as u64));
        assert_eq!((p.published, p.failed), (want.len() as u64, 0));
        assert_eq!(p.sinks, ["s"]);
        assert!(p.error.is_none() && p.finished_at_ns >= Some(p.started_at_ns));

        let text = std::fs::read_to_string(events.join("q.message.read.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ids: Vec<&str> = lines
            .iter()
            .map(|l| l["headers"]["hookrelay-id"].as_str().unwrap())
            .collect();
        let want_ids: Vec<String> = want.iter().map(|i| format!("e{i}")).collect();
        assert_eq!(ids, want_ids);
        for (l, i) in lines.iter().zip(&want) {
            assert_eq!(l["headers"]["hookrelay-replay"], "true");
            assert_eq!(l["headers"]["hookrelay-source"], "q");
            assert_eq!(l["body"], format!("{{\"n\":{i}}}"));
            assert_eq!(l["headers"]["hookrelay-received-at"], stamp(*i).to_string());
        }
        // The JSON shape the admin API serves.
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["state"], "done");
        assert_eq!(json["job"], job);
    }

    /// Takes every message and confirms none: a broker gone silent.
    struct Silent;

    impl Sink for Silent {
        fn publish(&self, batch: Vec<Message>) -> BoxFuture<'_, Vec<Confirmation>> {
            Box::pin(async move {
                batch
                    .iter()
                    .map(|_| Box::pin(std::future::pending()) as Confirmation)
                    .collect()
            })
        }
    }

    /// Two jobs running: a third is refused until one is done; an unknown sink
    /// or an empty window is refused at once.
    #[tokio::test]
    async fn a_third_job_is_refused_while_two_run() {
        let root = tempfile::tempdir().unwrap();
        let archive = archived(root.path(), 100).await;
        let silent = Route::new("s", SinkKind::File, Arc::new(Silent));
        let jobs = Jobs::default();
        let spec = ReplaySpec {
            since_ns: 0,
            until_ns: u64::MAX,
            ..ReplaySpec::default()
        };
        let target = || vec![("s".to_string(), archive.clone(), silent.clone())];
        let a = jobs.start(spec.clone(), target()).unwrap();
        let b = jobs.start(spec.clone(), target()).unwrap();
        assert_ne!(a, b);
        let busy = jobs.start(spec.clone(), target()).unwrap_err();
        assert!(busy.contains("running"), "{busy}");
        assert_eq!(jobs.get(a).unwrap().state, State::Running);
        assert_eq!(jobs.list().len(), 2);
        let other = ReplaySpec {
            sink: Some("nope".into()),
            ..spec.clone()
        };
        assert!(jobs.start(other, target()).unwrap_err().contains("nope"));
        let empty = ReplaySpec {
            since_ns: 5,
            until_ns: 5,
            ..spec
        };
        assert!(jobs.start(empty, target()).unwrap_err().contains("empty"));
    }

    /// Finished jobs are forgotten oldest first past the last [`REMEMBERED`].
    #[tokio::test]
    async fn the_last_jobs_are_remembered() {
        let root = tempfile::tempdir().unwrap();
        let empty = Archive::open(&root.path().join("none"));
        let silent = Route::new("s", SinkKind::File, Arc::new(Silent));
        let jobs = Jobs::default();
        let spec = ReplaySpec {
            since_ns: 0,
            until_ns: u64::MAX,
            ..ReplaySpec::default()
        };
        let mut ids = Vec::new();
        for _ in 0..REMEMBERED + 6 {
            let target = vec![("s".to_string(), empty.clone(), silent.clone())];
            let job = jobs.start(spec.clone(), target).unwrap();
            assert_eq!(finished(&jobs, job).await.state, State::Done);
            ids.push(job);
        }
        let listed: Vec<u64> = jobs.list().iter().map(|p| p.job).collect();
        assert_eq!(listed, ids[6..]);
        assert!(jobs.get(ids[5]).is_none());
    }

    /// Fails the first `retriable` publishes, refuses event `e1` for good.
    struct Flaky {
        retriable: AtomicUsize,
    }

    impl Sink for Flaky {
        fn publish(&self, batch: Vec<Message>) -> BoxFuture<'_, Vec<Confirmation>> {
            let out = batch
                .iter()
                .map(|m| {
                    let r = if m.event.id() == "e1" {
                        Err(SinkError::Permanent("refused".into()))
                    } else if self
                        .retriable
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        Err(SinkError::Retriable("down".into()))
                    } else {
                        Ok(())
                    };
                    Box::pin(std::future::ready(r)) as Confirmation
                })
                .collect();
            Box::pin(std::future::ready(out))
        }
    }

    /// Retriable failures are retried until confirmed; a permanent one is counted
    /// as failed, and the job still ends done.
    #[tokio::test]
    async fn retries_retriable_failures_and_counts_permanent_ones() {
        let root = tempfile::tempdir().unwrap();
        let archive = archived(root.path(), 100).await;
        let flaky = Arc::new(Flaky {
            retriable: AtomicUsize::new(30),
        });
        let route = Route::new("s", SinkKind::File, flaky.clone());
        let jobs = Jobs::new(ForwardConfig {
            backoff_initial_ms: 1,
            backoff_max_ms: 5,
            ..ForwardConfig::default()
        });
        let spec = ReplaySpec {
            since_ns: stamp(0),
            until_ns: stamp(40),
            ..ReplaySpec::default()
        };
        let job = jobs
            .start(spec, vec![("s".into(), archive, route)])
            .unwrap();
        let p = finished(&jobs, job).await;
        assert_eq!(p.state, State::Done, "{p:?}");
        assert_eq!((p.matched, p.published, p.failed), (40, 39, 1));
        assert_eq!(flaky.retriable.load(Ordering::SeqCst), 0);
    }
}
