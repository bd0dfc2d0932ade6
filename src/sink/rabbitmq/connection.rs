//! The RabbitMQ sink's connection life cycle: one connection with several
//! confirm-mode channels, connected within `connect_timeout_ms`, the topology
//! declared (or checked passively), `connection.blocked` followed, and the whole
//! rebuilt with capped backoff when it fails. `check --connect` shares the passive
//! declare.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, Event, ExchangeKind};
use tokio::sync::{Mutex, watch};

use super::config::RabbitmqSinkConfig;
use crate::metrics;
use crate::sink::{SinkError, StartError};

/// Reconnect attempts back off from this...
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// ...to this.
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How often a publish held back by `connection.blocked` checks the connection is alive.
const BLOCKED_RECHECK: Duration = Duration::from_secs(1);

/// An open connection with its confirm-mode channels.
pub(super) struct Channels {
    conn: Connection,
    pub(super) channels: Vec<Channel>,
    pub(super) next: AtomicUsize,
    /// Set when a publish or confirm failed in a way that leaves the connection suspect.
    pub(super) broken: AtomicBool,
}

impl Channels {
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

/// The connection the sink publishes on, rebuilt when it fails.
pub(super) struct Broker {
    cfg: RabbitmqSinkConfig,
    uri: AMQPUri,
    live: Mutex<Option<Arc<Channels>>>,
    reconnect: std::sync::Mutex<Reconnect>,
    /// `connection.blocked` from the broker (memory or disk alarm): publishing pauses.
    blocked: watch::Sender<bool>,
    /// Mirrors whether `live` is usable, for readiness without taking the lock.
    connected: Arc<AtomicBool>,
    pub(super) metrics: metrics::RabbitmqMetrics,
}

/// An AMQP short string. Past 255 bytes it is refused, never cut and never a panic
/// (lapin's `From` panics): the edge bounds every event field below that, and this
/// keeps a bug there from stopping delivery for good.
pub(super) fn short(what: &str, s: &str) -> Result<ShortString, String> {
    ShortString::try_new(s).map_err(|e| format!("{what} does not fit an AMQP short string: {e}"))
}

/// A fixed name, known to fit.
pub(super) fn name(s: &'static str) -> ShortString {
    ShortString::try_new(s).unwrap_or_default()
}

pub(super) fn long(b: &[u8]) -> AMQPValue {
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

impl Broker {
    /// Connects once at start: refused credentials or a missing exchange (with
    /// `declare = false`) stop startup; an unreachable broker only warns, since the
    /// spool absorbs the outage and the sink keeps reconnecting.
    pub(super) async fn start(name: &str, cfg: &RabbitmqSinkConfig) -> Result<Broker, StartError> {
        cfg.validate()?;
        let uri = cfg.resolved_uri()?;
        let sink = Broker {
            cfg: cfg.clone(),
            uri,
            live: Mutex::new(None),
            reconnect: std::sync::Mutex::new(Reconnect {
                not_before: Instant::now(),
                failures: 0,
            }),
            blocked: watch::Sender::new(false),
            connected: Arc::new(AtomicBool::new(false)),
            metrics: metrics::RabbitmqMetrics::new(name),
        };
        match sink.connect().await {
            Ok(live) => {
                *sink.live.lock().await = Some(live);
            }
            Err(Fatal(e)) => return Err(StartError::Broker(format!("sinks.rabbitmq: {e}"))),
            Err(Transient(e)) => {
                tracing::warn!(target = %cfg.display_target(), error = %e,
                    "rabbitmq unreachable at start; events wait in the spool until it is back");
            }
        }
        Ok(sink)
    }

    /// [`Self::open`] within `connect_timeout_ms`: a broker mid-restart can take the
    /// socket and never answer, and publishing waits on the connect.
    async fn connect(&self) -> Result<Arc<Channels>, ConnectError> {
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

    async fn open(&self) -> Result<Arc<Channels>, ConnectError> {
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
        self.metrics.blocked(false);
        self.watch_events(&conn);
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(target = %target, channels = channels.len(), exchange = %self.cfg.exchange, "connected to rabbitmq");
        Ok(Arc::new(Channels {
            conn,
            channels,
            next: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        }))
    }

    /// The exchange (with the alternate exchange and its queue) and the dead-letter
    /// exchange with its queue, or a passive check of both.
    async fn declare_topology(&self, conn: &Connection) -> Result<(), ConnectError> {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| Transient(format!("cannot open a channel: {e}")))?;
        let ex = &self.cfg.exchange;
        let dlx = self.cfg.dead_letter_exchange.as_deref();
        if !self.cfg.declare {
            passive_declare(&ch, ex, ExchangeKind::Topic)
                .await
                .map_err(|e| {
                    Fatal(format!(
                        "exchange '{ex}' is not there (declare = false): {e}"
                    ))
                })?;
            if let Some(dlx) = dlx {
                passive_declare(&ch, dlx, ExchangeKind::Fanout)
                    .await
                    .map_err(|e| {
                        Fatal(format!(
                            "dead-letter exchange '{dlx}' is not there (declare = false): {e}"
                        ))
                    })?;
            }
        } else {
            let mut args = FieldTable::default();
            if self.cfg.unroutable_queue {
                let ae = self.cfg.unroutable_name();
                declare_kept(&ch, "the unroutable exchange", &ae).await?;
                args.insert(
                    name("alternate-exchange"),
                    AMQPValue::LongString(LongString::from(ae.into_bytes())),
                );
            }
            if let Some(dlx) = dlx {
                declare_kept(&ch, "the dead-letter exchange", dlx).await?;
            }
            ch.exchange_declare(
                short("the exchange", ex).map_err(Fatal)?,
                ExchangeKind::Topic,
                DURABLE,
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
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::ConnectionBlocked(reason) => {
                        tracing::warn!(%reason, "rabbitmq blocked publishing (resource alarm); events wait in the spool");
                        blocked.send_replace(true);
                        metrics.blocked(true);
                    }
                    Event::ConnectionUnblocked => {
                        tracing::info!("rabbitmq unblocked publishing");
                        blocked.send_replace(false);
                        metrics.blocked(false);
                    }
                    Event::Error(e) => {
                        tracing::warn!(error = %e, "rabbitmq connection error; reconnecting on the next publish");
                        connected.store(false, Ordering::Relaxed);
                        // Whatever blocked this connection ended with it; a publish
                        // waiting on it goes on to reconnect, and the broker blocks the
                        // next connection afresh if its alarm is still on.
                        blocked.send_replace(false);
                        metrics.blocked(false);
                        break;
                    }
                    _ => {}
                }
            }
        });
    }

