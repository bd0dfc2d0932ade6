//! `/admin/replay`: re-publish a time window of the archive (see
//! `spool::archive`), with the original ids and bodies and `hookrelay-replay: true`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use serde::Deserialize;

use super::{Answer, Api, Refusal};
use crate::event::rfc3339_millis as rfc3339;
use crate::replay::{Progress, ReplaySpec};
use crate::respond::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Replay {
    since: serde_json::Value,
    until: Option<serde_json::Value>,
    source: Option<String>,
    event: Option<String>,
    sink: Option<String>,
}

/// RFC 3339, or seconds since the epoch, as nanoseconds since the epoch.
fn instant(key: &str, v: &serde_json::Value) -> Result<u64, Refusal> {
    let at = match v {
        serde_json::Value::String(s) => humantime::parse_rfc3339_weak(s)
            .map_err(|e| Refusal::bad(format!("{key}: '{s}' is not an RFC 3339 time: {e}")))?,
        serde_json::Value::Number(n) => {
            let secs = n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
                .ok_or_else(|| Refusal::bad(format!("{key}: {n} is not a time")))?;
            UNIX_EPOCH + Duration::from_secs_f64(secs)
        }
        _ => {
            return Err(Refusal::bad(format!(
                "{key}: an RFC 3339 time or seconds since the epoch"
            )));
        }
    };
    let ns = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Refusal::bad(format!("{key}: before 1970")))?
        .as_nanos();
    u64::try_from(ns).map_err(|_| Refusal::bad(format!("{key}: too far ahead")))
}

pub(super) fn progress_json(p: &Progress) -> serde_json::Value {
    serde_json::json!({
        "job": p.job.to_string(),
        "state": p.state,
        "sinks": p.sinks,
        "scanned": p.scanned,
        "matched": p.matched,
        "published": p.published,
        "failed": p.failed,
        "error": p.error,
        "started_at": rfc3339(p.started_at_ns),
        "finished_at": p.finished_at_ns.map(rfc3339),
    })
}

impl Api {
    pub(super) fn start_replay(&self, body: serde_json::Value, peer: SocketAddr) -> Answer {
        let r: Replay =
            serde_json::from_value(body).map_err(|e| Refusal::bad(format!("replay: {e}")))?;
        let since_ns = instant("since", &r.since)?;
        let until_ns = match &r.until {
            Some(u) => instant("until", u)?,
            None => instant(
                "until",
                &serde_json::json!(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64())
                ),
            )?,
        };
        if let Some(s) = &r.sink
            && !self.sinks.contains_key(s)
        {
            return Err(Refusal::bad(format!("sink: no sink named '{s}'")));
        }
        let Some(archives) = &self.archives else {
            return Err(Refusal::conflict(
                "the archive is off: nothing is kept to replay (configure [archive])",
            ));
        };
        let targets = self
            .sinks
            .iter()
            .filter(|(_, view)| view.backlog.is_some())
            .map(|(name, view)| (name.clone(), archives.archive(name), view.route.clone()))
            .collect();
        let spec = ReplaySpec {
            source: r.source.clone(),
            event: r.event.clone(),
            since_ns,
            until_ns,
            sink: r.sink.clone(),
        };
        let job = self
            .replay
            .start(spec, targets)
            .map_err(Refusal::conflict)?;
        tracing::info!(peer = %peer, job, since = %rfc3339(since_ns), until = %rfc3339(until_ns),
            source = ?r.source, event = ?r.event, sink = ?r.sink, "admin: replay started");
        Ok(json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "job": job.to_string(), "state": "running" }),
        ))
    }

    pub(super) fn replay_progress(&self, job: &str) -> Answer {
        let id: u64 = job
            .parse()
            .map_err(|_| Refusal::bad(format!("'{job}' is not a job id")))?;
        let p = self.replay.get(id).ok_or_else(|| {
            Refusal::not_found(format!("no replay job {id} (unknown, or long finished)"))
        })?;
        Ok(json(StatusCode::OK, progress_json(&p)))
    }
}
