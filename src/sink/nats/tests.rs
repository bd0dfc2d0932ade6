//! The NATS sink against a real JetStream: the machine's nats-server on
//! 127.0.0.1:4222 (no auth), and for restarts and credentials servers these tests
//! start themselves on free ports. Every test uses its own stream and subjects and
//! deletes its stream at the end, even when it fails, so they run in parallel.
//! They live here, not in tests/, because only tests inside the crate can build
//! an `Event` by hand.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;

use super::*;
use crate::event::EventBuilder;
use crate::sink::{Message, Sink, SinkError, StartError};

const SHARED: &str = "nats://127.0.0.1:4222";
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// The machine's JetStream server, or a failure saying what is missing.
fn shared_server() -> &'static str {
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:4222".parse().unwrap(),
        Duration::from_secs(5),
    )
    .is_err()
    {
        panic!(
            "no nats-server on 127.0.0.1:4222; start one with JetStream: nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server"
        );
    }
    SHARED
}

/// A name no other test (or run) uses: `{prefix}_{pid}_{n}_{nanos}`.
fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(server: &str, stream: &str, extra: &str) -> NatsSinkConfig {
    let cfg: NatsSinkConfig = toml::from_str(&format!(
        "servers = [\"{server}\"]\nstream = \"{stream}\"\n{extra}"
    ))
    .unwrap();
    cfg.validate().unwrap();
    cfg
}

/// A stream the sink creates, storing `{p}.>`, with `p` its lowercase name.
fn creating(server: &str, stream: &str, extra: &str) -> NatsSinkConfig {
    let p = stream.to_ascii_lowercase();
    config(
        server,
        stream,
        &format!("create_stream = true\nsubjects = [\"{p}.>\"]\n{extra}"),
    )
}

fn message(n: u64, topic: &str, id: &str, body: impl Into<Bytes>) -> Message {
    Message {
        seq: n,
        event: Arc::new(
            EventBuilder::new(n)
                .topic(topic)
                .id(id)
                .body(body.into())
                .build(),
        ),
        replay: false,
    }
}

async fn within<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

/// Publishes `batch` and awaits every confirmation, bounded.
async fn publish_all(sink: &NatsSink, batch: Vec<Message>) -> Vec<Result<(), SinkError>> {
    let n = batch.len();
    let confirmations = within("publish", Duration::from_secs(30), sink.publish(batch)).await;
    assert_eq!(confirmations.len(), n);
    within(
        "confirmations",
        Duration::from_secs(30),
        futures_util::future::join_all(confirmations),
    )
    .await
}

async fn context(server: &str) -> jetstream::Context {
    let client = within(
        "connect",
        Duration::from_secs(10),
        async_nats::connect(server),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to {server}: {e}"));
    jetstream::new(client)
}

async fn stream_info(server: &str, stream: &str) -> jetstream::stream::Info {
    let js = context(server).await;
    let s = within(
        "stream info",
        Duration::from_secs(10),
        js.get_stream(stream),
    )
    .await
    .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    s.cached_info().clone()
}

/// Reads the whole stream through an ephemeral pull consumer.
async fn read_all(server: &str, stream: &str, expect: usize) -> Vec<jetstream::Message> {
    let js = context(server).await;
    let s = js.get_stream(stream).await.unwrap();
    let c = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expect && Instant::now() < deadline {
        let mut batch = c
            .batch()
            .max_messages((expect - out.len()).min(500))
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            out.push(m.unwrap());
        }
    }
    out
}

/// Deletes its stream when dropped, also when the test fails.
struct Cleanup {
    server: String,
    stream: String,
}

impl Cleanup {
    fn new(server: &str, stream: &str) -> Cleanup {
        Cleanup {
            server: server.into(),
            stream: stream.into(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (server, stream) = (self.server.clone(), self.stream.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let gone = tokio::time::timeout(Duration::from_secs(10), async {
                    let client = async_nats::connect(server.as_str()).await.ok()?;
                    jetstream::new(client).delete_stream(&stream).await.ok()
                })
                .await;
                if !matches!(gone, Ok(Some(_))) {
                    eprintln!("could not delete test stream {stream}");
                }
            })
        })
        .join();
    }
}

fn header<'a>(m: &'a async_nats::Message, name: &str) -> &'a str {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map_or("", |v| v.as_str())
}

