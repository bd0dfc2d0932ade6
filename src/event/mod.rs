//! From a verified body to an [`Event`]: type, id, topic and key.
//!
//! The event type becomes part of a topic name, so it is held to Kafka's topic
//! alphabet here, at the edge, rather than failing later at the broker.

mod pointer;
pub mod trace;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use hyper::HeaderMap;
use sha2::{Digest, Sha256};

use crate::verify::Verified;
use crate::verify::scheme::IdRules;
use pointer::{Found, Pointer, walk};

// Every value that reaches the spool is bounded here, at the edge, to what the record
// format (16-bit string lengths) and every sink can carry: an AMQP short string is at
// most 255 bytes, a Kafka topic at most 249. Nothing is cut later, nothing panics later.

/// Longest event type: it becomes part of a topic name.
pub const MAX_EVENT_TYPE_LEN: usize = 200;
/// Longest provider id (the `{id}` of the templates).
pub const MAX_ID_LEN: usize = 200;
/// Longest event id (the rendered `id_template`): the AMQP `message-id`, a short string.
pub const MAX_EVENT_ID_LEN: usize = 255;
/// Longest message key (the rendered `key` template).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest topic: Kafka's limit; it also fits an AMQP routing key and, with `.jsonl`,
/// a file name (255 bytes).
pub const MAX_TOPIC_LEN: usize = 249;
/// Longest content type: the AMQP `content-type` property is a short string.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;
/// Longest source name (it is part of topics and metric labels).
pub const MAX_SOURCE_LEN: usize = 100;
/// The content type published when the request has none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// Characters allowed in names that end up in topics: Kafka's legal topic characters.
pub fn is_topic_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A name every broker and file system takes as it is: the topic alphabet and no
/// empty segment (no leading or trailing `.`, no `..`), so never `.`, `..` or a
/// hidden file.
pub fn is_sane_name(s: &str) -> bool {
    is_topic_safe(s) && !s.starts_with('.') && !s.ends_with('.') && !s.contains("..")
}

/// The request's content type, as it will be published: absent or empty means
/// [`DEFAULT_CONTENT_TYPE`]; otherwise one printable ASCII value of at most
/// [`MAX_CONTENT_TYPE_LEN`] bytes.
pub fn content_type(headers: &HeaderMap) -> Result<&str, ExtractError> {
    let mut values = headers.get_all(hyper::header::CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(DEFAULT_CONTENT_TYPE);
    };
    if values.next().is_some() {
        return Err(ExtractError::ContentType);
    }
    match value.to_str() {
        Ok("") => Ok(DEFAULT_CONTENT_TYPE),
        Ok(text) if text.len() <= MAX_CONTENT_TYPE_LEN => Ok(text),
        _ => Err(ExtractError::ContentType),
    }
}

/// One webhook on its way to the sinks. Made only by extraction from a verified
/// request ([`Extractor::extract`], as an [`Accepted`]) or by decoding the spool
/// record such an event was written as; its fields are read, never set, elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    source: Arc<str>,
    event_type: String,
    id: String,
    topic: String,
    key: String,
    content_type: String,
    received_at_ns: u64,
    body: Bytes,
    /// The W3C `traceparent` published with it (see [`trace`]); empty for events
    /// stored before version 4 of the spool record, which carried none.
    traceparent: String,
}

impl Event {
    /// The configured source it came through.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The idempotency key: equal ids are the same event (`{event}:{id}` by default).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Nanoseconds since the Unix epoch when the request was received.
    pub fn received_at_ns(&self) -> u64 {
        self.received_at_ns
    }

