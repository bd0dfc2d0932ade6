//! The Kafka sink's pipeline: topic creation, enqueueing with backpressure,
//! delivery reports turned into confirmations, and error classification.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use tokio::sync::Mutex;

use super::config::KafkaSinkConfig;
use super::context::Context;
use crate::metrics;
use crate::sink::{
    Confirmation, HEADER_DEAD_LETTER_REASON, HEADER_ORIGINAL_TOPIC, Message, Sink, SinkError,
    StartError, cloudevents,
};

/// How often reachability and the producer queue depth are sampled.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Every client the sink makes counts and quiets what librdkafka reports (`context`).
type SinkProducer = FutureProducer<Context>;
type ProducerSlot = Arc<std::sync::RwLock<SinkProducer>>;

fn current(p: &ProducerSlot) -> SinkProducer {
    p.read().unwrap_or_else(|e| e.into_inner()).clone()
}

pub struct KafkaSink {
    /// Replaced when librdkafka reports a fatal error (an idempotent producer
    /// that lost its sequence state cannot be used again).
    producer: ProducerSlot,
    client: rdkafka::ClientConfig,
    /// Present only with `create_topics = true`.
    admin: Option<AdminClient<Context>>,
    cfg: KafkaSinkConfig,
    /// Topics created (or found to exist) by us: created once per name.
    known_topics: Mutex<HashSet<String>>,
    /// Last metadata probe succeeded: readiness in `ack = "broker"` mode.
    reachable: Arc<AtomicBool>,
    metrics: metrics::KafkaMetrics,
    /// The `sink` label, for the contexts of producers made later.
    name: String,
}

impl KafkaSink {
    /// Builds the producer (no network yet) and starts the health probe.
    /// `name` labels its series.
    pub fn new(name: &str, cfg: &KafkaSinkConfig) -> Result<KafkaSink, StartError> {
        cfg.validate()?;
        let client = cfg.client_config()?;
        let metrics = metrics::KafkaMetrics::new(name);
        let context = || Context::new(name, Some(metrics.clone()));
        let producer: SinkProducer = client.create_with_context(context()).map_err(|e| {
            StartError::Broker(format!("sinks.kafka: cannot create the producer: {e}"))
        })?;
        let admin = if cfg.create_topics {
            Some(client.create_with_context(context()).map_err(|e| {
                StartError::Broker(format!("sinks.kafka: cannot create the admin client: {e}"))
            })?)
        } else {
            None
        };
        let reachable = Arc::new(AtomicBool::new(false));
        let producer: ProducerSlot = Arc::new(std::sync::RwLock::new(producer));
        spawn_health_probe(producer.clone(), reachable.clone(), metrics.clone());
        let client = client.clone();
        Ok(KafkaSink {
            producer,
            client,
            admin,
            cfg: cfg.clone(),
            known_topics: Mutex::new(HashSet::new()),
            reachable,
            metrics,
            name: name.to_string(),
        })
    }

