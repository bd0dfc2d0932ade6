//! From a verified body to an [`Event`]: type, id, topic and key.
//!
//! The event type becomes part of a topic name, so it is held to Kafka's topic
//! alphabet here, at the edge, rather than failing later at the broker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use hyper::HeaderMap;
use serde_json::value::RawValue;
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
    #[error("body is neither JSON nor form-encoded")]
    NotJson,
    #[error("JSON nested deeper than 128 levels")]
    TooDeep,
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

/// One place an event's type or id may be found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A JSON pointer into the body (or into a form body's `payload` field).
    Pointer(String),
    Header(String),
    /// A field of a form-encoded body.
    Form(String),
    Literal(String),
}

/// Places tried in order (`/event/type|/type|form:command`); the first found wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations(Vec<Location>);

impl Locations {
    pub fn parse(spec: &str) -> Result<Locations, String> {
        let mut out = Vec::new();
        for part in spec.split('|').map(str::trim) {
            out.push(if part.starts_with('/') {
                Location::Pointer(part.to_string())
            } else if let Some(h) = part.strip_prefix("header:") {
                if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(format!("'{h}' is not a header name"));
                }
                Location::Header(h.to_ascii_lowercase())
            } else if let Some(f) = part.strip_prefix("form:") {
                Location::Form(f.to_string())
            } else if let Some(l) = part.strip_prefix("literal:") {
                Location::Literal(l.to_string())
            } else {
                return Err(format!(
                    "'{part}' is not a location: use /json/pointer, header:Name, form:field or literal:text"
                ));
            });
        }
        if out.is_empty() {
            return Err("empty location".into());
        }
        Ok(Locations(out))
    }

    fn find(&self, doc: &Doc, headers: &HeaderMap) -> Option<Found> {
        self.0.iter().find_map(|loc| match loc {
            Location::Pointer(p) => classify(raw_pointer(doc.json()?, p)?),
            Location::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|v| Found::Text(v.to_string())),
            Location::Form(f) => doc.form_field(f).map(Found::Text),
            Location::Literal(l) => Some(Found::Text(l.clone())),
        })
    }
}

enum Found {
    Text(String),
    /// A JSON number: fine as an id, not as an event type.
    Number(String),
    /// Present but an object, array or boolean.
    NotText,
}

/// A parsed body: JSON, or form fields (whose `payload` field may carry JSON,
/// as Slack's interactivity and GitHub's form deliveries do).
///
/// JSON stays unparsed (`RawValue`, validated once): only the objects a pointer
/// walks through are split into fields, so the fields that matter cost a scan,
/// not a tree of allocations.
enum Doc<'a> {
    Json(&'a RawValue),
    Form(Vec<(String, String)>, Option<Box<RawValue>>),
}

impl<'a> Doc<'a> {
    fn parse(body: &'a [u8], content_type: &str) -> Option<Doc<'a>> {
        if let Ok(v) = serde_json::from_slice::<&RawValue>(body) {
            return Some(Doc::Json(v));
        }
        let is_form = content_type.split(';').next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
        if !is_form || std::str::from_utf8(body).is_err() {
            return None;
        }
        let fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let payload = fields
            .iter()
            .find(|(k, _)| k == "payload")
            .and_then(|(_, v)| serde_json::from_str(v).ok());
        Some(Doc::Form(fields, payload))
    }

    fn json(&self) -> Option<&RawValue> {
        match self {
            Doc::Json(v) => Some(v),
            Doc::Form(_, payload) => payload.as_deref(),
        }
    }

    fn form_field(&self, name: &str) -> Option<String> {
        match self {
            Doc::Form(fields, _) => fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
            Doc::Json(_) => None,
        }
    }
}

/// Deepest nesting passed on: serde_json's default recursion limit, so every
/// consumer parsing with it (or anything as strict) can read what we publish.
const MAX_DEPTH: usize = 128;

/// Whether brackets outside strings nest deeper than `limit`. One pass, no
/// allocation; the raw-JSON validation does not bound depth by itself.
fn nested_deeper_than(body: &[u8], limit: usize) -> bool {
    if body.len() <= 2 * limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Follows an RFC 6901 JSON pointer through raw JSON.
fn raw_pointer<'a>(root: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    if pointer.is_empty() {
        return Some(root);
    }
    let mut current = root;
    for segment in pointer.strip_prefix('/')?.split('/') {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        let text = current.get().trim_start();
        current = if text.starts_with('{') {
            let fields: HashMap<std::borrow::Cow<'a, str>, &'a RawValue> =
                serde_json::from_str(current.get()).ok()?;
            *fields.get(segment.as_str())?
        } else if text.starts_with('[') {
            let items: Vec<&'a RawValue> = serde_json::from_str(current.get()).ok()?;
            *items.get(segment.parse::<usize>().ok()?)?
        } else {
            return None;
        };
    }
    Some(current)
}

