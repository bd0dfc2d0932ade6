//! Operating a running hookrelay (issue 22), black-box against the real RabbitMQ
//! and librdkafka's mock cluster: the admin API and its token, pause and resume,
//! dead letters listed, shown and redriven through the CLI, draining on SIGTERM
//! and with `hookrelay drain`, `hookrelay spool inspect`.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::amqp::{self, bind, cleanup, drain, unique};
use common::*;
use hyper::StatusCode;

const TOKEN: &str = "operate-test-token-0123456789";
const TOKEN_ENV: &str = "HOOKRELAY_TEST_ADMIN_TOKEN";

/// `[admin]` with the test token, appended after the source.
fn admin_section() -> String {
    format!("\n[admin]\ntoken_env = \"{TOKEN_ENV}\"\n")
}

fn start(data: &Path, config: &str) -> Relay {
    std::fs::create_dir_all(data).unwrap();
    let path = data.join("hookrelay.toml");
    std::fs::write(&path, config).unwrap();
    Relay::spawn_env(data, &path, &[(TOKEN_ENV, TOKEN)])
}

async fn api(relay: &Relay, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let mut c = Client::connect(relay.admin).await;
    c.request(method, path, &headers, body.as_bytes()).await
}

/// `hookrelay admin --json ARGS` against `relay`, with the token in the environment.
fn admin_cli(relay: &Relay, args: &[&str]) -> Output {
    Command::new(binary())
        .args(["admin", "--url", &format!("http://{}", relay.admin)])
        .args(args)
        .env(TOKEN_ENV, TOKEN)
        .env("HOOKRELAY_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run hookrelay admin")
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn backlog_of<'a>(backlog: &'a serde_json::Value, sink: &str) -> &'a serde_json::Value {
    backlog["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == sink)
        .unwrap_or_else(|| panic!("no sink {sink} in {backlog}"))
}

/// `hookrelay spool inspect --json --dir D`.
fn inspect(dir: &Path) -> Output {
    Command::new(binary())
        .args(["spool", "inspect", "--json", "--dir"])
        .arg(dir)
        .output()
        .expect("run hookrelay spool inspect")
}

/// Records waiting in every spool `spool inspect` reports.
fn pending_in(report: &serde_json::Value) -> u64 {
    let spools = report["spools"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![report.clone()]);
    spools
        .iter()
        .map(|s| s["pending"].as_u64().unwrap_or(0))
        .sum()
}

/// Binds `queue` to every topic of `exchange`, on a connection of its own.
async fn bind_fresh(queue: &str, exchange: &str) {
    let (_conn, ch) = amqp::channel().await;
    bind(&ch, queue, exchange, "#", false).await;
}

/// Takes up to `want` messages off `queue`, on a connection of its own: a channel
/// left idle while a test waits on the relay was once found in an error state on
/// a loaded CI host.
async fn drain_fresh(queue: &str, want: usize, within: Duration) -> Vec<amqp::Got> {
    let (_conn, ch) = amqp::channel().await;
    drain(&ch, queue, want, within).await
}

