//! Secret rotation without a restart: secret files are re-read when they change
//! (Kubernetes updates mounted Secrets in place by swapping a symlink), and
//! SIGHUP re-reads every source's secrets, files and environment alike.
//! A failed reload keeps the secrets in force and is logged and counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::metrics;
use crate::server::App;

/// How often secret files are checked for changes.
const POLL: Duration = Duration::from_secs(2);

/// What identifies a version of a file without keeping its contents around.
fn fingerprint(path: &PathBuf) -> Option<(SystemTime, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let digest = crc32c::crc32c(&bytes) as u64;
    Some((meta.modified().ok()?, meta.len(), digest))
}

fn reload(app: &App, name: &str, why: &str) {
    let Some(src) = app.sources.get(name) else {
        return;
    };
    match src.verifier.reload() {
        Ok(n) => {
            tracing::info!(source = name, secrets = n, reason = why, "secrets reloaded");
            metrics::secret_reload(name, true);
        }
        Err(e) => {
            tracing::error!(source = name, reason = why, error = %e, "secret reload failed; keeping the secrets in force");
            metrics::secret_reload(name, false);
        }
    }
}

/// Runs for the life of the process.
pub fn spawn(app: Arc<App>) {
    tokio::spawn(async move {
        let mut seen: HashMap<PathBuf, Option<(SystemTime, u64, u64)>> = HashMap::new();
        for src in app.sources.values() {
            for f in src.verifier.secret_files() {
                seen.insert(f.clone(), fingerprint(&f));
            }
        }
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(POLL);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = hangup => {
                    let names: Vec<String> = app.sources.keys().cloned().collect();
                    for name in names {
                        reload(&app, &name, "SIGHUP");
                    }
                }
                _ = tick.tick() => {
                    for (name, src) in &app.sources {
                        let mut changed = false;
                        for f in src.verifier.secret_files() {
                            let now = fingerprint(&f);
                            if seen.get(&f) != Some(&now) {
                                seen.insert(f, now);
                                changed = true;
                            }
                        }
                        if changed {
                            reload(&app, name, "secret file changed");
                        }
                    }
                }
            }
        }
    });
}
