//! Every metric hookrelay exports, named once, here.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` and
//! `_bytes` units). Label values are bounded: sources come from the config
//! (requests for unknown ones are labelled [`UNKNOWN_SOURCE`]), event types are
//! capped per source ([`EventLabels`]), reasons and statuses are fixed sets.
//! Everything a dashboard or alert reads is registered at zero on startup by
//! [`init`], so no series is absent before its first event.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use metrics::Label;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
pub use metrics_exporter_prometheus::BuildError;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

mod describe;
pub mod process;
use describe::describe;

pub const HTTP_REQUESTS: &str = "hookrelay_http_requests_total";
pub const HTTP_CONNECTION_ERRORS: &str = "hookrelay_http_connection_errors_total";
pub const HTTP_REQUEST_DURATION: &str = "hookrelay_http_request_duration_seconds";
pub const EVENTS: &str = "hookrelay_events_total";
pub const SIGNATURE_FAILURES: &str = "hookrelay_signature_failures_total";
pub const UNVERIFIED_THROTTLED: &str = "hookrelay_unverified_throttled_total";
pub const SPOOL_BYTES: &str = "hookrelay_spool_bytes";
pub const SPOOL_EVENTS: &str = "hookrelay_spool_events";
pub const SPOOL_MAX_BYTES: &str = "hookrelay_spool_max_bytes";
pub const SPOOL_FSYNC_DURATION: &str = "hookrelay_spool_fsync_duration_seconds";
pub const SPOOL_TRUNCATED_BYTES: &str = "hookrelay_spool_truncated_bytes_total";
pub const SPOOL_CORRUPT_RECORDS: &str = "hookrelay_spool_corrupt_records_total";
pub const SPOOL_QUARANTINED_BYTES: &str = "hookrelay_spool_quarantined_bytes_total";
pub const ARCHIVE_BYTES: &str = "hookrelay_archive_bytes";
pub const ARCHIVE_SEGMENTS: &str = "hookrelay_archive_segments";
pub const ARCHIVE_PRUNED_BYTES: &str = "hookrelay_archive_pruned_bytes_total";
pub const SINK_PUBLISHED: &str = "hookrelay_sink_published_total";
pub const SINK_ERRORS: &str = "hookrelay_sink_errors_total";
pub const DEAD_LETTERED: &str = "hookrelay_dead_lettered_total";
pub const DEAD_LETTERS_STORED: &str = "hookrelay_dead_letters_stored";
pub const SINK_PANICS: &str = "hookrelay_sink_panics_total";
pub const FORWARD_LAG: &str = "hookrelay_forward_lag_seconds";
pub const FORWARD_IN_FLIGHT: &str = "hookrelay_forward_in_flight";
pub const SINK_STATE: &str = "hookrelay_sink_state";
pub const END_TO_END: &str = "hookrelay_end_to_end_seconds";
pub const READY: &str = "hookrelay_ready";
pub const SECRET_RELOADS: &str = "hookrelay_secret_reloads_total";
pub const TLS_RELOADS: &str = "hookrelay_tls_reloads_total";
pub const DEDUP_ERRORS: &str = "hookrelay_dedup_errors_total";
pub const SINK_DELIVERY: &str = "hookrelay_sink_delivery_seconds";
pub const SINK_TOPIC_EVENTS: &str = "hookrelay_sink_topic_events_total";
pub const KAFKA_ERRORS: &str = "hookrelay_kafka_errors_total";
pub const KAFKA_QUEUE: &str = "hookrelay_kafka_queue_messages";
pub const RABBITMQ_BLOCKED: &str = "hookrelay_rabbitmq_blocked";
pub const RABBITMQ_RETURNED: &str = "hookrelay_rabbitmq_returned_total";
pub const RABBITMQ_CONNECTS: &str = "hookrelay_rabbitmq_connects_total";
pub const ADMIN_REQUESTS: &str = "hookrelay_admin_requests_total";
pub const SINK_UP: &str = "hookrelay_sink_up";
pub const BUILD_INFO: &str = "hookrelay_build_info";

