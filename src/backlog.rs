//! Every sink's backlog: a spool of its own under `spool.dir/NAME`, and the
//! forwarder that empties it into the sink.
//!
//! DESIGN: one spool per sink, not one shared spool with a cursor per sink.
//! - Isolation is physical. With one shared log, a segment can be deleted only
//!   when every sink's cursor has passed it, so while one sink is down the log
//!   keeps everything accepted for every sink: the events of the healthy sinks
//!   fill the disk behind the stalled cursor and soon every source gets 503, the
//!   outcome isolation exists to prevent (or the log is compacted, rewriting live
//!   data, the riskiest code a spool could have). With a spool per sink, a sink's
//!   budget is the size of its own directory, its cursor, in-flight window,
//!   recovery and segment deletion are exactly the single-sink code that the
//!   crash tests already cover, and a sink removed from the config is one
//!   directory to dead-letter.
//! - The price: an event routed to N sinks is written N times and waits for N
//!   fdatasyncs. They run at once (each spool has its own writer thread and group
//!   commit), so a fan-out 200 waits for the slowest of them, not their sum; the
//!   cost is CPU and disk bytes (docs/benchmarks.md, the fan-out case). Sources
//!   routed to one sink, the common case, pay nothing.
//! - A fan-out event is answered once: 200 after its record is durable in every
//!   backlog it is routed to, 503 if any refused it (nothing is appended when one
//!   of them has no room). Each copy stays in its backlog until its sink confirms.
//!
//! At opening, records found in a spool no configured sink owns are not left
//! stranded: the single spool of earlier versions (segments directly in
//! `spool.dir`) is moved into the backlogs of the sinks its sources route to now,
//! and the backlog of a removed sink is dead-lettered with that reason.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::task::{JoinError, JoinHandle};

use crate::config::{Config, ForwardConfig};
use crate::deadletter::DeadLetter;
use crate::forward::{self, Control, DrainSignal, Forwarder};
use crate::sink::{Message, Route};
use crate::spool::{Archives, Place, Reader, Record, Spool};

/// Why the backlogs could not be opened; the message names the directory.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BacklogError(String);

/// A sink's backlog as opened, before its forwarder starts.
pub struct Opened {
    pub route: Route,
    pub spool: Spool,
    reader: Reader,
    /// Pause, state and last error, shared with the admin API.
    pub control: Arc<Control>,
}

/// Opens the backlog of each sink in `routes` (by name) under `spool.dir`, handing
/// every record found to `each` (the dedup window remembers them), each keeping
/// its confirmed segments in `archives` when given (`[archive]`). Then adopts
/// what no sink owns (see the module doc), before budgets apply: those records
/// were acknowledged already. `sources` maps each configured source to the sinks
/// it routes to now. Holds `spool.dir/hookrelay.lock` from then on, so that two
/// processes never share the directory (each would take the other's backlogs for
/// those of removed sinks).
pub async fn open(
    config: &Config,
    routes: &BTreeMap<String, Route>,
    sources: &BTreeMap<String, Vec<String>>,
    dead_letter: &DeadLetter,
    archives: Option<&Arc<Archives>>,
    mut each: impl FnMut(&Record),
) -> Result<(BTreeMap<String, Opened>, Lock), BacklogError> {
    let dir = &config.spool.dir;
    let lock = Lock::take(dir)?;
    let mut opened = BTreeMap::new();
    for (name, route) in routes {
        let path = dir.join(name);
        let (spool, reader, recovery) =
            Spool::open(&path, u64::MAX, config.spool.segment_bytes, &mut each)
                .map_err(|e| BacklogError(format!("spool.dir: {e}")))?;
        spool.pace_syncs(Duration::from_micros(config.spool.min_sync_interval_us));
        if let Some(a) = archives {
            crate::metrics::archive_init(name);
            spool.set_archive(Some(a.clone()));
        }
        tracing::info!(sink = %name, dir = %path.display(),
            pending = recovery.pending, truncated_bytes = recovery.truncated_bytes,
            quarantined_bytes = recovery.quarantined_bytes, "backlog opened");
        opened.insert(
            name.clone(),
            Opened {
                route: route.clone(),
                spool,
                reader,
                control: Arc::new(Control::new(Some(&path))),
            },
        );
    }
    // The new directories' names must survive a crash with what goes into them.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BacklogError(format!("spool.dir: {}: {e}", dir.display())))?;
    adopt_strays(config, &opened, sources, dead_letter, &mut each).await?;
    for (name, o) in &opened {
        o.spool
            .set_max_bytes(config.sinks.backlog_budget(name, config.spool.max_bytes));
    }
    Ok((opened, lock))
}

