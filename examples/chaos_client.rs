//! The two ends of a chaos run (`scripts/chaos.sh`): a sender that behaves like a
//! provider, and consumers that record what reached the broker.
//!
//! `send`: sends events `0..N` (distinct, signed TheQuickAssist events) over C
//! keep-alive connections, alternating between the target URLs, and retries each
//! event like a provider does (any non-200 or transport error: back off, try the
//! next target) until it gets a 200. Writes the hookrelay id of every event that
//! got a 200 to `--acked`, and progress (`acked N`) to stdout every 200 ms, which
//! the orchestrator uses to spread its faults over the run, followed by the
//! failed attempts so far (`failed {"503":N,"other":N,"transport":N}`: answered
//! 503, answered another non-200, no answer), which tells which source was
//! refused when.
//!
//! `consume-amqp` / `consume-kafka`: read everything and write the `hookrelay-id`
//! header of each message, one per line (duplicates included), until the stop
//! file exists and nothing arrived for two seconds. Both reconnect on their own.
//!
//! `consume-nats`: reads a JetStream stream from its first message up to the last
//! one it holds when the reader starts (run it once the relay has drained), and
//! writes the `hookrelay-id` header of each, one per line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

const TYPES: [&str; 4] = [
    "message.delivered",
    "message.read",
    "message.failed",
    "template.status_update",
];

/// How long the consumers wait with nothing arriving, once told to stop.
const IDLE: Duration = Duration::from_secs(2);

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn need(args: &[String], name: &str) -> Result<String> {
    flag(args, name).with_context(|| format!("{name} is required"))
}

/// The id hookrelay gives event `n` of run `tag` (the default `{event}:{id}`).
fn event_id(tag: &str, n: u64) -> String {
    format!("{}:{tag}-{n}", TYPES[(n % 4) as usize])
}

fn body(tag: &str, n: u64, size: usize) -> Bytes {
    let head = format!(
        r#"{{"event":"{}","timestamp":"2024-01-15T10:30:00Z","data":{{"messageId":"{tag}-{n}","recipient":"+1234567890","pad":""#,
        TYPES[(n % 4) as usize]
    );
    let tail = r#""},"webhookId":"whk_chaos"}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("send") => send(&args).await,
        Some("consume-amqp") => consume_amqp(&args).await,
        Some("consume-kafka") => consume_kafka(&args),
        Some("consume-nats") => consume_nats(&args).await,
        _ => bail!("usage: chaos_client send|consume-amqp|consume-kafka|consume-nats [flags]"),
    }
}

struct Sender {
    targets: Vec<(String, String)>,
    secret: String,
    tag: String,
    body_bytes: usize,
    next: AtomicU64,
    total: u64,
    acked: AtomicU64,
    retries: AtomicU64,
    /// Failed attempts: answered 503, answered another non-200, no answer.
    refused_503: AtomicU64,
    refused_other: AtomicU64,
    transport: AtomicU64,
    turn: AtomicUsize,
    give_up: Duration,
    /// Events per second in total (0: as fast as the relay answers), so that a run
    /// lasts long enough for its faults to land while events are still arriving.
    rate: f64,
    started: Instant,
}