/// Label value for requests whose path names no configured source.
pub const UNKNOWN_SOURCE: &str = "_unknown";
/// Label value for event types past the per-source cap.
pub const OTHER_EVENT: &str = "_other";
/// Distinct event-type labels per source before they fold into [`OTHER_EVENT`].
pub const MAX_EVENT_LABELS: usize = 64;

/// Statuses the webhook endpoint answers; each gets a zero series per source.
pub const STATUSES: &[u16] = &[200, 400, 401, 403, 404, 405, 408, 413, 429, 500, 502, 503];
/// The request-duration histogram's `class` label. The webhook listener answers
/// nothing in 1xx or 3xx; were it to, those would count as `2xx` (not an error).
pub const STATUS_CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];
/// Outcomes of an event that passed verification.
pub const OUTCOMES: [&str; 3] = ["accepted", "duplicate", "filtered"];
/// Results per topic at a sink.
pub const TOPIC_RESULTS: [&str; 3] = ["published", "retriable", "permanent"];
/// Why a connection ended badly before (or instead of) a request reaching a handler.
pub const CONNECTION_ERRORS: [&str; 8] = [
    "header_timeout",
    "malformed",
    "too_large",
    "incomplete",
    "tls",
    "io",
    "evicted",
    "accept",
];

/// Latency buckets from 100 µs to five minutes, dense between 0.5 and 5 ms where a
/// group-committed 200 lands, so quantiles there are read to a fraction of a ms.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the global recorder; call once per process.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// The exposition text: the recorder's series, then the process's own (read now).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    process::render(&mut text);
    text
}

/// Registers the process-wide series at zero.
pub fn init(sources: &[String], sinks: &[&str], signature_failures: &[&'static str]) {
    for s in sources.iter().map(String::as_str).chain([UNKNOWN_SOURCE]) {
        for status in STATUSES {
            counter!(HTTP_REQUESTS, "source" => s.to_string(), "status" => status.to_string())
                .absolute(0);
        }
        for class in STATUS_CLASSES {
            let _ = histogram!(HTTP_REQUEST_DURATION, "source" => s.to_string(), "class" => class);
        }
    }
    for s in sources {
        for outcome in ["ok", "error"] {
            counter!(SECRET_RELOADS, "source" => s.clone(), "outcome" => outcome).absolute(0);
        }
        for reason in signature_failures {
            counter!(SIGNATURE_FAILURES, "source" => s.clone(), "reason" => *reason).absolute(0);
        }
    }
    for sink in sinks {
        let sink = sink.to_string();
        counter!(SINK_PUBLISHED, "sink" => sink.clone()).absolute(0);
        for kind in ["retriable", "permanent"] {
            counter!(SINK_ERRORS, "sink" => sink.clone(), "kind" => kind).absolute(0);
        }
        counter!(DEAD_LETTERED, "sink" => sink.clone()).absolute(0);
        counter!(SINK_PANICS, "sink" => sink.clone()).absolute(0);
        let _ = histogram!(SINK_DELIVERY, "sink" => sink.clone());
        let _ = histogram!(END_TO_END, "sink" => sink.clone());
    }
    for reason in CONNECTION_ERRORS {
        counter!(HTTP_CONNECTION_ERRORS, "reason" => reason).absolute(0);
    }
    counter!(UNVERIFIED_THROTTLED).absolute(0);
    gauge!(READY).set(0.0);
    gauge!(BUILD_INFO, "version" => crate::VERSION, "commit" => crate::COMMIT).set(1.0);
    for outcome in ["ok", "error"] {
        counter!(TLS_RELOADS, "outcome" => outcome).absolute(0);
    }
    for action in ["accepted", "rejected"] {
        counter!(DEDUP_ERRORS, "action" => action).absolute(0);
    }
}

/// A source's request counters, resolved once so the hot path does no lookups.
#[derive(Clone)]
pub struct RequestMetrics {
    by_status: Arc<HashMap<u16, Counter>>,
    source: Arc<str>,
    /// By status class, indexed as [`STATUS_CLASSES`]: a flood of fast 401s must
    /// not hide a slow accept path.
    durations: Arc<[Histogram; 3]>,
}

impl RequestMetrics {
    pub fn new(source: &str) -> Self {
        let by_status = STATUSES
            .iter()
            .map(|s| {
                let c = counter!(HTTP_REQUESTS, "source" => source.to_string(), "status" => s.to_string());
                (*s, c)
            })
            .collect();
        Self {
            by_status: Arc::new(by_status),
            source: Arc::from(source),
            durations: Arc::new(STATUS_CLASSES.map(
                |class| histogram!(HTTP_REQUEST_DURATION, "source" => source.to_string(), "class" => class),
            )),
        }
    }

    pub fn answered(&self, status: u16, elapsed: Duration) {
        match self.by_status.get(&status) {
            Some(c) => c.increment(1),
            None => counter!(HTTP_REQUESTS, "source" => self.source.to_string(), "status" => status.to_string())
                .increment(1),
        }
        let class = match status {
            ..400 => 0,
            400..500 => 1,
            _ => 2,
        };
        self.durations[class].record(elapsed.as_secs_f64());
    }

    /// One failed signature check; `reason` is one of those given to [`init`].
    pub fn signature_failure(&self, reason: &'static str) {
        counter!(SIGNATURE_FAILURES, "source" => self.source.to_string(), "reason" => reason)
            .increment(1);
    }
}

/// A counter family whose one open-ended label (event type, topic) is capped per
/// owner: a sender with a valid secret must not be able to grow our memory or the
/// Prometheus server's without bound. Past the cap, values fold into [`OTHER_EVENT`].
pub struct CappedCounters {
    metric: &'static str,
    /// Labels every series carries (`source`, or `sink`).
    fixed: Vec<Label>,
    /// The open-ended label.
    label: &'static str,
    /// The closed label and its values (`outcome`, or `result`).
    variant: &'static str,
    variants: &'static [&'static str],
    known: RwLock<HashMap<String, Arc<[Counter]>>>,
}

