//! Signature verification: a catalogue of provider schemes, one file per family.
//!
//! Verification runs on the raw bytes received, before anything parses them,
//! and its only way out is [`Verified`], so nothing unverified can reach the
//! event extractor or the spool. Every comparison is constant time after a
//! length check; a source may hold several secrets (rotation) and any one of
//! them verifies. Secrets never reach a log, a metric label or `Debug` output.

mod body;
mod handshake;
mod jsstringify;
mod keys;
pub mod scheme;
mod timestamped;
mod token;
mod twilio;

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::HeaderMap;

pub use handshake::Reply;
pub use keys::{Alg, Encoding, Key, KeyError, SecretSource};

/// Why a request was refused; the label of `hookrelay_signature_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The signature (or token) header is absent or empty.
    Missing,
    /// Present but not of the scheme's shape (wrong length, not hex, repeated, truncated).
    Malformed,
    /// Well-formed but matches no configured secret.
    Mismatch,
    /// Signed timestamp outside the scheme's tolerance (replay or clock skew).
    Stale,
}

impl Failure {
    pub const ALL: [Failure; 4] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::Mismatch,
        Failure::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Mismatch => "mismatch",
            Failure::Stale => "stale",
        }
    }
}

/// A body whose signature checked out: exactly the bytes that were signed (the
/// bytes received, or the canonical form a scheme signs instead). Only
/// [`Verifier::verify`] makes one.
#[derive(Debug, Clone)]
pub struct Verified(Bytes);

impl Verified {
    pub fn body(&self) -> &Bytes {
        &self.0
    }
}

/// What a scheme looks at.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Path and query as received: Twilio signs the full URL.
    pub path_and_query: &'a str,
    /// Unix seconds, for timestamp tolerance.
    pub now: u64,
}

/// The generic `hmac` scheme's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericHmac {
    /// Header carrying the signature.
    pub header: String,
    #[serde(default = "sha256")]
    pub algorithm: Alg,
    #[serde(default = "hex_encoding")]
    pub encoding: Encoding,
    /// Text before the signature in the header, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: String,
    /// What is signed: `{body}`, `{timestamp}`, `{id}` and literal text.
    #[serde(default = "body_only")]
    pub content: String,
    /// Header with the signed timestamp (Unix seconds), checked against the tolerance.
    pub timestamp_header: Option<String>,
    /// Header with the delivery id, for `{id}` in `content`.
    pub id_header: Option<String>,
}

fn sha256() -> Alg {
    Alg::Sha256
}
fn hex_encoding() -> Encoding {
    Encoding::Hex
}
fn body_only() -> String {
    "{body}".into()
}

/// A scheme with its options, as configured for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `x-webhook-signature`: hex HMAC-SHA256 of the body; optionally also of its
    /// `JSON.stringify` form.
    Quickassist {
        json_stringify: bool,
    },
    StandardWebhooks {
        tolerance: u64,
    },
    /// `X-Hub-Signature-256: sha256=<hex>` (GitHub, and Meta with the app secret).
    HubSignature,
    Shopify,
    Razorpay,
    Linear {
        tolerance: u64,
    },
    Stripe {
        tolerance: u64,
    },
    Slack {
        tolerance: u64,
    },
    Paddle {
        tolerance: u64,
    },
    Zoom {
        tolerance: u64,
    },
    Twilio {
        public_url: String,
    },
    Hmac {
        spec: GenericHmac,
        tolerance: u64,
    },
    Basic,
    Bearer,
    HeaderToken {
        header: String,
    },
}

/// A source's scheme with its secrets, reloadable for rotation.
pub struct Verifier {
    method: Method,
    /// Secrets in force; swapped whole on reload.
    keys: RwLock<Arc<Vec<Key>>>,
    sources: Vec<SecretSource>,
    /// Meta's GET verification token.
    verify_token: Option<Vec<u8>>,
    /// Which handshakes this source answers.
    handshakes: handshake::Kinds,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads every secret source; any missing or empty one is an error naming it.
    pub fn new(
        method: Method,
        sources: Vec<SecretSource>,
        verify_token: Option<Vec<u8>>,
        handshakes: handshake::Kinds,
    ) -> Result<Verifier, KeyError> {
        let keys = load_keys(&method, &sources)?;
        Ok(Verifier {
            method,
            keys: RwLock::new(Arc::new(keys)),
            sources,
            verify_token,
            handshakes,
        })
    }

