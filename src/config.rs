//! Typed, validated configuration.
//!
//! One TOML file, unknown keys rejected. [`Config::load`] parses and then
//! [`Config::validate`] runs every cross-field check and resolves secrets, so
//! `hookrelay check` and `hookrelay run` refuse exactly the same files with
//! exactly the same messages, each naming the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::event::{MAX_EVENT_TYPE_LEN, MAX_SOURCE_LEN, MAX_TOPIC_LEN, is_sane_name};
use crate::sink::kafka::KafkaSinkConfig;
use crate::sink::rabbitmq::RabbitmqSinkConfig;

/// Everything hookrelay needs to run, as written in the TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub dedup: DedupConfig,
    #[serde(default)]
    pub forward: ForwardConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Destinations by kind; today only `file`.
    #[serde(default)]
    pub sinks: SinksConfig,
    /// Webhook senders by name; the name is the `{source}` in `/webhooks/{source}`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

/// HTTP listeners and the limits that protect them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where providers POST webhooks.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`; kept off the public port.
    pub admin_listen: SocketAddr,
    /// Larger bodies get 413 before they are read.
    pub max_body_bytes: usize,
    /// Request body bytes read or held at once over every connection and stream;
    /// past it a request waits (up to `body_read_timeout_ms`, then 503). Bounds the
    /// memory senders can make bodies take, signed or not.
    pub max_in_flight_body_bytes: usize,
    /// Time allowed for a client to send its request headers (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Time allowed for a client to send its whole body; past it, 408.
    pub body_read_timeout_ms: u64,
    /// Connections held at most; at the cap a new one closes the one idle longest,
    /// or waits (in the kernel backlog) while every one is busy.
    pub max_connections: usize,
    /// A connection with no request in progress this long is closed (HTTP/1
    /// keep-alive and HTTP/2 alike). One that has not completed a request head
    /// within `header_read_timeout_ms` of connecting is closed too.
    pub idle_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests and the forwarder get before exit.
    pub drain_deadline_secs: u64,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed for `allowed_cidrs`.
    pub trusted_proxies: Vec<String>,
    /// Serve the webhook listener over HTTPS (for senders that require it, without an ingress).
    pub tls: Option<TlsConfig>,
    /// Failed signature checks each client address may make (per second, and in a
    /// burst) before its failures are answered 429 instead of 401. Verified requests
    /// never spend it, and failures never spend a source's `rate_limit`.
    pub unverified_rate_limit: RateLimit,
}

/// PEM files for the native TLS listener; re-read when they change on disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first (cert-manager's `tls.crt`).
    pub cert_file: PathBuf,
    /// Private key, PKCS#8, PKCS#1 or SEC1 (cert-manager's `tls.key`).
    pub key_file: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            max_body_bytes: 1024 * 1024,
            max_in_flight_body_bytes: 256 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 10_000,
            idle_timeout_ms: 60_000,
            drain_deadline_secs: 30,
            trusted_proxies: Vec::new(),
            tls: None,
            unverified_rate_limit: RateLimit {
                per_second: 5.0,
                burst: 100,
            },
        }
    }
}

/// The durable local log between the HTTP answer and the sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// At this size, new events get 503 + Retry-After until the forwarder catches up.
    pub max_bytes: u64,
    /// Segments are deleted whole once every record in them is confirmed.
    pub segment_bytes: u64,
    /// While requests arrive concurrently, at least this long between the starts of
    /// two group commits: fewer, larger fdatasyncs for at most this much latency.
    /// 0 syncs as soon as the previous sync ends.
    pub min_sync_interval_us: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data/spool"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            min_sync_interval_us: 1000,
        }
    }
}

/// Repeat suppression: providers retry, and a retry must not publish twice.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// How long an event id is remembered.
    pub window_secs: u64,
    /// Memory bound: past this many ids, the oldest are forgotten first.
    pub max_ids: usize,
    /// `memory` (per process) or `redis` (shared by replicas).
    pub backend: DedupBackend,
    /// `redis://host:6379/0` (or `rediss://`), for `backend = "redis"`.
    pub redis_url: Option<String>,
    /// Environment variable holding the Redis URL (when it carries a password).
    pub redis_url_env: Option<String>,
    /// When Redis cannot answer: `accept` (fail open: maybe a duplicate, counted)
    /// or `reject` (fail closed: 503 + Retry-After).
    pub on_redis_error: OnRedisError,
    /// Per Redis call; past it the failure mode applies.
    pub redis_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DedupBackend {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    #[default]
    Accept,
    Reject,
}

