//! Provider schemes over real HTTP: handshakes, header- and form-based events,
//! secret rotation, shared dedup in Redis, rate limits and sender allow-lists.

mod common;

use std::cell::Cell;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hookrelay::verify::{Method, Verifier};
use hyper::StatusCode;

/// A signed POST to `/webhooks/{source}` with the scheme's headers plus `extra`.
async fn post(
    relay: &Relay,
    source: &str,
    method: Method,
    secret: &[u8],
    body: &[u8],
    extra: &[(&str, &str)],
) -> Reply {
    let path = format!("/webhooks/{source}");
    let v = Verifier::with_secrets(method, &[secret]).unwrap();
    let signed = v.sign(body, &path).unwrap();
    let mut headers: Vec<(&str, &str)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers.extend_from_slice(extra);
    relay
        .connect()
        .await
        .request("POST", &path, &headers, body)
        .await
}

fn source(name: &str, lines: &str) -> String {
    format!("\n[sources.{name}]\n{lines}\n")
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}-{:x}", std::process::id(), fastrand::u64(..))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_and_header_events_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        source("github", "scheme = \"github\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\""),
        source("slack", "scheme = \"slack\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\""),
        source("zoom", "scheme = \"zoom\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\""),
        source("meta", "scheme = \"meta\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\nverify_token_env = \"HOOKRELAY_TEST_SECRET\""),
        source("shopify", "scheme = \"shopify\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\""),
        source("stripe", "scheme = \"stripe\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\""),
    ]
    .concat();
    let config = base_config(dir.path(), "", "", "").replace(
        "[sources.quickassist]",
        &format!("{extra}\n[sources.quickassist]"),
    );
    let relay = {
        // The child inherits HOOKRELAY_TEST_SECRET from this process.
        Relay::start_with(dir.path(), &config)
    };
    let s = b"test-secret".as_slice();

    // GitHub: ping is answered, not published; a push is published under its header's name.
    let r = post(
        &relay,
        "github",
        Method::HubSignature,
        s,
        b"{\"zen\":\"hi\"}",
        &[("x-github-event", "ping"), ("x-github-delivery", "d-0")],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (StatusCode::OK, Some("pong"))
    );
    let r = post(
        &relay,
        "github",
        Method::HubSignature,
        s,
        b"{\"ref\":\"main\"}",
        &[("x-github-event", "push"), ("x-github-delivery", "d-1")],
    )
    .await;
    assert_eq!(r.json()["id"], "push:d-1", "{:?}", r.json());

    // Slack: url_verification challenge; a slash command (form body) is an event.
    let challenge = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let r = post(
        &relay,
        "slack",
        Method::Slack { tolerance: 300 },
        s,
        challenge,
        &[],
    )
    .await;
    assert_eq!(
        r.json()["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    let form = b"command=%2Fdeploy&text=prod&trigger_id=398738663015.1";
    let r = post(
        &relay,
        "slack",
        Method::Slack { tolerance: 300 },
        s,
        form,
        &[("content-type", "application/x-www-form-urlencoded")],
    )
    .await;
    assert_eq!(r.json()["id"], "deploy:398738663015.1", "{:?}", r.json());

    // Zoom: endpoint.url_validation answered with the HMAC of the plain token.
    let validation = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let r = post(
        &relay,
        "zoom",
        Method::Zoom { tolerance: 300 },
        s,
        validation,
        &[],
    )
    .await;
    assert_eq!(r.json()["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
    assert_eq!(
        r.json()["encryptedToken"],
        hex::encode(hookrelay::verify::Alg::Sha256.mac(s, &[b"qgg8vlvZRS6UYooatFL8Aw"]))
    );

    // Meta: the GET subscription check echoes the challenge for the right token only.
    let mut c = relay.connect().await;
    let ok = c.get("/webhooks/meta?hub.mode=subscribe&hub.verify_token=test-secret&hub.challenge=1158201444").await;
    assert_eq!(
        (ok.status, &ok.body[..]),
        (StatusCode::OK, &b"1158201444"[..])
    );
    let bad = c
        .get("/webhooks/meta?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")
        .await;
    assert_eq!(bad.status, StatusCode::FORBIDDEN);
    assert_eq!(
        c.get("/webhooks/github").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let wa = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{}}]}]}"#;
    let r = post(&relay, "meta", Method::HubSignature, s, wa, &[]).await;
    assert_eq!(r.json()["status"], "accepted", "{:?}", r.json());

    // Shopify: topic header orders/create becomes orders.create.
    let r = post(
        &relay,
        "shopify",
        Method::Shopify,
        s,
        b"{\"id\":1}",
        &[
            ("x-shopify-topic", "orders/create"),
            ("x-shopify-webhook-id", "w-1"),
        ],
    )
    .await;
    assert_eq!(r.json()["id"], "orders.create:w-1", "{:?}", r.json());
    // Stripe: type and id from the body; a stale signature is refused and counted.
    let r = post(
        &relay,
        "stripe",
        Method::Stripe { tolerance: 300 },
        s,
        br#"{"id":"evt_1","type":"invoice.paid"}"#,
        &[],
    )
    .await;
    assert_eq!(r.json()["id"], "invoice.paid:evt_1");
    let old = format!("t=1000,v1={}", "a".repeat(64));
    let r = relay
        .connect()
        .await
        .request(
            "POST",
            "/webhooks/stripe",
            &[("stripe-signature", &old)],
            b"{}",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let topics: HashSet<String> = relay
        .wait_for_ids(
            &[
                "push:d-1",
                "deploy:398738663015.1",
                "orders.create:w-1",
                "invoice.paid:evt_1",
            ]
            .map(String::from)
            .into(),
            Duration::from_secs(20),
        )
        .iter()
        .map(|e| e["topic"].as_str().unwrap().to_string())
        .collect();
    for t in [
        "github.push",
        "slack.deploy",
        "shopify.orders.create",
        "stripe.invoice.paid",
        "meta.messages",
    ] {
        assert!(topics.contains(t), "{t} not in {topics:?}");
    }
    assert!(
        !topics
            .iter()
            .any(|t| t.contains("ping") || t.contains("url_")),
        "handshakes were published: {topics:?}"
    );
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "hookrelay_signature_failures_total{source=\"stripe\",reason=\"stale\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("qa-secret");
    std::fs::write(&secret, "first\n").unwrap();
    let config = base_config(dir.path(), "", "", "").replace(
        "secret_env = \"HOOKRELAY_TEST_SECRET\"",
        &format!("secret_file = {:?}", secret.display().to_string()),
    );
    let mut relay = Relay::start_with(dir.path(), &config);
    let qa = Method::Quickassist {
        json_stringify: false,
    };
    let send = |relay: &Relay, key: &'static [u8], n: u32| {
        let body = event_body("message.read", &format!("rot-{n}"));
        let relay_addr = relay.addr;
        let method = qa.clone();
        async move {
            let sig = Verifier::with_secrets(method, &[key])
                .unwrap()
                .sign(body.as_bytes(), "/")
                .unwrap();
            Client::connect(relay_addr)
                .await
                .request(
                    "POST",
                    "/webhooks/quickassist",
                    &[("x-webhook-signature", &sig[0].1)],
                    body.as_bytes(),
                )
                .await
                .status
        }
    };
    assert_eq!(send(&relay, b"first", 1).await, StatusCode::OK);
    assert_eq!(send(&relay, b"second", 2).await, StatusCode::UNAUTHORIZED);

    // Kubernetes-style update in place: the file changes, the poll picks it up.
    std::fs::write(&secret, "second\n").unwrap();
    // Each try is a new event: `rot-{n}`.
    let n = Cell::new(3);
    let sent_with = |key: &'static [u8]| {
        let i = n.get();
        n.set(i + 1);
        let sent = send(&relay, key, i);
        async move { (sent.await == StatusCode::OK).then_some(()) }
    };
    eventually(Duration::from_secs(10), || sent_with(b"second"))
        .await
        .unwrap_or_else(|| panic!("the rotated secret was never picked up\n{}", relay.logs()));
    assert_eq!(send(&relay, b"first", 100).await, StatusCode::UNAUTHORIZED);

    // SIGHUP reloads at once; a broken file keeps the secret in force.
    let failed = "hookrelay_secret_reloads_total{source=\"quickassist\",outcome=\"error\"}";
    let failed_before = metric(&relay.metrics().await, failed);
    std::fs::write(&secret, "").unwrap();
    signal(relay.child.id(), "HUP");
    eventually(Duration::from_secs(10), || async {
        (metric(&relay.metrics().await, failed) > failed_before).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the broken secret file was never reloaded\n{}",
            relay.logs()
        )
    });
    assert_eq!(send(&relay, b"second", 101).await, StatusCode::OK);
    n.set(n.get() + 200);
    std::fs::write(&secret, "third").unwrap();
    signal(relay.child.id(), "HUP");
    eventually(Duration::from_secs(5), || sent_with(b"third"))
        .await
        .unwrap_or_else(|| panic!("SIGHUP did not reload\n{}", relay.logs()));
    let m = relay.metrics().await;
    assert!(
        metric(
            &m,
            "hookrelay_secret_reloads_total{source=\"quickassist\",outcome=\"ok\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &m,
            "hookrelay_secret_reloads_total{source=\"quickassist\",outcome=\"error\"}"
        ) >= 1.0
    );
    let logs = relay.logs();
    assert!(
        !logs.contains("second") && !logs.contains("third"),
        "a secret reached the logs"
    );
    relay.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_sender_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "rate_limit = { per_second = 1.0, burst = 3 }\n\n[sources.gated]\nscheme = \"quickassist\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\nallowed_cidrs = [\"10.9.9.0/24\"]\n";
    let config = base_config(
        dir.path(),
        "trusted_proxies = [\"127.0.0.1/32\"]",
        "",
        extra,
    );
    let relay = Relay::start_with(dir.path(), &config);
    let mut c = relay.connect().await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = c
            .post_signed(&event_body("message.read", &format!("rl-{i}")))
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers.contains_key("retry-after"));
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);

    let body = event_body("message.read", "gated-1");
    let sig = sign(body.as_bytes());
    let direct = c
        .request(
            "POST",
            "/webhooks/gated",
            &[("x-webhook-signature", &sig)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(
        direct.status,
        StatusCode::FORBIDDEN,
        "127.0.0.1 is not in 10.9.9.0/24"
    );
    // Through the trusted proxy (127.0.0.1) with the sender in X-Forwarded-For.
    let proxied = c
        .request(
            "POST",
            "/webhooks/gated",
            &[
                ("x-webhook-signature", &sig),
                ("x-forwarded-for", "203.0.113.9, 10.9.9.7"),
            ],
            body.as_bytes(),
        )
        .await;
    assert_eq!(proxied.status, StatusCode::OK, "{:?}", proxied.json());
    let spoofed = c
        .request(
            "POST",
            "/webhooks/gated",
            &[
                ("x-webhook-signature", &sig),
                ("x-forwarded-for", "10.9.9.7, 203.0.113.9"),
            ],
            body.as_bytes(),
        )
        .await;
    assert_eq!(
        spoofed.status,
        StatusCode::FORBIDDEN,
        "only the right-most untrusted hop counts"
    );
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_requests_total{source=\"quickassist\",status=\"429\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_requests_total{source=\"gated\",status=\"403\"}"
        ),
        2.0
    );
}

