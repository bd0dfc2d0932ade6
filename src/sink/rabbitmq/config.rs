//! `[sinks.rabbitmq]`: typed settings and the connection URI with its secret.

use std::path::PathBuf;

use lapin::uri::AMQPUri;
use serde::Deserialize;

use crate::sink::ConfigProblem;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitmqSinkConfig {
    /// `amqp://host:5672/vhost` or `amqps://...`. Credentials may be in it for a laptop;
    /// in production put the password in `password_env` or `password_file`.
    pub uri: String,
    /// Overrides the URI's user name.
    pub username: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (a mounted Secret); trailing newline ignored.
    pub password_file: Option<PathBuf>,
    /// The durable topic exchange events are published to; routing key = topic.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Declare the exchange (and the unroutable queue) on start; `false` only checks
    /// passively that the exchange exists (for brokers where topology is managed elsewhere).
    #[serde(default = "yes")]
    pub declare: bool,
    /// Declare the exchange with an alternate exchange that routes unroutable events
    /// into the durable queue `{exchange}.unroutable`, so none vanish on day one.
    #[serde(default = "yes")]
    pub unroutable_queue: bool,
    /// Events refused for good go here (a durable fanout exchange feeding the
    /// durable queue of the same name, declared with the exchange) instead of the
    /// local dead-letter file, so they stay on the broker where consumers can be
    /// pointed at them; the file still catches what this exchange refuses.
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// Heartbeat negotiated with the broker; a dead peer is noticed within ~2 of these.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u16,
    /// Channels publishing in parallel on the one connection.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// A confirm not received within this is treated as failed and retried.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Connecting (TCP, AMQP handshake, topology, channels) taking longer than this
    /// fails and is retried: a broker that accepts the socket but never answers, as
    /// one mid-restart can, must not hold forwarding up.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Adds CloudEvents AMQP-binding application properties.
    #[serde(default)]
    pub cloudevents: bool,
    /// Prefix of the CloudEvents properties (`cloudEvents:` per the AMQP binding).
    #[serde(default = "default_ce_prefix")]
    pub cloudevents_prefix: String,
}

fn default_exchange() -> String {
    "hookrelay".into()
}
const fn yes() -> bool {
    true
}
const fn default_heartbeat_secs() -> u16 {
    30
}
const fn default_channels() -> usize {
    4
}
const fn default_confirm_timeout_ms() -> u64 {
    30_000
}
const fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_ce_prefix() -> String {
    "cloudEvents:".into()
}

/// An exchange name we may declare: `amq.` is the broker's own, and 200 bytes
/// leaves room in the 255-byte short string for the `.unroutable` suffix.
fn exchange_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with("amq.") || name.len() > 200 {
        return Err("must be a non-empty name not starting with 'amq.', at most 200 bytes".into());
    }
    Ok(())
}

