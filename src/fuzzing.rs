//! Entry points shared by the fuzz targets (`fuzz/`, run with cargo fuzz) and the
//! replay of their committed corpus on the stable toolchain (`tests/fuzz_corpus.rs`).
//! Each takes arbitrary bytes and must never panic; the results are ignored.

use std::io::Cursor;
use std::sync::OnceLock;

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

use crate::config::Config;
use crate::event::Extractor;
use crate::verify::Verifier;

/// Every header any scheme reads; fuzz input values are assigned to them in order.
const HEADERS: &[&str] = &[
    "x-webhook-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-hub-signature-256",
    "stripe-signature",
    "x-shopify-hmac-sha256",
    "x-shopify-topic",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-twilio-signature",
    "x-razorpay-signature",
    "linear-signature",
    "paddle-signature",
    "x-zm-signature",
    "x-zm-request-timestamp",
    "x-acme-signature",
    "x-acme-timestamp",
    "x-acme-event",
    "authorization",
    "x-partner-token",
    "x-github-event",
    "content-type",
];

/// Every source of `examples/providers.toml` (all sixteen schemes), with secrets
/// written to a private temporary directory instead of the environment.
pub fn sources() -> &'static Vec<(Verifier, Extractor)> {
    static SOURCES: OnceLock<Vec<(Verifier, Extractor)>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hookrelay-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut text = String::new();
        for line in include_str!("../examples/providers.toml").lines() {
            let trimmed = line.trim_start();
            let env = ["secret_env = \"", "verify_token_env = \""]
                .iter()
                .find_map(|p| trimmed.strip_prefix(p).map(|rest| (*p, rest)));
            match env.and_then(|(p, rest)| rest.split('"').next().map(|name| (p, name))) {
                Some((prefix, name)) => {
                    let secret = match name {
                        "SVIX_SECRET" => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                        "LEGACY_BASIC_CREDENTIALS" => "user:password",
                        _ => "fuzz-secret",
                    };
                    let path = dir.join(name);
                    let _ = std::fs::write(&path, secret);
                    let key = prefix.replace("_env = \"", "_file");
                    text.push_str(&format!("{key} = \"{}\"\n", path.display()));
                }
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        let Ok(config) = Config::parse(&text) else {
            return Vec::new();
        };
        let mut names: Vec<&String> = config.sources.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| {
                let verifier = config.sources[name].verifier(name).ok()?;
                let extractor = config.sources[name].extractor(name).ok()?;
                Some((verifier, extractor))
            })
            .collect()
    })
}

/// How many schemes [`verify`] exercises (for a sanity check in the replay test).
pub fn scheme_count() -> usize {
    sources().len()
}

