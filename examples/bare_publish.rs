//! The broker measured alone (issue 24, "the broker is the limit"): a bare
//! publisher with no HTTP, no spool and no relay in front of it, publishing
//! persistent 1 KiB messages with pipelined confirms as fast as the broker takes
//! them. scripts/bench.py runs it with its subscriber (examples/bench_consumer)
//! reading, so the broker does the same work as in the relay cases, and holds
//! hookrelay's sustained delivered rate against what the subscriber received here.
//!
//! It publishes for a warm-up plus `seconds`, keeps up to `--window` messages
//! unconfirmed, waits for the last confirms, and prints one JSON line:
//! `{"published":..,"confirmed":..,"seconds":..,"rate":..,"start_unix":..,...}`,
//! where `rate` counts the confirms of the measured window (after the warm-up) and
//! `start_unix` is when the first message went out.
//!
//! `cargo run --release --example bare_publish -- rabbitmq <amqp-uri> <exchange> <seconds> [--window N] [--channels N]`
//! declares the durable topic exchange (as hookrelay does) and publishes with
//! `delivery_mode` 2 and `mandatory`, routing keys cycling over the four
//! `quickassist.*` topics, over `--channels` confirm channels (4, hookrelay's
//! default). `seconds` 0 only declares the exchange, for a subscriber to bind to.
//!
//! `cargo run --release --example bare_publish -- kafka <brokers> <seconds> [--window N] [--partitions N]`
//! creates the four `quickassist.*` topics if missing (3 partitions, as
//! bench_consumer does) and produces with the Kafka sink's own producer settings
//! (`KafkaSinkConfig::client_config`: acks=all, idempotence, linger, ...), counting
//! delivery reports.
//!
//! Common flags: `--warmup S` (2), `--body-bytes N` (1024).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

const TOPICS: [&str; 4] = [
    "quickassist.message.delivered",
    "quickassist.message.read",
    "quickassist.message.failed",
    "quickassist.template.status_update",
];

/// Up to this many unconfirmed messages by default: hookrelay's own
/// `forward.max_in_flight`. Into RabbitMQ on this machine, 256 to 16384 measured
/// within the noise of each other (12.9k-15.3k confirms/s over 4 channels).
const DEFAULT_WINDOW: usize = 4096;

struct Args {
    mode: String,
    target: Vec<String>,
    seconds: f64,
    warmup: f64,
    window: usize,
    channels: usize,
    partitions: i32,
    body_bytes: usize,
}

fn parse() -> anyhow::Result<Args> {
    let usage = "usage: bare_publish rabbitmq <amqp-uri> <exchange> <seconds> [--window N] [--channels N] \
                 | kafka <brokers> <seconds> [--window N] [--partitions N]; also [--warmup S] [--body-bytes N]";
    let mut positional = Vec::new();
    let mut a = Args {
        mode: String::new(),
        target: Vec::new(),
        seconds: 0.0,
        warmup: 2.0,
        window: DEFAULT_WINDOW,
        channels: 4,
        partitions: 3,
        body_bytes: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if !arg.starts_with("--") {
            positional.push(arg);
            continue;
        }
        let v = it
            .next()
            .with_context(|| format!("{arg} needs a value; {usage}"))?;
        let bad = || format!("{arg} {v}");
        match arg.as_str() {
            "--window" => a.window = v.parse().with_context(bad)?,
            "--channels" => a.channels = v.parse().with_context(bad)?,
            "--partitions" => a.partitions = v.parse().with_context(bad)?,
            "--warmup" => a.warmup = v.parse().with_context(bad)?,
            "--body-bytes" => a.body_bytes = v.parse().with_context(bad)?,
            _ => bail!("unknown flag {arg}; {usage}"),
        }
    }
    let targets = match positional.first().map(String::as_str) {
        Some("rabbitmq") => 2,
        Some("kafka") => 1,
        _ => bail!("{usage}"),
    };
    if positional.len() != targets + 2 || a.window == 0 || a.channels == 0 {
        bail!("{usage}");
    }
    a.mode = positional[0].clone();
    a.target = positional[1..=targets].to_vec();
    a.seconds = positional[targets + 1]
        .parse()
        .with_context(|| format!("seconds {:?}", positional[targets + 1]))?;
    Ok(a)
}

