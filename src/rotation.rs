//! Secret rotation without a restart: secret files are re-read when they change
//! (Kubernetes updates mounted Secrets in place by swapping a symlink), and
//! SIGHUP re-reads every source's secrets, files and environment alike.
//! A failed reload keeps the secrets in force and is logged and counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::disk::{Fingerprint, fingerprint};
use crate::metrics;
use crate::verify::Verifier;

/// How often secret files are checked for changes.
const POLL: Duration = Duration::from_secs(2);

fn reload(name: &str, verifier: &Verifier, why: &str) {
    match verifier.reload() {
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

/// Watches every source's secrets, by source name, for the life of the process.
pub fn spawn(verifiers: Vec<(String, Arc<Verifier>)>) {
    tokio::spawn(async move {
        let mut seen: HashMap<PathBuf, Option<Fingerprint>> = HashMap::new();
        for (_, verifier) in &verifiers {
            for f in verifier.secret_files() {
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
                    for (name, verifier) in &verifiers {
                        reload(name, verifier, "SIGHUP");
                    }
                }
                _ = tick.tick() => {
                    for (name, verifier) in &verifiers {
                        let mut changed = false;
                        for f in verifier.secret_files() {
                            let now = fingerprint(&f);
                            if seen.get(&f) != Some(&now) {
                                seen.insert(f, now);
                                changed = true;
                            }
                        }
                        if changed {
                            reload(name, verifier, "secret file changed");
                        }
                    }
                }
            }
        }
    });
}
