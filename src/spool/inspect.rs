//! Reading a spool no process holds without changing a byte of it, for
//! `hookrelay spool inspect`: an operator looking at a stopped instance's disk (a
//! pod that will not start, a volume mounted elsewhere) must not alter the
//! evidence. So nothing here recovers, truncates, quarantines or creates: segments
//! are read with [`recover::scan_segment`] and the cursor with
//! [`recover::read_cursor`], both read-only, and what a start *would* do with bad
//! bytes is reported instead of done.
//!
//! A running process is not read behind its back: its segments change under the
//! reader, so the `LOCK` files it holds are tried first and a held one refuses.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::recover::{self, QUARANTINE_DIR};
use super::segment_path;

/// Where a spool directory may keep retired segments, reported beside it.
pub const ARCHIVE_DIR: &str = "archive";
/// The process-wide lock in `spool.dir` (see `backlog`).
const PROCESS_LOCK: &str = "hookrelay.lock";

/// Why a directory could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The live view is the admin API's, which sees the process's own state.
    #[error(
        "{0} is held by a running hookrelay (its LOCK is taken): use `hookrelay admin backlog` instead"
    )]
    Held(PathBuf),
    #[error("{0} holds no spool (no *.seg or cursor file, nor a directory holding them)")]
    NoSpool(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> InspectError + '_ {
    move |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything found under the inspected directory.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub dir: PathBuf,
    /// One spool (the directory itself) or one per sink (`spool.dir`), by name.
    pub spools: Vec<SpoolReport>,
    /// `archive/` directly under `spool.dir`, when it is not itself a backlog.
    pub archive: Option<Archive>,
}

/// One spool as a start would find it.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolReport {
    /// The directory's name: the sink's, under `spool.dir`.
    pub name: String,
    pub dir: PathBuf,
    pub segments: Vec<SegmentReport>,
    pub cursor_file: CursorFile,
    /// The first sequence a start would deliver (the persisted cursor, kept
    /// within the records on disk, as recovery does).
    pub deliver_from: u64,
    /// One past the last record (or hole) on disk: the next append's sequence.
    pub next_seq: u64,
    /// Readable records from `deliver_from` on: what a start publishes again.
    pub pending: u64,
    /// Records in damaged bytes: a start quarantines them, they are not delivered.
    pub lost_records: u64,
    /// `received_at` of the earliest and the latest pending event (RFC 3339).
    pub oldest_pending: Option<String>,
    pub newest_pending: Option<String>,
    /// Pending events by source and type, most first.
    pub pending_by_type: Vec<TypeCount>,
    pub quarantine: Files,
    pub archive: Option<Archive>,
}

