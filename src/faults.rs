//! Fault injection for the reliability suite, outside the spool (whose seams are in
//! `spool/faults.rs`): a sink that panics, a forwarder that dies. Neither can be
//! provoked on demand in a healthy process, yet both are what supervision is for.
//! Each is turned on by an environment variable, warned about at start, and never
//! set in production; unset, each costs a branch.

use std::sync::Arc;

use crate::sink::{BoxFuture, Confirmation, Message, Sink, SinkError};

/// A sink panics when handed an event whose id contains this text.
pub const SINK_PANIC_ENV: &str = "HOOKRELAY_FAULT_SINK_PANIC_ID";
/// The forwarder panics once it has settled this many events.
pub const FORWARDER_PANIC_ENV: &str = "HOOKRELAY_FAULT_FORWARDER_PANIC_AFTER";

/// `sink`, or `sink` wrapped to panic on marked events when [`SINK_PANIC_ENV`] is set.
pub fn wrap_sink(name: &str, sink: Arc<dyn Sink>) -> Arc<dyn Sink> {
    match std::env::var(SINK_PANIC_ENV) {
        Ok(needle) if !needle.is_empty() => {
            tracing::warn!(
                "{SINK_PANIC_ENV}={needle}: the {name} sink panics on events whose id contains it (fault injection)"
            );
            Arc::new(Panicking {
                inner: sink,
                needle,
            })
        }
        _ => sink,
    }
}

/// Events the forwarder settles before it panics, when [`FORWARDER_PANIC_ENV`] is set.
pub fn forwarder_panic_after() -> Option<u64> {
    let n = std::env::var(FORWARDER_PANIC_ENV).ok()?.parse().ok()?;
    tracing::warn!(
        "{FORWARDER_PANIC_ENV}={n}: the forwarder panics after {n} events (fault injection)"
    );
    Some(n)
}

struct Panicking {
    inner: Arc<dyn Sink>,
    needle: String,
}

impl Sink for Panicking {
    fn publish(&self, batch: Vec<Message>) -> BoxFuture<'_, Vec<Confirmation>> {
        Box::pin(async move {
            if batch.iter().any(|m| m.event.id().contains(&self.needle)) {
                panic!("injected sink panic (fault injection)");
            }
            self.inner.publish(batch).await
        })
    }

    fn ready(&self) -> bool {
        self.inner.ready()
    }

    fn flush(&self, timeout: std::time::Duration) -> BoxFuture<'_, ()> {
        self.inner.flush(timeout)
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.inner.sync()
    }
}
