//! The process's own resources, under the names every Prometheus client library
//! uses (`process_*`), so stock dashboards and alerts work: CPU, resident memory,
//! and open file descriptors against their limit, which the file sink, the spool
//! and every connection draw on. Linux only (read from `/proc`); elsewhere the
//! series stay absent.

use std::sync::OnceLock;

pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const OPEN_FDS: &str = "process_open_fds";
pub const MAX_FDS: &str = "process_max_fds";
pub const START_TIME: &str = "process_start_time_seconds";

/// One reading of the process's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

/// Clock ticks per second and page size: fixed for the process's life.
fn units() -> (f64, u64) {
    static UNITS: OnceLock<(f64, u64)> = OnceLock::new();
    *UNITS.get_or_init(|| {
        // SAFETY: sysconf only reads configuration values.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        (
            if tick > 0 { tick as f64 } else { 100.0 },
            u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096),
        )
    })
}

/// Fields of `/proc/self/stat` after the command name (which may hold spaces
/// and parentheses, so everything up to its last `)` is skipped); index 0 is
/// the state, field 3 of proc(5).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// Reads the current process's figures; `None` where `/proc` is missing.
pub fn sample() -> Option<Sample> {
    let (tick, page) = units();
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f = stat_fields(&stat)?;
    // proc(5): utime 14, stime 15, starttime 22, rss 24 (1-based, pid is 1).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) as f64 / tick;
    let resident_bytes = field(24)?.saturating_mul(page);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let started = field(22)? as f64 / tick;
    let start_time_seconds = boot.map_or(0.0, |b| b as f64 + started);
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    };
    Some(Sample {
        cpu_seconds,
        resident_bytes,
        open_fds,
        max_fds,
        start_time_seconds,
    })
}

/// Appends the `process_*` series in the Prometheus text format, read at the
/// scrape (the recorder's counters are integers; CPU seconds are not).
pub fn render(out: &mut String) {
    use std::fmt::Write;
    let Some(s) = sample() else { return };
    let series: [(&str, &str, &str, f64); 5] = [
        (
            CPU_SECONDS,
            "counter",
            "User and system CPU time spent, in seconds.",
            s.cpu_seconds,
        ),
        (
            RESIDENT_MEMORY,
            "gauge",
            "Resident memory size, in bytes.",
            s.resident_bytes as f64,
        ),
        (
            OPEN_FDS,
            "gauge",
            "Open file descriptors (spool segments, file sinks, connections).",
            s.open_fds as f64,
        ),
        (
            MAX_FDS,
            "gauge",
            "The open file descriptor limit (RLIMIT_NOFILE, soft).",
            s.max_fds as f64,
        ),
        (
            START_TIME,
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            s.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1234 1000 77";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "250");
        assert_eq!(f[24 - 3], "77");
    }

    #[test]
    fn the_series_are_read_from_proc() {
        let mut out = String::new();
        render(&mut out);
        let s = sample().expect("/proc is there on Linux");
        assert!(s.resident_bytes > 0 && s.open_fds > 0 && s.max_fds >= s.open_fds);
        for name in [CPU_SECONDS, RESIDENT_MEMORY, OPEN_FDS, MAX_FDS, START_TIME] {
            assert!(
                out.contains(&format!("\n{name} ")),
                "{name} missing from {out}"
            );
        }
        assert!(out.contains("# TYPE process_cpu_seconds_total counter"));
    }
}
