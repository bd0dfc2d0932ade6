//! `hookrelay spool inspect`: [`spool::inspect`](crate::spool::inspect)'s
//! report, for a person or as JSON.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;

use super::human::{age_of, print, size, table};
use crate::spool::inspect::{CursorState, Damage, DamageKind, Inspection, SpoolReport};

/// The report goes to stdout, refusals to the caller (a held spool exits non-zero).
pub fn run(dir: &Path, json: bool) -> anyhow::Result<()> {
    let report = crate::spool::inspect(dir)?;
    if json {
        let mut text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        text.push('\n');
        return print(text.as_bytes());
    }
    print(render(&report, SystemTime::now()).as_bytes())
}

/// `now` is given so that ages do not depend on when a test runs.
pub fn render(r: &Inspection, now: SystemTime) -> String {
    let mut out = String::new();
    if r.spools.len() > 1 || r.spools.first().is_some_and(|s| s.dir != r.dir) {
        out.push_str(&format!(
            "{}: {} backlog(s)\n",
            r.dir.display(),
            r.spools.len()
        ));
        if let Some(a) = &r.archive {
            out.push_str(&format!(
                "archive: {} segment(s), {}\n",
                a.segments,
                size(a.bytes)
            ));
        }
        out.push('\n');
    }
    for (i, s) in r.spools.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        spool(&mut out, s, now);
    }
    out
}

fn spool(out: &mut String, s: &SpoolReport, now: SystemTime) {
    out.push_str(&format!("{} ({})\n", s.name, s.dir.display()));
    let cursor = match s.cursor_file.state {
        CursorState::Ok => format!(
            "{} (synced up to {})",
            s.cursor_file.cursor.unwrap_or_default(),
            s.cursor_file.synced_end.unwrap_or_default()
        ),
        CursorState::Missing => "none yet: a start delivers from the oldest segment".into(),
        CursorState::Corrupt => "corrupt: a start delivers from the oldest segment".into(),
    };
    let when = |t: &Option<String>| match t {
        Some(t) => match age_of(t, now) {
            Some(a) => format!("{t} ({a} ago)"),
            None => t.clone(),
        },
        None => "-".into(),
    };
    let total: u64 = s.segments.iter().map(|g| g.file_bytes).sum();
    let used: u64 = s.segments.iter().map(|g| g.used_bytes).sum();
    let mut lines = vec![
        ("cursor:", cursor),
        (
            "pending:",
            format!(
                "{} event(s), sequences {}..{}",
                s.pending, s.deliver_from, s.next_seq
            ),
        ),
        ("oldest:", when(&s.oldest_pending)),
        ("newest:", when(&s.newest_pending)),
        (
            "segments:",
            format!(
                "{}, {} on disk, {} of records",
                s.segments.len(),
                size(total),
                size(used)
            ),
        ),
    ];
    if s.lost_records > 0 {
        lines.push((
            "lost:",
            format!(
                "{} record(s) in damaged bytes (a start quarantines them)",
                s.lost_records
            ),
        ));
    }
    lines.push((
        "quarantine:",
        format!(
            "{} file(s), {}",
            s.quarantine.files,
            size(s.quarantine.bytes)
        ),
    ));
    if let Some(a) = &s.archive {
        lines.push((
            "archive:",
            format!("{} segment(s), {}", a.segments, size(a.bytes)),
        ));
    }
    let rows: Vec<Vec<String>> = lines
        .into_iter()
        .map(|(k, v)| vec![format!("  {k}"), v])
        .collect();
    out.push_str(table(&["", ""], &rows).trim_start_matches('\n'));

    if !s.pending_by_type.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .pending_by_type
            .iter()
            .map(|t| {
                vec![
                    format!("  {}", t.source),
                    t.event_type.clone(),
                    t.count.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["  SOURCE", "EVENT", "PENDING"], &rows));
    }
    if !s.segments.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .segments
            .iter()
            .map(|g| {
                let damage = if g.damage.is_empty() {
                    "-".to_string()
                } else {
                    g.damage.iter().map(damage).collect::<Vec<_>>().join("; ")
                };
                vec![
                    format!("  {}", g.base),
                    size(g.used_bytes),
                    size(g.file_bytes),
                    g.records.to_string(),
                    damage,
                ]
            })
            .collect();
        out.push_str(&table(
            &["  BASE", "USED", "FILE", "RECORDS", "DAMAGE"],
            &rows,
        ));
    }
}

fn damage(d: &Damage) -> String {
    let why = d
        .error
        .as_deref()
        .map(|e| format!(", {e}"))
        .unwrap_or_default();
    match d.kind {
        DamageKind::Hole => format!(
            "hole at {}: {}, {} record(s) lost from {}{why}",
            d.offset,
            size(d.bytes),
            d.lost_records,
            d.first_lost_seq
        ),
        DamageKind::DamagedTail => format!(
            "damaged tail at {}: {}, {} record(s) lost from {}{why}",
            d.offset,
            size(d.bytes),
            d.lost_records,
            d.first_lost_seq
        ),
        DamageKind::TornTail => format!(
            "torn tail at {}: {} never acknowledged, a start cuts it{why}",
            d.offset,
            size(d.bytes)
        ),
    }
}
