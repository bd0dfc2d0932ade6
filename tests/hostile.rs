//! Hostile input never breaks the promise (issue 19): each numbered case, tried as
//! a hostile sender would, over real TCP against the real binary (and the real
//! RabbitMQ or tansu where a sink is involved). Every one of these failed before
//! its fix; docs/reliability.md lists them with what they guard.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SIG: &str = "x-webhook-signature";
const POST: &str = "/webhooks/quickassist";
/// How long the listener backs off after a failed accept (src/listener.rs).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Posts `body` signed, with `headers` besides the signature.
async fn post_with(c: &mut Client, body: &str, headers: &[(&str, &str)]) -> Reply {
    let sig = sign(body.as_bytes());
    let mut all = vec![(SIG, sig.as_str())];
    all.extend_from_slice(headers);
    c.request("POST", POST, &all, body.as_bytes()).await
}

/// Starts the default configuration with `env` (fault seams) and an open-files
/// limit; returns the config's path with the relay.
fn start_default(
    dir: &std::path::Path,
    env: &[(&str, &str)],
    nofile: Option<u64>,
) -> (std::path::PathBuf, Relay) {
    let config_path = dir.join("hookrelay.toml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&config_path, base_config(dir, "", "", "")).unwrap();
    let relay = Relay::spawn_limited(dir, &config_path, env, nofile);
    (config_path, relay)
}

fn segments(spool: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// The first 64 KiB of a segment file (where a fresh spool's first records are),
/// without reading the zero-filled rest.
fn segment_head(seg: &std::path::Path) -> Vec<u8> {
    let mut head = vec![0u8; 64 << 10];
    let n = std::fs::File::open(seg)
        .and_then(|f| std::os::unix::fs::FileExt::read_at(&f, &mut head, 0))
        .unwrap_or(0);
    head.truncate(n);
    head
}

/// Offsets of the records in a segment file (`len u32 | crc u32 | payload`).
fn frames(bytes: &[u8]) -> Vec<usize> {
    let (mut at, mut out) = (0, Vec::new());
    while at + 8 <= bytes.len() && bytes[at..at + 4] != [0; 4] {
        out.push(at);
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    out
}

/// Case 1: A field the record cannot frame was answered 200 and then cut, with every
/// acked record after it, by recovery. Now it is refused at the edge (400), and
/// after a SIGKILL every acked event, long fields and all, is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case01_unframable_fields_are_refused_and_a_kill_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let mut c = relay.connect().await;
    let huge = "x".repeat(70 * 1024);
    let r = post_with(
        &mut c,
        &event_body("message.read", "huge-ct"),
        &[("content-type", &huge)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("content-type"));
    let longest = "y".repeat(255);
    let mut acked = HashSet::new();
    for i in 0..40 {
        let ct = if i % 2 == 0 {
            longest.as_str()
        } else {
            "application/json"
        };
        let r = post_with(
            &mut c,
            &event_body("message.read", &format!("kept-{i}")),
            &[("content-type", ct)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        acked.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    relay.kill();
    relay.restart();
    let events = relay.wait_for_ids(&acked, Duration::from_secs(30));
    assert!(
        events
            .iter()
            .any(|e| e["headers"]["content-type"].as_str() == Some(longest.as_str()))
    );
    assert!(!relay.logs().contains("truncating"), "{}", relay.logs());
}

/// Case 2: A record failing its CRC in front of acknowledged ones made recovery cut
/// them all as a torn tail. Now its bytes go to quarantine (never deleted),
/// counted and logged at error, and every record after it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case02_damage_is_quarantined_and_what_follows_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    // A broker that is not there: everything acked stays in the sink's backlog. The
    // sink is named `file` so that the restart below, which gives that name a file
    // sink that delivers, finds its backlog (a removed sink's would be dead-lettered).
    let down = "[sinks.file]\ntype = \"rabbitmq\"\nuri = \"amqp://guest:guest@127.0.0.1:1/%2f\"\nconnect_timeout_ms = 200\n";
    let mut relay = Relay::start_with(dir.path(), &config_with_sink(dir.path(), "", "", down, ""));
    let mut c = relay.connect().await;
    let mut acked = Vec::new();
    for i in 0..30 {
        let r = c
            .post_signed(&event_body("message.read", &format!("d-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        acked.push(r.json()["id"].as_str().unwrap().to_string());
    }
    relay.kill();
    // Bit rot in the eleventh record's body.
    let seg = segments(&dir.path().join("spool").join("file"))
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = frames(&bytes)[10];
    bytes[at + 60] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();

    // Back with a sink that delivers.
    let config = base_config(dir.path(), "", "", "");
    std::fs::write(&relay.config, config).unwrap();
    relay.restart();
    let want: HashSet<String> = acked
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 10)
        .map(|(_, id)| id.clone())
        .collect();
    relay.wait_for_ids(&want, Duration::from_secs(30));
    let quarantine: Vec<_> = std::fs::read_dir(dir.path().join("spool/file/quarantine"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(quarantine.len(), 1);
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_spool_corrupt_records_total{sink=\"file\"}"),
        1.0
    );
    assert!(metric(&m, "hookrelay_spool_quarantined_bytes_total{sink=\"file\"}") > 0.0);
    assert_eq!(
        metric(&m, "hookrelay_spool_truncated_bytes_total{sink=\"file\"}"),
        0.0
    );
    assert!(relay.logs().contains("quarantine"), "{}", relay.logs());
}

/// Case 3: A 300-byte content type or an event id over 255 bytes made lapin panic: the
/// forwarder died, webhooks kept getting 200, and every restart replayed the same
/// record into the same panic. Now both are refused at the edge, and delivery to
/// the real RabbitMQ goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case03_amqp_short_strings_are_bounded_and_delivery_goes_on() {
    use common::amqp::{self, bind, cleanup, drain, unique};
    let ex = unique("hr-hostile");
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_sink(dir.path(), "", "", &amqp::sink_section(&ex, ""), "");
    let relay = Relay::start_with(dir.path(), &config);
    let (conn, ch) = amqp::channel().await;
    let q = format!("{ex}.all");
    bind(&ch, &q, &ex, "#", false).await;
    let mut c = relay.connect().await;
    let ct300 = format!("application/json; x={}", "a".repeat(280));
    let r = post_with(
        &mut c,
        &event_body("message.read", "ct"),
        &[("content-type", &ct300)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // `{event}:{id}`: 100 + 1 + 160 bytes.
    let long_id = event_body(&"t".repeat(100), &"i".repeat(160));
    let r = c.post_signed(&long_id).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("255"));
    for i in 0..5 {
        let r = c
            .post_signed(&event_body("message.read", &format!("ok-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let got = drain(&ch, &q, 5, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 5, "{}", relay.logs());
    let mut admin = Client::connect(relay.admin).await;
    assert_eq!(admin.get("/readyz").await.status, StatusCode::OK);
    let _ = conn.close(200, "done".into()).await;
    cleanup(&ex, &[&q]).await;
}

/// Case 4a: A sink that panics on one event: that event is dead-lettered with the panic
/// as its reason, counted, and every other event is delivered; a restart does not
/// replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case04_a_sink_panic_dead_letters_that_event_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut relay) = start_default(
        dir.path(),
        &[(hookrelay::faults::SINK_PANIC_ENV, "poison")],
        None,
    );
    let mut c = relay.connect().await;
    let mut ids = HashSet::new();
    for id in ["before", "poison", "after"] {
        let r = c.post_signed(&event_body("message.read", id)).await;
        assert_eq!(r.status, StatusCode::OK);
        if id != "poison" {
            ids.insert(format!("message.read:{id}"));
        }
    }
    relay.wait_for_ids(&ids, Duration::from_secs(20));
    let dead = dir.path().join("dead-letter.jsonl");
    let text = eventually_blocking(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&dead).unwrap_or_default();
        text.ends_with('\n').then_some(text)
    })
    .unwrap_or_else(|| panic!("nothing dead-lettered\n{}", relay.logs()));
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["headers"]["hookrelay-id"], "message.read:poison");
    assert!(
        line["reason"].as_str().unwrap().contains("panicked"),
        "{line}"
    );
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_sink_panics_total{sink=\"file\"}"),
        1.0
    );
    let r = c.post_signed(&event_body("message.read", "later")).await;
    assert_eq!(r.status, StatusCode::OK);
    relay.wait_for_ids(
        &["message.read:later".to_string()].into(),
        Duration::from_secs(10),
    );
    // Dead-lettered is settled: not published again after a restart. Once the
    // restarted relay has forwarded all its spool holds, any replay has happened.
    relay.restart();
    relay
        .wait_drained(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the restarted relay never drained\n{}", relay.logs()));
    let lines = std::fs::read_to_string(&dead).unwrap().lines().count();
    assert_eq!(lines, 1);
}

/// Case 4b: The forwarder ending while the process runs: /readyz fails and the process
/// exits non-zero (so Kubernetes restarts it); what was acked is delivered after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case04_a_dead_forwarder_stops_the_process_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (config_path, mut relay) = start_default(
        dir.path(),
        &[(hookrelay::faults::FORWARDER_PANIC_ENV, "1")],
        None,
    );
    let mut c = relay.connect().await;
    let r = c.post_signed(&event_body("message.read", "first")).await;
    assert_eq!(r.status, StatusCode::OK);
    let status = tokio::task::block_in_place(|| relay.wait_exit(Duration::from_secs(15)))
        .unwrap_or_else(|| panic!("still running\n{}", relay.logs()));
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        relay.logs().contains("the forwarder stopped"),
        "{}",
        relay.logs()
    );
    // Without the fault, what was acked is delivered.
    drop(relay);
    let relay = Relay::spawn(dir.path(), &config_path);
    relay.wait_for_ids(
        &["message.read:first".to_string()].into(),
        Duration::from_secs(20),
    );
}

/// Case 5: A client that disconnects while its event is being made durable left the
/// reservation in place for the whole window: every retry got 503. Now the
/// append goes on, its outcome settles the reservation, and the retry is answered
/// `duplicate` (the event is stored once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case05_a_client_gone_mid_append_does_not_hold_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let (_, relay) = start_default(
        dir.path(),
        &[(hookrelay::spool::FSYNC_DELAY_ENV, "1500")],
        None,
    );
    let body = event_body("message.read", "gone");
    let head = format!(
        "POST {POST} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{SIG}: {}\r\n\r\n{body}",
        body.len(),
        sign(body.as_bytes())
    );
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // Gone once the append is under way: its record is written to the segment
    // (the fdatasync after it is what the fault slows down).
    let spool = dir.path().join("spool").join("file");
    eventually_blocking(Duration::from_secs(10), || {
        segments(&spool)
            .iter()
            .any(|seg| segment_head(seg).windows(6).any(|w| w == b"\"gone\""))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the append never started\n{}", relay.logs()));
    drop(s);
    // While the append is still in flight: not yet a duplicate, not accepted twice.
    let mut c = relay.connect().await;
    assert_eq!(
        c.post_signed(&body).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Retried as a provider would: 503 while in flight, then settled.
    let r = eventually(Duration::from_secs(15), || async {
        let (status, json) = relay.post(&body).await;
        (status != StatusCode::SERVICE_UNAVAILABLE).then_some((status, json))
    })
    .await
    .unwrap_or_else(|| panic!("still 503 long after the append\n{}", relay.logs()));
    assert_eq!(r.0, StatusCode::OK);
    assert_eq!(r.1["status"], "duplicate");
    let events = relay.wait_for_ids(
        &["message.read:gone".to_string()].into(),
        Duration::from_secs(10),
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| event_id(e) == "message.read:gone")
            .count(),
        1
    );
}

/// Case 6: Numeric ids above 2^64 that one float rounds together were one id: the second
/// real event was answered `duplicate` and dropped. Now the id is the number's text.
#[tokio::test]
async fn case06_large_numeric_ids_are_distinct_events() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let mut c = relay.connect().await;
    let mut ids = HashSet::new();
    for n in ["123456789012345678901234567", "123456789012345678901234568"] {
        let body = format!(r#"{{"event":"message.read","data":{{"messageId":{n}}}}}"#);
        let r = c.post_signed(&body).await;
        assert_eq!(r.json()["status"], "accepted", "{n}");
        assert_eq!(r.json()["id"], format!("message.read:{n}"));
        ids.insert(format!("message.read:{n}"));
    }
    relay.wait_for_ids(&ids, Duration::from_secs(10));
}

/// Whether the server closed `s` within `within` (read end or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        // Anything read first (an HTTP/2 SETTINGS frame, say) is skipped.
        while let Ok(n) = s.read(&mut buf).await
            && n > 0
        {}
    })
    .await
    .is_ok()
}

/// Case 7: Connections that send nothing, or only the HTTP/2 preface, were never closed:
/// four of them locked out a relay with max_connections = 4, and 64 on the admin
/// port made /healthz time out. Now they are closed at header_read_timeout_ms, the
/// idlest is closed to make room, and the admin listener has its own slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case07_silent_connections_do_not_hold_slots() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(
        dir.path(),
        "max_connections = 4\nheader_read_timeout_ms = 1000",
        "",
        "",
    );
    let relay = Relay::start_with(dir.path(), &config);
    let mut silent = Vec::new();
    for i in 0..8 {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
        }
        silent.push(s);
    }
    // A signed webhook still gets through, at once.
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        relay
            .connect()
            .await
            .post_signed(&event_body("message.read", "through"))
            .await
    })
    .await
    .expect("locked out by silent connections");
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // Every silent one is closed by its deadline (or to make room).
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "a silent connection stayed open"
        );
    }
    // 80 silent sockets on the admin port: /healthz answers regardless.
    let mut probes = Vec::new();
    for _ in 0..80 {
        probes.push(TcpStream::connect(relay.admin).await.unwrap());
    }
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(2), async {
        Client::connect(relay.admin).await.get("/healthz").await
    })
    .await
    .expect("/healthz did not answer while the admin slots were probed");
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let m = relay.metrics().await;
    let conn = |reason: &str| {
        metric(
            &m,
            &format!("hookrelay_http_connection_errors_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(conn("evicted") + conn("header_timeout") >= 8.0, "{m}");
}

/// Case 8: Unsigned requests spent a source's rate limit: after 220 of them, a correctly
/// signed event got 429. Now only verified requests take the source's tokens;
/// failures are charged to the sender's address, and past its budget answered 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case08_unsigned_requests_do_not_spend_the_sources_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(
        dir.path(),
        "",
        "",
        "rate_limit = { per_second = 50.0, burst = 200 }",
    );
    let relay = Relay::start_with(dir.path(), &config);
    let mut c = relay.connect().await;
    let body = event_body("message.read", "forged");
    let (mut unauthorized, mut throttled) = (0, 0);
    for _ in 0..220 {
        let r = c
            .request("POST", POST, &[(SIG, &"0".repeat(64))], body.as_bytes())
            .await;
        match r.status {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(
                    r.json()["error"]
                        .as_str()
                        .unwrap()
                        .contains("failed signatures")
                );
                throttled += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert!(
        unauthorized >= 100 && throttled > 0,
        "{unauthorized} / {throttled}"
    );
    let r = c.post_signed(&event_body("message.read", "genuine")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_unverified_throttled_total"),
        throttled as f64
    );
}

/// Case 9a: Three hundred event types through the file sink with few file descriptors:
/// it held one open file per topic, and at EMFILE both listeners stopped answering
/// and checkpoints failed. Now open files are bounded (LRU) and max_connections is
/// fitted to the limit: everything is delivered and both listeners answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case09_many_event_types_with_few_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, relay) = start_default(dir.path(), &[], Some(256));
    let mut c = relay.connect().await;
    let mut ids = HashSet::new();
    for i in 0..300 {
        let r = c.post_signed(&event_body(&format!("kind.{i}"), "m")).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        ids.insert(format!("kind.{i}:m"));
    }
    relay.wait_for_ids(&ids, Duration::from_secs(60));
    let mut admin = Client::connect(relay.admin).await;
    assert_eq!(admin.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(admin.get("/readyz").await.status, StatusCode::OK);
    let open = std::fs::read_dir(format!("/proc/{}/fd", relay.child.id()))
        .unwrap()
        .count();
    assert!(open < 200, "{open} descriptors open");
    // The cursor still moves: the spool forgets what was delivered.
    if relay.wait_drained(Duration::from_secs(5)).await.is_none() {
        panic!("the spool never drained\n{}", relay.metrics().await);
    }
    assert!(
        relay.logs().contains("open-files limit"),
        "{}",
        relay.logs()
    );
    assert!(
        !relay.logs().contains("Too many open files"),
        "{}",
        relay.logs()
    );
}

/// Case 9b: An accept that hits EMFILE backs off, is counted and logged once per interval
/// (it was logged 958 times), and the listener recovers once descriptors free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case09_an_accept_at_emfile_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let pid = relay.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    // The soft limit only: lowering the hard one could not be undone here.
    let limit = open + 6;
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("prlimit (util-linux)")
        .success();
    assert!(ok, "prlimit failed");
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Ok(s) = TcpStream::connect(relay.addr).await {
            held.push(s);
        }
    }
    // The first failed accept is logged at once (/metrics cannot be read now: the
    // admin listener is out of descriptors too).
    eventually_blocking(Duration::from_secs(10), || {
        relay.logs().contains("accept failed").then_some(())
    })
    .unwrap_or_else(|| panic!("no accept ever failed\n{}", relay.logs()));
    // Held at EMFILE on purpose for many of the listener's backoff rounds
    // (ACCEPT_BACKOFF, 50 ms in src/listener.rs): each fails again, and only the
    // first is logged (once per ACCEPT_LOG_EVERY, 10 s).
    tokio::time::sleep(30 * ACCEPT_BACKOFF).await;
    drop(held);
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=4096:"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let m = relay.metrics().await;
    assert!(
        metric(
            &m,
            "hookrelay_http_connection_errors_total{reason=\"accept\"}"
        ) > 0.0,
        "{m}"
    );
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        relay
            .connect()
            .await
            .post_signed(&event_body("message.read", "recovered"))
            .await
    })
    .await
    .expect("the listener did not recover");
    assert_eq!(r.status, StatusCode::OK);
    let logged = relay.logs().matches("accept failed").count();
    assert!((1..=2).contains(&logged), "{logged} accept-failure lines");
}