/// Whether `spool.dir` holds anything to adopt: an earlier version's spool, or a
/// backlog directory of a sink not in `sinks`.
pub fn has_strays(spool_dir: &Path, sinks: &[&str]) -> bool {
    crate::spool::holds_spool(spool_dir) || !stray_backlogs(spool_dir, sinks).is_empty()
}

/// The archives of `[archive]`, if configured: every sink's under `spool.dir`.
pub fn archives(config: &Config) -> Option<Arc<Archives>> {
    let a = config.archive.as_ref()?;
    Some(Archives::new(&config.spool.dir, a.retention(), a.max_bytes))
}

/// Names of the backlogs under `spool_dir` of sinks not in `sinks`: what the next
/// start dead-letters (`hookrelay check` warns of them).
pub fn strays(spool_dir: &Path, sinks: &[&str]) -> Vec<String> {
    stray_backlogs(spool_dir, sinks)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Backlog directories under `spool_dir` of sinks not in `sinks`: named as a sink
/// can be (so never the quarantine), holding a spool.
fn stray_backlogs(spool_dir: &Path, sinks: &[&str]) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let candidate = !sinks.contains(&name.as_str())
                && name != crate::spool::QUARANTINE_DIR
                && name.len() <= crate::config::MAX_SINK_NAME_LEN
                && crate::event::is_sane_name(&name)
                && path.is_dir()
                && crate::spool::holds_spool(&path);
            candidate.then_some((name, path))
        })
        .collect();
    out.sort();
    out
}

/// The single spool of earlier versions, and backlogs of sinks no longer configured.
async fn adopt_strays(
    config: &Config,
    opened: &BTreeMap<String, Opened>,
    sources: &BTreeMap<String, Vec<String>>,
    dead_letter: &DeadLetter,
    each: &mut impl FnMut(&Record),
) -> Result<(), BacklogError> {
    let dir = &config.spool.dir;
    if crate::spool::holds_spool(dir) {
        let place = |r: &Record| -> Result<Place, String> {
            let source = r.event.source();
            let Some(sinks) = sources.get(source) else {
                return Ok(Place::DeadLetter(format!(
                    "source '{source}' was removed from the config"
                )));
            };
            let into = sinks
                .iter()
                .map(|s| match opened.get(s) {
                    Some(o) => Ok(o.spool.clone()),
                    None => Err(format!("sink '{s}' has no backlog")),
                })
                .collect::<Result<_, _>>()?;
            Ok(Place::Into(into))
        };
        let settle = |batch| settle(dead_letter, batch, "_removed");
        let moved = crate::spool::adopt(dir, &mut *each, place, settle)
            .await
            .map_err(|e| BacklogError(format!("spool.dir: moving the old spool: {e}")))?;
        tracing::info!(records = moved, dir = %dir.display(),
            "moved the spool of an earlier version into the sinks' backlogs");
    }
    let names: Vec<&str> = opened.keys().map(String::as_str).collect();
    for (name, path) in stray_backlogs(dir, &names) {
        let why = format!("sink '{name}' was removed from the config");
        let place = |_: &Record| Ok(Place::DeadLetter(why.clone()));
        let settle = |batch| settle(dead_letter, batch, &name);
        let n = crate::spool::adopt(&path, &mut *each, place, settle)
            .await
            .map_err(|e| BacklogError(format!("spool.dir: {}: {e}", path.display())))?;
        if n > 0 {
            tracing::error!(sink = %name, records = n, dead_letter = %config.dead_letter.path.display(),
                "the backlog of a sink removed from the config was dead-lettered");
        }
        // A pause belongs to the sink that is gone: one added back later under
        // the same name starts delivering.
        match std::fs::remove_file(path.join(crate::forward::PAUSED_FILE)) {
            Ok(()) => tracing::info!(sink = %name, "the pause of a removed sink was cleared"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "cannot clear the pause of a removed sink")
            }
        }
    }
    Ok(())
}

/// Dead-letters records no sink will take (one sync for the batch), counted and
/// filed under `sink`: the removed sink's name, or `_removed` for records of the
/// single spool of earlier versions whose source is gone.
fn settle(
    dead_letter: &DeadLetter,
    batch: Vec<(Record, String)>,
    sink: &str,
) -> Result<(), String> {
    let messages: Vec<(Message, String)> = batch
        .into_iter()
        .map(|(r, why)| {
            let m = Message {
                seq: r.seq,
                event: Arc::new(r.event),
                replay: false,
            };
            (m, why)
        })
        .collect();
    let refs: Vec<(&str, &Message, &str)> = messages
        .iter()
        .map(|(m, w)| (sink, m, w.as_str()))
        .collect();
    dead_letter
        .write_all(&refs)
        .map_err(|e| format!("cannot dead-letter: {e}"))?;
    crate::metrics::dead_lettered(sink, messages.len() as u64);
    Ok(())
}

