//! The RabbitMQ sink's connection life cycle and publishing.
//!
//! One connection, several confirm-mode channels used round robin, many
//! publishes in flight on each (confirms are awaited by the forwarder, never one
//! by one here). A lost connection or channel is rebuilt on the next publish,
//! with capped backoff; everything it left unconfirmed fails as retriable and
//! the forwarder publishes it again (duplicates allowed, losses not).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, Event, ExchangeKind,
};
use tokio::sync::{Mutex, watch};

use super::config::RabbitmqSinkConfig;
use crate::metrics;
use crate::sink::{BoxFuture, Confirmation, Message, Sink, SinkError, cloudevents};

/// Reconnect attempts back off from this...
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// ...to this.
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How often a publish held back by `connection.blocked` checks the connection is alive.
const BLOCKED_RECHECK: Duration = Duration::from_secs(1);

/// An open connection with its confirm-mode channels.
struct Live {
    conn: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// Set when a publish or confirm failed in a way that leaves the connection suspect.
    broken: AtomicBool,
}

impl Live {
    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
            && self.conn.status().connected()
            && self.channels.iter().all(|c| c.status().connected())
    }
}

struct Reconnect {
    not_before: Instant,
    failures: u32,
}

pub struct RabbitmqSink {
    cfg: RabbitmqSinkConfig,
    uri: AMQPUri,
    live: Mutex<Option<Arc<Live>>>,
    reconnect: std::sync::Mutex<Reconnect>,
    /// `connection.blocked` from the broker (memory or disk alarm): publishing pauses.
    blocked: watch::Sender<bool>,
    /// Mirrors whether `live` is usable, for readiness without taking the lock.
    connected: Arc<AtomicBool>,
}

/// An AMQP short string. Past 255 bytes it is refused, never cut and never a panic
/// (lapin's `From` panics): the edge bounds every event field below that, and this
/// keeps a bug there from stopping delivery for good.
fn short(what: &str, s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s).map_err(|e| format!("{what} does not fit an AMQP short string: {e}"))
}

/// A fixed name, known to fit.
fn name(s: &'static str) -> ShortString {
    ShortString::try_new(s).unwrap_or_default()
}

fn long(b: &[u8]) -> AMQPValue {
    AMQPValue::LongString(LongString::from(b.to_vec()))
}

/// True when the broker refused our credentials: a configuration error, not an outage.
fn is_auth_error(e: &lapin::Error) -> bool {
    let text = format!("{e:?} {e}").to_ascii_lowercase();
    matches!(e.kind(), ErrorKind::AuthProviderError(_))
        || text.contains("access_refused")
        || text.contains("accessrefused")
        || text.contains("access-refused")
        || text.contains("authentication")
}

impl RabbitmqSink {
    /// Connects once at start: refused credentials or a missing exchange (with
    /// `declare = false`) stop startup; an unreachable broker only warns, since the
    /// spool absorbs the outage and the sink keeps reconnecting.
    pub async fn new(cfg: &RabbitmqSinkConfig) -> anyhow::Result<RabbitmqSink> {
        cfg.validate()
            .map_err(|(k, why)| anyhow::anyhow!("{k}: {why}"))?;
        let uri = cfg
            .resolved_uri()
            .map_err(|(k, why)| anyhow::anyhow!("{k}: {why}"))?;
        let sink = RabbitmqSink {
            cfg: cfg.clone(),
            uri,
            live: Mutex::new(None),
            reconnect: std::sync::Mutex::new(Reconnect {
                not_before: Instant::now(),
                failures: 0,
            }),
            blocked: watch::Sender::new(false),
            connected: Arc::new(AtomicBool::new(false)),
        };
        match sink.connect().await {
            Ok(live) => {
                *sink.live.lock().await = Some(live);
            }
            Err(Fatal(e)) => anyhow::bail!("sinks.rabbitmq: {e}"),
            Err(Transient(e)) => {
                tracing::warn!(target = %cfg.display_target(), error = %e,
                    "rabbitmq unreachable at start; events wait in the spool until it is back");
            }
        }
        Ok(sink)
    }

