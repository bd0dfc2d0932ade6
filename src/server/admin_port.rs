//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the admin API
//! under `/admin/`, on a port and a connection budget of its own.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::App;
use crate::listener;
use crate::respond::{Resp, error, json};

/// Connections the admin listener holds at most: its own budget, so `/healthz`
/// answers while the webhook port is saturated (and, with the idlest closed first,
/// while its own slots are probed).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    app: Arc<App>,
    api: Arc<crate::admin::Api>,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    let limits = app.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let settings = listener::Settings {
        max_connections: ADMIN_MAX_CONNECTIONS,
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        drain: Duration::from_secs(1),
    };
    listener::serve(
        listener,
        builder,
        settings,
        move |req: Request<Incoming>, peer: SocketAddr| {
            let app = app.clone();
            let api = api.clone();
            let prometheus = prometheus.clone();
            async move {
                if req.uri().path().starts_with("/admin/") {
                    return Ok::<_, Infallible>(api.handle(req, peer).await);
                }
                Ok::<_, Infallible>(admin(&app, &prometheus, req).await)
            }
        },
        shutdown,
        None,
    )
    .await;
}

async fn admin(app: &App, prometheus: &PrometheusHandle, req: Request<Incoming>) -> Resp {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            // Rendering takes a millisecond or more with per-topic series: off the
            // workers, where it would delay webhooks queued behind it.
            let prometheus = prometheus.clone();
            let text = tokio::task::spawn_blocking(move || crate::metrics::render(&prometheus))
                .await
                .unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => {
            let ready = app.ready();
            if ready {
                json(StatusCode::OK, serde_json::json!({ "status": "ready" }))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "status": "not ready",
                        "accepting": app.accepting.load(Ordering::Relaxed),
                        "delivering": app.delivering.load(Ordering::Relaxed),
                        "sources_refusing": app.refusing() }),
                )
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}