async fn send(args: &[String]) -> Result<()> {
    let mut targets = Vec::new();
    for url in need(args, "--targets")?.split(',') {
        let uri: hyper::Uri = url.parse().context("--targets")?;
        let authority = uri.authority().context("url needs host:port")?.to_string();
        targets.push((authority, uri.path().to_string()));
    }
    let s = Arc::new(Sender {
        targets,
        secret: need(args, "--secret")?,
        tag: need(args, "--tag")?,
        body_bytes: flag(args, "--body-bytes").map_or(Ok(300), |v| v.parse())?,
        next: AtomicU64::new(0),
        total: need(args, "--events")?.parse()?,
        acked: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        refused_503: AtomicU64::new(0),
        refused_other: AtomicU64::new(0),
        transport: AtomicU64::new(0),
        turn: AtomicUsize::new(0),
        give_up: Duration::from_secs(flag(args, "--give-up-secs").map_or(Ok(180), |v| v.parse())?),
        rate: flag(args, "--rate").map_or(Ok(0.0), |v| v.parse())?,
        started: Instant::now(),
    });
    let connections: usize = flag(args, "--connections").map_or(Ok(32), |v| v.parse())?;
    let out = PathBuf::from(need(args, "--acked")?);
    let started = Instant::now();
    let progress = {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                println!("acked {}", s.acked.load(Ordering::Relaxed));
                println!(
                    "failed {{\"503\":{},\"other\":{},\"transport\":{}}}",
                    s.refused_503.load(Ordering::Relaxed),
                    s.refused_other.load(Ordering::Relaxed),
                    s.transport.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.worker().await }));
    }
    let mut acked = Vec::new();
    let mut abandoned = 0u64;
    for t in tasks {
        let (a, x) = t.await?;
        acked.extend(a);
        abandoned += x;
    }
    progress.abort();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for n in &acked {
        writeln!(f, "{}", event_id(&s.tag, *n))?;
    }
    f.flush()?;
    println!(
        "done {{\"sent\":{},\"acked\":{},\"abandoned\":{abandoned},\"retries\":{},\"refused_503\":{},\"refused_other\":{},\"transport_errors\":{},\"seconds\":{:.1}}}",
        s.total,
        acked.len(),
        s.retries.load(Ordering::Relaxed),
        s.refused_503.load(Ordering::Relaxed),
        s.refused_other.load(Ordering::Relaxed),
        s.transport.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

type Conn = http1::SendRequest<Full<Bytes>>;

impl Sender {
    /// Takes events off the shared counter until none are left; returns the acked
    /// ones and how many were abandoned after `give_up` of failures.
    async fn worker(&self) -> (Vec<u64>, u64) {
        let mut acked = Vec::new();
        let mut abandoned = 0;
        let mut conn: Option<(usize, Conn)> = None;
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= self.total {
                return (acked, abandoned);
            }
            if self.rate > 0.0 {
                let due = self.started + Duration::from_secs_f64(n as f64 / self.rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let b = body(&self.tag, n, self.body_bytes);
            let sig = hookrelay::verify::quickassist_sign(self.secret.as_bytes(), &b);
            let first = Instant::now();
            let mut backoff = Duration::from_millis(20);
            loop {
                let target = match &conn {
                    Some((t, _)) => *t,
                    None => self.turn.fetch_add(1, Ordering::Relaxed) % self.targets.len(),
                };
                if conn.is_none() {
                    conn = connect(&self.targets[target].0).await.map(|c| (target, c));
                }
                let ok = match &mut conn {
                    Some((_, c)) => self.post(c, target, b.clone(), &sig).await,
                    None => {
                        self.transport.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                };
                if ok {
                    acked.push(n);
                    self.acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Like a provider: back off, and try elsewhere.
                conn = None;
                self.retries.fetch_add(1, Ordering::Relaxed);
                if first.elapsed() > self.give_up {
                    abandoned += 1;
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    async fn post(&self, c: &mut Conn, target: usize, b: Bytes, sig: &str) -> bool {
        let (authority, path) = &self.targets[target];
        let Ok(req) = Request::post(path.as_str())
            .header("host", authority.as_str())
            .header("content-type", "application/json")
            .header("x-webhook-signature", sig)
            .body(Full::new(b))
        else {
            return false;
        };
        if c.ready().await.is_err() {
            self.transport.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let fut = c.send_request(req);
        match tokio::time::timeout(Duration::from_secs(30), fut).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                if status == hyper::StatusCode::SERVICE_UNAVAILABLE {
                    self.refused_503.fetch_add(1, Ordering::Relaxed);
                } else if !status.is_success() {
                    self.refused_other.fetch_add(1, Ordering::Relaxed);
                }
                status.is_success() && resp.into_body().collect().await.is_ok()
            }
            _ => {
                self.transport.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

async fn connect(authority: &str) -> Option<Conn> {
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .ok()?
    .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// Appends ids to the output file; flushed when idle and at the end.
struct Recorder {
    out: std::io::BufWriter<std::fs::File>,
    stop: PathBuf,
    last: Instant,
    count: u64,
}

impl Recorder {
    fn new(args: &[String]) -> Result<Recorder> {
        Ok(Recorder {
            out: std::io::BufWriter::new(std::fs::File::create(need(args, "--out")?)?),
            stop: PathBuf::from(need(args, "--stop-file")?),
            last: Instant::now(),
            count: 0,
        })
    }

    fn record(&mut self, id: &[u8]) -> Result<()> {
        self.out.write_all(id)?;
        self.out.write_all(b"\n")?;
        self.last = Instant::now();
        self.count += 1;
        Ok(())
    }

    /// Told to stop and nothing arrived for a while.
    fn finished(&mut self) -> Result<bool> {
        self.out.flush()?;
        Ok(Path::new(&self.stop).exists() && self.last.elapsed() > IDLE)
    }
}

async fn consume_amqp(args: &[String]) -> Result<()> {
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    let uri = need(args, "--uri")?;
    let exchange = need(args, "--exchange")?;
    let queue = need(args, "--queue")?;
    let mut rec = Recorder::new(args)?;
    let mut ready_said = false;
    'connect: loop {
        let session = async {
            let conn =
                lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(1000, BasicQosOptions::default()).await?;
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
                .await?;
            // hookrelay declares the exchange; until it has, binding fails.
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            let consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    "chaos".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((conn, ch, consumer))
        };
        let (conn, ch, mut consumer) = match session.await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        if !ready_said {
            println!("ready");
            ready_said = true;
        }
        // Acked in groups (`multiple`): one ack per message would make the consumer,
        // not the relay, the bottleneck of the run.
        let mut unacked: Option<u64> = None;
        let mut pending = 0;
        let multiple = BasicAckOptions { multiple: true };
        loop {
            if pending >= 256
                && let Some(a) = unacked.take()
            {
                pending = 0;
                if ch.basic_ack(a, multiple).await.is_err() {
                    continue 'connect;
                }
            }
            match tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    let id = d
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| match h.inner().get("hookrelay-id") {
                            Some(AMQPValue::LongString(s)) => Some(s.as_bytes().to_vec()),
                            _ => None,
                        })
                        .unwrap_or_else(|| b"?no-id".to_vec());
                    rec.record(&id)?;
                    unacked = Some(d.delivery_tag);
                    pending += 1;
                }
                Ok(_) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'connect;
                }
                Err(_) => {
                    if !conn.status().connected() {
                        continue 'connect;
                    }
                    if let Some(a) = unacked.take() {
                        pending = 0;
                        if ch.basic_ack(a, multiple).await.is_err() {
                            continue 'connect;
                        }
                    }
                    // Idle is not enough: the queue must be empty too.
                    if rec.finished()? {
                        let passive = QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        };
                        let declared =
                            ch.queue_declare(queue.as_str().into(), passive, FieldTable::default());
                        match tokio::time::timeout(Duration::from_secs(5), declared).await {
                            Ok(Ok(q)) if q.message_count() == 0 => break 'connect,
                            Ok(Ok(_)) => {}
                            _ => continue 'connect,
                        }
                    }
                }
            }
        }
    }
    println!("consumed {}", rec.count);
    Ok(())
}

fn consume_kafka(args: &[String]) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let brokers = need(args, "--brokers")?;
    let topics = need(args, "--topics")?;
    let partitions: i32 = flag(args, "--partitions").map_or(Ok(3), |v| v.parse())?;
    let mut rec = Recorder::new(args)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "chaos")
        .set("enable.auto.commit", "false")
        // An offset error while a broker is down must not skip ahead.
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for t in topics.split(',') {
        for p in 0..partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    println!("ready");
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "hookrelay-id"))
                    .and_then(|h| h.value.map(<[u8]>::to_vec))
                    .unwrap_or_else(|| b"?no-id".to_vec());
                rec.record(&id)?;
            }
            // Broker down or a partition end: keep polling, the client reconnects.
            Some(Err(_)) | None => {
                if rec.finished()? && caught_up(&consumer, &tpl) {
                    break;
                }
            }
        }
    }
    println!("consumed {}", rec.count);
    Ok(())
}

