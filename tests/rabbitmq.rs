//! The RabbitMQ sink against the machine's real RabbitMQ. Every test uses its own
//! exchange and queues, so they run in parallel; broker-wide faults (restart,
//! memory alarm) live in tests/rabbitmq_faults.rs.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::amqp::{self, bind, cleanup, drain, unique};
use common::*;
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_pattern_with_exact_body_properties_and_headers() {
    let ex = unique("hr-route");
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_sink(dir.path(), "", "", &amqp::sink_section(&ex, ""), "");
    let relay = Relay::start_with(dir.path(), &config);
    let (conn, ch) = amqp::channel().await;
    let (q_msgs, q_failed, q_all) = (
        format!("{ex}.msgs"),
        format!("{ex}.failed"),
        format!("{ex}.all"),
    );
    bind(&ch, &q_msgs, &ex, "quickassist.message.*", false).await;
    bind(&ch, &q_failed, &ex, "#.failed", false).await;
    bind(&ch, &q_all, &ex, "#", false).await;

    let mut c = relay.connect().await;
    assert_eq!(c.post_signed(DOC_EXAMPLE).await.status, StatusCode::OK);
    for i in 0..3 {
        for t in EVENT_TYPES {
            let r = c.post_signed(&event_body(t, &format!("r{i}"))).await;
            assert_eq!(r.json()["status"], "accepted");
        }
    }
    let all = drain(&ch, &q_all, 13, Duration::from_secs(30)).await;
    let msgs = drain(&ch, &q_msgs, 10, Duration::from_secs(10)).await;
    let failed = drain(&ch, &q_failed, 3, Duration::from_secs(10)).await;
    assert_eq!(
        (all.len(), msgs.len(), failed.len()),
        (13, 10, 3),
        "{}",
        relay.logs()
    );
    assert!(
        msgs.iter()
            .all(|m| m.routing_key.starts_with("quickassist.message."))
    );
    assert!(
        failed
            .iter()
            .all(|m| m.routing_key == "quickassist.message.failed")
    );

    let doc = all
        .iter()
        .find(|m| m.header("hookrelay-id") == "message.delivered:msg_123456789")
        .expect("doc example routed");
    assert_eq!(doc.body, DOC_EXAMPLE.as_bytes());
    assert_eq!(doc.routing_key, "quickassist.message.delivered");
    let p = &doc.properties;
    assert_eq!(p.delivery_mode(), &Some(2));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some("message.delivered:msg_123456789")
    );
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("hookrelay"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts = p.timestamp().expect("timestamp");
    assert!(ts <= now && ts + 60 > now, "timestamp {ts} vs now {now}");
    assert_eq!(doc.header("hookrelay-source"), "quickassist");
    assert_eq!(doc.header("hookrelay-event"), "message.delivered");
    let received: u64 = doc.header("hookrelay-received-at").parse().expect("ns");
    assert_eq!(received / 1_000_000_000, ts);
    for m in &all {
        assert_eq!(
            m.routing_key,
            format!("quickassist.{}", m.header("hookrelay-event"))
        );
    }
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_sink_published_total{sink=\"rabbitmq\"}"),
        13.0
    );
    let _ = conn.close(200, "done".into()).await;
    cleanup(&ex, &[&q_msgs, &q_failed, &q_all]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_events_land_in_the_unroutable_queue() {
    let ex = unique("hr-unroutable");
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(
        dir.path(),
        &config_with_sink(dir.path(), "", "", &amqp::sink_section(&ex, ""), ""),
    );
    let mut c = relay.connect().await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        let r = c
            .post_signed(&event_body(EVENT_TYPES[i % 4], &format!("u{i}")))
            .await;
        ids.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    let (conn, ch) = amqp::channel().await;
    let got = drain(
        &ch,
        &format!("{ex}.unroutable"),
        20,
        Duration::from_secs(30),
    )
    .await;
    let got_ids: HashSet<String> = got.iter().map(|m| m.header("hookrelay-id")).collect();
    assert_eq!(got_ids, ids, "{}", relay.logs());
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_rabbitmq_returned_total{sink=\"rabbitmq\"}"),
        0.0
    );
    assert_eq!(
        metric(&m, "hookrelay_dead_lettered_total{sink=\"rabbitmq\"}"),
        0.0
    );
    let _ = conn.close(200, "done".into()).await;
    cleanup(&ex, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_amqp_binding() {
    let ex = unique("hr-ce");
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &amqp::sink_section(&ex, "cloudevents = true"),
        "",
    );
    let (conn, ch) = amqp::channel().await;
    let q = format!("{ex}.q");
    bind(&ch, &q, &ex, "#", false).await;
    let (status, _) = relay.post(&event_body("message.read", "ce")).await;
    assert_eq!(status, StatusCode::OK);
    let got = drain(&ch, &q, 1, Duration::from_secs(20)).await;
    let m = got.first().expect("consumed");
    assert_eq!(m.header("cloudEvents:specversion"), "1.0");
    assert_eq!(m.header("cloudEvents:id"), "message.read:ce");
    assert_eq!(m.header("cloudEvents:source"), "urn:hookrelay:quickassist");
    assert_eq!(m.header("cloudEvents:type"), "quickassist.message.read");
    assert!(m.header("cloudEvents:time").ends_with('Z'));
    let _ = conn.close(200, "done".into()).await;
    cleanup(&ex, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_mode_answers_after_the_confirm() {
    let ex = unique("hr-ack");
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &amqp::sink_section(&ex, ""),
        "ack = \"broker\"\n",
    );
    let (conn, ch) = amqp::channel().await;
    let q = format!("{ex}.q");
    bind(&ch, &q, &ex, "#", false).await;
    let mut c = relay.connect().await;
    for i in 0..5 {
        let r = c
            .post_signed(&event_body("message.read", &format!("a{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        // Confirmed before the 200: already in the queue.
        let got = drain(&ch, &q, 1, Duration::from_secs(2)).await;
        assert_eq!(got.len(), 1, "a{i} not in the queue right after its 200");
        assert_eq!(got[0].header("hookrelay-id"), format!("message.read:a{i}"));
    }
    assert!(
        !dir.path().join("spool").exists(),
        "broker mode needs no spool"
    );
    let _ = conn.close(200, "done".into()).await;
    cleanup(&ex, &[&q]).await;
}

/// Without the alternate exchange an event no queue is bound for is returned
/// (`basic.return`), refused for good, and dead-lettered: to the dead-letter
/// exchange's queue, byte for byte with the reason and the topic, not to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_go_to_the_dead_letter_exchange_not_the_file() {
    let ex = unique("hr-dlx");
    let dlx = format!("{ex}.dead");
    let dir = tempfile::tempdir().unwrap();
    let section = amqp::sink_section(
        &ex,
        &format!("unroutable_queue = false\ndead_letter_exchange = \"{dlx}\""),
    );
    let config = config_with_sink(dir.path(), "", "", &section, "");
    let relay = Relay::start_with(dir.path(), &config);
    let mut c = relay.connect().await;
    let mut sent = HashMap::new();
    for i in 0..5 {
        let body = event_body(EVENT_TYPES[i % 4], &format!("dl{i}"));
        let r = c.post_signed(&body).await;
        assert_eq!(r.json()["status"], "accepted", "{:?}", r.json());
        sent.insert(r.json()["id"].as_str().unwrap().to_string(), body);
    }
    let (conn, ch) = amqp::channel().await;
    let got = drain(&ch, &dlx, 5, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 5, "{}", relay.logs());
    let mut ids = HashSet::new();
    for m in &got {
        let id = m.header("hookrelay-id");
        let body = sent.get(&id).unwrap_or_else(|| panic!("unknown id {id:?}"));
        assert_eq!(m.body, body.as_bytes(), "{id}");
        let topic = format!("quickassist.{}", m.header("hookrelay-event"));
        assert_eq!(m.header("hookrelay-topic"), topic);
        assert_eq!(m.routing_key, topic);
        let reason = m.header("hookrelay-dead-letter-reason");
        assert!(reason.contains("unroutable"), "{reason}");
        assert_eq!(m.properties.delivery_mode(), &Some(2));
        assert_eq!(
            m.properties.message_id().as_ref().map(|s| s.as_str()),
            Some(id.as_str())
        );
        ids.insert(id);
    }
    assert_eq!(ids.len(), 5, "each event dead-lettered once");
    relay
        .wait_drained(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the dead letters were not confirmed\n{}", relay.logs()));
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_dead_lettered_total{sink=\"rabbitmq\"}"),
        5.0
    );
    assert_eq!(
        metric(&m, "hookrelay_rabbitmq_returned_total{sink=\"rabbitmq\"}"),
        5.0
    );
    let file = std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap_or_default();
    assert!(file.is_empty(), "the dead-letter file got: {file}");

    let (ok, out) = check_config(dir.path(), &config, &["--connect"]);
    assert!(
        ok && out.contains(&format!("dead-letter exchange '{dlx}' exists")),
        "{out}"
    );
    let _ = conn.close(200, "done".into()).await;
    drop(relay);
    cleanup(&ex, &[]).await;
    amqp::cleanup_fanouts(&[&dlx]).await;
}

/// A dead-letter exchange that routes nowhere (`declare = false`, topology
/// managed elsewhere and no queue bound yet) returns the dead letter too; the
/// file takes it. And a missing one with `declare = false` fails `check --connect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_exchange_that_refuses_leaves_it_to_the_file() {
    let ex = unique("hr-dlx-nowhere");
    let dlx = format!("{ex}.dead");
    let dir = tempfile::tempdir().unwrap();
    let section = amqp::sink_section(
        &ex,
        &format!("declare = false\ndead_letter_exchange = \"{dlx}\""),
    );
    let config = config_with_sink(dir.path(), "", "", &section, "");
    let (ok, out) = check_config(dir.path(), &config, &["--connect"]);
    assert!(!ok, "{out}");
    let (conn, ch) = amqp::channel().await;
    for (name, kind) in [
        (ex.as_str(), lapin::ExchangeKind::Topic),
        (dlx.as_str(), lapin::ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(
            name.into(),
            kind,
            lapin::options::ExchangeDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
        if name == ex {
            // The main exchange alone: the dead-letter exchange is what is missing.
            let (ok, out) = check_config(dir.path(), &config, &["--connect"]);
            assert!(
                !ok && out.contains("sinks.rabbitmq.dead_letter_exchange")
                    && out.contains("declare = false"),
                "{out}"
            );
        }
    }
    let relay = Relay::start_with(dir.path(), &config);
    let mut c = relay.connect().await;
    let mut ids = HashSet::new();
    for i in 0..3 {
        let r = c
            .post_signed(&event_body(EVENT_TYPES[i % 4], &format!("nw{i}")))
            .await;
        ids.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    let path = dir.path().join("dead-letter.jsonl");
    let lines = eventually(Duration::from_secs(30), || async {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= 3).then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("no dead letters in the file\n{}", relay.logs()));
    let got: HashSet<String> = lines.iter().map(event_id).collect();
    assert_eq!(got, ids);
    for l in &lines {
        assert!(
            l["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("unroutable"),
            "{l}"
        );
    }
    let _ = conn.close(200, "done".into()).await;
    drop(relay);
    cleanup(&ex, &[]).await;
    amqp::cleanup_fanouts(&[&dlx]).await;
}

#[test]
fn wrong_credentials_are_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let ex = unique("hr-creds");
    let section = amqp::sink_section(&ex, "").replace("guest:guest@", "guest:wrong@");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, config_with_sink(dir.path(), "", "", &section, "")).unwrap();
    for args in [vec!["check", "--connect"], vec!["run"]] {
        let o = std::process::Command::new(binary())
            .args(&args)
            .arg("--config")
            .arg(&config)
            .env("HOOKRELAY_TEST_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("refused the credentials") && err.contains("ACCESS_REFUSED"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("wrong"),
            "the password leaked into the error: {err}"
        );
    }
    let good = config_with_sink(dir.path(), "", "", &amqp::sink_section(&ex, ""), "");
    std::fs::write(&config, good).unwrap();
    let o = std::process::Command::new(binary())
        .args(["check", "--connect", "--config"])
        .arg(&config)
        .env("HOOKRELAY_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("rabbitmq: connected to amqp://127.0.0.1:5672"),
        "{out}"
    );
}

/// The provider's `traceparent` reaches the AMQP message's headers, its trace
/// continued under the relay's span; a request without one gets a new trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_traceparent_reaches_the_message() {
    let ex = unique("hr-trace");
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_sink(dir.path(), "", "", &amqp::sink_section(&ex, ""), "");
    let relay = Relay::start_with(dir.path(), &config);
    let q = format!("{ex}.all");
    {
        let (conn, ch) = amqp::channel().await;
        bind(&ch, &q, &ex, "#", true).await;
        let _ = conn.close(200, "bound".into()).await;
    }
    let mut c = relay.connect().await;
    let sent = [("rt1", Some(TRACEPARENT)), ("rt2", None)];
    for (id, tp) in sent {
        let r = post_traced(&mut c, id, tp).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    }
    let (conn, ch) = amqp::channel().await;
    let got = drain(&ch, &q, 2, Duration::from_secs(30)).await;
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(got.len(), 2, "{}", relay.logs());
    for (id, tp) in sent {
        let m = got
            .iter()
            .find(|m| m.header("hookrelay-id") == format!("message.read:{id}"))
            .unwrap_or_else(|| panic!("{id} not consumed"));
        assert_continues(tp, &m.header("traceparent"));
    }
    cleanup(&ex, &[&q]).await;
}
