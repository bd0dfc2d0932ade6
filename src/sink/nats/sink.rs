//! Publishing to JetStream: each event to the subject of its topic, its body as
//! the payload, hookrelay's headers and `Nats-Msg-Id` = the event id, so the
//! stream's duplicate window drops a republished copy. Many publishes are in
//! flight; each confirmation resolves with the stream's ack.
//!
//! How failures are told apart (retried unless it can never succeed):
//!
//! - not connected, connection lost before the ack, no ack within
//!   `ack_timeout_ms`: retriable (the spool holds the event).
//! - a subject NATS cannot take (empty token, wildcard, space or control byte,
//!   over [`MAX_SUBJECT_LEN`](super::config::MAX_SUBJECT_LEN)), a header value
//!   holding CR, LF or another control byte, an event larger than the server's
//!   `max_payload` or the stream's `max_msg_size`: permanent (dead-lettered with
//!   the reason), never a panic.
//! - no responders (no stream took the subject): the sink looks the stream up.
//!   Stream there but storing other subjects: permanent, since no retry makes it
//!   take this one (the stream's subjects, a configuration matter, say which it
//!   takes; the event waits in the dead-letter file for a replay once they are
//!   widened). Stream there and storing this subject: retriable (restarting or
//!   electing a leader). Stream missing: retriable, and recreated first when
//!   `create_stream = true`; without it the events wait in the spool for an
//!   operator to bring the stream back rather than being refused one by one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, HeaderMap, HeaderName, HeaderValue};

use super::config::{NatsSinkConfig, check_subject, subject_matches};
use super::connection::{self, Lookup, Losses, StreamTrouble};
use crate::sink::{BoxFuture, Confirmation, Message, Sink, SinkError, StartError};

/// The header JetStream deduplicates on.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Stream creation retried after a failure no sooner than this...
const ENSURE_MIN: Duration = Duration::from_millis(500);
/// ...doubling up to this.
const ENSURE_MAX: Duration = Duration::from_secs(30);

pub struct NatsSink {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: NatsSinkConfig,
    client: Client,
    js: jetstream::Context,
    losses: Losses,
    /// With `create_stream`: the stream is known to exist. Cleared when a publish
    /// finds it gone, so the next publish creates it again.
    ensured: AtomicBool,
    /// One creation at a time, paced by backoff after failures.
    ensuring: tokio::sync::Mutex<Backoff>,
    /// The last stream lookup, for telling why a subject had no responders.
    seen: tokio::sync::Mutex<Option<(Instant, Seen)>>,
}

struct Backoff {
    not_before: Instant,
    failures: u32,
}

#[derive(Clone)]
enum Seen {
    Subjects(Vec<String>),
    Missing,
    Unknown(String),
}

impl NatsSink {
    /// Connects and finds (or creates) the stream. Refused credentials, a missing
    /// stream with `create_stream = false` or a stream that cannot be created stop
    /// the start; an unreachable server only warns, since the spool absorbs the
    /// outage and the client keeps reconnecting.
    pub async fn new(cfg: &NatsSinkConfig) -> Result<NatsSink, StartError> {
        let losses: Losses = Arc::new(tokio::sync::watch::Sender::new(0));
        let (client, connected) = connection::start(cfg, &losses).await?;
        let js = connection::jetstream(cfg, client.clone());
        let shared = Shared {
            cfg: cfg.clone(),
            client,
            js,
            losses,
            ensured: AtomicBool::new(false),
            ensuring: tokio::sync::Mutex::new(Backoff {
                not_before: Instant::now(),
                failures: 0,
            }),
            seen: tokio::sync::Mutex::new(None),
        };
        if connected {
            match connection::ensure(&shared.js, cfg).await {
                Ok(ready) => {
                    shared.ensured.store(true, Ordering::Relaxed);
                    *shared.seen.lock().await =
                        Some((Instant::now(), Seen::Subjects(ready.subjects())));
                    tracing::info!(target = %cfg.display_target(), stream = %cfg.stream,
                        subjects = ?ready.subjects(), "connected to nats");
                }
                Err(StreamTrouble::Fatal(e)) => return Err(StartError::Broker(e)),
                Err(StreamTrouble::Transient(e)) => {
                    tracing::warn!(error = %e, "nats stream not confirmed at start; events wait in the spool")
                }
            }
        }
        Ok(NatsSink {
            shared: Arc::new(shared),
        })
    }
}

