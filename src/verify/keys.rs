//! Secrets, MAC algorithms and signature encodings shared by every scheme.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

/// Why a secret cannot be used: never its value, only where it came from and what
/// is wrong with its form.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no secret configured")]
    NoSecret,
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is empty", .0.display())]
    FileEmpty(PathBuf),
    /// The secret is not in the form the scheme takes.
    #[error("{0}")]
    Malformed(&'static str),
    #[error("invalid whpk_ key: {0}")]
    PublicKey(String),
    /// Signing (for `hookrelay sign`, tests) with a key that only verifies.
    #[error("this key only verifies (a public key); sign with the sender's private key")]
    VerifyOnly,
}

/// Where one secret comes from; re-read on rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// The raw secret; missing or empty is an error naming the source (never the value).
    pub fn read(&self) -> Result<Vec<u8>, KeyError> {
        let bytes = match self {
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|_| KeyError::EnvUnset(var.clone()))?
                .into_bytes(),
            SecretSource::File(path) => {
                let mut b = std::fs::read(path).map_err(|source| KeyError::Unreadable {
                    path: path.clone(),
                    source,
                })?;
                while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                    b.pop();
                }
                b
            }
        };
        if bytes.is_empty() {
            return Err(match self {
                SecretSource::Env(var) => KeyError::EnvEmpty(var.clone()),
                SecretSource::File(path) => KeyError::FileEmpty(path.clone()),
            });
        }
        Ok(bytes)
    }
}

/// A shared secret with its HMAC states prepared: keying HMAC hashes two blocks,
/// which at a 1 KiB body is a fifth of the work; it is done once per secret.
#[derive(Clone)]
pub struct SharedSecret {
    raw: Vec<u8>,
    sha1: Hmac<sha1::Sha1>,
    sha256: Hmac<sha2::Sha256>,
    sha512: Hmac<sha2::Sha512>,
}

impl SharedSecret {
    pub fn new(raw: Vec<u8>) -> SharedSecret {
        // HMAC takes keys of any length: these cannot fail.
        SharedSecret {
            sha1: <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&raw).expect("any key length"),
            sha256: <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&raw).expect("any key length"),
            sha512: <Hmac<sha2::Sha512> as KeyInit>::new_from_slice(&raw).expect("any key length"),
            raw,
        }
    }

    /// HMAC over the concatenation of `parts`, from the prepared state.
    pub fn mac(&self, alg: Alg, parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + Clone>(m: &M, parts: &[&[u8]]) -> Vec<u8> {
            let mut m = m.clone();
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match alg {
            Alg::Sha1 => run(&self.sha1, parts),
            Alg::Sha256 => run(&self.sha256, parts),
            Alg::Sha512 => run(&self.sha512, parts),
        }
    }
}

impl std::ops::Deref for SharedSecret {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw
    }
}

impl Key {
    pub fn shared(raw: Vec<u8>) -> Key {
        Key::Shared(Box::new(SharedSecret::new(raw)))
    }
}

/// A usable secret.
#[derive(Clone)]
pub enum Key {
    /// Shared secret for HMAC schemes, or the expected token for token schemes.
    Shared(Box<SharedSecret>),
    /// Standard Webhooks `v1a`: the sender's Ed25519 public key.
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// HMAC hash functions providers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alg {
    Sha1,
    Sha256,
    Sha512,
}

impl Alg {
    pub fn output_len(self) -> usize {
        match self {
            Alg::Sha1 => 20,
            Alg::Sha256 => 32,
            Alg::Sha512 => 64,
        }
    }

    /// HMAC over the concatenation of `parts`, without copying them together.
    pub fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC takes keys of any length: this cannot fail.
            let mut m = <M as KeyInit>::new_from_slice(key).expect("any key length");
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Alg::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
            Alg::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
            Alg::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
        }
    }
}

/// How a signature is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    /// Decodes a signature of exactly `len` bytes; `None` for anything else.
    pub fn decode(self, text: &[u8], len: usize) -> Option<Vec<u8>> {
        match self {
            Encoding::Hex => {
                let mut out = vec![0u8; len];
                decode_hex(text, &mut out).then_some(out)
            }
            Encoding::Base64 => {
                let v = STANDARD
                    .decode(text)
                    .or_else(|_| STANDARD_NO_PAD.decode(text))
                    .ok()?;
                (v.len() == len).then_some(v)
            }
        }
    }

    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => STANDARD.encode(bytes),
        }
    }
}

/// Hex of either case into `out`; false on a non-hex digit or a wrong length.
pub fn decode_hex(hex: &[u8], out: &mut [u8]) -> bool {
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

pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .ok()
}

/// True when any shared key's MAC over `parts` equals any candidate, each compared
/// in constant time (candidates were length-checked when decoded).
pub fn any_mac_matches(keys: &[Key], alg: Alg, parts: &[&[u8]], candidates: &[Vec<u8>]) -> bool {
    let mut ok = false;
    for k in keys {
        if let Key::Shared(secret) = k {
            let mac = secret.mac(alg, parts);
            for c in candidates {
                ok |= bool::from(mac.ct_eq(c));
            }
        }
    }
    ok
}

/// Constant-time equality of a presented token with any configured one.
pub fn any_token_matches(keys: &[Key], presented: &[u8]) -> bool {
    let mut ok = false;
    for k in keys {
        if let Key::Shared(t) = k {
            // Length is not secret for tokens of a known format; the bytes are.
            ok |= t.len() == presented.len() && bool::from(t.ct_eq(presented));
        }
    }
    ok
}
