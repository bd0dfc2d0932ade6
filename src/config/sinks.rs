//! `[sinks.NAME]`: named destinations, several of a kind.
//!
//! A table's name is what sources route to (`sink = "bus"`, `sinks = ["bus",
//! "archive"]`), the `sink` label of its metrics and the directory of its backlog
//! under `spool.dir`. `type` says what it is; where the name is itself a kind
//! (`[sinks.kafka]`, the form from before names) `type` may be left out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::load::deserialize_all;
use super::problems::segment;
use super::{Problems, SourceConfig};
use crate::sink::kafka::KafkaSinkConfig;
use crate::sink::nats::NatsSinkConfig;
use crate::sink::rabbitmq::RabbitmqSinkConfig;
use crate::sink::{ConfigProblem, SinkKind};

/// Longest sink name: it names a directory and a metric label.
pub const MAX_SINK_NAME_LEN: usize = 64;

/// Every configured sink by name, in name order.
#[derive(Debug, Clone, Default)]
pub struct SinksConfig {
    by_name: BTreeMap<String, SinkConfig>,
}

/// One named sink: what it is, and the budget of its backlog.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub settings: SinkSettings,
    /// Bytes of spooled events waiting for this sink at most; past it, sources
    /// routed to it get 503 (others do not). Default: `spool.max_bytes` shared
    /// equally by the sinks.
    pub backlog_max_bytes: Option<u64>,
    /// Unconfirmed events in flight to this sink at most (default `forward.max_in_flight`).
    pub max_in_flight: Option<usize>,
}

/// A sink's own settings, by kind.
#[derive(Debug, Clone)]
pub enum SinkSettings {
    File(FileSinkConfig),
    Kafka(KafkaSinkConfig),
    Rabbitmq(RabbitmqSinkConfig),
    Nats(NatsSinkConfig),
}

