//! Observability, black box: request ids kept and echoed, the trace context carried
//! into published messages and the logs, the access log, build and process
//! metrics, the request-duration status class, readiness without a poll.

mod common;

use std::time::Duration;

use common::*;
use hyper::StatusCode;

const RID: &str = "x-request-id";

/// A bounded, printable inbound `x-request-id` is echoed; an oversized, malformed
/// or duplicated one is replaced by the relay's own, and so is a missing one. The
/// answer to an unsigned request carries it too: that is the one a sender most
/// needs to quote.
#[tokio::test]
async fn a_usable_request_id_is_echoed_and_any_other_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let mut c = relay.connect().await;
    let body = event_body("message.read", "rid1");
    let sig = sign(body.as_bytes());
    let post = |id: Option<String>, sig: String, body: String| {
        let addr = relay.addr;
        async move {
            let mut c = Client::connect(addr).await;
            let mut h: Vec<(&str, &str)> = vec![("x-webhook-signature", &sig)];
            if let Some(id) = &id {
                h.push((RID, id));
            }
            let r = c
                .request("POST", "/webhooks/quickassist", &h, body.as_bytes())
                .await;
            let echoed = r.headers.get(RID).map(|v| v.to_str().unwrap().to_string());
            (r.status, echoed)
        }
    };
    let (status, echoed) = post(Some("req-2026_12.01:abc".into()), sig.clone(), body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed.as_deref(), Some("req-2026_12.01:abc"));
    let longest = "r".repeat(128);
    assert_eq!(
        post(Some(longest.clone()), sig.clone(), body.clone())
            .await
            .1,
        Some(longest)
    );

    let own = |echoed: Option<String>| {
        let id = echoed.expect("always an x-request-id");
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    };
    own(post(None, sig.clone(), body.clone()).await.1);
    own(post(Some("r".repeat(129)), sig.clone(), body.clone())
        .await
        .1); // oversized
    own(post(Some("has space".into()), sig.clone(), body.clone())
        .await
        .1); // malformed
    let (status, echoed) = post(Some("unsigned-1".into()), "00".repeat(32), body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(echoed.as_deref(), Some("unsigned-1"));

    // Two of them: neither is trusted.
    let r = c
        .request(
            "POST",
            "/webhooks/quickassist",
            &[("x-webhook-signature", &sig), (RID, "a"), (RID, "b")],
            body.as_bytes(),
        )
        .await;
    own(r.headers.get(RID).map(|v| v.to_str().unwrap().to_string()));
}

/// The trace context reaches the published line (the file sink's), continued from
/// the provider's `traceparent` or new, and the access log names the request,
/// event and trace; the access log is off unless asked for.
#[tokio::test]
async fn traceparent_reaches_the_message_and_the_access_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(dir.path(), "", "", "").replace("[log]\n", "[log]\naccess = true\n");
    let relay = Relay::start_with(dir.path(), &config);
    let mut c = relay.connect().await;
    let sent = [
        ("tp-valid", Some(TRACEPARENT)),
        ("tp-none", None),
        (
            "tp-upper",
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
        ),
        (
            "tp-long",
            Some(&*Box::leak(
                format!("{TRACEPARENT}-{}", "a".repeat(600)).into_boxed_str(),
            )),
        ),
    ];
    for (id, tp) in sent {
        let body = event_body("message.read", id);
        let sig = sign(body.as_bytes());
        let mut h = vec![("x-webhook-signature", sig.as_str()), (RID, id)];
        if let Some(tp) = tp {
            h.push(("traceparent", tp));
        }
        let r = c
            .request("POST", "/webhooks/quickassist", &h, body.as_bytes())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    }
    let lines = eventually(Duration::from_secs(15), || async {
        let lines = relay.events();
        (lines.len() == sent.len()).then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("{}", relay.logs()));
    let mut traces = Vec::new();
    for (id, tp) in sent {
        let line = lines
            .iter()
            .find(|l| event_id(l) == format!("message.read:{id}"))
            .unwrap_or_else(|| panic!("{id} not published"));
        let published = line["headers"]["traceparent"]
            .as_str()
            .expect("traceparent header");
        assert_continues(tp, published);
        traces.push(traceparent_parts(published).unwrap().0);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), sent.len(), "each new trace is its own");

    // One access line per request, with its ids.
    let logs = eventually(Duration::from_secs(5), || async {
        let logs = relay.logs();
        (logs.matches("hookrelay::access").count() >= sent.len()).then_some(logs)
    })
    .await
    .unwrap_or_else(|| panic!("no access lines\n{}", relay.logs()));
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "hookrelay::access")
        .collect();
    let valid = access
        .iter()
        .find(|l| l["request_id"] == "tp-valid")
        .unwrap_or_else(|| panic!("{logs}"));
    assert_eq!(valid["status"], 200);
    assert_eq!(valid["source"], "quickassist");
    assert_eq!(valid["event_id"], "message.read:tp-valid");
    assert_eq!(valid["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(valid["duration_ms"].as_f64().is_some(), "{valid}");
    assert!(!logs.contains("\u{1b}["), "no colour codes into a pipe");

    // Off by default.
    let dir = tempfile::tempdir().unwrap();
    let quiet = Relay::start(dir.path());
    let (status, _) = quiet.post(&event_body("message.read", "q1")).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !quiet.logs().contains("hookrelay::access"),
        "{}",
        quiet.logs()
    );
}

/// `hookrelay_build_info` names the release and commit `--version` prints; the
/// process series are there; request durations are split by status class, so a
/// flood of fast 401s does not hide the accept path's latency; `hookrelay_ready`
/// is 1 with nothing polling `/readyz`.
#[tokio::test]
async fn build_process_status_class_and_readiness_series() {
    let out = std::process::Command::new(binary())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "hookrelay 0.1.0 (commit abc123def456)"
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    assert!(!commit.is_empty() && commit != "unknown", "{version}");

    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let mut c = relay.connect().await;
    assert_eq!(
        c.post_signed(&event_body("message.read", "c1"))
            .await
            .status,
        StatusCode::OK
    );
    for _ in 0..3 {
        let r = c
            .request(
                "POST",
                "/webhooks/quickassist",
                &[("x-webhook-signature", "00")],
                b"{}",
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let m = relay.metrics().await;
    let info = format!(
        "hookrelay_build_info{{version=\"{}\",commit=\"{commit}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&m, &info), 1.0, "{m}");
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(metric(&m, series) > 0.0, "{series}\n{m}");
    }
    assert!(metric(&m, "process_open_fds") < metric(&m, "process_max_fds"));
    let count = |class: &str| {
        metric(
            &m,
            &format!(
                "hookrelay_http_request_duration_seconds_count{{source=\"quickassist\",class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(
        (count("2xx"), count("4xx"), count("5xx")),
        (1.0, 3.0, 0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "hookrelay_ready"), 1.0);
}
