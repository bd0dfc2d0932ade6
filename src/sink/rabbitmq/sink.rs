//! Publishing to RabbitMQ: persistent messages with publisher confirms, many in
//! flight on each channel (confirms are awaited by the forwarder, never one by one
//! here). Whatever a lost connection left unconfirmed fails as retriable and the
//! forwarder publishes it again (duplicates allowed, losses not).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, PublisherConfirm};

use super::config::RabbitmqSinkConfig;
use super::connection::{Broker, Channels, long, name, short};
use crate::sink::{
    BoxFuture, Confirmation, HEADER_DEAD_LETTER_REASON, HEADER_ORIGINAL_TOPIC, Message, Sink,
    SinkError, StartError, cloudevents,
};

pub struct RabbitmqSink {
    cfg: RabbitmqSinkConfig,
    broker: Arc<Broker>,
}

/// How often the connection is looked at, and a lost one tried again, with nothing
/// to publish: `hookrelay_sink_up` (and `ack = "broker"` readiness) come back with
/// the broker, not with the next event.
const RECONNECT_IDLE_EVERY: Duration = Duration::from_secs(1);

impl RabbitmqSink {
    /// Connects once at start: refused credentials or a missing exchange (with
    /// `declare = false`) stop startup; an unreachable broker only warns, since the
    /// spool absorbs the outage and the sink keeps reconnecting.
    /// `name` labels its series.
    pub async fn new(name: &str, cfg: &RabbitmqSinkConfig) -> Result<RabbitmqSink, StartError> {
        let broker = Arc::new(Broker::start(name, cfg).await?);
        let weak = Arc::downgrade(&broker);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECONNECT_IDLE_EVERY).await;
                // Ends with the sink.
                let Some(broker) = weak.upgrade() else { return };
                // Notices a dead connection lapin did not report, and reconnects
                // (paced by the broker's own backoff); a failure is the next
                // publish's to report.
                let _ = broker.channels().await;
            }
        });
        Ok(RabbitmqSink {
            cfg: cfg.clone(),
            broker,
        })
    }
}