/// Case 9c: With create_topics, every new event type created a Kafka topic. Now at most
/// sinks.kafka.max_topics are created; past it, events go to the dead letters with
/// the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case09_kafka_topic_creation_is_capped() {
    use common::kafka::{Tansu, consume, sink_section};
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &sink_section(
            &broker.brokers,
            "create_topics = true\ntopic_partitions = 1\ntopic_replication = 1\nmax_topics = 2",
        ),
        "",
    );
    let mut c = relay.connect().await;
    for t in ["a.one", "a.two", "a.three", "a.four"] {
        let r = c.post_signed(&event_body(t, "m")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let dead = dir.path().join("dead-letter.jsonl");
    let text = eventually_blocking(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&dead).unwrap_or_default();
        (text.lines().count() >= 2 && text.ends_with('\n')).then_some(text)
    })
    .unwrap_or_else(|| panic!("fewer than 2 events dead-lettered\n{}", relay.logs()));
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["reason"].as_str().unwrap().contains("max_topics"), "{v}");
    }
    let dead_topics: HashSet<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["topic"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let live: Vec<String> = [
        "quickassist.a.one",
        "quickassist.a.two",
        "quickassist.a.three",
        "quickassist.a.four",
    ]
    .iter()
    .filter(|t| !dead_topics.contains(**t))
    .map(|t| t.to_string())
    .collect();
    assert_eq!(live.len(), 2);
    let refs: Vec<&str> = live.iter().map(String::as_str).collect();
    let got = consume(&broker.brokers, &refs, 1, 2, Duration::from_secs(20));
    assert_eq!(got.len(), 2);
}

