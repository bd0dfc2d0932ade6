//! Clients that are slow, malformed or hostile: each gets its status (or is cut
//! off), each is counted in a metric, none crashes the relay, and well-behaved
//! clients keep getting 200 meanwhile.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SIG: &str = "x-webhook-signature";
const POST: &str = "/webhooks/quickassist";

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Writes `head` (then counts itself in `opened`), then one byte of `drip` every
/// 200 ms until the server closes the connection; returns how long it stayed open
/// and what the server answered.
async fn trickle(
    addr: std::net::SocketAddr,
    head: String,
    drip: &'static [u8],
    opened: Arc<AtomicUsize>,
) -> (Duration, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(head.as_bytes()).await;
    opened.fetch_add(1, Ordering::Relaxed);
    let mut buf = vec![0u8; 1024];
    for &b in drip.iter().cycle() {
        tokio::select! {
            n = s.read(&mut buf) => {
                let n = n.unwrap_or(0);
                return (started.elapsed(), String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if s.write_all(&[b]).await.is_err() {
                    return (started.elapsed(), String::new());
                }
            }
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    (started.elapsed(), "still open".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_while_good_clients_get_200() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(
        dir.path(),
        "header_read_timeout_ms = 1000\nbody_read_timeout_ms = 1000",
        "",
        "",
    );
    let relay = Relay::start_with(dir.path(), &config);
    let pid = relay.child.id();
    let before = rss_mib(pid);
    let sig = sign(b"{}");

    let mut slow = Vec::new();
    let opened = Arc::new(AtomicUsize::new(0));
    for i in 0..300 {
        let head = if i % 2 == 0 {
            // Headers that never end.
            format!("POST {POST} HTTP/1.1\r\nhost: x\r\n")
        } else {
            // Complete headers, then a body that never arrives.
            format!(
                "POST {POST} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n{SIG}: {sig}\r\n\r\n"
            )
        };
        let drip: &'static [u8] = if i % 2 == 0 { b"x-slow: 1\r\n" } else { b"{" };
        slow.push(tokio::spawn(trickle(
            relay.addr,
            head,
            drip,
            opened.clone(),
        )));
    }
    // Every slow connection open and started before the good client begins.
    eventually(Duration::from_secs(10), || async {
        (opened.load(Ordering::Relaxed) == 300).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "only {} of 300 slow connections opened",
            opened.load(Ordering::Relaxed)
        )
    });

    // A well-behaved client meanwhile: every event gets its 200, promptly.
    let mut c = relay.connect().await;
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        let started = Instant::now();
        let r = c
            .post_signed(&event_body("message.read", &format!("good-{i}")))
            .await;
        worst = worst.max(started.elapsed());
        assert_eq!(r.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = rss_mib(pid);

    let mut header_cut = 0;
    let mut body_408 = 0;
    for (i, t) in slow.into_iter().enumerate() {
        let (open_for, answer) = t.await.unwrap();
        assert!(
            open_for < Duration::from_secs(5),
            "slow connection {i} stayed open {open_for:?}: {answer}"
        );
        if i % 2 == 0 {
            header_cut += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            body_408 += 1;
        }
    }
    eprintln!(
        "good client: 200 of 200, worst latency {worst:?}; RSS {before:.1} -> {during:.1} MiB with 300 slow connections"
    );
    assert!(worst < Duration::from_millis(500), "worst {worst:?}");
    assert!(
        during - before < 64.0,
        "RSS grew {before:.1} -> {during:.1} MiB"
    );

    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_connection_errors_total{reason=\"header_timeout\"}"
        ),
        header_cut as f64
    );
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_requests_total{source=\"quickassist\",status=\"408\"}"
        ),
        body_408 as f64
    );
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_requests_total{source=\"quickassist\",status=\"200\"}"
        ),
        200.0
    );
}

#[tokio::test]
async fn hostile_inputs_get_their_status_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let good = event_body("message.read", "fine");
    let gsig = sign(good.as_bytes());

    // Header flood: far more headers than any provider sends -> 431 from hyper.
    let mut flood = format!("POST {POST} HTTP/1.1\r\nhost: x\r\n");
    for i in 0..500 {
        flood.push_str(&format!("x-h{i}: v\r\n"));
    }
    flood.push_str("content-length: 0\r\n\r\n");
    let answer = raw(relay.addr, &[(flood.as_bytes(), Duration::ZERO)]).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // One oversized header (1 MiB) -> 431.
    let big = format!(
        "POST {POST} HTTP/1.1\r\nhost: x\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let answer = raw(relay.addr, &[(big.as_bytes(), Duration::ZERO)]).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Pipelined garbage after a good request: the good one is answered 200, then 400.
    let mut pipelined = format!(
        "POST {POST} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{SIG}: {gsig}\r\n\r\n{good}",
        good.len()
    )
    .into_bytes();
    pipelined.extend_from_slice(b"\x00\x01GARBAGE \xff\r\n\r\n");
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(&pipelined).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    let all = String::from_utf8_lossy(&all);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("HTTP/1.1 400"), "{all}");

    let mut c = relay.connect().await;
    // Invalid UTF-8 inside a correctly signed body -> 400.
    let bad_utf8: &[u8] = b"{\"event\":\"message.read\",\"data\":{\"messageId\":\"\xff\xfe\"}}";
    let r = c
        .request("POST", POST, &[(SIG, &sign(bad_utf8))], bad_utf8)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // JSON nested 100,000 deep, correctly signed -> 400, not a stack overflow.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = c
        .request(
            "POST",
            POST,
            &[(SIG, &sign(nested.as_bytes()))],
            nested.as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let nested_obj = format!(
        "{{\"event\":\"message.read\",\"data\":{}1{}}}",
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    let r = c
        .request(
            "POST",
            POST,
            &[(SIG, &sign(nested_obj.as_bytes()))],
            nested_obj.as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Two signature headers (one of them valid) -> 401: ambiguous, never "first wins".
    // A failed signature closes the connection.
    let r = c
        .request("POST", POST, &[(SIG, &gsig), (SIG, &gsig)], good.as_bytes())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["connection"], "close");

    // Still healthy and serving.
    let mut c = relay.connect().await;
    assert_eq!(c.post_signed(&good).await.status, StatusCode::OK);
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "hookrelay exited\n{}",
        relay.logs()
    );

    let m = relay.metrics().await;
    let conn = |reason: &str| {
        metric(
            &m,
            &format!("hookrelay_http_connection_errors_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(conn("too_large"), 2.0, "{m}");
    assert_eq!(conn("malformed"), 1.0, "{m}");
    let q = |status: u16| {
        metric(
            &m,
            &format!("hookrelay_http_requests_total{{source=\"quickassist\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(q(400), 3.0);
    assert_eq!(q(401), 1.0);
    assert_eq!(q(200), 2.0);
}

/// An HTTP/1.1 keep-alive connection waiting for its next request is idle, not a
/// slow head: it outlives `header_read_timeout_ms` (hyper's header timer also runs
/// while a kept-alive connection waits, and closed them at 10 s) and is closed at
/// `idle_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_wait_for_the_idle_timeout_not_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(
        dir.path(),
        "header_read_timeout_ms = 500\nidle_timeout_ms = 3000",
        "",
        "",
    );
    let relay = Relay::start_with(dir.path(), &config);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..2 {
        let body = event_body("message.read", &format!("kept-{i}"));
        let head = format!(
            "POST {POST} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{SIG}: {}\r\n\r\n",
            body.len(),
            sign(body.as_bytes())
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
        if i == 0 {
            // Three header timeouts, half the idle timeout.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    let idle_from = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed within the idle timeout and a margin")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without another answer");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(2500) && idle < Duration::from_secs(6),
        "closed after {idle:?} idle, idle_timeout_ms = 3000"
    );
}

/// The webhook listener queues as many connections as the kernel allows (up to
/// 4096), not the 128 `TcpListener::bind` asks for: ten thousand clients (or a few
/// hundred reconnecting together) must not overflow it into SYN retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_the_kernels_not_128() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(dir.path(), &base_config(dir.path(), "", "", ""));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // `ss -ltn`: a listening socket's Send-Q is its backlog.
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", relay.addr.port())])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let backlog: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no listening socket in: {text}"));
    assert_eq!(backlog, somaxconn.min(4096), "{text}");
}
