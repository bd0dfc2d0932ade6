//! Twilio: `X-Twilio-Signature` = base64 HMAC-SHA1(auth token, URL + sorted POST
//! parameters). Twilio signs the public URL it called, which hookrelay cannot see
//! behind a proxy, so the source configures it (`public_url`, scheme and host).
//! JSON bodies are covered by a `bodySHA256` query parameter instead.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::keys::{Alg, Encoding, Key, any_mac_matches};
use super::{Failure, Request, single_header};

/// What Twilio signs: the full URL, then each form parameter's name and value, sorted.
fn signed_string(public_url: &str, path_and_query: &str, body: &[u8], is_form: bool) -> Vec<u8> {
    let mut s = format!("{}{}", public_url.trim_end_matches('/'), path_and_query).into_bytes();
    if is_form {
        let mut params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        params.sort();
        for (k, v) in params {
            s.extend_from_slice(k.as_bytes());
            s.extend_from_slice(v.as_bytes());
        }
    }
    s
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
    let content = signed_string(
        public_url,
        req.path_and_query,
        req.body,
        body_hash.is_none(),
    );
    if !any_mac_matches(keys, Alg::Sha1, &[&content], &[sig]) {
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
    let is_form = body_sha256(path_and_query).is_none();
    Encoding::Base64.encode(&Alg::Sha1.mac(
        secret,
        &[&signed_string(public_url, path_and_query, body, is_form)],
    ))
}
