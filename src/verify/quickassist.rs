//! TheQuickAssist: `x-webhook-signature` = lowercase hex HMAC-SHA256(secret, raw body).
//!
//! There is no timestamp header; replay protection comes from deduplication.

use hmac::{Hmac, KeyInit, Mac};
use hyper::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{Failure, decode_hex, single_header};

pub const SIGNATURE_HEADER: &str = "x-webhook-signature";

fn mac(secret: &[u8], body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

pub(super) fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), Failure> {
    let given = single_header(headers, SIGNATURE_HEADER)?;
    let given = given.trim_ascii();
    if given.is_empty() {
        return Err(Failure::Missing);
    }
    // Length first (public: it is the scheme's), then a constant-time compare.
    let mut decoded = [0u8; 32];
    if !decode_hex(given, &mut decoded) {
        return Err(Failure::Malformed);
    }
    if bool::from(mac(secret, body).ct_eq(&decoded)) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

/// Lowercase hex signature of `body`, as TheQuickAssist would send it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    hex::encode(mac(secret, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn accepts_both_cases_rejects_the_rest() {
        let body = b"{\"event\":\"message.read\"}";
        let sig = sign(b"k", body);
        assert_eq!(verify(b"k", &headers(&sig), body), Ok(()));
        assert_eq!(verify(b"k", &headers(&sig.to_uppercase()), body), Ok(()));
        assert_eq!(
            verify(b"k", &headers(&sig[1..]), body),
            Err(Failure::Malformed)
        );
        assert_eq!(
            verify(b"k", &headers(&format!("{sig}0")), body),
            Err(Failure::Malformed)
        );
        let mut zz = sig.clone();
        zz.replace_range(0..2, "zz");
        assert_eq!(verify(b"k", &headers(&zz), body), Err(Failure::Malformed));
        assert_eq!(
            verify(b"other", &headers(&sig), body),
            Err(Failure::Mismatch)
        );
        assert_eq!(verify(b"k", &headers(&sig), b"{}"), Err(Failure::Mismatch));
        assert_eq!(verify(b"k", &HeaderMap::new(), body), Err(Failure::Missing));
        assert_eq!(verify(b"k", &headers(""), body), Err(Failure::Missing));
    }

    #[test]
    fn a_repeated_header_is_refused() {
        let body = b"{}";
        let sig = sign(b"k", body);
        let mut h = headers(&sig);
        h.append(SIGNATURE_HEADER, HeaderValue::from_str(&sig).unwrap());
        assert_eq!(verify(b"k", &h, body), Err(Failure::Malformed));
    }
}
