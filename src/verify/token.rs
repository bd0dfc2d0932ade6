//! For providers without signatures: a shared token compared in constant time.

use super::keys::{Key, any_token_matches, base64_decode};
use super::{Failure, Request, single_header};

fn authorization<'a>(req: &'a Request<'_>, scheme: &str) -> Result<&'a [u8], Failure> {
    let value = single_header(req.headers, "authorization")?;
    let (given, rest) = value.split_at(
        value
            .iter()
            .position(|c| *c == b' ')
            .ok_or(Failure::Malformed)?,
    );
    if !given.eq_ignore_ascii_case(scheme.as_bytes()) {
        return Err(Failure::Malformed);
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(Failure::Malformed);
    }
    Ok(token)
}

fn matches(keys: &[Key], presented: &[u8]) -> Result<(), Failure> {
    if any_token_matches(keys, presented) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

/// `Authorization: Basic base64(user:password)`; the secret is `user:password`.
pub fn basic(req: &Request<'_>, keys: &[Key]) -> Result<(), Failure> {
    let b64 = std::str::from_utf8(authorization(req, "basic")?).map_err(|_| Failure::Malformed)?;
    matches(keys, &base64_decode(b64).ok_or(Failure::Malformed)?)
}

/// `Authorization: Bearer <token>`.
pub fn bearer(req: &Request<'_>, keys: &[Key]) -> Result<(), Failure> {
    matches(keys, authorization(req, "bearer")?)
}

/// A token in a header of the source's choosing.
pub fn header_token(req: &Request<'_>, keys: &[Key], header: &str) -> Result<(), Failure> {
    matches(keys, single_header(req.headers, header)?)
}