impl RabbitmqSinkConfig {
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem [`Self::validate`] would stop at the first of.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut p = |k: &str, why: String| {
            out.push(ConfigProblem::new(format!("sinks.rabbitmq.{k}"), why));
        };
        if let Err(e) = self.uri.parse::<AMQPUri>() {
            p("uri", format!("not an amqp:// or amqps:// URI: {e}"));
        }
        if let Err(why) = exchange_name(&self.exchange) {
            p("exchange", why);
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            if let Err(why) = exchange_name(dlx) {
                p("dead_letter_exchange", why);
            } else if *dlx == self.exchange || *dlx == self.unroutable_name() {
                // Dead letters published to either would be routed as events again.
                p(
                    "dead_letter_exchange",
                    format!(
                        "must differ from the exchange '{}' and its unroutable exchange '{}'",
                        self.exchange,
                        self.unroutable_name()
                    ),
                );
            }
        }
        if self.cloudevents_prefix.len() > 200 {
            p(
                "cloudevents_prefix",
                "must be at most 200 bytes (with the attribute name, an AMQP short string)".into(),
            );
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            p(
                "password_file",
                "set only one of password_env and password_file".into(),
            );
        }
        if self.channels == 0 || self.channels > 64 {
            p("channels", "must be between 1 and 64".into());
        }
        if self.confirm_timeout_ms < 100 {
            p("confirm_timeout_ms", "must be at least 100".into());
        }
        if self.connect_timeout_ms < 100 {
            p("connect_timeout_ms", "must be at least 100".into());
        }
        out
    }

    /// The URI with credentials and heartbeat applied.
    pub fn resolved_uri(&self) -> Result<AMQPUri, ConfigProblem> {
        let mut uri: AMQPUri = self.uri.parse().map_err(|e| {
            ConfigProblem::new(
                "sinks.rabbitmq.uri".to_string(),
                format!("not an AMQP URI: {e}"),
            )
        })?;
        if let Some(u) = &self.username {
            uri.authority.userinfo.username = u.clone();
        }
        if let Some(var) = &self.password_env {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => uri.authority.userinfo.password = v,
                _ => {
                    return Err(ConfigProblem::new(
                        "sinks.rabbitmq.password_env",
                        format!("environment variable {var} is not set or empty"),
                    ));
                }
            }
        }
        if let Some(path) = &self.password_file {
            let v = std::fs::read_to_string(path).map_err(|e| {
                ConfigProblem::new(
                    "sinks.rabbitmq.password_file".to_string(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let v = v.trim_end_matches(['\n', '\r']);
            if v.is_empty() {
                return Err(ConfigProblem::new(
                    "sinks.rabbitmq.password_file",
                    format!("{} is empty", path.display()),
                ));
            }
            uri.authority.userinfo.password = v.to_string();
        }
        uri.query.heartbeat = Some(self.heartbeat_secs);
        Ok(uri)
    }

    /// The alternate exchange and queue that catch unroutable events.
    pub fn unroutable_name(&self) -> String {
        format!("{}.unroutable", self.exchange)
    }

    /// Where to connect, for logs and errors: the URI without credentials.
    pub fn display_target(&self) -> String {
        match self.uri.parse::<AMQPUri>() {
            Ok(u) => format!(
                "{}://{}:{}/{}",
                if self.uri.starts_with("amqps") {
                    "amqps"
                } else {
                    "amqp"
                },
                u.authority.host,
                u.authority.port,
                u.vhost
            ),
            Err(_) => "(invalid uri)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> RabbitmqSinkConfig {
        toml::from_str(&format!(
            "uri = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_secrets() {
        let c = parse("");
        c.validate().unwrap();
        assert_eq!(c.exchange, "hookrelay");
        assert_eq!(c.unroutable_name(), "hookrelay.unroutable");
        let u = c.resolved_uri().unwrap();
        assert_eq!(u.query.heartbeat, Some(30));
        assert_eq!(u.authority.userinfo.password, "guest");
        assert_eq!(c.display_target(), "amqp://127.0.0.1:5672//");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = parse(&format!(
            "username = \"relay\"\npassword_file = {:?}\n",
            f.display().to_string()
        ));
        let u = c.resolved_uri().unwrap();
        assert_eq!(
            (
                u.authority.userinfo.username.as_str(),
                u.authority.userinfo.password.as_str()
            ),
            ("relay", "s3cret")
        );
        let c = parse("password_env = \"HOOKRELAY_TEST_UNSET_VAR\"\n");
        assert!(
            c.resolved_uri()
                .unwrap_err()
                .why
                .contains("HOOKRELAY_TEST_UNSET_VAR")
        );
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            parse("exchange = \"amq.topic\"")
                .validate()
                .unwrap_err()
                .key,
            "sinks.rabbitmq.exchange"
        );
        assert_eq!(
            parse("channels = 0").validate().unwrap_err().key,
            "sinks.rabbitmq.channels"
        );
        assert_eq!(
            parse("connect_timeout_ms = 0").validate().unwrap_err().key,
            "sinks.rabbitmq.connect_timeout_ms"
        );
        let c: RabbitmqSinkConfig = toml::from_str("uri = \"http://x\"").unwrap();
        assert_eq!(c.validate().unwrap_err().key, "sinks.rabbitmq.uri");
    }

    #[test]
    fn the_dead_letter_exchange_is_a_name_of_its_own() {
        assert_eq!(parse("").dead_letter_exchange, None);
        let ok = parse("dead_letter_exchange = \"hookrelay.dead\"");
        ok.validate().unwrap();
        assert_eq!(ok.dead_letter_exchange.as_deref(), Some("hookrelay.dead"));
        let long = format!("dead_letter_exchange = \"{}\"", "d".repeat(201));
        for bad in [
            "dead_letter_exchange = \"\"",
            "dead_letter_exchange = \"amq.fanout\"",
            long.as_str(),
            "dead_letter_exchange = \"hookrelay\"",
            "dead_letter_exchange = \"hookrelay.unroutable\"",
            "exchange = \"events\"\ndead_letter_exchange = \"events\"",
            "exchange = \"events\"\ndead_letter_exchange = \"events.unroutable\"",
            // Refused even with the unroutable queue off: turning it on later must
            // not make the two collide.
            "unroutable_queue = false\ndead_letter_exchange = \"hookrelay.unroutable\"",
        ] {
            let err = parse(bad).validate().unwrap_err();
            assert_eq!(err.key, "sinks.rabbitmq.dead_letter_exchange", "{bad}");
        }
        let len200 = parse(&format!("dead_letter_exchange = \"{}\"", "d".repeat(200)));
        len200.validate().unwrap();
        assert!(
            toml::from_str::<RabbitmqSinkConfig>("uri = \"amqp://x\"\ndead_letter_exchange = 3")
                .is_err()
        );
    }
}