/// The exclusive lock on `spool.dir/hookrelay.lock`, released when dropped.
pub struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    fn take(dir: &Path) -> Result<Lock, BacklogError> {
        let fail = |e: std::io::Error| BacklogError(format!("spool.dir: {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(fail)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("hookrelay.lock"))
            .map_err(fail)?;
        match f.try_lock() {
            Ok(()) => Ok(Lock(f)),
            Err(std::fs::TryLockError::WouldBlock) => Err(BacklogError(format!(
                "spool.dir: {} is in use by another hookrelay process (lock held on hookrelay.lock)",
                dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
        }
    }
}

/// The forwarders, one per backlog, running (none without backlogs).
#[derive(Default)]
pub struct Running {
    tasks: Vec<(Route, Spool, JoinHandle<()>)>,
}

/// Starts a forwarder on each backlog. `sources` are the configured sources
/// (events of others are dead-lettered); `cfg` is `[forward]`, with each sink's
/// own `max_in_flight` where it sets one.
pub fn start(
    opened: BTreeMap<String, Opened>,
    config: &Config,
    dead_letter: &DeadLetter,
    drain: &DrainSignal,
) -> Running {
    let sources: Arc<HashSet<String>> = Arc::new(config.sources.keys().cloned().collect());
    let mut tasks = Vec::new();
    for (name, o) in opened {
        let cfg = ForwardConfig {
            max_in_flight: config
                .sinks
                .get(&name)
                .and_then(|s| s.max_in_flight)
                .unwrap_or(config.forward.max_in_flight),
            ..config.forward.clone()
        };
        let forwarder = Forwarder::new(
            o.spool.clone(),
            o.reader,
            o.route.clone(),
            sources.clone(),
            dead_letter.clone(),
            cfg,
            o.control.clone(),
        );
        let task = tokio::spawn(forwarder.run(drain.clone()));
        tasks.push((o.route, o.spool, task));
    }
    Running { tasks }
}

impl Running {
    /// Resolves when any forwarder ends, naming its sink; never while none runs.
    pub async fn first_to_end(&mut self) -> (String, Result<(), JoinError>) {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let mut ends: FuturesUnordered<_> = self
            .tasks
            .iter_mut()
            .map(|(route, _, task)| async move { (route.name().to_string(), task.await) })
            .collect();
        match ends.next().await {
            Some(end) => end,
            None => std::future::pending().await,
        }
    }

    /// Waits for every forwarder to finish its drain (they stop themselves at
    /// `deadline`, saving their cursors). One a sink holds inside a publish past
    /// it is stopped here, and its cursor saved from the spool's memory: at worst,
    /// duplicates after the restart. `finished` skips one known to have ended.
    pub async fn stop(self, deadline: Instant, finished: Option<&str>) {
        let stopping = self.tasks.into_iter().map(|(route, spool, mut task)| async move {
            if finished == Some(route.name()) {
                return;
            }
            let grace = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
            let stopped_early = match tokio::time::timeout(grace, &mut task).await {
                Ok(Ok(())) => false,
                Ok(Err(e)) => {
                    tracing::error!(sink = route.name(), error = %e, "forwarder task failed");
                    true
                }
                Err(_) => {
                    task.abort();
                    tracing::warn!(sink = route.name(), "forwarder still busy at the drain deadline; stopped it");
                    true
                }
            };
            if stopped_early {
                // A sink wedged inside a publish may never sync: then keep the old cursor.
                match tokio::time::timeout(Duration::from_secs(2), forward::checkpoint(spool, route.clone())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(sink = route.name(), error = %e, "cannot persist the spool cursor at shutdown"),
                    Err(_) => tracing::warn!(sink = route.name(),
                        "the sink did not sync at shutdown; its backlog replays from its last checkpoint"),
                }
            }
        });
        futures_util::future::join_all(stopping).await;
    }

    /// The backlogs' spools, for counting what is left at the end.
    pub fn spools(&self) -> Vec<Spool> {
        self.tasks.iter().map(|(_, s, _)| s.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{FileSink, SinkKind};

    /// Opens the backlogs again, as a restart does, with the test's dead letters.
    async fn reopen(
        config: &Config,
        routes: &BTreeMap<String, Route>,
        sources: &BTreeMap<String, Vec<String>>,
        d: &Path,
    ) -> Result<(BTreeMap<String, Opened>, Lock), BacklogError> {
        let dead = DeadLetter::open(&d.join("dead.jsonl")).unwrap();
        open(config, routes, sources, &dead, None, |_: &Record| {}).await
    }

    /// The single spool of an earlier version (segments right in `spool.dir`) is
    /// moved into the backlogs of the sinks its sources route to now, fanned out
    /// where they fan out; an event of a source since removed is dead-lettered.
    #[tokio::test]
    async fn an_earlier_single_spool_moves_into_the_sinks_backlogs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spool_dir = d.join("spool");
        {
            let (spool, _reader, _) =
                Spool::open(&spool_dir, 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
            for i in 0..30 {
                let source = ["fan", "one", "removed"][i % 3];
                let e = crate::event::EventBuilder::new(i as u64)
                    .source(source)
                    .id(format!("{source}-{i}"))
                    .accepted();
                spool.append(e).await.unwrap();
            }
        }
        assert!(crate::spool::holds_spool(&spool_dir));
        // A segment the old spool kept whole for damage: never adopted, never deleted.
        let kept = spool_dir.join(crate::spool::QUARANTINE_DIR);
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(kept.join("00000000000000000000.seg"), b"damaged").unwrap();
        let text = format!(
            "[spool]\ndir = \"{}\"\nsegment_bytes = 1048576\n\
             [sinks.a]\ntype = \"file\"\ndir = \"{a}\"\n[sinks.b]\ntype = \"file\"\ndir = \"{b}\"\n\
             [sources.fan]\nscheme = \"quickassist\"\nsecret_env = \"X\"\nsinks = [\"a\", \"b\"]\n\
             [sources.one]\nscheme = \"quickassist\"\nsecret_env = \"X\"\nsink = \"b\"\n",
            spool_dir.display(),
            a = d.join("a").display(),
            b = d.join("b").display(),
        );
        let config = Config::parse(&text).unwrap();
        let mut routes = BTreeMap::new();
        for name in ["a", "b"] {
            let sink = FileSink::open(&d.join(name), 8, 100).unwrap();
            routes.insert(
                name.to_string(),
                Route::new(name, SinkKind::File, Arc::new(sink)),
            );
        }
        let sources: BTreeMap<String, Vec<String>> = [
            ("fan".to_string(), vec!["a".to_string(), "b".to_string()]),
            ("one".to_string(), vec!["b".to_string()]),
        ]
        .into();
        let dead = DeadLetter::open(&d.join("dead.jsonl")).unwrap();
        let mut seen = 0;
        let (opened, lock) = open(&config, &routes, &sources, &dead, None, |_: &Record| {
            seen += 1
        })
        .await
        .unwrap();
        let pending = |name: &str| {
            let s = &opened[name].spool;
            s.durable_end() - s.cursor()
        };
        assert_eq!(pending("a"), 10, "the fanned-out source's events");
        assert_eq!(pending("b"), 20, "both sources' events");
        let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap();
        assert_eq!(dead.lines().count(), 10);
        assert!(dead.contains("source 'removed' was removed from the config"));
        // Every record was remembered (for dedup) as it was read.
        assert!(seen >= 30, "{seen}");
        // The old spool's files are gone; the backlogs stay.
        assert!(!crate::spool::holds_spool(&spool_dir));
        assert!(spool_dir.join("a").is_dir() && spool_dir.join("b").is_dir());
        assert_eq!(
            std::fs::read(kept.join("00000000000000000000.seg")).unwrap(),
            b"damaged"
        );
        // A second process cannot take the same directory.
        let again = reopen(&config, &routes, &sources, d).await;
        assert!(again.is_err_and(|e| {
            e.to_string()
                .contains("in use by another hookrelay process")
        }));
        // Opening again moves nothing twice.
        drop((opened, lock));
        let (opened, lock) = reopen(&config, &routes, &sources, d).await.unwrap();
        assert_eq!(
            opened["a"].spool.durable_end() - opened["a"].spool.cursor(),
            10
        );
        assert_eq!(
            opened["b"].spool.durable_end() - opened["b"].spool.cursor(),
            20
        );
        // Sink a, paused, is removed: its backlog is dead-lettered and its pause
        // cleared, so that a sink added back under that name delivers.
        drop((opened, lock));
        let paused = spool_dir.join("a").join(crate::forward::PAUSED_FILE);
        std::fs::write(&paused, b"").unwrap();
        routes.remove("a");
        let only_b: BTreeMap<String, Vec<String>> = [
            ("fan".to_string(), vec!["b".to_string()]),
            ("one".to_string(), vec!["b".to_string()]),
        ]
        .into();
        let _reopened = reopen(&config, &routes, &only_b, d).await.unwrap();
        assert!(!paused.exists(), "the removed sink's pause was kept");
        let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap();
        assert_eq!(
            dead.matches("sink 'a' was removed from the config").count(),
            10
        );
    }
}
