//! The NATS sink's connection and stream: one client that reconnects by itself
//! with capped, jittered backoff; the stream looked up (or created) at start and
//! by `check --connect`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerAddr};
use tokio::sync::watch;

use super::config::{Auth, NatsSinkConfig, Retention};
use crate::sink::StartError;

/// Reconnect attempts back off from this...
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// ...to this.
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// The wait before reconnect attempt `attempts` (1 is the first after a loss, and
/// goes at once): doubling from [`RECONNECT_MIN`] up to [`RECONNECT_MAX`], half of it
/// random so that many relays do not reconnect in step after a broker restart.
pub(super) fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = (attempts - 2).min(16) as u32;
    let full = RECONNECT_MIN
        .saturating_mul(1 << doublings)
        .min(RECONNECT_MAX);
    full / 2 + (full / 2).mul_f64(fastrand::f64())
}

/// Why connecting failed, which decides whether the start goes on.
pub(super) enum ConnectTrouble {
    /// Will not get better by retrying: refused credentials, a TLS setup that
    /// cannot work, an unreadable credentials file.
    Fatal(String),
    /// Server down or restarting: the client keeps trying in the background.
    Transient(String),
}

/// Counts the connections lost: an ack awaited across a loss never comes (it was
/// addressed to the old connection), so its wait ends there instead of at
/// `ack_timeout_ms`.
pub(super) type Losses = Arc<watch::Sender<u64>>;

/// The client's options, secrets applied. `retry` makes `connect` return at once
/// and connect in the background (the start when the server is unreachable).
async fn options(
    cfg: &NatsSinkConfig,
    auth: &Auth,
    retry: bool,
    losses: &Losses,
) -> Result<ConnectOptions, String> {
    let losses = losses.clone();
    let mut o = match auth {
        Auth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("cannot read credentials_file {}: {e}", path.display()))?,
        _ => ConnectOptions::new(),
    };
    match auth {
        Auth::UserPassword { user, password } => {
            o = o.user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => o = o.token(token.clone()),
        Auth::None | Auth::CredentialsFile(_) => {}
    }
    o = o
        .name(format!("hookrelay@{}", crate::sink::hostname()))
        .connection_timeout(cfg.connect_timeout())
        .request_timeout(Some(cfg.ack_timeout()))
        .reconnect_delay_callback(reconnect_delay)
        .max_reconnects(None)
        .event_callback(move |event| {
            if event == Event::Disconnected {
                losses.send_modify(|n| *n = n.wrapping_add(1));
            }
            async move { log_event(event) }
        });
    if cfg.tls {
        o = o.require_tls(true);
    }
    if let Some(ca) = &cfg.ca_file {
        o = o.add_root_certificates(ca.clone());
    }
    if retry {
        o = o.retry_on_initial_connect();
    }
    Ok(o)
}

/// The connection's life in the log: losses and returns an operator should see.
fn log_event(event: Event) {
    match event {
        Event::Connected => tracing::info!("connected to nats"),
        Event::Disconnected => {
            tracing::warn!("nats connection lost; reconnecting, events wait in the spool")
        }
        Event::LameDuckMode => {
            tracing::warn!("the nats server is shutting down (lame duck mode); moving on")
        }
        Event::ServerError(e) => tracing::warn!(error = %e, "nats server error"),
        Event::ClientError(e) => tracing::debug!(error = %e, "nats client error"),
        other => tracing::debug!(event = %other, "nats connection event"),
    }
}

fn servers(cfg: &NatsSinkConfig) -> Result<Vec<ServerAddr>, StartError> {
    cfg.servers
        .iter()
        .map(|s| {
            ServerAddr::from_str(s).map_err(|e| {
                StartError::Config(crate::sink::ConfigProblem::new(
                    "sinks.nats.servers",
                    format!("'{s}': {e}"),
                ))
            })
        })
        .collect()
}

/// Connects once, trying each server, within `connect_timeout_ms` per server.
pub(super) async fn connect_once(
    cfg: &NatsSinkConfig,
    losses: &Losses,
) -> Result<Client, ConnectTrouble> {
    let auth = cfg
        .auth()
        .map_err(|p| ConnectTrouble::Fatal(p.to_string()))?;
    let addrs = servers(cfg).map_err(|e| ConnectTrouble::Fatal(e.to_string()))?;
    let target = cfg.display_target();
    let opts = options(cfg, &auth, false, losses)
        .await
        .map_err(ConnectTrouble::Fatal)?;
    let limit = cfg.connect_timeout() * (addrs.len() as u32 + 1);
    match tokio::time::timeout(limit, opts.connect(addrs)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(match e.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                ConnectTrouble::Fatal(format!("{target} refused the credentials: {e}"))
            }
            ConnectErrorKind::Tls | ConnectErrorKind::ServerParse => {
                ConnectTrouble::Fatal(format!("cannot connect to {target}: {e}"))
            }
            _ => ConnectTrouble::Transient(format!("cannot connect to {target}: {e}")),
        }),
        Err(_) => Err(ConnectTrouble::Transient(format!(
            "{target} did not complete the connection within connect_timeout_ms"
        ))),
    }
}