/// `[source index][header values, '\n'-separated]\0[body]`.
fn split(data: &[u8]) -> (usize, HeaderMap, &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return (0, HeaderMap::new(), &[]);
    };
    let (head, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in HEADERS.iter().zip(head.split(|&b| b == b'\n')) {
        if value.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    (which as usize, headers, body)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

/// Signature header parsers of every scheme, and the extraction behind them.
pub fn verify(data: &[u8]) {
    let all = sources();
    if all.is_empty() {
        return;
    }
    let (which, headers, body) = split(data);
    let (verifier, extractor) = &all[which % all.len()];
    let ct = content_type(&headers);
    if let Ok(verified) = verifier.verify(&headers, Bytes::copy_from_slice(body), "/w?a=b") {
        let _ = verifier.handshake(&verified, &headers);
        let _ = extractor.extract(verified, &headers, &ct, 0);
    }
    if let Ok(query) = std::str::from_utf8(body) {
        let _ = verifier.handshake_get(query);
    }
}

/// Event extraction from bodies that passed verification: each body is signed
/// for the source the first byte picks, so every input reaches the extractor.
pub fn extract(data: &[u8]) {
    let all = sources();
    if all.is_empty() {
        return;
    }
    let (which, mut headers, body) = split(data);
    let (verifier, extractor) = &all[which % all.len()];
    let Ok(signed) = verifier.sign(body, "/w?a=b") else {
        return;
    };
    for (name, value) in signed {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    }
    let ct = content_type(&headers);
    if let Ok(verified) = verifier.verify(&headers, Bytes::copy_from_slice(body), "/w?a=b") {
        let _ = extractor.extract(verified, &headers, &ct, 0);
    }
}

/// The whole edge: a request the chosen source accepts (its body is signed for it,
/// any headers and content type) must give an event that round-trips through the
/// spool record byte for byte, and that every sink can encode without panicking or
/// refusing it: Kafka headers and key, AMQP properties (CloudEvents on), the file
/// line. Returns the event, when the edge accepted one.
pub fn edge(data: &[u8]) -> Option<crate::event::Event> {
    let all = sources();
    if all.is_empty() {
        return None;
    }
    let (which, mut headers, body) = split(data);
    let (verifier, extractor) = &all[which % all.len()];
    for (name, value) in verifier.sign(body, "/w?a=b").ok()? {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    }
    edge_request(verifier, extractor, &headers, body)
}

/// [`edge`] for one request; panics if an accepted event breaks the contract.
pub fn edge_request(
    verifier: &Verifier,
    extractor: &Extractor,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<crate::event::Event> {
    let verified = verifier
        .verify(headers, Bytes::copy_from_slice(body), "/w?a=b")
        .ok()?;
    let ct = crate::event::content_type(headers).ok()?;
    let event = match extractor.extract(verified, headers, ct, 1_700_000_000_000_000_000) {
        Ok(crate::event::Extracted::Publish(e)) => e.into_event(),
        _ => return None,
    };
    let _ = extractor.replay_guard(&event);
    // The spool record: framed, sealed, read back and decoded, exactly.
    let mut frame = crate::spool::encode(&event)
        .expect("an event the edge accepted must fit a record")
        .to_vec();
    crate::spool::seal(&mut frame, 42);
    let payload = match crate::spool::read_frame(&mut Cursor::new(&frame), 42) {
        Ok(crate::spool::Frame::Record(p)) => p,
        other => panic!("the record does not read back: {other:?}"),
    };
    let back = crate::spool::decode(42, payload).expect("the record decodes");
    assert_eq!(back.event, event, "the record round-trips byte for byte");
    // Every sink's wire format.
    let m = crate::sink::Message {
        seq: 42,
        event: std::sync::Arc::new(event.clone()),
        replay: false,
    };
    let dead_letter: [(&str, &[u8]); 2] = [
        (crate::sink::HEADER_DEAD_LETTER_REASON, b"x"),
        (crate::sink::HEADER_ORIGINAL_TOPIC, event.topic().as_bytes()),
    ];
    let _ = crate::sink::kafka::headers(true, &m, &dead_letter);
    for extra in [&[][..], &dead_letter[..]] {
        if let Err(e) = crate::sink::rabbitmq::properties(amqp(), &m, extra) {
            panic!("an event the edge accepted is refused by the AMQP sink: {e}");
        }
    }
    let refusal = crate::sink::file::Refusal {
        sink: "sink",
        reason: "reason",
        at_ns: 1,
    };
    let line = crate::sink::file::json_line(&m, Some(&refusal));
    serde_json::from_slice::<serde_json::Value>(&line).expect("the file line is JSON");
    // Its dead-letter line reads back as the same event, and may be redriven.
    let dead = crate::deadletter::parse_line(0, line.strip_suffix(b"\n").unwrap_or(&line))
        .unwrap_or_else(|e| panic!("the dead-letter line does not read back: {e}"));
    match dead.event() {
        Ok(back) => assert_eq!(back.into_event(), event, "the dead letter redrives exactly"),
        Err(e) => panic!("an event the edge accepted cannot be redriven: {e}"),
    }
    Some(event)
}

/// A RabbitMQ sink's settings with everything on that adds to the wire format.
fn amqp() -> &'static crate::sink::rabbitmq::RabbitmqSinkConfig {
    static CFG: OnceLock<crate::sink::rabbitmq::RabbitmqSinkConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        toml::from_str("uri = \"amqp://localhost\"\ncloudevents = true\n")
            .expect("a valid sink config")
    })
}

/// The configuration file: parse, validate, and build what `run` would build.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    for (name, source) in &config.sources {
        let _ = source.extractor(name);
    }
}

/// The spool's record framing and payload decoder, as recovery reads a segment.
pub fn spool_record(data: &[u8]) {
    let mut r = Cursor::new(data);
    let mut seq = 0;
    while let Ok(crate::spool::Frame::Record(frame)) = crate::spool::read_frame(&mut r, seq) {
        let _ = crate::spool::decode(seq, frame);
        seq += 1;
    }
    let _ = crate::spool::decode(0, Bytes::copy_from_slice(data));
}
