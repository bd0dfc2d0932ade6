//! Typed, validated configuration.
//!
//! One TOML file, unknown keys rejected. [`Config::load`] parses and then runs
//! every cross-field check ([`Config::validate`]), so `hookrelay check` and
//! `hookrelay run` refuse exactly the same files with exactly the same messages,
//! each naming the offending key and its line, all of them at once (`load.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

mod admin;
mod load;
mod problems;
mod sinks;
mod source;
#[cfg(test)]
mod tests;

pub use admin::{AdminConfig, MIN_TOKEN_LEN};
pub use load::Checked;
pub use problems::{Problem, Problems, segment};
pub use sinks::{
    FileSinkConfig, MAX_SINK_NAME_LEN, SinkConfig, SinkSettings, SinksConfig, renamed,
};
pub use source::{AckMode, OneOrMany, RateLimit, SignatureBody, SourceConfig};

/// Everything hookrelay needs to run, as written in the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// The admin API (`/admin/` on the admin listener); off without a token.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Confirmed events kept for replay; off unless the section is there.
    pub archive: Option<ArchiveConfig>,
    /// Spans to an OpenTelemetry collector; off unless the section is there.
    pub otlp: Option<OtlpConfig>,
    /// Destinations by name (see `sinks`); read table by table, by their `type`
    /// (see `load.rs`), not by serde.
    #[serde(skip)]
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

/// `[archive]`: confirmed spool segments are kept (renamed, not copied) under
/// each backlog's `archive/` instead of being reused, so that an operator can
/// replay a time window to a sink. Off by default: it costs disk, and the live
/// path loses segment recycling (docs/benchmarks.md, "Archive"). A segment is
/// archived once it is sealed (`spool.segment_bytes` written) and confirmed: at
/// a low rate the newest events wait that long before they can be replayed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Segments last written longer ago than this are deleted (whole: a segment
    /// goes when its newest event is this old).
    pub retention_hours: u64,
    /// Over every sink's archive together; past it the oldest segments are
    /// deleted first (new events are never refused for it). At least two
    /// segments, so that pruning never empties it of everything but the newest.
    pub max_bytes: u64,
}

/// `[otlp]`: one span per webhook request, sent over OTLP/HTTP (protobuf) to a
/// collector, carrying the ids the published messages' `traceparent` names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's traces URL, `http://HOST:4318/v1/traces` (used as written).
    /// Plain http: a collector beside the relay (a sidecar or the node's agent).
    pub endpoint: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// One export's limit; spans past the SDK's queue are dropped, never held.
    #[serde(default = "default_otlp_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_service_name() -> String {
    "hookrelay".into()
}

fn default_otlp_timeout_ms() -> u64 {
    10_000
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            retention_hours: 24,
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl ArchiveConfig {
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours.saturating_mul(3600))
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
    /// How long fewer than `batch_max` synced events may wait to be joined by more
    /// before they are handed to the sink: at a moderate rate each group commit
    /// holds a few events, and handing each handful over alone costs thread wake-ups
    /// per event. Only delivery waits, never the 200 (the spool has the event). 0
    /// hands over whatever is synced at once.
    pub linger_ms: u64,
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
            linger_ms: 5,
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
    /// One line per webhook request at info (source, status, event id, duration,
    /// request and trace ids, peer), under the target `hookrelay::access`. Off by
    /// default: at the provider's volume it is most of the log.
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_string(),
            access: false,
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

/// Text that is not TOML: the parser's message, with the line and column.
/// Nothing after it can be read, so it is the only problem reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// The file, when the text is one's.
    pub path: Option<PathBuf>,
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}: {}", p.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SyntaxError {}

/// A configuration that cannot be used, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The io error is in the message, and not a `source`: printed once.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// Every problem found, each with its key (and line, when from a file).
    #[error("{0}")]
    Invalid(Problems),
}

impl From<crate::sink::ConfigProblem> for ConfigError {
    fn from(p: crate::sink::ConfigProblem) -> ConfigError {
        invalid(p.key, p.why)
    }
}

/// A single problem, for helpers that stop at the first (reading a secret).
fn invalid(key: impl Into<String>, why: impl std::fmt::Display) -> ConfigError {
    let mut problems = Problems::new();
    problems.push(key, why);
    ConfigError::Invalid(problems)
}

