//! The admin API's client: one HTTP/1.1 request per connection with hyper, so
//! that `kubectl exec POD -- hookrelay admin ...` works in the distroless image,
//! which has neither a shell nor curl.
//!
//! Plain http only: the admin port is reached on loopback or the pod's IP, and a
//! token sent over TLS to a name that did not verify would be worse than none.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A wedged instance must not hang an operator's terminal.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole exchange; a request that asks the server to wait adds its wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A dead letter's body is at most the largest accepted webhook; a list page is
/// bounded by its limit. More than this is not an answer of the admin API.
const MAX_BODY: usize = 64 << 20;

/// Where the admin API is, and the token it wants.
/// A token file is a few dozen bytes; reading stops here whatever the path names.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

pub struct AdminClient {
    /// `host:port`, for the connection and the `Host` header.
    authority: String,
    /// The URL's path (no trailing `/`), prefixed to every API path: a proxy
    /// may serve the admin API under one.
    prefix: String,
    token: Option<String>,
    token_env: String,
}

/// The server's refusal, or anything else that kept an answer from coming.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl AdminClient {
    /// `url` is `http://host:port[/prefix]` (the scheme may be left out); the
    /// token is read from `token_file` when given (the mounted secret itself: the
    /// distroless image has no shell or `env` to put it in a variable), else from
    /// the variable `token_env`, whitespace trimmed either way (a mounted secret
    /// often ends in a newline). No token is sent when there is none: the
    /// server's 401 then says so, with a hint.
    pub fn new(
        url: &str,
        token_env: &str,
        token_file: Option<&Path>,
    ) -> anyhow::Result<AdminClient> {
        let full = if url.contains("://") {
            url.trim().to_string()
        } else {
            format!("http://{}", url.trim())
        };
        let uri: Uri = full
            .parse()
            .with_context(|| format!("--url {url}: not a URL"))?;
        let scheme = uri.scheme_str().unwrap_or_default();
        if scheme != "http" {
            bail!(
                "--url {url}: {scheme} is not supported: the admin API is plain http, on loopback or the pod's IP"
            );
        }
        let host = uri
            .host()
            .with_context(|| format!("--url {url}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let (token, token_env) = match token_file {
            Some(path) => {
                let mut text = String::new();
                std::fs::File::open(path)
                    .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_string(&mut text))
                    .with_context(|| format!("--token-file {}: cannot read it", path.display()))?;
                if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
                    bail!(
                        "--token-file {}: longer than {MAX_TOKEN_FILE_BYTES} bytes: not a token file",
                        path.display()
                    );
                }
                let t = text.trim();
                (
                    (!t.is_empty()).then(|| t.to_string()),
                    format!("--token-file {}", path.display()),
                )
            }
            None => match std::env::var(token_env) {
                Ok(t) if !t.trim().is_empty() => {
                    (Some(t.trim().to_string()), token_env.to_string())
                }
                Ok(_) | Err(std::env::VarError::NotPresent) => (None, token_env.to_string()),
                Err(std::env::VarError::NotUnicode(_)) => {
                    bail!("{token_env} holds bytes that are not UTF-8: not a token")
                }
            },
        };
        Ok(AdminClient {
            authority: format!("{host}:{port}"),
            prefix: uri.path().trim_end_matches('/').to_string(),
            token,
            token_env,
        })
    }

    /// `path` is the API's (`/admin/...`, query included, values escaped).
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None, Duration::ZERO).await
    }

    /// `wait` is how long the server was asked to wait before answering.
    pub async fn post(&self, path: &str, body: &Value, wait: Duration) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(body).context("encoding the request")?;
        self.call(Method::POST, path, Some(body), wait).await
    }

    /// One request; a 2xx answer's JSON, or the server's error made readable.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        wait: Duration,
    ) -> anyhow::Result<Value> {
        let target = format!("{}{path}", self.prefix);
        let url = format!("http://{}{target}", self.authority);
        let exchange = self.exchange(method, &target, &url, body);
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT + wait, exchange)
            .await
            .map_err(|_| {
                anyhow!(
                    "{url}: no answer within {}s",
                    (REQUEST_TIMEOUT + wait).as_secs()
                )
            })??;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("{url}: {status}, but the answer is not JSON"));
        }
        Err(self.refusal(status, &bytes).into())
    }

    /// Why a non-2xx status came back, in the operator's terms.
    fn refusal(&self, status: StatusCode, body: &[u8]) -> ApiError {
        let said = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string));
        let message = match (status, said) {
            // Every path is under /admin: a 404 the API did not explain (the
            // admin port's plain "not found") is an instance that serves no
            // admin API at all.
            (StatusCode::NOT_FOUND, said) if said.as_deref().is_none_or(|s| s == "not found") => {
                return ApiError {
                    status,
                    message: "the admin API is off on this instance (no admin.token_env / admin.token_file configured)".into(),
                };
            }
            (StatusCode::UNAUTHORIZED, said) => {
                let said = said.unwrap_or_else(|| "unauthorized".into());
                let hint = match self.token {
                    None => format!(
                        "{} is not set: set it to the instance's admin token (or name another variable with --token-env, or the mounted secret with --token-file)",
                        self.token_env
                    ),
                    Some(_) => format!(
                        "the token in {} was refused: set it to the instance's admin token (or name another variable with --token-env)",
                        self.token_env
                    ),
                };
                format!("{said} (hint: {hint})")
            }
            (_, Some(said)) => said,
            (_, None) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    "no error message".into()
                } else {
                    text.chars().take(300).collect()
                }
            }
        };
        ApiError { status, message }
    }

    async fn exchange(
        &self,
        method: Method,
        target: &str,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "cannot connect to {}: no answer within {}s",
                self.authority,
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("cannot connect to {} (is --url right?)", self.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("{url}: HTTP handshake"))?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, &self.authority)
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("hookrelay-admin/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                anyhow!(
                    "{}: the token holds characters a header cannot carry",
                    self.token_env
                )
            })?;
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("{url}: not a valid request"))?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("{url}: no answer"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    anyhow!("{url}: the answer is larger than {} MiB", MAX_BODY >> 20)
                } else {
                    anyhow!("{url}: reading the answer: {e}")
                }
            })?
            .to_bytes();
        driver.abort();
        Ok((status, bytes))
    }
}

/// A path segment or query value with everything but unreserved characters
/// percent-encoded: ids and sink names come from the command line.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_and_prefix() {
        let c =
            AdminClient::new("http://127.0.0.1:9090/", "HOOKRELAY_TEST_NO_SUCH_VAR", None).unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("127.0.0.1:9090", "")
        );
        let c = AdminClient::new("10.0.0.7:9090/ops", "HOOKRELAY_TEST_NO_SUCH_VAR", None).unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("10.0.0.7:9090", "/ops")
        );
        assert!(c.token.is_none());
        let e = AdminClient::new("https://x:1", "V", None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("plain http"), "{e}");
    }

    #[test]
    fn escaping_keeps_only_unreserved() {
        assert_eq!(escape("bus-1.a_b~"), "bus-1.a_b~");
        assert_eq!(escape("a/b c?"), "a%2Fb%20c%3F");
    }
}
