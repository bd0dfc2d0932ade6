//! Accepting connections and keeping what clients can hold bounded.
//!
//! A gateway faces the internet: every connection has a slot, and every slot a
//! deadline, whatever the client sends or does not send.
//!
//! - At most `max_connections` per listener. At the cap, a new connection closes
//!   the one idle longest (no request in progress: an idle keep-alive connection, or
//!   one that never sent a request); only when every connection is busy does it wait.
//! - A connection that has not completed a request head within
//!   `header_read_timeout` of being accepted is closed, whatever it sent: nothing,
//!   half a head, a TLS handshake, only the HTTP/2 preface. (hyper's own header
//!   timeout covers HTTP/1 heads; the HTTP/1-or-2 detection and HTTP/2 have none.)
//! - A connection with no request in progress for `idle_timeout` is closed, HTTP/1
//!   keep-alive and HTTP/2 alike.
//! - An accept that fails (EMFILE: the process is out of file descriptors) closes
//!   the idlest connection to free one, backs off, and is logged at most once per
//!   interval with the count of those not logged.
//!
//! On shutdown every connection is asked to finish (HTTP/1: after its request;
//! HTTP/2: GOAWAY) and dropped at the drain deadline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

use crate::metrics;

/// Time between two accept-error log lines.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Back-off after an accept error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// While every connection is busy at the cap, how often to look for one gone idle.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// Accept errors that mean the process is out of something (descriptors, memory),
/// as opposed to one connection's trouble.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

type Resp = Response<Full<Bytes>>;

/// What one listener allows its clients.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// After shutdown, how long connections get to finish their requests.
    pub drain: Duration,
}

/// One connection's activity, as the slot keeper sees it.
struct Conn {
    accepted: Instant,
    /// Requests in progress.
    active: AtomicU32,
    /// A request head has been completed (a request reached the service).
    served: AtomicBool,
    /// Milliseconds after `accepted` at which the last request began or ended.
    last_ms: AtomicU64,
    /// Already told to close to make room.
    evicted: AtomicBool,
    evict: Notify,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            accepted: Instant::now(),
            active: AtomicU32::new(0),
            served: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.accepted + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// When this connection is to be closed if nothing happens meanwhile; `None`
    /// while a request is in progress (its own timeouts bound it).
    fn deadline(&self, s: &Settings) -> Option<Instant> {
        if !self.idle() {
            None
        } else if !self.served.load(Ordering::Acquire) {
            Some(self.accepted + s.header_read_timeout)
        } else {
            Some(self.last() + s.idle_timeout)
        }
    }
}

/// Counts a request in progress on its connection, from the head to the answer.
struct InProgress(Arc<Conn>);

impl InProgress {
    fn begin(conn: &Arc<Conn>) -> InProgress {
        conn.served.store(true, Ordering::Release);
        conn.active.fetch_add(1, Ordering::AcqRel);
        conn.touch();
        InProgress(conn.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connections of one listener.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    /// Signalled whenever a connection ends (for the drain).
    ended: Notify,
}

impl Registry {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new());
        self.conns().insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        self.conns().remove(&id);
        self.ended.notify_waiters();
    }

    fn len(&self) -> usize {
        self.conns().len()
    }

