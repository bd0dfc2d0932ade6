//! The archive: confirmed events kept for a while, by time, so that they can be
//! replayed (a consumer lost its data, a new consumer wants yesterday's events).
//!
//! DESIGN: the archive is the spool's own segments, kept past confirmation.
//! - A segment wholly behind the cursor, which the checkpoint would recycle or
//!   delete, is renamed into `<spool dir>/archive/` instead. A rename writes no
//!   byte and needs no room: the live path pays nothing per event, only the loss
//!   of recycling (the writer's next segments are zero-filled ones made by the
//!   preallocation thread, as before any segment was confirmed). That price is
//!   measured in docs/benchmarks.md ("Archive"). Copying records into a log of
//!   its own would write every event a second time, and keeping segments in place
//!   behind a second cursor would tie the backlog's budget to the retention.
//! - The unit is the segment, so the index is coarse and costs nothing to keep: a
//!   segment's mtime is when its last record was written (no record in it was
//!   received later), and its first record says roughly when it starts. Records
//!   are nearly in time order: an event is stamped when its request starts and
//!   stored once its body is read, so two may swap by up to the body read
//!   timeout. Skipping uses [`SLACK_NS`] of margin for that; an event stored more
//!   than that after it was stamped (an adopted backlog's, say) can be missed by
//!   a window that ends before the segments around it.
//! - Pruning is over every sink's archive at once ([`prune_all`]): past the
//!   retention by mtime, then the oldest until the total fits the budget. A full
//!   archive drops its oldest segments; it never refuses or delays an event.
//! - What reads the log never looks into `archive/`: recovery lists `*.seg` in the
//!   spool directory itself, the reader opens only listed segments, adoption and
//!   stray detection look at files directly in a directory. A crash before the
//!   directories are synced may put an archived segment back where it was: it is
//!   behind the cursor, and the next checkpoint moves it again.
//! - An archived segment may hold bytes after its records (`END` and the records
//!   of the file's earlier use, zeros, damage): it is read with the recovery scan,
//!   which stops where the records stop and skips damage.
//! - What is archived is what the sink confirmed or the dead-letter file took:
//!   a replay sends dead-lettered events again (they fail again, counted).

use std::fs::{self, File};
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::recover::scan_segment_until;
use super::{Record, label_of};
use crate::metrics;

/// The directory, inside a spool's, that holds its archived segments.
pub const ARCHIVE_DIR: &str = "archive";

/// How far a record's time may stray from its neighbours' (see the module doc):
/// more than the longest body read anyone configures.
pub const SLACK_NS: u64 = 5 * 60 * 1_000_000_000;

/// A segment in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedSegment {
    /// Sequence of its first record.
    pub base: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// When its last record was written, in ns since the epoch.
    pub mtime_ns: u64,
}

/// One sink's archive, for the operator's view and the replay job.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveStats {
    pub sink: String,
    pub bytes: u64,
    pub segments: u64,
    /// When the first event still archived was received (ns since the epoch).
    pub oldest_ns: Option<u64>,
    /// When the newest archived segment was last written: no event in the
    /// archive was received later.
    pub newest_ns: Option<u64>,
}

/// What a prune deleted, over every archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub segments: u64,
    pub bytes: u64,
}

/// A sink's archive: the segments its spool confirmed, read-only. Cheap to clone
/// and to hand to a blocking task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    dir: PathBuf,
    sink: String,
}

impl Archive {
    /// The archive of the spool at `spool_dir` (none there yet reads as empty);
    /// named, as the spool's series are, after the directory.
    pub fn open(spool_dir: &Path) -> Archive {
        Archive {
            dir: spool_dir.join(ARCHIVE_DIR),
            sink: label_of(spool_dir),
        }
    }