    async fn ensure_topic(&self, topic: &str) -> Result<(), SinkError> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let mut known = self.known_topics.lock().await;
        if known.contains(topic) {
            return Ok(());
        }
        let is_dlq = self.cfg.dlq_topic.as_deref() == Some(topic);
        let counted = known
            .iter()
            .filter(|t| self.cfg.dlq_topic.as_deref() != Some(t.as_str()))
            .count();
        if !is_dlq && counted >= self.cfg.max_topics {
            return Err(SinkError::Permanent(format!(
                "the kafka sink created or found {counted} topics, its cap (sinks.kafka.max_topics): topic {topic} is not created"
            )));
        }
        let new = NewTopic::new(
            topic,
            self.cfg.topic_partitions,
            TopicReplication::Fixed(self.cfg.topic_replication),
        );
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| self.classify(&e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    self.metrics.error(&format!("{code:?}"));
                    let msg = format!("cannot create topic {topic}: {code}");
                    return Err(match code {
                        RDKafkaErrorCode::InvalidTopic
                        | RDKafkaErrorCode::PolicyViolation
                        | RDKafkaErrorCode::TopicAuthorizationFailed => SinkError::Permanent(msg),
                        _ => SinkError::Retriable(msg),
                    });
                }
            }
        }
        tracing::info!(topic, "kafka topic ready");
        known.insert(topic.to_string());
        Ok(())
    }

    fn headers(&self, m: &Message, extra: &[(&str, &[u8])]) -> OwnedHeaders {
        headers(self.cfg.cloudevents, m, extra)
    }

    fn producer(&self) -> SinkProducer {
        current(&self.producer)
    }

    /// After a fatal error the producer is dead: build a new one. Messages it held
    /// fail as retriable and the forwarder sends them again through the new one.
    fn replace_if_fatal(&self) {
        if self.producer().client().fatal_error().is_none() {
            return;
        }
        let mut guard = self.producer.write().unwrap_or_else(|p| p.into_inner());
        let Some((code, reason)) = guard.client().fatal_error() else {
            return;
        };
        let context = Context::new(&self.name, Some(self.metrics.clone()));
        match self.client.create_with_context::<_, SinkProducer>(context) {
            Ok(fresh) => {
                tracing::error!(?code, %reason, "kafka producer hit a fatal error; replaced it");
                *guard = fresh;
            }
            Err(e) => {
                tracing::error!(?code, %reason, error = %e, "kafka producer hit a fatal error and cannot be replaced")
            }
        }
    }

    /// Enqueues one message, waiting while librdkafka's queue is full.
    async fn send(&self, topic: &str, m: &Message, extra: &[(&str, &[u8])]) -> Confirmation {
        let timestamp_ms = (m.event.received_at_ns() / 1_000_000) as i64;
        loop {
            let record = FutureRecord::to(topic)
                .key(m.event.key().as_bytes())
                .payload(&m.event.body()[..])
                .timestamp(timestamp_ms)
                .headers(self.headers(m, extra));
            match self.producer().send_result(record) {
                Ok(delivery) => {
                    let create_topics = self.cfg.create_topics;
                    let metrics = self.metrics.clone();
                    return Box::pin(async move {
                        match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(classify(&e, create_topics, Some(&metrics))),
                            Err(_) => Err(SinkError::Retriable(
                                "kafka producer dropped the message".into(),
                            )),
                        }
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
                        self.replace_if_fatal();
                    }
                    let err = self.classify(&e);
                    return Box::pin(std::future::ready(Err(err)));
                }
            }
        }
    }

    fn classify(&self, e: &KafkaError) -> SinkError {
        classify(e, self.cfg.create_topics, Some(&self.metrics))
    }
}

