//! Segment files made ahead of the writer on their own thread: recycled from a
//! confirmed segment when there is one, zero-filled otherwise.
//!
//! An fdatasync after appending to a file must also commit the file's new size and
//! extents to the filesystem journal; after overwriting blocks that already hold
//! zeros it only flushes the data, which is markedly cheaper, and the writer syncs
//! hundreds to thousands of times a second (figures: docs/benchmarks.md, "Figures
//! behind choices in the code"). Filling a segment takes a while (64 MiB by
//! default), so the next one is prepared in the background while the current one
//! fills; when none is ready in time the writer creates a plain file, which the
//! record format reads the same way (zeros after the records mean "no more").
//!
//! Fills are avoided under load: opening fills two, one after the other, while the
//! relay is idle (the first append takes one; the first roll, which comes before any
//! segment is confirmed, the other), and after that a fill starts only when a
//! quarter of the current segment is written and no confirmed segment waits to be
//! recycled: filling a successor right at each take showed up in profiles, for a
//! file that recycling then made useless.
//!
//! The fill must not slow the writer's own syncs down: written in one go, 64 MiB of
//! dirty pages would reach the disk at once, with every fdatasync of the writer
//! queued behind them (see [`crate::disk`]). So the zeros go out a chunk at a time,
//! each written back before the next is dirtied. And it never takes the last free
//! space: a segment is only prepared while the filesystem keeps another one free
//! besides.
//!
//! Recycling (as PostgreSQL recycles its WAL segments) avoids the fill altogether:
//! a confirmed segment's blocks are written and its pages most likely still cached,
//! so the writer overwrites them at the cost of a zero-filled file without anyone
//! writing 64 MiB of zeros first (the fill's CPU and its writeback, which lengthens
//! the spool's syncs, both go). Its old
//! records stay behind the new ones; the record format keeps them from ever reading
//! as part of the log (see `record`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, TryRecvError, sync_channel};

use super::record;

/// Files being prepared end so: never a segment name, so a crash leaves nothing to replay.
const SUFFIX: &str = ".prealloc";

/// Numbers the files being prepared. Each fill has a file of its own, created new:
/// a fill thread left running by an earlier opening of the spool in this process (a
/// test's simulated crash) can then never write into a file a later one renamed into
/// a segment.
static FILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Zeros dirtied, then written back, at a time: the most a spool sync waits behind.
const CHUNK: usize = crate::disk::WRITEBACK_STEP as usize;

/// Files filled at opening, while the relay is still idle.
const FILLED_AT_OPEN: usize = 2;

/// A confirmed segment kept, ready, for reuse as the next one (at most one: more
/// would only hold disk space). Given by the checkpoint, taken at the next roll.
#[derive(Default)]
pub(super) struct Spare(Mutex<Option<(PathBuf, File)>>);

impl Spare {
    /// Takes `segment` out of the log (renamed) and readies it for reuse, unless a
    /// spare is kept already: `Ok(false)` leaves the segment to the caller to delete.
    ///
    /// Readying it is writing [`record::END`] at its start, so that its old records
    /// read as nothing, and syncing that before the file gets a segment name again
    /// (the writer's first batch there may never be synced). Nothing else is
    /// written: the sealed segment was trimmed to its records, a little short of a
    /// full segment, and the writer appends past that as to any file.
    pub(super) fn offer(&self, segment: &Path) -> io::Result<bool> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(false);
        }
        let dir = segment.parent().unwrap_or(Path::new("."));
        let path = dir.join(format!("spare-{}{SUFFIX}", next_name()));
        fs::rename(segment, &path)?;
        let readied = (|| {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.write_all_at(&record::END, 0)?;
            f.sync_data()?;
            Ok::<_, io::Error>(f)
        })();
        match readied {
            Ok(f) => *slot = Some((path, f)),
            // Out of the log already: not reused, then.
            Err(e) => {
                tracing::debug!(error = %e, "cannot ready a confirmed spool segment for reuse");
                let _ = fs::remove_file(&path);
            }
        }
        // Should the rename not survive a crash, the segment reappears as it was or
        // empty (`END` first): behind the cursor either way.
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!(error = %e, "cannot sync the spool directory");
        }
        Ok(true)
    }

    fn take(&self) -> Option<(PathBuf, File)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }
}

