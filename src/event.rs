//! From a verified body to an [`Event`]: type, id, topic and key.
//!
//! The event type becomes part of a topic name, so it is held to Kafka's topic
//! alphabet here, at the edge, rather than failing later at the broker.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::config::{MAX_EVENT_TYPE_LEN, SourceConfig, is_topic_safe};
use crate::verify::Verified;

/// Longest provider id accepted; ids travel as message keys and AMQP short strings.
pub const MAX_ID_LEN: usize = 200;

/// One accepted webhook, ready for the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub source: Arc<str>,
    pub event_type: String,
    /// The idempotency key: equal ids are the same event (`{event}:{id}` by default).
    pub id: String,
    pub topic: String,
    pub key: String,
    pub content_type: String,
    /// Nanoseconds since the Unix epoch when the request was received.
    pub received_at_ns: u64,
    /// The body exactly as received; it is what was signed and what is published.
    pub body: Bytes,
}

/// Why a verified body is still refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("body is not valid JSON")]
    NotJson,
    #[error("event type is missing or not a string")]
    MissingEventType,
    #[error("event type must match [A-Za-z0-9._-] and be at most 200 bytes")]
    InvalidEventType,
    #[error("event id must be a string or number of at most 200 printable bytes")]
    InvalidId,
}

/// What to do with a well-formed event.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted {
    Publish(Event),
    /// Outside the source's allow-list: answered 200, counted, not published.
    Filtered {
        event_type: String,
    },
}

/// A `{placeholder}` template compiled once at startup.
#[derive(Debug, Clone)]
struct Template(Vec<Part>);

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Source,
    Event,
    Id,
}

impl Template {
    /// Templates are validated by `config`; anything unexpected is kept literally.
    fn compile(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}').map(|c| c + open) else {
                break;
            };
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            parts.push(match &rest[open + 1..close] {
                "source" => Part::Source,
                "event" => Part::Event,
                "id" => Part::Id,
                other => Part::Literal(format!("{{{other}}}")),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Template(parts)
    }

    fn render(&self, source: &str, event: &str, id: &str) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.0 {
            out.push_str(match part {
                Part::Literal(s) => s,
                Part::Source => source,
                Part::Event => event,
                Part::Id => id,
            });
        }
        out
    }
}

/// A source's extraction rules, compiled from its config.
#[derive(Debug, Clone)]
pub struct Extractor {
    source: Arc<str>,
    event_pointer: String,
    id_pointer: String,
    topic: Template,
    key: Template,
    id: Template,
    allow: Option<HashSet<String>>,
}

impl Extractor {
    pub fn new(source: &str, cfg: &SourceConfig) -> Self {
        Self {
            source: Arc::from(source),
            event_pointer: cfg.event_pointer.clone(),
            id_pointer: cfg.id_pointer().to_string(),
            topic: Template::compile(&cfg.topic),
            key: Template::compile(&cfg.key),
            id: Template::compile(&cfg.id_template),
            allow: cfg.events.as_ref().map(|e| e.iter().cloned().collect()),
        }
    }

    pub fn extract(
        &self,
        verified: Verified,
        content_type: &str,
        received_at_ns: u64,
    ) -> Result<Extracted, ExtractError> {
        let body = verified.body();
        let json: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| ExtractError::NotJson)?;
        let event_type = json
            .pointer(&self.event_pointer)
            .and_then(|v| v.as_str())
            .ok_or(ExtractError::MissingEventType)?;
        if event_type.len() > MAX_EVENT_TYPE_LEN || !is_topic_safe(event_type) {
            return Err(ExtractError::InvalidEventType);
        }
        if let Some(allow) = &self.allow
            && !allow.contains(event_type)
        {
            return Ok(Extracted::Filtered {
                event_type: event_type.to_string(),
            });
        }
        let raw_id = match json.pointer(&self.id_pointer) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            // No provider id (e.g. an event about a template, not a message): the body's
            // digest still recognises the provider's retries, which resend the same bytes.
            None | Some(serde_json::Value::Null) => body_digest(body),
            Some(_) => return Err(ExtractError::InvalidId),
        };
        if raw_id.is_empty() || raw_id.len() > MAX_ID_LEN || raw_id.chars().any(|c| c.is_control())
        {
            return Err(ExtractError::InvalidId);
        }
        let source = &*self.source;
        Ok(Extracted::Publish(Event {
            source: self.source.clone(),
            id: self.id.render(source, event_type, &raw_id),
            topic: self.topic.render(source, event_type, &raw_id),
            key: self.key.render(source, event_type, &raw_id),
            event_type: event_type.to_string(),
            content_type: content_type.to_string(),
            received_at_ns,
            body: body.clone(),
        }))
    }
}