impl Config {
    /// Every check that spans fields or needs the environment, all of them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::new();
        self.check(&mut problems);
        problems.into_result()
    }

    /// [`Config::validate`]'s checks, each problem pushed to `out`.
    fn check(&self, out: &mut Problems) {
        let s = &self.server;
        if s.listen == s.admin_listen && s.listen.port() != 0 {
            out.push("server.admin_listen", "must differ from server.listen");
        }
        if s.max_body_bytes == 0 {
            out.push("server.max_body_bytes", "must be greater than 0");
        }
        if s.max_body_bytes > crate::spool::MAX_BODY_LEN {
            out.push(
                "server.max_body_bytes",
                format!(
                    "must be at most {} (what a spool record carries)",
                    crate::spool::MAX_BODY_LEN
                ),
            );
        }
        if s.max_in_flight_body_bytes < s.max_body_bytes {
            out.push(
                "server.max_in_flight_body_bytes",
                "must be at least server.max_body_bytes",
            );
        }
        for (key, v) in [
            ("server.header_read_timeout_ms", s.header_read_timeout_ms),
            ("server.body_read_timeout_ms", s.body_read_timeout_ms),
            ("server.idle_timeout_ms", s.idle_timeout_ms),
        ] {
            if v == 0 {
                out.push(key, "must be greater than 0");
            }
        }
        for p in &s.trusted_proxies {
            if crate::guard::parse_net(p).is_none() {
                out.push(
                    "server.trusted_proxies",
                    format!("'{p}' is not a CIDR or IP address"),
                );
            }
        }
        if s.max_connections == 0 {
            out.push("server.max_connections", "must be greater than 0");
        }
        let u = &s.unverified_rate_limit;
        if !(u.per_second > 0.0 && u.per_second.is_finite()) || u.burst == 0 {
            out.push(
                "server.unverified_rate_limit",
                "per_second must be > 0 and burst >= 1",
            );
        }
        let sp = &self.spool;
        if sp.segment_bytes < 4096 {
            out.push("spool.segment_bytes", "must be at least 4096");
        }
        if sp.max_bytes < sp.segment_bytes.saturating_mul(4) {
            out.push(
                "spool.max_bytes",
                format!(
                    "must be at least 4 x spool.segment_bytes ({}), so that confirmed segments can be freed",
                    sp.segment_bytes.saturating_mul(4)
                ),
            );
        }
        if sp.min_sync_interval_us > 100_000 {
            out.push(
                "spool.min_sync_interval_us",
                "must be at most 100000 (100 ms): every 200 may wait this long",
            );
        }
        if let Some(a) = &self.archive {
            if a.retention_hours == 0 {
                out.push("archive.retention_hours", "must be greater than 0");
            }
            let least = sp.segment_bytes.saturating_mul(2);
            if a.max_bytes < least {
                out.push(
                    "archive.max_bytes",
                    format!("must be at least 2 x spool.segment_bytes ({least})"),
                );
            }
        }
        if let Some(o) = &self.otlp {
            let uri = o.endpoint.parse::<hyper::Uri>().ok();
            if o.endpoint.len() > 2048
                || uri.as_ref().and_then(|u| u.scheme_str()) != Some("http")
                || uri.as_ref().and_then(|u| u.host()).is_none()
            {
                out.push(
                    "otlp.endpoint",
                    "must be an http:// URL with a host, e.g. http://127.0.0.1:4318/v1/traces (https is not built in: use a collector beside the relay)",
                );
            }
            if o.service_name.is_empty() || o.service_name.len() > 255 {
                out.push("otlp.service_name", "must be 1 to 255 bytes");
            }
            if !(1..=60_000).contains(&o.timeout_ms) {
                out.push("otlp.timeout_ms", "must be between 1 and 60000");
            }
        }
        if self.dedup.max_ids == 0 {
            out.push("dedup.max_ids", "must be greater than 0");
        }
        if self.dedup.backend == DedupBackend::Redis {
            if self.dedup.redis_url.is_none() && self.dedup.redis_url_env.is_none() {
                out.push(
                    "dedup.redis_url",
                    "backend = \"redis\" needs redis_url or redis_url_env",
                );
            }
            if let Some(u) = &self.dedup.redis_url
                && !(u.starts_with("redis://") || u.starts_with("rediss://"))
            {
                out.push("dedup.redis_url", "must start with redis:// or rediss://");
            }
            if self.dedup.redis_timeout_ms == 0 {
                out.push("dedup.redis_timeout_ms", "must be greater than 0");
            }
        }
        let f = &self.forward;
        if f.max_in_flight == 0 || f.max_in_flight_bytes == 0 || f.batch_max == 0 {
            out.push(
                "forward",
                "max_in_flight, max_in_flight_bytes and batch_max must be greater than 0",
            );
        }
        if f.linger_ms > 1000 {
            out.push(
                "forward.linger_ms",
                "at most 1000 (it delays every delivery by up to that)",
            );
        }
        if f.backoff_initial_ms == 0 || f.backoff_max_ms < f.backoff_initial_ms {
            out.push(
                "forward.backoff_max_ms",
                "need 0 < backoff_initial_ms <= backoff_max_ms",
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            out.push(
                "log.level",
                format!("'{}' is not a valid filter", self.log.level),
            );
        }
        if let Err(e) = self.admin.token() {
            out.add(e);
        }
        if self.sources.is_empty() {
            out.push(
                "sources",
                "configure at least one source, e.g. [sources.quickassist] scheme = \"quickassist\"",
            );
        }
        self.sinks
            .validate(self.spool.max_bytes, self.spool.segment_bytes, out);
        for (name, src) in &self.sources {
            src.validate(name, &self.sinks, out);
        }
    }

    /// What `check` reports and `run` logs without refusing the file.
    pub fn warnings(&self) -> Vec<String> {
        self.sinks
            .names()
            .into_iter()
            .filter(|sink| {
                !self
                    .sources
                    .values()
                    .any(|src| self.sinks.for_source(src).contains(sink))
            })
            .map(|sink| format!("sinks.{sink}: no source routes to it"))
            .collect()
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
