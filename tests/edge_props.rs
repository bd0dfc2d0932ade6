//! Property test of the edge contract: every event the edge accepts, from any
//! source, round-trips through the spool record byte for byte, and every sink can
//! encode it (Kafka headers and key, AMQP properties, the file line) without a
//! panic or a refusal. Inputs are shaped to be accepted often: JSON bodies with the
//! fields each scheme reads, holding arbitrary text and numbers, and arbitrary
//! content types and event-type / id headers. (The `edge` fuzz target drives the
//! same check with unshaped bytes; `tests/fuzz_corpus.rs` replays its corpus.)

use hookrelay::fuzzing::{edge_request, sources};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use proptest::prelude::*;

/// Text with the characters that matter at the edge: separators, dots, slashes,
/// quotes, escapes, controls, non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "/?[a-z0-9_-]{1,12}([./][a-zA-Z0-9_-]{1,12}){0,3}",
        2 => "[a-z]{1,60}(\\.[a-z]{1,60}){0,3}",
        1 => "[a-z][a-z._/-]{0,30}",
        1 => "[ -~]{0,300}",
        1 => "(?s).{0,80}",
        1 => "[./]{0,6}[a-z]{1,4}[./]{0,6}",
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[1-9][0-9]{0,40}",
        "-?[0-9]{1,3}\\.[0-9]{1,20}",
        "[1-9][0-9]{0,3}[eE][+-]?[0-9]{1,3}",
    ]
}

/// A JSON value for an id: text or a number written any way JSON allows.
fn id_json() -> impl Strategy<Value = String> {
    prop_oneof![
        text().prop_map(|t| serde_json::to_string(&t).unwrap()),
        number(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn accepted_events_round_trip_and_every_sink_encodes_them(
        which in 0usize..16,
        event_type in text(),
        id in id_json(),
        content_type in proptest::collection::vec(any::<u8>(), 0..300),
        header_event in text(),
        header_id in text(),
    ) {
        let all = sources();
        prop_assert_eq!(all.len(), 16);
        let (verifier, extractor) = &all[which];
        let t = serde_json::to_string(&event_type).unwrap();
        let body = format!(
            r#"{{"event":{t},"type":{t},"event_type":{t},"object":{t},"id":{id},"event_id":{id},"data":{{"messageId":{id}}},"entry":[{{"changes":[{{"field":{t}}}]}}]}}"#
        );
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-github-event", &header_event),
            ("x-shopify-topic", &header_event),
            ("x-acme-event", &header_event),
            ("x-github-delivery", &header_id),
            ("x-shopify-event-id", &header_id),
            ("x-razorpay-event-id", &header_id),
            ("linear-delivery", &header_id),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        if let Ok(v) = HeaderValue::from_bytes(&content_type) {
            headers.insert(hyper::header::CONTENT_TYPE, v);
        }
        let body = body.as_bytes();
        for (name, value) in verifier.sign(body, "/w?a=b").unwrap_or_default() {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        // Panics (and so fails) if an accepted event breaks the contract.
        let _ = edge_request(verifier, extractor, &headers, body);
    }
}