fn redis_dedup(url: &str, on_error: &str) -> String {
    format!(
        "[dedup]\nbackend = \"redis\"\nredis_url = \"{url}\"\non_redis_error = \"{on_error}\"\nredis_timeout_ms = 300\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dedup_is_shared_by_two_replicas() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_redis = |d: &std::path::Path| {
        base_config(d, "", "", "").replace(
            "[log]",
            &format!(
                "{}\n[log]",
                redis_dedup("redis://127.0.0.1:6379/0", "accept")
            ),
        )
    };
    let a = Relay::start_with(a_dir.path(), &with_redis(a_dir.path()));
    let b = Relay::start_with(b_dir.path(), &with_redis(b_dir.path()));
    let run = unique("replica");
    let mut accepted = 0;
    let mut duplicates = 0;
    for i in 0..20 {
        let body = event_body(EVENT_TYPES[i % 4], &format!("{run}-{i}"));
        for relay in [&a, &b, &a] {
            let (status, json) = relay.post(&body).await;
            assert_eq!(status, StatusCode::OK);
            match json["status"].as_str() {
                Some("accepted") => accepted += 1,
                Some("duplicate") => duplicates += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!((accepted, duplicates), (20, 40));
    // Every accepted event delivered by one replica or the other, and both spools
    // empty: nothing more can come, so the count is final.
    let ids: HashSet<String> = (0..20)
        .map(|i| format!("{}:{run}-{i}", EVENT_TYPES[i % 4]))
        .collect();
    let published = eventually(Duration::from_secs(10), || async {
        let drained = a.wait_drained(Duration::ZERO).await.is_some()
            && b.wait_drained(Duration::ZERO).await.is_some();
        let events: Vec<_> = a.events().into_iter().chain(b.events()).collect();
        let seen: HashSet<String> = events.iter().map(event_id).collect();
        (drained && ids.is_subset(&seen)).then_some(events.len())
    })
    .await
    .unwrap_or_else(|| panic!("not every event was delivered\n{}\n{}", a.logs(), b.logs()));
    assert_eq!(
        published, 20,
        "each event published once across both replicas"
    );
}

/// A private redis-server on an ephemeral port, killed on drop.
struct OwnRedis(Child, u16);

impl OwnRedis {
    fn start() -> OwnRedis {
        // hookrelay takes only redis:// and rediss:// URLs (no unix socket), so a
        // TCP port, retried should another process take it first.
        let (child, port) = start_on_free_port("redis-server", Duration::from_secs(10), |port| {
            Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (Debian package redis-server) must be installed")
        });
        OwnRedis(child, port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_or_closed_as_configured() {
    let redis = OwnRedis::start();
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    let (open_dir, closed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = |d: &std::path::Path, mode: &str| {
        base_config(d, "", "", "").replace("[log]", &format!("{}\n[log]", redis_dedup(&url, mode)))
    };
    let open = Relay::start_with(open_dir.path(), &cfg(open_dir.path(), "accept"));
    let closed = Relay::start_with(closed_dir.path(), &cfg(closed_dir.path(), "reject"));
    for relay in [&open, &closed] {
        let body = event_body("message.read", &unique("up"));
        assert_eq!(relay.post(&body).await.1["status"], "accepted");
        assert_eq!(relay.post(&body).await.1["status"], "duplicate");
    }
    // Killed and reaped: its port is closed by the time drop returns.
    drop(redis);
    let body = event_body("message.read", &unique("down"));
    let (status, json) = open.post(&body).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("accepted")),
        "fail open"
    );
    let mut c = closed.connect().await;
    let r = c.post_signed(&body).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "fail closed: {:?}",
        r.json()
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        metric(
            &open.metrics().await,
            "hookrelay_dedup_errors_total{action=\"accepted\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &closed.metrics().await,
            "hookrelay_dedup_errors_total{action=\"rejected\"}"
        ) >= 1.0
    );
}
