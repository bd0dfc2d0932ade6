//! The benchmark's downstream subscriber: counts what actually arrives on the
//! broker, so the end-to-end cases report a delivered rate a service would see,
//! not just what the broker confirmed to hookrelay.
//!
//! It prints `ready` once it is subscribed (before the load starts), then a line
//! `<unix seconds> <messages so far>` every 100 ms, until its stdin closes.
//!
//! `cargo run --release --example bench_consumer -- rabbitmq <uri> <exchange> <queue>`
//! binds a durable queue to the exchange with `#` (the exchange is hookrelay's; the
//! consumer waits for it to exist) and consumes with automatic acks.
//!
//! `cargo run --release --example bench_consumer -- kafka <brokers> <partitions> <topic>...`
//! creates the topics if missing (as hookrelay's `create_topics` would) and reads
//! every partition from the beginning, without a consumer group.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = Arc::new(AtomicU64::new(0));
    // Lives until exit: the RabbitMQ consumer runs on it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("rabbitmq") if args.len() == 4 => {
            let mut consumer = rt.block_on(rabbitmq(&args[1], &args[2], &args[3]))?;
            let count = count.clone();
            rt.spawn(async move {
                while let Some(delivery) = consumer.next().await {
                    if let Err(e) = delivery {
                        eprintln!("bench_consumer: {e}");
                        break;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Some("kafka") if args.len() >= 4 => {
            rt.block_on(kafka(&args[1], args[2].parse()?, &args[3..], &count))?
        }
        _ => bail!(
            "usage: bench_consumer rabbitmq <uri> <exchange> <queue> | kafka <brokers> <partitions> <topic>..."
        ),
    }
    println!("ready");
    std::io::stdout().flush()?;
    // Stop when the harness closes stdin.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        println!("{now:.3} {}", count.load(Ordering::Relaxed));
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Subscribes; the messages are counted by the caller.
async fn rabbitmq(uri: &str, exchange: &str, queue: &str) -> anyhow::Result<lapin::Consumer> {
    use lapin::options::{
        BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties, ExchangeKind};

    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;
    // hookrelay declares the exchange when it connects; a passive declare fails
    // (and closes the channel) until then.
    let mut waited = 0;
    let ch = loop {
        let ch = conn.create_channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if ch
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok()
        {
            break ch;
        }
        waited += 1;
        if waited > 300 {
            bail!("exchange {exchange} did not appear within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = ch
        .basic_consume(queue.into(), "bench".into(), no_ack, FieldTable::default())
        .await?;
    // The connection must outlive the consumer: closing it on drop would end the stream.
    std::mem::forget(conn);
    Ok(consumer)
}

/// Assigns every partition and counts on a thread of its own.
async fn kafka(
    brokers: &str,
    partitions: i32,
    topics: &[String],
    count: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "hookrelay-bench")
        .set("enable.auto.commit", "false")
        .create()?;
    // The mock cluster's topics exist already (and it does not serve CreateTopics).
    let mut missing = Vec::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10))?;
        if md
            .topics()
            .iter()
            .all(|m| m.error().is_some() || m.partitions().is_empty())
        {
            missing.push(NewTopic::new(t, partitions, TopicReplication::Fixed(1)));
        }
    }
    if !missing.is_empty() {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.create_topics(&missing, &opts).await? {
            if let Err((t, e)) = r {
                bail!("cannot create topic {t}: {e}");
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let count = count.clone();
    std::thread::spawn(move || {
        loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => eprintln!("bench_consumer: {e}"),
                None => {}
            }
        }
    });
    Ok(())
}
