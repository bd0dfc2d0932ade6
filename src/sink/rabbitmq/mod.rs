//! The RabbitMQ sink: publisher confirms on a durable topic exchange.

mod config;
mod sink;

pub use config::RabbitmqSinkConfig;
pub use sink::{RabbitmqSink, check_connection, properties};