/// The sink's client. Refused credentials stop the start; an unreachable server
/// only warns and the client connects in the background, since the spool absorbs
/// the outage. Returns whether it is connected now.
pub(super) async fn start(
    cfg: &NatsSinkConfig,
    losses: &Losses,
) -> Result<(Client, bool), StartError> {
    cfg.validate()?;
    let auth = cfg.auth()?;
    match connect_once(cfg, losses).await {
        Ok(client) => Ok((client, true)),
        Err(ConnectTrouble::Fatal(e)) => Err(StartError::Broker(format!("sinks.nats: {e}"))),
        Err(ConnectTrouble::Transient(e)) => {
            tracing::warn!(target = %cfg.display_target(), error = %e,
                "nats unreachable at start; events wait in the spool until it is back");
            let opts = options(cfg, &auth, true, losses)
                .await
                .map_err(|e| StartError::Broker(format!("sinks.nats: {e}")))?;
            let client = opts
                .connect(servers(cfg)?)
                .await
                .map_err(|e| StartError::Broker(format!("sinks.nats: {e}")))?;
            Ok((client, false))
        }
    }
}

/// The JetStream context publishes and stream requests go through: API requests
/// and acks bounded by `ack_timeout_ms`, at most `max_pending_acks` acks awaited.
pub(super) fn jetstream(cfg: &NatsSinkConfig, client: Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(cfg.ack_timeout())
        .ack_timeout(cfg.ack_timeout())
        .max_ack_inflight(cfg.max_pending_acks)
        .backpressure_on_inflight(true)
        .build(client)
}

/// The stream as found or created.
#[derive(Debug, Clone)]
pub struct StreamReady {
    /// Created just now (`create_stream = true` and it was missing).
    pub created: bool,
    pub info: Box<stream::Info>,
}

impl StreamReady {
    /// The subjects the stream stores (a stream configured with none stores its name).
    pub fn subjects(&self) -> Vec<String> {
        stored_subjects(&self.info)
    }
}

pub(super) fn stored_subjects(info: &stream::Info) -> Vec<String> {
    if info.config.subjects.is_empty() {
        vec![info.config.name.clone()]
    } else {
        info.config.subjects.clone()
    }
}

/// What looking the stream up found.
pub(super) enum Lookup {
    Found(Box<stream::Info>),
    Missing,
    /// JetStream is off for the account or the server: no retry helps.
    Unavailable(String),
    /// Timed out or the server is busy: try again later.
    Unknown(String),
}

pub(super) async fn lookup(js: &jetstream::Context, name: &str) -> Lookup {
    use jetstream::ErrorCode;
    use jetstream::context::GetStreamErrorKind;
    match js.get_stream(name).await {
        Ok(s) => Lookup::Found(Box::new(s.cached_info().clone())),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Lookup::Missing
            }
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED
                    || j.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
            {
                Lookup::Unavailable(format!("JetStream is not enabled: {j}"))
            }
            _ => Lookup::Unknown(e.to_string()),
        },
    }
}

/// Why the stream is not ready.
pub(super) enum StreamTrouble {
    /// Missing with `create_stream = false`, refused on creation, JetStream off.
    Fatal(String),
    /// The server did not answer in time, or is moving: try again.
    Transient(String),
}

fn stream_config(cfg: &NatsSinkConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: cfg.subjects.clone(),
        retention: match cfg.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
        },
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        max_age: Duration::from_secs(cfg.max_age_secs.unwrap_or(0)),
        duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
        ..Default::default()
    }
}