    /// [`Self::open`] within `connect_timeout_ms`: a broker mid-restart can take the
    /// socket and never answer, and publishing waits on the connect.
    async fn connect(&self) -> Result<Arc<Live>, ConnectError> {
        let limit = Duration::from_millis(self.cfg.connect_timeout_ms);
        tokio::time::timeout(limit, self.open())
            .await
            .unwrap_or_else(|_| {
                Err(Transient(format!(
                    "{} did not complete the connection within connect_timeout_ms ({limit:?})",
                    self.cfg.display_target()
                )))
            })
    }

    async fn open(&self) -> Result<Arc<Live>, ConnectError> {
        let target = self.cfg.display_target();
        let props = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("hookrelay@{}", crate::sink::hostname()),
        ));
        let conn = Connection::connect_uri(self.uri.clone(), props)
            .await
            .map_err(|e| {
                if is_auth_error(&e) {
                    Fatal(format!("{target} refused the credentials: {e}"))
                } else {
                    Transient(format!("cannot connect to {target}: {e}"))
                }
            })?;
        self.declare_topology(&conn).await?;
        let mut channels = Vec::with_capacity(self.cfg.channels);
        for _ in 0..self.cfg.channels {
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| Transient(format!("cannot open a channel: {e}")))?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| Transient(format!("cannot enable publisher confirms: {e}")))?;
            channels.push(ch);
        }
        self.blocked.send_replace(false);
        metrics::rabbitmq_blocked(false);
        self.watch_events(&conn);
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(target = %target, channels = channels.len(), exchange = %self.cfg.exchange, "connected to rabbitmq");
        Ok(Arc::new(Live {
            conn,
            channels,
            next: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        }))
    }

    /// The exchange (and the alternate exchange with its queue), or a passive check.
    async fn declare_topology(&self, conn: &Connection) -> Result<(), ConnectError> {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| Transient(format!("cannot open a channel: {e}")))?;
        let ex = &self.cfg.exchange;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        if !self.cfg.declare {
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            ch.exchange_declare(
                short("the exchange", ex).map_err(Fatal)?,
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                Fatal(format!(
                    "exchange '{ex}' is not there (declare = false): {e}"
                ))
            })?;
        } else {
            let mut args = FieldTable::default();
            if self.cfg.unroutable_queue {
                let ae = self.cfg.unroutable_name();
                let ae_name = short("the unroutable exchange", &ae).map_err(Fatal)?;
                let declared = async {
                    ch.exchange_declare(
                        ae_name.clone(),
                        ExchangeKind::Fanout,
                        durable,
                        FieldTable::default(),
                    )
                    .await?;
                    ch.queue_declare(
                        ae_name.clone(),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                    ch.queue_bind(
                        ae_name.clone(),
                        ae_name.clone(),
                        name(""),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                };
                declared.await.map_err(|e| {
                    Fatal(format!(
                        "cannot declare the unroutable exchange and queue '{ae}': {e}"
                    ))
                })?;
                args.insert(
                    name("alternate-exchange"),
                    AMQPValue::LongString(LongString::from(ae.into_bytes())),
                );
            }
            ch.exchange_declare(
                short("the exchange", ex).map_err(Fatal)?,
                ExchangeKind::Topic,
                durable,
                args,
            )
                .await
                .map_err(|e| {
                    Fatal(format!(
                        "cannot declare exchange '{ex}' (an existing exchange of that name with other settings?): {e}"
                    ))
                })?;
        }
        let _ = ch.close(200, name("topology declared")).await;
        Ok(())
    }

    /// Follows `connection.blocked` / `unblocked` and connection errors.
    fn watch_events(&self, conn: &Connection) {
        let mut events = conn.events_listener();
        let blocked = self.blocked.clone();
        let connected = self.connected.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::ConnectionBlocked(reason) => {
                        tracing::warn!(%reason, "rabbitmq blocked publishing (resource alarm); events wait in the spool");
                        blocked.send_replace(true);
                        metrics::rabbitmq_blocked(true);
                    }
                    Event::ConnectionUnblocked => {
                        tracing::info!("rabbitmq unblocked publishing");
                        blocked.send_replace(false);
                        metrics::rabbitmq_blocked(false);
                    }
                    Event::Error(e) => {
                        tracing::warn!(error = %e, "rabbitmq connection error; reconnecting on the next publish");
                        connected.store(false, Ordering::Relaxed);
                        // Whatever blocked this connection ended with it; a publish
                        // waiting on it goes on to reconnect, and the broker blocks the
                        // next connection afresh if its alarm is still on.
                        blocked.send_replace(false);
                        metrics::rabbitmq_blocked(false);
                        break;
                    }
                    _ => {}
                }
            }
        });
    }

    /// The usable connection, reconnecting (paced by backoff) when there is none.
    async fn live(&self) -> Result<Arc<Live>, SinkError> {
        let mut guard = self.live.lock().await;
        if let Some(l) = guard.as_ref() {
            if l.usable() {
                return Ok(l.clone());
            }
            self.connected.store(false, Ordering::Relaxed);
            // In the background, bounded: a broker that stopped answering would never
            // send close-ok, and nothing waits for it.
            let old = l.clone();
            let limit = Duration::from_millis(self.cfg.connect_timeout_ms);
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(limit, old.conn.close(200, name("reconnecting"))).await;
            });
            *guard = None;
        }
        {
            let r = self.reconnect.lock().unwrap_or_else(|p| p.into_inner());
            if Instant::now() < r.not_before {
                return Err(SinkError::Retriable(
                    "rabbitmq is unreachable; waiting to reconnect".into(),
                ));
            }
        }
        match self.connect().await {
            Ok(l) => {
                *self.reconnect.lock().unwrap_or_else(|p| p.into_inner()) = Reconnect {
                    not_before: Instant::now(),
                    failures: 0,
                };
                metrics::rabbitmq_connect();
                *guard = Some(l.clone());
                Ok(l)
            }
            Err(Fatal(e) | Transient(e)) => {
                let mut r = self.reconnect.lock().unwrap_or_else(|p| p.into_inner());
                r.failures += 1;
                let delay =
                    (RECONNECT_MIN * 2u32.saturating_pow(r.failures.min(16))).min(RECONNECT_MAX);
                r.not_before = Instant::now() + delay;
                Err(SinkError::Retriable(e))
            }
        }
    }

    /// Waits while the broker blocks publishing on the connection, not past its end.
    async fn wait_while_blocked(&self) {
        let mut rx = self.blocked.subscribe();
        while *rx.borrow_and_update() && self.connected.load(Ordering::Relaxed) {
            // Also looks at `connected` now and then, not only on a change.
            let _ = tokio::time::timeout(BLOCKED_RECHECK, rx.changed()).await;
        }
    }
}