impl CappedCounters {
    fn new(
        metric: &'static str,
        fixed: Vec<Label>,
        label: &'static str,
        variant: &'static str,
        variants: &'static [&'static str],
    ) -> Self {
        Self {
            metric,
            fixed,
            label,
            variant,
            variants,
            known: RwLock::new(HashMap::new()),
        }
    }

    fn make(&self, value: &str) -> Arc<[Counter]> {
        self.variants
            .iter()
            .map(|v| {
                let mut labels = self.fixed.clone();
                labels.push(Label::new(self.label, value.to_string()));
                labels.push(Label::new(self.variant, *v));
                let c = counter!(self.metric, labels);
                c.absolute(0);
                c
            })
            .collect()
    }

    fn counters(&self, value: &str) -> Arc<[Counter]> {
        if let Some(c) = self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(value)
        {
            return c.clone();
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        let label = if known.len() < MAX_EVENT_LABELS {
            value
        } else {
            OTHER_EVENT
        };
        if let Some(c) = known.get(label) {
            return c.clone();
        }
        let c = self.make(label);
        known.insert(label.to_string(), c.clone());
        c
    }

    /// Counts one; `variant` is one of the family's variants.
    pub fn record(&self, value: &str, variant: &str) {
        if let Some(i) = self.variants.iter().position(|v| *v == variant) {
            self.counters(value)[i].increment(1);
        }
    }
}

/// Per-source event outcomes (`hookrelay_events_total{source, event, outcome}`).
pub struct EventLabels(CappedCounters);

