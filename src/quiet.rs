//! Log lines a flood would repeat thousands of times a second (accept failures,
//! refused webhooks during an outage): at most one per interval, carrying the
//! count of those held back. The metrics count every one; the log only says it
//! is happening.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of log line, let through at most once per `every`.
pub struct LogEvery {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    pub const fn new(every: Duration) -> LogEvery {
        LogEvery {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last one)` when this one may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.is_some_and(|t| now.duration_since(t) < self.every) {
            s.1 += 1;
            return None;
        }
        let held = s.1;
        *s = (Some(now), 0);
        Some(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_with_the_count_held_back() {
        let l = LogEvery::new(Duration::from_millis(50));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow(), Some(2));
    }
}
