//! The Kafka sink against a real Kafka-compatible broker (tansu), read back with
//! an rdkafka consumer.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::kafka::{Tansu, consume, sink_section};
use common::*;
use hyper::StatusCode;

const CREATE: &str = "create_topics = true\ntopic_partitions = 3\ntopic_replication = 1";

fn topics() -> Vec<String> {
    EVENT_TYPES
        .iter()
        .map(|t| format!("quickassist.{t}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_keys_values_headers_and_per_key_order() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    // A second source puts all four types on one topic, so per-message order is observable.
    let relay = Relay::start_with_sink(
        dir.path(),
        &sink_section(&broker.brokers, CREATE),
        "\n[sources.ordered]\nscheme = \"quickassist\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\ntopic = \"{source}.all\"\n",
    );
    let mut c = relay.connect().await;

    let r = c.post_signed(DOC_EXAMPLE).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let mut sent = HashMap::new();
    for i in 0..10 {
        for t in EVENT_TYPES {
            let body = event_body(t, &format!("k{i}"));
            let r = c.post_signed(&body).await;
            assert_eq!(r.json()["status"], "accepted");
            sent.insert(r.json()["id"].as_str().unwrap().to_string(), body);
        }
    }
    let mut ordered = c;
    for i in 0..10 {
        for t in EVENT_TYPES {
            let body = event_body(t, &format!("o{i}"));
            let sig = sign(body.as_bytes());
            let r = ordered
                .request(
                    "POST",
                    "/webhooks/ordered",
                    &[("x-webhook-signature", &sig)],
                    body.as_bytes(),
                )
                .await;
            assert_eq!(r.json()["status"], "accepted");
        }
    }

    let topics = topics();
    let mut names: Vec<&str> = topics.iter().map(String::as_str).collect();
    names.push("ordered.all");
    let records = consume(&broker.brokers, &names, 3, 81, Duration::from_secs(60));
    assert_eq!(records.len(), 81, "{}", relay.logs());

    // The documentation example: pretty-printed bytes exactly, keyed by messageId.
    let doc = records
        .iter()
        .find(|r| r.header("hookrelay-id") == "message.delivered:msg_123456789")
        .expect("doc example consumed");
    assert_eq!(doc.topic, "quickassist.message.delivered");
    assert_eq!(doc.key, b"msg_123456789");
    assert_eq!(doc.value, DOC_EXAMPLE.as_bytes());

    for r in records
        .iter()
        .filter(|r| r.topic.starts_with("quickassist."))
    {
        let id = r.header("hookrelay-id");
        let event = r.header("hookrelay-event");
        assert_eq!(r.topic, format!("quickassist.{event}"));
        assert_eq!(r.header("hookrelay-source"), "quickassist");
        assert_eq!(r.header("content-type"), "application/json");
        let received: u64 = r
            .header("hookrelay-received-at")
            .parse()
            .expect("received-at is ns");
        assert_eq!(r.timestamp_ms, Some((received / 1_000_000) as i64));
        if let Some(body) = sent.get(&id) {
            assert_eq!(r.value, body.as_bytes());
            assert_eq!(id, format!("{event}:{}", String::from_utf8_lossy(&r.key)));
        }
    }

    // Per key, the four types arrive in the order they were sent, in one partition.
    let mut by_key: HashMap<Vec<u8>, Vec<&common::kafka::Record>> = HashMap::new();
    for r in records.iter().filter(|r| r.topic == "ordered.all") {
        by_key.entry(r.key.clone()).or_default().push(r);
    }
    assert_eq!(by_key.len(), 10);
    for (key, mut rs) in by_key {
        assert!(
            rs.iter().all(|r| r.partition == rs[0].partition),
            "{key:?} spans partitions"
        );
        rs.sort_by_key(|r| r.offset);
        let types: Vec<String> = rs.iter().map(|r| r.header("hookrelay-event")).collect();
        assert_eq!(
            types,
            EVENT_TYPES.map(String::from).to_vec(),
            "order for {key:?}"
        );
    }

    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_sink_published_total{sink=\"kafka\"}"),
        81.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_binary_mode_headers() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &sink_section(&broker.brokers, &format!("{CREATE}\ncloudevents = true")),
        "",
    );
    let (status, _) = relay.post(&event_body("message.read", "ce1")).await;
    assert_eq!(status, StatusCode::OK);
    let records = consume(
        &broker.brokers,
        &["quickassist.message.read"],
        3,
        1,
        Duration::from_secs(30),
    );
    let r = records.first().expect("consumed");
    assert_eq!(r.header("ce_specversion"), "1.0");
    assert_eq!(r.header("ce_id"), "message.read:ce1");
    assert_eq!(r.header("ce_source"), "urn:hookrelay:quickassist");
    assert_eq!(r.header("ce_type"), "quickassist.message.read");
    assert!(
        r.header("ce_time").ends_with('Z') && r.header("ce_time").len() == 27,
        "{}",
        r.header("ce_time")
    );
    assert_eq!(r.header("content-type"), "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_mode_answers_after_delivery_without_a_spool() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &sink_section(&broker.brokers, CREATE),
        "ack = \"broker\"\nack_timeout_ms = 10000\n",
    );
    let mut c = relay.connect().await;
    for i in 0..5 {
        let r = c
            .post_signed(&event_body("message.failed", &format!("b{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        // Delivered before the 200: readable at once.
        let records = consume(
            &broker.brokers,
            &["quickassist.message.failed"],
            3,
            i + 1,
            Duration::from_secs(10),
        );
        assert!(
            records
                .iter()
                .any(|r| r.header("hookrelay-id") == format!("message.failed:b{i}")),
            "b{i} not in the topic right after its 200"
        );
    }
    assert!(
        !dir.path().join("spool").exists(),
        "broker mode needs no spool"
    );
}

#[test]
fn check_connect_reports_metadata_or_the_error() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        config_with_sink(dir.path(), "", "", &sink_section(&broker.brokers, ""), ""),
    )
    .unwrap();
    let o = std::process::Command::new(binary())
        .args(["check", "--connect", "--config", good.to_str().unwrap()])
        .env("HOOKRELAY_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("kafka: connected to 1 broker(s)"), "{out}");

    // Bound, not listening, for the whole test: connections are refused.
    let (_reserved, closed) = refused_port();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config_with_sink(
            dir.path(),
            "",
            "",
            &sink_section(&closed.to_string(), ""),
            "",
        ),
    )
    .unwrap();
    let o = std::process::Command::new(binary())
        .args(["check", "--connect", "--config", bad.to_str().unwrap()])
        .env("HOOKRELAY_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sinks.kafka: cannot reach") && err.contains(&closed.to_string()),
        "{err}"
    );
}

/// Two Kafka clusters (two tansu brokers), each a named sink with its own
/// producer: sources routed to one use their own topic templates, and a source
/// fanned out to both lands in each cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kafka_clusters_as_named_sinks_with_fan_out() {
    let (east, west) = (Tansu::start(), Tansu::start());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sinks = format!(
        "{}{}",
        sink_section(&east.brokers, CREATE)
            .replace("[sinks.kafka]", "[sinks.east]\ntype = \"kafka\""),
        sink_section(&west.brokers, CREATE)
            .replace("[sinks.kafka]", "[sinks.west]\ntype = \"kafka\"")
    );
    let mut text = config_with_sink(
        d,
        "",
        "",
        &sinks,
        "sink = \"east\"\ntopic = \"east.{event}\"",
    );
    for (name, route) in [
        (
            "westonly",
            "sink = \"west\"\ntopic = \"{source}.w.{event}\"",
        ),
        ("both", "sinks = [\"east\", \"west\"]\ntopic = \"both.all\""),
    ] {
        text.push_str(&format!(
            "\n[sources.{name}]\nscheme = \"quickassist\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\n{route}\n"
        ));
    }
    let relay = Relay::start_with(d, &text);
    let mut c = relay.connect().await;
    let mut acked: HashMap<&str, Vec<String>> = HashMap::new();
    for source in ["quickassist", "westonly", "both"] {
        for (i, t) in EVENT_TYPES.iter().enumerate() {
            let r = c
                .post_signed_to(source, &event_body(t, &format!("{source}-{i}")))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}\n{}", r.json(), relay.logs());
            acked
                .entry(source)
                .or_default()
                .push(r.json()["id"].as_str().unwrap().to_string());
        }
    }
    let east_topics: Vec<String> = EVENT_TYPES.iter().map(|t| format!("east.{t}")).collect();
    let west_topics: Vec<String> = EVENT_TYPES
        .iter()
        .map(|t| format!("westonly.w.{t}"))
        .collect();
    let names = |v: &[String]| -> Vec<String> {
        v.iter().cloned().chain(["both.all".to_string()]).collect()
    };
    let (east_names, west_names) = (names(&east_topics), names(&west_topics));
    let on_east = consume(
        &east.brokers,
        &as_str(&east_names),
        3,
        8,
        Duration::from_secs(60),
    );
    let on_west = consume(
        &west.brokers,
        &as_str(&west_names),
        3,
        8,
        Duration::from_secs(60),
    );
    let ids = |records: &[common::kafka::Record], prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = records
            .iter()
            .filter(|r| r.topic.starts_with(prefix))
            .map(|r| r.header("hookrelay-id"))
            .collect();
        v.sort();
        v
    };
    let sorted = |source: &str| {
        let mut v = acked[source].clone();
        v.sort();
        v
    };
    assert_eq!(
        ids(&on_east, "east."),
        sorted("quickassist"),
        "{}",
        relay.logs()
    );
    assert_eq!(ids(&on_east, "both."), sorted("both"));
    assert_eq!(ids(&on_west, "westonly.w."), sorted("westonly"));
    assert_eq!(ids(&on_west, "both."), sorted("both"));
    assert_eq!(
        on_east.len() + on_west.len(),
        16,
        "nothing went to the wrong cluster"
    );
    relay.wait_drained(Duration::from_secs(10)).await.unwrap();
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_sink_published_total{sink=\"east\"}"),
        8.0
    );
    assert_eq!(
        metric(&m, "hookrelay_sink_published_total{sink=\"west\"}"),
        8.0
    );
}

fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The provider's `traceparent` reaches the Kafka record's headers, its trace
/// continued under the relay's span; a request without one gets a new trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_traceparent_reaches_the_record() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(dir.path(), &sink_section(&broker.brokers, CREATE), "");
    let mut c = relay.connect().await;
    let sent = [("kt1", Some(TRACEPARENT)), ("kt2", None)];
    for (id, tp) in sent {
        let r = post_traced(&mut c, id, tp).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    }
    let records = consume(
        &broker.brokers,
        &["quickassist.message.read"],
        3,
        2,
        Duration::from_secs(30),
    );
    assert_eq!(records.len(), 2, "{}", relay.logs());
    for (id, tp) in sent {
        let r = records
            .iter()
            .find(|r| r.header("hookrelay-id") == format!("message.read:{id}"))
            .unwrap_or_else(|| panic!("{id} not consumed"));
        assert_continues(tp, &r.header("traceparent"));
    }
}
