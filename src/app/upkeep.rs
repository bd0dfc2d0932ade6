//! Background upkeep while running: the archive's pruning, the sinks' up gauge and
//! the readiness gauge.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics;
use crate::sink::Route;

/// How often `hookrelay_sink_up` and `hookrelay_ready` are refreshed.
const STATE_EVERY: Duration = Duration::from_secs(1);

/// Keeps `hookrelay_sink_up` following every sink (those only `ack = "broker"`
/// sources publish to included) and `hookrelay_ready` following what `/readyz`
/// would answer, whether or not anything polls it: an outage shows in seconds,
/// before any event has failed.
///
/// The first refresh happens here, before the admin port serves: a scrape never
/// finds the series missing (a missing series reads as "no data", not as down).
pub(super) fn spawn_state_watch(routes: Vec<Route>, app: Arc<crate::server::App>) {
    let refresh = move || {
        for r in &routes {
            metrics::sink_up(r.name(), r.sink.ready());
        }
        metrics::ready(app.ready());
    };
    refresh();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATE_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            refresh();
        }
    });
}

/// How often the archives are pruned besides after each checkpoint that archived:
/// retention must apply while nothing new is archived (a sink idle for a day).
const ARCHIVE_PRUNE_EVERY: Duration = Duration::from_secs(10);

pub(super) fn spawn_archive_pruning(archives: Arc<crate::spool::Archives>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ARCHIVE_PRUNE_EVERY);
        loop {
            tick.tick().await;
            let a = archives.clone();
            let pruned = tokio::task::spawn_blocking(move || a.prune(std::time::SystemTime::now()));
            match pruned.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune the archive"),
                Err(e) => tracing::warn!(error = %e, "archive pruning failed"),
            }
        }
    });
}
