//! One dead-letter line read back: what the admin lists, and the event to redrive.
//!
//! Lines are JSON written by `sink::file::json_line`; older ones lack `sink` and
//! `dead_lettered_at_ns`. The file can be edited by hand, so a line is taken only
//! whole and well-formed, and an event rebuilt from it is held to the edge's bounds
//! again before it may go back into a spool.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::trace::TraceContext;
use crate::event::{
    Accepted, Event, MAX_CONTENT_TYPE_LEN, MAX_EVENT_ID_LEN, MAX_EVENT_TYPE_LEN, MAX_KEY_LEN,
    MAX_SOURCE_LEN, MAX_TOPIC_LEN, is_sane_name,
};
use crate::sink::{
    HEADER_CONTENT_TYPE, HEADER_EVENT, HEADER_ID, HEADER_RECEIVED_AT, HEADER_SOURCE,
    HEADER_TRACEPARENT,
};

/// A dead letter as listed: everything but the body and the raw headers, so a page
/// of them stays small whatever the bodies weigh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The line's byte offset in the file, which is only ever appended to: stable
    /// across restarts, and no two lines share one.
    pub id: u64,
    /// `None` for a line older than the `sink` key whose reason names no sink.
    pub sink: Option<String>,
    pub source: String,
    pub event_type: String,
    pub event_id: String,
    pub topic: String,
    pub key: String,
    pub content_type: String,
    pub reason: String,
    pub received_at_ns: u64,
    /// `None` for a line older than the key.
    pub dead_lettered_at_ns: Option<u64>,
    /// The body's length in bytes, as published (not as escaped in the line).
    pub size: usize,
}

/// A dead letter with what redriving or inspecting it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub entry: Entry,
    /// In the line's order.
    pub headers: Vec<(String, String)>,
    /// Byte for byte what the sink was handed.
    pub body: Bytes,
}

/// Which entries a listing shows; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub source: Option<String>,
    /// The event type.
    pub event: Option<String>,
    /// A substring of the reason.
    pub reason: Option<String>,
    pub sink: Option<String>,
}

impl Filter {
    /// Public so that a caller holding entries already (an export, a cache) filters
    /// them the way a listing does.
    pub fn matches(&self, e: &Entry) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.source, &e.source)
            && is(&self.event, &e.event_type)
            && self
                .sink
                .as_deref()
                .is_none_or(|w| e.sink.as_deref() == Some(w))
            && self.reason.as_deref().is_none_or(|w| e.reason.contains(w))
    }
}

/// A line as written; keys a later version adds are ignored.
#[derive(Deserialize)]
struct Raw {
    topic: String,
    key: String,
    headers: serde_json::Map<String, serde_json::Value>,
    body: Option<String>,
    body_hex: Option<String>,
    reason: String,
    sink: Option<String>,
    dead_lettered_at_ns: Option<u64>,
}

/// The body as the line holds it, decoded only when asked for.
enum Body {
    Text(String),
    Hex(String),
}

/// A parsed line before its body is decoded.
pub struct Parsed {
    pub entry: Entry,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Parsed {
    /// Decodes the body (`body_hex` was checked to be hex when parsed).
    pub fn full(self) -> Result<Full, &'static str> {
        let body = match self.body {
            Body::Text(text) => Bytes::from(text),
            Body::Hex(hex) => Bytes::from(hex::decode(hex).map_err(|_| "body_hex is not hex")?),
        };
        Ok(Full {
            entry: self.entry,
            headers: self.headers,
            body,
        })
    }
}