impl DedupConfig {
    /// The Redis URL from the file or the environment.
    pub fn redis_url(&self) -> Result<String, ConfigError> {
        match (&self.redis_url, &self.redis_url_env) {
            (Some(u), _) => Ok(u.clone()),
            (None, Some(var)) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    invalid(
                        "dedup.redis_url_env",
                        format!("environment variable {var} is not set or empty"),
                    )
                }),
            (None, None) => Err(invalid(
                "dedup.redis_url",
                "backend = \"redis\" needs redis_url or redis_url_env",
            )),
        }
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            window_secs: 24 * 3600,
            max_ids: 1_000_000,
            backend: DedupBackend::Memory,
            redis_url: None,
            redis_url_env: None,
            on_redis_error: OnRedisError::Accept,
            redis_timeout_ms: 500,
        }
    }
}

/// How the forwarder moves events from the spool to the sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Unconfirmed events allowed at the sink at once; throughput is in-flight / round trip.
    pub max_in_flight: usize,
    /// Body bytes of those events, at most (give or take one event): what bounds the
    /// memory they hold when bodies are large (4096 x 1 MiB would be 4 GiB).
    pub max_in_flight_bytes: usize,
    /// Events read from the spool and handed to the sink in one call.
    pub batch_max: usize,
    /// First retry delay after a retriable sink failure.
    pub backoff_initial_ms: u64,
    /// Retry delays double up to this cap (with jitter).
    pub backoff_max_ms: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 4096,
            max_in_flight_bytes: 32 * 1024 * 1024,
            batch_max: 512,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `hookrelay=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// Where events go that a sink refuses for good, so they are never silently dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    pub path: PathBuf,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./data/dead-letter.jsonl"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    pub file: Option<FileSinkConfig>,
    pub kafka: Option<KafkaSinkConfig>,
    pub rabbitmq: Option<RabbitmqSinkConfig>,
}

impl SinksConfig {
    /// Names of the configured sinks, in a stable order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.file.is_some() {
            names.push("file");
        }
        if self.kafka.is_some() {
            names.push("kafka");
        }
        if self.rabbitmq.is_some() {
            names.push("rabbitmq");
        }
        names
    }

    /// Sinks that confirm from a broker, and so can back `ack = "broker"`.
    pub fn is_broker(name: &str) -> bool {
        name == "kafka" || name == "rabbitmq"
    }
}

/// The embedded sink: JSON Lines, one file per topic. For laptops and tests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub dir: PathBuf,
    /// Files held open at once; past it the least recently written is synced and
    /// closed (senders choose event types, so topics are not bounded by us).
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Topic files this sink creates at most (those in `dir` at start count);
    /// events for a new topic past it are dead-lettered with the reason.
    #[serde(default = "default_max_topics")]
    pub max_topics: usize,
}

const fn default_max_open_files() -> usize {
    64
}

/// Topics a sink creates at most, by default (file sink files, Kafka topics).
pub const fn default_max_topics() -> usize {
    1000
}

/// The signature scheme of a source: a preset of signature, event type location
/// and event id location per provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    Quickassist,
    StandardWebhooks,
    Github,
    Stripe,
    Shopify,
    Slack,
    Meta,
    Twilio,
    Razorpay,
    Linear,
    Paddle,
    Zoom,
    Hmac,
    Basic,
    Bearer,
    HeaderToken,
}

/// Where a scheme finds the event type and the event id, and its replay tolerance.
pub struct Preset {
    pub event_from: &'static str,
    /// `None`: the body's digest identifies the event.
    pub id_from: Option<&'static str>,
    pub tolerance_secs: u64,
}

/// Stricter extraction for a scheme whose signature leaves room to alter a body
/// without breaking it (Twilio signs its form parameters concatenated, so moving
/// bytes from one value into the next key keeps the signature): the type and the id
/// must both be found (no digest fallback) and have the provider's own shape, so a
/// re-split body cannot mint a new event id.
#[derive(Debug, Clone, Copy)]
pub struct Strict {
    /// The only event types accepted.
    pub event_types: &'static [&'static str],
    /// The provider's id shape.
    pub id_shape: fn(&str) -> bool,
}

/// Twilio's message and call statuses (its status callbacks' `MessageStatus`,
/// `SmsStatus` and `CallStatus`).
const TWILIO_STATUSES: &[&str] = &[
    "accepted",
    "scheduled",
    "canceled",
    "queued",
    "sending",
    "sent",
    "failed",
    "delivered",
    "undelivered",
    "receiving",
    "received",
    "read",
    "partially_delivered",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "no-answer",
];

/// A Twilio SID: two capital letters and 32 lowercase hex digits.
fn twilio_sid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 34
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

impl Scheme {
    /// The event types the provider documents; their metric series start at zero.
    pub fn known_events(self) -> &'static [&'static str] {
        match self {
            Scheme::Quickassist => &[
                "message.delivered",
                "message.read",
                "message.failed",
                "template.status_update",
            ],
            _ => &[],
        }
    }

    pub fn preset(self) -> Preset {
        let p = |event_from, id_from, tolerance_secs| Preset {
            event_from,
            id_from,
            tolerance_secs,
        };
        match self {
            Scheme::Quickassist => p("/event", Some("/data/messageId"), 0),
            Scheme::StandardWebhooks => p("/type", Some("header:webhook-id"), 300),
            Scheme::Github => p("header:x-github-event", Some("header:x-github-delivery"), 0),
            Scheme::Stripe => p("/type", Some("/id"), 300),
            Scheme::Shopify => p(
                "header:x-shopify-topic",
                Some("header:x-shopify-event-id|header:x-shopify-webhook-id"),
                0,
            ),
            Scheme::Slack => p(
                "/event/type|/type|form:command",
                Some("/event_id|form:trigger_id"),
                300,
            ),
            Scheme::Meta => p("/entry/0/changes/0/field|/object", None, 0),
            Scheme::Twilio => p(
                "form:MessageStatus|form:SmsStatus|form:CallStatus",
                Some("form:MessageSid|form:SmsSid|form:CallSid"),
                0,
            ),
            Scheme::Razorpay => p("/event", Some("header:x-razorpay-event-id"), 0),
            Scheme::Linear => p("/type", Some("header:linear-delivery"), 60),
            Scheme::Paddle => p("/event_type", Some("/event_id"), 300),
            Scheme::Zoom => p("/event", None, 300),
            Scheme::Hmac => p("/type|/event", None, 300),
            Scheme::Basic | Scheme::Bearer | Scheme::HeaderToken => p("/type|/event", None, 0),
        }
    }
}

/// A string or a list of strings, for keys where one or several values make sense.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            One(T),
            Many(Vec<T>),
        }
        Ok(match Either::deserialize(d)? {
            Either::One(v) => OneOrMany(vec![v]),
            Either::Many(v) => OneOrMany(v),
        })
    }
}

/// What JSON TheQuickAssist-style HMACs cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureBody {
    /// The bytes received (what every correct sender signs).
    #[default]
    Raw,
    /// Also accept a signature over `JSON.stringify(JSON.parse(body))`.
    JsonStringify,
}

/// Token-bucket rate limit for one source.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
}

/// When a 200 may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the event is fdatasync'd into the local spool.
    #[default]
    Durable,
    /// After the broker confirms; needs a broker sink.
    Broker,
}

/// One webhook sender.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub scheme: Scheme,
    /// Environment variable(s) holding the secret(s); several while rotating.
    #[serde(default)]
    pub secret_env: OneOrMany<String>,
    /// File(s) holding the secret(s) (mounted Kubernetes Secrets), re-read when they change.
    #[serde(default)]
    pub secret_file: OneOrMany<PathBuf>,
    /// Topic for each event; placeholders `{source}`, `{event}`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Message key (partitioning); placeholders `{source}`, `{event}`, `{id}`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Where the event type is: `/json/pointer`, `header:Name`, `form:field` or
    /// `literal:text`, several separated by `|` (first found wins). Scheme default.
    pub event_from: Option<String>,
    /// Where the provider's event id is, same syntax; scheme default, else the body's digest.
    pub id_from: Option<String>,
    /// The idempotency key; placeholders `{source}`, `{event}`, `{id}`. Includes the event
    /// type by default because `delivered` and `read` of one message share its id.
    #[serde(default = "default_id_template")]
    pub id_template: String,
    /// When set, only these event types are published; others get 200 and are counted as filtered.
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub ack: AckMode,
    /// Which sink receives this source's events; defaults to the only configured one.
    pub sink: Option<String>,
    /// With `ack = "broker"`: how long to wait for the broker's confirmation before 503.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Replay window for timestamped schemes, in seconds (scheme default otherwise).
    pub tolerance_secs: Option<u64>,
    /// `quickassist`: also accept signatures over the body's JSON.stringify form.
    #[serde(default)]
    pub signature_body: SignatureBody,
    /// `meta`: the verify token for the GET subscription handshake.
    pub verify_token_env: Option<String>,
    pub verify_token_file: Option<PathBuf>,
    /// `twilio`: the public base URL Twilio calls (`https://hooks.example.com`).
    pub public_url: Option<String>,
    /// `hmac`: the generic scheme's settings.
    pub hmac: Option<crate::verify::GenericHmac>,
    /// `header-token`: the header carrying the token.
    pub token_header: Option<String>,
    /// Requests beyond this rate get 429 + Retry-After. Off by default.
    pub rate_limit: Option<RateLimit>,
    /// Only these sender networks (CIDR) may post; others get 403. Empty: anyone.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
}

