//! The NATS JetStream sink end to end: signed webhooks in, JetStream messages out,
//! on the machine's JetStream server (127.0.0.1:4222), each test with its own
//! stream and subjects. The sink's own faults (a server restart, what NATS refuses)
//! are tested in `src/sink/nats/tests.rs`; the restart under load in the `nats`
//! chaos profile.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use common::*;
use futures_util::StreamExt;
use hyper::StatusCode;

const SERVER: &str = "nats://127.0.0.1:4222";

fn unique(prefix: &str) -> String {
    format!("{prefix}{}{}", std::process::id(), fastrand::u32(..))
}

fn nats_sink(name: &str, stream: &str, subjects: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"nats\"\nservers = [\"{SERVER}\"]\nstream = \"{stream}\"\n\
         create_stream = true\nsubjects = [\"{subjects}.>\"]\n"
    )
}

/// Deletes the stream when dropped, also when the test fails.
struct Stream(String);

impl Drop for Stream {
    fn drop(&mut self) {
        let stream = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    let client = async_nats::connect(SERVER).await.ok()?;
                    jetstream::new(client).delete_stream(&stream).await.ok()
                })
                .await;
            })
        })
        .join();
    }
}

/// Reads the stream until it holds `ids` (or 30 s): (id -> times seen, a message's headers).
async fn read_stream(
    stream: &str,
    ids: &HashSet<String>,
) -> (HashMap<String, usize>, Option<async_nats::HeaderMap>) {
    let client = async_nats::connect(SERVER)
        .await
        .unwrap_or_else(|e| panic!("no NATS server at {SERVER}: {e}"));
    let js = jetstream::new(client);
    let c = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut headers = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !ids.iter().all(|id| seen.contains_key(id)) {
        let mut batch = c
            .batch()
            .max_messages(500)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = batch.next().await {
            let h = m.headers.clone().unwrap_or_default();
            let id = h.get("hookrelay-id").map_or("", |v| v.as_str()).to_string();
            *seen.entry(id).or_default() += 1;
            headers.get_or_insert(h);
        }
    }
    (seen, headers)
}

/// Every acked event reaches JetStream under the topic as subject, with the
/// event id as `Nats-Msg-Id`; a fan-out to NATS and a file archive fills both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reach_jetstream_and_fan_out_to_a_file_archive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stream = unique("HRE2E");
    let _cleanup = Stream(stream.clone());
    let subjects = stream.to_lowercase();
    let sinks = format!(
        "{}[sinks.archive]\ntype = \"file\"\ndir = \"{}\"\n",
        nats_sink("bus", &stream, &subjects),
        d.join("archive").display()
    );
    let source = format!("topic = \"{subjects}.{{event}}\"\nsinks = [\"bus\", \"archive\"]\n");
    let relay = Relay::start_with(d, &config_with_sink(d, "", "", &sinks, &source));
    let mut c = relay.connect().await;
    let mut acked = HashSet::new();
    for i in 0..300 {
        let r = c
            .post_signed(&event_body(EVENT_TYPES[i % 4], &format!("n-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}\n{}", r.json(), relay.logs());
        acked.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    let (seen, headers) = read_stream(&stream, &acked).await;
    let missing: Vec<_> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} never reached JetStream, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(3)],
        relay.logs()
    );
    assert!(seen.values().all(|n| *n == 1), "JetStream kept a duplicate");
    let h = headers.unwrap();
    assert_eq!(
        h.get("Nats-Msg-Id").map(|v| v.as_str()),
        h.get("hookrelay-id").map(|v| v.as_str())
    );
    assert_eq!(
        h.get("hookrelay-source").map(|v| v.as_str()),
        Some("quickassist")
    );
    let archive: HashSet<String> = read_events(&d.join("archive"))
        .iter()
        .map(event_id)
        .collect();
    assert_eq!(archive, acked);
    relay.wait_drained(Duration::from_secs(10)).await.unwrap();
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_sink_published_total{sink=\"bus\"}"),
        300.0
    );
    assert_eq!(
        metric(&m, "hookrelay_sink_published_total{sink=\"archive\"}"),
        300.0
    );
}

/// `check --connect` creates the stream when `create_stream = true`, and names it
/// when it is missing and may not be created.
#[test]
fn check_connect_finds_or_creates_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stream = unique("HRCHK");
    let _cleanup = Stream(stream.clone());
    let subjects = stream.to_lowercase();
    let run = |sink: &str| check_config(d, &config_with_sink(d, "", "", sink, ""), &["--connect"]);
    let missing = nats_sink("bus", &stream, &subjects)
        .replace("create_stream = true", "create_stream = false");
    let (ok, out) = run(&missing);
    assert!(
        !ok && out.contains(&stream) && out.contains("create_stream"),
        "{out}"
    );
    let (ok, out) = run(&nats_sink("bus", &stream, &subjects));
    assert!(
        ok && out.contains("sinks.bus:") && out.contains(&stream),
        "{out}"
    );
    // Now it exists: found without creating.
    let (ok, out) = run(&missing);
    assert!(ok, "{out}");
}