/// The AMQP properties of a message: persistent, its content type, its event id as
/// `message-id`, hookrelay's headers as application headers plus `extra` (a dead
/// letter's reason and topic). An event whose fields do not fit is refused for good
/// (dead-lettered with the reason), never a panic.
pub fn properties(
    cfg: &RabbitmqSinkConfig,
    m: &Message,
    extra: &[(&str, &[u8])],
) -> Result<BasicProperties, SinkError> {
    let e = &m.event;
    let refuse = |why: String| SinkError::Permanent(why);
    let mut headers = FieldTable::default();
    for (k, v) in m.headers().iter() {
        if k != crate::sink::HEADER_CONTENT_TYPE {
            headers.insert(name(k), long(v));
        }
    }
    for (k, v) in extra {
        headers.insert(short("a header name", k).map_err(refuse)?, long(v));
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

/// What a nack means for the message: the events are published again (the broker
/// nacks on an internal error of the queue), a dead letter goes to the file instead.
#[derive(Clone, Copy)]
enum OnNack {
    Retry,
    Refuse,
}

impl RabbitmqSink {
    /// Hands every message of a batch to lapin at once and waits, within
    /// `confirm_timeout_ms` for all of them, until their frames are on the socket:
    /// lapin's I/O thread then writes the batch in one go and wakes this task once,
    /// where handing messages over one at a time took two thread hops and a write
    /// each. Returns, in order, each message's publisher confirm or why it was not
    /// taken; a failure marks the connection broken, so the next publish reconnects.
    async fn hand_over(
        &self,
        live: &Arc<Channels>,
        exchange: &ShortString,
        messages: Vec<(ShortString, &Message, BasicProperties)>,
    ) -> Vec<Result<PublisherConfirm, String>> {
        let timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let n = messages.len();
        let sends = messages.into_iter().map(|(routing_key, m, props)| {
            let i = live.next.fetch_add(1, Ordering::Relaxed) % live.channels.len();
            live.channels[i].basic_publish(
                exchange.clone(),
                routing_key,
                opts,
                m.event.body(),
                props,
            )
        });
        let handed: Vec<Result<PublisherConfirm, String>> =
            match tokio::time::timeout(timeout, futures_util::future::join_all(sends)).await {
                Ok(results) => results
                    .into_iter()
                    .map(|r| r.map_err(|e| format!("publish failed: {e}")))
                    .collect(),
                Err(_) => (0..n)
                    .map(|_| Err("the connection took no publish within confirm_timeout_ms".into()))
                    .collect(),
            };
        if handed.iter().any(Result::is_err) {
            live.broken.store(true, Ordering::Relaxed);
        }
        handed
    }

    /// The confirmation of one message lapin took: acked, returned (unroutable:
    /// refused for good), nacked (`on_nack`), or lost with the connection.
    fn confirmation(
        &self,
        live: &Arc<Channels>,
        confirm: PublisherConfirm,
        on_nack: OnNack,
    ) -> Confirmation {
        let timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
        let live = live.clone();
        let metrics = self.broker.metrics.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, confirm).await {
                Ok(Ok(lapin::Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(lapin::Confirmation::Ack(Some(returned)))) => {
                    metrics.returned();
                    Err(SinkError::Permanent(format!(
                        "unroutable (basic.return {} {})",
                        returned.reply_code, returned.reply_text
                    )))
                }
                Ok(Ok(lapin::Confirmation::Nack(_))) => Err(match on_nack {
                    OnNack::Retry => SinkError::Retriable("broker nacked the message".into()),
                    OnNack::Refuse => SinkError::Permanent("broker nacked the message".into()),
                }),
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
        })
    }
}

fn failed(e: SinkError) -> Confirmation {
    Box::pin(std::future::ready(Err(e)))
}

/// The same failure for every message of a batch none of which can be published.
fn all_failed(batch: &[Message], e: &SinkError) -> Vec<Confirmation> {
    batch.iter().map(|_| failed(e.clone())).collect()
}

impl Sink for RabbitmqSink {
    fn publish(&self, batch: Vec<Message>) -> BoxFuture<'_, Vec<Confirmation>> {
        Box::pin(async move {
            self.broker.wait_while_blocked().await;
            let live = match self.broker.channels().await {
                Ok(l) => l,
                Err(e) => return all_failed(&batch, &e),
            };
            let exchange = match short("the exchange", &self.cfg.exchange) {
                Ok(x) => x,
                Err(why) => return all_failed(&batch, &SinkError::Permanent(why)),
            };
            if live.broken.load(Ordering::Relaxed) {
                // Failed since it was handed out: the batch goes out on the next connection.
                return all_failed(
                    &batch,
                    &SinkError::Retriable("the connection failed".into()),
                );
            }
            // Each message's wire form; `refused` holds, in order, why one can never be
            // published as it is (`None` for those handed over).
            let mut refused = Vec::with_capacity(batch.len());
            let mut sendable = Vec::with_capacity(batch.len());
            for m in &batch {
                let wire = short("the topic (routing key)", m.event.topic())
                    .map_err(SinkError::Permanent)
                    .and_then(|key| Ok((key, properties(&self.cfg, m, &[])?)));
                match wire {
                    Ok((key, props)) => {
                        refused.push(None);
                        sendable.push((key, m, props));
                    }
                    Err(e) => refused.push(Some(e)),
                }
            }
            let mut handed = self.hand_over(&live, &exchange, sendable).await.into_iter();
            refused
                .into_iter()
                .map(|refusal| match refusal {
                    Some(e) => failed(e),
                    None => match handed.next() {
                        Some(Ok(confirm)) => self.confirmation(&live, confirm, OnNack::Retry),
                        Some(Err(why)) => failed(SinkError::Retriable(why)),
                        None => failed(SinkError::Retriable("not handed to lapin".into())),
                    },
                })
                .collect()
        })
    }

    /// To `dead_letter_exchange`, routed by the original topic, with the reason
    /// and the topic as headers. Retriable while the broker is unreachable or
    /// unsure (the forwarder keeps the event and tries again); permanent when the
    /// exchange refuses it (returned, nacked, fields that do not fit), so that the
    /// dead-letter file takes it instead of it holding up the backlog.
    fn dead_letter(
        &self,
        m: Message,
        reason: String,
    ) -> Option<BoxFuture<'_, Result<(), SinkError>>> {
        let dlx = self.cfg.dead_letter_exchange.as_deref()?;
        Some(Box::pin(async move {
            let refuse = SinkError::Permanent;
            let topic = m.event.topic();
            let exchange = short("the dead-letter exchange", dlx).map_err(refuse)?;
            let routing_key = short("the topic (routing key)", topic).map_err(refuse)?;
            let extra: [(&str, &[u8]); 2] = [
                (HEADER_DEAD_LETTER_REASON, reason.as_bytes()),
                (HEADER_ORIGINAL_TOPIC, topic.as_bytes()),
            ];
            let props = properties(&self.cfg, &m, &extra)?;
            self.broker.wait_while_blocked().await;
            let live = self.broker.channels().await?;
            let handed = self
                .hand_over(&live, &exchange, vec![(routing_key, &m, props)])
                .await;
            match handed.into_iter().next() {
                Some(Ok(confirm)) => self.confirmation(&live, confirm, OnNack::Refuse).await,
                Some(Err(why)) => Err(SinkError::Retriable(why)),
                None => Err(SinkError::Retriable("not handed to lapin".into())),
            }
        }))
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