    /// The usable connection, reconnecting (paced by backoff) when there is none.
    pub(super) async fn channels(&self) -> Result<Arc<Channels>, SinkError> {
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
                self.metrics.connected_again();
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
    pub(super) async fn wait_while_blocked(&self) {
        let mut rx = self.blocked.subscribe();
        while *rx.borrow_and_update() && self.connected.load(Ordering::Relaxed) {
            // Also looks at `connected` now and then, not only on a change.
            let _ = tokio::time::timeout(BLOCKED_RECHECK, rx.changed()).await;
        }
    }

    /// Connected and not blocked: readiness for `ack = "broker"`.
    pub(super) fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed) && !*self.blocked.borrow()
    }
}

const DURABLE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

/// A durable fanout exchange with a durable queue of the same name bound to it:
/// whatever is published there is kept until someone reads it, even when no
/// consumer was set up (day one, or the dead letters nobody expected).
async fn declare_kept(ch: &Channel, what: &str, exchange: &str) -> Result<(), ConnectError> {
    let id = short(what, exchange).map_err(Fatal)?;
    let declared = async {
        ch.exchange_declare(
            id.clone(),
            ExchangeKind::Fanout,
            DURABLE,
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            id.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            id.clone(),
            id.clone(),
            name(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    };
    declared.await.map_err(|e| {
        Fatal(format!(
            "cannot declare {what} and its queue '{exchange}' (an existing one of that name with other settings?): {e}"
        ))
    })
}

enum ConnectError {
    /// Will not get better by retrying: bad credentials, wrong topology.
    Fatal(String),
    /// Broker down or restarting: retry with backoff.
    Transient(String),
}
use ConnectError::{Fatal, Transient};

/// Checks that an exchange exists without declaring it (`declare = false`, and
/// `check --connect`). The broker ignores the kind of a passive declare; it is
/// given as the one we would declare. A missing exchange closes the channel.
async fn passive_declare(ch: &Channel, exchange: &str, kind: ExchangeKind) -> Result<(), String> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.exchange_declare(
        short("the exchange", exchange)?,
        kind,
        passive,
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// `hookrelay check --connect`: connects, then checks the exchange and the
/// dead-letter exchange. Bounded by `connect_timeout_ms`: a broker that never
/// answers fails the check.
pub async fn check_connection(cfg: &RabbitmqSinkConfig) -> Result<String, StartError> {
    cfg.validate()?;
    let limit = Duration::from_millis(cfg.connect_timeout_ms);
    tokio::time::timeout(limit, check(cfg))
        .await
        .unwrap_or_else(|_| {
            Err(StartError::Broker(format!(
                "sinks.rabbitmq: {} did not answer within connect_timeout_ms ({limit:?})",
                cfg.display_target()
            )))
        })
}

async fn check(cfg: &RabbitmqSinkConfig) -> Result<String, StartError> {
    let uri = cfg.resolved_uri()?;
    let target = cfg.display_target();
    let conn = Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .map_err(|e| {
            StartError::Broker(if is_auth_error(&e) {
                format!("sinks.rabbitmq: {target} refused the credentials: {e}")
            } else {
                format!("sinks.rabbitmq: cannot connect to {target}: {e}")
            })
        })?;
    let mut checks = vec![(
        "exchange",
        "exchange",
        cfg.exchange.as_str(),
        ExchangeKind::Topic,
    )];
    if let Some(dlx) = &cfg.dead_letter_exchange {
        checks.push((
            "dead_letter_exchange",
            "dead-letter exchange",
            dlx,
            ExchangeKind::Fanout,
        ));
    }
    let found = async {
        let mut found = Vec::with_capacity(checks.len());
        for (_, _, exchange, kind) in &checks {
            // A channel each: a missing exchange closes the one it was checked on.
            let ch = conn.create_channel().await?;
            found.push(passive_declare(&ch, exchange, kind.clone()).await);
        }
        Ok::<_, lapin::Error>(found)
    }
    .await;
    let _ = conn.close(200, name("check done")).await;
    let found = found.map_err(|e| StartError::Broker(format!("sinks.rabbitmq: {e}")))?;
    let mut report = format!("rabbitmq: connected to {target}");
    for ((key, what, exchange, _), exists) in checks.into_iter().zip(found) {
        match (exists, cfg.declare) {
            (Ok(()), _) => report.push_str(&format!("; {what} '{exchange}' exists")),
            (Err(_), true) => {
                report.push_str(&format!("; {what} '{exchange}' will be declared on start"))
            }
            (Err(e), false) => {
                return Err(StartError::Broker(format!(
                    "sinks.rabbitmq.{key}: '{exchange}' does not exist on {target} and declare = false: {e}"
                )));
            }
        }
    }
    Ok(report)
}
