//! `[sinks.kafka]`: typed settings, validation, and their librdkafka properties.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use serde::Deserialize;

use crate::sink::ConfigProblem;

/// Properties hookrelay sets from typed keys; setting them raw would bypass checks.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("linger.ms", "linger_ms"),
    ("queue.buffering.max.ms", "linger_ms"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
    ("message.timeout.ms", "message_timeout_ms"),
    ("delivery.timeout.ms", "message_timeout_ms"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A careful producer by default: idempotent, acks=all, small linger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port...]`: the bootstrap servers.
    pub brokers: String,
    /// How long librdkafka waits to fill a batch; 0-2 keeps the 200-to-broker path short.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    #[serde(default)]
    pub compression: Compression,
    /// librdkafka retries a message (idempotently, in order) for this long before
    /// reporting it failed; the forwarder then retries it from the spool with backoff.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Create missing topics through the admin API before the first publish to each.
    #[serde(default)]
    pub create_topics: bool,
    /// Partitions of created topics; -1 takes the broker's default.
    #[serde(default = "broker_default")]
    pub topic_partitions: i32,
    /// Replication factor of created topics; -1 takes the broker's default.
    #[serde(default = "broker_default")]
    pub topic_replication: i32,
    /// With `create_topics`: topics this sink creates (or finds) at most. Senders
    /// choose event types; past the cap an event for a new topic is dead-lettered
    /// with the reason instead of creating it. The DLQ topic does not count.
    #[serde(default = "default_max_topics")]
    pub max_topics: usize,
    /// Topic for events refused for good; without it they go to the dead-letter file.
    pub dlq_topic: Option<String>,
    /// Adds CloudEvents binary-mode headers (`ce_specversion`, `ce_id`, ...).
    #[serde(default)]
    pub cloudevents: bool,
    /// Any librdkafka property, passed through (`security.protocol`, `sasl.mechanism`, ...).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// librdkafka properties whose value is read from an environment variable
    /// (`"sasl.password" = "KAFKA_PASSWORD"`), so secrets stay out of the file.
    #[serde(default)]
    pub librdkafka_from_env: BTreeMap<String, String>,
    /// librdkafka properties whose value is read from a file (a mounted Secret).
    #[serde(default)]
    pub librdkafka_from_file: BTreeMap<String, PathBuf>,
}

const fn default_linger_ms() -> u64 {
    1
}
const fn default_message_timeout_ms() -> u64 {
    120_000
}
const fn default_max_topics() -> usize {
    crate::sink::DEFAULT_MAX_TOPICS
}
const fn broker_default() -> i32 {
    -1
}

/// A pass-through librdkafka property, wherever its value comes from (the file,
/// the environment, a mounted file): properties hookrelay sets from typed keys may
/// not be set raw, and durability may not be weakened. Values read from the
/// environment or a file are checked once read, so those roads do not go around.
fn check_property(k: &str, v: &str, table: &str) -> Result<(), ConfigProblem> {
    let p = |why: String| {
        Err(ConfigProblem::new(
            format!("sinks.kafka.{table}.\"{k}\""),
            why,
        ))
    };
    let key = k.trim().to_ascii_lowercase();
    if let Some((_, typed)) = OWNED.iter().find(|(raw, _)| *raw == key) {
        return p(format!("set sinks.kafka.{typed} instead"));
    }
    let v = v.trim().to_ascii_lowercase();
    if (key == "acks" || key == "request.required.acks") && v != "all" && v != "-1" {
        return p("a 200 promises the event is safe: only acks=all is allowed".into());
    }
    if key == "enable.idempotence" && v != "true" {
        return p("idempotence keeps per-key order across retries; it cannot be turned off".into());
    }
    Ok(())
}

/// Why librdkafka would refuse the property when the producer is created (no
/// such property, or a value it does not take), as it says it; `None` if it
/// takes it. Without a `value` only the name is checked. Setting a property on a
/// fresh configuration object is all this does: nothing connects.
fn unknown_to_librdkafka(key: &str, value: Option<&str>) -> Option<String> {
    let mut c = ClientConfig::new();
    c.set(key, value.unwrap_or_default());
    match c.create_native_config() {
        Ok(_) => None,
        Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_INVALID, _, _, _))
            if value.is_none() =>
        {
            None
        }
        Err(KafkaError::ClientConfig(_, why, _, _)) => Some(why),
        Err(e) => Some(e.to_string()),
    }
}

impl KafkaSinkConfig {
    /// Checks that need no network; secrets are read by [`Self::client_config`].
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem [`Self::validate`] would stop at the first of.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut p =
            |k: &str, why: String| out.push(ConfigProblem::new(format!("sinks.kafka.{k}"), why));
        if self.brokers.trim().is_empty() {
            p("brokers", "must list at least one host:port".into());
        }
        if self.linger_ms > 1000 {
            p(
                "linger_ms",
                "keep it small (0-2 recommended, at most 1000)".into(),
            );
        }
        if self.message_timeout_ms < 1000 {
            p("message_timeout_ms", "must be at least 1000".into());
        }
        for (k, v) in &self.librdkafka {
            if let Err(e) = check_property(k, v, "librdkafka") {
                p(e.key.trim_start_matches("sinks.kafka."), e.why);
            }
        }
        for k in self
            .librdkafka_from_env
            .keys()
            .chain(self.librdkafka_from_file.keys())
        {
            if self.librdkafka.contains_key(k) {
                p(
                    &format!("librdkafka.\"{k}\""),
                    "is also set from env or file; set it once".into(),
                );
            }
        }
        for (table, k, v) in self.passed_through() {
            if let Some(why) = unknown_to_librdkafka(k, v) {
                p(&format!("{table}.\"{k}\""), why);
            }
        }
        if let Some(t) = &self.dlq_topic
            && (!crate::event::is_sane_name(t) || t.len() > crate::event::MAX_TOPIC_LEN)
        {
            p("dlq_topic", format!("'{t}' is not a legal topic name"));
        }
        if self.max_topics == 0 {
            p("max_topics", "must be greater than 0".into());
        }
        if self.topic_partitions == 0 || self.topic_partitions < -1 {
            p(
                "topic_partitions",
                "must be positive, or -1 for the broker's default".into(),
            );
        }
        if self.topic_replication == 0 || self.topic_replication < -1 {
            p(
                "topic_replication",
                "must be positive, or -1 for the broker's default".into(),
            );
        }
        out
    }

    /// Every pass-through property: its table, name, and value when the file
    /// holds it (values from the environment or files are secrets, read later).
    fn passed_through(&self) -> impl Iterator<Item = (&'static str, &str, Option<&str>)> {
        let file = self
            .librdkafka
            .iter()
            .map(|(k, v)| ("librdkafka", k.as_str(), Some(v.as_str())));
        let env = self
            .librdkafka_from_env
            .keys()
            .map(|k| ("librdkafka_from_env", k.as_str(), None));
        let files = self
            .librdkafka_from_file
            .keys()
            .map(|k| ("librdkafka_from_file", k.as_str(), None));
        file.chain(env).chain(files)
    }

    /// The producer's properties: our safe defaults, then the pass-through ones,
    /// then secrets from env and files.
    pub fn client_config(&self) -> Result<ClientConfig, ConfigProblem> {
        let mut c = ClientConfig::new();
        let host = crate::sink::hostname();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("hookrelay@{host}"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("compression.type", self.compression.as_str())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            // Thousands in flight: the forwarder keeps up to forward.max_in_flight queued.
            .set("queue.buffering.max.messages", "1000000")
            // Fail an unknown topic within seconds rather than holding it for the timeout.
            .set("topic.metadata.propagation.max.ms", "10000")
            // A cluster back from an outage is found within 2 s, not librdkafka's 10 s:
            // until then the backlog grows and, once full, its sources get 503s (a
            // 6 s outage took 8 s more to deliver again). A connect attempt per broker
            // every 2 s while it is down costs nothing.
            .set("reconnect.backoff.max.ms", "2000");
        for (k, v) in &self.librdkafka {
            c.set(k, v);
        }
        for (k, var) in &self.librdkafka_from_env {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => {
                    // The value is known only now: held to the same rules as the file's.
                    check_property(k, &v, "librdkafka_from_env")?;
                    c.set(k, v);
                }
                _ => {
                    return Err(ConfigProblem::new(
                        format!("sinks.kafka.librdkafka_from_env.\"{k}\""),
                        format!("environment variable {var} is not set or empty"),
                    ));
                }
            }
        }
        for (k, path) in &self.librdkafka_from_file {
            match std::fs::read_to_string(path) {
                Ok(v) if !v.trim_end().is_empty() => {
                    let v = v.trim_end_matches(['\n', '\r']);
                    check_property(k, v, "librdkafka_from_file")?;
                    c.set(k, v);
                }
                Ok(_) => {
                    return Err(ConfigProblem::new(
                        format!("sinks.kafka.librdkafka_from_file.\"{k}\""),
                        format!("{} is empty", path.display()),
                    ));
                }
                Err(e) => {
                    return Err(ConfigProblem::new(
                        format!("sinks.kafka.librdkafka_from_file.\"{k}\""),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> KafkaSinkConfig {
        toml::from_str(&format!("brokers = \"b:9092\"\n{extra}")).unwrap()
    }

    #[test]
    fn careful_defaults() {
        let k = parse("");
        k.validate().unwrap();
        let c = k.client_config().unwrap();
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("linger.ms"), Some("1"));
        assert_eq!(c.get("compression.type"), Some("none"));
        assert!(c.get("client.id").unwrap().starts_with("hookrelay@"));
        assert_eq!(c.get("reconnect.backoff.max.ms"), Some("2000"));
        // Still the operator's to change.
        let c = parse("[librdkafka]\n\"reconnect.backoff.max.ms\" = \"10000\"")
            .client_config()
            .unwrap();
        assert_eq!(c.get("reconnect.backoff.max.ms"), Some("10000"));
    }

    #[test]
    fn weakening_durability_is_refused() {
        for bad in [
            "[librdkafka]\nacks = \"1\"",
            "[librdkafka]\n\"enable.idempotence\" = \"false\"",
            "[librdkafka]\n\"linger.ms\" = \"5\"",
        ] {
            let err = parse(bad).validate().unwrap_err();
            assert!(err.key.starts_with("sinks.kafka.librdkafka."), "{err:?}");
        }
    }

    /// The environment and mounted files cannot weaken durability either: their
    /// values are checked once read.
    #[test]
    fn weakening_durability_from_env_or_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("acks");
        std::fs::write(&f, "1\n").unwrap();
        let k = parse(&format!(
            "[librdkafka_from_file]\n\"acks\" = {:?}\n",
            f.display().to_string()
        ));
        k.validate().unwrap();
        let err = k.client_config().unwrap_err();
        assert_eq!(
            err.key, "sinks.kafka.librdkafka_from_file.\"acks\"",
            "{err:?}"
        );
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("HOOKRELAY_TEST_IDEMPOTENCE", "false") };
        let k = parse(
            "[librdkafka_from_env]\n\"enable.idempotence\" = \"HOOKRELAY_TEST_IDEMPOTENCE\"\n",
        );
        let err = k.client_config().unwrap_err();
        assert!(err.why.contains("idempotence"), "{err:?}");
        unsafe { std::env::set_var("HOOKRELAY_TEST_LINGER", "50") };
        let k = parse("[librdkafka_from_env]\n\"Linger.MS\" = \"HOOKRELAY_TEST_LINGER\"\n");
        assert!(k.client_config().unwrap_err().why.contains("linger_ms"));
        unsafe { std::env::set_var("HOOKRELAY_TEST_ACKS_ALL", "all") };
        let k = parse("[librdkafka_from_env]\n\"acks\" = \"HOOKRELAY_TEST_ACKS_ALL\"\n");
        assert_eq!(k.client_config().unwrap().get("acks"), Some("all"));
    }

    /// librdkafka's own refusals, found before a producer exists: an unknown
    /// property or a value it does not take, named by key; a property whose
    /// value comes from the environment or a file is checked by name.
    #[test]
    fn properties_librdkafka_does_not_know_are_named() {
        let k = parse(
            "[librdkafka]\n\"no.such.property\" = \"1\"\n\"socket.timeout.ms\" = \"soon\"\n\"sasl.mechanism\" = \"PLAIN\"\n\
             [librdkafka_from_env]\n\"no.such.secret\" = \"X\"\n\"sasl.password\" = \"HOOKRELAY_TEST_UNSET_VAR\"\n",
        );
        let problems: Vec<(String, String)> =
            k.problems().into_iter().map(|p| (p.key, p.why)).collect();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sinks.kafka.librdkafka.\"no.such.property\"",
                "sinks.kafka.librdkafka.\"socket.timeout.ms\"",
                "sinks.kafka.librdkafka_from_env.\"no.such.secret\"",
            ],
            "{problems:?}"
        );
        assert!(
            problems[0].1.contains("No such configuration property"),
            "{problems:?}"
        );
        assert_eq!(k.validate().unwrap_err().key, keys[0]);
    }

    #[test]
    fn secrets_come_from_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "file-secret\n").unwrap();
        let k = parse(&format!(
            "compression = \"zstd\"\n[librdkafka]\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n[librdkafka_from_file]\n\"sasl.password\" = {:?}\n",
            f.display().to_string()
        ));
        k.validate().unwrap();
        let c = k.client_config().unwrap();
        assert_eq!(c.get("sasl.password"), Some("file-secret"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("compression.type"), Some("zstd"));
        let k = parse("[librdkafka_from_env]\n\"sasl.password\" = \"HOOKRELAY_TEST_UNSET_VAR\"\n");
        let err = k.client_config().unwrap_err();
        assert!(err.why.contains("HOOKRELAY_TEST_UNSET_VAR"), "{err:?}");
    }
}
