//! The NATS JetStream sink: each event published to the subject of its topic and
//! confirmed by the stream's ack, deduplicated by event id within the stream's
//! duplicate window.

mod config;
mod connection;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{MAX_STREAM_NAME_LEN, MAX_SUBJECT_LEN, NatsSinkConfig, Retention, check_subject};
pub use connection::{StreamReady, check_connection, ensure_stream};
pub use sink::{HEADER_MSG_ID, NatsSink, headers};