/// What a pointer found: text, a number, nothing (null), or something else.
fn classify(raw: &RawValue) -> Option<Found> {
    let text = raw.get().trim();
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(text).ok().map(Found::Text),
        b'n' => None,
        b'-' | b'0'..=b'9' => serde_json::from_str::<serde_json::Number>(text)
            .ok()
            .map(|n| Found::Number(n.to_string())),
        _ => Some(Found::NotText),
    }
}

/// Provider event names may use `/` (`orders/create`, `/deploy`): it becomes `.`.
fn normalize_event_type(raw: &str) -> String {
    raw.replace('/', ".").trim_matches('.').to_string()
}

/// A source's extraction rules, compiled from its config.
#[derive(Debug, Clone)]
pub struct Extractor {
    source: Arc<str>,
    event_from: Locations,
    /// `None`: the body's digest is the id.
    id_from: Option<Locations>,
    topic: Template,
    key: Template,
    id: Template,
    allow: Option<HashSet<String>>,
}

impl Extractor {
    /// Locations were validated by `config`.
    pub fn new(source: &str, cfg: &SourceConfig) -> Result<Self, String> {
        Ok(Self {
            source: Arc::from(source),
            event_from: Locations::parse(&cfg.event_from())?,
            id_from: cfg.id_from().map(|l| Locations::parse(&l)).transpose()?,
            topic: Template::compile(&cfg.topic),
            key: Template::compile(&cfg.key),
            id: Template::compile(&cfg.id_template),
            allow: cfg.events.as_ref().map(|e| e.iter().cloned().collect()),
        })
    }

    /// The topic events of `event_type` go to (for registering metrics up front).
    pub fn topic_for(&self, event_type: &str) -> String {
        self.topic.render(&self.source, event_type, "")
    }