    /// Exactly the bytes that were signed (as received, or the canonical form a
    /// scheme signs instead): what is published.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Rebuilds an event from its spool record. Only an [`Accepted`] event is ever
    /// written as one (the spool takes nothing else), so this reads back what the
    /// edge accepted.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_record(
        source: Arc<str>,
        event_type: String,
        id: String,
        topic: String,
        key: String,
        content_type: String,
        received_at_ns: u64,
        body: Bytes,
        traceparent: String,
    ) -> Event {
        Event {
            source,
            event_type,
            id,
            topic,
            key,
            content_type,
            received_at_ns,
            body,
            traceparent,
        }
    }

    /// The `traceparent` header value its messages carry, or empty (see [`trace`]).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Points the body at another buffer holding the same bytes (the spool frame the
    /// event was written into), so the event holds one exact allocation.
    pub(crate) fn share_body(&mut self, same: Bytes) {
        debug_assert_eq!(same, self.body);
        self.body = same;
    }
}

/// An event fresh from the edge: what the spool, and `ack = "broker"` publishing,
/// take. Only [`Extractor::extract`] makes one, from a [`Verified`] request, so the
/// type system keeps unverified bytes out of both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted(Event);

impl Accepted {
    pub fn into_event(self) -> Event {
        self.0
    }

    /// An event the edge accepted once, coming back from the dead letters: the only
    /// way in besides extraction. The caller holds it to the edge's bounds again
    /// first, since the file it comes from can be edited by hand.
    pub(crate) fn restored(event: Event) -> Accepted {
        Accepted(event)
    }

    /// Joins the request's trace: its messages carry this `traceparent`.
    pub fn traced(mut self, trace: &trace::TraceContext) -> Accepted {
        self.0.traceparent = trace.traceparent();
        self
    }
}

impl std::ops::Deref for Accepted {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.0
    }
}

/// Events for tests, field by field: only tests may build one by hand.
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct EventBuilder(Event);

#[cfg(test)]
impl EventBuilder {
    /// A `message.read` of source `q`, id and key from `n`, a small JSON body.
    pub(crate) fn new(n: u64) -> EventBuilder {
        EventBuilder(Event {
            source: Arc::from("q"),
            event_type: "message.read".into(),
            id: format!("message.read:{n}"),
            topic: "q.message.read".into(),
            key: format!("{n}"),
            content_type: DEFAULT_CONTENT_TYPE.into(),
            received_at_ns: now_ns(),
            body: Bytes::from(format!("{{\"n\":{n}}}")),
            traceparent: String::new(),
        })
    }
    pub(crate) fn source(mut self, v: &str) -> Self {
        self.0.source = Arc::from(v);
        self
    }
    pub(crate) fn id(mut self, v: impl Into<String>) -> Self {
        self.0.id = v.into();
        self
    }
    pub(crate) fn topic(mut self, v: impl Into<String>) -> Self {
        self.0.topic = v.into();
        self
    }
    pub(crate) fn key(mut self, v: impl Into<String>) -> Self {
        self.0.key = v.into();
        self
    }
    pub(crate) fn content_type(mut self, v: impl Into<String>) -> Self {
        self.0.content_type = v.into();
        self
    }
    pub(crate) fn received_at_ns(mut self, v: u64) -> Self {
        self.0.received_at_ns = v;
        self
    }
    pub(crate) fn body(mut self, v: impl Into<Bytes>) -> Self {
        self.0.body = v.into();
        self
    }
    pub(crate) fn traceparent(mut self, v: impl Into<String>) -> Self {
        self.0.traceparent = v.into();
        self
    }
    pub(crate) fn build(self) -> Event {
        self.0
    }
    pub(crate) fn accepted(self) -> Accepted {
        Accepted(self.0)
    }
}

/// Nanoseconds since the Unix epoch: the clock events are stamped with.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An event's clock reading (nanoseconds since the epoch) as RFC 3339, UTC, in
/// milliseconds: how operators' tools show it.
pub fn rfc3339_millis(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Why a verified body is still refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("body is neither JSON nor form-encoded")]
    NotJson,
    #[error("JSON nested deeper than 127 levels")]
    TooDeep,
    #[error("event type is missing or not a string")]
    MissingEventType,
    #[error(
        "event type must match [A-Za-z0-9._-] ('/' becomes '.'), be at most 200 bytes, and have no empty segment (no leading or trailing '.', no '..')"
    )]
    InvalidEventType,
    #[error("event id must be a string or number of at most 200 printable bytes")]
    InvalidId,
    #[error("content-type must be one printable ASCII value of at most 255 bytes")]
    ContentType,
    #[error("the event id (id_template) would be longer than 255 bytes")]
    EventIdTooLong,
    #[error("the message key (key template) would be longer than 1024 bytes")]
    KeyTooLong,
    #[error("the topic would not be a legal topic name of at most 249 bytes")]
    InvalidTopic,
}