/// A compact JSON event padded to `size` bytes, like the load generator's.
fn body(size: usize) -> Vec<u8> {
    let head = r#"{"event":"message.delivered","timestamp":"2024-01-15T10:30:00Z","data":{"messageId":"bare","pad":""#;
    let tail = r#""},"webhookId":"whk_bench"}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

/// What a run counted; `window_confirmed` only between the warm-up's end and the end.
struct Counts {
    published: u64,
    confirmed: u64,
    window_confirmed: u64,
    failed: u64,
    start_unix: f64,
}

impl Counts {
    /// Nothing counted yet, the clock read now.
    fn starting_now() -> Counts {
        Counts {
            published: 0,
            confirmed: 0,
            window_confirmed: 0,
            failed: 0,
            start_unix: unix_now(),
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let c = match a.mode.as_str() {
        "rabbitmq" => rt.block_on(rabbitmq(&a))?,
        _ => rt.block_on(kafka(&a))?,
    };
    if a.seconds == 0.0 {
        return Ok(());
    }
    println!(
        "{{\"published\":{},\"confirmed\":{},\"failed\":{},\"seconds\":{},\"rate\":{:.0},\"window\":{},\"warmup\":{},\"start_unix\":{:.3}}}",
        c.published,
        c.confirmed,
        c.failed,
        a.seconds,
        c.window_confirmed as f64 / a.seconds,
        a.window,
        a.warmup,
        c.start_unix
    );
    std::io::stdout().flush()?;
    Ok(())
}

async fn rabbitmq(a: &Args) -> anyhow::Result<Counts> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
    use lapin::types::{FieldTable, ShortString};
    use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};

    let (uri, exchange) = (&a.target[0], &a.target[1]);
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let ex = ShortString::try_new(exchange.as_str()).context("exchange name")?;
    ch.exchange_declare(
        ex.clone(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declare exchange {exchange}"))?;
    let mut counts = Counts::starting_now();
    if a.seconds == 0.0 {
        return Ok(counts);
    }
    let mut channels = Vec::with_capacity(a.channels);
    for _ in 0..a.channels {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let keys = TOPICS
        .iter()
        .map(|t| ShortString::try_new(*t).context("routing key"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::try_new("application/json").context("content type")?);
    let opts = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let payload: Arc<[u8]> = body(a.body_bytes).into();
    let start = Instant::now();
    counts.start_unix = unix_now();
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    // Each entry publishes one message and resolves with its confirm: many sends
    // pending at once, so lapin writes them out together.
    let mut in_flight = FuturesUnordered::new();
    loop {
        let now = Instant::now();
        while in_flight.len() < a.window && now < end {
            let n = counts.published as usize;
            let ch = channels[n % channels.len()].clone();
            let (ex, key, props, payload) = (
                ex.clone(),
                keys[n % keys.len()].clone(),
                props.clone(),
                payload.clone(),
            );
            in_flight.push(async move {
                let confirm = ch.basic_publish(ex, key, opts, &payload, props).await?;
                confirm.await
            });
            counts.published += 1;
        }
        match in_flight.next().await {
            None => break,
            Some(Ok(Confirmation::Ack(None))) => {
                counts.confirmed += 1;
                let at = Instant::now();
                if at >= measure_from && at < end {
                    counts.window_confirmed += 1;
                }
            }
            // Nacked or returned (no queue bound): the broker did not take it.
            Some(Ok(_)) => counts.failed += 1,
            Some(Err(e)) => bail!("publish failed after {} confirms: {e}", counts.confirmed),
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(counts)
}

/// Counts delivery reports (on the thread that polls the producer).
struct Reports {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl rdkafka::ClientContext for Reports {}

impl rdkafka::producer::ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

async fn kafka(a: &Args) -> anyhow::Result<Counts> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let brokers = &a.target[0];
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let missing: Vec<_> = TOPICS
        .iter()
        .map(|t| NewTopic::new(t, a.partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&missing, &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("cannot create topic {t}: {e}"),
        }
    }
    // The sink's own producer settings, from the same code, so the comparison is fair.
    let cfg: hookrelay::sink::kafka::KafkaSinkConfig =
        toml::from_str(&format!("brokers = {brokers:?}")).context("kafka settings")?;
    let reports = Reports {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    };
    let producer: BaseProducer<Reports> = cfg.client_config()?.create_with_context(reports)?;
    let mut counts = Counts::starting_now();
    if a.seconds == 0.0 {
        return Ok(counts);
    }
    let payload = body(a.body_bytes);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let mut at_measure_from = None;
    let ok = |p: &BaseProducer<Reports>| p.context().ok.load(Ordering::Relaxed);
    let mut key = String::new();
    let at_end = loop {
        let now = Instant::now();
        if at_measure_from.is_none() && now >= measure_from {
            at_measure_from = Some(ok(&producer));
        }
        if now >= end {
            break ok(&producer);
        }
        if producer.in_flight_count() as usize >= a.window {
            // Serves delivery reports for a millisecond (poll waits out its timeout).
            producer.poll(Duration::from_millis(1));
            continue;
        }
        let n = counts.published as usize;
        key.clear();
        let _ = write!(key, "bare-{n}");
        let record = BaseRecord::to(TOPICS[n % TOPICS.len()])
            .key(key.as_str())
            .payload(&payload[..]);
        match producer.send(record) {
            Ok(()) => counts.published += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("produce failed after {} sent: {e}", counts.published),
        }
        if n.is_multiple_of(64) {
            producer.poll(Duration::ZERO);
        }
    };
    producer
        .flush(Duration::from_secs(120))
        .context("the last delivery reports did not come within 120 s")?;
    let reports = producer.context();
    counts.confirmed = reports.ok.load(Ordering::Relaxed);
    counts.failed = reports.failed.load(Ordering::Relaxed);
    counts.window_confirmed = at_end - at_measure_from.unwrap_or(0);
    counts.start_unix = unix_now() - start.elapsed().as_secs_f64();
    Ok(counts)
}
