//! The benchmark baseline: a bare hyper server that reads the body, verifies
//! TheQuickAssist's HMAC and answers 200. No spool, no dedup, no parsing: the
//! ceiling any webhook gateway on this machine is measured against.
//!
//! `cargo run --release --example baseline -- 127.0.0.1:8181 SECRET`

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use hookrelay::verify::{Method, Verifier};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8181".into());
    let secret = args.next().unwrap_or_else(|| "bench-secret".into());
    let verifier = Arc::new(
        Verifier::with_secrets(
            Method::Quickassist {
                json_stringify: false,
            },
            &[secret.as_bytes()],
        )
        .map_err(anyhow::Error::msg)?,
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("baseline listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let verifier = verifier.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let verifier = verifier.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let status = match body.collect().await {
                        Ok(b) => match verifier.verify(&parts.headers, b.to_bytes(), "/") {
                            Ok(_) => StatusCode::OK,
                            Err(_) => StatusCode::UNAUTHORIZED,
                        },
                        Err(_) => StatusCode::BAD_REQUEST,
                    };
                    let mut r =
                        Response::new(Full::new(Bytes::from_static(b"{\"status\":\"accepted\"}")));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
