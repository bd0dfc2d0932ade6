//! The HTTP edge: listeners, limits, routing, and the accept path.
//!
//! `POST /webhooks/{source}`: limits → verify → extract → dedup → spool → 200.
//! Every answer is small JSON, counted by source and status; bodies, signatures
//! and secrets are never logged.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::dedup::{Seen, Space, Ticket, Window};
use crate::event::trace::{self, TraceContext};
use crate::event::{Extracted, Extractor, now_ns};
use crate::forward::{self, DirectError};
use crate::listener;
use crate::metrics::{self, EventLabels, RequestMetrics, UNKNOWN_SOURCE};
use crate::respond::{Resp, error, json};
use crate::sink::Route;
use crate::spool::{AppendError, Pending, Spool};
use crate::verify::Verifier;

mod admin_port;
pub use admin_port::{ADMIN_MAX_CONNECTIONS, serve_admin};

/// The longest a request waits for its event to be stored (a sync, or a broker
/// confirmation within `ack_timeout_ms`, which is capped below it): a stalled disk
/// answers 503, and no request holds its connection and reservation forever.
const STORE_DEADLINE: Duration = Duration::from_secs(20);

/// The most KiB permits the body semaphore holds (tokio's limit is far above).
const MAX_BODY_PERMITS: usize = u32::MAX as usize;

/// Refusals during an outage come by the thousand: logged once a second, counted always.
static NOT_ACCEPTED: crate::quiet::LogEvery = crate::quiet::LogEvery::new(Duration::from_secs(1));

/// Seconds a provider is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// When a source's events are answered 200.
pub enum Ack {
    /// After the fdatasync of its record in the backlog of each sink it is routed
    /// to (one spool per sink, so that one sink's outage fills only its own).
    Durable(Arc<[Spool]>),
    /// After every sink it is routed to confirms, or 503 past `timeout` (see
    /// [`forward::publish_direct`]).
    Broker {
        routes: Arc<[Route]>,
        timeout: Duration,
    },
}

impl Ack {
    /// Whether an event of this source could be made safe now: each of its sinks'
    /// backlogs writable with room, or each of its brokers reachable.
    pub fn can_accept(&self) -> bool {
        match self {
            Ack::Durable(spools) => spools.iter().all(Spool::has_room),
            Ack::Broker { routes, .. } => routes.iter().all(|r| r.sink.ready()),
        }
    }
}

/// One configured source, ready to serve.
pub struct Source {
    pub verifier: Arc<Verifier>,
    pub extractor: Extractor,
    pub metrics: RequestMetrics,
    pub events: EventLabels,
    pub ack: Ack,
    /// Sender networks allowed to post; empty: anyone.
    pub allowed_nets: Vec<ipnet::IpNet>,
    pub rate_limit: Option<crate::guard::RateLimiter>,
}

/// Limits the webhook listener enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    /// A connection with no request in progress this long is closed.
    pub idle_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed for allow-lists.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Failed signatures each client address may send: per second, and at once.
    pub unverified_rate_limit: crate::config::RateLimit,
    /// Request bodies being read or held at once, in bytes, over every connection.
    pub max_in_flight_body_bytes: usize,
}

/// Everything a request needs; shared by all connections.
pub struct App {
    pub sources: HashMap<String, Source>,
    pub dedup: Window,
    pub limits: Limits,
    /// Cleared when shutdown starts, so /readyz fails before the listener closes.
    pub accepting: AtomicBool,
    /// Cleared if the forwarder stops while the process runs: nothing accepted
    /// would be delivered, so the process is not ready (and exits).
    pub delivering: AtomicBool,
    /// Failed signatures, per client address.
    unverified: crate::guard::FailureLimiter,
    /// Request body bytes being read or held, in KiB permits (see `Limits`).
    bodies: Arc<tokio::sync::Semaphore>,
    unknown: RequestMetrics,
    request_ids: AtomicU64,
    id_prefix: u32,
    /// One info line per request (`[log] access`).
    pub access_log: bool,
    /// One span per request to a collector (`[otlp]`).
    pub spans: Option<crate::otlp::Spans>,
}

