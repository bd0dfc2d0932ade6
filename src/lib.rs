//! hookrelay: verifies signed webhooks, makes each event durable before
//! answering 200, and publishes it to a topic named after its event type.
//!
//! # Layout
//!
//! Data flows one way:
//!
//! ```text
//! server (guards, limits, routing) -> verify (scheme) -> event (type, id, topic, key)
//!   -> dedup (memory | redis) -> spool (group commit) -> 200
//!                             \-> sink directly when ack = "broker" -> 200
//! spool -> forward (retry, cursor) -> sink (kafka | rabbitmq | file) -> confirm
//! ```
//!
//! - [`config`]: the TOML file, typed and validated.
//! - [`server`]: the accept path (limits, verify, extract, dedup, store) and the admin endpoints.
//! - [`listener`]: connection slots and their deadlines, for both listeners.
//! - [`verify`]: signature schemes; [`verify::Verified`] is the only way onward.
//! - [`event`]: event type, id, topic and key from a verified body.
//! - [`dedup`]: the window of ids already accepted, per process or shared in Redis.
//! - [`spool`]: the segmented log, group commit, replay, cursor.
//! - [`disk`]: writeback in small steps and free space, for the spool's neighbours.
//! - [`forward`]: spool to sink with many in flight, retry, dead-letter.
//! - [`sink`]: destinations behind one trait; [`deadletter`] for refusals.
//! - [`guard`]: per-source sender allow-lists and rate limits.
//! - [`tls`]: the optional HTTPS listener with certificate reload.
//! - [`metrics`]: every metric name, defined once.
//! - [`rotation`]: secret files re-read on change and on SIGHUP.
//! - [`app`]: wiring and the shutdown sequence; `main.rs` only parses arguments.

pub mod app;
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
pub mod rotation;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod supervise;
pub mod tls;
pub mod verify;
