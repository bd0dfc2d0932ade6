//! What librdkafka says, counted and said once per interval. With the cluster
//! unreachable librdkafka reports every failed connect twice (a log line and the
//! error callback), for every broker, several times a second: 224 lines in 5 s
//! buried everything else in the log. Every error is counted by kind in
//! `hookrelay_kafka_errors_total`; the log gets one line per kind per
//! [`LOG_EVERY`], carrying how many of that kind were held back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

use crate::metrics::KafkaMetrics;

/// At most one log line per kind (facility, or error code) this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Kinds tracked at once: facilities and codes are fixed sets far below this,
/// but the map must not grow on what a broker sends.
const MAX_KINDS: usize = 256;

/// The client context of every Kafka client the sink makes.
pub struct Context {
    sink: Arc<str>,
    metrics: Option<KafkaMetrics>,
    /// Per kind: when a line was last let through, and how many were held back since.
    said: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Context {
    /// `metrics` is `None` for `check --connect`, which exports none.
    pub fn new(sink: &str, metrics: Option<KafkaMetrics>) -> Context {
        Context {
            sink: sink.into(),
            metrics,
            said: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held back since the last line)` when a line of this kind may go out.
    fn allow(&self, kind: &str) -> Option<u64> {
        let now = Instant::now();
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        let full = said.len() >= MAX_KINDS;
        match said.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < LOG_EVERY => {
                *held += 1;
                None
            }
            Some(entry) => {
                let held = entry.1;
                *entry = (now, 0);
                Some(held)
            }
            None if full => None,
            None => {
                said.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // Debug lines are asked for (librdkafka's `debug` property): all of them.
        let suppressed = if matches!(level, RDKafkaLogLevel::Debug) {
            0
        } else {
            // By level too: a flood of info lines must not hide an error line.
            match self.allow(&format!("log:{}:{fac}", level as i32)) {
                Some(held) => held,
                None => return,
            }
        };
        let sink = &*self.sink;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(sink, facility = fac, suppressed, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(sink, facility = fac, suppressed, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(sink, facility = fac, suppressed, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(sink, facility = fac, suppressed, "librdkafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "Other".to_string(), |c| format!("{c:?}"));
        if let Some(m) = &self.metrics {
            m.error(&code);
        }
        if let Some(suppressed) = self.allow(&format!("error:{code}")) {
            tracing::warn!(
                sink = &*self.sink,
                code,
                suppressed,
                "kafka client error (counted in hookrelay_kafka_errors_total; one line per kind every 10 s): {reason}"
            );
        }
    }
}

/// For `check --connect`'s `BaseProducer`, which sends nothing.
impl rdkafka::producer::ProducerContext for Context {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval() {
        let c = Context::new("k", None);
        assert_eq!(c.allow("log:FAIL"), Some(0));
        assert_eq!(c.allow("log:FAIL"), None);
        assert_eq!(c.allow("log:FAIL"), None);
        // Another kind is not held back by the first.
        assert_eq!(c.allow("error:AllBrokersDown"), Some(0));
        // Once the interval has passed, the next line carries the count.
        c.said.lock().unwrap().get_mut("log:FAIL").unwrap().0 -= LOG_EVERY;
        assert_eq!(c.allow("log:FAIL"), Some(2));
    }

    #[test]
    fn the_kinds_tracked_are_capped() {
        let c = Context::new("k", None);
        for i in 0..MAX_KINDS {
            assert_eq!(c.allow(&format!("log:{i}")), Some(0));
        }
        assert_eq!(c.allow("log:one-more"), None);
        assert_eq!(c.said.lock().unwrap().len(), MAX_KINDS);
    }
}
