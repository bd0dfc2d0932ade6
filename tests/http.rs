//! Every status of the webhook endpoint, over real HTTP against the real binary.

mod common;

use std::time::Duration;

use common::*;
use hyper::StatusCode;

const SIG: &str = "x-webhook-signature";

#[tokio::test]
async fn documentation_example_is_accepted_then_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let mut c = relay.connect().await;

    let r = c.post_signed(DOC_EXAMPLE).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "accepted");
    assert_eq!(r.json()["id"], "message.delivered:msg_123456789");
    assert!(r.headers.contains_key("x-request-id"));

    let r = c.post_signed(DOC_EXAMPLE).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "duplicate");

    // One byte changed under the original signature.
    let sig = sign(DOC_EXAMPLE.as_bytes());
    let altered = DOC_EXAMPLE.replace("android", "andr0id");
    let r = c
        .request(
            "POST",
            "/webhooks/quickassist",
            &[(SIG, &sig)],
            altered.as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A signature one hex digit short.
    let r = c
        .request(
            "POST",
            "/webhooks/quickassist",
            &[(SIG, &sig[..63])],
            DOC_EXAMPLE.as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Uppercase hex is the same signature.
    let other = DOC_EXAMPLE.replace("msg_123456789", "msg_123456780");
    let upper = sign(other.as_bytes()).to_uppercase();
    let r = c
        .request(
            "POST",
            "/webhooks/quickassist",
            &[(SIG, &upper)],
            other.as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "accepted");

    // The published body is the pretty-printed original, byte for byte.
    let ids = ["message.delivered:msg_123456789".to_string()].into();
    let events = relay.wait_for_ids(&ids, Duration::from_secs(10));
    let line = events
        .iter()
        .find(|e| event_id(e) == "message.delivered:msg_123456789")
        .unwrap();
    assert_eq!(line["body"].as_str().unwrap(), DOC_EXAMPLE);
    assert_eq!(line["topic"], "quickassist.message.delivered");
    assert_eq!(line["key"], "msg_123456789");
    assert_eq!(line["headers"]["hookrelay-source"], "quickassist");
    assert_eq!(line["headers"]["hookrelay-event"], "message.delivered");
    assert_eq!(line["headers"]["content-type"], "application/json");
    assert_eq!(
        events
            .iter()
            .filter(|e| event_id(e) == "message.delivered:msg_123456789")
            .count(),
        1
    );
}

#[tokio::test]
async fn every_rejection_has_its_status_and_metric() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(
        dir.path(),
        "max_body_bytes = 2048\nbody_read_timeout_ms = 500",
        "",
        "\n[sources.filtered]\nscheme = \"quickassist\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\nevents = [\"message.read\"]\n",
    );
    let relay = Relay::start_with(dir.path(), &config);
    let mut c = relay.connect().await;
    let post = "/webhooks/quickassist";

    // 401: missing, malformed, wrong.
    let body = event_body("message.read", "m1");
    assert_eq!(
        c.request("POST", post, &[], body.as_bytes()).await.status,
        401
    );
    assert_eq!(
        c.request("POST", post, &[(SIG, "zz")], body.as_bytes())
            .await
            .status,
        401
    );
    let wrong = hookrelay::verify::quickassist_sign(b"not-the-secret", body.as_bytes());
    assert_eq!(
        c.request("POST", post, &[(SIG, &wrong)], body.as_bytes())
            .await
            .status,
        401
    );

    // 400: not JSON, no event type, event type unfit for a topic, too long.
    for bad in [
        "{not json".to_string(),
        r#"{"data":{"messageId":"x"}}"#.to_string(),
        r#"{"event":"message read","data":{"messageId":"x"}}"#.to_string(),
        format!(r#"{{"event":"{}"}}"#, "e".repeat(201)),
    ] {
        let r = c.post_signed(&bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", r.json());
        assert_eq!(r.json()["status"], "error");
    }

    // 404 unknown source (and unknown paths), 405 wrong method.
    let sig = sign(body.as_bytes());
    assert_eq!(
        c.request("POST", "/webhooks/nope", &[(SIG, &sig)], body.as_bytes())
            .await
            .status,
        404
    );
    assert_eq!(c.request("POST", "/elsewhere", &[], b"").await.status, 404);
    let r = c.request("GET", post, &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");
    assert_eq!(
        c.request("PUT", post, &[(SIG, &sig)], body.as_bytes())
            .await
            .status,
        405
    );

    // 413 from Content-Length alone: no body bytes are even sent.
    let head =
        format!("POST {post} HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\n{SIG}: {sig}\r\n\r\n");
    let answer = raw(relay.addr, &[(head.as_bytes(), Duration::ZERO)]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // 413 for a chunked body that grows past the limit.
    let chunk = "x".repeat(1000);
    let mut chunked = format!(
        "POST {post} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n{SIG}: {sig}\r\n\r\n"
    );
    for _ in 0..3 {
        chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    let answer = raw(relay.addr, &[(chunked.as_bytes(), Duration::ZERO)]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // 408: the body trickles in slower than body_read_timeout_ms.
    let head =
        format!("POST {post} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n{SIG}: {sig}\r\n\r\n");
    let answer = raw(
        relay.addr,
        &[
            (head.as_bytes(), Duration::from_millis(100)),
            (b"{\"event\"", Duration::ZERO),
        ],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // 200 filtered: outside the source's allow-list, not published.
    let mut f = relay.connect().await;
    let failed = event_body("message.failed", "f1");
    let fsig = sign(failed.as_bytes());
    let r = f
        .request(
            "POST",
            "/webhooks/filtered",
            &[(SIG, &fsig)],
            failed.as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "filtered");

    // A good one still goes through on the same connection.
    assert_eq!(c.post_signed(&body).await.json()["status"], "accepted");

    let m = relay.metrics().await;
    let q = |status: u16| {
        metric(
            &m,
            &format!("hookrelay_http_requests_total{{source=\"quickassist\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(q(401), 3.0);
    assert_eq!(q(400), 4.0);
    assert_eq!(q(405), 2.0);
    assert_eq!(q(413), 2.0);
    assert_eq!(q(408), 1.0);
    assert_eq!(q(200), 1.0);
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_requests_total{source=\"_unknown\",status=\"404\"}"
        ),
        2.0
    );
    for (reason, n) in [("missing", 1.0), ("malformed", 1.0), ("mismatch", 1.0)] {
        assert_eq!(
            metric(
                &m,
                &format!(
                    "hookrelay_signature_failures_total{{source=\"quickassist\",reason=\"{reason}\"}}"
                )
            ),
            n
        );
    }
    assert_eq!(
        metric(
            &m,
            "hookrelay_events_total{source=\"filtered\",event=\"message.failed\",outcome=\"filtered\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "hookrelay_events_total{source=\"quickassist\",event=\"message.read\",outcome=\"accepted\"}"
        ),
        1.0
    );
    // Zero series exist before their first event.
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_requests_total{source=\"filtered\",status=\"503\"}"
        ),
        0.0
    );
    assert!(
        !relay
            .events()
            .iter()
            .any(|e| e["topic"] == "filtered.message.failed")
    );
    // Nothing secret or body-like reaches the logs.
    let logs = relay.logs();
    assert!(!logs.contains(SECRET) && !logs.contains(&sig) && !logs.contains("+1234567890"));
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let stream = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = event_body("message.read", "h2");
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://{}/webhooks/quickassist", relay.addr))
        .header(SIG, sign(body.as_bytes()))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let mut admin = Client::connect(relay.admin).await;
    assert_eq!(admin.get("/healthz").await.status, StatusCode::OK);
    let r = admin.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(admin.get("/nope").await.status, StatusCode::NOT_FOUND);
    let m = relay.metrics().await;
    assert!(
        m.contains("# TYPE hookrelay_http_requests_total counter"),
        "{m}"
    );
    assert_eq!(metric(&m, "hookrelay_ready"), 1.0);
    // The provider's documented event types have series before their first event.
    for t in EVENT_TYPES {
        let series = format!(
            "hookrelay_events_total{{source=\"quickassist\",event=\"{t}\",outcome=\"accepted\"}}"
        );
        assert_eq!(metric(&m, &series), 0.0);
    }
    assert_eq!(
        metric(
            &m,
            "hookrelay_spool_fsync_duration_seconds_count{sink=\"file\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn sixty_four_connections_each_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let per_conn = 25;
    let sent = send_concurrently(relay.addr, Load::each(64, per_conn), distinct_events("c"))
        .finish()
        .await;
    sent.assert_all_accepted(&relay.logs());
    let ids = sent.acked;
    assert_eq!(ids.len(), 64 * per_conn);
    relay.wait_for_ids(&ids, Duration::from_secs(30));
    // With the spool drained no straggling duplicate can still come: exactly once.
    relay
        .wait_drained(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the spool never drained\n{}", relay.logs()));
    let events_after = relay.events();
    assert_eq!(events_after.len(), ids.len(), "every event exactly once");
    let m = relay.metrics().await;
    for t in EVENT_TYPES {
        let topic = format!("quickassist.{t}");
        assert!(
            events_after.iter().any(|e| e["topic"] == topic.as_str()),
            "{topic}"
        );
        let series = format!(
            "hookrelay_sink_topic_events_total{{sink=\"file\",topic=\"{topic}\",result=\"published\"}}"
        );
        assert!(metric(&m, &series) >= 1.0, "{series}");
    }
}
