//! Twilio: `X-Twilio-Signature` = base64 HMAC-SHA1(auth token, URL + sorted POST
//! parameters). Twilio signs the public URL it called, which hookrelay cannot see
//! behind a proxy, so the source configures it (`public_url`, scheme and host).
//! JSON bodies are covered by a `bodySHA256` query parameter instead.

use std::borrow::Cow;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::keys::{Alg, Encoding, Key, any_mac_matches};
use super::{Failure, Request, single_header};

type Param<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// One form component, decoded only when it needs to be (`+` and `%XX`); most
/// Twilio values need no decoding, so they are borrowed from the body.
fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'%') && !raw.contains(&b'+') {
        return Cow::Borrowed(raw);
    }
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    Cow::Owned(percent_decode(&plus_as_space))
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let Ok(hex) = std::str::from_utf8(&s[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The decoded form parameters, sorted by name then value, as Twilio orders them.
fn sorted_params(body: &[u8]) -> Vec<Param<'_>> {
    let mut params: Vec<Param<'_>> = body
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (decode(&pair[..eq]), decode(&pair[eq + 1..])),
            None => (decode(pair), Cow::Borrowed(&b""[..])),
        })
        .collect();
    params.sort();
    params
}

/// What Twilio signs, as parts fed to the MAC without copying: the full URL,
/// then each form parameter's name and value (none for JSON bodies).
fn signed_parts<'a>(
    url: &'a [u8],
    path_and_query: &'a str,
    params: &'a [Param<'a>],
) -> Vec<&'a [u8]> {
    let mut parts = Vec::with_capacity(2 + params.len() * 2);
    parts.push(url);
    parts.push(path_and_query.as_bytes());
    for (k, v) in params {
        parts.push(k);
        parts.push(v);
    }
    parts
}

fn body_sha256(path_and_query: &str) -> Option<String> {
    let query = path_and_query.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
}

pub fn verify(req: &Request<'_>, keys: &[Key], public_url: &str) -> Result<(), Failure> {
    let sig = Encoding::Base64
        .decode(
            single_header(req.headers, "x-twilio-signature")?,
            Alg::Sha1.output_len(),
        )
        .ok_or(Failure::Malformed)?;
    let body_hash = body_sha256(req.path_and_query);
    let params = if body_hash.is_none() {
        sorted_params(req.body)
    } else {
        Vec::new()
    };
    let url = public_url.trim_end_matches('/').as_bytes();
    if !any_mac_matches(
        keys,
        Alg::Sha1,
        &signed_parts(url, req.path_and_query, &params),
        &[sig],
    ) {
        return Err(Failure::Mismatch);
    }
    if let Some(expected) = body_hash {
        let actual = hex::encode(Sha256::digest(req.body));
        if !bool::from(
            actual
                .as_bytes()
                .ct_eq(expected.to_ascii_lowercase().as_bytes()),
        ) {
            return Err(Failure::Mismatch);
        }
    }
    Ok(())
}

pub fn sign(secret: &[u8], public_url: &str, path_and_query: &str, body: &[u8]) -> String {
    let params = if body_sha256(path_and_query).is_none() {
        sorted_params(body)
    } else {
        Vec::new()
    };
    let url = public_url.trim_end_matches('/').as_bytes();
    Encoding::Base64.encode(&Alg::Sha1.mac(secret, &signed_parts(url, path_and_query, &params)))
}
