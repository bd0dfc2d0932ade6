//! `/admin/dead-letters`: list, show, redrive.
//!
//! A redrive appends each dead letter to its sink's backlog again, as a record of
//! the spool (so it is published by the sink's forwarder with its usual retries,
//! in-flight window and confirmation), bypassing dedup, and removes it from the
//! dead letters once that append is durable: from then on the backlog holds it,
//! and a sink that refuses it again dead-letters it again, as a new entry with
//! the new reason. Removal is recorded (fdatasync'd), so repeating a redrive, or
//! retrying one whose answer was lost, finds nothing left to send.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde::Deserialize;

use super::{Answer, Api, Refusal, query};
use crate::deadletter::{DeadLetter, Filter, Full};
use crate::event::rfc3339_millis as rfc3339;
use crate::respond::json;
use crate::spool::Spool;

/// Entries a listing returns at most per page.
const MAX_PAGE: usize = 1000;
/// Dead letters one redrive takes at most: a bigger redrive is several calls.
pub(super) const MAX_REDRIVE: usize = 10_000;
/// A redrive waits for confirmations at most this long.
const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Redrive {
    #[serde(default)]
    ids: Vec<String>,
    source: Option<String>,
    event: Option<String>,
    reason: Option<String>,
    sink: Option<String>,
    #[serde(default)]
    all: bool,
    /// Send them to this sink instead of the one that refused them (a sink since
    /// removed or renamed).
    to_sink: Option<String>,
    /// Wait up to this long for the sinks to confirm them, and say how many did.
    #[serde(default)]
    wait_secs: u64,
}

fn parse_id(id: &str) -> Result<u64, Refusal> {
    id.parse()
        .map_err(|_| Refusal::bad(format!("'{id}' is not a dead-letter id")))
}

fn filter_from(
    source: Option<String>,
    event: Option<String>,
    reason: Option<String>,
    sink: Option<String>,
) -> Filter {
    Filter {
        source,
        event,
        reason,
        sink,
    }
}

impl Api {
    fn store(&self) -> Result<DeadLetter, Refusal> {
        self.dead_letter.clone().ok_or_else(|| {
            Refusal::not_found("no dead-letter file is open (no sink has a backlog)")
        })
    }

