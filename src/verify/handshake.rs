//! Provider handshakes: requests that set up or test an endpoint and expect a
//! specific answer instead of being published.

use hyper::HeaderMap;
use subtle::ConstantTimeEq;

use super::keys::{Alg, Key};

/// Which handshakes a source answers (set from its scheme).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds {
    /// GitHub's `ping` event when a hook is created.
    pub github_ping: bool,
    /// Slack's `url_verification` challenge.
    pub slack_url_verification: bool,
    /// Zoom's `endpoint.url_validation` challenge.
    pub zoom_url_validation: bool,
    /// Meta's `GET ?hub.mode=subscribe&hub.verify_token=..&hub.challenge=..`.
    pub meta_get: bool,
}

/// A direct answer to a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

fn json(status: u16, v: serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: v.to_string().into_bytes(),
    }
}

/// A verified POST that is a handshake, with its answer.
pub fn post(kinds: Kinds, body: &[u8], headers: &HeaderMap, keys: &[Key]) -> Option<Reply> {
    if kinds.github_ping && headers.get("x-github-event").is_some_and(|v| v == "ping") {
        return Some(json(200, serde_json::json!({ "status": "pong" })));
    }
    if !(kinds.slack_url_verification || kinds.zoom_url_validation) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if kinds.slack_url_verification && v["type"] == "url_verification" {
        let challenge = v["challenge"].as_str()?;
        return Some(json(200, serde_json::json!({ "challenge": challenge })));
    }
    if kinds.zoom_url_validation && v["event"] == "endpoint.url_validation" {
        let plain = v["payload"]["plainToken"].as_str()?;
        let Some(Key::Shared(secret)) = keys.first() else {
            return None;
        };
        let encrypted = hex::encode(Alg::Sha256.mac(secret, &[plain.as_bytes()]));
        return Some(json(
            200,
            serde_json::json!({ "plainToken": plain, "encryptedToken": encrypted }),
        ));
    }
    None
}

/// A GET verification; `None` when the source has none (the caller answers 405).
pub fn get(kinds: Kinds, query: &str, verify_token: Option<&[u8]>) -> Option<Reply> {
    if !kinds.meta_get {
        return None;
    }
    let mut mode = None;
    let mut token = None;
    let mut challenge = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "hub.mode" => mode = Some(v.into_owned()),
            "hub.verify_token" => token = Some(v.into_owned()),
            "hub.challenge" => challenge = Some(v.into_owned()),
            _ => {}
        }
    }
    let forbidden = Reply {
        status: 403,
        content_type: "application/json",
        body: br#"{"status":"error","error":"verification failed"}"#.to_vec(),
    };
    let (Some(mode), Some(token), Some(challenge), Some(expected)) =
        (mode, token, challenge, verify_token)
    else {
        return Some(forbidden);
    };
    let ok = mode == "subscribe"
        && token.len() == expected.len()
        && bool::from(token.as_bytes().ct_eq(expected));
    if !ok {
        return Some(forbidden);
    }
    Some(Reply {
        status: 200,
        content_type: "text/plain",
        body: challenge.into_bytes(),
    })
}
