//! Publishing to RabbitMQ: persistent messages with publisher confirms, many in
//! flight on each channel (confirms are awaited by the forwarder, never one by one
//! here). Whatever a lost connection left unconfirmed fails as retriable and the
//! forwarder publishes it again (duplicates allowed, losses not).

use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;

use super::config::RabbitmqSinkConfig;
use super::connection::{Broker, long, name, short};
use crate::sink::{BoxFuture, Confirmation, Message, Sink, SinkError, StartError, cloudevents};

pub struct RabbitmqSink {
    cfg: RabbitmqSinkConfig,
    broker: Broker,
}

impl RabbitmqSink {
    /// Connects once at start: refused credentials or a missing exchange (with
    /// `declare = false`) stop startup; an unreachable broker only warns, since the
    /// spool absorbs the outage and the sink keeps reconnecting.
    /// `name` labels its series.
    pub async fn new(name: &str, cfg: &RabbitmqSinkConfig) -> Result<RabbitmqSink, StartError> {
        Ok(RabbitmqSink {
            cfg: cfg.clone(),
            broker: Broker::start(name, cfg).await?,
        })
    }
}

/// The AMQP properties of a message: persistent, its content type, its event id as
/// `message-id`, hookrelay's headers as application headers. An event whose fields
/// do not fit is refused for good (dead-lettered with the reason), never a panic.
pub fn properties(cfg: &RabbitmqSinkConfig, m: &Message) -> Result<BasicProperties, SinkError> {
    let e = &m.event;
    let refuse = |why: String| SinkError::Permanent(why);
    let mut headers = FieldTable::default();
    for (k, v) in m.headers().iter() {
        if k != crate::sink::HEADER_CONTENT_TYPE {
            headers.insert(name(k), long(v));
        }
    }
    if cfg.cloudevents {
        for (k, v) in cloudevents::attributes(e) {
            let key = short(
                "a CloudEvents property name",
                &format!("{}{k}", cfg.cloudevents_prefix),
            )
            .map_err(refuse)?;
            headers.insert(key, long(v.as_bytes()));
        }
    }
    Ok(BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(short("the content type", e.content_type()).map_err(refuse)?)
        .with_message_id(short("the event id", e.id()).map_err(refuse)?)
        .with_timestamp(e.received_at_ns() / 1_000_000_000)
        .with_app_id(name("hookrelay"))
        .with_headers(headers))
}