    pub(super) async fn list_dead_letters(&self, q: Option<&str>) -> Answer {
        let mut q = query(q);
        let limit = match q.remove("limit") {
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| Refusal::bad("limit must be a number"))?
                .clamp(1, MAX_PAGE),
            None => 100,
        };
        let after = q.remove("after").map(|a| parse_id(&a)).transpose()?;
        let filter = filter_from(
            q.remove("source"),
            q.remove("event"),
            q.remove("reason"),
            q.remove("sink"),
        );
        if let Some(key) = q.keys().next() {
            return Err(Refusal::bad(format!(
                "unknown parameter '{key}' (source, event, reason, sink, limit, after)"
            )));
        }
        let store = self.store()?;
        let page = tokio::task::spawn_blocking(move || store.list(&filter, after, limit))
            .await
            .map_err(Refusal::internal)?
            .map_err(|e| Refusal::internal(format!("cannot read the dead letters: {e}")))?;
        let entries: Vec<serde_json::Value> = page.entries.iter().map(entry_json).collect();
        Ok(json(
            StatusCode::OK,
            serde_json::json!({
                "dead_letters": entries,
                "next": page.next.map(|n| n.to_string()),
            }),
        ))
    }

    pub(super) async fn show_dead_letter(&self, id: &str) -> Answer {
        let id = parse_id(id)?;
        let store = self.store()?;
        let full = tokio::task::spawn_blocking(move || store.get(id))
            .await
            .map_err(Refusal::internal)?
            .map_err(|e| Refusal::internal(format!("cannot read the dead letters: {e}")))?
            .ok_or_else(|| {
                Refusal::not_found(format!("no dead letter {id} (never, or redriven)"))
            })?;
        let mut v = entry_json(&full.entry);
        let headers: serde_json::Map<String, serde_json::Value> = full
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        v["headers"] = serde_json::Value::Object(headers);
        match std::str::from_utf8(&full.body) {
            Ok(text) => v["body"] = text.into(),
            Err(_) => v["body_hex"] = hex::encode(&full.body).into(),
        }
        Ok(json(StatusCode::OK, v))
    }

    pub(super) async fn redrive(&self, body: serde_json::Value, peer: SocketAddr) -> Answer {
        let r: Redrive =
            serde_json::from_value(body).map_err(|e| Refusal::bad(format!("redrive: {e}")))?;
        let by_filter =
            r.source.is_some() || r.event.is_some() || r.reason.is_some() || r.sink.is_some();
        if r.ids.is_empty() && !by_filter && !r.all {
            return Err(Refusal::bad(
                "say which dead letters: \"ids\", a filter (source, event, reason, sink) or \"all\": true",
            ));
        }
        if !r.ids.is_empty() && (by_filter || r.all) {
            return Err(Refusal::bad("give ids or a filter, not both"));
        }
        if r.ids.len() > MAX_REDRIVE {
            return Err(Refusal::bad(format!(
                "at most {MAX_REDRIVE} ids per redrive"
            )));
        }
        // A repeated id is one dead letter: sent once.
        let ids: BTreeSet<u64> = r
            .ids
            .iter()
            .map(|i| parse_id(i))
            .collect::<Result<_, _>>()?;
        if let Some(to) = &r.to_sink
            && !self.sinks.contains_key(to)
        {
            return Err(Refusal::bad(format!("to_sink: no sink named '{to}'")));
        }
        let wait = Duration::from_secs(r.wait_secs).min(MAX_WAIT);
        // One at a time: two redrives of the same entries would send them twice.
        // A second one is refused rather than queued, holding an admin connection.
        let guard = self.redriving.clone().try_lock_owned().map_err(|_| {
            Refusal::conflict("a redrive is running already: try again when it has answered")
        })?;
        let store = self.store()?;
        let requested = ids.len();
        // Entries written from here on have ids past this: among them, any sent
        // again and refused again.
        let dl_end = store
            .end()
            .map_err(|e| Refusal::internal(format!("cannot read the dead letters: {e}")))?;
        let ids: Vec<u64> = if ids.is_empty() {
            let filter = filter_from(
                r.source.clone(),
                r.event.clone(),
                r.reason.clone(),
                r.sink.clone(),
            );
            let store = store.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u64>> {
                let mut ids = Vec::new();
                let mut after = None;
                while ids.len() < MAX_REDRIVE {
                    let page =
                        store.list(&filter, after, (MAX_REDRIVE - ids.len()).min(MAX_PAGE))?;
                    ids.extend(page.entries.iter().map(|e| e.id));
                    match page.next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                Ok(ids)
            })
            .await
            .map_err(Refusal::internal)?
            .map_err(|e| Refusal::internal(format!("cannot read the dead letters: {e}")))?
        } else {
            ids.into_iter().collect()
        };
        let targets: BTreeMap<String, Option<Spool>> = self
            .sinks
            .iter()
            .map(|(name, v)| (name.clone(), v.backlog.as_ref().map(|(s, _)| s.clone())))
            .collect();
        let only_sink: BTreeMap<String, String> = self
            .routed
            .keys()
            .filter_map(|src| Some((src.clone(), self.sink_of_source(src)?.to_string())))
            .collect();
        let to_sink = r.to_sink.clone();
        // Its own task: an answer cut off (the caller gone, shutdown) must not cut
        // a chunk between its append to the backlog and its removal here.
        let done = tokio::spawn(async move {
            let _guard = guard;
            let mut outcome = Redriven::default();
            let mut rest = ids.as_slice();
            while !rest.is_empty() {
                let (chunk, used) = fetch_chunk(&store, rest).await?;
                rest = &rest[used..];
                outcome.missing += used - chunk.len();
                let mut pending = Vec::new();
                for full in chunk {
                    let id = full.entry.id;
                    let target = to_sink
                        .as_deref()
                        .or(full.entry.sink.as_deref())
                        .or_else(|| only_sink.get(&full.entry.source).map(String::as_str));
                    let spool = match target.map(|t| (t, targets.get(t))) {
                        Some((_, Some(Some(spool)))) => spool.clone(),
                        Some((_, Some(None))) => {
                            outcome
                                .failed
                                .push(failure(id, "its sink has no backlog; give to_sink"));
                            continue;
                        }
                        Some((t, None)) => {
                            outcome.failed.push(failure(
                                id,
                                &format!("sink '{t}' is not configured; give to_sink"),
                            ));
                            continue;
                        }
                        None => {
                            outcome.failed.push(failure(
                                id,
                                "it names no sink and its source routes to several; give to_sink",
                            ));
                            continue;
                        }
                    };
                    match full.event() {
                        Ok(event) => match spool.submit(event).await {
                            Ok(p) => pending.push((id, spool, p, full.entry.event_id)),
                            Err(e) => outcome
                                .failed
                                .push(failure(id, &format!("cannot store it in the backlog: {e}"))),
                        },
                        Err(why) => outcome.failed.push(failure(id, &why)),
                    }
                }
                let mut stored = Vec::new();
                for (id, spool, p, event_id) in pending {
                    match p.await {
                        Ok(seq) => {
                            stored.push((id, spool, seq));
                            outcome.event_ids.insert(event_id);
                        }
                        Err(e) => outcome
                            .failed
                            .push(failure(id, &format!("cannot store it in the backlog: {e}"))),
                    }
                }
                let removing: Vec<u64> = stored.iter().map(|(id, _, _)| *id).collect();
                let s = store.clone();
                tokio::task::spawn_blocking(move || s.remove(&removing))
                    .await
                    .map_err(Refusal::internal)?
                    .map_err(|e| {
                        Refusal::internal(format!(
                            "dead letters were queued again but their removal could not be recorded (a repeat would send them twice): {e}"
                        ))
                    })?;
                outcome.stored.extend(stored);
            }
            Ok::<_, Refusal>(outcome)
        });
        let outcome = done.await.map_err(Refusal::internal)??;
        let (stored, failed, missing) = (outcome.stored, outcome.failed, outcome.missing);
        let event_ids = outcome.event_ids;
        tracing::info!(peer = %peer, redriven = stored.len(), failed = failed.len(),
            ids = requested, source = ?r.source, event = ?r.event, reason = ?r.reason, sink = ?r.sink,
            to_sink = ?r.to_sink, "admin: dead letters redriven");
        let settled = wait_confirmed(&stored, wait).await;
        // The cursor passes an event refused again too: those are not confirmed.
        let again = if wait.is_zero() {
            0
        } else {
            let store = self.store()?;
            tokio::task::spawn_blocking(move || {
                let after = dl_end.checked_sub(1);
                store.list(&Filter::default(), after, MAX_REDRIVE).map(|p| {
                    p.entries
                        .iter()
                        .filter(|e| event_ids.contains(&e.event_id))
                        .count()
                })
            })
            .await
            .map_err(Refusal::internal)?
            .map_err(|e| Refusal::internal(format!("cannot read the dead letters: {e}")))?
        };
        Ok(json(
            StatusCode::OK,
            serde_json::json!({
                "redriven": stored.len(),
                "already_removed": missing,
                "confirmed": settled.saturating_sub(again),
                "dead_lettered_again": again,
                "failed": failed,
            }),
        ))
    }
}