impl EventLabels {
    /// `initial` are the event types registered at zero: the allow-list, or the
    /// scheme's documented types.
    pub fn new<'a>(source: &str, initial: impl IntoIterator<Item = &'a str>) -> Self {
        let family = CappedCounters::new(
            EVENTS,
            vec![Label::new("source", source.to_string())],
            "event",
            "outcome",
            &OUTCOMES,
        );
        for e in initial {
            let _ = family.counters(e);
        }
        Self(family)
    }

    /// Counts one event; `outcome` is one of [`OUTCOMES`].
    pub fn record(&self, event: &str, outcome: &str) {
        self.0.record(event, outcome);
    }
}

pub fn unverified_throttled() {
    counter!(UNVERIFIED_THROTTLED).increment(1);
}

/// One spool's series (`sink` label: a spool is one sink's backlog), resolved
/// once: the forwarder sets the size on every confirmation, and a registry lookup
/// each time cost more than the rest of it.
pub struct SpoolMetrics {
    bytes: Gauge,
    events: Gauge,
    max_bytes: Gauge,
    fsync: Histogram,
    truncated: Counter,
    quarantined: Counter,
    corrupt: Counter,
}

impl SpoolMetrics {
    /// Resolves the handles from the installed recorder (install it first) and
    /// publishes the limit, so dashboards and alerts can show how full it is.
    pub fn register(sink: &str, max_bytes: u64) -> Self {
        let sink = sink.to_string();
        let max = gauge!(SPOOL_MAX_BYTES, "sink" => sink.clone());
        max.set(max_bytes as f64);
        let m = Self {
            max_bytes: max,
            bytes: gauge!(SPOOL_BYTES, "sink" => sink.clone()),
            events: gauge!(SPOOL_EVENTS, "sink" => sink.clone()),
            fsync: histogram!(SPOOL_FSYNC_DURATION, "sink" => sink.clone()),
            truncated: counter!(SPOOL_TRUNCATED_BYTES, "sink" => sink.clone()),
            quarantined: counter!(SPOOL_QUARANTINED_BYTES, "sink" => sink.clone()),
            corrupt: counter!(SPOOL_CORRUPT_RECORDS, "sink" => sink),
        };
        m.truncated.increment(0);
        m.quarantined.increment(0);
        m.corrupt.increment(0);
        m
    }

    pub fn set(&self, bytes: u64, events: u64) {
        self.bytes.set(bytes as f64);
        self.events.set(events as f64);
    }

    pub fn set_max(&self, max_bytes: u64) {
        self.max_bytes.set(max_bytes as f64);
    }

    /// A spool emptied for good (adopted): its gauges read 0 from now on, so no
    /// alert or drain check waits on a backlog that no longer exists.
    pub fn retire(&self) {
        self.set(0, 0);
        self.max_bytes.set(0.0);
    }

    pub fn fsync(&self, elapsed: Duration) {
        self.fsync.record(elapsed.as_secs_f64());
    }

    /// A torn tail cut at opening (never answered 200).
    pub fn truncated(&self, bytes: u64) {
        self.truncated.increment(bytes);
    }

    /// Damage found: `bytes` kept in quarantine, `records` lost in them.
    pub fn quarantined(&self, bytes: u64, records: u64) {
        self.quarantined.increment(bytes);
        self.corrupt.increment(records);
    }
}

/// A sink's archive registered at zero, so that its series exist before the
/// first segment is archived.
pub fn archive_init(sink: &str) {
    counter!(ARCHIVE_PRUNED_BYTES, "sink" => sink.to_string()).increment(0);
    gauge!(ARCHIVE_BYTES, "sink" => sink.to_string()).increment(0.0);
    gauge!(ARCHIVE_SEGMENTS, "sink" => sink.to_string()).increment(0.0);
}

/// A sink's archive as its last prune left it.
pub fn archive_size(sink: &str, bytes: u64, segments: u64) {
    gauge!(ARCHIVE_BYTES, "sink" => sink.to_string()).set(bytes as f64);
    gauge!(ARCHIVE_SEGMENTS, "sink" => sink.to_string()).set(segments as f64);
}