    pub fn extract(
        &self,
        verified: Verified,
        headers: &HeaderMap,
        content_type: &str,
        received_at_ns: u64,
    ) -> Result<Extracted, ExtractError> {
        let body = verified.body();
        if nested_deeper_than(body, MAX_DEPTH) {
            return Err(ExtractError::TooDeep);
        }
        let doc = Doc::parse(body, content_type).ok_or(ExtractError::NotJson)?;
        let event_type = match self.event_from.find(&doc, headers) {
            Some(Found::Text(t)) => normalize_event_type(&t),
            _ => return Err(ExtractError::MissingEventType),
        };
        if event_type.len() > MAX_EVENT_TYPE_LEN || !is_topic_safe(&event_type) {
            return Err(ExtractError::InvalidEventType);
        }
        if let Some(allow) = &self.allow
            && !allow.contains(&event_type)
        {
            return Ok(Extracted::Filtered { event_type });
        }
        let raw_id = match self.id_from.as_ref().and_then(|l| l.find(&doc, headers)) {
            Some(Found::Text(s) | Found::Number(s)) => s,
            Some(Found::NotText) => return Err(ExtractError::InvalidId),
            // No provider id (e.g. an event about a template, not a message): the body's
            // digest still recognises the provider's retries, which resend the same bytes.
            None => body_digest(body),
        };
        if raw_id.is_empty() || raw_id.len() > MAX_ID_LEN || raw_id.chars().any(|c| c.is_control())
        {
            return Err(ExtractError::InvalidId);
        }
        let source = &*self.source;
        Ok(Extracted::Publish(Event {
            source: self.source.clone(),
            id: self.id.render(source, &event_type, &raw_id),
            topic: self.topic.render(source, &event_type, &raw_id),
            key: self.key.render(source, &event_type, &raw_id),
            content_type: content_type.to_string(),
            received_at_ns,
            body: body.clone(),
            event_type,
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
        Extractor::new("quickassist", &c.sources["quickassist"]).unwrap()
    }

    fn verified(body: &str) -> Verified {
        let v = Verifier::with_secrets(
            crate::verify::Method::Quickassist {
                json_stringify: false,
            },
            &[b"k"],
        )
        .unwrap();
        let mut h = hyper::HeaderMap::new();
        for (name, value) in v.sign(body.as_bytes(), "/").unwrap() {
            h.insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        v.verify(&h, Bytes::from(body.to_string()), "/").unwrap()
    }

    fn publish(x: &Extractor, body: &str) -> Result<Event, ExtractError> {
        match x.extract(verified(body), &HeaderMap::new(), "application/json", 7)? {
            Extracted::Publish(e) => Ok(e),
            Extracted::Filtered { .. } => panic!("filtered"),
        }
    }

    #[test]
    fn nesting_is_bounded_outside_strings_only() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nested_deeper_than(deep(128).as_bytes(), 128));
        assert!(nested_deeper_than(deep(129).as_bytes(), 128));
        // Brackets inside strings, escaped quotes included, are text.
        let in_string = format!(r#"{{"a":"\"{}"}}"#, "[".repeat(500));
        assert!(!nested_deeper_than(in_string.as_bytes(), 128));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert!(nested_deeper_than(objects.as_bytes(), 128));
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
            publish(&x, r#"{"event":"a b"}"#),
            Err(ExtractError::InvalidEventType)
        );
        // Slashes (Shopify topics, Slack commands) become dots.
        assert_eq!(
            publish(&x, r#"{"event":"orders/create"}"#)
                .unwrap()
                .event_type,
            "orders.create"
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
    fn headers_forms_and_fallbacks() {
        let x = extractor(
            "event_from = \"header:x-kind|/kind|form:command\"\nid_from = \"form:trigger_id|header:x-id\"\n",
        );
        let mut h = HeaderMap::new();
        h.insert("x-id", "h-1".parse().unwrap());
        let json = |b: &str, h: &HeaderMap| match x
            .extract(verified(b), h, "application/json", 0)
            .unwrap()
        {
            Extracted::Publish(e) => e,
            Extracted::Filtered { .. } => panic!(),
        };
        let e = json(r#"{"kind":"push"}"#, &h);
        assert_eq!((e.event_type.as_str(), e.id.as_str()), ("push", "push:h-1"));
        let form = "command=%2Fdeploy&trigger_id=t.1";
        match x
            .extract(
                verified(form),
                &HeaderMap::new(),
                "application/x-www-form-urlencoded",
                0,
            )
            .unwrap()
        {
            Extracted::Publish(e) => assert_eq!(
                (e.event_type.as_str(), e.id.as_str()),
                ("deploy", "deploy:t.1")
            ),
            Extracted::Filtered { .. } => panic!(),
        }
        // Form bodies are only read as forms when they say so.
        assert_eq!(
            x.extract(verified(form), &HeaderMap::new(), "text/plain", 0)
                .unwrap_err(),
            ExtractError::NotJson
        );
        // A form whose payload field is JSON: pointers look inside it.
        let y = extractor("event_from = \"/type\"\nid_from = \"/id\"\n");
        let payload = "payload=%7B%22type%22%3A%22block_actions%22%2C%22id%22%3A%229%22%7D";
        match y
            .extract(
                verified(payload),
                &HeaderMap::new(),
                "application/x-www-form-urlencoded",
                0,
            )
            .unwrap()
        {
            Extracted::Publish(e) => assert_eq!(e.id, "block_actions:9"),
            Extracted::Filtered { .. } => panic!(),
        }
        assert!(Locations::parse("nope").is_err());
    }

    #[test]
    fn raw_json_pointers() {
        let doc: &RawValue = serde_json::from_str(
            r#"{"a/b":{"c~d":[10,{"e":"x"}]},"n":null,"f":1.5,"s":"t\u00e9","o":{}}"#,
        )
        .unwrap();
        let at = |p: &str| raw_pointer(doc, p).map(|r| r.get().to_string());
        assert_eq!(at("/a~1b/c~0d/0").as_deref(), Some("10"));
        assert_eq!(at("/a~1b/c~0d/1/e").as_deref(), Some("\"x\""));
        assert_eq!(at("/a~1b/c~0d/2"), None);
        assert_eq!(at("/missing"), None);
        assert_eq!(at("/f/deeper"), None);
        assert!(
            matches!(classify(raw_pointer(doc, "/s").unwrap()), Some(Found::Text(t)) if t == "té")
        );
        assert!(
            matches!(classify(raw_pointer(doc, "/f").unwrap()), Some(Found::Number(n)) if n == "1.5")
        );
        assert!(classify(raw_pointer(doc, "/n").unwrap()).is_none());
        assert!(matches!(
            classify(raw_pointer(doc, "/o").unwrap()),
            Some(Found::NotText)
        ));
        assert_eq!(at("").map(|s| s.len()), Some(doc.get().len()));
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
            .extract(
                verified(r#"{"event":"message.failed"}"#),
                &HeaderMap::new(),
                "",
                0,
            )
            .unwrap();
        assert_eq!(
            f,
            Extracted::Filtered {
                event_type: "message.failed".into()
            }
        );
    }
}