/// The NATS headers of a message: hookrelay's and `Nats-Msg-Id`, except on a
/// replay: that is a deliberate second delivery, which JetStream's duplicate
/// window would otherwise drop. A value NATS
/// cannot carry (not UTF-8, or holding CR, LF or another control byte, which the
/// edge already keeps out) refuses the event for good; never a panic.
pub fn headers(m: &Message) -> Result<HeaderMap, SinkError> {
    let mut h = HeaderMap::new();
    let mut put = |name: &str, value: &[u8]| -> Result<(), SinkError> {
        let refuse = |why: &str| SinkError::Permanent(format!("header {name}: {why}"));
        let text = std::str::from_utf8(value).map_err(|_| refuse("value is not UTF-8"))?;
        if text.bytes().any(|b| b.is_ascii_control()) {
            return Err(refuse(
                "value holds a control character (CR, LF, ...) that NATS headers cannot carry",
            ));
        }
        let value: HeaderValue = text
            .parse()
            .map_err(|_| refuse("value cannot be a NATS header value"))?;
        let name: HeaderName = name.parse().map_err(|_| refuse("not a NATS header name"))?;
        h.insert(name, value);
        Ok(())
    };
    for (name, value) in m.headers().iter() {
        put(name, value)?;
    }
    if !m.event.id().is_empty() && !m.replay {
        put(HEADER_MSG_ID, m.event.id().as_bytes())?;
    }
    Ok(h)
}

fn ready_err(e: SinkError) -> Confirmation {
    Box::pin(std::future::ready(Err(e)))
}

impl Shared {
    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// With `create_stream`, creates the stream if it is not known to exist, at
    /// most once per backoff step; a failure is logged and publishing goes on
    /// (the publish then fails retriably if the stream is really missing).
    async fn ensure_stream(&self) {
        if !self.cfg.create_stream || self.ensured.load(Ordering::Relaxed) {
            return;
        }
        let mut backoff = self.ensuring.lock().await;
        if self.ensured.load(Ordering::Relaxed) || Instant::now() < backoff.not_before {
            return;
        }
        match connection::ensure(&self.js, &self.cfg).await {
            Ok(ready) => {
                self.ensured.store(true, Ordering::Relaxed);
                *backoff = Backoff {
                    not_before: Instant::now(),
                    failures: 0,
                };
                *self.seen.lock().await = Some((Instant::now(), Seen::Subjects(ready.subjects())));
            }
            Err(StreamTrouble::Fatal(e) | StreamTrouble::Transient(e)) => {
                backoff.failures = backoff.failures.saturating_add(1);
                let delay = ENSURE_MIN
                    .saturating_mul(1 << backoff.failures.min(10))
                    .min(ENSURE_MAX);
                backoff.not_before = Instant::now() + delay;
                tracing::warn!(error = %e, retry_in = ?delay, "cannot make the nats stream ready");
            }
        }
    }

    /// What the stream looks like, from a lookup made after `since` (when the
    /// publish that failed went out): a batch failing together asks the server
    /// once, and nothing older than the failure answers for it.
    async fn seen(&self, since: Instant) -> Seen {
        let mut seen = self.seen.lock().await;
        if let Some((at, s)) = seen.as_ref()
            && *at >= since
        {
            return s.clone();
        }
        let now = match connection::lookup(&self.js, &self.cfg.stream).await {
            Lookup::Found(info) => Seen::Subjects(connection::stored_subjects(&info)),
            Lookup::Missing => Seen::Missing,
            Lookup::Unavailable(e) | Lookup::Unknown(e) => Seen::Unknown(e),
        };
        *seen = Some((Instant::now(), now.clone()));
        now
    }

    /// No stream answered for `subject`: permanent only when the stream is there
    /// and does not store that subject (see the module comment).
    async fn no_stream(&self, subject: &str, since: Instant) -> SinkError {
        let stream = &self.cfg.stream;
        match self.seen(since).await {
            Seen::Subjects(s) if !s.iter().any(|p| subject_matches(p, subject)) => {
                SinkError::Permanent(format!(
                    "no JetStream stream stores subject '{subject}': stream '{stream}' stores {s:?}"
                ))
            }
            Seen::Subjects(_) => SinkError::Retriable(format!(
                "stream '{stream}' stores subject '{subject}' but did not answer (restarting or electing a leader)"
            )),
            Seen::Missing => {
                self.ensured.store(false, Ordering::Relaxed);
                SinkError::Retriable(if self.cfg.create_stream {
                    format!("stream '{stream}' does not exist; it is created again")
                } else {
                    format!(
                        "stream '{stream}' does not exist and create_stream = false; events wait in the spool"
                    )
                })
            }
            Seen::Unknown(e) => SinkError::Retriable(format!(
                "no stream answered for subject '{subject}', and stream '{stream}' cannot be looked up: {e}"
            )),
        }
    }