/// What a redrive did, chunk by chunk.
#[derive(Default)]
struct Redriven {
    /// Appended to their backlogs (and removed from the dead letters).
    stored: Vec<(u64, Spool, u64)>,
    /// Their event ids: to tell the ones dead-lettered again.
    event_ids: HashSet<String>,
    failed: Vec<serde_json::Value>,
    /// Ids that were not (or no longer) dead letters.
    missing: usize,
}

/// Body bytes one chunk of a redrive holds at most (besides one entry of any size).
const CHUNK_BYTES: usize = 32 * 1024 * 1024;
/// Entries one chunk holds at most.
const CHUNK_ENTRIES: usize = 256;

/// The dead letters of the next chunk of `ids`, and how many ids it used (those
/// not found are used, and missing).
async fn fetch_chunk(store: &DeadLetter, ids: &[u64]) -> Result<(Vec<Full>, usize), Refusal> {
    let store = store.clone();
    let ids: Vec<u64> = ids.iter().take(CHUNK_ENTRIES).copied().collect();
    tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<Full>, usize)> {
        let (mut out, mut bytes, mut used) = (Vec::new(), 0, 0);
        for id in ids {
            if !out.is_empty() && bytes >= CHUNK_BYTES {
                break;
            }
            used += 1;
            if let Some(f) = store.get(id)? {
                bytes += f.body.len();
                out.push(f);
            }
        }
        Ok((out, used))
    })
    .await
    .map_err(Refusal::internal)?
    .map_err(|e| Refusal::internal(format!("cannot read the dead letters: {e}")))
}

fn failure(id: u64, why: &str) -> serde_json::Value {
    serde_json::json!({ "id": id.to_string(), "error": why })
}

/// How many of `stored` their sinks confirmed within `wait` (0 when not waiting).
async fn wait_confirmed(stored: &[(u64, Spool, u64)], wait: Duration) -> usize {
    let count = || {
        stored
            .iter()
            .filter(|(_, spool, seq)| spool.cursor() > *seq)
            .count()
    };
    if wait.is_zero() {
        return 0;
    }
    let until = Instant::now() + wait;
    while count() < stored.len() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    count()
}

fn entry_json(e: &crate::deadletter::Entry) -> serde_json::Value {
    serde_json::json!({
        "id": e.id.to_string(),
        "sink": e.sink,
        "source": e.source,
        "event_type": e.event_type,
        "event_id": e.event_id,
        "topic": e.topic,
        "key": e.key,
        "content_type": e.content_type,
        "reason": e.reason,
        "received_at": rfc3339(e.received_at_ns),
        "dead_lettered_at": e.dead_lettered_at_ns.map(rfc3339),
        "size": e.size,
    })
}