    /// The `sink` label of its series.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its segments, oldest first (by mtime, then base: a spool started over
    /// reuses sequences, never time).
    pub fn segments(&self) -> io::Result<Vec<ArchivedSegment>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(base) = parse_name(&name.to_string_lossy()) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Pruned meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mtime_ns = u64::try_from(meta.mtime())
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::try_from(meta.mtime_nsec()).unwrap_or(0));
            out.push(ArchivedSegment {
                base,
                path: entry.path(),
                bytes: meta.len(),
                mtime_ns,
            });
        }
        out.sort_by(|a, b| (a.mtime_ns, a.base, &a.path).cmp(&(b.mtime_ns, b.base, &b.path)));
        Ok(out)
    }

    /// Hands `each` every record received in `[since_ns, until_ns)`, in the order
    /// stored, until it breaks. Segments wholly outside the window are not read
    /// (with [`SLACK_NS`] of margin), and the scan ends at the first record received
    /// past the window and its margin. Blocking.
    pub fn scan(
        &self,
        since_ns: u64,
        until_ns: u64,
        mut each: impl FnMut(Record) -> ControlFlow<()>,
    ) -> io::Result<()> {
        let segments = self.segments()?;
        let beyond = until_ns.saturating_add(SLACK_NS);
        for (i, seg) in segments.iter().enumerate() {
            if seg.mtime_ns.saturating_add(SLACK_NS) < since_ns {
                continue;
            }
            // The next segment's base bounds this one's sequences when it follows on.
            let limit = segments
                .get(i + 1)
                .map(|n| n.base)
                .filter(|&b| b > seg.base)
                .unwrap_or(u64::MAX);
            let mut end = false;
            let scanned = scan_segment_until(&seg.path, seg.base, seg.base, limit, &mut |r| {
                let at = r.event.received_at_ns();
                if at >= beyond {
                    end = true;
                    return ControlFlow::Break(());
                }
                if at < since_ns || at >= until_ns {
                    return ControlFlow::Continue(());
                }
                let flow = each(r);
                end = flow.is_break();
                flow
            });
            match scanned {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", seg.path.display()),
                    ));
                }
            }
            if end {
                break;
            }
        }
        Ok(())
    }

    /// Its size, and the times it spans. Blocking (reads one record).
    pub fn stats(&self) -> io::Result<ArchiveStats> {
        let segments = self.segments()?;
        let mut oldest_ns = None;
        for seg in &segments {
            let first = scan_segment_until(&seg.path, seg.base, seg.base, u64::MAX, &mut |r| {
                oldest_ns = Some(r.event.received_at_ns());
                ControlFlow::Break(())
            });
            if first.is_ok() && oldest_ns.is_some() {
                break;
            }
        }
        Ok(ArchiveStats {
            sink: self.sink.clone(),
            bytes: segments.iter().map(|s| s.bytes).sum(),
            segments: segments.len() as u64,
            oldest_ns,
            newest_ns: segments.last().map(|s| s.mtime_ns),
        })
    }
}

/// The base of an archived segment's file name: `{base:020}.seg`, or
/// `{base:020}.{n}.seg` when that name was taken (see [`move_in`]).
fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    stem.split('.').next()?.parse().ok()
}

/// Moves a confirmed segment into the spool's archive. An archived segment of the
/// same name (a spool started over from sequence 0) is never overwritten: the
/// newcomer gets a suffix. The directories are synced by [`Archives::archived`],
/// once per checkpoint.
pub(super) fn move_in(spool_dir: &Path, segment: &Path) -> io::Result<()> {
    let dir = spool_dir.join(ARCHIVE_DIR);
    if !dir.is_dir() {
        fs::create_dir_all(&dir)?;
        File::open(spool_dir)?.sync_all()?;
    }
    let name = segment
        .file_name()
        .ok_or_else(|| io::Error::other("a segment path without a file name"))?;
    let mut target = dir.join(name);
    let mut n = 0u32;
    while target.exists() {
        n += 1;
        let stem = name.to_string_lossy();
        let stem = stem.strip_suffix(".seg").unwrap_or(&stem);
        target = dir.join(format!("{stem}.{n}.seg"));
    }
    fs::rename(segment, target)
}