    /// A verifier with literal secrets: for tests, benchmarks and `sign`.
    pub fn with_secrets(method: Method, secrets: &[&[u8]]) -> Result<Verifier, KeyError> {
        let keys = secrets
            .iter()
            .map(|s| decode_key(&method, s.to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier {
            method,
            keys: RwLock::new(Arc::new(keys)),
            sources: Vec::new(),
            verify_token: None,
            handshakes: handshake::Kinds::default(),
        })
    }

    /// Re-reads every secret source. On any error the secrets in force are kept.
    pub fn reload(&self) -> Result<usize, KeyError> {
        if self.sources.is_empty() {
            return Ok(self.keys().len());
        }
        let keys = load_keys(&self.method, &self.sources)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    /// The files secrets are read from, to watch for rotation.
    pub fn secret_files(&self) -> Vec<std::path::PathBuf> {
        self.sources
            .iter()
            .filter_map(|s| match s {
                SecretSource::File(p) => Some(p.clone()),
                SecretSource::Env(_) => None,
            })
            .collect()
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks a request against the current secrets.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: Bytes,
        path_and_query: &str,
    ) -> Result<Verified, Failure> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signed = self.signed_form(&Request {
            headers,
            body: &body,
            path_and_query,
            now,
        })?;
        Ok(Verified(signed.map_or(body, Bytes::from)))
    }

    /// [`Verifier::verify`] at a given time, without taking the body.
    pub fn verify_at(&self, req: &Request<'_>) -> Result<(), Failure> {
        self.signed_form(req).map(|_| ())
    }

    /// Checks the request; `Some(bytes)` when what was signed is a canonical form of
    /// the body rather than the bytes received (quickassist's json-stringify mode).
    fn signed_form(&self, req: &Request<'_>) -> Result<Option<Vec<u8>>, Failure> {
        let keys = self.keys();
        let raw = match &self.method {
            Method::Quickassist { json_stringify } => {
                return body::quickassist(req, &keys, *json_stringify);
            }
            Method::HubSignature => body::hub_signature(req, &keys),
            Method::Shopify => body::shopify(req, &keys),
            Method::Razorpay => body::razorpay(req, &keys),
            Method::Linear { tolerance } => body::linear(req, &keys, *tolerance),
            Method::Hmac { spec, tolerance } => body::generic(req, &keys, spec, *tolerance),
            Method::StandardWebhooks { tolerance } => {
                timestamped::standard_webhooks(req, &keys, *tolerance)
            }
            Method::Stripe { tolerance } => timestamped::stripe(req, &keys, *tolerance),
            Method::Slack { tolerance } => timestamped::slack(req, &keys, *tolerance),
            Method::Paddle { tolerance } => timestamped::paddle(req, &keys, *tolerance),
            Method::Zoom { tolerance } => timestamped::zoom(req, &keys, *tolerance),
            Method::Twilio { public_url } => twilio::verify(req, &keys, public_url),
            Method::Basic => token::basic(req, &keys),
            Method::Bearer => token::bearer(req, &keys),
            Method::HeaderToken { header } => token::header_token(req, &keys, header),
        };
        raw.map(|()| None)
    }

    /// A provider handshake in a verified POST (GitHub ping, Slack url_verification,
    /// Zoom url_validation): answered directly, never published.
    pub fn handshake(&self, verified: &Verified, headers: &HeaderMap) -> Option<Reply> {
        handshake::post(self.handshakes, verified.body(), headers, &self.keys())
    }

    /// A provider's GET verification (Meta's hub.challenge); `None` when the scheme has none.
    pub fn handshake_get(&self, query: &str) -> Option<Reply> {
        handshake::get(self.handshakes, query, self.verify_token.as_deref())
    }

    /// The headers a sender would attach to `body` now, signed with the first secret:
    /// for `hookrelay sign` and tests.
    pub fn sign(
        &self,
        body: &[u8],
        path_and_query: &str,
    ) -> Result<Vec<(String, String)>, KeyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let keys = self.keys();
        let key = keys.first().ok_or(KeyError::NoSecret)?;
        sign(&self.method, key, body, path_and_query, now)
    }
}

/// Decodes a raw secret into the key form the scheme needs.
fn decode_key(method: &Method, raw: Vec<u8>) -> Result<Key, KeyError> {
    match method {
        Method::StandardWebhooks { .. } => timestamped::standard_key(&raw),
        _ => Ok(Key::shared(raw)),
    }
}

fn load_keys(method: &Method, sources: &[SecretSource]) -> Result<Vec<Key>, KeyError> {
    if sources.is_empty() {
        return Err(KeyError::NoSecret);
    }
    sources
        .iter()
        .map(|s| s.read().and_then(|raw| decode_key(method, raw)))
        .collect()
}