impl App {
    pub fn new(sources: HashMap<String, Source>, dedup: Window, limits: Limits) -> Self {
        let r = limits.unverified_rate_limit;
        let body_kib = (limits.max_in_flight_body_bytes / 1024).clamp(1, MAX_BODY_PERMITS);
        Self {
            bodies: Arc::new(tokio::sync::Semaphore::new(body_kib)),
            unverified: crate::guard::FailureLimiter::new(r.per_second, r.burst),
            sources,
            dedup,
            limits,
            accepting: AtomicBool::new(true),
            delivering: AtomicBool::new(true),
            unknown: RequestMetrics::new(UNKNOWN_SOURCE),
            request_ids: AtomicU64::new(0),
            id_prefix: fastrand::u32(..),
            access_log: false,
            spans: None,
        }
    }

    /// Ready to accept: not shutting down, delivering, and some source able to
    /// accept (see [`Ack::can_accept`]). One sink's outage refuses only the sources
    /// routed to it, so the pod stays in service for the others.
    pub fn ready(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
            && self.delivering.load(Ordering::Relaxed)
            && self.sources.values().any(|s| s.ack.can_accept())
    }

    /// Sources that cannot accept now, by name, for `/readyz`'s answer.
    pub fn refusing(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .sources
            .iter()
            .filter(|(_, s)| !s.ack.can_accept())
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    fn request_id(&self) -> String {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:08x}", self.id_prefix, n)
    }
}

/// The webhook path's 200 answers, serialized from borrowed fields: this runs once
/// per request, where building a `serde_json::Value` tree showed up in profiles.
#[derive(serde::Serialize)]
struct Outcome<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

fn unavailable(reason: &str) -> Resp {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r
}

fn too_many(wait: Duration, reason: &str) -> Resp {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, reason);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(wait.as_secs().max(1)),
    );
    r
}

fn close(mut r: Resp) -> Resp {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Routes one request on the webhook listener.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let started = Instant::now();
    // The caller's own id when it sent a usable one, so its logs and ours join.
    let request_id = match trace::request_id(req.headers()) {
        Some(id) => id.to_string(),
        None => app.request_id(),
    };
    let trace = TraceContext::for_request(req.headers());
    let source_name = req
        .uri()
        .path()
        .strip_prefix("/webhooks/")
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .map(str::to_string);
    let source = source_name
        .as_deref()
        .and_then(|s| app.sources.get(s).map(|src| (s, src)));
    let source_label = source.map_or(UNKNOWN_SOURCE, |s| s.0);
    let trace_id = trace.trace_id_hex();
    let span = tracing::debug_span!("request", id = %request_id, trace_id = %trace_id, source = source_label);
    let mut resp = async {
        let Some((name, src)) = source else {
            let r = error(StatusCode::NOT_FOUND, "unknown source");
            app.unknown.answered(404, started.elapsed());
            tracing::debug!(status = 404, "unknown source");
            return r;
        };
        let r = accept(&app, name, src, req, peer, &trace).await;
        let status = r.status().as_u16();
        src.metrics.answered(status, started.elapsed());
        if status >= 500
            && let Some(suppressed) = NOT_ACCEPTED.allow()
        {
            tracing::warn!(request_id = %request_id, trace_id = %trace_id, source = name, status, suppressed,
                "webhook not accepted (each is counted in hookrelay_http_requests_total; this line at most once a second)");
        } else {
            tracing::debug!(status, "answered");
        }
        r
    }
    .instrument(span)
    .await;
    let event_id = resp.extensions_mut().remove::<EventId>();
    if let Some(spans) = &app.spans {
        spans.record(&crate::otlp::RequestSpan {
            trace: &trace,
            source: source_label,
            status: resp.status().as_u16(),
            event_id: event_id.as_ref().map(|e| e.0.as_str()),
            request_id: &request_id,
            started: std::time::SystemTime::now() - started.elapsed(),
        });
    }
    if app.access_log {
        tracing::info!(target: ACCESS_LOG, source = source_label, status = resp.status().as_u16(),
            event_id = event_id.as_ref().map(|e| e.0.as_str()),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            request_id = %request_id, trace_id = %trace_id, peer = %peer.ip(), "request");
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(trace::REQUEST_ID_HEADER, v);
    }
    resp
}

