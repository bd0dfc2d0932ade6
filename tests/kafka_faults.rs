//! Kafka faults through librdkafka's mock cluster (fault injection only; the
//! happy path runs against a real broker in tests/kafka.rs).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::kafka::{consume, sink_section};
use common::*;
use hyper::StatusCode;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaRespErr;

const BROKERS: i32 = 3;
/// librdkafka's `message.timeout.ms` where an outage must fail deliveries.
const MESSAGE_TIMEOUT: Duration = Duration::from_millis(3000);

fn cluster_with_topics(
    extra: &[&str],
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(BROKERS).expect("mock cluster");
    for t in EVENT_TYPES {
        cluster
            .create_topic(&format!("quickassist.{t}"), 3, 3)
            .unwrap();
    }
    for t in extra {
        cluster.create_topic(t, 3, 3).unwrap();
    }
    cluster
}

fn all_brokers(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    up: bool,
) {
    for id in 1..=BROKERS {
        if up {
            cluster.broker_up(id).unwrap();
        } else {
            cluster.broker_down(id).unwrap();
        }
    }
}

fn topic_names() -> Vec<String> {
    EVENT_TYPES
        .iter()
        .map(|t| format!("quickassist.{t}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_down_mid_stream_then_back_loses_nothing() {
    let cluster = cluster_with_topics(&[]);
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &sink_section(
            &brokers,
            &format!("message_timeout_ms = {}", MESSAGE_TIMEOUT.as_millis()),
        ),
        "",
    );

    // Durable mode: the spool absorbs the outage, HTTP keeps answering 200.
    let load = send_concurrently(
        relay.addr,
        Load::each(16, 250).paced(Duration::from_millis(2)),
        distinct_events("down"),
    );
    load.wait_acked(1000, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("only {} events acked\n{}", load.acked(), relay.logs()));
    all_brokers(&cluster, false);
    let down_at = load.acked();
    // The outage outlasts librdkafka's message timeout on purpose, so deliveries
    // really fail and are retried.
    tokio::time::sleep(MESSAGE_TIMEOUT + Duration::from_secs(2)).await;
    let during = load.acked() - down_at;
    all_brokers(&cluster, true);
    let sent = load.finish().await;
    sent.assert_all_accepted(&relay.logs());
    let acked = sent.acked;
    assert_eq!(acked.len(), 4000);
    assert!(
        during > 100,
        "only {during} events accepted while the brokers were down"
    );

    let topics = topic_names();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    // Read until every acked id is there (duplicates allowed) or time runs out.
    let (mut seen, mut total) = (HashSet::new(), 0);
    eventually_blocking(Duration::from_secs(90), || {
        let records = consume(&brokers, &names, 3, acked.len() * 2, Duration::from_secs(5));
        total = records.len();
        seen = records.iter().map(|r| r.header("hookrelay-id")).collect();
        acked.iter().all(|id| seen.contains(id)).then_some(())
    });
    let lost: Vec<_> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    eprintln!(
        "acked {} ({} during the outage); consumed {} records, {} unique, lost {}",
        acked.len(),
        during,
        total,
        seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} acked events lost, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(5)],
        relay.logs()
    );

    // The spool drains completely.
    if relay.wait_drained(Duration::from_secs(30)).await.is_none() {
        panic!("spool never drained\n{}", relay.metrics().await);
    }
    // The outage really failed deliveries, and the forwarder retried them.
    let m = relay.metrics().await;
    assert!(
        metric(
            &m,
            "hookrelay_sink_errors_total{sink=\"kafka\",kind=\"retriable\"}"
        ) > 0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_refused_topic_is_dead_lettered_and_the_rest_flows() {
    let cluster = cluster_with_topics(&["hookrelay.dlq"]);
    let brokers = cluster.bootstrap_servers();
    cluster
        .topic_error(
            "quickassist.message.failed",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &sink_section(&brokers, "dlq_topic = \"hookrelay.dlq\""),
        "",
    );
    let mut c = relay.connect().await;
    let mut good = HashSet::new();
    let mut poison = HashSet::new();
    for i in 0..40 {
        let t = EVENT_TYPES[i % 4];
        let r = c.post_signed(&event_body(t, &format!("p{i}"))).await;
        assert_eq!(r.status, StatusCode::OK);
        let id = r.json()["id"].as_str().unwrap().to_string();
        if t == "message.failed" {
            poison.insert(id);
        } else {
            good.insert(id);
        }
    }
    let topics = topic_names();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let records = consume(&brokers, &names, 3, good.len(), Duration::from_secs(60));
    let seen: HashSet<String> = records.iter().map(|r| r.header("hookrelay-id")).collect();
    assert!(
        good.iter().all(|id| seen.contains(id)),
        "good events missing: {}",
        relay.logs()
    );

    let dead = consume(
        &brokers,
        &["hookrelay.dlq"],
        3,
        poison.len(),
        Duration::from_secs(60),
    );
    let dead_ids: HashSet<String> = dead.iter().map(|r| r.header("hookrelay-id")).collect();
    assert_eq!(dead_ids, poison, "{}", relay.logs());
    for r in &dead {
        assert_eq!(r.header("hookrelay-topic"), "quickassist.message.failed");
        assert!(
            r.header("hookrelay-dead-letter-reason").contains("uthoriz"),
            "{}",
            r.header("hookrelay-dead-letter-reason")
        );
    }
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_dead_lettered_total{sink=\"kafka\"}"),
        10.0
    );
    assert_eq!(metric(&m, "hookrelay_spool_events{sink=\"kafka\"}"), 0.0);
    // Logged once per topic, not once per event.
    let logs = relay.logs();
    assert_eq!(logs.matches("refused for good").count(), 1, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_mode_answers_503_within_the_deadline_when_the_cluster_is_down() {
    let cluster = cluster_with_topics(&[]);
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &sink_section(&brokers, ""),
        "ack = \"broker\"\nack_timeout_ms = 1000\n",
    );
    let mut c = relay.connect().await;
    eventually(Duration::from_secs(10), || async {
        let status = Client::connect(relay.admin)
            .await
            .get("/readyz")
            .await
            .status;
        (status == StatusCode::OK).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("never ready while the cluster was up\n{}", relay.logs()));
    // The first publish also creates the topic and fetches its metadata, which can
    // take longer than the 1 s ack timeout on a loaded CI machine: a provider would
    // retry that 503, and so does the test, until the cluster has confirmed once.
    let up = event_body("message.read", "up");
    eventually(Duration::from_secs(30), || async {
        let (status, json) = relay.post(&up).await;
        if status == StatusCode::OK {
            return Some(());
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json:?}");
        None
    })
    .await
    .unwrap_or_else(|| panic!("the cluster never confirmed while up\n{}", relay.logs()));

    all_brokers(&cluster, false);
    let started = Instant::now();
    let r = c.post_signed(&event_body("message.read", "down")).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.json());
    assert!(r.headers.contains_key("retry-after"));
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    // Readiness follows the cluster in broker mode.
    eventually(Duration::from_secs(15), || async {
        let status = Client::connect(relay.admin)
            .await
            .get("/readyz")
            .await
            .status;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("still ready with the cluster down\n{}", relay.logs()));
    // The refused event was not remembered: its retry is accepted once the cluster is back.
    all_brokers(&cluster, true);
    let down = event_body("message.read", "down");
    let json = eventually(Duration::from_secs(30), || async {
        let (status, json) = relay.post(&down).await;
        (status == StatusCode::OK).then_some(json)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "never accepted after the cluster came back\n{}",
            relay.logs()
        )
    });
    assert_eq!(json["status"], "accepted");
}

/// `hookrelay_sink_up` follows the cluster within seconds, with no event sent:
/// an outage shows before anything has failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_up_follows_the_cluster_within_seconds() {
    let cluster = cluster_with_topics(&[]);
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(dir.path(), &sink_section(&brokers, ""), "");
    let up = |want: f64| {
        let relay = &relay;
        async move {
            let started = Instant::now();
            eventually(Duration::from_secs(8), || async {
                (metric(&relay.metrics().await, "hookrelay_sink_up{sink=\"kafka\"}") == want)
                    .then_some(())
            })
            .await
            .map(|()| started.elapsed())
        }
    };
    up(1.0).await.expect("up at start");
    all_brokers(&cluster, false);
    let took = up(0.0)
        .await
        .expect("hookrelay_sink_up 0 within 8 s of the cluster going down");
    assert!(took < Duration::from_secs(8), "{took:?}");
    all_brokers(&cluster, true);
    up(1.0).await.expect("hookrelay_sink_up back to 1");
}