/// The AMQP properties of a message: persistent, its content type, its event id as
/// `message-id`, hookrelay's headers as application headers. An event whose fields
/// do not fit is refused for good (dead-lettered with the reason), never a panic.
pub fn properties(cfg: &RabbitmqSinkConfig, m: &Message) -> Result<BasicProperties, SinkError> {
    let e = &m.event;
    let refuse = |why: String| SinkError::Permanent(why);
    let mut headers = FieldTable::default();
    for (k, v) in m.headers() {
        if k != crate::sink::HEADER_CONTENT_TYPE {
            headers.insert(name(k), long(&v));
        }
    }
    if cfg.cloudevents {
        for (k, v) in cloudevents::attributes(e) {
            let key = short(
                "a CloudEvents property name",
                &format!("{}{k}", cfg.cloudevents_prefix),
            )
            .map_err(refuse)?;
            headers.insert(key, long(v.as_bytes()));
        }
    }
    Ok(BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(short("the content type", &e.content_type).map_err(refuse)?)
        .with_message_id(short("the event id", &e.id).map_err(refuse)?)
        .with_timestamp(e.received_at_ns / 1_000_000_000)
        .with_app_id(name("hookrelay"))
        .with_headers(headers))
}

enum ConnectError {
    /// Will not get better by retrying: bad credentials, wrong topology.
    Fatal(String),
    /// Broker down or restarting: retry with backoff.
    Transient(String),
}
use ConnectError::{Fatal, Transient};

