//! Figures for a person at a terminal: sizes in binary units, ages in the two
//! largest units that matter, columns aligned; and times as a person types them
//! (`15m` ago as well as RFC 3339).

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// `1536` as `1.5 KiB`: byte counts of backlogs span nine orders of magnitude.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Seconds as `4.2s`, `3m05s`, `2h07m`, `3d04h`: precise while short, coarse
/// once the seconds no longer matter.
pub fn age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The age of an RFC 3339 time now; `None` when it does not parse.
pub fn age_of(rfc3339: &str, now: SystemTime) -> Option<String> {
    let t = parse_rfc3339(rfc3339).ok()?;
    Some(match now.duration_since(t) {
        Ok(d) => age(d.as_secs_f64()),
        // A clock ahead of ours: say so rather than print a negative age.
        Err(_) => "0s".into(),
    })
}

/// RFC 3339 in UTC with milliseconds: what the admin API takes and prints.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A time as typed: `now`, a duration ago (`15m`, `2h30m`, `1d ago`), or RFC
/// 3339 with any offset.
pub fn parse_time(s: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    let ago = s.strip_suffix("ago").map_or(s, str::trim_end);
    if let Ok(d) = humantime::parse_duration(ago) {
        return now
            .checked_sub(d)
            .with_context(|| format!("{s}: too far back"));
    }
    parse_rfc3339(s).with_context(|| {
        format!("{s}: not a time (RFC 3339 such as 2024-01-15T10:30:00Z, or a duration ago such as 15m or 2h)")
    })
}

/// RFC 3339 with a `Z` or a numeric offset (humantime reads UTC only).
pub fn parse_rfc3339(s: &str) -> anyhow::Result<SystemTime> {
    let upper = s.trim().to_ascii_uppercase();
    let (local, offset_secs) = match split_offset(&upper) {
        Some((local, offset)) => (format!("{local}Z"), offset),
        None => (upper.clone(), 0),
    };
    let t = humantime::parse_rfc3339(&local).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Local time minus its offset is UTC.
    let shifted = if offset_secs >= 0 {
        t.checked_sub(Duration::from_secs(offset_secs.unsigned_abs()))
    } else {
        t.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))
    };
    match shifted {
        Some(t) if t >= UNIX_EPOCH => Ok(t),
        _ => bail!("out of range"),
    }
}

/// `...+02:00` as (`...`, 7200): `None` for `Z` or no offset.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    let n = s.len();
    if n < 25 || s.as_bytes()[n - 3] != b':' {
        return None;
    }
    let (local, off) = s.split_at(n - 6);
    let sign = match off.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h: i64 = off.get(1..3)?.parse().ok()?;
    let m: i64 = off.get(4..6)?.parse().ok()?;
    (h < 24 && m < 60).then_some((local, sign * (h * 3600 + m * 60)))
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart; the last column is not padded (it may be long: an error message).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
pub fn print(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_at_a_glance() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(4567), "4.5 KiB");
        assert_eq!(size(64 << 20), "64.0 MiB");
        assert_eq!(age(1.5), "1.5s");
        assert_eq!(age(42.0), "42s");
        assert_eq!(age(185.0), "3m05s");
        assert_eq!(age(7620.0), "2h07m");
        assert_eq!(age(273_600.0), "3d04h");
    }

    #[test]
    fn times_parse_as_typed() {
        let now = UNIX_EPOCH + Duration::from_secs(1_705_314_600);
        let at = |s: &str| rfc3339(parse_time(s, now).unwrap());
        assert_eq!(at("now"), "2024-01-15T10:30:00.000Z");
        assert_eq!(at("15m"), "2024-01-15T10:15:00.000Z");
        assert_eq!(at("2h ago"), "2024-01-15T08:30:00.000Z");
        assert_eq!(at("2024-01-15T10:30:00Z"), "2024-01-15T10:30:00.000Z");
        assert_eq!(at("2024-01-15t10:30:00.250z"), "2024-01-15T10:30:00.250Z");
        assert_eq!(at("2024-01-15T12:30:00+02:00"), "2024-01-15T10:30:00.000Z");
        assert_eq!(at("2024-01-15T05:00:00-05:30"), "2024-01-15T10:30:00.000Z");
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("2024-13-01T00:00:00Z", now).is_err());
    }

    #[test]
    fn tables_align_all_but_the_last_column() {
        let t = table(
            &["A", "LONGER", "LAST"],
            &[vec!["xyz".into(), "1".into(), "free text".into()]],
        );
        assert_eq!(t, "A    LONGER  LAST\nxyz  1       free text\n");
    }
}
