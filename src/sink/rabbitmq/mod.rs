//! The RabbitMQ sink: publisher confirms on a durable topic exchange.

mod config;
mod connection;
mod sink;

pub use config::RabbitmqSinkConfig;
pub use connection::check_connection;
pub use sink::{RabbitmqSink, properties};