/// Reads one line (without its `\n`); the error says what is wrong with it.
pub fn parse(id: u64, line: &[u8]) -> Result<Parsed, String> {
    let raw: Raw = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (name, value) in raw.headers {
        match value {
            serde_json::Value::String(v) => headers.push((name, v)),
            _ => return Err(format!("header {name} is not a string")),
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("no {name} header"))
    };
    let (source, event_type, event_id) = (
        header(HEADER_SOURCE)?,
        header(HEADER_EVENT)?,
        header(HEADER_ID)?,
    );
    let content_type = header(HEADER_CONTENT_TYPE)?;
    let received_at_ns = header(HEADER_RECEIVED_AT)?
        .parse::<u64>()
        .map_err(|_| format!("{HEADER_RECEIVED_AT} is not a number"))?;
    let (body, size) = match (raw.body, raw.body_hex) {
        (Some(text), None) => {
            let n = text.len();
            (Body::Text(text), n)
        }
        (None, Some(hex)) => {
            if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("body_hex is not hex".into());
            }
            let n = hex.len() / 2;
            (Body::Hex(hex), n)
        }
        _ => return Err("not exactly one of body and body_hex".into()),
    };
    let sink = raw.sink.or_else(|| sink_in_reason(&raw.reason));
    Ok(Parsed {
        entry: Entry {
            id,
            sink,
            source,
            event_type,
            event_id,
            topic: raw.topic,
            key: raw.key,
            content_type,
            reason: raw.reason,
            received_at_ns,
            dead_lettered_at_ns: raw.dead_lettered_at_ns,
            size,
        },
        headers,
        body,
    })
}

/// Lines older than the `sink` key name the sink only in the reason, as the
/// forwarder wrote it (`NAME: why`); a prefix that cannot be a sink's name (an
/// adopted spool's reason, a sink's own text) names none.
fn sink_in_reason(reason: &str) -> Option<String> {
    let (name, _) = reason.split_once(": ")?;
    (name.len() <= crate::config::MAX_SINK_NAME_LEN && is_sane_name(name)).then(|| name.into())
}

impl Full {
    /// The trace the event was published in, kept through a redrive, as the
    /// relay writes one (version 00); a value that is not a valid `traceparent`
    /// (the file is editable) is dropped.
    fn traceparent(&self) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == HEADER_TRACEPARENT)
            .and_then(|(_, v)| TraceContext::parse(v))
            .map(|t| t.traceparent())
            .unwrap_or_default()
    }

    /// The event as the edge accepted it, to be appended to a spool again. Refused,
    /// saying why, when a field is out of the edge's bounds (a hand-edited line):
    /// no sink or spool could carry it, and the edge would never have let it in.
    pub fn event(&self) -> Result<Accepted, String> {
        let e = &self.entry;
        let bad = |what: &str| Err(format!("entry {}: {what}", e.id));
        if e.source.len() > MAX_SOURCE_LEN || !is_sane_name(&e.source) || e.source.starts_with('_')
        {
            return bad("the source is not a source name");
        }
        if e.event_type.len() > MAX_EVENT_TYPE_LEN || !is_sane_name(&e.event_type) {
            return bad(&format!(
                "the event type is not a sane name of at most {MAX_EVENT_TYPE_LEN} bytes"
            ));
        }
        if e.event_id.len() > MAX_EVENT_ID_LEN {
            return bad(&format!(
                "the event id is longer than {MAX_EVENT_ID_LEN} bytes"
            ));
        }
        if e.key.len() > MAX_KEY_LEN {
            return bad(&format!("the key is longer than {MAX_KEY_LEN} bytes"));
        }
        if e.topic.len() > MAX_TOPIC_LEN || !is_sane_name(&e.topic) {
            return bad(&format!(
                "the topic is not a legal topic name of at most {MAX_TOPIC_LEN} bytes"
            ));
        }
        // What `event::content_type` lets through: one visible ASCII header value.
        let printable = |b: u8| b == b'\t' || (0x20..0x7f).contains(&b);
        if e.content_type.is_empty()
            || e.content_type.len() > MAX_CONTENT_TYPE_LEN
            || !e.content_type.bytes().all(printable)
        {
            return bad(&format!(
                "the content type is not printable ASCII of at most {MAX_CONTENT_TYPE_LEN} bytes"
            ));
        }
        if self.body.len() > crate::spool::MAX_BODY_LEN {
            return bad("the body is larger than a spool record holds");
        }
        Ok(Accepted::restored(Event::from_record(
            Arc::from(e.source.as_str()),
            e.event_type.clone(),
            e.event_id.clone(),
            e.topic.clone(),
            e.key.clone(),
            e.content_type.clone(),
            e.received_at_ns,
            self.body.clone(),
            self.traceparent(),
        )))
    }
}
