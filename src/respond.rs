//! JSON answers, the same shape on the webhook port and the admin port:
//! `{"status": ..., ...}`, and `{"status": "error", "error": reason}` on failure.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

pub type Resp = Response<Full<Bytes>>;

pub fn json(status: StatusCode, body: impl serde::Serialize) -> Resp {
    // Serializing plain strings and numbers into a Vec cannot fail.
    let text = serde_json::to_vec(&body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error(status: StatusCode, reason: &str) -> Resp {
    json(
        status,
        serde_json::json!({ "status": "error", "error": reason }),
    )
}