/// What the `cursor` file says, and whether it could be read.
#[derive(Debug, Clone, Serialize)]
pub struct CursorFile {
    pub state: CursorState,
    /// First sequence not yet confirmed, as last checkpointed.
    pub cursor: Option<u64>,
    /// Every record before it had been fdatasync'd at that checkpoint (0 when the
    /// file predates recording it).
    pub synced_end: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CursorState {
    Ok,
    /// Never checkpointed: a start delivers from the oldest segment.
    Missing,
    /// Fails its CRC or has the wrong length: a start delivers from the oldest segment.
    Corrupt,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    /// The sequence of its first record (its file name).
    pub base: u64,
    /// Its size on disk, preallocated zeros included.
    pub file_bytes: u64,
    /// Where its readable records (and holes) end.
    pub used_bytes: u64,
    /// Readable records in it.
    pub records: u64,
    pub damage: Vec<Damage>,
}

/// Bad bytes in a segment, and what a start would do with them.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub kind: DamageKind,
    pub offset: u64,
    pub bytes: u64,
    /// The first sequence lost, and how many (0 for a torn tail: never acknowledged).
    pub first_lost_seq: u64,
    pub lost_records: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// Bad bytes with intact records after them: copied to quarantine, skipped.
    Hole,
    /// Bad bytes where records are known to have been synced, nothing readable
    /// after them: copied to quarantine.
    DamagedTail,
    /// The end of the last segment past the last synced record: a write a crash
    /// interrupted, which a start cuts.
    TornTail,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Files {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Archive {
    pub segments: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    pub source: String,
    pub event_type: String,
    pub count: u64,
}

/// Inspects `dir`: a spool (it holds segments) or `spool.dir` (each subdirectory
/// holding one). Read-only; refuses while a process holds any of their locks,
/// which are held here until the reading is done (a start meanwhile is refused).
pub fn inspect(dir: &Path) -> Result<Inspection, InspectError> {
    let meta = fs::metadata(dir).map_err(io_at(dir))?;
    if !meta.is_dir() {
        return Err(io_at(dir)(io::Error::other("not a directory")));
    }
    let mut locks = Vec::new();
    lock_if_present(&dir.join(PROCESS_LOCK), dir, &mut locks)?;
    let mut archive = None;
    let mut dirs = Vec::new();
    if super::holds_spool(dir) {
        dirs.push(dir.to_path_buf());
    } else {
        for entry in fs::read_dir(dir).map_err(io_at(dir))? {
            let entry = entry.map_err(io_at(dir))?;
            let path = entry.path();
            let name = entry.file_name();
            if name == QUARANTINE_DIR || !entry.file_type().map_err(io_at(&path))?.is_dir() {
                continue;
            }
            let is_backlog = super::holds_spool(&path) || path.join("LOCK").exists();
            // A sink may be named `archive`; its backlog has a LOCK or a cursor.
            if name == ARCHIVE_DIR && !path.join("LOCK").exists() && !path.join("cursor").exists() {
                archive = Some(archive_of(&path)?);
            } else if is_backlog {
                dirs.push(path);
            }
        }
        dirs.sort();
    }
    if dirs.is_empty() {
        return Err(InspectError::NoSpool(dir.to_path_buf()));
    }
    for d in &dirs {
        lock_if_present(&d.join("LOCK"), d, &mut locks)?;
    }
    let spools = dirs
        .iter()
        .map(|d| inspect_one(d))
        .collect::<Result<_, _>>()?;
    drop(locks);
    Ok(Inspection {
        dir: dir.to_path_buf(),
        spools,
        archive,
    })
}

/// Takes the flock on `lock` (opened read-only: nothing is created) if it exists.
fn lock_if_present(lock: &Path, dir: &Path, held: &mut Vec<File>) -> Result<(), InspectError> {
    let f = match File::open(lock) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(lock)(e)),
    };
    match f.try_lock() {
        Ok(()) => {
            held.push(f);
            Ok(())
        }
        Err(fs::TryLockError::WouldBlock) => Err(InspectError::Held(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(io_at(lock)(e)),
    }
}

/// Pending events' figures, gathered as the segments are read.
#[derive(Default)]
struct PendingStats {
    count: u64,
    oldest_ns: Option<u64>,
    newest_ns: Option<u64>,
    by_type: BTreeMap<(String, String), u64>,
}

fn inspect_one(dir: &Path) -> Result<SpoolReport, InspectError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let name = entry.map_err(io_at(dir))?.file_name();
        if let Some(base) = name
            .to_string_lossy()
            .strip_suffix(".seg")
            .and_then(|b| b.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let stored = recover::read_cursor(dir);
    let cursor_file = CursorFile {
        state: match stored {
            Some(_) => CursorState::Ok,
            None if dir.join("cursor").exists() => CursorState::Corrupt,
            None => CursorState::Missing,
        },
        cursor: stored.map(|(c, _)| c),
        synced_end: stored.map(|(_, s)| s),
    };
    let synced_end = stored.map_or(0, |(_, s)| s);
    let first_base = bases.first().copied();
    // Records from here on are pending; above the last record the clamp recovery
    // applies changes nothing, as no record lies there.
    let from = match (stored, first_base) {
        (Some((c, _)), Some(b)) => c.max(b),
        (Some((c, _)), None) => c,
        (None, b) => b.unwrap_or(0),
    };
    let mut stats = PendingStats::default();
    let mut segments = Vec::new();
    let mut next_seq = stored.map_or(0, |(c, _)| c);
    let mut lost_records = 0;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let last = i + 1 == bases.len();
        // As recovery reads them: see `recover::recover`.
        let (expect_until, seq_limit) = match bases.get(i + 1) {
            Some(&next) => (next, next),
            None => (synced_end, u64::MAX),
        };
        let mut records = 0u64;
        let mut each = |r: &super::Record| {
            records += 1;
            if r.seq >= from {
                stats.add(r);
            }
        };
        let scan = recover::scan_segment(&path, base, expect_until, seq_limit, &mut each)
            .map_err(io_at(&path))?;
        let mut damage: Vec<Damage> = scan
            .holes
            .iter()
            .map(|h| Damage {
                kind: DamageKind::Hole,
                offset: h.offset,
                bytes: h.len,
                first_lost_seq: h.from_seq,
                lost_records: h.to_seq - h.from_seq,
                error: None,
            })
            .collect();
        next_seq = scan.next_seq;
        if let Some(tail) = &scan.bad_tail {
            let bytes = scan.data_end.saturating_sub(tail.offset);
            if last && tail.seq >= synced_end {
                damage.push(Damage {
                    kind: DamageKind::TornTail,
                    offset: tail.offset,
                    bytes,
                    first_lost_seq: tail.seq,
                    lost_records: 0,
                    error: Some(tail.why.clone()),
                });
            } else {
                let to_seq = if last {
                    synced_end.max(tail.seq)
                } else {
                    seq_limit
                };
                damage.push(Damage {
                    kind: DamageKind::DamagedTail,
                    offset: tail.offset,
                    bytes,
                    first_lost_seq: tail.seq,
                    lost_records: to_seq - tail.seq,
                    error: Some(tail.why.clone()),
                });
                next_seq = to_seq;
            }
        }
        lost_records += damage.iter().map(|d| d.lost_records).sum::<u64>();
        segments.push(SegmentReport {
            base,
            file_bytes: scan.file_len,
            used_bytes: scan.good_len,
            records,
            damage,
        });
    }
    let first = first_base.unwrap_or(next_seq);
    let deliver_from = stored.map_or(first, |(c, _)| c).clamp(first, next_seq);
    let mut pending_by_type: Vec<TypeCount> = stats
        .by_type
        .into_iter()
        .map(|((source, event_type), count)| TypeCount {
            source,
            event_type,
            count,
        })
        .collect();
    pending_by_type.sort_by_key(|t| std::cmp::Reverse(t.count));
    let archive_dir = dir.join(ARCHIVE_DIR);
    Ok(SpoolReport {
        name: dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
        dir: dir.to_path_buf(),
        segments,
        cursor_file,
        deliver_from,
        next_seq,
        pending: stats.count,
        lost_records,
        oldest_pending: stats.oldest_ns.map(crate::event::rfc3339_millis),
        newest_pending: stats.newest_ns.map(crate::event::rfc3339_millis),
        pending_by_type,
        quarantine: files_in(&dir.join(QUARANTINE_DIR))?,
        archive: if archive_dir.is_dir() {
            Some(archive_of(&archive_dir)?)
        } else {
            None
        },
    })
}

impl PendingStats {
    fn add(&mut self, r: &super::Record) {
        let at = r.event.received_at_ns();
        self.count += 1;
        self.oldest_ns = Some(self.oldest_ns.map_or(at, |o| o.min(at)));
        self.newest_ns = Some(self.newest_ns.map_or(at, |n| n.max(at)));
        let key = (
            r.event.source().to_string(),
            r.event.event_type().to_string(),
        );
        *self.by_type.entry(key).or_default() += 1;
    }
}

/// Regular files directly in `dir` (none when it does not exist).
fn files_in(dir: &Path) -> Result<Files, InspectError> {
    let mut out = Files::default();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_at(dir)(e)),
    };
    for entry in entries {
        let meta = entry.and_then(|e| e.metadata()).map_err(io_at(dir))?;
        if meta.is_file() {
            out.files += 1;
            out.bytes += meta.len();
        }
    }
    Ok(out)
}

