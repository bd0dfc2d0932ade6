//! hookrelay: verifies signed webhooks, makes each event durable before
//! answering 200, and publishes it to a topic named after its event type.
//!
//! # Layout
//!
//! Data flows one way, and imports never form a cycle (`scripts/check-layout.sh`
//! fails on one):
//!
//! ```text
//! listener -> server -> guard -> verify -> event -> dedup -> spool (one per sink routed to) -> 200
//!                                                         \-> forward::publish_direct (ack = "broker") -> 200
//! spool -> forward -> sink (kafka | rabbitmq | nats | file) -> confirm -> spool cursor
//!                  \-> deadletter
//! ```
//!
//! In the order an event travels:
//!
//! - [`listener`]: accepts connections, holds each to its slot and deadlines, for both ports.
//! - [`tls`]: the optional HTTPS listener, its certificate reloaded from disk.
//! - [`server`]: one request end to end (limits, verify, extract, dedup, store) and the admin port.
//! - [`guard`]: sender allow-lists, per-source rate limits, the failed-signature budget.
//! - [`verify`]: signature schemes and the provider catalogue; [`verify::Verified`] is the only way onward.
//! - [`event`]: type, id, topic and key from a verified body; the rules every sink can carry.
//! - [`dedup`]: ids already accepted, per process or shared in Redis.
//! - [`spool`]: the segmented log: group commit, recovery, the reader, the cursor.
//! - [`disk`]: writeback in small steps and free space, for the spool's neighbours.
//! - [`backlog`]: each sink's own spool and forwarder, so one sink's outage is not another's.
//! - [`forward`]: spool to sink, many in flight, retry, checkpoints; the broker-ack path.
//! - [`sink`]: the destinations behind one trait, and the sink kinds.
//! - [`deadletter`]: where events a sink refused for good are kept, with the reason.
//! - [`replay`]: a time window of a sink's archive (`spool::archive`) sent to it again.
//!
//! Around the path:
//!
//! - [`config`]: the TOML file, typed and validated; it asks `event` and `verify` for their rules.
//! - [`metrics`]: every metric name, defined once.
//! - [`otlp`]: one span per request to an OpenTelemetry collector, when configured.
//! - [`quiet`]: log lines a flood would repeat, let through once per interval with a count.
//! - [`rotation`]: secrets re-read on change and on SIGHUP.
//! - [`supervise`]: what stops the process when something that must not stop, stops.
//! - [`faults`]: fault seams for the reliability suite, off unless an env var sets them.
//! - [`shutdown`]: the signals that start a drain.
//! - [`app`]: wiring and the shutdown sequence (and `hookrelay drain`); `main.rs` only parses arguments.
//! - [`admin`]: the admin API under `/admin/` (token, backlog, pause, dead letters, replay).
//! - [`respond`]: the JSON answers both ports share.
//! - [`cli`]: the operator's commands: `spool inspect` on a stopped spool, `admin` against a running instance.

/// The release, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit built (see `build.rs`): in `--version` and `hookrelay_build_info`.
pub const COMMIT: &str = env!("HOOKRELAY_COMMIT");

pub mod admin;
pub mod app;
pub mod backlog;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod dedup;
pub mod disk;
pub mod event;
pub mod faults;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod listener;
pub mod metrics;
pub mod otlp;
pub mod quiet;
pub mod replay;
pub mod respond;
pub mod rotation;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod supervise;
pub mod tls;
pub mod verify;