/// What to do with a well-formed event.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted {
    Publish(Accepted),
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

/// Why a location spec (`event_from`, `id_from`) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("'{0}' is not a header name")]
    HeaderName(String),
    #[error("'{0}' is not a location: use /json/pointer, header:Name, form:field or literal:text")]
    Unknown(String),
    #[error("empty location")]
    Empty,
}

/// Places tried in order (`/event/type|/type|form:command`); the first found wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations(Vec<Location>);

impl Locations {
    pub fn parse(spec: &str) -> Result<Locations, LocationError> {
        let mut out = Vec::new();
        for part in spec.split('|').map(str::trim) {
            out.push(if part.starts_with('/') {
                Location::Pointer(part.to_string())
            } else if let Some(h) = part.strip_prefix("header:") {
                if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(LocationError::HeaderName(h.to_string()));
                }
                Location::Header(h.to_ascii_lowercase())
            } else if let Some(f) = part.strip_prefix("form:") {
                Location::Form(f.to_string())
            } else if let Some(l) = part.strip_prefix("literal:") {
                Location::Literal(l.to_string())
            } else {
                return Err(LocationError::Unknown(part.to_string()));
            });
        }
        if out.is_empty() {
            return Err(LocationError::Empty);
        }
        Ok(Locations(out))
    }

    fn pointers(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|loc| match loc {
            Location::Pointer(p) => Some(p.as_str()),
            _ => None,
        })
    }

    fn find(&self, doc: &Doc, headers: &HeaderMap) -> Option<Found> {
        self.0.iter().find_map(|loc| match loc {
            Location::Pointer(p) => doc.pointer(p),
            Location::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|v| Found::Text(v.to_string())),
            Location::Form(f) => doc.form_field(f).map(Found::Text),
            Location::Literal(l) => Some(Found::Text(l.clone())),
        })
    }
}

/// A body as far as extraction cares: what each JSON pointer the source asks
/// about found, and the fields of a form body.
struct Doc<'p> {
    pointers: &'p [Pointer],
    /// Per pointer: `None` when absent or null.
    found: Vec<Option<Found>>,
    form: Option<Vec<(String, String)>>,
}

