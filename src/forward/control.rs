//! What an operator sees and steers of one sink's delivery: pause and resume, the
//! state, the last error (the admin API's `/admin/backlog` and `/admin/sinks/`).
//!
//! A pause is kept on disk (a `PAUSED` file in the sink's backlog directory), so a
//! pod restarted during broker maintenance does not start publishing into the
//! broker being worked on. Events keep being accepted into the backlog while
//! paused, up to its budget.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The file whose presence in a backlog directory keeps its sink paused.
pub const PAUSED_FILE: &str = "PAUSED";

/// What the forwarder is doing, as an operator names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Publishing; the sink answers.
    #[default]
    Connected,
    /// Publishes fail and are retried with backoff.
    Retrying,
    /// Paused by an operator: nothing is published.
    Paused,
    /// The backlog is at its budget: the sources routed here get 503.
    Blocked,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connected => "connected",
            State::Retrying => "retrying",
            State::Paused => "paused",
            State::Blocked => "blocked",
        }
    }

    /// The `state` label of `hookrelay_sink_state` (named before this enum).
    pub fn metric_label(self) -> &'static str {
        match self {
            State::Connected => "delivering",
            State::Retrying => "retrying",
            State::Paused => "paused",
            State::Blocked => "full",
        }
    }
}

/// A snapshot of one forwarder, refreshed on its tick.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub state: State,
    pub in_flight: usize,
    /// Age of the oldest event the forwarder holds (unconfirmed), if any.
    pub oldest_age: Option<Duration>,
    pub last_error: Option<(String, Instant)>,
}

/// Shared between a sink's forwarder and the admin API.
pub struct Control {
    paused: watch::Sender<bool>,
    /// Where the pause is kept; `None` ignores it (`hookrelay drain` forwards all).
    marker: Option<PathBuf>,
    status: Mutex<Status>,
    /// Serializes pause and resume: the marker on disk and the state in memory
    /// change together.
    switching: Mutex<()>,
}

/// Error text kept for the admin API, at most this long.
const MAX_ERROR_LEN: usize = 512;

impl Control {
    /// Paused if the backlog directory `dir` holds the marker; with `None`, never
    /// paused and pausing is refused.
    pub fn new(dir: Option<&Path>) -> Control {
        let marker = dir.map(|d| d.join(PAUSED_FILE));
        let paused = marker.as_ref().is_some_and(|m| m.exists());
        Control {
            paused: watch::Sender::new(paused),
            marker,
            status: Mutex::new(Status::default()),
            switching: Mutex::new(()),
        }
    }

    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Stops publishing (events in flight still settle). Returns whether it was
    /// running. The marker is synced before the answer, so the pause survives a
    /// crash right after it. Blocking (file syncs).
    pub fn pause(&self) -> io::Result<bool> {
        let _one = self.switching.lock().unwrap_or_else(|p| p.into_inner());
        let Some(marker) = &self.marker else {
            return Err(io::Error::other(
                "this sink has no backlog to hold events while paused",
            ));
        };
        if !marker.exists() {
            File::create(marker)?.sync_all()?;
            if let Some(dir) = marker.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(!self.paused.send_replace(true))
    }

    /// Publishes again. Returns whether it was paused. Blocking (file syncs).
    pub fn resume(&self) -> io::Result<bool> {
        let _one = self.switching.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(marker) = &self.marker {
            match fs::remove_file(marker) {
                Ok(()) => {
                    if let Some(dir) = marker.parent() {
                        File::open(dir)?.sync_all()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.paused.send_replace(false))
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    pub(super) fn report(&self, state: State, in_flight: usize, oldest_age: Option<Duration>) {
        let mut s = self.lock();
        s.state = state;
        s.in_flight = in_flight;
        s.oldest_age = oldest_age;
    }

    pub(super) fn error(&self, why: &str) {
        let mut text = why.to_string();
        if text.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        self.lock().last_error = Some((text, Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_survives_a_restart_and_resume_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = Control::new(Some(dir.path()));
        assert!(!c.paused());
        assert!(c.pause().unwrap());
        assert!(!c.pause().unwrap(), "a second pause changes nothing");
        assert!(Control::new(Some(dir.path())).paused());
        assert!(c.resume().unwrap());
        assert!(!Control::new(Some(dir.path())).paused());
        assert!(!c.resume().unwrap());
    }

    #[test]
    fn without_a_backlog_pausing_is_refused() {
        let c = Control::new(None);
        assert!(c.pause().is_err());
        assert!(!c.paused());
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let c = Control::new(None);
        c.error(&"é".repeat(600));
        let (text, _) = c.status().last_error.unwrap();
        assert!(text.len() <= MAX_ERROR_LEN && text.chars().all(|ch| ch == 'é'));
    }
}
