//! The help text of every metric, registered once at install.

use metrics::{describe_counter, describe_gauge, describe_histogram};

use super::*;

pub(super) fn describe() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; its labels say which release and commit this process runs."
    );
    describe_gauge!(
        SINK_UP,
        "1 while the sink's broker answers (Kafka: a metadata request every 2 s; RabbitMQ: connected and not blocked; NATS: connected; a file sink: always), 0 otherwise; refreshed every second, backlog or not."
    );
    describe_counter!(
        ADMIN_REQUESTS,
        "Admin API calls (/admin/ on the admin listener) by action and HTTP status; 401s are wrong or missing tokens."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "Webhook requests answered, by source and HTTP status."
    );
    describe_counter!(
        HTTP_CONNECTION_ERRORS,
        "Connections cut off or refused before a handler: header timeout (or no request head at all), malformed, too large, incomplete, TLS, I/O, evicted (the idlest, closed to make room at max_connections), accept (the accept itself failed, e.g. out of file descriptors)."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        "Time from request to answer (the provider's wait)."
    );
    describe_counter!(
        EVENTS,
        "Verified events by outcome: accepted, duplicate, filtered."
    );
    describe_counter!(
        SIGNATURE_FAILURES,
        "Requests whose signature failed, by reason (401, or 429 past the address's budget)."
    );
    describe_counter!(
        UNVERIFIED_THROTTLED,
        "Failed signatures answered 429: their client address spent its server.unverified_rate_limit."
    );
    describe_gauge!(
        SPOOL_BYTES,
        "Bytes of a sink's spool segments on disk (its backlog, by sink)."
    );
    describe_gauge!(
        SPOOL_MAX_BYTES,
        "A sink's backlog budget (sinks.NAME.backlog_max_bytes): at this size, sources routed to it get 503."
    );
    describe_gauge!(
        SPOOL_EVENTS,
        "Events in a sink's spool not yet confirmed by it."
    );
    describe_histogram!(
        SPOOL_FSYNC_DURATION,
        "fdatasync of one group-committed batch."
    );
    describe_counter!(
        SPOOL_TRUNCATED_BYTES,
        "Bytes cut from a torn spool tail on start (never synced, so never answered 200)."
    );
    describe_counter!(
        SPOOL_CORRUPT_RECORDS,
        "Acknowledged records lost to damage in the spool (their bytes are in quarantine/)."
    );
    describe_counter!(
        SPOOL_QUARANTINED_BYTES,
        "Damaged spool bytes copied to quarantine/ and skipped; delivery goes on after them."
    );
    describe_gauge!(
        ARCHIVE_BYTES,
        "Bytes of a sink's archive (confirmed spool segments kept for replay; [archive])."
    );
    describe_gauge!(ARCHIVE_SEGMENTS, "Segments in a sink's archive.");
    describe_counter!(
        ARCHIVE_PRUNED_BYTES,
        "Archived bytes deleted, past archive.retention_hours or to fit archive.max_bytes (oldest first, over every sink)."
    );
    describe_counter!(SINK_PUBLISHED, "Events confirmed by a sink.");
    describe_counter!(
        SINK_ERRORS,
        "Sink failures by kind: retriable (retried) or permanent (dead-lettered)."
    );
    describe_counter!(DEAD_LETTERED, "Events written to the dead-letter file.");
    describe_gauge!(
        DEAD_LETTERS_STORED,
        "Events in the dead-letter file not yet removed (redriven or discarded) through the admin API."
    );
    describe_counter!(
        SINK_PANICS,
        "Events a sink panicked on (a bug): each is dead-lettered with the panic as its reason, and delivery goes on."
    );
    describe_gauge!(
        FORWARD_LAG,
        "Age of the oldest event handed to a sink and not yet confirmed by it."
    );
    describe_gauge!(
        FORWARD_IN_FLIGHT,
        "Events handed to a sink and awaiting confirmation."
    );
    describe_gauge!(
        SINK_STATE,
        "1 for what a sink's forwarder is doing: delivering, retrying (failures being retried) or full (its backlog budget is spent: sources routed to it get 503)."
    );
    describe_histogram!(END_TO_END, "From receipt to sink confirmation.");
    describe_counter!(
        SINK_TOPIC_EVENTS,
        "Events per sink and topic by result: published, retriable, permanent (topic labels capped)."
    );
    describe_gauge!(READY, "1 while /readyz answers 200.");
    describe_counter!(
        TLS_RELOADS,
        "TLS certificate reloads by outcome (ok, error)."
    );
    describe_counter!(
        SECRET_RELOADS,
        "Secret reloads by source and outcome (ok, error)."
    );
    describe_counter!(
        DEDUP_ERRORS,
        "Shared dedup store errors, by what was done about them (accepted, rejected)."
    );
    describe_histogram!(
        SINK_DELIVERY,
        "From handing an event to the sink to its confirmation."
    );
    describe_counter!(KAFKA_ERRORS, "Kafka errors by librdkafka error code.");
    describe_gauge!(
        KAFKA_QUEUE,
        "Messages in librdkafka's queue awaiting delivery reports."
    );
    describe_gauge!(
        RABBITMQ_BLOCKED,
        "1 while RabbitMQ blocks publishing (connection.blocked: memory or disk alarm)."
    );
    describe_counter!(
        RABBITMQ_RETURNED,
        "Events RabbitMQ returned as unroutable (basic.return)."
    );
    describe_counter!(
        RABBITMQ_CONNECTS,
        "Connections (re)established to RabbitMQ after the first."
    );
}
