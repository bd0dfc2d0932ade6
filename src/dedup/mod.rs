//! Repeat suppression: a retry of an event already accepted is answered
//! "duplicate" and not published again.
//!
//! [`Window::Memory`] is per process ([`memory::MemoryWindow`]); [`Window::Redis`] is
//! shared by every replica behind a load balancer ([`redis::RedisWindow`]), so a
//! provider's retry that lands on another pod is still recognised.

pub mod memory;
pub mod redis;

use std::time::Duration;

pub use memory::{MemoryWindow, Seen};
pub use redis::RedisWindow;

/// How long a reservation (an id being accepted) lives without a commit or a
/// release, in either backend: a request gone without settling it holds its id up
/// this long at most.
pub const RESERVATION_TTL: Duration = Duration::from_secs(30);

/// What an entry is keyed by, besides its source. Each space has keys of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The event id.
    Id,
    /// The replay guard: event type and a digest of the signed bytes, for sources
    /// whose id the signature does not cover (see `event::Extractor::replay_guard`).
    Body,
}

/// The dedup backend in use.
pub enum Window {
    Memory(MemoryWindow),
    Redis(RedisWindow),
}

/// A reservation made by [`Window::check`], to commit or release.
pub enum Ticket {
    Memory(memory::Key),
    Redis(String),
    /// Nothing was reserved (the shared store was down and the source fails open).
    None,
}

/// The shared store is down and the configuration says not to accept blindly.
#[derive(Debug)]
pub struct Unavailable;

impl Window {
    /// Looks the event up and reserves it when new.
    pub async fn check(
        &self,
        space: Space,
        source: &str,
        id: &str,
    ) -> Result<(Seen, Ticket), Unavailable> {
        match self {
            Window::Memory(d) => {
                let key = d.key_in(space, source, id);
                Ok((d.check(key), Ticket::Memory(key)))
            }
            Window::Redis(r) => r.check(space, source, id).await,
        }
    }

    /// The event is durable: from now on repeats are duplicates.
    pub async fn commit(&self, ticket: &Ticket) {
        match (self, ticket) {
            (Window::Memory(d), Ticket::Memory(k)) => d.commit(*k),
            (Window::Redis(r), Ticket::Redis(k)) => r.commit(k).await,
            _ => {}
        }
    }

    /// The event was not accepted: let the provider's retry through.
    pub async fn release(&self, ticket: &Ticket) {
        match (self, ticket) {
            (Window::Memory(d), Ticket::Memory(k)) => d.release(*k),
            (Window::Redis(r), Ticket::Redis(k)) => r.release(k).await,
            _ => {}
        }
    }

    /// Ids remembered locally (spool replay feeds the memory window only).
    pub fn remembered(&self) -> usize {
        match self {
            Window::Memory(d) => d.len(),
            Window::Redis(_) => 0,
        }
    }

    pub fn memory(window: Duration, max_ids: usize) -> Window {
        Window::Memory(MemoryWindow::new(window, max_ids))
    }
}