/// The `tracing` target of the access log (`[log] access = true`).
pub const ACCESS_LOG: &str = "hookrelay::access";

/// The id of the event a 200 was for, handed from `accept` to the access log.
#[derive(Clone)]
struct EventId(String);

/// Only when the access log or spans will read it: the extensions map is an
/// allocation per answer.
fn with_event_id(app: &App, mut r: Resp, id: &str) -> Resp {
    if app.access_log || app.spans.is_some() {
        r.extensions_mut().insert(EventId(id.to_string()));
    }
    r
}

fn reply(r: crate::verify::Reply) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.content_type),
    );
    resp
}

async fn accept(
    app: &Arc<App>,
    name: &str,
    src: &Source,
    req: Request<Incoming>,
    peer: SocketAddr,
    trace: &TraceContext,
) -> Resp {
    if !src.allowed_nets.is_empty() {
        let ip = crate::guard::client_ip(peer.ip(), req.headers(), &app.limits.trusted_proxies);
        if !crate::guard::allowed(ip, &src.allowed_nets) {
            tracing::debug!(%ip, "sender not in allowed_cidrs");
            return error(StatusCode::FORBIDDEN, "sender not allowed");
        }
    }
    if req.method() == Method::GET
        && let Some(r) = src.verifier.handshake_get(req.uri().query().unwrap_or(""))
    {
        return reply(r);
    }
    if req.method() != Method::POST {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; POST webhooks here",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let max = app.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        // Answer before reading a byte of it.
        return close(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    }
    // Bodies are read into memory: their bytes in flight, over all connections and
    // HTTP/2 streams, are bounded before anything is read (the declared length, or
    // the most a body may have), and held until the event is stored or refused.
    let reserve = declared.map_or(max, |n| n as usize).clamp(1, max);
    let kib = u32::try_from(reserve.div_ceil(1024)).unwrap_or(u32::MAX);
    let _body_room = match tokio::time::timeout(
        app.limits.body_read_timeout,
        app.bodies.clone().acquire_many_owned(kib),
    )
    .await
    {
        Ok(Ok(permit)) => permit,
        _ => return close(unavailable("too many request bodies in flight")),
    };
    let received_at_ns = now_ns();
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(
        app.limits.body_read_timeout,
        Limited::new(body, max).collect(),
    )
    .await
    {
        Err(_) => return close(error(StatusCode::REQUEST_TIMEOUT, "body read timed out")),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return close(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
        }
        Ok(Err(_)) => return close(error(StatusCode::BAD_REQUEST, "body could not be read")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };

    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let verified = match src.verifier.verify(&parts.headers, body, path_and_query) {
        Ok(v) => v,
        Err(reason) => {
            src.metrics.signature_failure(reason.as_str());
            tracing::debug!(reason = reason.as_str(), "signature refused");
            // Failures are charged to the client's address, never to the source's
            // budget; past its own budget the address is told to back off. Either
            // way it gets no keep-alive: each try costs it a new connection.
            let ip =
                crate::guard::client_ip(peer.ip(), &parts.headers, &app.limits.trusted_proxies);
            return close(match app.unverified.charge(ip) {
                Ok(()) => error(StatusCode::UNAUTHORIZED, "invalid signature"),
                Err(wait) => {
                    metrics::unverified_throttled();
                    too_many(wait, "too many failed signatures from this address")
                }
            });
        }
    };
    // A canonical form (json-stringify) may be longer than the bytes received.
    if verified.body().len() > max {
        return close(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    }
    if let Some(r) = src.verifier.handshake(&verified, &parts.headers) {
        return reply(r);
    }
    let content_type = match crate::event::content_type(&parts.headers) {
        Ok(ct) => ct,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let event = match src
        .extractor
        .extract(verified, &parts.headers, content_type, received_at_ns)
    {
        Ok(Extracted::Publish(e)) => e.traced(trace),
        Ok(Extracted::Filtered { event_type }) => {
            src.events.record(&event_type, "filtered");
            let filtered = Outcome {
                status: "filtered",
                id: None,
            };
            return json(StatusCode::OK, filtered);
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };

    // From here on, what is reserved in the dedup window is settled (committed or
    // released) on every path, the client going away mid-request included.
    let mut reservation = Reservation::new(app.clone());
    let guard = src.extractor.replay_guard(&event);
    let keys = [
        (Space::Id, Some(event.id())),
        (Space::Body, guard.as_deref()),
    ];
    for (space, key) in keys {
        let Some(key) = key else { continue };
        let seen = match app.dedup.check(space, name, key).await {
            Ok((Seen::New, ticket)) => {
                reservation.hold(ticket);
                continue;
            }
            Ok((seen, _)) => seen,
            Err(_) => {
                reservation.settle(false).await;
                return unavailable("the shared dedup store is unavailable");
            }
        };
        reservation.settle(false).await;
        if seen == Seen::InFlight {
            return unavailable("the same event is being accepted by another request");
        }
        src.events.record(event.event_type(), "duplicate");
        let duplicate = Outcome {
            status: "duplicate",
            id: Some(event.id()),
        };
        return with_event_id(app, json(StatusCode::OK, duplicate), event.id());
    }
    // The source's budget is spent by new, verified events only: neither a flood of
    // unsigned requests nor replays of one captured request can drain it.
    if let Some(limiter) = &src.rate_limit
        && let Err(wait) = limiter.take()
    {
        reservation.settle(false).await;
        return too_many(wait, "rate limit exceeded");
    }
    let (id, event_type) = (event.id().to_string(), event.event_type().to_string());
    let stored = match &src.ack {
        Ack::Durable(spools) => match crate::spool::submit_to(spools, event).await {
            Ok(pending) => reservation.store(Stored::Spool(pending)).await,
            Err(e) => Some(Err(append_refused(&e))),
        },
        Ack::Broker { routes, timeout } => {
            let publish = tokio::spawn(forward::publish_direct(routes.clone(), *timeout, event));
            reservation.store(Stored::Broker(publish)).await
        }
    };
    // Not stored in time (a stalled disk): 503, never a 200 that waits forever; the
    // reservation is settled by the store's outcome when it comes (the drop below).
    let Some(stored) = stored else {
        return unavailable("the spool did not sync in time");
    };
    reservation.settle(stored.is_ok()).await;
    match stored {
        Ok(()) => {
            src.events.record(&event_type, "accepted");
            let accepted = Outcome {
                status: "accepted",
                id: Some(&id),
            };
            with_event_id(app, json(StatusCode::OK, accepted), &id)
        }
        Err(resp) => resp,
    }
}

fn append_refused(e: &AppendError) -> Resp {
    match e {
        AppendError::Unframable(_) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        _ => unavailable(&e.to_string()),
    }
}

/// Where an accepted event is being made safe.
enum Stored {
    /// One append per sink the source is routed to.
    Spool(Vec<Pending>),
    /// `ack = "broker"`: the publish runs as a task of its own, so that it completes
    /// (or fails) whether or not the request is still waiting.
    Broker(JoinHandle<Result<(), DirectError>>),
}

impl Stored {
    async fn outcome(&mut self) -> Result<(), Resp> {
        match self {
            // Each is dropped once it answered: this may be polled again after a
            // timeout (by the drop's settling task), and an answered one never is.
            Stored::Spool(pending) => {
                while let Some(p) = pending.last_mut() {
                    let appended = p.await;
                    pending.pop();
                    appended.map_err(|e| append_refused(&e))?;
                }
                Ok(())
            }
            Stored::Broker(h) => match h.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e @ DirectError::Unconfirmed(_))) => Err(unavailable(&e.to_string())),
                // The broker will never take this event as it is: the provider's
                // retries keep failing visibly (502s) instead of the event being dropped.
                Ok(Err(e @ DirectError::Refused(_))) => {
                    Err(error(StatusCode::BAD_GATEWAY, &e.to_string()))
                }
                Err(_) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "publish failed")),
            },
        }
    }
}

