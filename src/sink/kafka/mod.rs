//! The Kafka sink: an idempotent, acks=all producer with many messages in flight.

mod config;
mod context;
mod sink;

pub use config::{Compression, KafkaSinkConfig};
pub use sink::{KafkaSink, check_connection, headers};
