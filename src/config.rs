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
    /// Time allowed for a client to send its request headers (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Time allowed for a client to send its whole body; past it, 408.
    pub body_read_timeout_ms: u64,
    /// Connections beyond this wait in the kernel backlog instead of using memory.
    pub max_connections: usize,
    /// On SIGTERM, how long in-flight requests and the forwarder get before exit.
    pub drain_deadline_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            max_body_bytes: 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 10_000,
            drain_deadline_secs: 30,
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
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data/spool"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
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
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            window_secs: 24 * 3600,
            max_ids: 1_000_000,
        }
    }
}

/// How the forwarder moves events from the spool to the sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Unconfirmed events allowed at the sink at once; throughput is in-flight / round trip.
    pub max_in_flight: usize,
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
}

/// The signature scheme of a source; the catalogue grows with providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    Quickassist,
}

impl Scheme {
    pub const NAMES: &'static [&'static str] = &["quickassist"];

    /// The event types the provider documents; their metric series start at zero.
    pub fn known_events(self) -> &'static [&'static str] {
        match self {
            Scheme::Quickassist => &[
                "message.delivered",
                "message.read",
                "message.failed",
                "template.status_update",
            ],
        }
    }

    /// Where this provider puts the id that tells one event from another.
    fn default_id_pointer(self) -> &'static str {
        match self {
            Scheme::Quickassist => "/data/messageId",
        }
    }
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
    /// Name of the environment variable holding the signing secret.
    pub secret_env: Option<String>,
    /// File holding the signing secret (a mounted Kubernetes Secret); trailing newline ignored.
    pub secret_file: Option<PathBuf>,
    /// Topic for each event; placeholders `{source}`, `{event}`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Message key (partitioning); placeholders `{source}`, `{event}`, `{id}`.
    #[serde(default = "default_key")]
    pub key: String,
    /// JSON pointer to the event type in the body.
    #[serde(default = "default_event_pointer")]
    pub event_pointer: String,
    /// JSON pointer to the provider's id of the thing the event is about; scheme default.
    pub id_pointer: Option<String>,
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
fn default_event_pointer() -> String {
    "/event".to_string()
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

/// Longest event type accepted: it becomes part of a topic name (Kafka allows 249).
pub const MAX_EVENT_TYPE_LEN: usize = 200;

/// Characters allowed in names that end up in topics: Kafka's legal topic characters.
pub fn is_topic_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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
        for (key, v) in [
            ("server.header_read_timeout_ms", s.header_read_timeout_ms),
            ("server.body_read_timeout_ms", s.body_read_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be greater than 0"));
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
        if self.dedup.max_ids == 0 {
            return Err(invalid("dedup.max_ids", "must be greater than 0"));
        }
        let f = &self.forward;
        if f.max_in_flight == 0 || f.batch_max == 0 {
            return Err(invalid(
                "forward",
                "max_in_flight and batch_max must be greater than 0",
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
        if !is_topic_safe(name) || name.starts_with('_') || name.len() > 100 {
            return Err(invalid(
                format!("sources.{name}"),
                "source names use [A-Za-z0-9._-], do not start with '_', and are at most 100 bytes",
            ));
        }
        match (&src.secret_env, &src.secret_file) {
            (None, None) => {
                return Err(invalid(
                    key("secret_env"),
                    "set secret_env (an environment variable's name) or secret_file",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("secret_file"),
                    "set only one of secret_env and secret_file",
                ));
            }
            _ => {}
        }
        check_template(&key("topic"), &src.topic, &["source", "event"])?;
        // The rendered topic must be a legal Kafka topic for any legal event type.
        let longest = src
            .topic
            .replace("{source}", name)
            .replace("{event}", &"e".repeat(MAX_EVENT_TYPE_LEN));
        if !is_topic_safe(&longest) || longest.len() > 249 {
            return Err(invalid(
                key("topic"),
                format!(
                    "'{}' must render to [A-Za-z0-9._-] and at most 249 bytes with a 200-byte event type",
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
        for (field, ptr) in [
            ("event_pointer", Some(&src.event_pointer)),
            ("id_pointer", src.id_pointer.as_ref()),
        ] {
            if let Some(p) = ptr
                && !p.is_empty()
                && !p.starts_with('/')
            {
                return Err(invalid(
                    key(field),
                    format!("'{p}' is not a JSON pointer (it must start with '/')"),
                ));
            }
        }
        if let Some(events) = &src.events {
            for e in events {
                if !is_topic_safe(e) || e.len() > MAX_EVENT_TYPE_LEN {
                    return Err(invalid(
                        key("events"),
                        format!(
                            "'{e}' is not a valid event type ([A-Za-z0-9._-], at most 200 bytes)"
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
        if src.ack_timeout_ms == 0 {
            return Err(invalid(key("ack_timeout_ms"), "must be greater than 0"));
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

impl SourceConfig {
    /// The id pointer in force: the configured one or the scheme's.
    pub fn id_pointer(&self) -> &str {
        self.id_pointer
            .as_deref()
            .unwrap_or_else(|| self.scheme.default_id_pointer())
    }

    /// Reads the secret from where the config says it is; missing or empty is an error.
    pub fn load_secret(&self, name: &str) -> Result<Vec<u8>, ConfigError> {
        let key = |field: &str| format!("sources.{name}.{field}");
        let secret = match (&self.secret_env, &self.secret_file) {
            (Some(var), _) => match std::env::var(var) {
                Ok(v) => v.into_bytes(),
                Err(_) => {
                    return Err(invalid(
                        key("secret_env"),
                        format!("environment variable {var} is not set"),
                    ));
                }
            },
            (None, Some(path)) => match std::fs::read(path) {
                Ok(mut bytes) => {
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    bytes
                }
                Err(e) => {
                    return Err(invalid(
                        key("secret_file"),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
            },
            (None, None) => return Err(invalid(key("secret_env"), "no secret configured")),
        };
        if secret.is_empty() {
            return Err(match (&self.secret_env, &self.secret_file) {
                (Some(var), _) => invalid(
                    key("secret_env"),
                    format!("environment variable {var} is empty"),
                ),
                (None, Some(path)) => {
                    invalid(key("secret_file"), format!("{} is empty", path.display()))
                }
                (None, None) => invalid(key("secret_env"), "no secret configured"),
            });
        }
        Ok(secret)
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
        assert_eq!(q.id_pointer(), "/data/messageId");
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
            .load_secret("quickassist")
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
        assert!(
            src.load_secret("q")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(src.load_secret("q").unwrap(), b"s3cret");
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
    }
}