/// Finds the stream, creating it when missing and `create_stream = true`. An
/// existing stream is never changed (its settings may be managed elsewhere); one
/// whose subjects differ from `subjects` is only warned about.
pub(super) async fn ensure(
    js: &jetstream::Context,
    cfg: &NatsSinkConfig,
) -> Result<StreamReady, StreamTrouble> {
    use jetstream::ErrorCode;
    use jetstream::context::CreateStreamErrorKind;
    let name = &cfg.stream;
    match lookup(js, name).await {
        Lookup::Found(info) => {
            if cfg.create_stream && info.config.subjects != cfg.subjects {
                tracing::warn!(stream = %name, stored = ?info.config.subjects, configured = ?cfg.subjects,
                    "the nats stream exists with other subjects than sinks.nats.subjects; it is left as it is");
            }
            return Ok(StreamReady {
                created: false,
                info,
            });
        }
        Lookup::Missing if !cfg.create_stream => {
            return Err(StreamTrouble::Fatal(format!(
                "sinks.nats.stream: stream '{name}' does not exist on {} and create_stream = false",
                cfg.display_target()
            )));
        }
        Lookup::Missing => {}
        Lookup::Unavailable(e) => return Err(StreamTrouble::Fatal(format!("sinks.nats: {e}"))),
        Lookup::Unknown(e) => {
            return Err(StreamTrouble::Transient(format!(
                "sinks.nats: cannot look up stream '{name}': {e}"
            )));
        }
    }
    match js.create_stream(stream_config(cfg)).await {
        Ok(s) => {
            tracing::info!(stream = %name, subjects = ?cfg.subjects, retention = cfg.retention.as_str(),
                replicas = cfg.replicas, "created the nats stream");
            Ok(StreamReady {
                created: true,
                info: Box::new(s.cached_info().clone()),
            })
        }
        Err(e) => match e.kind() {
            // Another relay created it first.
            CreateStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::STREAM_NAME_EXIST =>
            {
                match lookup(js, name).await {
                    Lookup::Found(info) => Ok(StreamReady {
                        created: false,
                        info,
                    }),
                    _ => Err(StreamTrouble::Transient(format!(
                        "sinks.nats: stream '{name}' was created elsewhere and cannot be looked up yet"
                    ))),
                }
            }
            CreateStreamErrorKind::JetStream(j) => Err(StreamTrouble::Fatal(format!(
                "sinks.nats: cannot create stream '{name}' with subjects {:?}: {j}",
                cfg.subjects
            ))),
            _ => Err(StreamTrouble::Transient(format!(
                "sinks.nats: cannot create stream '{name}': {e}"
            ))),
        },
    }
}

/// Finds the stream, or creates it (`create_stream = true`) with `subjects`,
/// `retention`, `replicas`, `max_age_secs` and `duplicate_window_secs`. A missing
/// stream with `create_stream = false` is an error naming it and the setting.
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &NatsSinkConfig,
) -> Result<StreamReady, StartError> {
    ensure(js, cfg).await.map_err(|t| match t {
        StreamTrouble::Fatal(e) | StreamTrouble::Transient(e) => StartError::Broker(e),
    })
}

/// `hookrelay check --connect`: connects, finds the stream (creating it if missing
/// and `create_stream = true`) and says what it found, in one line.
pub async fn check_connection(cfg: &NatsSinkConfig) -> Result<String, StartError> {
    cfg.validate()?;
    cfg.auth()?;
    let losses = Arc::new(watch::Sender::new(0));
    let client = connect_once(cfg, &losses).await.map_err(|t| match t {
        ConnectTrouble::Fatal(e) | ConnectTrouble::Transient(e) => {
            StartError::Broker(format!("sinks.nats: {e}"))
        }
    })?;
    let server = client.server_info();
    let js = jetstream(cfg, client.clone());
    let ready = ensure_stream(&js, cfg).await?;
    let c = &ready.info.config;
    Ok(format!(
        "nats: connected to {} ({} {}); stream '{}' {} with subjects [{}], {:?} retention, {} replica(s), {} message(s)",
        cfg.display_target(),
        if server.server_name.is_empty() {
            "server"
        } else {
            &server.server_name
        },
        server.version,
        c.name,
        if ready.created { "created" } else { "exists" },
        ready.subjects().join(", "),
        c.retention,
        c.num_replicas,
        ready.info.state.messages,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_is_capped_and_jittered() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        let d = reconnect_delay(2);
        assert!(d >= RECONNECT_MIN / 2 && d <= RECONNECT_MIN, "{d:?}");
        for n in [10, 100, usize::MAX] {
            let d = reconnect_delay(n);
            assert!(d >= RECONNECT_MAX / 2 && d <= RECONNECT_MAX, "{n}: {d:?}");
        }
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| reconnect_delay(8)).collect();
        assert!(spread.len() > 1, "no jitter");
    }
}