/// Builds the signature header(s) of a scheme, for a given key and time.
pub fn sign(
    method: &Method,
    key: &Key,
    body: &[u8],
    path_and_query: &str,
    now: u64,
) -> Result<Vec<(String, String)>, KeyError> {
    let shared = |k: &Key| match k {
        Key::Shared(s) => Ok(s.to_vec()),
        Key::Ed25519(_) => Err(KeyError::VerifyOnly),
    };
    let hex256 = |parts: &[&[u8]]| -> Result<String, KeyError> {
        Ok(hex::encode(Alg::Sha256.mac(&shared(key)?, parts)))
    };
    let ts = now.to_string();
    Ok(match method {
        Method::Quickassist { .. } => vec![("x-webhook-signature".into(), hex256(&[body])?)],
        Method::HubSignature => vec![(
            "x-hub-signature-256".into(),
            format!("sha256={}", hex256(&[body])?),
        )],
        Method::Shopify => vec![(
            "x-shopify-hmac-sha256".into(),
            Encoding::Base64.encode(&Alg::Sha256.mac(&shared(key)?, &[body])),
        )],
        Method::Razorpay => vec![("x-razorpay-signature".into(), hex256(&[body])?)],
        Method::Linear { .. } => vec![("linear-signature".into(), hex256(&[body])?)],
        Method::Stripe { .. } => vec![(
            "stripe-signature".into(),
            format!("t={ts},v1={}", hex256(&[ts.as_bytes(), b".", body])?),
        )],
        Method::Slack { .. } => vec![
            ("x-slack-request-timestamp".into(), ts.clone()),
            (
                "x-slack-signature".into(),
                format!("v0={}", hex256(&[b"v0:", ts.as_bytes(), b":", body])?),
            ),
        ],
        Method::Zoom { .. } => vec![
            ("x-zm-request-timestamp".into(), ts.clone()),
            (
                "x-zm-signature".into(),
                format!("v0={}", hex256(&[b"v0:", ts.as_bytes(), b":", body])?),
            ),
        ],
        Method::Paddle { .. } => vec![(
            "paddle-signature".into(),
            format!("ts={ts};h1={}", hex256(&[ts.as_bytes(), b":", body])?),
        )],
        Method::StandardWebhooks { .. } => {
            let id = format!("msg_{:016x}", fastrand::u64(..));
            let sig = Alg::Sha256.mac(
                &shared(key)?,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
            );
            vec![
                ("webhook-id".into(), id),
                ("webhook-timestamp".into(), ts),
                (
                    "webhook-signature".into(),
                    format!("v1,{}", Encoding::Base64.encode(&sig)),
                ),
            ]
        }
        Method::Twilio { public_url } => {
            vec![(
                "x-twilio-signature".into(),
                twilio::sign(&shared(key)?, public_url, path_and_query, body),
            )]
        }
        Method::Hmac { spec, .. } => body::generic_sign(spec, &shared(key)?, body, now),
        Method::Basic => vec![(
            "authorization".into(),
            format!("Basic {}", Encoding::Base64.encode(&shared(key)?)),
        )],
        Method::Bearer => vec![(
            "authorization".into(),
            format!("Bearer {}", String::from_utf8_lossy(&shared(key)?)),
        )],
        Method::HeaderToken { header } => vec![(
            header.to_ascii_lowercase(),
            String::from_utf8_lossy(&shared(key)?).into_owned(),
        )],
    })
}

/// The single value of a header. A repeated signature header is malformed: it is
/// either a proxy bug or an attempt to make us check one value and trust another.
pub(crate) fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a [u8], Failure> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if !v.as_bytes().trim_ascii().is_empty() => Ok(v.as_bytes().trim_ascii()),
        (Some(_), None) | (None, _) => Err(Failure::Missing),
        (Some(_), Some(_)) => Err(Failure::Malformed),
    }
}

/// A signed Unix timestamp within `tolerance` seconds of `now`, either way.
pub(crate) fn check_timestamp(raw: &[u8], now: u64, tolerance: u64) -> Result<u64, Failure> {
    let ts: u64 = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(Failure::Malformed)?;
    if ts.abs_diff(now) > tolerance {
        return Err(Failure::Stale);
    }
    Ok(ts)
}

pub use handshake::Kinds as Handshakes;

/// TheQuickAssist's signature of `body`: lowercase hex HMAC-SHA256.
pub fn quickassist_sign(secret: &[u8], body: &[u8]) -> String {
    hex::encode(Alg::Sha256.mac(secret, &[body]))
}

#[cfg(test)]
mod tests;
