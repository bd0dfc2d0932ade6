//! Fault injection for the reliability suite: the seam in the spool's file layer.
//!
//! A real fdatasync failure cannot be provoked on demand on a healthy disk, yet it
//! is the failure the delivery contract is most sensitive to. Setting
//! `HOOKRELAY_FAULT_FSYNC_AFTER=N` makes every fdatasync after the first N fail with
//! EIO, so a test can watch the process stop without answering the unsynced batch.
//! `HOOKRELAY_FAULT_FSYNC_DELAY_MS` slows every fdatasync down instead. Unset
//! (always, outside tests) each is one branch per group commit.

use std::fs::File;
use std::io;

pub const FSYNC_AFTER_ENV: &str = "HOOKRELAY_FAULT_FSYNC_AFTER";
/// Every fdatasync takes this many milliseconds longer: a slow disk, so that a
/// test can drop a request while its append is in flight.
pub const FSYNC_DELAY_ENV: &str = "HOOKRELAY_FAULT_FSYNC_DELAY_MS";

#[derive(Debug, Default)]
pub(super) struct Faults {
    fsync_after: Option<u64>,
    delay: Option<std::time::Duration>,
    syncs: u64,
}

impl Faults {
    pub(super) fn from_env() -> Faults {
        let fsync_after = std::env::var(FSYNC_AFTER_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        if let Some(n) = fsync_after {
            tracing::warn!(
                "{FSYNC_AFTER_ENV}={n}: spool fdatasyncs after the first {n} will fail (fault injection)"
            );
        }
        let delay = std::env::var(FSYNC_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis);
        if let Some(d) = delay {
            tracing::warn!(
                "{FSYNC_DELAY_ENV}: every spool fdatasync takes {d:?} longer (fault injection)"
            );
        }
        Faults {
            fsync_after,
            delay,
            syncs: 0,
        }
    }

    pub(super) fn sync_data(&mut self, file: &File) -> io::Result<()> {
        if self.fsync_after.is_some_and(|n| self.syncs >= n) {
            return Err(io::Error::other("injected fdatasync failure (EIO)"));
        }
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        self.syncs += 1;
        file.sync_data()
    }
}