/// Every partition read up to its high watermark (idle alone is not enough: a
/// partition whose leader is down looks idle too).
fn caught_up(
    consumer: &rdkafka::consumer::BaseConsumer,
    tpl: &rdkafka::TopicPartitionList,
) -> bool {
    use rdkafka::Offset;
    use rdkafka::consumer::Consumer;
    let Ok(position) = consumer.position() else {
        return false;
    };
    tpl.elements().iter().all(|e| {
        let Ok((_, high)) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
        else {
            return false;
        };
        match position
            .find_partition(e.topic(), e.partition())
            .map(|p| p.offset())
        {
            Some(Offset::Offset(at)) => at >= high,
            _ => high == 0,
        }
    })
}

/// Reads stream `--stream` on `--server` from its first message to the last it
/// holds now, through an ephemeral pull consumer, retrying while the server is
/// not ready (a JetStream just restarted answers "unavailable" for a moment).
async fn consume_nats(args: &[String]) -> Result<()> {
    use async_nats::jetstream::{self, consumer};
    use futures_util::StreamExt;
    let server = need(args, "--server")?;
    let stream = need(args, "--stream")?;
    let out = PathBuf::from(need(args, "--out")?);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out)?);
    let deadline = Instant::now() + Duration::from_secs(300);
    let client = loop {
        match async_nats::connect(&server).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("consume-nats: connect: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("connect {server}: {e}"),
        }
    };
    let js = jetstream::new(client);
    let (s, last) = loop {
        let attempt = async {
            let mut s = js.get_stream(&stream).await?;
            let last = s.info().await?.state.last_sequence;
            Ok::<_, anyhow::Error>((s, last))
        };
        match attempt.await {
            Ok(v) => break v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("consume-nats: stream {stream}: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("stream {stream}: {e}"),
        }
    };
    println!("ready");
    let c = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("consumer on {stream}: {e}"))?;
    let (mut at, mut count) = (0u64, 0u64);
    while at < last {
        if Instant::now() > deadline {
            bail!("stream {stream}: read up to sequence {at} of {last} in 300 s");
        }
        let mut batch = c
            .batch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("hookrelay-id"))
                .map_or(b"?no-id".to_vec(), |v| v.as_str().as_bytes().to_vec());
            f.write_all(&id)?;
            f.write_all(b"\n")?;
            count += 1;
            at = at.max(
                m.info()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .stream_sequence,
            );
        }
    }
    f.flush()?;
    println!("consumed {count} (stream sequences 1..={last})");
    Ok(())
}