/// Archived bytes of a sink deleted by a prune.
pub fn archive_pruned(sink: &str, bytes: u64) {
    counter!(ARCHIVE_PRUNED_BYTES, "sink" => sink.to_string()).increment(bytes);
}

/// One of [`CONNECTION_ERRORS`]: slow, malformed or oversized clients that hyper
/// answered (400, 431) or cut off itself, which request counters never see.
pub fn connection_error(reason: &'static str) {
    counter!(HTTP_CONNECTION_ERRORS, "reason" => reason).increment(1);
}

/// Forwarder counters for one sink, resolved once.
#[derive(Clone)]
pub struct SinkMetrics {
    published: Counter,
    retriable: Counter,
    permanent: Counter,
    dead_lettered: Counter,
    delivery: Histogram,
    end_to_end: Histogram,
    /// Published and failed per topic (capped labels).
    topics: Arc<CappedCounters>,
}

impl SinkMetrics {
    pub fn new(sink: &str) -> Self {
        let sink = sink.to_string();
        Self {
            published: counter!(SINK_PUBLISHED, "sink" => sink.clone()),
            retriable: counter!(SINK_ERRORS, "sink" => sink.clone(), "kind" => "retriable"),
            permanent: counter!(SINK_ERRORS, "sink" => sink.clone(), "kind" => "permanent"),
            dead_lettered: counter!(DEAD_LETTERED, "sink" => sink.clone()),
            delivery: histogram!(SINK_DELIVERY, "sink" => sink.clone()),
            end_to_end: histogram!(END_TO_END, "sink" => sink.clone()),
            topics: Arc::new(CappedCounters::new(
                SINK_TOPIC_EVENTS,
                vec![Label::new("sink", sink)],
                "topic",
                "result",
                &TOPIC_RESULTS,
            )),
        }
    }

    /// One event confirmed: `delivery` since it was handed to the sink,
    /// `end_to_end` since it was received.
    pub fn published(&self, topic: &str, delivery: Duration, end_to_end: Duration) {
        self.published.increment(1);
        self.topics.record(topic, "published");
        self.delivery.record(delivery.as_secs_f64());
        self.end_to_end.record(end_to_end.as_secs_f64());
    }
    /// Registers a topic's series at zero (topics known from the config).
    pub fn register_topic(&self, topic: &str) {
        let _ = self.topics.counters(topic);
    }

    pub fn retriable_error(&self, topic: &str) {
        self.retriable.increment(1);
        self.topics.record(topic, "retriable");
    }
    pub fn permanent_error(&self, topic: &str) {
        self.permanent.increment(1);
        self.topics.record(topic, "permanent");
    }
    pub fn dead_lettered(&self) {
        self.dead_lettered.increment(1);
    }
}

/// An event dead-lettered without reaching its sink's forwarder: spooled for a
/// sink (or from a source) since removed from the config.
pub fn dead_lettered(sink: &str, events: u64) {
    counter!(DEAD_LETTERED, "sink" => sink.to_string()).increment(events);
}

/// Dead letters kept now: the counter above only grows, this falls as they are removed.
pub fn dead_letters_stored(entries: u64) {
    gauge!(DEAD_LETTERS_STORED).set(entries as f64);
}

/// Whether a sink's broker answers now (see [`SINK_UP`]'s description).
pub fn sink_up(sink: &str, up: bool) {
    gauge!(SINK_UP, "sink" => sink.to_string()).set(if up { 1.0 } else { 0.0 });
}

/// One admin API call answered. `action` is one of a fixed set (the routes).
pub fn admin_request(action: &'static str, status: u16) {
    counter!(ADMIN_REQUESTS, "action" => action, "status" => status.to_string()).increment(1);
}

pub fn sink_panic(sink: &str) {
    counter!(SINK_PANICS, "sink" => sink.to_string()).increment(1);
}

/// What a sink's forwarder is doing, one of [`SINK_STATES`] at a time.
pub const SINK_STATES: [&str; 4] = ["delivering", "retrying", "full", "paused"];