impl<'p> Doc<'p> {
    /// JSON, or a form (whose `payload` field may carry JSON, as Slack's
    /// interactivity and GitHub's form deliveries do: pointers look inside it).
    fn parse(
        body: &[u8],
        content_type: &str,
        pointers: &'p [Pointer],
    ) -> Result<Doc<'p>, ExtractError> {
        match walk(body, pointers) {
            Ok(found) => {
                return Ok(Doc {
                    pointers,
                    found,
                    form: None,
                });
            }
            Err(ExtractError::NotJson) => {}
            Err(e) => return Err(e),
        }
        let is_form = content_type.split(';').next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
        if !is_form || std::str::from_utf8(body).is_err() {
            return Err(ExtractError::NotJson);
        }
        let fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let found = fields
            .iter()
            .find(|(k, _)| k == "payload")
            .and_then(|(_, v)| walk(v.as_bytes(), pointers).ok())
            .unwrap_or_else(|| vec![None; pointers.len()]);
        Ok(Doc {
            pointers,
            found,
            form: Some(fields),
        })
    }

    fn pointer(&self, text: &str) -> Option<Found> {
        let i = self.pointers.iter().position(|p| p.text == text)?;
        self.found.get(i)?.clone()
    }

    fn form_field(&self, name: &str) -> Option<String> {
        self.form
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// Provider event names may use `/` (`orders/create`, Slack's `/deploy`): a leading
/// one is dropped, the others become `.`. What results must be a sane name.
fn event_type_from(raw: &str) -> Result<String, ExtractError> {
    let mapped = raw.strip_prefix('/').unwrap_or(raw).replace('/', ".");
    if mapped.len() > MAX_EVENT_TYPE_LEN || !is_sane_name(&mapped) {
        return Err(ExtractError::InvalidEventType);
    }
    Ok(mapped)
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
    /// Every JSON pointer of `event_from` and `id_from`, looked up in one pass.
    pointers: Vec<Pointer>,
    /// The id may come from outside the signature (see [`Extractor::replay_guard`]).
    guarded: bool,
    /// The scheme's stricter rules, if any (see `config::Strict`).
    strict: Option<IdRules>,
}

/// What an [`Extractor`] is made of: one source's rules, as its configuration
/// resolved them (`config::SourceConfig::extractor` builds one).
#[derive(Debug, Clone)]
pub struct ExtractorSpec<'a> {
    pub source: &'a str,
    pub event_from: &'a str,
    /// `None`: the body's digest is the id.
    pub id_from: Option<&'a str>,
    pub topic: &'a str,
    pub key: &'a str,
    pub id_template: &'a str,
    /// The allow-list of event types, if any.
    pub events: Option<&'a [String]>,
    /// The id may come from outside what the signature covers (a replay guard is kept).
    pub id_unsigned: bool,
    /// The provider's own shapes for types and ids, if they must be held to them.
    pub id_rules: Option<IdRules>,
}

impl Extractor {
    pub fn new(spec: ExtractorSpec<'_>) -> Result<Self, LocationError> {
        let event_from = Locations::parse(spec.event_from)?;
        let id_from = spec.id_from.map(Locations::parse).transpose()?;
        let mut pointers: Vec<Pointer> = Vec::new();
        for p in event_from
            .pointers()
            .chain(id_from.iter().flat_map(|l| l.pointers()))
        {
            if !pointers.iter().any(|q| q.text == p) {
                pointers.push(Pointer::parse(p));
            }
        }
        Ok(Self {
            source: Arc::from(spec.source),
            event_from,
            id_from,
            topic: Template::compile(spec.topic),
            key: Template::compile(spec.key),
            id: Template::compile(spec.id_template),
            allow: spec.events.map(|e| e.iter().cloned().collect()),
            pointers,
            guarded: spec.id_unsigned,
            strict: spec.id_rules,
        })
    }