    /// Tells the connection idle longest to close; false if every one is busy.
    fn evict_idlest(&self) -> bool {
        let conns = self.conns();
        let idlest = conns
            .values()
            .filter(|c| c.idle() && !c.evicted.load(Ordering::Relaxed))
            .min_by_key(|c| c.last());
        match idlest {
            Some(c) => {
                c.evicted.store(true, Ordering::Relaxed);
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Logs accept errors at most once per [`ACCEPT_LOG_EVERY`], with a count.
struct AcceptErrors(crate::quiet::LogEvery);

impl AcceptErrors {
    fn record(&mut self, e: &std::io::Error) {
        metrics::connection_error("accept");
        if let Some(suppressed) = self.0.allow() {
            tracing::warn!(error = %e, suppressed,
                "accept failed (counted in hookrelay_http_connection_errors_total{{reason=\"accept\"}}); closing the idlest connection and backing off");
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then drains for `settings.drain`.
pub async fn serve<S, F>(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    settings: Settings,
    service: S,
    shutdown: impl Future<Output = ()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) where
    S: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Resp, Infallible>> + Send + 'static,
{
    let registry = Arc::new(Registry::default());
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut errors = AcceptErrors(crate::quiet::LogEvery::new(ACCEPT_LOG_EVERY));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                // Out of descriptors or memory: free a slot's descriptor and back off.
                Err(e) if out_of_resources(&e) => {
                    errors.record(&e);
                    registry.evict_idlest();
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                // One connection's trouble (reset before it was accepted, say).
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At the cap, the idlest connection makes room; while every one is busy, look
        // again now and then (one may have gone idle) rather than only wait.
        let permit = loop {
            if let Ok(p) = slots.clone().try_acquire_owned() {
                break Some(p);
            }
            if registry.evict_idlest() {
                metrics::connection_error("evicted");
            }
            tokio::select! {
                p = slots.clone().acquire_owned() => break p.ok(),
                () = tokio::time::sleep(EVICT_RETRY) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(permit) = permit else { break };
        let _ = stream.set_nodelay(true);
        let (id, conn) = registry.add();
        let service = service.clone();
        let settings = settings.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let stop = stop_rx.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let outcome = match tls {
                None => serve_one(stream, builder, &conn, &settings, service, peer, stop).await,
                // The handshake runs here, not in the accept loop, so a slow client
                // holds only its own slot, and only until its head deadline.
                Some(acceptor) => {
                    let deadline = conn.accepted + settings.header_read_timeout;
                    let mut stop_now = stop.clone();
                    let handshake = async {
                        tokio::select! {
                            r = acceptor.accept(stream) => Some(r),
                            () = conn.evict.notified() => None,
                            _ = stop_now.wait_for(|stop| *stop) => None,
                        }
                    };
                    match tokio::time::timeout_at(deadline.into(), handshake).await {
                        Ok(None) => Ended::Quietly,
                        Ok(Some(Ok(tls_stream))) => {
                            serve_one(tls_stream, builder, &conn, &settings, service, peer, stop)
                                .await
                        }
                        Ok(Some(Err(e))) => {
                            metrics::connection_error("tls");
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                            Ended::Quietly
                        }
                        Err(_) => {
                            metrics::connection_error("tls");
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                            Ended::Quietly
                        }
                    }
                }
            };
            if let Ended::Failed(e) = outcome {
                if let Some(reason) = connection_error_reason(e.as_ref()) {
                    metrics::connection_error(reason);
                }
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            registry.remove(id);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + settings.drain;
    while registry.len() > 0 {
        let ended = registry.ended.notified();
        tokio::pin!(ended);
        // Registered before looking, so that an end in between is not missed.
        ended.as_mut().enable();
        if registry.len() == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, ended).await.is_err() {
            tracing::warn!(
                connections = registry.len(),
                "drain deadline reached with HTTP requests still in flight"
            );
            break;
        }
    }
}

enum Ended {
    Quietly,
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// Serves one connection until it ends, is closed for idling or to make room, or
/// the drain runs out.
async fn serve_one<IO, S, F>(
    io: IO,
    builder: auto::Builder<TokioExecutor>,
    conn: &Arc<Conn>,
    settings: &Settings,
    service: S,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Resp, Infallible>> + Send + 'static,
{
    let tracked = conn.clone();
    let svc = service_fn(move |req| {
        let request = InProgress::begin(&tracked);
        let answer = service(req, peer);
        async move {
            let r = answer.await;
            drop(request);
            r
        }
    });
    let served = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(served);
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        // While a request runs, its own timeouts bound it: look again later.
        let wake = match draining {
            Some(d) => d,
            None => conn
                .deadline(settings)
                .unwrap_or_else(|| Instant::now() + settings.idle_timeout)
                .into(),
        };
        tokio::select! {
            r = served.as_mut() => return match r {
                Ok(()) => Ended::Quietly,
                Err(e) => Ended::Failed(e),
            },
            () = tokio::time::sleep_until(wake) => {
                if draining.is_some() {
                    return Ended::Quietly;
                }
                let expired = conn.deadline(settings).is_some_and(|d| Instant::now() >= d);
                if expired {
                    if !conn.served.load(Ordering::Acquire) {
                        metrics::connection_error("header_timeout");
                        tracing::debug!(peer = %peer, "no request head within header_read_timeout_ms; closing");
                    }
                    return Ended::Quietly;
                }
            }
            () = conn.evict.notified() => {
                tracing::debug!(peer = %peer, "closed to make room for a new connection");
                return Ended::Quietly;
            }
            changed = stop.changed(), if draining.is_none() => {
                // A gone sender is a stop too (and must not be polled again).
                if changed.is_err() || *stop.borrow() {
                    served.as_mut().graceful_shutdown();
                    draining = Some(tokio::time::Instant::now() + settings.drain);
                }
            }
        }
    }
}

/// Which [`metrics::CONNECTION_ERRORS`] reason a failed connection counts under;
/// `None` for clients that just went away. TLS handshakes are counted where they fail.
fn connection_error_reason(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return Some(if h.is_timeout() {
                "header_timeout"
            } else if h.is_parse_too_large() {
                "too_large"
            } else if h.is_parse() {
                "malformed"
            } else if h.is_incomplete_message() {
                "incomplete"
            } else if h.is_canceled() || h.is_closed() {
                return None;
            } else {
                "io"
            });
        }
        if err.downcast_ref::<std::io::Error>().is_some() {
            return Some("io");
        }
        cur = err.source();
    }
    None
}

/// Connections the kernel queues, completed, before they are accepted (capped by
/// `net.core.somaxconn`, 4096 by default on current kernels). `TcpListener::bind`
/// asks for 128: ten thousand clients connecting at once overflowed it thousands of
/// times (SYN retries, a second or more to connect), and even 256 reconnecting
/// together overflowed it.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind`
/// sets, so a restart does not wait for old connections' `TIME_WAIT`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The address a listener is bound to (for logs when port 0 was asked for).
pub fn local_addr(l: &TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_activity() {
        let s = Settings {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(1),
        };
        let c = Arc::new(Conn::new());
        assert_eq!(c.deadline(&s), Some(c.accepted + s.header_read_timeout));
        let r = InProgress::begin(&c);
        assert_eq!(c.deadline(&s), None, "a request in progress is not idle");
        drop(r);
        let d = c.deadline(&s).unwrap();
        assert!(d >= c.accepted + s.idle_timeout, "idle from the answer on");
    }

    #[test]
    fn the_idlest_idle_connection_is_evicted() {
        let r = Registry::default();
        let (_, a) = r.add();
        std::thread::sleep(Duration::from_millis(5));
        let (_, b) = r.add();
        let busy = InProgress::begin(&a);
        assert!(r.evict_idlest());
        assert!(b.evicted.load(Ordering::Relaxed), "a is busy: b goes");
        assert!(!r.evict_idlest(), "b already told, a busy");
        drop(busy);
        assert!(r.evict_idlest());
        assert!(a.evicted.load(Ordering::Relaxed));
    }
}