/// Dedup reservations of one request, settled exactly once: committed when the
/// event was stored, released when it was not. hyper drops a request's future when
/// its client disconnects; if that happens before settling, the drop hands the
/// settling to a task that waits for the store's outcome (the append or publish
/// goes on without the request), so the provider's retry finds the id committed or
/// free, never held for the window. A reservation nobody settles at all (no runtime
/// to settle it on) still expires after [`crate::dedup::RESERVATION_TTL`].
struct Reservation {
    app: Arc<App>,
    /// The event id's and the replay guard's (inline: no allocation per request).
    tickets: [Option<Ticket>; 2],
    stored: Option<Stored>,
}

impl Reservation {
    fn new(app: Arc<App>) -> Self {
        Self {
            app,
            tickets: [None, None],
            stored: None,
        }
    }

    fn hold(&mut self, ticket: Ticket) {
        if let Some(slot) = self.tickets.iter_mut().find(|t| t.is_none()) {
            *slot = Some(ticket);
        }
    }

    /// Waits for the store's outcome, for at most [`STORE_DEADLINE`]; `None` past
    /// it (the store goes on, and a drop of the reservation leaves it to settle it).
    async fn store(&mut self, stored: Stored) -> Option<Result<(), Resp>> {
        let waiting = self.stored.insert(stored).outcome();
        let outcome = tokio::time::timeout(STORE_DEADLINE, waiting).await.ok()?;
        self.stored = None;
        Some(outcome)
    }