/// A sink's forwarder gauges: oldest unconfirmed event's age, in flight, state.
#[derive(Clone)]
pub struct ForwardMetrics {
    lag: Gauge,
    in_flight: Gauge,
    states: [Gauge; 4],
}

impl ForwardMetrics {
    pub fn new(sink: &str) -> Self {
        let sink = sink.to_string();
        Self {
            lag: gauge!(FORWARD_LAG, "sink" => sink.clone()),
            in_flight: gauge!(FORWARD_IN_FLIGHT, "sink" => sink.clone()),
            states: SINK_STATES.map(|st| gauge!(SINK_STATE, "sink" => sink.clone(), "state" => st)),
        }
    }

    /// `state` is one of [`SINK_STATES`].
    pub fn set(&self, lag: Duration, in_flight: usize, state: &str) {
        self.lag.set(lag.as_secs_f64());
        self.in_flight.set(in_flight as f64);
        for (g, st) in self.states.iter().zip(SINK_STATES) {
            g.set(if st == state { 1.0 } else { 0.0 });
        }
    }
}

/// A Kafka sink's own series (`sink` label: two clusters are two sinks).
#[derive(Clone)]
pub struct KafkaMetrics {
    sink: Arc<str>,
    queue: Gauge,
}

impl KafkaMetrics {
    /// Registers the series at zero (the sink's constructor calls this).
    pub fn new(sink: &str) -> Self {
        let queue = gauge!(KAFKA_QUEUE, "sink" => sink.to_string());
        queue.set(0.0);
        Self {
            sink: sink.into(),
            queue,
        }
    }

    /// A Kafka error by librdkafka code name (a fixed enum: bounded labels).
    pub fn error(&self, code: &str) {
        counter!(KAFKA_ERRORS, "sink" => self.sink.to_string(), "code" => code.to_string())
            .increment(1);
    }

    pub fn queue(&self, messages: u64) {
        self.queue.set(messages as f64);
    }
}

/// A RabbitMQ sink's own series (`sink` label).
#[derive(Clone)]
pub struct RabbitmqMetrics {
    blocked: Gauge,
    returned: Counter,
    connects: Counter,
}

impl RabbitmqMetrics {
    /// Registers the series at zero (the sink's constructor calls this).
    pub fn new(sink: &str) -> Self {
        let m = Self {
            blocked: gauge!(RABBITMQ_BLOCKED, "sink" => sink.to_string()),
            returned: counter!(RABBITMQ_RETURNED, "sink" => sink.to_string()),
            connects: counter!(RABBITMQ_CONNECTS, "sink" => sink.to_string()),
        };
        m.blocked.set(0.0);
        m.returned.increment(0);
        m.connects.increment(0);
        m
    }

    pub fn blocked(&self, blocked: bool) {
        self.blocked.set(if blocked { 1.0 } else { 0.0 });
    }

    pub fn returned(&self) {
        self.returned.increment(1);
    }

    pub fn connected_again(&self) {
        self.connects.increment(1);
    }
}

pub fn tls_reload(ok: bool) {
    counter!(TLS_RELOADS, "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn secret_reload(source: &str, ok: bool) {
    counter!(SECRET_RELOADS, "source" => source.to_string(), "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

/// The shared dedup store failed; `accepted` says whether the event went through anyway.
pub fn dedup_error(accepted: bool) {
    counter!(DEDUP_ERRORS, "action" => if accepted { "accepted" } else { "rejected" }).increment(1);
}

pub fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// Keeps a handle's histograms bounded; run every few seconds.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_labels_are_capped() {
        let labels = EventLabels::new("s", ["a"]);
        for i in 0..1000 {
            labels.record(&format!("type.{i}"), "accepted");
        }
        let known = labels.0.known.read().unwrap();
        assert_eq!(known.len(), MAX_EVENT_LABELS + 1);
        assert!(known.contains_key("a") && known.contains_key(OTHER_EVENT));
    }
}
