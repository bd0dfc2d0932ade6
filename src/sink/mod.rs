//! Destinations behind one small trait.
//!
//! A sink takes a batch and hands back one [`Confirmation`] per message, which
//! resolves when the destination has the message (a Kafka delivery report with
//! acks=all, a RabbitMQ publisher confirm, a line written to a file). A broker's
//! confirmation already survives a crash; the file sink's survives one only after
//! [`Sink::sync`], which the forwarder awaits before the spool may forget anything.
//! The forwarder keeps many batches in flight and never awaits them one by one.
//! Nothing below this module knows about HTTP.

pub mod cloudevents;
pub mod file;
mod jsonstr;
pub mod kafka;
pub mod nats;
pub mod rabbitmq;

use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use crate::event::Event;
use crate::metrics::SinkMetrics;

pub use file::FileSink;
pub use kafka::KafkaSink;
pub use nats::NatsSink;
pub use rabbitmq::RabbitmqSink;

/// The kinds of sink there are; a sink's kind names it in metrics and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SinkKind {
    File,
    Kafka,
    Rabbitmq,
    Nats,
}

impl SinkKind {
    pub const ALL: [SinkKind; 4] = [
        SinkKind::File,
        SinkKind::Kafka,
        SinkKind::Rabbitmq,
        SinkKind::Nats,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Kafka => "kafka",
            SinkKind::Rabbitmq => "rabbitmq",
            SinkKind::Nats => "nats",
        }
    }

    pub fn from_name(name: &str) -> Option<SinkKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Confirms from a broker, and so can back `ack = "broker"`.
    pub fn is_broker(self) -> bool {
        matches!(self, SinkKind::Kafka | SinkKind::Rabbitmq | SinkKind::Nats)
    }
}

/// A sink's settings that cannot work, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct ConfigProblem {
    pub key: String,
    pub why: String,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, why: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            key: key.into(),
            why: why.into(),
        }
    }
}

/// Why a sink could not start, or `check --connect` could not reach its broker.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigProblem),
    /// The broker refused or could not be reached (the message says which).
    #[error("{0}")]
    Broker(String),
}

/// Topics a sink creates at most, by default (file sink files, Kafka topics):
/// senders choose event types, so what they can create downstream is capped.
pub const DEFAULT_MAX_TOPICS: usize = 1000;

/// A boxed, sendable future: what trait objects can return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves when the destination confirms one message.
pub type Confirmation = BoxFuture<'static, Result<(), SinkError>>;

/// Header names every sink attaches, so consumers can route and deduplicate
/// without parsing the body.
pub const HEADER_SOURCE: &str = "hookrelay-source";
pub const HEADER_EVENT: &str = "hookrelay-event";
pub const HEADER_ID: &str = "hookrelay-id";
pub const HEADER_RECEIVED_AT: &str = "hookrelay-received-at";
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// On a dead letter in a broker's own dead-letter destination (Kafka's DLQ topic,
/// RabbitMQ's dead-letter exchange): why it was refused, as the dead-letter file's
/// `reason` says, so it can be triaged without the relay's logs.
pub const HEADER_DEAD_LETTER_REASON: &str = "hookrelay-dead-letter-reason";
/// On a dead letter: the topic it was meant for, which the DLQ topic or the
/// dead-letter exchange's queue no longer tells, so that a replay can restore it.
pub const HEADER_ORIGINAL_TOPIC: &str = "hookrelay-topic";
/// The W3C trace context (see `event::trace`): the provider's trace continued, or
/// a new one, so a consumer's span joins the request that brought the event.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Present (`true`) on events sent again from the archive, so that consumers can
/// tell a replay from a provider's retry; absent otherwise.
pub const HEADER_REPLAY: &str = "hookrelay-replay";

/// One event on its way out, with the spool position it came from.
#[derive(Debug, Clone)]
pub struct Message {
    pub seq: u64,
    /// Shared: the forwarder keeps each message in flight until it is confirmed and
    /// hands the sink a clone; a clone of the event itself was five string copies.
    pub event: Arc<Event>,
    /// Sent again from the archive (see `replay`): carries [`HEADER_REPLAY`].
    pub replay: bool,
}

/// A message's headers, in a fixed order: the five standard ones, then
/// [`HEADER_TRACEPARENT`] when the event has one, then [`HEADER_REPLAY`] on a
/// replay. A value, not a `Vec`: building it allocates nothing beyond the
/// received-at digits.
pub struct Headers<'a> {
    standard: [(&'static str, Cow<'a, [u8]>); 5],
    traceparent: &'a str,
    replay: bool,
}