/// With the cluster unreachable the log gets one line per kind of librdkafka
/// report per 10 s, carrying how many were held back, instead of hundreds a
/// second; every error is still counted by kind, and visible within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_log_lines_are_rate_limited_while_kafka_is_down() {
    let (_reserved, addr) = refused_port();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(dir.path(), &sink_section(&addr.to_string(), ""), "");
    for i in 0..5 {
        let (status, _) = relay
            .post(&event_body("message.read", &format!("down{i}")))
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "durable: accepted while Kafka is down"
        );
    }
    let seen = eventually(Duration::from_secs(5), || async {
        let m = relay.metrics().await;
        let errors = metric_sum(&m, "hookrelay_kafka_errors_total");
        (errors > 0.0 && metric(&m, "hookrelay_sink_up{sink=\"kafka\"}") == 0.0).then_some(errors)
    })
    .await;
    assert!(
        seen.is_some(),
        "no error counted within 5 s\n{}",
        relay.metrics().await
    );
    // Past one interval, so that the second line of a kind (with its count) is due.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let logs = relay.logs();
    let broker_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("librdkafka:") || l.contains("kafka client error"))
        .collect();
    let errors = metric_sum(&relay.metrics().await, "hookrelay_kafka_errors_total");
    eprintln!(
        "{} broker log lines in ~14 s for {errors} errors counted:\n{}",
        broker_lines.len(),
        broker_lines.join("\n")
    );
    assert!(
        !broker_lines.is_empty(),
        "the outage is logged at all\n{logs}"
    );
    assert!(broker_lines.len() <= 16, "{} lines", broker_lines.len());
    let held_back: u64 = broker_lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["suppressed"].as_u64())
        .sum();
    assert!(held_back > 0, "the later lines say how many were held back");
}