impl SinkSettings {
    pub fn kind(&self) -> SinkKind {
        match self {
            SinkSettings::File(_) => SinkKind::File,
            SinkSettings::Kafka(_) => SinkKind::Kafka,
            SinkSettings::Rabbitmq(_) => SinkKind::Rabbitmq,
            SinkSettings::Nats(_) => SinkKind::Nats,
        }
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

const fn default_max_topics() -> usize {
    crate::sink::DEFAULT_MAX_TOPICS
}

impl SinksConfig {
    /// Reads `[sinks]`, each sink by its type; a sink that cannot be read is
    /// left out, its problems recorded.
    pub(super) fn read(tables: toml::Table, problems: &mut Problems) -> SinksConfig {
        let mut by_name = BTreeMap::new();
        for (name, value) in tables {
            let at = format!("sinks.{}", segment(&name));
            let toml::Value::Table(table) = value else {
                problems.unread(at, Some("must be a table: [sinks.NAME]".into()));
                continue;
            };
            match SinkConfig::read(&name, table, problems) {
                Some(sink) => {
                    by_name.insert(name, sink);
                }
                None => problems.unread(at, None),
            }
        }
        SinksConfig { by_name }
    }
}

impl SinkConfig {
    fn read(name: &str, mut table: toml::Table, problems: &mut Problems) -> Option<SinkConfig> {
        let at = |key: &str| format!("sinks.{}.{key}", segment(name));
        let kind = match table.remove("type") {
            Some(toml::Value::String(t)) => match SinkKind::from_name(&t) {
                Some(kind) => kind,
                None => {
                    problems.push(
                        at("type"),
                        format!("unknown sink type '{t}', expected one of: {}", kinds_list()),
                    );
                    return None;
                }
            },
            Some(_) => {
                problems.push(at("type"), "must be a string");
                return None;
            }
            None => match SinkKind::from_name(name) {
                Some(kind) => kind,
                None => {
                    problems.push(
                        format!("sinks.{}", segment(name)),
                        format!("say what it is, with type = one of: {}", kinds_list()),
                    );
                    return None;
                }
            },
        };
        let mut take = |key: &str| match table.remove(key) {
            None => None,
            Some(toml::Value::Integer(n)) if n >= 0 => Some(n as u64),
            Some(_) => {
                problems.unread(at(key), Some("must be a non-negative integer".into()));
                None
            }
        };
        let backlog_max_bytes = take("backlog_max_bytes");
        let max_in_flight = take("max_in_flight").map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let within = ["sinks".to_string(), name.to_string()];
        let settings = match kind {
            SinkKind::File => SinkSettings::File(deserialize_all(table, &within, problems)?),
            SinkKind::Kafka => SinkSettings::Kafka(deserialize_all(table, &within, problems)?),
            SinkKind::Rabbitmq => {
                SinkSettings::Rabbitmq(deserialize_all(table, &within, problems)?)
            }
            SinkKind::Nats => SinkSettings::Nats(deserialize_all(table, &within, problems)?),
        };
        Some(SinkConfig {
            settings,
            backlog_max_bytes,
            max_in_flight,
        })
    }
}

fn kinds_list() -> String {
    SinkKind::ALL.map(SinkKind::as_str).join(", ")
}

impl SinksConfig {
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Every sink, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SinkConfig)> {
        self.by_name.iter().map(|(n, s)| (n.as_str(), s))
    }

    pub fn get(&self, name: &str) -> Option<&SinkConfig> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// The sinks a source publishes to: those it names, else the only one there is.
    /// Names not configured are left out (validation refuses them first).
    pub fn for_source(&self, src: &SourceConfig) -> Vec<&str> {
        match src.sink_names() {
            Some(named) => named
                .iter()
                .filter_map(|n| {
                    self.by_name
                        .get_key_value(n.as_str())
                        .map(|(k, _)| k.as_str())
                })
                .collect(),
            None if self.by_name.len() == 1 => self.names(),
            None => Vec::new(),
        }
    }

    /// The file sinks' open files at most, for the descriptor budget.
    pub fn max_open_files(&self) -> u64 {
        self.iter()
            .map(|(_, s)| match &s.settings {
                SinkSettings::File(f) => f.max_open_files as u64,
                _ => 0,
            })
            .sum()
    }

    /// Checks every sink's settings, naming the key under `sinks.NAME`.
    pub(super) fn validate(&self, spool_max_bytes: u64, segment_bytes: u64, out: &mut Problems) {
        if self.by_name.is_empty() {
            out.push(
                "sinks",
                "configure at least one sink, e.g. [sinks.file] dir = \"./data/events\"",
            );
        }
        let mut dirs: Vec<(&str, &PathBuf)> = Vec::new();
        for (name, sink) in &self.by_name {
            let at = format!("sinks.{}", segment(name));
            let key = |k: &str| format!("{at}.{k}");
            if is_reserved(name) {
                out.push(
                    &*at,
                    "the name is taken: spool.dir keeps files of that name (quarantine, LOCK, cursor, hookrelay.lock, *.seg, *.prealloc, *.tmp)",
                );
            }
            if name.len() > MAX_SINK_NAME_LEN || !crate::event::is_sane_name(name) {
                out.push(
                    &*at,
                    format!(
                        "a sink name is at most {MAX_SINK_NAME_LEN} characters of [A-Za-z0-9._-], with no empty segment between dots"
                    ),
                );
            }
            let least = segment_bytes.saturating_mul(4);
            if self.backlog_budget(name, spool_max_bytes) < least {
                let (k, what) = match sink.backlog_max_bytes {
                    Some(_) => (key("backlog_max_bytes"), "must be"),
                    None => (
                        "spool.max_bytes".to_string(),
                        "shared by the sinks without a backlog_max_bytes, leaves each",
                    ),
                };
                out.push(
                    k,
                    format!(
                        "{what} at least 4 x spool.segment_bytes ({least} bytes), so that confirmed segments can be freed"
                    ),
                );
            }
            if sink.max_in_flight == Some(0) {
                out.push(key("max_in_flight"), "must be greater than 0");
            }
            let problems = match &sink.settings {
                SinkSettings::File(f) => {
                    if f.max_open_files == 0 || f.max_topics == 0 {
                        out.push(&*at, "max_open_files and max_topics must be greater than 0");
                    }
                    if let Some((other, _)) = dirs.iter().find(|(_, d)| **d == f.dir) {
                        out.push(
                            key("dir"),
                            format!("sinks.{} writes to the same directory", segment(other)),
                        );
                    }
                    dirs.push((name, &f.dir));
                    Vec::new()
                }
                SinkSettings::Kafka(k) => k.problems(),
                SinkSettings::Rabbitmq(r) => r.problems(),
                SinkSettings::Nats(n) => n.problems(),
            };
            for p in problems {
                let p = renamed(p, sink.settings.kind(), name);
                out.push(p.key, p.why);
            }
        }
        let explicit = self.explicit_budgets();
        if explicit > spool_max_bytes {
            out.push(
                "sinks",
                format!(
                    "the sinks' backlog_max_bytes add up to {explicit}, over spool.max_bytes ({spool_max_bytes})"
                ),
            );
        }
    }

    /// The budgets set, added up (saturating: values come from the file).
    fn explicit_budgets(&self) -> u64 {
        self.iter()
            .filter_map(|(_, s)| s.backlog_max_bytes)
            .fold(0u64, u64::saturating_add)
    }

    /// A sink's backlog budget: its own, or an equal share of what `spool.max_bytes`
    /// leaves after the explicit ones.
    pub fn backlog_budget(&self, name: &str, spool_max_bytes: u64) -> u64 {
        if let Some(b) = self.get(name).and_then(|s| s.backlog_max_bytes) {
            return b;
        }
        let explicit = self.explicit_budgets();
        let shared = self
            .iter()
            .filter(|(_, s)| s.backlog_max_bytes.is_none())
            .count();
        spool_max_bytes.saturating_sub(explicit) / (shared.max(1) as u64)
    }
}

/// Names of what `spool.dir` holds besides backlogs (the quarantine, the files of
/// an earlier version's spool, the process lock): no sink may be named so.
fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        crate::spool::QUARANTINE_DIR | "LOCK" | "cursor" | "cursor.tmp" | "hookrelay.lock"
    ) || [".seg", ".prealloc", ".tmp"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// A sink module's problem, keyed by the sink's name instead of its kind
/// (`sinks.kafka.acks` becomes `sinks.bus.acks`).
pub fn renamed(p: ConfigProblem, kind: SinkKind, name: &str) -> ConfigProblem {
    let from = format!("sinks.{}", kind.as_str());
    match p.key.strip_prefix(&from) {
        Some(rest) => ConfigProblem::new(format!("sinks.{}{rest}", segment(name)), p.why),
        None => p,
    }
}