/// `sha256:` and the first 128 bits of the body's SHA-256, in hex.
fn body_digest(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("sha256:{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::verify::Verifier;

    fn extractor(extra: &str) -> Extractor {
        let text = format!(
            "[sinks.file]\ndir = \"x\"\n[sources.quickassist]\nscheme = \"quickassist\"\nsecret_env = \"X\"\n{extra}"
        );
        let c = Config::parse(&text).unwrap();
        c.validate().unwrap();
        Extractor::new("quickassist", &c.sources["quickassist"])
    }

    fn verified(body: &str) -> Verified {
        let v = Verifier::new(crate::config::Scheme::Quickassist, b"k".to_vec());
        let mut h = hyper::HeaderMap::new();
        for (name, value) in v.sign(body.as_bytes()) {
            h.insert(name, value.parse().unwrap());
        }
        v.verify(&h, Bytes::from(body.to_string())).unwrap()
    }

    fn publish(x: &Extractor, body: &str) -> Result<Event, ExtractError> {
        match x.extract(verified(body), "application/json", 7)? {
            Extracted::Publish(e) => Ok(e),
            Extracted::Filtered { .. } => panic!("filtered"),
        }
    }

    #[test]
    fn quickassist_defaults() {
        let e = publish(
            &extractor(""),
            r#"{"event":"message.read","data":{"messageId":"msg_1"}}"#,
        )
        .unwrap();
        assert_eq!(e.topic, "quickassist.message.read");
        assert_eq!(e.key, "msg_1");
        assert_eq!(e.id, "message.read:msg_1");
        assert_eq!(e.received_at_ns, 7);
    }

    #[test]
    fn missing_id_falls_back_to_the_body_digest() {
        let x = extractor("");
        let a = publish(&x, r#"{"event":"template.status_update","data":{}}"#).unwrap();
        let b = publish(&x, r#"{"event":"template.status_update","data":{}}"#).unwrap();
        let c = publish(&x, r#"{"event":"template.status_update","data":{"s":1}}"#).unwrap();
        assert!(
            a.id.starts_with("template.status_update:sha256:"),
            "{}",
            a.id
        );
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn bad_bodies() {
        let x = extractor("");
        assert_eq!(publish(&x, "{not json"), Err(ExtractError::NotJson));
        assert_eq!(
            publish(&x, r#"{"data":{}}"#),
            Err(ExtractError::MissingEventType)
        );
        assert_eq!(
            publish(&x, r#"{"event":5}"#),
            Err(ExtractError::MissingEventType)
        );
        assert_eq!(
            publish(&x, r#"{"event":"a/b"}"#),
            Err(ExtractError::InvalidEventType)
        );
        let long = format!(r#"{{"event":"{}"}}"#, "a".repeat(201));
        assert_eq!(publish(&x, &long), Err(ExtractError::InvalidEventType));
        let ok = format!(r#"{{"event":"{}"}}"#, "a".repeat(200));
        assert!(publish(&x, &ok).is_ok());
        assert_eq!(
            publish(&x, r#"{"event":"a","data":{"messageId":{"x":1}}}"#),
            Err(ExtractError::InvalidId)
        );
        assert_eq!(
            publish(&x, r#"{"event":"a","data":{"messageId":"a\nb"}}"#),
            Err(ExtractError::InvalidId)
        );
    }

    #[test]
    fn templates_and_allow_list() {
        let x = extractor(
            "topic = \"wa-{event}\"\nkey = \"{source}/{id}\"\nevents = [\"message.read\"]\n",
        );
        let e = publish(&x, r#"{"event":"message.read","data":{"messageId":42}}"#).unwrap();
        assert_eq!(e.topic, "wa-message.read");
        assert_eq!(e.key, "quickassist/42");
        let f = x
            .extract(verified(r#"{"event":"message.failed"}"#), "", 0)
            .unwrap();
        assert_eq!(
            f,
            Extracted::Filtered {
                event_type: "message.failed".into()
            }
        );
    }
}
