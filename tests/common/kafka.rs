//! A real Kafka-compatible broker (tansu) per test binary, and a consumer to read back.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// A tansu broker on an ephemeral port, stopped on drop.
pub struct Tansu {
    child: Child,
    pub brokers: String,
}

/// Where scripts/tansu.sh puts the binary; `HOOKRELAY_TANSU` overrides.
fn tansu_binary() -> String {
    if let Ok(p) = std::env::var("HOOKRELAY_TANSU") {
        return p;
    }
    let cache = std::env::var("HOOKRELAY_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/hookrelay",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    format!("{cache}/tansu-0.6.0/bin/tansu")
}

impl Tansu {
    pub fn start() -> Tansu {
        let bin = tansu_binary();
        assert!(
            std::path::Path::new(&bin).exists(),
            "no tansu broker at {bin}: run scripts/test.sh (it builds one with scripts/tansu.sh) or set HOOKRELAY_TANSU"
        );
        let (child, port) = super::start_on_free_port("tansu", Duration::from_secs(20), |port| {
            let url = format!("tcp://127.0.0.1:{port}");
            Command::new(&bin)
                .args([
                    "broker",
                    "--storage-engine",
                    "memory://tansu/",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tansu")
        });
        let brokers = format!("127.0.0.1:{port}");
        Tansu { child, brokers }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One consumed record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, Vec<u8>>,
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn header(&self, k: &str) -> String {
        String::from_utf8_lossy(self.headers.get(k).map(Vec::as_slice).unwrap_or_default())
            .into_owned()
    }
}

/// Reads every partition of `topics` from the beginning until `want` records
/// arrived or `within` passed; returns what it read.
pub fn consume(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    want: usize,
    within: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "hookrelay-tests")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    super::eventually_blocking(within, || {
        // Everything there now; a poll that waits in vain ends the round.
        while out.len() < want {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => out.push(record(&m)),
                Some(Err(_)) | None => return None,
            }
        }
        Some(())
    });
    out
}

fn record(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let mut headers = HashMap::new();
    if let Some(h) = m.headers() {
        for i in 0..h.count() {
            let hd = h.get(i);
            headers.insert(hd.key.to_string(), hd.value.unwrap_or_default().to_vec());
        }
    }
    Record {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().unwrap_or_default().to_vec(),
        value: m.payload().unwrap_or_default().to_vec(),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}

/// The `[sinks.kafka]` section pointing at `brokers`, plus `extra` lines.
pub fn sink_section(brokers: &str, extra: &str) -> String {
    format!("[sinks.kafka]\nbrokers = \"{brokers}\"\n{extra}\n")
}
