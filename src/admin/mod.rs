//! The admin API: `/admin/` on the admin listener, for operators and for
//! `hookrelay admin` (which `kubectl exec` runs in the distroless image).
//!
//! - Off (404, as any unknown path) unless `[admin]` names a token; every call
//!   then needs `Authorization: Bearer <token>`, compared in constant time.
//! - Reads: the backlog of each sink, the dead letters, replay progress.
//! - Changes: pause and resume a sink, redrive dead letters, start a replay.
//!   Each is logged with the caller's address and what it asked for.
//! - Everything a caller sends is bounded: the body (64 KiB, 10 s), page sizes,
//!   the ids of one redrive, running replays.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::deadletter::DeadLetter;
use crate::forward::{Control, State};
use crate::metrics;
use crate::quiet::LogEvery;
use crate::replay::Jobs;
use crate::respond::{Resp, error, json};
use crate::sink::Route;
use crate::spool::{Archives, Spool};

mod deadletters;
mod replay;

/// A request body larger than this is refused (413): every call takes a small
/// JSON object.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// A caller that has not sent its body by then gets 408.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// One sink as the admin API sees it.
pub struct SinkView {
    pub route: Route,
    /// Its backlog and forwarder, when a durable source routes to it.
    pub backlog: Option<(Spool, Arc<Control>)>,
}

/// Everything the admin API reads and steers.
pub struct Api {
    /// SHA-256 of the token: comparing digests keeps the comparison constant-time
    /// in the token's length too.
    token: Option<[u8; 32]>,
    sinks: BTreeMap<String, SinkView>,
    dead_letter: Option<DeadLetter>,
    /// Each source's sinks: where a dead letter that names no sink goes back to.
    routed: BTreeMap<String, Vec<String>>,
    /// Held by the redrive in progress (see `deadletters`).
    redriving: Arc<tokio::sync::Mutex<()>>,
    /// Every sink's archive, when `[archive]` keeps confirmed events.
    archives: Option<Arc<Archives>>,
    replay: Jobs,
}

/// A call the admin API refused, with its status and reason.
pub(crate) struct Refusal(StatusCode, String);

impl Refusal {
    pub(crate) fn bad(why: impl Into<String>) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, why.into())
    }

    pub(crate) fn not_found(why: impl Into<String>) -> Refusal {
        Refusal(StatusCode::NOT_FOUND, why.into())
    }

    pub(crate) fn conflict(why: impl Into<String>) -> Refusal {
        Refusal(StatusCode::CONFLICT, why.into())
    }

    pub(crate) fn internal(why: impl std::fmt::Display) -> Refusal {
        Refusal(StatusCode::INTERNAL_SERVER_ERROR, why.to_string())
    }
}

type Answer = Result<Resp, Refusal>;

static UNAUTHORIZED_LOG: LogEvery = LogEvery::new(Duration::from_secs(10));

impl Api {
    pub fn new(
        token: Option<&str>,
        sinks: BTreeMap<String, SinkView>,
        dead_letter: Option<DeadLetter>,
        routed: BTreeMap<String, Vec<String>>,
        archives: Option<Arc<Archives>>,
        replay: Jobs,
    ) -> Api {
        Api {
            token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            sinks,
            dead_letter,
            routed,
            redriving: Arc::new(tokio::sync::Mutex::new(())),
            archives,
            replay,
        }
    }

