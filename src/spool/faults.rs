//! Fault injection for the reliability suite: the seam in the spool's file layer.
//!
//! A real fdatasync failure cannot be provoked on demand on a healthy disk, yet it
//! is the failure the delivery contract is most sensitive to. Setting
//! `HOOKRELAY_FAULT_FSYNC_AFTER=N` makes every fdatasync after the first N fail with
//! EIO, so a test can watch the process stop without answering the unsynced batch.
//! Unset (always, outside tests) this is one branch per group commit.

use std::fs::File;
use std::io;

pub const FSYNC_AFTER_ENV: &str = "HOOKRELAY_FAULT_FSYNC_AFTER";

#[derive(Debug, Default)]
pub(super) struct Faults {
    fsync_after: Option<u64>,
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
        Faults {
            fsync_after,
            syncs: 0,
        }
    }

    pub(super) fn sync_data(&mut self, file: &File) -> io::Result<()> {
        if self.fsync_after.is_some_and(|n| self.syncs >= n) {
            return Err(io::Error::other("injected fdatasync failure (EIO)"));
        }
        self.syncs += 1;
        file.sync_data()
    }
}