impl Sink for RabbitmqSink {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn publish(&self, batch: Vec<Message>) -> BoxFuture<'_, Vec<Confirmation>> {
        Box::pin(async move {
            self.wait_while_blocked().await;
            let live = match self.live().await {
                Ok(l) => l,
                Err(e) => {
                    return batch
                        .iter()
                        .map(|_| Box::pin(std::future::ready(Err(e.clone()))) as Confirmation)
                        .collect();
                }
            };
            let timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
            let opts = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            let mut out = Vec::with_capacity(batch.len());
            let failed = |why: String| -> Confirmation {
                Box::pin(std::future::ready(Err(SinkError::Retriable(why))))
            };
            let exchange = match short("the exchange", &self.cfg.exchange) {
                Ok(x) => x,
                Err(why) => {
                    let refused = SinkError::Permanent(why);
                    return batch
                        .iter()
                        .map(|_| Box::pin(std::future::ready(Err(refused.clone()))) as Confirmation)
                        .collect();
                }
            };
            for m in &batch {
                if live.broken.load(Ordering::Relaxed) {
                    // The rest of the batch goes out again on the next connection.
                    out.push(failed("the connection failed earlier in the batch".into()));
                    continue;
                }
                let wire = short("the topic (routing key)", &m.event.topic)
                    .map_err(SinkError::Permanent)
                    .and_then(|key| Ok((key, properties(&self.cfg, m)?)));
                let (routing_key, props) = match wire {
                    Ok(w) => w,
                    Err(refused) => {
                        out.push(Box::pin(std::future::ready(Err(refused))) as Confirmation);
                        continue;
                    }
                };
                let i = live.next.fetch_add(1, Ordering::Relaxed) % live.channels.len();
                let published = tokio::time::timeout(
                    timeout,
                    live.channels[i].basic_publish(
                        exchange.clone(),
                        routing_key,
                        opts,
                        &m.event.body,
                        props,
                    ),
                )
                .await;
                let confirm = match published {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        live.broken.store(true, Ordering::Relaxed);
                        out.push(failed(format!("publish failed: {e}")));
                        continue;
                    }
                    Err(_) => {
                        live.broken.store(true, Ordering::Relaxed);
                        out.push(failed(
                            "the connection took no publish within confirm_timeout_ms".into(),
                        ));
                        continue;
                    }
                };
                let live = live.clone();
                out.push(Box::pin(async move {
                    match tokio::time::timeout(timeout, confirm).await {
                        Ok(Ok(lapin::Confirmation::Ack(None))) => Ok(()),
                        Ok(Ok(lapin::Confirmation::Ack(Some(returned)))) => {
                            metrics::rabbitmq_returned();
                            Err(SinkError::Permanent(format!(
                                "unroutable (basic.return {} {})",
                                returned.reply_code, returned.reply_text
                            )))
                        }
                        Ok(Ok(lapin::Confirmation::Nack(_))) => {
                            Err(SinkError::Retriable("broker nacked the message".into()))
                        }
                        Ok(Ok(lapin::Confirmation::NotRequested)) => {
                            live.broken.store(true, Ordering::Relaxed);
                            Err(SinkError::Retriable("channel lost confirm mode".into()))
                        }
                        Ok(Err(e)) => {
                            live.broken.store(true, Ordering::Relaxed);
                            Err(SinkError::Retriable(format!("confirm failed: {e}")))
                        }
                        Err(_) => {
                            live.broken.store(true, Ordering::Relaxed);
                            Err(SinkError::Retriable(
                                "no confirm within confirm_timeout_ms".into(),
                            ))
                        }
                    }
                }) as Confirmation);
            }
            out
        })
    }

    fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed) && !*self.blocked.borrow()
    }
}