    async fn settle(mut self, stored: bool) {
        let tickets = std::mem::take(&mut self.tickets);
        settle(&self.app, &tickets, stored).await;
    }
}

async fn settle(app: &App, tickets: &[Option<Ticket>; 2], stored: bool) {
    for t in tickets.iter().flatten() {
        if stored {
            app.dedup.commit(t).await;
        } else {
            app.dedup.release(t).await;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.tickets.iter().all(Option::is_none) {
            return;
        }
        let (app, tickets, stored) = (
            self.app.clone(),
            std::mem::take(&mut self.tickets),
            self.stored.take(),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let ok = match stored {
                    Some(mut s) => s.outcome().await.is_ok(),
                    None => false,
                };
                settle(&app, &tickets, ok).await;
            });
        }
    }
}

/// Serves the webhook listener until `shutdown` resolves, then stops accepting and
/// lets in-flight requests finish for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let limits = app.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header timer also runs while a kept-alive connection waits for its
    // next request, so at `header_read_timeout` it would close idle connections long
    // before `idle_timeout`. The listener bounds the first head from the accept
    // (`header_read_timeout`) and every wait between requests (`idle_timeout`);
    // hyper's timer stays as a backstop at the longer of the two.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.max(limits.idle_timeout))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(256);
    let service_app = app.clone();
    let settings = listener::Settings {
        max_connections: limits.max_connections,
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        drain,
    };
    listener::serve(
        listener,
        builder,
        settings,
        move |req, peer| {
            let app = service_app.clone();
            // Boxed: hyper keeps a slot for the service's future in every connection
            // for its whole life, 10.5 KiB of it inline; boxed, an idle keep-alive
            // connection holds 16 bytes and a request its future while it runs.
            Box::pin(async move { Ok::<_, Infallible>(handle(app, req, peer).await) })
        },
        async {
            shutdown.await;
            app.accepting.store(false, Ordering::Relaxed);
        },
        tls,
    )
    .await;
}
