//! Schemes that sign the body alone (plus, for the generic one, a template):
//! TheQuickAssist, GitHub and Meta (`X-Hub-Signature-256`), Shopify, Razorpay,
//! Linear, and the configurable `hmac`.

use super::keys::{Alg, Encoding, Key, any_mac_matches};
use super::{Failure, GenericHmac, Request, check_timestamp, single_header};

/// Strips `prefix` and decodes one signature of the algorithm's length.
fn decode(value: &[u8], prefix: &str, enc: Encoding, alg: Alg) -> Result<Vec<u8>, Failure> {
    let sig = value
        .strip_prefix(prefix.as_bytes())
        .ok_or(Failure::Malformed)?;
    if sig.is_empty() {
        return Err(Failure::Malformed); // `sha256=` with nothing after it
    }
    enc.decode(sig, alg.output_len()).ok_or(Failure::Malformed)
}

fn body_hmac(
    req: &Request<'_>,
    keys: &[Key],
    header: &str,
    prefix: &str,
    enc: Encoding,
) -> Result<(), Failure> {
    let sig = decode(
        single_header(req.headers, header)?,
        prefix,
        enc,
        Alg::Sha256,
    )?;
    if any_mac_matches(keys, Alg::Sha256, &[req.body], &[sig]) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

/// Raw bytes first; with `json_stringify`, also the body's `JSON.stringify` form.
/// When only that form verifies it is returned: it, not the bytes received, is what
/// was signed, so it is what is published and what the id is read from. Otherwise
/// whitespace, a repeated key or `1` written `1.0` would make a captured body a new
/// event with attacker-chosen bytes under the same signature.
pub fn quickassist(
    req: &Request<'_>,
    keys: &[Key],
    json_stringify: bool,
) -> Result<Option<Vec<u8>>, Failure> {
    let sig = decode(
        single_header(req.headers, "x-webhook-signature")?,
        "",
        Encoding::Hex,
        Alg::Sha256,
    )?;
    if any_mac_matches(keys, Alg::Sha256, &[req.body], std::slice::from_ref(&sig)) {
        return Ok(None);
    }
    if json_stringify
        && let Some(form) = super::jsstringify::stringify(req.body)
        && any_mac_matches(keys, Alg::Sha256, &[&form], &[sig])
    {
        return Ok(Some(form));
    }
    Err(Failure::Mismatch)
}

pub fn hub_signature(req: &Request<'_>, keys: &[Key]) -> Result<(), Failure> {
    body_hmac(req, keys, "x-hub-signature-256", "sha256=", Encoding::Hex)
}

pub fn shopify(req: &Request<'_>, keys: &[Key]) -> Result<(), Failure> {
    body_hmac(req, keys, "x-shopify-hmac-sha256", "", Encoding::Base64)
}

pub fn razorpay(req: &Request<'_>, keys: &[Key]) -> Result<(), Failure> {
    body_hmac(req, keys, "x-razorpay-signature", "", Encoding::Hex)
}

/// Linear signs the body; its `webhookTimestamp` (ms) must be recent. The body is
/// the only place the timestamp is, so it must be there exactly once, as an integer:
/// missing, a string, a float or a repeated key is a 401, never a skipped check.
pub fn linear(req: &Request<'_>, keys: &[Key], tolerance: u64) -> Result<(), Failure> {
    body_hmac(req, keys, "linear-signature", "", Encoding::Hex)?;
    #[derive(serde::Deserialize)]
    struct Stamp {
        // serde refuses a repeated field, a float and a string here.
        #[serde(rename = "webhookTimestamp")]
        webhook_timestamp: Option<u64>,
    }
    match serde_json::from_slice::<Stamp>(req.body) {
        Ok(Stamp {
            webhook_timestamp: Some(ms),
        }) if (ms / 1000).abs_diff(req.now) <= tolerance => Ok(()),
        Ok(Stamp {
            webhook_timestamp: Some(_),
        }) => Err(Failure::Stale),
        Ok(Stamp {
            webhook_timestamp: None,
        })
        | Err(_) => Err(Failure::Malformed),
    }
}

/// One part of the generic scheme's signed content.
enum Part<'a> {
    Text(&'a [u8]),
    Body,
    Timestamp,
    Id,
}

fn template(content: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    let mut rest = content;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| c + open) else {
            break;
        };
        let part = match &rest[open + 1..close] {
            "body" => Part::Body,
            "timestamp" => Part::Timestamp,
            "id" => Part::Id,
            _ => {
                parts.push(Part::Text(&rest.as_bytes()[..=close]));
                rest = &rest[close + 1..];
                continue;
            }
        };
        if open > 0 {
            parts.push(Part::Text(&rest.as_bytes()[..open]));
        }
        parts.push(part);
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.as_bytes()));
    }
    parts
}

fn content<'a>(parts: &'a [Part<'a>], body: &'a [u8], ts: &'a [u8], id: &'a [u8]) -> Vec<&'a [u8]> {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => *t,
            Part::Body => body,
            Part::Timestamp => ts,
            Part::Id => id,
        })
        .collect()
}

pub fn generic(
    req: &Request<'_>,
    keys: &[Key],
    spec: &GenericHmac,
    tolerance: u64,
) -> Result<(), Failure> {
    let sig = decode(
        single_header(req.headers, &spec.header)?,
        &spec.prefix,
        spec.encoding,
        spec.algorithm,
    )?;
    let ts: &[u8] = match &spec.timestamp_header {
        Some(h) => {
            let raw = single_header(req.headers, h)?;
            check_timestamp(raw, req.now, tolerance)?;
            raw
        }
        None => b"",
    };
    let id: &[u8] = match &spec.id_header {
        Some(h) => single_header(req.headers, h)?,
        None => b"",
    };
    let parts = template(&spec.content);
    if any_mac_matches(
        keys,
        spec.algorithm,
        &content(&parts, req.body, ts, id),
        &[sig],
    ) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

pub fn generic_sign(
    spec: &GenericHmac,
    secret: &[u8],
    body: &[u8],
    now: u64,
) -> Vec<(String, String)> {
    let ts = now.to_string();
    let id = format!("evt_{:016x}", fastrand::u64(..));
    let parts = template(&spec.content);
    let mac = spec
        .algorithm
        .mac(secret, &content(&parts, body, ts.as_bytes(), id.as_bytes()));
    let mut headers = vec![(
        spec.header.to_ascii_lowercase(),
        format!("{}{}", spec.prefix, spec.encoding.encode(&mac)),
    )];
    if let Some(h) = &spec.timestamp_header {
        headers.push((h.to_ascii_lowercase(), ts));
    }
    if let Some(h) = &spec.id_header {
        headers.push((h.to_ascii_lowercase(), id));
    }
    headers
}