/// Deletes archived segments over every archive in `archives` together: those
/// last written more than `retention` before `now`, then the oldest (by mtime,
/// then base) until they add up to at most `max_bytes`. Sets each archive's size
/// gauges and counts what it deleted. A segment that cannot be deleted is logged
/// and counted as kept. Blocking.
pub fn prune_all(
    archives: &[Archive],
    retention: Duration,
    max_bytes: u64,
    now: SystemTime,
) -> io::Result<Pruned> {
    let now_ns = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let cutoff = now_ns.saturating_sub(u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX));
    let mut all: Vec<(usize, ArchivedSegment)> = Vec::new();
    for (i, a) in archives.iter().enumerate() {
        all.extend(a.segments()?.into_iter().map(|s| (i, s)));
    }
    all.sort_by_key(|(_, s)| (s.mtime_ns, s.base));
    let mut total: u64 = all.iter().map(|(_, s)| s.bytes).sum();
    let mut pruned = Pruned::default();
    let mut by_archive = vec![0u64; archives.len()];
    let mut kept = Vec::with_capacity(all.len());
    for (i, seg) in all {
        if seg.mtime_ns >= cutoff && total <= max_bytes {
            kept.push((i, seg));
            continue;
        }
        match fs::remove_file(&seg.path) {
            Ok(()) => {
                pruned.segments += 1;
                pruned.bytes += seg.bytes;
                by_archive[i] += seg.bytes;
                total -= seg.bytes;
            }
            // Someone else's prune took it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => total -= seg.bytes,
            Err(e) => {
                tracing::warn!(segment = %seg.path.display(), error = %e, "cannot prune an archived segment");
                kept.push((i, seg));
            }
        }
    }
    for (i, a) in archives.iter().enumerate() {
        let (bytes, segments) = kept
            .iter()
            .filter(|(j, _)| *j == i)
            .fold((0, 0), |(b, n), (_, s)| (b + s.bytes, n + 1));
        metrics::archive_size(a.sink(), bytes, segments);
        if by_archive[i] > 0 {
            metrics::archive_pruned(a.sink(), by_archive[i]);
        }
    }
    Ok(pruned)
}

/// Every sink's archive under one `spool.dir`, and the retention and budget they
/// share: what spools archive into, and what prunes them all.
#[derive(Debug)]
pub struct Archives {
    root: PathBuf,
    retention: Duration,
    max_bytes: u64,
    /// One prune at a time: two would count each other's deletions as kept.
    pruning: Mutex<()>,
}

impl Archives {
    /// The budget every sink's archive shares.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn new(spool_root: &Path, retention: Duration, max_bytes: u64) -> Arc<Archives> {
        Arc::new(Archives {
            root: spool_root.to_path_buf(),
            retention,
            max_bytes,
            pruning: Mutex::new(()),
        })
    }

    /// The archive of sink `sink`'s backlog (empty if it has archived nothing).
    pub fn archive(&self, sink: &str) -> Archive {
        Archive::open(&self.root.join(sink))
    }

    /// Every archive on disk, configured sinks' and removed ones' alike (these
    /// are pruned too, until nothing of them is left).
    pub fn all(&self) -> io::Result<Vec<Archive>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.join(ARCHIVE_DIR).is_dir() {
                out.push(Archive::open(&path));
            }
        }
        out.sort_by(|a, b| a.sink.cmp(&b.sink));
        Ok(out)
    }

    /// [`prune_all`] over [`Archives::all`]. Blocking.
    pub fn prune(&self, now: SystemTime) -> io::Result<Pruned> {
        let _one = self.pruning.lock().unwrap_or_else(|p| p.into_inner());
        prune_all(&self.all()?, self.retention, self.max_bytes, now)
    }

    /// Size and time span of every archive. Blocking.
    pub fn stats(&self) -> io::Result<Vec<ArchiveStats>> {
        self.all()?.iter().map(Archive::stats).collect()
    }

    /// A checkpoint moved segments of the spool at `spool_dir` into its archive:
    /// the renames are made to survive a crash, and the archives pruned. Failures
    /// are logged: the events are delivered, and the next checkpoint or periodic
    /// prune tries again.
    pub(super) fn archived(&self, spool_dir: &Path) {
        let synced = [spool_dir.join(ARCHIVE_DIR), spool_dir.to_path_buf()]
            .iter()
            .try_for_each(|d| File::open(d)?.sync_all());
        if let Err(e) = synced {
            tracing::warn!(dir = %spool_dir.display(), error = %e, "cannot sync the archive directory");
        }
        if let Err(e) = self.prune(SystemTime::now()) {
            tracing::warn!(error = %e, "cannot prune the archive");
        }
    }
}

#[cfg(test)]
mod tests;
