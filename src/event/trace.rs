//! Correlation with the systems around the relay: the caller's `x-request-id`,
//! echoed, and the W3C trace context (`traceparent`) a provider sent, continued
//! into every message published for its event (or a new trace, when none came).
//! Both come from outside, so both are held to the formats' own bounds: a value
//! that is not one is ignored (and replaced), never carried.

use hyper::HeaderMap;

/// The header both names are looked up and echoed under.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The longest inbound request id kept: enough for any UUID, ULID or trace id.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// A `traceparent` of version 00 is exactly this long; later versions may be
/// longer and are read up to here.
pub const TRACEPARENT_LEN: usize = 55;
/// Longer `traceparent` values are not read at all.
const MAX_TRACEPARENT_HEADER_LEN: usize = 512;

/// The caller's request id when it sent exactly one that is 1 to
/// [`MAX_REQUEST_ID_LEN`] visible ASCII characters; anything else is not echoed.
pub fn request_id(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(REQUEST_ID_HEADER).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let b = v.as_bytes();
    let ok =
        !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic());
    ok.then(|| v.to_str().ok()).flatten()
}

/// A W3C trace context: one trace, and the span the relay's handling of the
/// request is within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    /// The caller's span, when the trace was continued.
    parent: Option<u64>,
}

impl TraceContext {
    /// Continues the caller's trace (a new span of it) when it sent one valid
    /// `traceparent`, else starts a new, sampled one.
    pub fn for_request(headers: &HeaderMap) -> TraceContext {
        match incoming(headers) {
            Some(parent) => TraceContext {
                span_id: new_span_id(),
                parent: Some(parent.span_id),
                ..parent
            },
            None => TraceContext {
                trace_id: loop {
                    let id = fastrand::u128(..);
                    if id != 0 {
                        break id;
                    }
                },
                span_id: new_span_id(),
                flags: 0x01,
                parent: None,
            },
        }
    }

    /// Parses a `traceparent` value (W3C Trace Context, level 2): lowercase hex,
    /// ids not all zero, version `ff` invalid, version 00 exactly 55 characters,
    /// a later version read up to its first 55 (followed by `-`).
    pub fn parse(s: &str) -> Option<TraceContext> {
        if s.len() > MAX_TRACEPARENT_HEADER_LEN || s.len() < TRACEPARENT_LEN || !s.is_ascii() {
            return None;
        }
        let (head, rest) = s.split_at(TRACEPARENT_LEN);
        let version = hex(&head[0..2])? as u8;
        match version {
            0xff => return None,
            0x00 if !rest.is_empty() => return None,
            // A later version's further fields: visible ASCII after a `-`.
            _ if !(rest.is_empty()
                || rest.starts_with('-') && rest.bytes().all(|b| b.is_ascii_graphic())) =>
            {
                return None;
            }
            _ => {}
        }
        let b = head.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = hex(&head[3..35])?;
        let span_id = hex(&head[36..52])? as u64;
        let flags = hex(&head[53..55])? as u8;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            flags,
            parent: None,
        })
    }

    /// The `traceparent` value naming this span as the parent: what published
    /// messages carry, so a consumer's span joins the provider's trace.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The ids as numbers (trace, this span, the caller's span if any) and the
    /// flags, for an exporter.
    pub fn ids(&self) -> (u128, u64, Option<u64>, u8) {
        (self.trace_id, self.span_id, self.parent, self.flags)
    }

    /// The trace id alone, as logs carry it, formatted only when written: a log
    /// field that is not enabled costs nothing.
    pub fn trace_id_hex(&self) -> impl std::fmt::Display + '_ {
        struct Hex(u128);
        impl std::fmt::Display for Hex {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }
        Hex(self.trace_id)
    }
}

fn incoming(headers: &HeaderMap) -> Option<TraceContext> {
    let mut values = headers.get_all(TRACEPARENT_HEADER).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceContext::parse(v.to_str().ok()?)
}

fn new_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// Lowercase hex of at most 32 digits; uppercase is not a valid trace context.
fn hex(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let t = TraceContext::for_request(&headers(&[(TRACEPARENT_HEADER, GOOD.as_bytes())]));
        assert_eq!(
            t.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let out = t.traceparent();
        assert_eq!(out.len(), TRACEPARENT_LEN);
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7", "the relay's own span");
        assert_eq!(
            TraceContext::parse(&out).map(|p| p.trace_id),
            Some(t.trace_id)
        );
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01xextra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-\r\nX: y",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01- ",
        ];
        for b in bad {
            assert_eq!(TraceContext::parse(b), None, "{b:?}");
        }
        let long = format!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
            "a".repeat(600)
        );
        assert_eq!(TraceContext::parse(&long), None, "oversized");
        // A later version with more fields is read up to what version 00 defines.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceContext::parse(later).is_some());
        // Two traceparent headers: neither is trusted.
        let two = headers(&[
            (TRACEPARENT_HEADER, GOOD.as_bytes()),
            (TRACEPARENT_HEADER, GOOD.as_bytes()),
        ]);
        let t = TraceContext::for_request(&two);
        assert_ne!(
            t.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(TraceContext::parse(&t.traceparent()).is_some());
        let none = TraceContext::for_request(&HeaderMap::new());
        assert!(none.traceparent().ends_with("-01"));
    }

    #[test]
    fn only_a_bounded_printable_request_id_is_kept() {
        let id = |v: &[u8]| request_id(&headers(&[(REQUEST_ID_HEADER, v)])).map(str::to_string);
        assert_eq!(id(b"req-123_ABC.x"), Some("req-123_ABC.x".into()));
        assert_eq!(
            id(&[b'a'; MAX_REQUEST_ID_LEN]),
            Some("a".repeat(MAX_REQUEST_ID_LEN))
        );
        assert_eq!(id(&[b'a'; MAX_REQUEST_ID_LEN + 1]), None, "oversized");
        assert_eq!(id(b""), None);
        assert_eq!(id(b"has space"), None);
        assert_eq!(id(b"tab\there"), None);
        assert_eq!(id(&[0xC3, 0xA9]), None, "not ASCII");
        let two = headers(&[(REQUEST_ID_HEADER, b"a"), (REQUEST_ID_HEADER, b"b")]);
        assert_eq!(request_id(&two), None);
    }
}