    /// A publish the client would not send.
    fn refused_publish(&self, e: &PublishError) -> SinkError {
        match e.kind() {
            // Before the first connection the client knows only a default limit.
            PublishErrorKind::MaxPayloadExceeded if self.client.try_server_info().is_some() => {
                SinkError::Permanent(format!("larger than the server's max_payload: {e}"))
            }
            _ => SinkError::Retriable(format!("publish failed: {e}")),
        }
    }

    /// An ack that did not come back positive.
    async fn failed_ack(&self, subject: &str, sent: Instant, e: PublishError) -> SinkError {
        match e.kind() {
            PublishErrorKind::TimedOut => SinkError::Retriable(format!(
                "no ack within ack_timeout_ms ({}ms)",
                self.cfg.ack_timeout_ms
            )),
            PublishErrorKind::BrokenPipe => {
                SinkError::Retriable("the connection was lost before the ack".into())
            }
            PublishErrorKind::StreamNotFound => self.no_stream(subject, sent).await,
            _ => {
                let code = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<jetstream::Error>())
                    .map(|j| j.error_code());
                if code == Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) {
                    SinkError::Permanent(format!(
                        "stream '{}' refuses a message this large: {e}",
                        self.cfg.stream
                    ))
                } else {
                    SinkError::Retriable(format!("jetstream did not store the message: {e}"))
                }
            }
        }
    }

    /// Hands one message to the client; the confirmation resolves with its ack.
    async fn send(self: &Arc<Self>, m: &Message) -> Confirmation {
        let subject = m.event.topic();
        if let Err(why) = check_subject(subject) {
            return ready_err(SinkError::Permanent(why));
        }
        let headers = match headers(m) {
            Ok(h) => h,
            Err(refused) => return ready_err(refused),
        };
        let body = m.event.body().clone();
        let sent = Instant::now();
        let mut lost = self.losses.subscribe();
        let ack = match self
            .js
            .publish_with_headers(subject.to_string(), headers, body)
            .await
        {
            Ok(ack) => ack,
            Err(e) => return ready_err(self.refused_publish(&e)),
        };
        // Awaited in a task of its own from now on: the ack holds one of the
        // context's `max_pending_acks` permits until it resolves, and the forwarder
        // may not poll this confirmation before asking for the next publish.
        let limit = self.cfg.ack_timeout() + Duration::from_secs(1);
        let acked = tokio::spawn(async move {
            tokio::select! {
                biased;
                acked = tokio::time::timeout(limit, ack.into_future()) => Some(acked),
                _ = lost.changed() => None,
            }
        });
        let shared = self.clone();
        let subject = subject.to_string();
        Box::pin(async move {
            match acked.await {
                Ok(Some(Ok(Ok(_)))) => Ok(()),
                Ok(Some(Ok(Err(e)))) => Err(shared.failed_ack(&subject, sent, e).await),
                Ok(Some(Err(_))) => Err(SinkError::Retriable(format!(
                    "no ack within ack_timeout_ms ({}ms)",
                    shared.cfg.ack_timeout_ms
                ))),
                Ok(None) => Err(SinkError::Retriable(
                    "the connection was lost before the ack".into(),
                )),
                Err(e) => Err(SinkError::Retriable(format!("the ack task ended: {e}"))),
            }
        })
    }
}

impl Sink for NatsSink {
    fn publish(&self, batch: Vec<Message>) -> BoxFuture<'_, Vec<Confirmation>> {
        Box::pin(async move {
            let shared = &self.shared;
            if !shared.connected() {
                let down = SinkError::Retriable(
                    "not connected to nats; events wait in the spool until it is back".into(),
                );
                return batch.iter().map(|_| ready_err(down.clone())).collect();
            }
            shared.ensure_stream().await;
            let mut out = Vec::with_capacity(batch.len());
            for m in &batch {
                out.push(shared.send(m).await);
            }
            out
        })
    }

    fn ready(&self) -> bool {
        self.shared.connected()
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.shared.client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "nats flush failed"),
                Err(_) => tracing::warn!("nats flush did not complete within the drain deadline"),
            }
        })
    }
}