/// The Kafka headers of a message: hookrelay's, the CloudEvents attributes when
/// asked for, and `extra` (the dead-letter reason and topic).
pub fn headers(cloudevents: bool, m: &Message, extra: &[(&str, &[u8])]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(12);
    for (k, v) in m.headers().iter() {
        h = h.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    if cloudevents {
        for (k, v) in cloudevents::attributes(&m.event) {
            h = h.insert(Header {
                key: &format!("ce_{k}"),
                value: Some(v.as_bytes()),
            });
        }
    }
    for (k, v) in extra {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    h
}

/// Permanent: this event can never be written as it is. Everything else is
/// retried from the spool (broker down, leader moving, timeouts, throttling).
fn classify(
    e: &KafkaError,
    create_topics: bool,
    metrics: Option<&metrics::KafkaMetrics>,
) -> SinkError {
    use RDKafkaErrorCode::*;
    let code = e.rdkafka_error_code();
    if let (Some(c), Some(m)) = (code, metrics) {
        m.error(&format!("{c:?}"));
    }
    let permanent = match code {
        Some(
            MessageSizeTooLarge
            | InvalidMessageSize
            | MessageBatchTooLarge
            | InvalidRecord
            | TopicAuthorizationFailed
            | InvalidTopic
            | PolicyViolation,
        ) => true,
        Some(UnknownTopicOrPartition | UnknownTopic | UnknownPartition) => !create_topics,
        _ => false,
    };
    if permanent {
        SinkError::Permanent(e.to_string())
    } else {
        SinkError::Retriable(e.to_string())
    }
}

impl Sink for KafkaSink {
    fn publish(
        &self,
        batch: Vec<Message>,
    ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
        Box::pin(async move {
            self.replace_if_fatal();
            let mut out = Vec::with_capacity(batch.len());
            for m in &batch {
                if let Err(e) = self.ensure_topic(m.event.topic()).await {
                    out.push(Box::pin(std::future::ready(Err(e))) as Confirmation);
                    continue;
                }
                out.push(self.send(m.event.topic(), m, &[]).await);
            }
            out
        })
    }

    fn dead_letter(
        &self,
        m: Message,
        reason: String,
    ) -> Option<crate::sink::BoxFuture<'_, Result<(), SinkError>>> {
        let dlq = self.cfg.dlq_topic.clone()?;
        Some(Box::pin(async move {
            self.ensure_topic(&dlq).await?;
            let extra: [(&str, &[u8]); 2] = [
                (HEADER_DEAD_LETTER_REASON, reason.as_bytes()),
                (HEADER_ORIGINAL_TOPIC, m.event.topic().as_bytes()),
            ];
            self.send(&dlq, &m, &extra).await.await
        }))
    }

    fn ready(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn flush(&self, timeout: Duration) -> crate::sink::BoxFuture<'_, ()> {
        let producer = self.producer();
        Box::pin(async move {
            let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "kafka flush did not complete within the drain deadline");
            }
        })
    }
}

fn spawn_health_probe(
    producer: ProducerSlot,
    reachable: Arc<AtomicBool>,
    metrics: metrics::KafkaMetrics,
) {
    tokio::spawn(async move {
        let mut was = None;
        loop {
            let p = current(&producer);
            let probe = tokio::task::spawn_blocking(move || {
                let md = p.client().fetch_metadata(None, Duration::from_secs(2));
                (md.map(|m| m.brokers().len()), p.in_flight_count())
            })
            .await;
            let (ok, queued) = match probe {
                Ok((Ok(brokers), queued)) => (brokers > 0, queued),
                Ok((Err(e), queued)) => {
                    if was != Some(false) {
                        tracing::warn!(error = %e, "kafka cluster unreachable");
                    }
                    (false, queued)
                }
                Err(_) => (false, 0),
            };
            if ok && was == Some(false) {
                tracing::info!("kafka cluster reachable again");
            }
            was = Some(ok);
            reachable.store(ok, Ordering::Relaxed);
            metrics.queue(queued.max(0) as u64);
            tokio::time::sleep(HEALTH_EVERY).await;
        }
    });
}

/// `hookrelay check --connect`: fetches cluster metadata or says why it cannot.
pub fn check_connection(cfg: &KafkaSinkConfig) -> Result<String, StartError> {
    cfg.validate()?;
    let client = cfg.client_config()?;
    let producer: BaseProducer<Context> = client
        .create_with_context(Context::new("check", None))
        .map_err(|e| {
        StartError::Broker(format!("sinks.kafka: cannot create the producer: {e}"))
    })?;
    let md = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| {
            StartError::Broker(format!("sinks.kafka: cannot reach {}: {e}", cfg.brokers))
        })?;
    let brokers: Vec<String> = md
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect();
    Ok(format!(
        "kafka: connected to {} broker(s) ({}), {} topic(s) visible",
        brokers.len(),
        brokers.join(", "),
        md.topics().len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge), false, None),
            SinkError::Permanent(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed), true, None),
            SinkError::Permanent(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::UnknownTopic), false, None),
            SinkError::Permanent(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::UnknownTopic), true, None),
            SinkError::Retriable(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::MessageTimedOut), false, None),
            SinkError::Retriable(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::AllBrokersDown), false, None),
            SinkError::Retriable(_)
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::NotLeaderForPartition), false, None),
            SinkError::Retriable(_)
        ));
    }
}
