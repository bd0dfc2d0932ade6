//! Signature verification, one file per family of schemes.
//!
//! Verification runs on the raw bytes received, before anything parses them.
//! Its only way out is [`Verified`], so nothing unverified can reach the event
//! extractor or the spool by construction.

mod quickassist;

use bytes::Bytes;
use hyper::HeaderMap;

use crate::config::Scheme;

pub use quickassist::{SIGNATURE_HEADER as QUICKASSIST_HEADER, sign as quickassist_sign};

/// Why a signature was refused; the label of `hookrelay_signature_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The signature header is absent or empty.
    Missing,
    /// Present but not of the scheme's shape (wrong length, not hex, repeated).
    Malformed,
    /// Well-formed but does not match any secret.
    Mismatch,
}

impl Failure {
    pub const ALL: [Failure; 3] = [Failure::Missing, Failure::Malformed, Failure::Mismatch];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Mismatch => "mismatch",
        }
    }
}

/// A body whose signature checked out. Only [`Verifier::verify`] makes one.
#[derive(Debug, Clone)]
pub struct Verified(Bytes);

impl Verified {
    pub fn body(&self) -> &Bytes {
        &self.0
    }
}

/// A source's scheme with its secret(s) loaded.
pub struct Verifier {
    scheme: Scheme,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, not even in debug output.
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(scheme: Scheme, secret: Vec<u8>) -> Self {
        Self { scheme, secret }
    }

    pub fn verify(&self, headers: &HeaderMap, body: Bytes) -> Result<Verified, Failure> {
        match self.scheme {
            Scheme::Quickassist => quickassist::verify(&self.secret, headers, &body)?,
        }
        Ok(Verified(body))
    }

    /// The headers a sender would attach to `body`: for `hookrelay sign` and tests.
    pub fn sign(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        match self.scheme {
            Scheme::Quickassist => {
                vec![(QUICKASSIST_HEADER, quickassist::sign(&self.secret, body))]
            }
        }
    }
}

/// Decodes hex of either case into `out`; false on any non-hex digit or wrong length.
pub(crate) fn decode_hex(hex: &[u8], out: &mut [u8]) -> bool {
    if hex.len() != out.len() * 2 {
        return false;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

/// The single value of a header. A repeated signature header is malformed: it is
/// either a proxy bug or an attempt to make us check one value and trust another.
pub(crate) fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a [u8], Failure> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v.as_bytes()),
        (None, _) => Err(Failure::Missing),
        (Some(_), Some(_)) => Err(Failure::Malformed),
    }
}
