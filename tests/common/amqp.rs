//! Helpers for reading back from the machine's real RabbitMQ (127.0.0.1:5672).

use std::cell::RefCell;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A name no other test (or run) uses, so tests can run in parallel.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), fastrand::u64(..))
}

pub async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(URI, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ on 127.0.0.1:5672 (guest/guest)");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// Declares `queue` (durable when asked) and binds it to `exchange` with `pattern`.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, pattern: &str, durable: bool) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue_declare");
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue_bind");
}

/// One message as consumed.
#[derive(Debug, Clone)]
pub struct Got {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Got {
    pub fn header(&self, k: &str) -> String {
        let Some(h) = self.properties.headers() else {
            return String::new();
        };
        match h.inner().get(k) {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                String::from_utf8_lossy(s.as_bytes()).into_owned()
            }
            Some(other) => format!("{other:?}"),
            None => String::new(),
        }
    }
}

/// Takes messages off `queue` until `want` arrived or `within` passed; returns
/// what it took (never more than `want`).
pub async fn drain(ch: &Channel, queue: &str, want: usize, within: Duration) -> Vec<Got> {
    let out = &RefCell::new(Vec::new());
    super::eventually(within, || async move {
        // Everything there now, then a pause only when the queue is empty.
        while out.borrow().len() < want {
            match ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
            {
                Ok(Some(m)) => out.borrow_mut().push(Got {
                    routing_key: m.delivery.routing_key.to_string(),
                    body: m.delivery.data.clone(),
                    properties: m.delivery.properties.clone(),
                }),
                Ok(None) => return None,
                Err(e) => panic!("basic_get {queue}: {e}"),
            }
        }
        Some(())
    })
    .await;
    out.take()
}

/// Removes what a test declared: its queues, its exchange and the unroutable pair.
pub async fn cleanup(exchange: &str, queues: &[&str]) {
    let (conn, ch) = channel().await;
    for q in queues
        .iter()
        .copied()
        .chain([format!("{exchange}.unroutable").as_str()])
    {
        let _ = ch
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
    for ex in [exchange.to_string(), format!("{exchange}.unroutable")] {
        let _ = ch
            .exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Removes fanout exchanges declared with a queue of the same name (the sink's
/// dead-letter exchange), or by a test.
pub async fn cleanup_fanouts(names: &[&str]) {
    let (conn, ch) = channel().await;
    for name in names {
        let _ = ch
            .queue_delete((*name).into(), QueueDeleteOptions::default())
            .await;
        let _ = ch
            .exchange_delete((*name).into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// The `[sinks.rabbitmq]` section for `exchange`, plus `extra` lines.
pub fn sink_section(exchange: &str, extra: &str) -> String {
    format!("[sinks.rabbitmq]\nuri = \"{URI}\"\nexchange = \"{exchange}\"\n{extra}\n")
}