/// `hookrelay check --connect`: connects, then checks the exchange.
/// Bounded by `connect_timeout_ms`: a broker that never answers fails the check.
pub async fn check_connection(cfg: &RabbitmqSinkConfig) -> Result<String, String> {
    cfg.validate().map_err(|(k, why)| format!("{k}: {why}"))?;
    let limit = Duration::from_millis(cfg.connect_timeout_ms);
    tokio::time::timeout(limit, check(cfg))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "sinks.rabbitmq: {} did not answer within connect_timeout_ms ({limit:?})",
                cfg.display_target()
            ))
        })
}

async fn check(cfg: &RabbitmqSinkConfig) -> Result<String, String> {
    let uri = cfg
        .resolved_uri()
        .map_err(|(k, why)| format!("{k}: {why}"))?;
    let target = cfg.display_target();
    let conn = Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .map_err(|e| {
            if is_auth_error(&e) {
                format!("sinks.rabbitmq: {target} refused the credentials: {e}")
            } else {
                format!("sinks.rabbitmq: cannot connect to {target}: {e}")
            }
        })?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| format!("sinks.rabbitmq: {e}"))?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exists = ch
        .exchange_declare(
            short("the exchange", &cfg.exchange)?,
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, name("check done")).await;
    match (exists, cfg.declare) {
        (Ok(()), _) => Ok(format!(
            "rabbitmq: connected to {target}; exchange '{}' exists",
            cfg.exchange
        )),
        (Err(_), true) => Ok(format!(
            "rabbitmq: connected to {target}; exchange '{}' will be declared on start",
            cfg.exchange
        )),
        (Err(e), false) => Err(format!(
            "sinks.rabbitmq.exchange: '{}' does not exist on {target} and declare = false: {e}",
            cfg.exchange
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    /// A broker that takes the socket and never answers (one mid-restart can): the
    /// start and every publish give up within `connect_timeout_ms` instead of
    /// holding forwarding up for good.
    #[tokio::test]
    async fn a_broker_that_never_answers_fails_the_connect_in_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let cfg: RabbitmqSinkConfig = toml::from_str(&format!(
            "uri = \"amqp://guest:guest@{addr}/%2f\"\nconnect_timeout_ms = 300\n"
        ))
        .unwrap();
        let sink = tokio::time::timeout(Duration::from_secs(5), RabbitmqSink::new(&cfg))
            .await
            .expect("the start waited on a silent broker")
            .unwrap();
        assert!(!sink.ready());
        let message = Message {
            seq: 0,
            event: Arc::new(Event {
                source: Arc::from("q"),
                event_type: "message.read".into(),
                id: "id0".into(),
                topic: "q.message.read".into(),
                key: "k".into(),
                content_type: "application/json".into(),
                received_at_ns: 0,
                body: bytes::Bytes::from_static(b"{}"),
            }),
        };
        let confirmations = tokio::time::timeout(
            Duration::from_secs(5),
            sink.publish(vec![message.clone(), message]),
        )
        .await
        .expect("a publish waited on a silent broker");
        assert_eq!(confirmations.len(), 2);
        for c in confirmations {
            assert!(matches!(c.await, Err(SinkError::Retriable(_))));
        }
        // `hookrelay check --connect` too.
        let checked = tokio::time::timeout(Duration::from_secs(5), check_connection(&cfg))
            .await
            .expect("the check waited on a silent broker");
        assert!(
            checked.as_ref().unwrap_err().contains("connect_timeout_ms"),
            "{checked:?}"
        );
        silent.abort();
    }
}