impl Headers<'_> {
    /// Name and value of each, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        let trace = (!self.traceparent.is_empty())
            .then_some((HEADER_TRACEPARENT, self.traceparent.as_bytes()));
        let replay = self.replay.then_some((HEADER_REPLAY, &b"true"[..]));
        self.standard
            .iter()
            .map(|(k, v)| (*k, &v[..]))
            .chain(trace)
            .chain(replay)
    }
}

impl Message {
    /// The headers every sink attaches (see [`Headers`]).
    /// Borrowed from the event: every sink copies them into its own wire format anyway.
    pub fn headers(&self) -> Headers<'_> {
        let e = &self.event;
        let standard = [
            (HEADER_SOURCE, Cow::Borrowed(e.source().as_bytes())),
            (HEADER_EVENT, Cow::Borrowed(e.event_type().as_bytes())),
            (HEADER_ID, Cow::Borrowed(e.id().as_bytes())),
            (
                HEADER_RECEIVED_AT,
                Cow::Owned(e.received_at_ns().to_string().into_bytes()),
            ),
            (
                HEADER_CONTENT_TYPE,
                Cow::Borrowed(e.content_type().as_bytes()),
            ),
        ];
        Headers {
            standard,
            traceparent: e.traceparent(),
            replay: self.replay,
        }
    }
}

/// How a message failed; decides between retrying and dead-lettering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: the destination is down, slow or moving.
    #[error("retriable: {0}")]
    Retriable(String),
    /// Will never succeed as is (too large, forbidden, invalid topic): dead-letter it.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A destination for events. It has no name of its own: the configuration names
/// it (see [`Route`]), and two sinks of one kind differ only in their settings.
pub trait Sink: Send + Sync + 'static {
    /// Hands `batch` to the destination. Resolves once the messages are enqueued
    /// (which may wait for room), with one confirmation per message, in order.
    fn publish(&self, batch: Vec<Message>) -> BoxFuture<'_, Vec<Confirmation>>;

    /// Sends a permanently refused event to the sink's own dead-letter destination
    /// (a DLQ topic, a dead-letter exchange), if it has one; `None` means the
    /// forwarder's dead-letter file.
    fn dead_letter(
        &self,
        _message: Message,
        _reason: String,
    ) -> Option<BoxFuture<'_, Result<(), SinkError>>> {
        None
    }

    /// Whether the destination is reachable now; gates readiness for `ack = "broker"`.
    fn ready(&self) -> bool {
        true
    }

    /// Pushes out whatever is buffered, for at most `timeout` (shutdown).
    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Makes every message confirmed so far survive a power loss. Brokers' confirmations
    /// already do (the default does nothing); the file sink confirms once a line is
    /// written and fsyncs here, once per spool checkpoint instead of once per batch.
    /// The spool's persisted cursor only moves past events this has covered.
    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// [`Sink::publish`] as the forwarder calls it: exactly one confirmation per message,
/// whatever the sink does. A panic while handing the batch over is retried one
/// message at a time, so that only a message the sink panics on alone is refused
/// (permanently: it is dead-lettered with the panic as its reason) and delivery goes
/// on; a sink returning too few confirmations fails the rest as retriable. Await
/// each confirmation through [`confirmed`], which catches a panic there too.
pub async fn publish_caught(route: &Route, batch: Vec<Message>) -> Vec<Confirmation> {
    let (name, sink) = (route.name(), &*route.sink);
    let n = batch.len();
    let copy = batch.clone();
    let mut out = match AssertUnwindSafe(sink.publish(batch)).catch_unwind().await {
        Ok(confirmations) => confirmations,
        Err(panic) => {
            tracing::error!(sink = name, panic = %crate::supervise::panic_text(&*panic),
                "the sink panicked handing over a batch; publishing it one event at a time");
            let mut out = Vec::with_capacity(n);
            for m in copy {
                let one = AssertUnwindSafe(sink.publish(vec![m])).catch_unwind().await;
                out.push(match one.map(|mut c| c.pop()) {
                    Ok(Some(c)) => c,
                    Ok(None) => missing(),
                    Err(panic) => {
                        crate::metrics::sink_panic(name);
                        let why = format!(
                            "the {name} sink panicked on this event: {}",
                            crate::supervise::panic_text(&*panic)
                        );
                        Box::pin(std::future::ready(Err(SinkError::Permanent(why))))
                    }
                });
            }
            out
        }
    };
    out.truncate(n);
    out.resize_with(n, missing);
    out
}

fn missing() -> Confirmation {
    Box::pin(std::future::ready(Err(SinkError::Retriable(
        "the sink returned no confirmation".into(),
    ))))
}