const fn default_ack_timeout_ms() -> u64 {
    5000
}

fn default_topic() -> String {
    "{source}.{event}".to_string()
}
fn default_key() -> String {
    "{id}".to_string()
}
fn default_id_template() -> String {
    "{event}:{id}".to_string()
}

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

impl Config {
    /// Reads, parses and validates the file; secrets are not resolved yet.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; the error names the key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Every check that spans fields or needs the environment.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen == s.admin_listen && s.listen.port() != 0 {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        if s.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be greater than 0"));
        }
        if s.max_body_bytes > crate::spool::MAX_BODY_LEN {
            return Err(invalid(
                "server.max_body_bytes",
                format!(
                    "must be at most {} (what a spool record carries)",
                    crate::spool::MAX_BODY_LEN
                ),
            ));
        }
        if s.max_in_flight_body_bytes < s.max_body_bytes {
            return Err(invalid(
                "server.max_in_flight_body_bytes",
                "must be at least server.max_body_bytes",
            ));
        }
        for (key, v) in [
            ("server.header_read_timeout_ms", s.header_read_timeout_ms),
            ("server.body_read_timeout_ms", s.body_read_timeout_ms),
            ("server.idle_timeout_ms", s.idle_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        for p in &s.trusted_proxies {
            if crate::guard::parse_net(p).is_none() {
                return Err(invalid(
                    "server.trusted_proxies",
                    format!("'{p}' is not a CIDR or IP address"),
                ));
            }
        }
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be greater than 0"));
        }
        let u = &s.unverified_rate_limit;
        if !(u.per_second > 0.0 && u.per_second.is_finite()) || u.burst == 0 {
            return Err(invalid(
                "server.unverified_rate_limit",
                "per_second must be > 0 and burst >= 1",
            ));
        }
        let sp = &self.spool;
        if sp.segment_bytes < 4096 {
            return Err(invalid("spool.segment_bytes", "must be at least 4096"));
        }
        if sp.max_bytes < sp.segment_bytes.saturating_mul(4) {
            return Err(invalid(
                "spool.max_bytes",
                format!(
                    "must be at least 4 x spool.segment_bytes ({}), so that confirmed segments can be freed",
                    sp.segment_bytes.saturating_mul(4)
                ),
            ));
        }
        if sp.min_sync_interval_us > 100_000 {
            return Err(invalid(
                "spool.min_sync_interval_us",
                "must be at most 100000 (100 ms): every 200 may wait this long",
            ));
        }
        if self.dedup.max_ids == 0 {
            return Err(invalid("dedup.max_ids", "must be greater than 0"));
        }
        if self.dedup.backend == DedupBackend::Redis {
            if self.dedup.redis_url.is_none() && self.dedup.redis_url_env.is_none() {
                return Err(invalid(
                    "dedup.redis_url",
                    "backend = \"redis\" needs redis_url or redis_url_env",
                ));
            }
            if let Some(u) = &self.dedup.redis_url
                && !(u.starts_with("redis://") || u.starts_with("rediss://"))
            {
                return Err(invalid(
                    "dedup.redis_url",
                    "must start with redis:// or rediss://",
                ));
            }
            if self.dedup.redis_timeout_ms == 0 {
                return Err(invalid("dedup.redis_timeout_ms", "must be greater than 0"));
            }
        }
        let f = &self.forward;
        if f.max_in_flight == 0 || f.max_in_flight_bytes == 0 || f.batch_max == 0 {
            return Err(invalid(
                "forward",
                "max_in_flight, max_in_flight_bytes and batch_max must be greater than 0",
            ));
        }
        if f.backoff_initial_ms == 0 || f.backoff_max_ms < f.backoff_initial_ms {
            return Err(invalid(
                "forward.backoff_max_ms",
                "need 0 < backoff_initial_ms <= backoff_max_ms",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("'{}' is not a valid filter", self.log.level),
            ));
        }
        let sinks = self.sinks.names();
        if sinks.is_empty() {
            return Err(invalid(
                "sinks",
                "configure at least one sink, e.g. [sinks.file] dir = \"./data/events\"",
            ));
        }
        if self.sources.is_empty() {
            return Err(invalid(
                "sources",
                "configure at least one source, e.g. [sources.quickassist] scheme = \"quickassist\"",
            ));
        }
        if let Some(f) = &self.sinks.file
            && (f.max_open_files == 0 || f.max_topics == 0)
        {
            return Err(invalid(
                "sinks.file",
                "max_open_files and max_topics must be greater than 0",
            ));
        }
        if let Some(k) = &self.sinks.kafka {
            k.validate().map_err(|(key, why)| invalid(key, why))?;
        }
        if let Some(r) = &self.sinks.rabbitmq {
            r.validate().map_err(|(key, why)| invalid(key, why))?;
        }
        for (name, src) in &self.sources {
            self.validate_source(name, src, &sinks)?;
        }
        Ok(())
    }

    fn validate_source(
        &self,
        name: &str,
        src: &SourceConfig,
        sinks: &[&'static str],
    ) -> Result<(), ConfigError> {
        let key = |field: &str| format!("sources.{name}.{field}");
        if !is_sane_name(name) || name.starts_with('_') || name.len() > MAX_SOURCE_LEN {
            return Err(invalid(
                format!("sources.{name}"),
                "source names use [A-Za-z0-9._-], do not start with '_' or '.', have no '..', do not end with '.', and are at most 100 bytes",
            ));
        }
        if src.secret_env.0.is_empty() && src.secret_file.0.is_empty() {
            return Err(invalid(
                key("secret_env"),
                "set secret_env (an environment variable's name) or secret_file, or lists of them while rotating",
            ));
        }
        self.validate_scheme_options(name, src)?;
        check_template(&key("topic"), &src.topic, &["source", "event"])?;
        // The rendered topic must be a sane topic name for any legal event type (event
        // types are sane names themselves, so the shortest and the longest tell).
        let render = |event: &str| {
            src.topic
                .replace("{source}", name)
                .replace("{event}", event)
        };
        let (shortest, longest) = (render("e"), render(&"e".repeat(MAX_EVENT_TYPE_LEN)));
        if !is_sane_name(&shortest) || !is_sane_name(&longest) || longest.len() > MAX_TOPIC_LEN {
            return Err(invalid(
                key("topic"),
                format!(
                    "'{}' must render to [A-Za-z0-9._-] with no empty segment ('..', a leading or trailing '.') and at most 249 bytes with a 200-byte event type",
                    src.topic
                ),
            ));
        }
        check_template(&key("key"), &src.key, &["source", "event", "id"])?;
        check_template(
            &key("id_template"),
            &src.id_template,
            &["source", "event", "id"],
        )?;
        for (field, loc) in [
            ("event_from", src.event_from.as_ref()),
            ("id_from", src.id_from.as_ref()),
        ] {
            if let Some(loc) = loc
                && let Err(why) = crate::event::Locations::parse(loc)
            {
                return Err(invalid(key(field), why));
            }
        }
        if let Some(events) = &src.events {
            for e in events {
                if !is_sane_name(e) || e.len() > MAX_EVENT_TYPE_LEN {
                    return Err(invalid(
                        key("events"),
                        format!(
                            "'{e}' is not a valid event type ([A-Za-z0-9._-], no empty segment, at most 200 bytes)"
                        ),
                    ));
                }
            }
        }
        if src.ack == AckMode::Broker && !SinksConfig::is_broker(&self.sink_of(src)) {
            return Err(invalid(
                key("ack"),
                format!(
                    "ack = \"broker\" needs a broker sink (kafka, rabbitmq); sink '{}' supports only \"durable\"",
                    self.sink_of(src)
                ),
            ));
        }
        if src.ack_timeout_ms == 0 || src.ack_timeout_ms > 15_000 {
            return Err(invalid(
                key("ack_timeout_ms"),
                "must be between 1 and 15000: a request waits at most 20 s for its event to be stored, and a dedup reservation lives 30 s",
            ));
        }
        match &src.sink {
            Some(s) if !sinks.contains(&s.as_str()) => {
                return Err(invalid(
                    key("sink"),
                    format!("unknown sink '{s}', configured sinks: {}", sinks.join(", ")),
                ));
            }
            None if sinks.len() > 1 => {
                return Err(invalid(
                    key("sink"),
                    format!(
                        "several sinks are configured ({}): name one",
                        sinks.join(", ")
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The sink a source publishes to.
    pub fn sink_of(&self, src: &SourceConfig) -> String {
        src.sink.clone().unwrap_or_else(|| {
            self.sinks
                .names()
                .first()
                .copied()
                .unwrap_or("file")
                .to_string()
        })
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.server.header_read_timeout_ms)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.server.body_read_timeout_ms)
    }
    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs(self.server.drain_deadline_secs)
    }
}

impl SourceConfig {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}

impl Config {
    /// Options that only some schemes take, each checked against the scheme.
    fn validate_scheme_options(&self, name: &str, src: &SourceConfig) -> Result<(), ConfigError> {
        let key = |field: &str| format!("sources.{name}.{field}");
        let only = |field: &str, set: bool, scheme: &str, ok: bool| {
            if set && !ok {
                Err(invalid(
                    key(field),
                    format!("only applies to scheme = \"{scheme}\""),
                ))
            } else {
                Ok(())
            }
        };
        let s = src.scheme;
        only(
            "signature_body",
            src.signature_body != SignatureBody::Raw,
            "quickassist",
            s == Scheme::Quickassist,
        )?;
        only(
            "verify_token_env",
            src.verify_token_env.is_some() || src.verify_token_file.is_some(),
            "meta",
            s == Scheme::Meta,
        )?;
        only(
            "public_url",
            src.public_url.is_some(),
            "twilio",
            s == Scheme::Twilio,
        )?;
        only("hmac", src.hmac.is_some(), "hmac", s == Scheme::Hmac)?;
        only(
            "token_header",
            src.token_header.is_some(),
            "header-token",
            s == Scheme::HeaderToken,
        )?;
        match s {
            Scheme::Twilio => match &src.public_url {
                Some(u) if u.starts_with("https://") || u.starts_with("http://") => {}
                _ => {
                    return Err(invalid(
                        key("public_url"),
                        "twilio signs the URL it calls: set public_url = \"https://your.host\"",
                    ));
                }
            },
            Scheme::Hmac if src.hmac.is_none() => {
                return Err(invalid(
                    key("hmac"),
                    "scheme = \"hmac\" needs [sources.NAME.hmac] with at least header = \"...\"",
                ));
            }
            Scheme::HeaderToken if src.token_header.as_deref().is_none_or(str::is_empty) => {
                return Err(invalid(
                    key("token_header"),
                    "scheme = \"header-token\" needs token_header",
                ));
            }
            Scheme::Meta if src.verify_token_env.is_none() && src.verify_token_file.is_none() => {
                return Err(invalid(
                    key("verify_token_env"),
                    "meta's GET subscription check needs verify_token_env or verify_token_file",
                ));
            }
            _ => {}
        }
        if let Some(h) = &src.hmac {
            if hyper::header::HeaderName::from_bytes(h.header.as_bytes()).is_err() {
                return Err(invalid(
                    key("hmac.header"),
                    format!("'{}' is not a header name", h.header),
                ));
            }
            check_template(
                &key("hmac.content"),
                &h.content,
                &["body", "timestamp", "id"],
            )?;
            if h.content.contains("{timestamp}") && h.timestamp_header.is_none() {
                return Err(invalid(
                    key("hmac.timestamp_header"),
                    "content uses {timestamp}: name its header",
                ));
            }
            if h.content.contains("{id}") && h.id_header.is_none() {
                return Err(invalid(
                    key("hmac.id_header"),
                    "content uses {id}: name its header",
                ));
            }
        }
        if let Some(r) = &src.rate_limit
            && (!(r.per_second > 0.0 && r.per_second.is_finite()) || r.burst == 0)
        {
            return Err(invalid(
                key("rate_limit"),
                "per_second must be > 0 and burst >= 1",
            ));
        }
        for c in &src.allowed_cidrs {
            if crate::guard::parse_net(c).is_none() {
                return Err(invalid(
                    key("allowed_cidrs"),
                    format!("'{c}' is not a CIDR or IP address"),
                ));
            }
        }
        Ok(())
    }
}

impl SourceConfig {
    /// The scheme's stricter extraction, when the source uses the scheme's own
    /// locations (see [`Strict`]).
    pub fn strict(&self) -> Option<Strict> {
        match self.scheme {
            Scheme::Twilio if self.event_from.is_none() && self.id_from.is_none() => Some(Strict {
                event_types: TWILIO_STATUSES,
                id_shape: twilio_sid,
            }),
            _ => None,
        }
    }

    /// Where the event type is: configured, else the scheme's preset.
    pub fn event_from(&self) -> String {
        self.event_from
            .clone()
            .unwrap_or_else(|| self.scheme.preset().event_from.to_string())
    }

    /// Where the event id is: configured, else the scheme's preset (or the generic
    /// scheme's id header); `None` means the body's digest.
    pub fn id_from(&self) -> Option<String> {
        if let Some(id) = &self.id_from {
            return Some(id.clone());
        }
        if let Some(h) = self.hmac.as_ref().and_then(|h| h.id_header.as_ref()) {
            return Some(format!("header:{h}"));
        }
        self.scheme.preset().id_from.map(str::to_string)
    }

    /// Headers whose values the scheme's signature covers (lowercase).
    pub fn signed_headers(&self) -> Vec<String> {
        let fixed: &[&str] = match self.scheme {
            Scheme::StandardWebhooks => &["webhook-id", "webhook-timestamp"],
            Scheme::Slack => &["x-slack-request-timestamp"],
            Scheme::Zoom => &["x-zm-request-timestamp"],
            _ => &[],
        };
        let mut out: Vec<String> = fixed.iter().map(|h| h.to_string()).collect();
        if let Some(h) = &self.hmac {
            if h.content.contains("{timestamp}")
                && let Some(t) = &h.timestamp_header
            {
                out.push(t.to_ascii_lowercase());
            }
            if h.content.contains("{id}")
                && let Some(i) = &h.id_header
            {
                out.push(i.to_ascii_lowercase());
            }
        }
        out
    }

    /// Whether the event id may come from outside what the signature covers (a header
    /// it does not sign, or a literal): then anyone who saw one delivery could send it
    /// again under a fresh id, and the source needs a replay guard keyed by the signed
    /// bytes. Ids from the body (pointers, form fields, the digest) are signed.
    pub fn id_is_unsigned(&self) -> bool {
        let Some(spec) = self.id_from() else {
            return false;
        };
        let signed = self.signed_headers();
        spec.split('|').map(str::trim).any(|loc| {
            if let Some(h) = loc.strip_prefix("header:") {
                !signed.contains(&h.to_ascii_lowercase())
            } else {
                loc.starts_with("literal:")
            }
        })
    }

    pub fn secret_sources(&self) -> Vec<crate::verify::SecretSource> {
        use crate::verify::SecretSource;
        self.secret_env
            .0
            .iter()
            .map(|v| SecretSource::Env(v.clone()))
            .chain(
                self.secret_file
                    .0
                    .iter()
                    .map(|p| SecretSource::File(p.clone())),
            )
            .collect()
    }

    /// The source's verifier with its secrets read; an error names the key at fault.
    pub fn verifier(&self, name: &str) -> Result<crate::verify::Verifier, ConfigError> {
        use crate::verify::{Handshakes, Method, SecretSource, Verifier};
        let key = |field: &str| format!("sources.{name}.{field}");
        let tolerance = self
            .tolerance_secs
            .unwrap_or(self.scheme.preset().tolerance_secs);
        let method = match self.scheme {
            Scheme::Quickassist => Method::Quickassist {
                json_stringify: self.signature_body == SignatureBody::JsonStringify,
            },
            Scheme::StandardWebhooks => Method::StandardWebhooks { tolerance },
            Scheme::Github | Scheme::Meta => Method::HubSignature,
            Scheme::Stripe => Method::Stripe { tolerance },
            Scheme::Shopify => Method::Shopify,
            Scheme::Slack => Method::Slack { tolerance },
            Scheme::Twilio => Method::Twilio {
                public_url: self.public_url.clone().unwrap_or_default(),
            },
            Scheme::Razorpay => Method::Razorpay,
            Scheme::Linear => Method::Linear { tolerance },
            Scheme::Paddle => Method::Paddle { tolerance },
            Scheme::Zoom => Method::Zoom { tolerance },
            Scheme::Hmac => Method::Hmac {
                spec: self
                    .hmac
                    .clone()
                    .ok_or_else(|| invalid(key("hmac"), "missing"))?,
                tolerance,
            },
            Scheme::Basic => Method::Basic,
            Scheme::Bearer => Method::Bearer,
            Scheme::HeaderToken => Method::HeaderToken {
                header: self.token_header.clone().unwrap_or_default(),
            },
        };
        let handshakes = Handshakes {
            github_ping: self.scheme == Scheme::Github,
            slack_url_verification: self.scheme == Scheme::Slack,
            zoom_url_validation: self.scheme == Scheme::Zoom,
            meta_get: self.scheme == Scheme::Meta,
        };
        let verify_token = match (&self.verify_token_env, &self.verify_token_file) {
            (Some(v), _) => Some(SecretSource::Env(v.clone())),
            (None, Some(p)) => Some(SecretSource::File(p.clone())),
            (None, None) => None,
        }
        .map(|s| {
            s.read()
                .map_err(|why| invalid(key("verify_token_env"), why))
        })
        .transpose()?;
        let field = if self.secret_env.0.is_empty() {
            "secret_file"
        } else {
            "secret_env"
        };
        Verifier::new(method, self.secret_sources(), verify_token, handshakes)
            .map_err(|why| invalid(key(field), why))
    }
}

/// Rejects templates with placeholders other than `allowed`, or unbalanced braces.
fn check_template(key: &str, template: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    if template.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(invalid(key, format!("unclosed '{{' in '{template}'")));
        };
        let name = &after[..close];
        if !allowed.contains(&name) {
            return Err(invalid(
                key,
                format!(
                    "unknown placeholder '{{{name}}}' in '{template}', expected one of: {}",
                    allowed
                        .iter()
                        .map(|a| format!("{{{a}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(invalid(key, format!("stray '}}' in '{template}'")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[sinks.file]
dir = "/tmp/x"
[sources.quickassist]
scheme = "quickassist"
secret_env = "HOOKRELAY_TEST_NEVER_SET"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        c.validate().unwrap();
        let q = &c.sources["quickassist"];
        assert_eq!(q.topic, "{source}.{event}");
        assert_eq!(q.id_from().as_deref(), Some("/data/messageId"));
        assert_eq!(q.event_from(), "/event");
        assert_eq!(q.ack, AckMode::Durable);
        assert_eq!(c.server.max_body_bytes, 1 << 20);
        assert_eq!(c.spool.max_bytes, 1 << 30);
        assert_eq!(c.sink_of(q), "file");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(&format!("{MINIMAL}\nbogus_key = 1\n")).unwrap_err();
        assert!(err.contains("bogus_key"), "{err}");
        let err = Config::parse("[server]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn unknown_scheme_lists_the_known_ones() {
        let err = Config::parse(&MINIMAL.replace("\"quickassist\"\nsecret", "\"nope\"\nsecret"))
            .unwrap_err();
        assert!(err.contains("nope") && err.contains("quickassist"), "{err}");
    }

    #[test]
    fn bad_template_is_named() {
        let c = Config::parse(&format!("{MINIMAL}topic = \"{{source}}.{{evnt}}\"\n")).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("sources.quickassist.topic"), "{err}");
        assert!(err.contains("{evnt}"), "{err}");
    }

    #[test]
    fn topic_template_must_render_to_a_legal_topic() {
        let c = Config::parse(&format!("{MINIMAL}topic = \"wa events/{{event}}\"\n")).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("sources.quickassist.topic"), "{err}");
        let c = Config::parse(&format!("{MINIMAL}topic = \"wa-{{event}}\"\n")).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn missing_secret_is_a_named_error() {
        let c = Config::parse(MINIMAL).unwrap();
        let err = c.sources["quickassist"]
            .verifier("quickassist")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sources.quickassist.secret_env"), "{err}");
        assert!(err.contains("HOOKRELAY_TEST_NEVER_SET"), "{err}");
    }

    #[test]
    fn empty_secret_file_is_rejected_and_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let text = MINIMAL.replace(
            "secret_env = \"HOOKRELAY_TEST_NEVER_SET\"",
            &format!("secret_file = {:?}", path.display().to_string()),
        );
        let c = Config::parse(&text).unwrap();
        let src = &c.sources["quickassist"];
        std::fs::write(&path, "\n").unwrap();
        let err = src.verifier("quickassist").unwrap_err().to_string();
        assert!(
            err.starts_with("sources.quickassist.secret_file") && err.contains("empty"),
            "{err}"
        );
        std::fs::write(&path, "s3cret\n").unwrap();
        let v = src.verifier("quickassist").unwrap();
        let mut h = hyper::HeaderMap::new();
        let sig = crate::verify::quickassist_sign(b"s3cret", b"{}");
        h.insert("x-webhook-signature", sig.parse().unwrap());
        assert!(v.verify(&h, bytes::Bytes::from_static(b"{}"), "/").is_ok());
    }

    #[test]
    fn scheme_options_are_checked_against_the_scheme() {
        for (extra, key) in [
            (
                "public_url = \"https://x\"\n",
                "sources.quickassist.public_url",
            ),
            (
                "token_header = \"x-token\"\n",
                "sources.quickassist.token_header",
            ),
            (
                "event_from = \"nowhere\"\n",
                "sources.quickassist.event_from",
            ),
            (
                "rate_limit = { per_second = 0.0, burst = 1 }\n",
                "sources.quickassist.rate_limit",
            ),
            (
                "allowed_cidrs = [\"10.0.0.0/33\"]\n",
                "sources.quickassist.allowed_cidrs",
            ),
        ] {
            let c = Config::parse(&format!("{MINIMAL}{extra}")).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{extra}: {err}");
        }
        let twilio = MINIMAL.replace("\"quickassist\"\nsecret", "\"twilio\"\nsecret");
        let err = Config::parse(&twilio)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sources.quickassist.public_url"), "{err}");
        let meta = MINIMAL.replace("\"quickassist\"\nsecret", "\"meta\"\nsecret");
        let err = Config::parse(&meta)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("sources.quickassist.verify_token_env"),
            "{err}"
        );
        // Several secrets while rotating.
        let c = Config::parse(&MINIMAL.replace(
            "secret_env = \"HOOKRELAY_TEST_NEVER_SET\"",
            "secret_env = [\"A\", \"B\"]\nsecret_file = \"/x\"",
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.sources["quickassist"].secret_sources().len(), 3);
    }

    #[test]
    fn broker_ack_needs_a_broker_sink() {
        let c = Config::parse(&format!("{MINIMAL}ack = \"broker\"\n")).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("sources.quickassist.ack"), "{err}");
    }

    #[test]
    fn no_sink_and_no_source_are_errors() {
        let c =
            Config::parse("[sources.a]\nscheme = \"quickassist\"\nsecret_env = \"X\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().starts_with("sinks"));
        let c = Config::parse("[sinks.file]\ndir = \"x\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().starts_with("sources"));
    }

    #[test]
    fn spool_limits_are_checked() {
        let c = Config::parse(&format!(
            "{MINIMAL}[spool]\nmax_bytes = 10000\nsegment_bytes = 8192\n"
        ))
        .unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("spool.max_bytes")
        );
        let c = Config::parse(&format!(
            "{MINIMAL}[spool]\nmin_sync_interval_us = 100001\n"
        ))
        .unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("spool.min_sync_interval_us")
        );
        let c = Config::parse(&format!("{MINIMAL}[spool]\nmin_sync_interval_us = 0\n")).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(SpoolConfig::default().min_sync_interval_us, 1000);
    }
}