fn next_name() -> u64 {
    FILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A file ready to become a segment.
pub(super) struct Prepared {
    pub file: File,
    /// Old records follow wherever the new ones end: the writer marks the end.
    pub recycled: bool,
}

pub(super) struct Prealloc {
    dir: PathBuf,
    bytes: u64,
    spare: std::sync::Arc<Spare>,
    /// Files being filled (or filled and not yet taken), oldest first, each with
    /// where its result arrives. One thread fills a group of them in order.
    pending: VecDeque<(PathBuf, Receiver<io::Result<File>>)>,
    /// A failure is logged once until a preparation succeeds again.
    warned: bool,
    /// `take` waits for the file being filled (tests only).
    wait: bool,
}

impl Prealloc {
    /// Starts preparing the first files. Leftovers are deleted: files of an earlier run,
    /// or of an earlier opening in this process whose thread may still be filling one
    /// (it then writes into an unlinked file, harmlessly).
    pub(super) fn new(
        dir: &Path,
        bytes: u64,
        spare: std::sync::Arc<Spare>,
        wait: bool,
    ) -> Prealloc {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(SUFFIX) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let mut p = Prealloc {
            dir: dir.to_path_buf(),
            bytes,
            spare,
            pending: VecDeque::new(),
            warned: false,
            wait,
        };
        p.start(FILLED_AT_OPEN);
        p
    }

    /// Fills `n` files, one after the other (two fills at once would only share the disk).
    fn start(&mut self, n: usize) {
        let mut jobs = Vec::with_capacity(n);
        let mut queued = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = sync_channel(1);
            let path = self.dir.join(format!("next-{}{SUFFIX}", next_name()));
            jobs.push((path.clone(), tx));
            queued.push((path, rx));
        }
        let bytes = self.bytes;
        let spawned = std::thread::Builder::new()
            .name("spool-prealloc".into())
            .spawn(move || {
                for (target, tx) in jobs {
                    let _ = tx.send(fill(&target, bytes));
                }
            });
        if spawned.is_ok() {
            self.pending.extend(queued);
        }
    }

    /// A prepared file renamed to `target`, positioned at its start, if one is ready:
    /// the spare if there is one (the zero-filled file then waits for a later roll),
    /// else the oldest zero-filled one. With neither at hand a fill starts, for the
    /// roll after this one (see [`Prealloc::refill_if_short`]). `None` means the
    /// caller creates a plain file. The caller syncs the directory so the new name
    /// survives a crash.
    pub(super) fn take(&mut self, target: &Path) -> Option<Prepared> {
        self.refill_if_short();
        if let Some((path, file)) = self.spare.take() {
            match fs::rename(&path, target) {
                Ok(()) => {
                    return Some(Prepared {
                        file,
                        recycled: true,
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot reuse a confirmed spool segment");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let (path, rx) = self.pending.front()?;
        let received = if self.wait {
            rx.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            rx.try_recv()
        };
        let result = match received {
            Ok(result) => result,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(io::Error::other("preallocation thread died")),
        };
        let file = result.and_then(|f| fs::rename(path, target).map(|()| f));
        self.pending.pop_front();
        match file {
            Ok(file) => {
                self.warned = false;
                Some(Prepared {
                    file,
                    recycled: false,
                })
            }
            Err(e) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(error = %e, "cannot preallocate a spool segment; appending to a plain file (slower syncs)");
                }
                None
            }
        }
    }

    /// Starts a fill if nothing is ready or filling for the next roll: neither a
    /// confirmed segment to recycle nor a zero-filled file. The writer asks once the
    /// current segment is a quarter written, late enough for the segment before it to
    /// have been confirmed (recycled instead) and early enough for a fill to finish.
    pub(super) fn refill_if_short(&mut self) {
        if self.pending.is_empty() && self.spare.is_empty() {
            self.start(1);
        }
    }
}

/// Writes `bytes` zeros (not `fallocate`: unwritten extents would still be converted,
/// through the journal, at the first sync after each write) and syncs them.
fn fill(path: &Path, bytes: u64) -> io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let free = crate::disk::free_bytes(dir)?;
    if free < bytes.saturating_mul(2) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{free} bytes free: too few to keep a segment's worth spare"),
        ));
    }
    let mut f = OpenOptions::new().create_new(true).write(true).open(path)?;
    let zeros = vec![0u8; CHUNK];
    let mut left = bytes;
    let mut offset = 0u64;
    let written = (|| {
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            crate::disk::write_back(&f, offset, n as u64)?;
            offset += n as u64;
            left -= n as u64;
        }
        f.sync_all()?;
        f.seek(SeekFrom::Start(0)).map(|_| ())
    })();
    if let Err(e) = written {
        // Typically ENOSPC: give the space back to the records.
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fills_with_zeros_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("t{SUFFIX}"));
        let bytes = 3 * CHUNK as u64 + 100;
        fill(&path, bytes).unwrap();
        let all = fs::read(&path).unwrap();
        assert_eq!(all.len() as u64, bytes);
        assert!(all.iter().all(|&b| b == 0));
    }

    /// A fill still running from an earlier opening never writes into the file a
    /// later opening renamed into a segment.
    #[test]
    fn an_earlier_fill_cannot_touch_a_later_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut slow = Prealloc::new(dir.path(), 32 << 20, Default::default(), false);
        let mut quick = Prealloc::new(dir.path(), 4096, Default::default(), false);
        let target = dir.path().join("segment");
        let mut segment = loop {
            if let Some(p) = quick.take(&target) {
                break p.file;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        segment.write_all(&[7u8; 4096]).unwrap();
        // Let the slow fill finish: before, it shared the file and zeroed the records.
        for (_, rx) in slow.pending.drain(..) {
            let _ = rx.recv();
        }
        assert_eq!(fs::read(&target).unwrap(), vec![7u8; 4096]);
    }

    /// Opening fills two files: the first roll takes one and the next is ready, not
    /// started by that roll under load. Once both are taken, a fill starts only when
    /// asked and nothing is at hand.
    #[test]
    fn two_files_are_filled_at_opening() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Prealloc::new(dir.path(), 4096, Default::default(), true);
        assert_eq!(p.pending.len(), 2);
        let second = p.pending[1].0.clone();
        let a = p.take(&dir.path().join("a")).unwrap();
        assert_eq!(p.pending.len(), 1);
        assert_eq!(p.pending[0].0, second, "the first take started no fill");
        let b = p.take(&dir.path().join("b")).unwrap();
        assert!(
            p.pending.is_empty(),
            "no fill under load while one may be recycled"
        );
        assert!(!a.recycled && !b.recycled);
        p.refill_if_short();
        assert_eq!(p.pending.len(), 1, "a fill starts when nothing is at hand");
        p.refill_if_short();
        assert_eq!(p.pending.len(), 1);
        for name in ["a", "b"] {
            assert_eq!(fs::read(dir.path().join(name)).unwrap(), vec![0u8; 4096]);
        }
    }

    /// The last free space stays for records: no file is left behind either.
    #[test]
    fn refuses_when_the_disk_could_not_spare_another_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("t{SUFFIX}"));
        let free = crate::disk::free_bytes(dir.path()).unwrap();
        let err = fill(&path, free / 2 + 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(!path.exists());
    }
}