/// Awaits a confirmation; a panic in it refuses that one message for good.
pub async fn confirmed(c: Confirmation) -> Result<(), SinkError> {
    AssertUnwindSafe(c)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(SinkError::Permanent(format!(
                "the sink panicked confirming this event: {}",
                crate::supervise::panic_text(&*panic)
            )))
        })
}

/// This host's name, for client ids and connection names operators see.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// A sink under its configured name, with its metric handles: what the forwarder
/// and broker-mode requests publish through.
#[derive(Clone)]
pub struct Route {
    name: Arc<str>,
    pub kind: SinkKind,
    pub sink: Arc<dyn Sink>,
    pub metrics: SinkMetrics,
}

impl Route {
    pub fn new(name: &str, kind: SinkKind, sink: Arc<dyn Sink>) -> Self {
        Self {
            name: name.into(),
            kind,
            sink,
            metrics: SinkMetrics::new(name),
        }
    }

    /// The `sink` label of its metrics and the name sources route to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes one event and waits for its confirmation (`ack = "broker"`).
    pub async fn publish_one(&self, message: Message) -> Result<(), SinkError> {
        let mut confirmations = publish_caught(self, vec![message]).await;
        match confirmations.pop() {
            Some(c) => confirmed(c).await,
            None => Err(SinkError::Retriable(
                "the sink returned no confirmation".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replayed message carries `hookrelay-replay: true`, and a traced one its
    /// `traceparent`, after the standard five headers, in every sink's wire format;
    /// others carry no such header.
    #[test]
    fn the_replay_and_trace_headers_reach_every_wire_format() {
        use rdkafka::message::Headers as _;
        let amqp: rabbitmq::RabbitmqSinkConfig =
            toml::from_str("uri = \"amqp://localhost\"\n").unwrap();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (replay, traced) in [(false, false), (true, false), (false, true), (true, true)] {
            let event = crate::event::EventBuilder::new(1).received_at_ns(7);
            let event = Arc::new(if traced { event.traceparent(tp) } else { event }.build());
            let m = Message {
                seq: 1,
                event: event.clone(),
                replay,
            };
            let names: Vec<&str> = m.headers().iter().map(|(k, _)| k).collect();
            let mut want = vec![
                HEADER_SOURCE,
                HEADER_EVENT,
                HEADER_ID,
                HEADER_RECEIVED_AT,
                HEADER_CONTENT_TYPE,
            ];
            want.extend(traced.then_some(HEADER_TRACEPARENT));
            want.extend(replay.then_some(HEADER_REPLAY));
            assert_eq!(names, want);
            let flag = replay.then_some("true");
            let trace = traced.then_some(tp);

            let k = kafka::headers(false, &m, &[]);
            let kafka: Vec<&str> = k.iter().map(|h| h.key).collect();
            assert_eq!(kafka, want);
            let value = k.iter().find(|h| h.key == HEADER_REPLAY);
            assert_eq!(value.and_then(|h| h.value), flag.map(str::as_bytes));
            let value = k.iter().find(|h| h.key == HEADER_TRACEPARENT);
            assert_eq!(value.and_then(|h| h.value), trace.map(str::as_bytes));

            let n = nats::headers(&m).unwrap();
            // A replay must not be dropped by JetStream's duplicate window.
            assert_eq!(n.get(nats::HEADER_MSG_ID).is_some(), flag.is_none());
            assert_eq!(n.get(HEADER_REPLAY).map(|v| v.as_str()), flag);
            assert_eq!(n.get(HEADER_TRACEPARENT).map(|v| v.as_str()), trace);

            let p = rabbitmq::properties(&amqp, &m, &[]).unwrap();
            let value = match p.headers().as_ref().unwrap().inner().get(HEADER_REPLAY) {
                Some(lapin::types::AMQPValue::LongString(s)) => Some(s.as_bytes().to_vec()),
                Some(other) => panic!("{other:?}"),
                None => None,
            };
            assert_eq!(value.as_deref(), flag.map(str::as_bytes));
            let headers = p.headers().as_ref().unwrap().inner();
            let value = match headers.get(HEADER_TRACEPARENT) {
                Some(lapin::types::AMQPValue::LongString(s)) => Some(s.as_bytes().to_vec()),
                Some(other) => panic!("{other:?}"),
                None => None,
            };
            assert_eq!(value.as_deref(), trace.map(str::as_bytes));

            let line: serde_json::Value =
                serde_json::from_slice(&file::json_line(&m, None)).unwrap();
            let keys: Vec<&str> = line["headers"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, want);
            assert_eq!(
                line["headers"].get(HEADER_REPLAY).and_then(|v| v.as_str()),
                flag
            );
            assert_eq!(
                line["headers"]
                    .get(HEADER_TRACEPARENT)
                    .and_then(|v| v.as_str()),
                trace
            );
        }
    }
}