    /// Answers one request under `/admin/`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let Some(token) = &self.token else {
            metrics::admin_request("off", 404);
            return error(StatusCode::NOT_FOUND, "not found");
        };
        if !authorized(&req, token) {
            metrics::admin_request("unauthorized", 401);
            if let Some(held) = UNAUTHORIZED_LOG.allow() {
                tracing::warn!(peer = %peer, path = %req.uri().path(), held_back = held,
                    "admin API call without a valid bearer token refused");
            }
            let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let path = req.uri().path().trim_start_matches("/admin/").to_string();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let method = req.method().clone();
        let (action, answer) = match (&method, parts.as_slice()) {
            (&Method::GET, ["backlog"]) => ("backlog", self.backlog().await),
            (&Method::GET, ["dead-letters"]) => (
                "dead_letters_list",
                self.list_dead_letters(req.uri().query()).await,
            ),
            (&Method::GET, ["dead-letters", id]) => {
                ("dead_letters_show", self.show_dead_letter(id).await)
            }
            (&Method::POST, ["dead-letters", "redrive"]) => {
                let answer = match read_json(req).await {
                    Ok(body) => self.redrive(body, peer).await,
                    Err(r) => Err(r),
                };
                ("dead_letters_redrive", answer)
            }
            (&Method::POST, ["replay"]) => {
                let answer = match read_json(req).await {
                    Ok(body) => self.start_replay(body, peer),
                    Err(r) => Err(r),
                };
                ("replay_start", answer)
            }
            (&Method::GET, ["replay", job]) => ("replay_progress", self.replay_progress(job)),
            (&Method::POST, ["sinks", name, op @ ("pause" | "resume")]) => {
                let pause = *op == "pause";
                (
                    if pause { "pause" } else { "resume" },
                    self.pause(name, pause, peer).await,
                )
            }
            (_, ["backlog" | "dead-letters" | "sinks" | "replay", ..]) => (
                "unknown",
                Err(Refusal(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} /admin/{path} is not an admin call"),
                )),
            ),
            _ => (
                "unknown",
                Err(Refusal::not_found(format!(
                    "/admin/{path} is not an admin call"
                ))),
            ),
        };
        let resp = answer.unwrap_or_else(|Refusal(status, why)| error(status, &why));
        metrics::admin_request(action, resp.status().as_u16());
        resp
    }

    async fn backlog(&self) -> Answer {
        let sinks: Vec<serde_json::Value> = self
            .sinks
            .iter()
            .map(|(name, view)| {
                let kind = view.route.kind.as_str();
                match &view.backlog {
                    Some((spool, control)) => {
                        let status = control.status();
                        let state = if control.paused() {
                            State::Paused
                        } else {
                            status.state
                        };
                        serde_json::json!({
                            "sink": name,
                            "kind": kind,
                            "state": state.as_str(),
                            "paused": control.paused(),
                            "events": spool.durable_end().saturating_sub(spool.cursor()),
                            "bytes": spool.bytes(),
                            "oldest_age_secs": status.oldest_age.map(|a| a.as_secs_f64()),
                            "in_flight": status.in_flight,
                            "last_error": status.last_error.as_ref().map(|(e, _)| e),
                            "last_error_age_secs": status.last_error.as_ref().map(|(_, at)| at.elapsed().as_secs_f64()),
                        })
                    }
                    // Only `ack = "broker"` sources publish here: no backlog to show.
                    None => serde_json::json!({
                        "sink": name,
                        "kind": kind,
                        "state": if view.route.sink.ready() { "connected" } else { "retrying" },
                        "paused": false,
                        "events": 0,
                        "bytes": 0,
                        "oldest_age_secs": null,
                        "in_flight": 0,
                        "last_error": null,
                        "last_error_age_secs": null,
                    }),
                }
            })
            .collect();
        let dead_letters = self.dead_letter.as_ref().map(|d| {
            let s = d.stats();
            serde_json::json!({ "count": s.entries, "bytes": s.body_bytes })
        });
        let archive = match &self.archives {
            Some(a) => {
                let max_bytes = a.max_bytes();
                let a = a.clone();
                let stats = tokio::task::spawn_blocking(move || a.stats())
                    .await
                    .map_err(Refusal::internal)?
                    .map_err(|e| Refusal::internal(format!("cannot read the archive: {e}")))?;
                let bytes: u64 = stats.iter().map(|s| s.bytes).sum();
                let segments: u64 = stats.iter().map(|s| s.segments).sum();
                serde_json::json!({
                    "bytes": bytes,
                    "max_bytes": max_bytes,
                    "segments": segments,
                    "sinks": stats.iter().map(|s| serde_json::json!({
                        "sink": s.sink,
                        "bytes": s.bytes,
                        "segments": s.segments,
                        "oldest": s.oldest_ns.map(crate::event::rfc3339_millis),
                        "newest": s.newest_ns.map(crate::event::rfc3339_millis),
                    })).collect::<Vec<_>>(),
                })
            }
            None => serde_json::Value::Null,
        };
        Ok(json(
            StatusCode::OK,
            serde_json::json!({ "sinks": sinks, "archive": archive, "dead_letters": dead_letters }),
        ))
    }

    async fn pause(&self, name: &str, pause: bool, peer: SocketAddr) -> Answer {
        let view = self
            .sinks
            .get(name)
            .ok_or_else(|| Refusal::not_found(format!("no sink named '{name}'")))?;
        let Some((_, control)) = &view.backlog else {
            return Err(Refusal::conflict(format!(
                "sink '{name}' has no backlog (only ack = \"broker\" sources route to it): there is nothing to pause"
            )));
        };
        let control = control.clone();
        let changed = tokio::task::spawn_blocking(move || {
            if pause {
                control.pause()
            } else {
                control.resume()
            }
        })
        .await
        .map_err(Refusal::internal)?
        .map_err(|e| Refusal::internal(format!("cannot record the pause on disk: {e}")))?;
        tracing::info!(peer = %peer, sink = name, action = if pause { "pause" } else { "resume" }, changed,
            "admin: sink {}", if pause { "paused" } else { "resumed" });
        Ok(json(
            StatusCode::OK,
            serde_json::json!({ "sink": name, "paused": pause, "changed": changed }),
        ))
    }

    /// The sink a dead letter of `source` goes back to when it names none: the
    /// source's only sink.
    fn sink_of_source(&self, source: &str) -> Option<&str> {
        match self.routed.get(source).map(Vec::as_slice) {
            Some([only]) => Some(only),
            _ => None,
        }
    }
}

fn authorized(req: &Request<Incoming>, token: &[u8; 32]) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 7235).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
    else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    digest.ct_eq(token).into()
}

/// The request's JSON body, bounded in size and time.
async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, Refusal> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes: Bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => {
            return Err(Refusal(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time".into(),
            ));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        Ok(Err(e)) => return Err(Refusal::bad(format!("cannot read the body: {e}"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    if bytes.is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| Refusal::bad(format!("the body is not JSON: {e}")))
}

/// The query string's pairs; a repeated key keeps its last value.
pub(crate) fn query(q: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}
