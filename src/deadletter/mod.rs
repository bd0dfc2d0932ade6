//! The dead-letter file: events a sink refused for good, with the reason.
//!
//! Never silently dropped: each line is fdatasync'd before the spool cursor may
//! pass the event, and counted in `hookrelay_dead_lettered_total`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::sink::{
    Message,
    file::{Refusal, json_line},
};

#[derive(Clone)]
pub struct DeadLetter {
    file: Arc<Mutex<File>>,
}

impl DeadLetter {
    pub fn open(path: &Path) -> io::Result<DeadLetter> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // The file's name must survive a crash as well as its lines.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok(DeadLetter {
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Appends and syncs one event that `sink` refused. Blocking.
    pub fn write(&self, sink: &str, m: &Message, reason: &str) -> io::Result<()> {
        self.write_all(&[(sink, m, reason)])
    }

    /// Appends several events (each with the sink that refused it) and syncs once.
    /// Blocking.
    pub fn write_all(&self, events: &[(&str, &Message, &str)]) -> io::Result<()> {
        let at_ns = crate::event::now_ns();
        let mut lines = Vec::new();
        for (sink, m, reason) in events {
            lines.extend_from_slice(&json_line(m, Some(&Refusal { sink, reason, at_ns })));
        }
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&lines)?;
        // As for the spool: a failed fdatasync is not retried (the event would then be
        // forgotten on the word of a sync that may have lost it).
        if let Err(e) = f.sync_data() {
            crate::supervise::stop_after_failed_sync("dead-letter file", &e);
        }
        Ok(())
    }
}