/// Case 10: With signature_body = "json-stringify", a captured body could be re-sent as
/// whitespace, repeated-key or `12345.0` variants: each verified, each a new event
/// with the sender's bytes. Now what is published is the signed (canonical) form,
/// so every variant is the same event.
#[tokio::test]
async fn case10_json_stringify_variants_are_one_event_with_the_signed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(dir.path(), "", "", "signature_body = \"json-stringify\"");
    let relay = Relay::start_with(dir.path(), &config);
    let canonical = r#"{"event":"message.read","data":{"messageId":12345}}"#;
    let sig = sign(canonical.as_bytes());
    let mut c = relay.connect().await;
    let variants = [
        r#"{ "event": "message.read", "data": { "messageId": 12345 } }"#,
        r#"{"event":"message.read","data":{"messageId":7},"data":{"messageId":12345}}"#,
        r#"{"event":"message.read","data":{"messageId":12345.0}}"#,
    ];
    for (i, v) in variants.iter().enumerate() {
        let r = c.request("POST", POST, &[(SIG, &sig)], v.as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["id"], "message.read:12345");
        assert_eq!(
            r.json()["status"],
            if i == 0 { "accepted" } else { "duplicate" }
        );
    }
    let events = relay.wait_for_ids(
        &["message.read:12345".to_string()].into(),
        Duration::from_secs(10),
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["body"], canonical);
}