impl Sink for RabbitmqSink {
    fn publish(&self, batch: Vec<Message>) -> BoxFuture<'_, Vec<Confirmation>> {
        Box::pin(async move {
            self.broker.wait_while_blocked().await;
            let live = match self.broker.channels().await {
                Ok(l) => l,
                Err(e) => {
                    return batch
                        .iter()
                        .map(|_| Box::pin(std::future::ready(Err(e.clone()))) as Confirmation)
                        .collect();
                }
            };
            let timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
            let opts = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            let mut out = Vec::with_capacity(batch.len());
            let failed = |why: String| -> Confirmation {
                Box::pin(std::future::ready(Err(SinkError::Retriable(why))))
            };
            let exchange = match short("the exchange", &self.cfg.exchange) {
                Ok(x) => x,
                Err(why) => {
                    let refused = SinkError::Permanent(why);
                    return batch
                        .iter()
                        .map(|_| Box::pin(std::future::ready(Err(refused.clone()))) as Confirmation)
                        .collect();
                }
            };
            for m in &batch {
                if live.broken.load(Ordering::Relaxed) {
                    // The rest of the batch goes out again on the next connection.
                    out.push(failed("the connection failed earlier in the batch".into()));
                    continue;
                }
                let wire = short("the topic (routing key)", m.event.topic())
                    .map_err(SinkError::Permanent)
                    .and_then(|key| Ok((key, properties(&self.cfg, m)?)));
                let (routing_key, props) = match wire {
                    Ok(w) => w,
                    Err(refused) => {
                        out.push(Box::pin(std::future::ready(Err(refused))) as Confirmation);
                        continue;
                    }
                };
                let i = live.next.fetch_add(1, Ordering::Relaxed) % live.channels.len();
                let published = tokio::time::timeout(
                    timeout,
                    live.channels[i].basic_publish(
                        exchange.clone(),
                        routing_key,
                        opts,
                        m.event.body(),
                        props,
                    ),
                )
                .await;
                let confirm = match published {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        live.broken.store(true, Ordering::Relaxed);
                        out.push(failed(format!("publish failed: {e}")));
                        continue;
                    }
                    Err(_) => {
                        live.broken.store(true, Ordering::Relaxed);
                        out.push(failed(
                            "the connection took no publish within confirm_timeout_ms".into(),
                        ));
                        continue;
                    }
                };
                let live = live.clone();
                let metrics = self.broker.metrics.clone();
                out.push(Box::pin(async move {
                    match tokio::time::timeout(timeout, confirm).await {
                        Ok(Ok(lapin::Confirmation::Ack(None))) => Ok(()),
                        Ok(Ok(lapin::Confirmation::Ack(Some(returned)))) => {
                            metrics.returned();
                            Err(SinkError::Permanent(format!(
                                "unroutable (basic.return {} {})",
                                returned.reply_code, returned.reply_text
                            )))
                        }
                        Ok(Ok(lapin::Confirmation::Nack(_))) => {
                            Err(SinkError::Retriable("broker nacked the message".into()))
                        }
                        Ok(Ok(lapin::Confirmation::NotRequested)) => {
                            live.broken.store(true, Ordering::Relaxed);
                            Err(SinkError::Retriable("channel lost confirm mode".into()))
                        }
                        Ok(Err(e)) => {
                            live.broken.store(true, Ordering::Relaxed);
                            Err(SinkError::Retriable(format!("confirm failed: {e}")))
                        }
                        Err(_) => {
                            live.broken.store(true, Ordering::Relaxed);
                            Err(SinkError::Retriable(
                                "no confirm within confirm_timeout_ms".into(),
                            ))
                        }
                    }
                }) as Confirmation);
            }
            out
        })
    }

    fn ready(&self) -> bool {
        self.broker.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that takes the socket and never answers (one mid-restart can): the
    /// start and every publish give up within `connect_timeout_ms` instead of
    /// holding forwarding up for good.
    #[tokio::test]
    async fn a_broker_that_never_answers_fails_the_connect_in_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let cfg: RabbitmqSinkConfig = toml::from_str(&format!(
            "uri = \"amqp://guest:guest@{addr}/%2f\"\nconnect_timeout_ms = 300\n"
        ))
        .unwrap();
        let sink =
            tokio::time::timeout(Duration::from_secs(5), RabbitmqSink::new("rabbitmq", &cfg))
                .await
                .expect("the start waited on a silent broker")
                .unwrap();
        assert!(!sink.ready());
        let message = Message {
            seq: 0,
            event: std::sync::Arc::new(
                crate::event::EventBuilder::new(0)
                    .id("id0")
                    .key("k")
                    .received_at_ns(0)
                    .body(bytes::Bytes::from_static(b"{}"))
                    .build(),
            ),
            replay: false,
        };
        let confirmations = tokio::time::timeout(
            Duration::from_secs(5),
            sink.publish(vec![message.clone(), message]),
        )
        .await
        .expect("a publish waited on a silent broker");
        assert_eq!(confirmations.len(), 2);
        for c in confirmations {
            assert!(matches!(c.await, Err(SinkError::Retriable(_))));
        }
        // `hookrelay check --connect` too.
        let checked =
            tokio::time::timeout(Duration::from_secs(5), super::super::check_connection(&cfg))
                .await
                .expect("the check waited on a silent broker");
        assert!(
            checked
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("connect_timeout_ms"),
            "{checked:?}"
        );
        silent.abort();
    }
}
