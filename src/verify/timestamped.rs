//! Schemes that sign a timestamp with the body, so a captured request cannot be
//! replayed after the tolerance: Standard Webhooks (Svix), Stripe, Slack, Zoom,
//! Paddle. The timestamp is checked first, then the signature.

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

use super::keys::{Alg, Encoding, Key, KeyError, any_mac_matches, base64_decode};
use super::{Failure, Request, check_timestamp, single_header};

/// `whsec_<base64>` is an HMAC key; `whpk_<base64>` an Ed25519 public key (`v1a`).
pub fn standard_key(raw: &[u8]) -> Result<Key, KeyError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| KeyError::Malformed("the secret is not text"))?
        .trim();
    if let Some(pk) = text.strip_prefix("whpk_") {
        let bytes: [u8; 32] =
            base64_decode(pk)
                .and_then(|b| b.try_into().ok())
                .ok_or(KeyError::Malformed(
                    "a whpk_ key must be 32 bytes of base64",
                ))?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|e| KeyError::PublicKey(e.to_string()))?;
        return Ok(Key::Ed25519(key));
    }
    let b64 = text.strip_prefix("whsec_").unwrap_or(text);
    base64_decode(b64)
        .filter(|b| !b.is_empty())
        .map(Key::shared)
        .ok_or(KeyError::Malformed(
            "a Standard Webhooks secret is whsec_<base64> (or whpk_<base64>)",
        ))
}

/// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64> v1a,<b64> ...`
/// over `{id}.{timestamp}.{body}`.
pub fn standard_webhooks(req: &Request<'_>, keys: &[Key], tolerance: u64) -> Result<(), Failure> {
    let id = single_header(req.headers, "webhook-id")?;
    let ts = single_header(req.headers, "webhook-timestamp")?;
    let sigs = single_header(req.headers, "webhook-signature")?;
    check_timestamp(ts, req.now, tolerance)?;
    let mut hmacs = Vec::new();
    let mut eds = Vec::new();
    for entry in sigs.split(|c| *c == b' ').filter(|e| !e.is_empty()) {
        let Some(comma) = entry.iter().position(|c| *c == b',') else {
            return Err(Failure::Malformed);
        };
        let (version, sig) = (&entry[..comma], &entry[comma + 1..]);
        match version {
            b"v1" => hmacs.push(Encoding::Base64.decode(sig, 32).ok_or(Failure::Malformed)?),
            b"v1a" => eds.push(Encoding::Base64.decode(sig, 64).ok_or(Failure::Malformed)?),
            _ => {} // future versions: ignored, as the spec asks
        }
    }
    if hmacs.is_empty() && eds.is_empty() {
        return Err(Failure::Malformed);
    }
    if any_mac_matches(keys, Alg::Sha256, &[id, b".", ts, b".", req.body], &hmacs) {
        return Ok(());
    }
    if !eds.is_empty() {
        let msg = [id, b".", ts, b".", req.body].concat();
        for key in keys {
            if let Key::Ed25519(pk) = key {
                for sig in &eds {
                    let Ok(bytes) = <[u8; 64]>::try_from(sig.as_slice()) else {
                        continue;
                    };
                    if pk.verify(&msg, &Signature::from_bytes(&bytes)).is_ok() {
                        return Ok(());
                    }
                }
            }
        }
    }
    Err(Failure::Mismatch)
}

/// Splits `t=1,v1=aa,v1=bb` (or `ts=1;h1=aa`) into the timestamp and the hex signatures.
fn parse_pairs<'a>(
    value: &'a [u8],
    sep: u8,
    ts_key: &[u8],
    sig_key: &[u8],
) -> Result<(&'a [u8], Vec<Vec<u8>>), Failure> {
    let mut ts = None;
    let mut sigs = Vec::new();
    for pair in value.split(|c| *c == sep) {
        let pair = pair.trim_ascii();
        let Some(eq) = pair.iter().position(|c| *c == b'=') else {
            continue;
        };
        let (k, v) = (&pair[..eq], &pair[eq + 1..]);
        if k == ts_key {
            if ts.replace(v).is_some() {
                return Err(Failure::Malformed);
            }
        } else if k == sig_key {
            sigs.push(Encoding::Hex.decode(v, 32).ok_or(Failure::Malformed)?);
        }
    }
    match ts {
        Some(t) if !sigs.is_empty() => Ok((t, sigs)),
        _ => Err(Failure::Malformed),
    }
}

/// A header of `key=value` pairs carrying the timestamp and hex HMAC-SHA256
/// signatures over `{ts}{joiner}{body}` (Stripe and Paddle differ only in spelling).
struct PairsScheme {
    header: &'static str,
    separator: u8,
    ts_key: &'static [u8],
    sig_key: &'static [u8],
    joiner: &'static [u8],
}

fn pairs_scheme(
    req: &Request<'_>,
    keys: &[Key],
    tolerance: u64,
    s: &PairsScheme,
) -> Result<(), Failure> {
    let (ts, sigs) = parse_pairs(
        single_header(req.headers, s.header)?,
        s.separator,
        s.ts_key,
        s.sig_key,
    )?;
    check_timestamp(ts, req.now, tolerance)?;
    if any_mac_matches(keys, Alg::Sha256, &[ts, s.joiner, req.body], &sigs) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

/// `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]` over `{t}.{body}`.
pub fn stripe(req: &Request<'_>, keys: &[Key], tolerance: u64) -> Result<(), Failure> {
    const STRIPE: PairsScheme = PairsScheme {
        header: "stripe-signature",
        separator: b',',
        ts_key: b"t",
        sig_key: b"v1",
        joiner: b".",
    };
    pairs_scheme(req, keys, tolerance, &STRIPE)
}

/// `Paddle-Signature: ts=<ts>;h1=<hex>[;h1=<hex>]` over `{ts}:{body}`.
pub fn paddle(req: &Request<'_>, keys: &[Key], tolerance: u64) -> Result<(), Failure> {
    const PADDLE: PairsScheme = PairsScheme {
        header: "paddle-signature",
        separator: b';',
        ts_key: b"ts",
        sig_key: b"h1",
        joiner: b":",
    };
    pairs_scheme(req, keys, tolerance, &PADDLE)
}

/// `v0=<hex>` over `v0:{ts}:{body}`, with the timestamp in its own header.
fn v0(
    req: &Request<'_>,
    keys: &[Key],
    tolerance: u64,
    sig_header: &str,
    ts_header: &str,
) -> Result<(), Failure> {
    let sig = single_header(req.headers, sig_header)?;
    let ts = single_header(req.headers, ts_header)?;
    let hex = sig.strip_prefix(b"v0=").ok_or(Failure::Malformed)?;
    let sig = Encoding::Hex.decode(hex, 32).ok_or(Failure::Malformed)?;
    check_timestamp(ts, req.now, tolerance)?;
    if any_mac_matches(keys, Alg::Sha256, &[b"v0:", ts, b":", req.body], &[sig]) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

pub fn slack(req: &Request<'_>, keys: &[Key], tolerance: u64) -> Result<(), Failure> {
    v0(
        req,
        keys,
        tolerance,
        "x-slack-signature",
        "x-slack-request-timestamp",
    )
}

pub fn zoom(req: &Request<'_>, keys: &[Key], tolerance: u64) -> Result<(), Failure> {
    v0(
        req,
        keys,
        tolerance,
        "x-zm-signature",
        "x-zm-request-timestamp",
    )
}