async fn send(relay: &Relay, n: usize, event: &str, tag: &str) -> HashSet<String> {
    let mut c = relay.connect().await;
    let mut ids = HashSet::new();
    for i in 0..n {
        let r = c
            .post_signed(&event_body(event, &format!("{tag}-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        ids.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    ids
}

fn ids_of(got: &[amqp::Got]) -> HashSet<String> {
    got.iter().map(|g| g.header("hookrelay-id")).collect()
}

/// An exchange of the test's own on the real RabbitMQ and a data directory for
/// the relay.
struct Rabbit {
    exchange: String,
    queue: String,
    dir: tempfile::TempDir,
}

impl Rabbit {
    async fn new(prefix: &str) -> Rabbit {
        let exchange = unique(prefix);
        Rabbit {
            queue: format!("{exchange}-q"),
            exchange,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    /// The config of a relay publishing to the exchange, with the admin API on.
    fn config(&self, spool_extra: &str, sink_extra: &str, extra: &str) -> String {
        config_with_sink(
            self.data(),
            "",
            spool_extra,
            &amqp::sink_section(&self.exchange, sink_extra),
            &format!("{}{extra}", admin_section()),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_without_a_token_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let off = Relay::start(&dir.path().join("off"));
    let r = api(&off, "GET", "/admin/backlog", Some(TOKEN), "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let out = admin_cli(&off, &["backlog"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin API is off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data = dir.path().join("on");
    let on = start(&data, &base_config(&data, "", "", &admin_section()));
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let r = api(&on, "GET", "/admin/backlog", token, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        let r = api(&on, "POST", "/admin/sinks/file/pause", token, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Nothing changed: the sink is not paused, and events flow.
    let r = api(&on, "GET", "/admin/backlog", Some(TOKEN), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(backlog_of(&r.json(), "file")["paused"], false);
    assert!(!data.join("spool/file/PAUSED").exists());
    let ids = send(&on, 3, "message.read", "tok").await;
    on.wait_for_ids(&ids, Duration::from_secs(10));
    // The probes and metrics stay open.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            api(&on, "GET", path, None, "").await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let m = on.metrics().await;
    assert_eq!(
        metric(
            &m,
            "hookrelay_admin_requests_total{action=\"unauthorized\",status=\"401\"}"
        ),
        6.0,
        "{m}"
    );
    // Unknown calls and bad bodies get clear statuses.
    let big = "x".repeat(100 * 1024);
    for (method, path, body, want) in [
        ("GET", "/admin/nope", "", StatusCode::NOT_FOUND),
        (
            "DELETE",
            "/admin/backlog",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            "/admin/sinks/nosuch/pause",
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/admin/dead-letters/redrive",
            big.as_str(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/admin/dead-letters/redrive",
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/admin/dead-letters?limit=x",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/admin/dead-letters/not-an-id",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/admin/dead-letters/redrive",
            "{}",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/admin/replay",
            r#"{"since":"yesterday"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/admin/replay",
            r#"{"since":1,"bogus":1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/admin/replay",
            r#"{"since":1}"#,
            StatusCode::CONFLICT,
        ),
        ("GET", "/admin/replay/x", "", StatusCode::BAD_REQUEST),
    ] {
        let r = api(&on, method, path, Some(TOKEN), body).await;
        assert_eq!(r.status, want, "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sink_keeps_accepting_into_its_backlog_and_resume_delivers_it_all() {
    let r = Rabbit::new("operate-pause").await;
    let (exchange, queue, data) = (&r.exchange, &r.queue, r.data());
    let relay = start(data, &r.config("", "", ""));
    bind_fresh(queue, exchange).await;

    let paused = ok_json(&admin_cli(&relay, &["--json", "pause", "rabbitmq"]));
    assert_eq!(paused["paused"], true);
    let ids = send(&relay, 1000, "message.read", "pause").await;
    let backlog = eventually(Duration::from_secs(5), || async {
        let b = ok_json(&admin_cli(&relay, &["--json", "backlog"]));
        (backlog_of(&b, "rabbitmq")["events"] == 1000).then_some(b)
    })
    .await
    .expect("backlog 1000");
    let sink = backlog_of(&backlog, "rabbitmq");
    assert_eq!(sink["state"], "paused");
    assert!(sink["oldest_age_secs"].as_f64().is_some(), "{sink}");
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "hookrelay_sink_state{sink=\"rabbitmq\",state=\"paused\"}"
        ),
        1.0
    );
    // Nothing published while paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        drain_fresh(queue, 1, Duration::from_millis(200))
            .await
            .is_empty()
    );
    // The pause is on disk: a restart stays paused.
    assert!(data.join("spool/rabbitmq/PAUSED").exists());

    let resumed = ok_json(&admin_cli(&relay, &["--json", "resume", "rabbitmq"]));
    assert_eq!(resumed["paused"], false);
    let got = drain_fresh(queue, 1000, Duration::from_secs(60)).await;
    assert_eq!(ids_of(&got), ids, "{}", relay.logs());
    relay
        .wait_drained(Duration::from_secs(10))
        .await
        .expect("backlog empty");
    cleanup(exchange, &[queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_rabbitmq_events_are_dead_lettered_listed_and_redriven_once_routable() {
    let r = Rabbit::new("operate-dl").await;
    let (exchange, queue, data) = (&r.exchange, &r.queue, r.data());
    let relay = start(data, &r.config("", "unroutable_queue = false", ""));
    // No queue is bound yet: every event comes back unroutable, for good.
    let ids = send(&relay, 10, "message.failed", "dl").await;
    let listed = eventually(Duration::from_secs(20), || async {
        let l = ok_json(&admin_cli(&relay, &["--json", "dead-letters", "list"]));
        (l["dead_letters"].as_array().unwrap().len() == 10).then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("10 dead letters; logs:\n{}", relay.logs()));
    let entries = listed["dead_letters"].as_array().unwrap();
    let listed_ids: HashSet<String> = entries
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed_ids, ids);
    for e in entries {
        assert_eq!(e["sink"], "rabbitmq");
        assert_eq!(e["source"], "quickassist");
        assert_eq!(e["event_type"], "message.failed");
        assert!(e["reason"].as_str().unwrap().contains("unroutable"), "{e}");
    }
    // Filters and paging.
    let none = ok_json(&admin_cli(
        &relay,
        &["--json", "dead-letters", "list", "--event", "message.read"],
    ));
    assert!(none["dead_letters"].as_array().unwrap().is_empty());
    let page = ok_json(&admin_cli(
        &relay,
        &["--json", "dead-letters", "list", "--limit", "4"],
    ));
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 4);
    let next = page["next"].as_str().expect("a next page").to_string();
    let rest = ok_json(&admin_cli(
        &relay,
        &[
            "--json",
            "dead-letters",
            "list",
            "--after",
            &next,
            "--limit",
            "100",
        ],
    ));
    assert_eq!(rest["dead_letters"].as_array().unwrap().len(), 6);
    // Show: the raw body, byte for byte.
    let first = entries[0]["id"].as_str().unwrap();
    let out = admin_cli(&relay, &["dead-letters", "show", first, "--body-only"]);
    assert!(out.status.success());
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["event"], "message.failed");
    let shown = ok_json(&admin_cli(
        &relay,
        &["--json", "dead-letters", "show", first],
    ));
    assert_eq!(shown["headers"]["hookrelay-id"], entries[0]["event_id"]);

    // Redriven before the cause is fixed: refused again, and said so.
    let early = ok_json(&admin_cli(
        &relay,
        &[
            "--json",
            "dead-letters",
            "redrive",
            "--id",
            first,
            "--wait",
            "20",
        ],
    ));
    assert_eq!(early["redriven"], 1, "{early}");
    assert_eq!(early["confirmed"], 0, "{early}");
    assert_eq!(early["dead_lettered_again"], 1, "{early}");
    let relisted = ok_json(&admin_cli(&relay, &["--json", "dead-letters", "list"]));
    let entries: Vec<serde_json::Value> = relisted["dead_letters"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 10);
    let first = entries[0]["id"].as_str().unwrap();
    // Fix the cause, then redrive one (named twice: sent once), then the rest.
    bind_fresh(queue, exchange).await;
    let one = ok_json(&admin_cli(
        &relay,
        &[
            "--json",
            "dead-letters",
            "redrive",
            "--id",
            first,
            "--id",
            first,
        ],
    ));
    assert_eq!(one["redriven"], 1, "{one}");
    let r = ok_json(&admin_cli(
        &relay,
        &["--json", "dead-letters", "redrive", "--all", "--wait", "30"],
    ));
    assert_eq!(r["redriven"], 9, "{r}");
    assert_eq!(r["confirmed"], 9, "{r}");
    let got = drain_fresh(queue, 10, Duration::from_secs(30)).await;
    assert_eq!(ids_of(&got), ids);
    let empty = ok_json(&admin_cli(&relay, &["--json", "dead-letters", "list"]));
    assert!(
        empty["dead_letters"].as_array().unwrap().is_empty(),
        "{empty}"
    );
    // Idempotent: the same ids again send nothing.
    let again = api(
        &relay,
        "POST",
        "/admin/dead-letters/redrive",
        Some(TOKEN),
        &serde_json::json!({ "ids": entries.iter().map(|e| e["id"].clone()).collect::<Vec<_>>() })
            .to_string(),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["redriven"], 0);
    assert_eq!(again.json()["already_removed"], 10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        drain_fresh(queue, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    cleanup(exchange, &[queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_kafka_topic_is_dead_lettered_and_redriven_after_the_fix() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaRespErr;
    let cluster = MockCluster::new(1).expect("mock cluster");
    for t in EVENT_TYPES {
        cluster
            .create_topic(&format!("quickassist.{t}"), 1, 1)
            .unwrap();
    }
    let topic = "quickassist.message.failed";
    cluster
        .topic_error(
            topic,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let config = config_with_sink(
        data,
        "",
        "",
        // The producer learns that the topic was fixed from its next metadata
        // refresh (every 5 minutes by default).
        &common::kafka::sink_section(
            &brokers,
            "librdkafka = { \"topic.metadata.refresh.interval.ms\" = \"500\" }",
        ),
        &admin_section(),
    );
    let relay = start(data, &config);
    let ids = send(&relay, 5, "message.failed", "kdl").await;
    eventually(Duration::from_secs(30), || async {
        let l = ok_json(&admin_cli(
            &relay,
            &["--json", "dead-letters", "list", "--sink", "kafka"],
        ));
        (l["dead_letters"].as_array().unwrap().len() == 5).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("5 dead letters; logs:\n{}", relay.logs()));
    let human = admin_cli(&relay, &["dead-letters", "list"]);
    assert!(human.status.success());
    assert!(String::from_utf8_lossy(&human.stdout).contains("uthoriz"));

    cluster
        .topic_error(topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = ok_json(&admin_cli(
        &relay,
        &[
            "--json",
            "dead-letters",
            "redrive",
            "--sink",
            "kafka",
            "--wait",
            "30",
        ],
    ));
    assert_eq!(r["redriven"], 5, "{r}");
    assert_eq!(r["confirmed"], 5, "{r}");
    let records = common::kafka::consume(&brokers, &[topic], 1, 5, Duration::from_secs(30));
    let seen: HashSet<String> = records.iter().map(|r| r.header("hookrelay-id")).collect();
    assert_eq!(seen, ids, "{}", relay.logs());
    let empty = ok_json(&admin_cli(&relay, &["--json", "dead-letters", "list"]));
    assert!(
        empty["dead_letters"].as_array().unwrap().is_empty(),
        "{empty}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_up_delivers_the_backlog_and_exits_0() {
    let r = Rabbit::new("operate-term").await;
    let (exchange, queue, data) = (&r.exchange, &r.queue, r.data());
    let mut relay = start(data, &r.config("", "", ""));
    bind_fresh(queue, exchange).await;
    // Held back, so that SIGTERM finds a backlog to deliver.
    ok_json(&admin_cli(&relay, &["--json", "pause", "rabbitmq"]));
    let ids = send(&relay, 300, "message.read", "term").await;
    ok_json(&admin_cli(&relay, &["--json", "resume", "rabbitmq"]));
    let status = tokio::task::block_in_place(|| relay.terminate(Duration::from_secs(30)));
    assert!(status.success(), "{status:?}\n{}", relay.logs());
    let got = drain_fresh(queue, 300, Duration::from_secs(30)).await;
    assert_eq!(ids_of(&got), ids);
    let report = ok_json(&inspect(&data.join("spool")));
    assert_eq!(pending_in(&report), 0, "{report}");
    cleanup(exchange, &[queue]).await;
}

/// Declares the exchange the relay will publish to (as it does with
/// `unroutable_queue = false`), so the queue can be bound before the relay runs.
async fn bind_later(ch: &lapin::Channel, _queue: &str, exchange: &str) {
    let _ = ch
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_down_exits_non_zero_and_drain_delivers_it_later() {
    let exchange = unique("operate-drain");
    let queue = format!("{exchange}-q");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    // The broker is "down": nothing listens where the sink connects.
    let (_reserved, down) = refused_port();
    let down_uri = format!("amqp://guest:guest@{down}/%2f");
    // No alternate exchange: the test declares the same exchange to bind its queue.
    let sink = format!(
        "[sinks.rabbitmq]\nuri = \"{down_uri}\"\nexchange = \"{exchange}\"\nunroutable_queue = false\n"
    );
    let config = config_with_sink(data, "drain_deadline_secs = 2", "", &sink, "");
    let mut relay = start(data, &config);
    let ids = send(&relay, 200, "message.read", "down").await;
    let status = tokio::task::block_in_place(|| relay.terminate(Duration::from_secs(30)));
    assert!(
        !status.success(),
        "exit 0 with a backlog left\n{}",
        relay.logs()
    );
    let logs = relay.logs();
    assert!(logs.contains("\"unconfirmed\":200"), "{logs}");
    let before = ok_json(&inspect(&data.join("spool")));
    assert_eq!(pending_in(&before), 200, "{before}");

    // Still down: drain gives up at its timeout, non-zero, with the count.
    let out = Command::new(binary())
        .args(["drain", "--timeout", "2s", "--config"])
        .arg(data.join("hookrelay.toml"))
        .env("HOOKRELAY_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("200 event(s) not delivered"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The broker is back (the same sink, its real address): drain delivers it all.
    {
        let (_conn, ch) = amqp::channel().await;
        bind_later(&ch, &queue, &exchange).await;
    }
    bind_fresh(&queue, &exchange).await;
    let up = std::fs::read_to_string(data.join("hookrelay.toml"))
        .unwrap()
        .replace(&down_uri, amqp::URI);
    std::fs::write(data.join("drain.toml"), up).unwrap();
    let out = Command::new(binary())
        .args(["drain", "--timeout", "60s", "--config"])
        .arg(data.join("drain.toml"))
        .env("HOOKRELAY_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = drain_fresh(&queue, 200, Duration::from_secs(30)).await;
    assert_eq!(ids_of(&got), ids);
    let after = ok_json(&inspect(&data.join("spool")));
    assert_eq!(pending_in(&after), 0, "{after}");
    cleanup(&exchange, &[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_window_of_the_archive_arrives_exactly_with_the_replay_header() {
    // Small segments, so that confirmed ones are archived as the test goes.
    let r = Rabbit::new("operate-replay").await;
    let (exchange, fresh, data) = (&r.exchange, &r.queue, r.data());
    let relay = start(
        data,
        &r.config(
            "segment_bytes = 65536\nmax_bytes = 67108864",
            "",
            "\n[archive]\nretention_hours = 1\nmax_bytes = 268435456\n",
        ),
    );
    let now = || humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    // Nothing is bound: the events go to the unroutable queue, confirmed, then archived.
    send(&relay, 3000, "message.read", "before").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let window = send(&relay, 4000, "message.delivered", "window").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let until = now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&relay, 3000, "message.read", "after").await;
    relay
        .wait_drained(Duration::from_secs(60))
        .await
        .expect("all delivered");
    // 10,000 events of ~300 bytes fill some 40 segments of 64 KiB.
    let archived = eventually(Duration::from_secs(10), || async {
        let b = ok_json(&admin_cli(&relay, &["--json", "backlog"]));
        (b["archive"]["segments"].as_u64().unwrap_or(0) >= 20).then_some(b)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "confirmed segments archived: {}",
            ok_json(&admin_cli(&relay, &["--json", "backlog"]))
        )
    });
    assert!(archived["archive"]["bytes"].as_u64().unwrap() > 0);

    bind_fresh(fresh, exchange).await;
    let job = ok_json(&admin_cli(
        &relay,
        &[
            "--json", "replay", "--since", &since, "--until", &until, "--sink", "rabbitmq",
            "--wait",
        ],
    ));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["published"], 4000, "{job}");
    let got = drain_fresh(fresh, 4001, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 4000, "exactly the window");
    assert_eq!(ids_of(&got), window);
    assert!(got.iter().all(|g| g.header("hookrelay-replay") == "true"));
    // A replay of a window with nothing in it publishes nothing.
    let empty = ok_json(&admin_cli(
        &relay,
        &[
            "--json", "replay", "--since", "2h", "--until", "90m", "--wait",
        ],
    ));
    assert_eq!(empty["matched"], 0, "{empty}");
    cleanup(exchange, &[fresh]).await;
}
