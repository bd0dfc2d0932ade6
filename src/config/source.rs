//! One webhook sender's settings and their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::problems::segment;
use super::{ConfigError, Problems, SinksConfig, invalid};
use crate::event::{MAX_EVENT_TYPE_LEN, MAX_SOURCE_LEN, MAX_TOPIC_LEN, is_sane_name};
use crate::verify::scheme::{IdRules, Scheme};

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
        // Untagged, serde would only say that no variant matched.
        let either = Either::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a string or a list of strings"))?;
        Ok(match either {
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
    /// Several sinks, each receiving every event (fan-out); instead of `sink`.
    pub sinks: Option<Vec<String>>,
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

impl SourceConfig {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// Every check of one source; `sinks` are the configured sinks.
    pub(super) fn validate(&self, name: &str, sinks: &SinksConfig, out: &mut Problems) {
        let at = format!("sources.{}", segment(name));
        let key = |field: &str| format!("{at}.{field}");
        if !is_sane_name(name) || name.starts_with('_') || name.len() > MAX_SOURCE_LEN {
            out.push(
                &*at,
                "source names use [A-Za-z0-9._-], do not start with '_' or '.', have no '..', do not end with '.', and are at most 100 bytes",
            );
        }
        if self.secret_env.0.is_empty() && self.secret_file.0.is_empty() {
            out.push(
                key("secret_env"),
                "set secret_env (an environment variable's name) or secret_file, or lists of them while rotating",
            );
        }
        self.validate_scheme_options(&at, out);
        // The rendered topic must be a sane topic name for any legal event type (event
        // types are sane names themselves, so the shortest and the longest tell).
        let render = |event: &str| {
            self.topic
                .replace("{source}", name)
                .replace("{event}", event)
        };
        let (shortest, longest) = (render("e"), render(&"e".repeat(MAX_EVENT_TYPE_LEN)));
        if check_template(&key("topic"), &self.topic, &["source", "event"], out)
            && (!is_sane_name(&shortest)
                || !is_sane_name(&longest)
                || longest.len() > MAX_TOPIC_LEN)
        {
            out.push(
                key("topic"),
                format!(
                    "'{}' must render to [A-Za-z0-9._-] with no empty segment ('..', a leading or trailing '.') and at most 249 bytes with a 200-byte event type",
                    self.topic
                ),
            );
        }
        check_template(&key("key"), &self.key, &["source", "event", "id"], out);
        check_template(
            &key("id_template"),
            &self.id_template,
            &["source", "event", "id"],
            out,
        );
        for (field, loc) in [
            ("event_from", self.event_from.as_ref()),
            ("id_from", self.id_from.as_ref()),
        ] {
            if let Some(loc) = loc
                && let Err(why) = crate::event::Locations::parse(loc)
            {
                out.push(key(field), why);
            }
        }
        for e in self.events.iter().flatten() {
            if !is_sane_name(e) || e.len() > MAX_EVENT_TYPE_LEN {
                out.push(
                    key("events"),
                    format!(
                        "'{e}' is not a valid event type ([A-Za-z0-9._-], no empty segment, at most 200 bytes)"
                    ),
                );
            }
        }
        let routed = sinks.for_source(self);
        if self.ack == AckMode::Broker {
            let not_broker = routed
                .iter()
                .find(|n| !sinks.get(n).is_some_and(|s| s.settings.kind().is_broker()));
            if let Some(n) = not_broker {
                out.push(
                    key("ack"),
                    format!(
                        "ack = \"broker\" needs broker sinks (kafka, rabbitmq, nats); sink '{n}' supports only \"durable\""
                    ),
                );
            }
        }
        if self.ack_timeout_ms == 0 || self.ack_timeout_ms > 15_000 {
            out.push(
                key("ack_timeout_ms"),
                "must be between 1 and 15000: a request waits at most 20 s for its event to be stored, and a dedup reservation lives 30 s",
            );
        }
        let names = sinks.names();
        let field = if self.sinks.is_some() {
            "sinks"
        } else {
            "sink"
        };
        match (&self.sink, &self.sinks) {
            (Some(_), Some(_)) => out.push(key("sinks"), "set sink or sinks, not both"),
            (None, Some(list)) if list.is_empty() => {
                out.push(key("sinks"), "name at least one sink");
            }
            (None, None) if names.len() > 1 => out.push(
                key("sink"),
                format!(
                    "several sinks are configured ({}): name one, or several with sinks = [...]",
                    names.join(", ")
                ),
            ),
            _ => {}
        }
        let named = self.sink_names().unwrap_or_default();
        for (i, s) in named.iter().enumerate() {
            // A sink that is there but could not be read is reported already.
            let unread = out.is_unread(&format!("sinks.{}", segment(s)));
            if !names.contains(&s.as_str()) && !unread {
                out.push(
                    key(field),
                    format!("unknown sink '{s}', configured sinks: {}", names.join(", ")),
                );
            }
            if named[..i].contains(s) {
                out.push(key(field), format!("names sink '{s}' twice"));
            }
        }
    }
}

impl SourceConfig {
    /// The sinks this source names (`sink` or `sinks`), if it names any.
    pub fn sink_names(&self) -> Option<Vec<String>> {
        match (&self.sink, &self.sinks) {
            (_, Some(list)) => Some(list.clone()),
            (Some(one), None) => Some(vec![one.clone()]),
            (None, None) => None,
        }
    }

    /// Options that only some schemes take, each checked against the scheme;
    /// `at` is the source's key.
    fn validate_scheme_options(&self, at: &str, out: &mut Problems) {
        let key = |field: &str| format!("{at}.{field}");
        let s = self.scheme;
        for (field, set, scheme, ok) in [
            (
                "signature_body",
                self.signature_body != SignatureBody::Raw,
                "quickassist",
                s == Scheme::Quickassist,
            ),
            (
                "verify_token_env",
                self.verify_token_env.is_some() || self.verify_token_file.is_some(),
                "meta",
                s == Scheme::Meta,
            ),
            (
                "public_url",
                self.public_url.is_some(),
                "twilio",
                s == Scheme::Twilio,
            ),
            ("hmac", self.hmac.is_some(), "hmac", s == Scheme::Hmac),
            (
                "token_header",
                self.token_header.is_some(),
                "header-token",
                s == Scheme::HeaderToken,
            ),
        ] {
            if set && !ok {
                out.push(key(field), format!("only applies to scheme = \"{scheme}\""));
            }
        }
        match s {
            Scheme::Twilio => match &self.public_url {
                Some(u) if u.starts_with("https://") || u.starts_with("http://") => {}
                _ => out.push(
                    key("public_url"),
                    "twilio signs the URL it calls: set public_url = \"https://your.host\"",
                ),
            },
            Scheme::Hmac if self.hmac.is_none() => out.push(
                key("hmac"),
                "scheme = \"hmac\" needs [sources.NAME.hmac] with at least header = \"...\"",
            ),
            Scheme::HeaderToken if self.token_header.as_deref().is_none_or(str::is_empty) => {
                out.push(
                    key("token_header"),
                    "scheme = \"header-token\" needs token_header",
                );
            }
            Scheme::Meta if self.verify_token_env.is_none() && self.verify_token_file.is_none() => {
                out.push(
                    key("verify_token_env"),
                    "meta's GET subscription check needs verify_token_env or verify_token_file",
                );
            }
            _ => {}
        }
        if let Some(h) = &self.hmac {
            if hyper::header::HeaderName::from_bytes(h.header.as_bytes()).is_err() {
                out.push(
                    key("hmac.header"),
                    format!("'{}' is not a header name", h.header),
                );
            }
            check_template(
                &key("hmac.content"),
                &h.content,
                &["body", "timestamp", "id"],
                out,
            );
            if h.content.contains("{timestamp}") && h.timestamp_header.is_none() {
                out.push(
                    key("hmac.timestamp_header"),
                    "content uses {timestamp}: name its header",
                );
            }
            if h.content.contains("{id}") && h.id_header.is_none() {
                out.push(key("hmac.id_header"), "content uses {id}: name its header");
            }
        }
        if let Some(r) = &self.rate_limit
            && (!(r.per_second > 0.0 && r.per_second.is_finite()) || r.burst == 0)
        {
            out.push(key("rate_limit"), "per_second must be > 0 and burst >= 1");
        }
        for c in &self.allowed_cidrs {
            if crate::guard::parse_net(c).is_none() {
                out.push(
                    key("allowed_cidrs"),
                    format!("'{c}' is not a CIDR or IP address"),
                );
            }
        }
    }
}

impl SourceConfig {
    /// The scheme's id and type shapes, when the source uses the scheme's own
    /// locations (see [`IdRules`]).
    pub fn id_rules(&self) -> Option<IdRules> {
        if self.event_from.is_some() || self.id_from.is_some() {
            return None;
        }
        self.scheme.id_rules()
    }

    /// The source's extractor: its locations, templates and id rules.
    pub fn extractor(&self, name: &str) -> Result<crate::event::Extractor, ConfigError> {
        let (event_from, id_from) = (self.event_from(), self.id_from());
        crate::event::Extractor::new(crate::event::ExtractorSpec {
            source: name,
            event_from: &event_from,
            id_from: id_from.as_deref(),
            topic: &self.topic,
            key: &self.key,
            id_template: &self.id_template,
            events: self.events.as_deref(),
            id_unsigned: self.id_is_unsigned(),
            id_rules: self.id_rules(),
        })
        .map_err(|why| invalid(format!("sources.{}", segment(name)), why))
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
        let mut out: Vec<String> = self
            .scheme
            .signed_headers()
            .iter()
            .map(|h| h.to_string())
            .collect();
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
        let key = |field: &str| format!("sources.{}.{field}", segment(name));
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

/// Rejects templates with placeholders other than `allowed`, or unbalanced
/// braces; `false` when it did.
fn check_template(key: &str, template: &str, allowed: &[&str], out: &mut Problems) -> bool {
    let why = template_problem(template, allowed);
    if let Some(why) = &why {
        out.push(key, why);
    }
    why.is_none()
}

fn template_problem(template: &str, allowed: &[&str]) -> Option<String> {
    if template.is_empty() {
        return Some("must not be empty".into());
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Some(format!("unclosed '{{' in '{template}'"));
        };
        let name = &after[..close];
        if !allowed.contains(&name) {
            return Some(format!(
                "unknown placeholder '{{{name}}}' in '{template}', expected one of: {}",
                allowed
                    .iter()
                    .map(|a| format!("{{{a}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Some(format!("stray '}}' in '{template}'"));
    }
    None
}
