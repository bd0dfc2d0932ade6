//! The shared dedup window in Redis: one round trip per new event.
//!
//! A Lua script does `SET key pending NX PX <pending>` and, when the key exists,
//! returns its state, so "new", "in flight" and "duplicate" are told apart in one
//! call (concurrent calls on one multiplexed connection are pipelined). The
//! commit turns `pending` into `done` for the whole window. A pending key left by
//! a replica that died expires after [`super::RESERVATION_TTL`], so the provider's retry is
//! then accepted (a possible duplicate, never a loss).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, Script};

use super::{Seen, Space, Ticket, Unavailable};
use crate::metrics;

const CHECK: &str = r"
if redis.call('SET', KEYS[1], 'pending', 'NX', 'PX', ARGV[1]) then
  return 'new'
end
return redis.call('GET', KEYS[1]) or 'new-after-expiry'
";

pub struct RedisWindow {
    conn: ConnectionManager,
    check: Script,
    window: Duration,
    timeout: Duration,
    /// When Redis cannot answer: accept (and maybe publish a duplicate) or 503.
    fail_open: bool,
    prefix: String,
    /// Replay-guard keys live beside the ids, never among them.
    guard_prefix: String,
}

impl RedisWindow {
    /// Connects lazily: a Redis that is down at start is handled like one that
    /// goes down later, by the configured failure mode.
    pub fn new(
        url: &str,
        window: Duration,
        timeout: Duration,
        fail_open: bool,
    ) -> Result<RedisWindow, redis::RedisError> {
        let client = Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisWindow {
            conn,
            check: Script::new(CHECK),
            window,
            timeout,
            fail_open,
            prefix: "hookrelay:dedup:".into(),
            guard_prefix: "hookrelay:".into(),
        })
    }

    fn key(&self, space: Space, source: &str, id: &str) -> String {
        match space {
            Space::Id => format!("{}{source}:{id}", self.prefix),
            Space::Body => format!("{}replay:{source}:{id}", self.guard_prefix),
        }
    }

    fn failed(&self, op: &str, e: &dyn std::fmt::Display) -> Result<(Seen, Ticket), Unavailable> {
        tracing::warn!(operation = op, error = %e, fail_open = self.fail_open, "redis dedup unavailable");
        metrics::dedup_error(self.fail_open);
        if self.fail_open {
            Ok((Seen::New, Ticket::None))
        } else {
            Err(Unavailable)
        }
    }

    pub async fn check(
        &self,
        space: Space,
        source: &str,
        id: &str,
    ) -> Result<(Seen, Ticket), Unavailable> {
        let key = self.key(space, source, id);
        let mut conn = self.conn.clone();
        let mut call = self.check.key(&key);
        call.arg(super::RESERVATION_TTL.as_millis() as u64);
        let answer: Result<Result<String, redis::RedisError>, _> =
            tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        match answer {
            Ok(Ok(state)) => Ok((
                match state.as_str() {
                    "new" | "new-after-expiry" => Seen::New,
                    "pending" => Seen::InFlight,
                    _ => Seen::Duplicate,
                },
                Ticket::Redis(key),
            )),
            Ok(Err(e)) => self.failed("check", &e),
            Err(e) => self.failed("check", &e),
        }
    }

    pub async fn commit(&self, key: &str) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg("done")
            .arg("PX")
            .arg(self.window.as_millis() as u64);
        let set = cmd.query_async::<()>(&mut conn);
        match tokio::time::timeout(self.timeout, set).await {
            Ok(Ok(())) => {}
            // The event is durable already; a lost commit only lets a retry through
            // after the pending key expires (a duplicate, never a loss).
            Ok(Err(e)) => tracing::warn!(error = %e, "redis dedup commit failed"),
            Err(e) => tracing::warn!(error = %e, "redis dedup commit timed out"),
        }
    }

    pub async fn release(&self, key: &str) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        let del = cmd.query_async::<()>(&mut conn);
        let _ = tokio::time::timeout(self.timeout, del).await;
    }
}
