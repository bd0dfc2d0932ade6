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

/// What the stand-in collector was sent: path, content type and body of each.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A stand-in OpenTelemetry collector: every OTLP/HTTP request recorded,
/// answered 200.
fn collector() -> (std::net::SocketAddr, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (mut len, mut ctype) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap();
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.trim().parse().unwrap(),
                            "content-type" => ctype = v.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    seen.lock().unwrap().push((path, ctype, body));
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (addr, got)
}

/// With `[otlp]`, each request becomes a server span sent to the collector: in
/// the provider's trace, its parent the provider's span, its own id the one the
/// published message's `traceparent` names. Without the section nothing is sent
/// (every other test runs so, with no collector).
#[tokio::test]
async fn spans_go_to_the_collector_with_the_messages_ids() {
    let (addr, got) = collector();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(dir.path(), "", "", "").replace(
        "[log]\n",
        &format!("[otlp]\nendpoint = \"http://{addr}/v1/traces\"\n\n[log]\n"),
    );
    std::fs::create_dir_all(dir.path()).unwrap();
    let path = dir.path().join("hookrelay.toml");
    std::fs::write(&path, config).unwrap();
    let relay = Relay::spawn_env(dir.path(), &path, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    let mut c = relay.connect().await;
    let r = post_traced(&mut c, "otlp1", Some(TRACEPARENT)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let line = eventually(Duration::from_secs(15), || async {
        relay.events().into_iter().next()
    })
    .await
    .expect("published");
    let published = line["headers"]["traceparent"].as_str().unwrap().to_string();
    let (trace, span, _) = traceparent_parts(&published).unwrap();
    let bytes = |h: &str| hex::decode(h).unwrap();
    let contains = |body: &[u8], needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    let sent = eventually(Duration::from_secs(15), || async {
        let got = got.lock().unwrap();
        got.iter()
            .find(|(_, _, body)| contains(body, &bytes(&span)))
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no span sent\n{}", relay.logs()));
    let (path, ctype, body) = sent;
    assert_eq!(path, "/v1/traces");
    assert_eq!(ctype, "application/x-protobuf");
    assert!(contains(&body, &bytes(&trace)), "the provider's trace");
    assert!(
        contains(&body, &bytes("00f067aa0ba902b7")),
        "the provider's span as parent"
    );
    assert!(
        contains(&body, b"message.read:otlp1"),
        "the event id attribute"
    );
    assert!(contains(&body, b"hookrelay"), "the service name");

    // The `[otlp]` section's malformed variants are refused by `check`.
    for (section, key) in [
        (
            "[otlp]\nendpoint = \"https://collector:4318/v1/traces\"\n",
            "otlp.endpoint",
        ),
        ("[otlp]\nendpoint = \"not a url\"\n", "otlp.endpoint"),
        (
            &*format!("[otlp]\nendpoint = \"http://c/{}\"\n", "a".repeat(3000)),
            "otlp.endpoint",
        ),
        (
            "[otlp]\nendpoint = \"http://c:4318\"\ntimeout_ms = 0\n",
            "otlp.timeout_ms",
        ),
        ("[otlp]\nservice_name = \"x\"\n", "otlp"),
    ] {
        let bad = tempfile::tempdir().unwrap();
        let text =
            base_config(bad.path(), "", "", "").replace("[log]\n", &format!("{section}\n[log]\n"));
        let (ok, out) = check_config(bad.path(), &text, &[]);
        assert!(!ok && out.contains(key), "{section}: {out}");
    }
}