fn permanent(r: &Result<(), SinkError>) -> &str {
    match r {
        Err(SinkError::Permanent(why)) => why,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_arrive_byte_exact_with_their_headers() {
    let stream = unique("HR_BULK");
    let _cleanup = Cleanup::new(shared_server(), &stream);
    let cfg = creating(SHARED, &stream, "");
    let p = stream.to_ascii_lowercase();
    let sink = within("start", Duration::from_secs(15), NatsSink::new(&cfg))
        .await
        .unwrap();
    assert!(sink.ready());
    let mut expected = HashMap::new();
    let mut batches = vec![Vec::new()];
    for n in 0..1000u64 {
        let topic = format!("{p}.event.t{}", n % 7);
        let id = format!("evt:{n}");
        // Bytes of every value, and JSON-ish text with odd spacing: kept exactly.
        let mut body = format!(
            "{{ \"n\" : {n},\t\"pad\": \"{}\" }}\n",
            "x".repeat(n as usize % 50)
        )
        .into_bytes();
        body.extend((0..=255u8).take(n as usize % 256));
        let m = message(n, &topic, &id, body);
        expected.insert(id, m.clone());
        if batches.last().unwrap().len() == 250 {
            batches.push(Vec::new());
        }
        batches.last_mut().unwrap().push(m);
    }
    // All batches handed over before any confirmation is awaited.
    let mut confirmations = Vec::new();
    for b in batches {
        confirmations.extend(within("publish", Duration::from_secs(30), sink.publish(b)).await);
    }
    assert_eq!(confirmations.len(), 1000);
    let results = within(
        "confirmations",
        Duration::from_secs(60),
        futures_util::future::join_all(confirmations),
    )
    .await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );

    let read = read_all(SHARED, &stream, 1000).await;
    assert_eq!(read.len(), 1000);
    let mut seen = HashSet::new();
    for m in &read {
        let m = &m.message;
        let id = header(m, "Nats-Msg-Id");
        let want = &expected
            .get(id)
            .unwrap_or_else(|| panic!("unexpected id {id:?}"))
            .event;
        assert!(seen.insert(id.to_string()), "{id} read twice");
        assert_eq!(m.subject.as_str(), want.topic());
        assert_eq!(m.payload, want.body());
        assert_eq!(header(m, "hookrelay-id"), want.id());
        assert_eq!(header(m, "hookrelay-source"), want.source());
        assert_eq!(header(m, "hookrelay-event"), want.event_type());
        assert_eq!(
            header(m, "hookrelay-received-at"),
            want.received_at_ns().to_string()
        );
        assert_eq!(header(m, "content-type"), want.content_type());
    }
    assert_eq!(stream_info(SHARED, &stream).await.state.messages, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_is_stored_once() {
    let stream = unique("HR_DEDUP");
    let _cleanup = Cleanup::new(shared_server(), &stream);
    let cfg = creating(SHARED, &stream, "duplicate_window_secs = 60");
    let p = stream.to_ascii_lowercase();
    let sink = NatsSink::new(&cfg).await.unwrap();
    let topic = format!("{p}.message.read");
    let first = message(1, &topic, "dup:1", "{\"a\":1}");
    let replay = message(2, &topic, "dup:1", "{\"a\":1}");
    let other = message(3, &topic, "dup:2", "{\"a\":1}");
    let results = publish_all(&sink, vec![first.clone(), replay.clone()]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let results = publish_all(&sink, vec![replay, other]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let info = stream_info(SHARED, &stream).await;
    assert_eq!(info.config.duplicate_window, Duration::from_secs(60));
    assert_eq!(info.state.messages, 2, "one per event id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_nats_cannot_take_is_refused_for_good_and_the_rest_goes_on() {
    let stream = unique("HR_REFUSE");
    let _cleanup = Cleanup::new(shared_server(), &stream);
    let cfg = creating(SHARED, &stream, "");
    let p = stream.to_ascii_lowercase();
    let sink = NatsSink::new(&cfg).await.unwrap();
    let good = |n: u64| message(n, &format!("{p}.ok"), &format!("ok:{n}"), "{}");
    let ev = |n: u64| {
        EventBuilder::new(n)
            .topic(format!("{p}.ok"))
            .id(format!("bad:{n}"))
    };
    let with = |n: u64, b: EventBuilder| Message {
        seq: n,
        event: Arc::new(b.build()),
        replay: false,
    };
    let max_payload = context(SHARED).await.client().server_info().max_payload;
    let mut batch = vec![good(0)];
    batch.push(with(1, ev(1).body(vec![b'x'; max_payload + 1])));
    for (n, topic) in [
        (2, "a..b"),
        (3, "a b"),
        (4, "a.*"),
        (5, "a.>"),
        (6, ""),
        (7, "a.\r\n"),
    ] {
        batch.push(message(
            n,
            &format!("{p}.{topic}"),
            &format!("bad:{n}"),
            "{}",
        ));
    }
    batch.push(message(8, &"a".repeat(1000), "bad:8", "{}"));
    batch.push(with(9, ev(9).content_type("text/plain\r\nInjected: yes")));
    batch.push(with(10, ev(10).id("id\nwith-newline")));
    batch.push(with(11, ev(11).content_type("tab\there")));
    batch.push(good(12));
    // A subject the stream does not store, and no other stream does either.
    batch.push(message(13, &format!("{p}x.elsewhere"), "bad:13", "{}"));
    batch.push(good(14));
    let results = publish_all(&sink, batch).await;
    assert_eq!(results.len(), 15);
    for n in [0, 12, 14] {
        assert!(results[n].is_ok(), "{n}: {:?}", results[n]);
    }
    assert!(
        permanent(&results[1]).contains("max_payload"),
        "{:?}",
        results[1]
    );
    for (n, r) in results.iter().enumerate() {
        let refused_for = match n {
            2..=8 => "subject",
            9..=11 => "header",
            _ => continue,
        };
        let why = permanent(r);
        assert!(why.contains(refused_for), "{n}: {why}");
    }
    let why = permanent(&results[13]);
    assert!(why.contains("no JetStream stream stores subject"), "{why}");
    assert_eq!(stream_info(SHARED, &stream).await.state.messages, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_vanishes_is_retried_then_created_again() {
    let stream = unique("HR_GONE");
    let _cleanup = Cleanup::new(shared_server(), &stream);
    let cfg = creating(SHARED, &stream, "");
    let p = stream.to_ascii_lowercase();
    let sink = NatsSink::new(&cfg).await.unwrap();
    let m = |n: u64| message(n, &format!("{p}.x"), &format!("gone:{n}"), "{}");
    assert!(publish_all(&sink, vec![m(0)]).await[0].is_ok());
    context(SHARED).await.delete_stream(&stream).await.unwrap();
    let r = publish_all(&sink, vec![m(1)]).await;
    assert!(
        matches!(&r[0], Err(SinkError::Retriable(why)) if why.contains("does not exist")),
        "{r:?}"
    );
    // The next publish creates it again (after the creation backoff, if any).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match &publish_all(&sink, vec![m(1)]).await[0] {
            Ok(()) => break,
            Err(SinkError::Retriable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stream_info(SHARED, &stream).await.state.messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connection_finds_or_creates_the_stream() {
    let stream = unique("HR_CHECK");
    let _cleanup = Cleanup::new(shared_server(), &stream);
    let p = stream.to_ascii_lowercase();

    let missing = config(SHARED, &stream, "");
    let err = within("check", Duration::from_secs(15), check_connection(&missing))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&stream) && err.contains("create_stream = false"),
        "{err}"
    );
    // The sink refuses to start on it too.
    let err = NatsSink::new(&missing)
        .await
        .err()
        .expect("started without its stream");
    assert!(
        matches!(&err, StartError::Broker(e) if e.contains(&stream)),
        "{err}"
    );

    let create = config(
        SHARED,
        &stream,
        &format!(
            "create_stream = true\nsubjects = [\"{p}.a.>\", \"{p}.b.*\"]\nretention = \"workqueue\"\nreplicas = 1\nmax_age_secs = 3600\nduplicate_window_secs = 30\n"
        ),
    );
    let summary = within("check", Duration::from_secs(15), check_connection(&create))
        .await
        .unwrap();
    assert!(
        summary.contains("created") && summary.contains(&stream),
        "{summary}"
    );
    assert!(summary.contains(&format!("{p}.a.>")), "{summary}");
    let info = stream_info(SHARED, &stream).await;
    let c = &info.config;
    assert_eq!(c.subjects, vec![format!("{p}.a.>"), format!("{p}.b.*")]);
    assert_eq!(c.retention, jetstream::stream::RetentionPolicy::WorkQueue);
    assert_eq!(c.storage, jetstream::stream::StorageType::File);
    assert_eq!(c.num_replicas, 1);
    assert_eq!(c.max_age, Duration::from_secs(3600));
    assert_eq!(c.duplicate_window, Duration::from_secs(30));

    let again = check_connection(&create).await.unwrap();
    assert!(again.contains("exists"), "{again}");
    // Found now, so a sink without create_stream starts on it.
    let sink = NatsSink::new(&missing).await.unwrap();
    assert!(sink.ready());
    let ok = publish_all(&sink, vec![message(0, &format!("{p}.b.x"), "c:0", "{}")]).await;
    assert!(ok[0].is_ok(), "{ok:?}");
}

/// A local port that refuses connections, held bound so nothing else takes it.
fn refused_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_only_warns_and_publishes_fail_retriably() {
    let (_held, port) = refused_port();
    let cfg = creating(
        &format!("nats://127.0.0.1:{port}"),
        "HR_DOWN",
        "connect_timeout_ms = 500",
    );
    let sink = within("start", Duration::from_secs(10), NatsSink::new(&cfg))
        .await
        .expect("an unreachable server must not stop the start");
    assert!(!sink.ready());
    let r = publish_all(&sink, vec![message(0, "hr_down.x", "d:0", "{}")]).await;
    assert!(matches!(&r[0], Err(SinkError::Retriable(_))), "{r:?}");
    within(
        "flush",
        Duration::from_secs(5),
        sink.flush(Duration::from_millis(200)),
    )
    .await;
    let err = within("check", Duration::from_secs(10), check_connection(&cfg))
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::Broker(_)), "{err}");
}

/// A nats-server of the test's own, killed when dropped.
struct OwnServer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
    args: Vec<String>,
}

impl OwnServer {
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Starts `nats-server -js` on `port` storing in `dir`; fails the test loudly
    /// if it does not listen within 15 s.
    fn start(port: u16, dir: &Path, extra: &[&str]) -> OwnServer {
        let mut args: Vec<String> = ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(dir.join("store").display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let child = Command::new(NATS_SERVER)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NATS_SERVER}: {e}"));
        let mut s = OwnServer {
            child,
            port,
            dir: dir.to_path_buf(),
            args,
        };
        s.wait_listening();
        s
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nats-server exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 15 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGTERM, and waits (bounded) for it to exit.
    fn terminate(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again, same port, same store.
    fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        self.child = Command::new(NATS_SERVER)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot restart {NATS_SERVER}: {e}"));
        self.wait_listening();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = OwnServer::free_port();
    let server = OwnServer::start(port, dir.path(), &["--user", "relay", "--pass", "right"]);
    // SAFETY: no other test reads or writes these variables.
    unsafe {
        std::env::set_var("HOOKRELAY_TEST_NATS_WRONG", "wrong");
        std::env::set_var("HOOKRELAY_TEST_NATS_RIGHT", "right");
    }
    let auth = |var: &str| {
        creating(
            &server.url(),
            "HR_AUTH",
            &format!("user = \"relay\"\npassword_env = \"{var}\""),
        )
    };
    let err = within(
        "start",
        Duration::from_secs(15),
        NatsSink::new(&auth("HOOKRELAY_TEST_NATS_WRONG")),
    )
    .await
    .err()
    .expect("started with a wrong password");
    let text = err.to_string();
    assert!(
        matches!(err, StartError::Broker(_)) && text.contains("refused the credentials"),
        "{text}"
    );
    assert!(!text.contains("wrong"), "the password leaked: {text}");
    let err = check_connection(&auth("HOOKRELAY_TEST_NATS_WRONG"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    let err = NatsSink::new(&auth("HOOKRELAY_TEST_NATS_UNSET"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, StartError::Config(p) if p.key == "sinks.nats.password_env"),
        "{err}"
    );
    let sink = NatsSink::new(&auth("HOOKRELAY_TEST_NATS_RIGHT"))
        .await
        .unwrap();
    assert!(sink.ready());
    let r = publish_all(&sink, vec![message(0, "hr_auth.x", "a:0", "{}")]).await;
    assert!(r[0].is_ok(), "{r:?}");
}

/// What the publisher of the restart test saw.
#[derive(Default)]
struct Tally {
    stored: HashSet<String>,
    retried: usize,
    while_down: usize,
    reasons: HashMap<String, usize>,
}

/// Publishes `all` in batches of 20 until every one is confirmed, putting each
/// retriable failure back in the queue (as the forwarder does); a permanent one
/// fails the test.
async fn publish_until_stored(
    sink: Arc<NatsSink>,
    all: Vec<Message>,
    stored: Arc<AtomicU64>,
    down: Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    let mut pending: std::collections::VecDeque<Message> = all.into();
    let mut t = Tally::default();
    while !pending.is_empty() {
        let batch: Vec<Message> = pending.drain(..pending.len().min(20)).collect();
        let was_down = down.load(Ordering::SeqCst);
        let results = publish_all(&sink, batch.clone()).await;
        let mut failed = false;
        for (m, r) in batch.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    t.stored.insert(m.event.id().to_string());
                    stored.fetch_add(1, Ordering::SeqCst);
                }
                Err(SinkError::Retriable(why)) => {
                    *t.reasons.entry(why).or_insert(0) += 1;
                    t.retried += 1;
                    t.while_down += usize::from(was_down || down.load(Ordering::SeqCst));
                    failed = true;
                    pending.push_back(m);
                }
                Err(SinkError::Permanent(why)) => {
                    panic!("refused for good during a restart: {why}")
                }
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    t
}

/// The server is killed (SIGTERM) while a publisher keeps going, and started
/// again on the same port and store: every event ends up stored exactly once, and
/// what failed meanwhile failed as retriable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_nothing() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let port = OwnServer::free_port();
    let mut server = OwnServer::start(port, dir.path(), &[]);
    let cfg = creating(
        &server.url(),
        "HR_RESTART",
        "ack_timeout_ms = 2000\nconnect_timeout_ms = 1000",
    );
    let sink = Arc::new(
        within("start", Duration::from_secs(15), NatsSink::new(&cfg))
            .await
            .unwrap(),
    );
    let all: Vec<Message> = (0..N as u64)
        .map(|n| {
            let topic = format!("hr_restart.e{}", n % 5);
            message(n, &topic, &format!("r:{n}"), format!("{{\"n\":{n}}}"))
        })
        .collect();
    let stored = Arc::new(AtomicU64::new(0));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = tokio::spawn(publish_until_stored(
        sink.clone(),
        all,
        stored.clone(),
        down.clone(),
    ));
    within("a quarter stored", Duration::from_secs(30), async {
        while stored.load(Ordering::SeqCst) < N as u64 / 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // Mid-stream: the publisher goes on while the server goes away.
    down.store(true, Ordering::SeqCst);
    tokio::task::block_in_place(|| server.terminate());
    let at_kill = stored.load(Ordering::SeqCst);
    within("not ready", Duration::from_secs(10), async {
        while sink.ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        stored.load(Ordering::SeqCst) < N as u64,
        "everything was stored before the restart"
    );
    tokio::task::block_in_place(|| server.restart());
    down.store(false, Ordering::SeqCst);
    let t = within("all stored", Duration::from_secs(120), publisher)
        .await
        .unwrap_or_else(|e| panic!("the publisher failed: {e}\n{}", server.log()));
    eprintln!(
        "restart: {at_kill} stored at the kill, {} retried ({} while down): {:?}",
        t.retried, t.while_down, t.reasons
    );
    // How many publishes fail, and when, is the client's business: async-nats
    // buffers publishes while it reconnects, so those made during the outage may
    // only be acknowledged after it. What must hold: none was refused for good
    // (`publish_until_stored` panics on that), and every event is stored once.
    assert_eq!(t.stored.len(), N);
    assert!(sink.ready());
    let info = stream_info(&server.url(), "HR_RESTART").await;
    assert_eq!(info.state.messages, N as u64, "stored exactly once each");
    let read = read_all(&server.url(), "HR_RESTART", N).await;
    let ids: HashSet<String> = read
        .iter()
        .map(|m| header(&m.message, "Nats-Msg-Id").to_string())
        .collect();
    assert_eq!(ids, t.stored);
}