fn archive_of(dir: &Path) -> Result<Archive, InspectError> {
    let mut out = Archive::default();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let meta = entry.metadata().map_err(io_at(dir))?;
        if meta.is_file() {
            out.bytes += meta.len();
            if entry.file_name().to_string_lossy().ends_with(".seg") {
                out.segments += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBuilder;
    use crate::spool::{Record, Spool};

    /// Every file under `dir`, with its length and modification time.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                }
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
        out.sort();
        out
    }

    /// A spool left by a process that confirmed part of what it took: the report
    /// counts from the persisted cursor, and reading it changes nothing on disk.
    #[tokio::test]
    async fn a_dropped_spool_reports_what_a_start_would_deliver_and_is_left_as_it_was() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("bus");
        {
            let (spool, _reader, _) = Spool::open(&dir, 1 << 20, 1024, |_: &Record| {}).unwrap();
            for i in 0..30u64 {
                let source = if i % 3 == 0 { "gh" } else { "q" };
                let e = EventBuilder::new(i)
                    .source(source)
                    .received_at_ns(1_700_000_000_000_000_000 + i * 1_000_000_000)
                    .accepted();
                spool.append(e).await.unwrap();
            }
            spool.confirm_until(12);
            assert_eq!(spool.checkpoint(12).unwrap(), 12);
            // Confirmed in memory only: a start delivers these again.
            spool.confirm_until(20);
        }
        // The preparation thread may still be finishing a file.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let before = snapshot(root.path());

        let one = inspect(&dir).unwrap();
        let from_parent = inspect(root.path()).unwrap();
        assert_eq!(snapshot(root.path()), before, "inspect changed the disk");
        assert_eq!(from_parent.spools.len(), 1);
        assert_eq!(from_parent.spools[0].name, "bus");
        assert_eq!(from_parent.spools[0].pending, one.spools[0].pending);

        let s = &one.spools[0];
        assert_eq!(s.cursor_file.state, CursorState::Ok);
        assert_eq!(s.cursor_file.cursor, Some(12));
        assert_eq!(s.cursor_file.synced_end, Some(30));
        assert_eq!((s.deliver_from, s.next_seq, s.pending), (12, 30, 18));
        assert_eq!(s.lost_records, 0);
        assert!(s.segments.len() > 1, "1 KiB segments roll");
        assert!(
            (1..=12).contains(&s.segments[0].base),
            "the checkpoint freed segments"
        );
        assert!(s.segments.iter().all(|g| g.damage.is_empty()));
        assert_eq!(
            s.segments.iter().map(|g| g.records).sum::<u64>() + s.segments[0].base,
            30,
            "segments behind the checkpoint are gone, the rest are whole"
        );
        assert_eq!(
            s.oldest_pending.as_deref(),
            Some("2023-11-14T22:13:32.000Z")
        );
        assert_eq!(
            s.newest_pending.as_deref(),
            Some("2023-11-14T22:13:49.000Z")
        );
        // 12..30: the multiples of 3 are gh's.
        assert_eq!(
            s.pending_by_type,
            vec![
                TypeCount {
                    source: "q".into(),
                    event_type: "message.read".into(),
                    count: 12
                },
                TypeCount {
                    source: "gh".into(),
                    event_type: "message.read".into(),
                    count: 6
                },
            ]
        );
        assert_eq!(s.quarantine.files, 0);
        assert!(s.archive.is_none());
        let json = serde_json::to_value(&one).unwrap();
        assert_eq!(json["spools"][0]["cursor_file"]["state"], "ok");
    }

    /// Bad bytes past the last synced record are a torn tail, reported, not cut.
    #[tokio::test]
    async fn a_torn_tail_is_reported_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("s");
        {
            let (spool, _reader, _) = Spool::open(&dir, 1 << 20, 1 << 20, |_: &Record| {}).unwrap();
            for i in 0..3u64 {
                spool.append(EventBuilder::new(i).accepted()).await.unwrap();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let seg = segment_path(&dir, 0);
        let scan = recover::scan_segment(&seg, 0, 0, u64::MAX, &mut |_| {}).unwrap();
        let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"garbage!", scan.good_len).unwrap();
        let len = fs::metadata(&seg).unwrap().len();

        let s = inspect(&dir).unwrap().spools.remove(0);
        assert_eq!(s.cursor_file.state, CursorState::Missing);
        assert_eq!(s.pending, 3);
        let d = &s.segments[0].damage;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, DamageKind::TornTail);
        assert_eq!(d[0].offset, scan.good_len);
        assert_eq!(fs::metadata(&seg).unwrap().len(), len, "nothing cut");
    }

    #[test]
    fn a_held_lock_refuses_and_an_empty_dir_is_no_spool() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            inspect(root.path()),
            Err(InspectError::NoSpool(_))
        ));
        assert!(
            fs::read_dir(root.path()).unwrap().next().is_none(),
            "nothing created"
        );
        let dir = root.path().join("bus");
        fs::create_dir(&dir).unwrap();
        fs::write(segment_path(&dir, 0), b"").unwrap();
        let lock = File::create(dir.join("LOCK")).unwrap();
        lock.try_lock().unwrap();
        let e = inspect(root.path()).unwrap_err();
        assert!(matches!(e, InspectError::Held(_)), "{e}");
        assert!(e.to_string().contains("hookrelay admin backlog"), "{e}");
        drop(lock);
        assert_eq!(inspect(root.path()).unwrap().spools[0].pending, 0);
    }
}