    /// For a source whose event id the signature does not cover (GitHub's delivery
    /// header, say), a second dedup key made of the event type and a digest of the
    /// signed body: the same body sent again under a fresh id is then a duplicate.
    /// `None` where the id is part of what was signed.
    pub fn replay_guard(&self, event: &Event) -> Option<String> {
        self.guarded
            .then(|| format!("{}:{}", event.event_type, body_digest(&event.body)))
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
        let doc = Doc::parse(body, content_type, &self.pointers)?;
        let event_type = match self.event_from.find(&doc, headers) {
            Some(Found::Text(t)) => event_type_from(&t)?,
            _ => return Err(ExtractError::MissingEventType),
        };
        if let Some(allow) = &self.allow
            && !allow.contains(&event_type)
        {
            return Ok(Extracted::Filtered { event_type });
        }
        let raw_id = match self.id_from.as_ref().and_then(|l| l.find(&doc, headers)) {
            Some(Found::Text(s) | Found::Number(s)) => s,
            Some(Found::NotText) => return Err(ExtractError::InvalidId),
            None if self.strict.is_some() => return Err(ExtractError::InvalidId),
            // No provider id (e.g. an event about a template, not a message): the body's
            // digest still recognises the provider's retries, which resend the same bytes.
            None => body_digest(body),
        };
        if let Some(strict) = &self.strict {
            if !strict.event_types.contains(&event_type.as_str()) {
                return Err(ExtractError::InvalidEventType);
            }
            if !(strict.id_shape)(&raw_id) {
                return Err(ExtractError::InvalidId);
            }
        }
        if raw_id.is_empty() || raw_id.len() > MAX_ID_LEN || raw_id.chars().any(|c| c.is_control())
        {
            return Err(ExtractError::InvalidId);
        }
        let source = &*self.source;
        let id = self.id.render(source, &event_type, &raw_id);
        if id.len() > MAX_EVENT_ID_LEN {
            return Err(ExtractError::EventIdTooLong);
        }
        let key = self.key.render(source, &event_type, &raw_id);
        if key.len() > MAX_KEY_LEN {
            return Err(ExtractError::KeyTooLong);
        }
        let topic = self.topic.render(source, &event_type, &raw_id);
        if topic.len() > MAX_TOPIC_LEN || !is_sane_name(&topic) {
            return Err(ExtractError::InvalidTopic);
        }
        if content_type.len() > MAX_CONTENT_TYPE_LEN || !content_type.is_ascii() {
            return Err(ExtractError::ContentType);
        }
        Ok(Extracted::Publish(Accepted(Event {
            source: self.source.clone(),
            id,
            topic,
            key,
            content_type: content_type.to_string(),
            received_at_ns,
            body: body.clone(),
            event_type,
            traceparent: String::new(),
        })))
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
        c.sources["quickassist"].extractor("quickassist").unwrap()
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
            Extracted::Publish(e) => Ok(e.into_event()),
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

    /// Ids are the number's own text: two ids that one float would round together
    /// are two events (before, the second got `duplicate` and was dropped).
    #[test]
    fn numeric_ids_are_their_exact_text() {
        let x = extractor("");
        let id = |n: &str| {
            publish(
                &x,
                &format!(r#"{{"event":"message.read","data":{{"messageId":{n}}}}}"#),
            )
            .unwrap()
            .id
        };
        assert_eq!(
            id("123456789012345678901234567"),
            "message.read:123456789012345678901234567"
        );
        assert_ne!(
            id("123456789012345678901234567"),
            id("123456789012345678901234568")
        );
        assert_ne!(id("18446744073709551616"), id("18446744073709551617"));
        for n in ["42", "-7", "1.50", "1e2", "12345.0", "0"] {
            assert_eq!(id(n), format!("message.read:{n}"));
        }
        // Repeated keys: the last one wins, all the way down.
        let e = publish(
            &x,
            r#"{"event":"message.read","data":{"messageId":1},"data":{"other":2}}"#,
        )
        .unwrap();
        assert!(e.id.starts_with("message.read:sha256:"), "{}", e.id);
    }

    /// Event types and topics are names every broker and file system takes as they
    /// are: no empty segment after `/` becomes `.`.
    #[test]
    fn event_types_with_empty_segments_are_refused() {
        let x = extractor("");
        let ty = |t: &str| {
            publish(&x, &format!(r#"{{"event":{}}}"#, serde_json::json!(t))).map(|e| e.topic)
        };
        for bad in [
            "../../etc/passwd",
            "a..b",
            ".a",
            "a.",
            "a/",
            "//a",
            ".",
            "..",
            "a/./b",
            "",
        ] {
            assert!(ty(bad).is_err(), "{bad}");
        }
        assert_eq!(ty("/deploy").unwrap(), "quickassist.deploy");
        assert_eq!(ty("orders/create").unwrap(), "quickassist.orders.create");
    }

    /// What every sink carries is bounded here, at the edge.
    #[test]
    fn ids_keys_and_content_types_are_bounded() {
        let x = extractor("");
        let body =
            |t: &str, id: &str| format!(r#"{{"event":"{t}","data":{{"messageId":"{id}"}}}}"#);
        // A 200-byte type and a 200-byte id make a 401-byte event id: over 255.
        let long = body(&"t".repeat(200), &"i".repeat(200));
        assert_eq!(publish(&x, &long), Err(ExtractError::EventIdTooLong));
        let ok = body(&"t".repeat(100), &"i".repeat(154));
        assert_eq!(publish(&x, &ok).unwrap().id.len(), 255);
        let ok = body("message.read", "m");
        let ct = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.append(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_bytes(v).unwrap(),
            );
            content_type(&h).map(str::to_string)
        };
        assert_eq!(ct(b"application/json").unwrap(), "application/json");
        assert_eq!(ct(b"").unwrap(), DEFAULT_CONTENT_TYPE);
        assert_eq!(
            content_type(&HeaderMap::new()).unwrap(),
            DEFAULT_CONTENT_TYPE
        );
        assert_eq!(ct(&[b'x'; 255]).unwrap().len(), 255);
        assert_eq!(ct(&[b'x'; 256]), Err(ExtractError::ContentType));
        assert_eq!(ct(&[b'x'; 70 * 1024]), Err(ExtractError::ContentType));
        assert_eq!(ct("t\u{e9}xt".as_bytes()), Err(ExtractError::ContentType));
        let mut two = HeaderMap::new();
        two.append(hyper::header::CONTENT_TYPE, "a/b".parse().unwrap());
        two.append(hyper::header::CONTENT_TYPE, "c/d".parse().unwrap());
        assert_eq!(content_type(&two), Err(ExtractError::ContentType));
        let e = x
            .extract(verified(&ok), &HeaderMap::new(), &"x".repeat(256), 0)
            .unwrap_err();
        assert_eq!(e, ExtractError::ContentType);
        let k = extractor("id_template = \"{id}\"\nkey = \"{id}{id}{id}{id}{id}{id}\"\n");
        let long_key = body("message.read", &"i".repeat(200));
        assert_eq!(publish(&k, &long_key), Err(ExtractError::KeyTooLong));
    }

    /// Twilio signs its form parameters concatenated, names and values alike, so
    /// bytes can move from one value into the next name without breaking the
    /// signature. The type and the SID must both be there, with Twilio's shapes:
    /// a re-split body is refused instead of becoming a new event.
    #[test]
    fn twilio_bodies_cannot_mint_new_ids() {
        let text = "[sinks.file]\ndir = \"x\"\n[sources.tw]\nscheme = \"twilio\"\nsecret_env = \"X\"\npublic_url = \"https://h\"\n";
        let c = Config::parse(text).unwrap();
        let x = c.sources["tw"].extractor("tw").unwrap();
        let v = Verifier::with_secrets(
            crate::verify::Method::Hmac {
                spec: crate::verify::GenericHmac {
                    header: "x-sig".into(),
                    algorithm: crate::verify::Alg::Sha256,
                    encoding: crate::verify::Encoding::Hex,
                    prefix: String::new(),
                    content: "{body}".into(),
                    timestamp_header: None,
                    id_header: None,
                },
                tolerance: 0,
            },
            &[b"k"],
        )
        .unwrap();
        let form = |body: &str| {
            let mut h = HeaderMap::new();
            for (n, val) in v.sign(body.as_bytes(), "/").unwrap() {
                h.insert(
                    hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    val.parse().unwrap(),
                );
            }
            let verified = v.verify(&h, Bytes::from(body.to_string()), "/").unwrap();
            x.extract(
                verified,
                &HeaderMap::new(),
                "application/x-www-form-urlencoded",
                0,
            )
            .map(|e| match e {
                Extracted::Publish(e) => e.into_event().id,
                Extracted::Filtered { .. } => panic!(),
            })
        };
        let sid = "SM0123456789abcdef0123456789abcdef";
        assert_eq!(
            form(&format!("MessageSid={sid}&MessageStatus=sent&To=%2B1555")).unwrap(),
            format!("sent:{sid}")
        );
        // The same bytes Twilio signed, split differently.
        for resplit in [
            format!("MessageSid={sid}&MessageStatus=se&ntTo=%2B1555"),
            format!("MessageSid={}&fMessageStatus=sent", &sid[..33]),
            format!("MessageSid={sid}"),
            "MessageStatus=sent&To=%2B1555".to_string(),
            format!("MessageSid=sm{}&MessageStatus=sent", &sid[2..]),
        ] {
            assert!(form(&resplit).is_err(), "{resplit}");
        }
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
            Extracted::Publish(e) => e.into_event(),
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