/// Case 11: Linear's staleness check was skipped when `webhookTimestamp` was missing, a
/// string, a float or repeated. Now those are 401.
#[tokio::test]
async fn case11_linear_without_a_usable_timestamp_is_refused() {
    use hookrelay::verify::{Method, Verifier};
    let dir = tempfile::tempdir().unwrap();
    let extra = "\n[sources.linear]\nscheme = \"linear\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\n";
    let relay = Relay::start_with(dir.path(), &base_config(dir.path(), "", "", extra));
    let v = Verifier::with_secrets(Method::Linear { tolerance: 60 }, &[SECRET.as_bytes()]).unwrap();
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut c = relay.connect().await;
    let mut send = async |body: String| {
        let headers = v.sign(body.as_bytes(), "/").unwrap();
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        c.request("POST", "/webhooks/linear", &h, body.as_bytes())
            .await
            .status
    };
    for stale in [
        r#"{"type":"Issue","action":"create"}"#.to_string(),
        format!(r#"{{"type":"Issue","webhookTimestamp":"{ms}"}}"#),
        format!(r#"{{"type":"Issue","webhookTimestamp":{ms}.0}}"#),
        format!(r#"{{"type":"Issue","webhookTimestamp":1,"webhookTimestamp":{ms}}}"#),
    ] {
        assert_eq!(
            send(stale.clone()).await,
            StatusCode::UNAUTHORIZED,
            "{stale}"
        );
    }
    let fresh = format!(r#"{{"type":"Issue","webhookTimestamp":{ms}}}"#);
    assert_eq!(send(fresh).await, StatusCode::OK);
}

/// Case 12: Where the signature covers neither an id nor a timestamp (GitHub here),
/// anyone who saw a delivery could send it again under a fresh delivery id and
/// have it published again. Now the same signed body is a duplicate under any id.
/// And a Twilio form re-split at parameter boundaries (same signature) is refused.
#[tokio::test]
async fn case12_a_captured_body_under_a_fresh_id_is_a_duplicate() {
    use hookrelay::verify::{Method, Verifier};
    let dir = tempfile::tempdir().unwrap();
    let extra = "\n[sources.github]\nscheme = \"github\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\n\
                 \n[sources.twilio]\nscheme = \"twilio\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\npublic_url = \"https://hooks.example.com\"\n";
    let relay = Relay::start_with(dir.path(), &base_config(dir.path(), "", "", extra));
    let gh = Verifier::with_secrets(Method::HubSignature, &[SECRET.as_bytes()]).unwrap();
    let mut c = relay.connect().await;
    let body = br#"{"action":"opened","issue":{"number":7}}"#;
    let sig = gh.sign(body, "/").unwrap().remove(0).1;
    let mut deliver = async |delivery: &str, body: &[u8], sig: &str| {
        c.request(
            "POST",
            "/webhooks/github",
            &[
                ("x-hub-signature-256", sig),
                ("x-github-event", "issues"),
                ("x-github-delivery", delivery),
            ],
            body,
        )
        .await
        .json()
    };
    assert_eq!(deliver("d-1", body, &sig).await["status"], "accepted");
    assert_eq!(deliver("d-1", body, &sig).await["status"], "duplicate");
    assert_eq!(
        deliver("d-2-fresh", body, &sig).await["status"],
        "duplicate"
    );
    let other = br#"{"action":"closed","issue":{"number":7}}"#;
    let other_sig = gh.sign(other, "/").unwrap().remove(0).1;
    assert_eq!(
        deliver("d-3", other, &other_sig).await["status"],
        "accepted"
    );

    let tw = Verifier::with_secrets(
        Method::Twilio {
            public_url: "https://hooks.example.com".into(),
        },
        &[SECRET.as_bytes()],
    )
    .unwrap();
    let sid = "SM0123456789abcdef0123456789abcdef";
    let form = format!("MessageSid={sid}&MessageStatus=sent&To=%2B15550001");
    let resplit = format!("MessageSid={sid}&MessageStatus=se&ntTo=%2B15550001");
    let sig = tw
        .sign(form.as_bytes(), "/webhooks/twilio")
        .unwrap()
        .remove(0)
        .1;
    assert_eq!(
        sig,
        tw.sign(resplit.as_bytes(), "/webhooks/twilio")
            .unwrap()
            .remove(0)
            .1,
        "the two bodies carry the same signature"
    );
    let mut post = async |b: &str| {
        c.request(
            "POST",
            "/webhooks/twilio",
            &[
                ("x-twilio-signature", &sig),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            b.as_bytes(),
        )
        .await
        .status
    };
    assert_eq!(post(&form).await, StatusCode::OK);
    assert_eq!(post(&resplit).await, StatusCode::BAD_REQUEST);
}

/// Case 13: acks and enable.idempotence set through librdkafka_from_env or
/// librdkafka_from_file went around the durability checks. Now the values are
/// checked once read: `check` and `run` refuse them, naming the key.
#[test]
fn case13_kafka_durability_cannot_be_weakened_from_env_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let acks = dir.path().join("acks");
    std::fs::write(&acks, "0\n").unwrap();
    for (table, value) in [
        ("librdkafka_from_env", "\"HOOKRELAY_TEST_ACKS\"".to_string()),
        (
            "librdkafka_from_file",
            format!("{:?}", acks.display().to_string()),
        ),
    ] {
        let sink = format!(
            "[sinks.kafka]\nbrokers = \"127.0.0.1:1\"\n[sinks.kafka.{table}]\n\"acks\" = {value}\n"
        );
        let path = dir.path().join("k.toml");
        std::fs::write(&path, config_with_sink(dir.path(), "", "", &sink, "")).unwrap();
        for cmd in ["check", "run"] {
            let o = std::process::Command::new(binary())
                .args([cmd, "--config", path.to_str().unwrap()])
                .env("HOOKRELAY_TEST_SECRET", SECRET)
                .env("HOOKRELAY_TEST_ACKS", "1")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{cmd} {table}: accepted");
            assert!(
                err.contains(&format!("sinks.kafka.{table}.\"acks\"")),
                "{cmd}: {err}"
            );
        }
    }
}

/// Case 14: An event type whose mapping left empty segments was accepted:
/// `../../etc/passwd` became topic `quickassist.......etc.passwd`. Now leading,
/// trailing or consecutive dots after mapping are a 400.
#[tokio::test]
async fn case14_event_types_with_empty_segments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let mut c = relay.connect().await;
    for bad in ["../../etc/passwd", "a..b", ".hidden", "trailing.", "a//b"] {
        let r = c.post_signed(&event_body(bad, "m")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = c.post_signed(&event_body("/deploy", "m")).await;
    assert_eq!(r.status, StatusCode::OK);
    relay.wait_for_ids(&["deploy:m".to_string()].into(), Duration::from_secs(10));
    for entry in std::fs::read_dir(dir.path().join("events")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".."), "{name}");
    }
}
