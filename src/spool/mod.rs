//! The durable spool: an append-only segmented log with group commit.
//!
//! A 200 is sent only after the event's record is fdatasync'd here. One writer
//! thread takes appends from every request, writes whatever has queued up as one
//! batch, syncs once, and only then answers them all (group commit: one fsync per
//! batch, not per request). The forwarder takes synced records from memory while it
//! keeps up (the writer hands them over with their place on disk) and reads them
//! back from disk when it falls behind or after a restart; it publishes them and
//! moves a persisted cursor forward as the sink confirms; segments wholly behind
//! the cursor are deleted.
//!
//! Layout of the directory:
//! - `LOCK`: held with an exclusive file lock so two processes never share a spool.
//! - `{base_seq:020}.seg`: segments; the first record in each has sequence `base_seq`.
//! - `cursor`: the first sequence not yet confirmed (8 bytes LE + CRC32C). It may
//!   lag the truth; replaying from an older cursor only causes duplicates.

mod faults;
mod prealloc;
#[cfg(test)]
mod proptests;
mod record;
mod recover;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::event::{Accepted, Event};
use crate::metrics;

pub use faults::{FSYNC_AFTER_ENV, FSYNC_DELAY_ENV};
pub use record::{
    DecodeError, EncodeError, Frame, MAX_BODY_LEN, ReadError, Record, decode, encode, find_record,
    read_frame, seal,
};
pub use recover::{Hole, QUARANTINE_DIR};

pub use crate::supervise::EXIT_FSYNC_FAILED;

/// Appends queued beyond this wait in their request tasks (backpressure).
const QUEUE_DEPTH: usize = 16 * 1024;
/// Upper bound on one group-commit batch, to keep latency of the first request bounded.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Synced records kept in memory for the forwarder, at most (frame bytes). Beyond it,
/// while the sink is slow or down, the forwarder reads them back from disk.
const TAIL_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Why an append was not made durable; every variant is answered 503.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    #[error("spool is full")]
    Full,
    #[error("spool write failed: {0}")]
    Io(String),
    #[error("spool is closed")]
    Closed,
    /// The event cannot be framed as it is (the edge bounds fields so that this
    /// never happens; if it does, it is refused, never cut).
    #[error("event cannot be stored: {0}")]
    Unframable(EncodeError),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("spool directory {0} is in use by another hookrelay process (lock held on LOCK)")]
    Locked(PathBuf),
    #[error("spool directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Append {
    frame: Bytes,
    event: Event,
    reply: oneshot::Sender<Result<u64, AppendError>>,
}

/// A synced record handed from the writer to the reader, with where it lies on disk
/// so the reader can carry on from there.
struct Synced {
    record: Record,
    segment: u64,
    /// Offset just past its frame in that segment.
    end: u64,
    frame_len: usize,
}

/// Synced records the reader has not taken yet: consecutive sequences, ending at the
/// durable end unless the size bound cut it short (or empty).
struct Tail {
    records: VecDeque<Synced>,
    bytes: usize,
    max_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    base: u64,
    bytes: u64,
    /// Written by this process, so it holds only records whose CRC covers their
    /// sequence (see `record`): once confirmed it may be reused as a later segment.
    recyclable: bool,
    /// Holds damaged bytes that could not be copied to the quarantine (no room, say):
    /// once confirmed it is moved there whole instead of being deleted.
    keep: bool,
}

/// State shared by the writer, the forwarder and readiness checks.
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes of all segments on disk, for the size limit.
    bytes: AtomicU64,
    /// First sequence not yet confirmed by the sink.
    cursor: AtomicU64,
    /// The cursor as last persisted.
    persisted: AtomicU64,
    /// Segments in order; the last is the one being appended to.
    segments: Mutex<Vec<Segment>>,
    /// Set when a write fails so /readyz reports it.
    write_failed: AtomicBool,
    /// Set when an append was refused for room; cleared when segments are freed.
    full: AtomicBool,
    /// Group commits (fdatasyncs) so far: appends per sync is the batching achieved.
    syncs: AtomicU64,
    /// Least time between the starts of two syncs while appends come concurrently,
    /// in microseconds (see [`Spool::pace_syncs`]).
    sync_interval_us: AtomicU64,
    tail: Mutex<Tail>,
    /// Bumped when the writer replaces its still-empty segment file by a zero-filled
    /// one under the same name: a reader holding the old file reopens it.
    swaps: AtomicU64,
    /// A confirmed segment kept for the next one to be prepared from.
    spare: Arc<prealloc::Spare>,
    /// Segments started in a recycled file so far.
    recycled: AtomicU64,
    /// Bytes holding no readable record, by segment, found at opening or by the
    /// reader: it jumps them (see `recover`).
    holes: Mutex<Vec<(u64, Hole)>>,
    size: metrics::SpoolSize,
}

impl Tail {
    fn new(max_bytes: usize) -> Tail {
        Tail {
            records: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Keeps the tail consecutive: past its size bound records are left to the disk,
    /// and the first one kept after such a gap starts the tail afresh.
    fn push(&mut self, s: Synced) {
        if self
            .records
            .back()
            .is_some_and(|b| b.record.seq + 1 != s.record.seq)
        {
            self.records.clear();
            self.bytes = 0;
        }
        if self.bytes + s.frame_len > self.max_bytes {
            return;
        }
        self.bytes += s.frame_len;
        self.records.push_back(s);
    }

    fn pop(&mut self) -> Option<Synced> {
        let s = self.records.pop_front()?;
        self.bytes -= s.frame_len;
        Some(s)
    }
}

impl Shared {
    fn segments(&self) -> std::sync::MutexGuard<'_, Vec<Segment>> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn holes(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Hole)>> {
        self.holes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies a hole's bytes to the quarantine, counts it, logs it at error level and
    /// tells the reader to jump it. An error (the copy failed) is the caller's to act
    /// on: the bytes must not be freed uncopied.
    fn quarantine(&self, segment: u64, file: &File, hole: Hole, why: &str) {
        let lost = hole.to_seq - hole.from_seq;
        let kept = self.copy_to_quarantine(segment, file, &hole);
        tracing::error!(segment, offset = hole.offset, bytes = hole.len, first_lost_seq = hole.from_seq,
            lost_records = lost, next_seq = hole.to_seq, error = why, quarantined = %kept,
            "unreadable bytes in the spool: kept in quarantine, delivery goes on after them");
        metrics::spool_quarantined(hole.len, lost);
        let mut holes = self.holes();
        if !holes.contains(&(segment, hole)) {
            holes.push((segment, hole));
        }
    }

    /// Copies a hole's bytes to the quarantine and says where. If that fails (a full
    /// disk), the segment is kept whole instead, to be moved there once confirmed:
    /// the bytes are never deleted, and opening never fails for want of room.
    fn copy_to_quarantine(&self, segment: u64, file: &File, hole: &Hole) -> String {
        if hole.len == 0 {
            return String::new();
        }
        match recover::quarantine(&self.dir, segment, file, hole) {
            Ok(path) => path.display().to_string(),
            Err(e) => {
                tracing::error!(segment, error = %e,
                    "cannot copy damaged spool bytes to the quarantine; the segment will be moved there whole once delivered");
                if let Some(s) = self.segments().iter_mut().find(|s| s.base == segment) {
                    s.keep = true;
                }
                format!("(whole segment, later: {e})")
            }
        }
    }

    /// A hole known to start at `offset` of segment `segment`.
    fn hole_at(&self, segment: u64, offset: u64) -> Option<Hole> {
        self.holes()
            .iter()
            .find(|(s, h)| *s == segment && h.offset == offset)
            .map(|(_, h)| *h)
    }
}

/// An append the writer has: resolves to its sequence once synced, or the refusal.
pub struct Pending(oneshot::Receiver<Result<u64, AppendError>>);

impl std::future::Future for Pending {
    type Output = Result<u64, AppendError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AppendError::Closed)))
    }
}

/// Handle for appending; cheap to clone into every request task.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Append>,
    shared: Arc<Shared>,
    durable: watch::Receiver<u64>,
    /// The exclusive lock on `LOCK`, released when the last handle and the reader are gone.
    _lock: Arc<File>,
}

/// What opening found on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Records found from the cursor on: they will be published again.
    pub pending: u64,
    /// Bytes cut from a torn tail (never answered 200).
    pub truncated_bytes: u64,
    /// Bytes of damage copied to `quarantine/` (see `recover`).
    pub quarantined_bytes: u64,
    /// Records lost in that damage.
    pub lost_records: u64,
}

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

impl Spool {
    /// Opens (or creates) the spool, recovers it (see `recover`), hands every record
    /// it holds to `each` (the dedup window remembers their ids), and starts the
    /// writer thread. Returns the reader the forwarder uses.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        each: impl FnMut(&Record),
    ) -> Result<(Spool, Reader, Recovery), OpenError> {
        Spool::open_with(dir, max_bytes, segment_bytes, each, false)
    }

    /// `wait_for_prepared`: a roll waits for the segment being zero-filled instead of
    /// starting a plain one, so that what tests exercise does not depend on timing.
    fn open_with(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        mut each: impl FnMut(&Record),
        wait_for_prepared: bool,
    ) -> Result<(Spool, Reader, Recovery), OpenError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_err(dir))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(dir)(e)),
        }

        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let name = entry.map_err(io_err(dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = name
                .strip_suffix(".seg")
                .and_then(|b| b.parse::<u64>().ok())
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let stored = read_cursor(dir);
        let stored_cursor = stored.map(|(c, _)| c);
        // Every record before this was fdatasync'd as of the last checkpoint.
        let synced_end = stored.map_or(0, |(_, synced)| synced);

        let mut recovery = Recovery::default();
        let mut segments = Vec::new();
        let mut holes = Vec::new();
        let mut next_seq = stored_cursor.unwrap_or(0);
        // Whether the last segment's records end in `record::END` (it was recycled).
        let mut marked_end = false;
        // The last segment holds damage: appends go to a new one.
        let mut sealed_by_damage = false;
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(dir, base);
            let last = i + 1 == bases.len();
            // Every byte of a segment before the last was synced before the next
            // segment was written to: nothing there is a torn write.
            let (expect_until, seq_limit) = match bases.get(i + 1) {
                Some(&next) => (next, next),
                None => (synced_end, u64::MAX),
            };
            let mut scan = recover::scan_segment(&path, base, expect_until, seq_limit, &mut each)
                .map_err(io_err(&path))?;
            if let Some(tail) = scan.bad_tail.take() {
                let cut = scan.data_end.saturating_sub(tail.offset);
                if last && tail.seq >= synced_end {
                    tracing::warn!(segment = %path.display(), offset = tail.offset, bytes = cut, error = %tail.why,
                        "spool tail is torn; truncating it (it was never synced, so no request was answered 200 for it)");
                    let mut f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    if scan.data_end < scan.file_len {
                        // Zero the bad bytes, keeping the preallocated space after them.
                        f.seek(SeekFrom::Start(tail.offset))
                            .map_err(io_err(&path))?;
                        f.write_all(&vec![0; cut as usize]).map_err(io_err(&path))?;
                    } else {
                        f.set_len(tail.offset).map_err(io_err(&path))?;
                    }
                    f.sync_all().map_err(io_err(&path))?;
                    recovery.truncated_bytes += cut;
                    metrics::spool_truncated(cut);
                } else {
                    // Damage where records are known to be: up to the next segment,
                    // or up to the last synced record.
                    let to_seq = if last {
                        synced_end.max(tail.seq)
                    } else {
                        seq_limit
                    };
                    scan.holes.push(Hole {
                        offset: tail.offset,
                        len: cut,
                        from_seq: tail.seq,
                        to_seq,
                    });
                    scan.next_seq = to_seq;
                    scan.good_len = scan.data_end;
                }
            }
            let damaged = !scan.holes.is_empty();
            let mut keep = false;
            if damaged {
                let file = File::open(&path).map_err(io_err(&path))?;
                for hole in &scan.holes {
                    if hole.len > 0
                        && let Err(e) = recover::quarantine(dir, base, &file, hole)
                    {
                        // Never a reason not to start: the segment is kept whole.
                        tracing::error!(segment = %path.display(), error = %e,
                            "cannot copy damaged spool bytes to the quarantine; the segment will be moved there whole once delivered");
                        keep = true;
                    }
                    tracing::error!(segment = %path.display(), offset = hole.offset, bytes = hole.len,
                        first_lost_seq = hole.from_seq, lost_records = hole.to_seq - hole.from_seq,
                        next_seq = hole.to_seq,
                        "unreadable bytes in the spool where acknowledged records are: kept in quarantine, delivery goes on after them");
                    metrics::spool_quarantined(hole.len, hole.to_seq - hole.from_seq);
                    recovery.quarantined_bytes += hole.len;
                    recovery.lost_records += hole.to_seq - hole.from_seq;
                    holes.push((base, *hole));
                }
            }
            let bytes = if last && !damaged {
                scan.good_len
            } else {
                scan.file_len
            };
            segments.push(Segment {
                base,
                bytes,
                // Not if it holds records of the first version, which a later use
                // would not tell from its own, or bytes of unknown origin.
                recyclable: !scan.unsequenced && !damaged,
                keep,
            });
            next_seq = scan.next_seq;
            marked_end = scan.marked_end;
            sealed_by_damage = last && damaged;
        }
        let first_base = segments.first().map_or(next_seq, |s| s.base);
        let cursor = stored_cursor
            .unwrap_or(first_base)
            .clamp(first_base, next_seq);
        recovery.pending = next_seq - cursor;

        let (active, preallocated) = match segments.last() {
            Some(seg) if !sealed_by_damage => {
                let path = segment_path(dir, seg.base);
                // Records go after the last good one (the writer writes at offsets),
                // over any preallocated zeros or old records.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                let len = f.metadata().map_err(io_err(&path))?.len();
                (f, len > seg.bytes)
            }
            _ => {
                marked_end = false;
                let f = create_segment(dir, next_seq).map_err(io_err(dir))?;
                segments.push(Segment {
                    base: next_seq,
                    bytes: 0,
                    recyclable: true,
                    keep: false,
                });
                (f, false)
            }
        };
        let spare = Arc::new(prealloc::Spare::default());
        let total: u64 = segments.iter().map(|s| s.bytes).sum();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            max_bytes,
            bytes: AtomicU64::new(total),
            cursor: AtomicU64::new(cursor),
            persisted: AtomicU64::new(cursor),
            segments: Mutex::new(segments),
            write_failed: AtomicBool::new(false),
            full: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            tail: Mutex::new(Tail::new(TAIL_MAX_BYTES)),
            swaps: AtomicU64::new(0),
            sync_interval_us: AtomicU64::new(0),
            spare: spare.clone(),
            recycled: AtomicU64::new(0),
            holes: Mutex::new(holes),
            size: metrics::SpoolSize::register(),
        });
        let lock = Arc::new(lock);
        shared.size.set(total, next_seq - cursor);
        metrics::spool_limit(max_bytes);

        let (durable_tx, durable_rx) = watch::channel(next_seq);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            shared: shared.clone(),
            file: active,
            segment: shared.segments().last().map_or(next_seq, |s| s.base),
            preallocated,
            marked: marked_end,
            prealloc: prealloc::Prealloc::new(dir, segment_bytes, spare, wait_for_prepared),
            next_seq,
            segment_bytes,
            durable: durable_tx,
            faults: faults::Faults::from_env(),
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                // A panic here would leave appends unanswered: stop instead, like a
                // failed sync (what was answered 200 is on disk).
                let run = std::panic::AssertUnwindSafe(|| writer.run(rx));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    crate::supervise::stop(&format!(
                        "the spool writer panicked: {}",
                        crate::supervise::panic_text(&*panic)
                    ));
                }
            })
            .map_err(io_err(dir))?;

        let reader = Reader::new(shared.clone(), durable_rx.clone(), cursor, lock.clone())
            .map_err(io_err(dir))?;
        Ok((
            Spool {
                tx,
                shared,
                durable: durable_rx,
                _lock: lock,
            },
            reader,
            recovery,
        ))
    }

    /// Makes one event durable; resolves after the fdatasync covering it. The record
    /// is framed here, on the caller's task, not on the writer thread.
    pub async fn append(&self, event: Accepted) -> Result<u64, AppendError> {
        self.submit(event).await?.await
    }

    /// Hands one event to the writer; the [`Pending`] resolves after the fdatasync
    /// covering it. Once this returns, the append happens whether or not anyone
    /// awaits it: a caller that may be cancelled keeps the `Pending` to learn the
    /// outcome (the dedup reservation is committed or released by it).
    pub async fn submit(&self, event: Accepted) -> Result<Pending, AppendError> {
        let frame = encode(&event).map_err(AppendError::Unframable)?;
        // The body ends the frame. Kept as a slice of it, the event handed to the
        // forwarder holds one exact allocation instead of pinning the connection's
        // read buffer (which a small body may share with much more) until confirmed.
        let mut event = event.into_event();
        event.share_body(frame.slice(record::body_range(frame.len(), event.body().len())));
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Append {
                frame,
                event,
                reply,
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        Ok(Pending(rx))
    }

    /// Lets the writer wait until `interval` has passed since its previous sync began
    /// before starting the next one, collecting the appends that arrive meanwhile into
    /// the same group commit. Only while appends come concurrently (the previous
    /// group held more than one): a lone sender never waits.
    ///
    /// Why: on a virtual disk each fdatasync costs 90-170 us of CPU. At moderate load
    /// groups are small and syncs many (open loop at 8,500/s: 2,300-3,300 syncs/s);
    /// with 1 ms, closed loop here went from 0.49-0.61 to 0.40-0.53 CPU s per 10k
    /// events and 10-15% more requests/s, at up to `interval` more per 200.
    pub fn pace_syncs(&self, interval: Duration) {
        let us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        self.shared.sync_interval_us.store(us, Ordering::Relaxed);
    }

    /// Ready to accept: the writer is healthy and the spool has room.
    pub fn has_room(&self) -> bool {
        !self.shared.write_failed.load(Ordering::Relaxed)
            && !self.shared.full.load(Ordering::Relaxed)
            && self.shared.bytes.load(Ordering::Relaxed) < self.shared.max_bytes
    }

    /// Group commits (fdatasyncs) since the spool was opened.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Sequence one past the last durable record.
    pub fn durable_end(&self) -> u64 {
        *self.durable.borrow()
    }

    /// First sequence not yet confirmed.
    pub fn cursor(&self) -> u64 {
        self.shared.cursor.load(Ordering::Acquire)
    }

    /// Everything before `cursor` is confirmed. Cheap (an atomic), so the forwarder
    /// calls it on every confirmation; the disk catches up in [`Spool::checkpoint`].
    pub fn confirm_until(&self, cursor: u64) {
        let s = &self.shared;
        s.cursor.fetch_max(cursor, Ordering::AcqRel);
        let cursor = s.cursor.load(Ordering::Acquire);
        s.size.set(
            s.bytes.load(Ordering::Acquire),
            self.durable_end().saturating_sub(cursor),
        );
    }

    /// Persists `upto` (at most the confirmed cursor) as the restart point, then
    /// deletes the segments wholly behind it; returns the cursor persisted. The caller
    /// passes a cursor its sinks have made durable (see `Sink::sync`), which may trail
    /// the one in memory. Blocking (an fsync, a rename, unlinks): run it off the async
    /// workers, where it would stall every connection scheduled on the same worker.
    pub fn checkpoint(&self, upto: u64) -> io::Result<u64> {
        let cursor = self.persist_cursor(upto.min(self.cursor()))?;
        let s = &self.shared;
        // Unlinked outside the lock: the writer takes it on every batch.
        let behind: Vec<Segment> = {
            let mut segs = s.segments();
            let n = segs
                .iter()
                .skip(1)
                .take_while(|next| next.base <= cursor)
                .count();
            segs.drain(..n).collect()
        };
        let mut freed = 0;
        for (i, seg) in behind.iter().enumerate() {
            let path = segment_path(&s.dir, seg.base);
            let recycled = seg.recyclable
                && s.spare.offer(&path).unwrap_or_else(|e| {
                    tracing::debug!(segment = %path.display(), error = %e, "cannot keep a confirmed spool segment for reuse");
                    false
                });
            let gone = if seg.keep {
                recover::keep_whole(&s.dir, &path)
            } else if recycled {
                Ok(())
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = gone {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete confirmed spool segment");
                // Keep it (and the rest) listed so its bytes stay counted; retried next time.
                s.segments().splice(0..0, behind[i..].iter().copied());
                break;
            }
            freed += seg.bytes;
        }
        if freed > 0 {
            s.full.store(false, Ordering::Relaxed);
        }
        let total = s.bytes.fetch_sub(freed, Ordering::AcqRel) - freed;
        s.size
            .set(total, self.durable_end().saturating_sub(self.cursor()));
        Ok(cursor)
    }

    /// Writes the cursor file (atomically, via rename) and returns the cursor written.
    /// Losing it only causes duplicates. It also records how far the log was synced,
    /// so that recovery can tell damage to acknowledged records from a torn write.
    fn persist_cursor(&self, cursor: u64) -> io::Result<u64> {
        let dir = &self.shared.dir;
        let mut buf = cursor.to_le_bytes().to_vec();
        buf.extend_from_slice(&self.durable_end().to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
        let tmp = dir.join("cursor.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        fs::rename(&tmp, dir.join("cursor"))?;
        // The rename itself must survive a crash for the synced end to be trusted.
        File::open(dir)?.sync_all()?;
        self.shared.persisted.store(cursor, Ordering::Release);
        Ok(cursor)
    }

    /// The cursor as last persisted: what a checkpoint whose sinks could not sync
    /// persists again, with the synced end brought up to date.
    pub fn persisted_cursor(&self) -> u64 {
        self.shared.persisted.load(Ordering::Acquire)
    }
}

/// The persisted cursor and, when recorded, the sequence every record before which
/// was synced (files written before it was recorded hold the cursor alone).
fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let buf = fs::read(dir.join("cursor")).ok()?;
    if buf.len() != 12 && buf.len() != 20 {
        return None;
    }
    let (value, crc) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(value).to_le_bytes() != crc {
        tracing::warn!("spool cursor file is corrupt; replaying from the oldest segment");
        return None;
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&value[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Some((word(0), if value.len() == 16 { word(8) } else { 0 }))
}

/// Creates a segment and syncs the directory so its name survives a crash.
fn create_segment(dir: &Path, base: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(segment_path(dir, base))?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// The single thread that writes and syncs.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    /// Base sequence of the segment `file` is.
    segment: u64,
    /// Whether `file` was zero-filled ahead (its syncs then only flush data).
    preallocated: bool,
    /// Whether `file` was recycled: every write then ends in `record::END`, since
    /// old records, not zeros, follow the new ones.
    marked: bool,
    prealloc: prealloc::Prealloc,
    next_seq: u64,
    segment_bytes: u64,
    durable: watch::Sender<u64>,
    faults: faults::Faults,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Append>) {
        let mut batch: Vec<Append> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        // When the previous group commit began, and whether it was shared.
        let mut last_start = Instant::now();
        let mut last_shared = false;
        while let Some(first) = rx.blocking_recv() {
            let interval =
                Duration::from_micros(self.shared.sync_interval_us.load(Ordering::Relaxed));
            if last_shared && let Some(wait) = interval.checked_sub(last_start.elapsed()) {
                std::thread::sleep(wait);
            }
            last_start = Instant::now();
            batch.push(first);
            let mut size = batch[0].frame.len();
            while size < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(a) => {
                        size += a.frame.len();
                        batch.push(a);
                    }
                    Err(_) => break,
                }
            }
            last_shared = batch.len() > 1;
            self.commit(&mut batch, &mut buf);
        }
    }

    /// Writes one batch, syncs it, then answers every request in it.
    fn commit(&mut self, batch: &mut Vec<Append>, buf: &mut Vec<u8>) {
        buf.clear();
        let mut accepted = Vec::with_capacity(batch.len());
        let room = self
            .shared
            .max_bytes
            .saturating_sub(self.shared.bytes.load(Ordering::Acquire));
        let first = self.next_seq;
        for a in batch.drain(..) {
            if (buf.len() + a.frame.len()) as u64 > room {
                self.shared.full.store(true, Ordering::Relaxed);
                let _ = a.reply.send(Err(AppendError::Full));
            } else {
                let at = buf.len();
                buf.extend_from_slice(&a.frame);
                record::seal(&mut buf[at..], first + accepted.len() as u64);
                accepted.push((a.reply, a.event, a.frame.len()));
            }
        }
        if accepted.is_empty() {
            return;
        }
        if let Err(e) = self.roll_if_needed(buf.len() as u64) {
            tracing::error!(error = %e, "cannot start a new spool segment");
            self.fail(accepted.into_iter().map(|(r, ..)| r), e);
            return;
        }
        let before = self.segment_len();
        let records = buf.len();
        if self.marked {
            // Written with the batch, overwritten by the next one.
            buf.extend_from_slice(&record::END);
        }
        let written = std::os::unix::fs::FileExt::write_all_at(&self.file, buf, before);
        buf.truncate(records);
        if let Err(e) = written {
            // Typically ENOSPC. Cut the partial write so the segment stays valid, and
            // refuse the batch (503); the provider retries.
            tracing::error!(error = %e, "spool write failed; refusing this batch");
            if let Err(e2) = self.file.set_len(before) {
                crate::supervise::stop(&format!(
                    "spool write failed ({e}) and the partial write cannot be undone ({e2})"
                ));
            }
            self.fail(accepted.into_iter().map(|(r, ..)| r), e);
            return;
        }
        let started = Instant::now();
        if let Err(e) = self.faults.sync_data(&self.file) {
            // After a failed fsync the kernel may have dropped the dirty pages: the data's
            // fate is unknown, and retrying could report success for lost writes.
            crate::supervise::stop(&format!("spool fdatasync failed: {e}"));
        }
        metrics::spool_fsync(started.elapsed());
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.shared.write_failed.store(false, Ordering::Relaxed);

        let n = accepted.len() as u64;
        self.next_seq += n;
        {
            let mut segs = self.shared.segments();
            if let Some(last) = segs.last_mut() {
                last.bytes += buf.len() as u64;
            }
        }
        let total = self
            .shared
            .bytes
            .fetch_add(buf.len() as u64, Ordering::AcqRel)
            + buf.len() as u64;
        let mut replies = Vec::with_capacity(accepted.len());
        {
            // Before `durable` moves: the reader must find them here once it does.
            let mut tail = self.shared.tail();
            let mut end = before;
            for (i, (reply, event, frame_len)) in accepted.into_iter().enumerate() {
                end += frame_len as u64;
                let synced = Synced {
                    record: Record {
                        seq: first + i as u64,
                        event,
                    },
                    segment: self.segment,
                    end,
                    frame_len,
                };
                tail.push(synced);
                replies.push(reply);
            }
        }
        self.durable.send_replace(self.next_seq);
        self.shared.size.set(
            total,
            self.next_seq
                .saturating_sub(self.shared.cursor.load(Ordering::Acquire)),
        );
        for (i, reply) in replies.into_iter().enumerate() {
            let _ = reply.send(Ok(first + i as u64));
        }
    }

    fn segment_len(&self) -> u64 {
        self.shared.segments().last().map_or(0, |s| s.bytes)
    }

    fn roll_if_needed(&mut self, incoming: u64) -> io::Result<()> {
        let len = self.segment_len();
        if len == 0 {
            // Still empty (a fresh spool, or just after a start): swap in a zero-filled
            // file as soon as one is ready, under the same name.
            if !self.preallocated
                && let Some(p) = self.take_prepared(self.segment)?
            {
                self.file = p.file;
                self.preallocated = true;
                self.marked = p.recycled;
                self.shared.swaps.fetch_add(1, Ordering::Release);
            }
            return Ok(());
        }
        if len + incoming <= self.segment_bytes {
            if len > self.segment_bytes / 4 {
                self.prealloc.refill_if_short();
            }
            return Ok(());
        }
        let (file, preallocated, marked) = match self.take_prepared(self.next_seq)? {
            Some(p) => (p.file, true, p.recycled),
            None => (
                create_segment(&self.shared.dir, self.next_seq)?,
                false,
                false,
            ),
        };
        // The sealed segment's unused zeros (or old records) go back to the
        // filesystem. Not synced: if the crash comes first, zeros or `record::END`
        // after the records read as their end anyway.
        if self.preallocated
            && let Err(e) = self.file.set_len(len)
        {
            tracing::debug!(error = %e, "cannot trim a sealed spool segment");
        }
        self.file = file;
        self.preallocated = preallocated;
        self.marked = marked;
        self.segment = self.next_seq;
        self.shared.segments().push(Segment {
            base: self.next_seq,
            bytes: 0,
            recyclable: true,
            keep: false,
        });
        Ok(())
    }

    /// A prepared (zero-filled or recycled) file renamed to segment `base`, if one is
    /// ready, with the directory synced so the new name survives a crash.
    fn take_prepared(&mut self, base: u64) -> io::Result<Option<prealloc::Prepared>> {
        let dir = &self.shared.dir;
        let Some(p) = self.prealloc.take(&segment_path(dir, base)) else {
            return Ok(None);
        };
        File::open(dir)?.sync_all()?;
        if p.recycled {
            self.shared.recycled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(p))
    }

    fn fail(
        &self,
        replies: impl Iterator<Item = oneshot::Sender<Result<u64, AppendError>>>,
        e: io::Error,
    ) {
        self.shared.write_failed.store(true, Ordering::Relaxed);
        for r in replies {
            let _ = r.send(Err(AppendError::Io(e.to_string())));
        }
    }
}

/// Reads a segment from a position with `pread`, buffering nothing: past the synced
/// end of the segment being written the bytes may still be preallocated zeros, and
/// a read-ahead buffer would keep serving them after the writer put records there.
struct At<'a> {
    file: &'a File,
    pos: &'a mut u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, *self.pos)?;
        *self.pos += n as u64;
        Ok(n)
    }
}

/// Reads durable records in order for the forwarder. Blocking: call it from
/// `spawn_blocking`. It never reads past the synced end.
pub struct Reader {
    shared: Arc<Shared>,
    durable: watch::Receiver<u64>,
    file: File,
    /// Offset of the next record in `file`.
    pos: u64,
    segment_base: u64,
    next_seq: u64,
    /// Where the next record lies on disk after some were taken from memory.
    resume_at: Option<(u64, u64)>,
    /// `Shared::swaps` as of opening `file`.
    swaps: u64,
    /// Damage at this offset of the segment being written reached its synced end:
    /// the next read looks for newer records after it.
    resync: Option<u64>,
    /// Where bad bytes were seen once and the segment reopened to read them again.
    recheck: Option<(u64, u64)>,
    _lock: Arc<File>,
}

impl Reader {
    fn new(
        shared: Arc<Shared>,
        durable: watch::Receiver<u64>,
        from: u64,
        lock: Arc<File>,
    ) -> io::Result<Reader> {
        let base = {
            let segs = shared.segments();
            segs.iter()
                .rev()
                .find(|s| s.base <= from)
                .or(segs.first())
                .map_or(from, |s| s.base)
        };
        let swaps = shared.swaps.load(Ordering::Acquire);
        let file = File::open(segment_path(&shared.dir, base))?;
        let mut reader = Reader {
            swaps,
            shared,
            durable,
            file,
            pos: 0,
            segment_base: base,
            next_seq: base,
            resume_at: None,
            resync: None,
            recheck: None,
            _lock: lock,
        };
        // Skip what was confirmed before the restart.
        while reader.next_seq < from {
            if reader
                .read_batch(((from - reader.next_seq) as usize).min(4096))?
                .is_empty()
            {
                break;
            }
        }
        Ok(reader)
    }

    /// Sequence of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// A receiver that changes whenever more records become durable.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Up to `max` synced records from the current position, handed over in memory by
    /// the writer: no read, no decode, no thread hop. Empty when the next record has to
    /// come from disk ([`Reader::read_batch`]): after a restart, or once the forwarder
    /// fell further behind than the writer keeps in memory.
    ///
    /// `max_body_bytes` bounds the bodies taken (one record is taken whatever its size).
    pub fn take_synced(&mut self, max: usize, max_body_bytes: usize) -> Vec<Record> {
        let mut tail = self.shared.tail();
        while tail
            .records
            .front()
            .is_some_and(|s| s.record.seq < self.next_seq)
        {
            tail.pop();
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max
            && (out.is_empty() || bytes < max_body_bytes)
            && tail
                .records
                .front()
                .is_some_and(|s| s.record.seq == self.next_seq)
            && let Some(s) = tail.pop()
        {
            bytes += s.record.event.body().len();
            self.next_seq += 1;
            self.resume_at = Some((s.segment, s.end));
            self.resync = None;
            out.push(s.record);
        }
        out
    }

    /// Up to `max` durable records from the current position, read from disk; empty
    /// when caught up. Blocking.
    pub fn read_batch(&mut self, max: usize) -> io::Result<Vec<Record>> {
        self.read_batch_within(max, usize::MAX)
    }

    /// [`Reader::read_batch`], stopping once the bodies read reach `max_body_bytes`
    /// (one record is read whatever its size).
    pub fn read_batch_within(
        &mut self,
        max: usize,
        max_body_bytes: usize,
    ) -> io::Result<Vec<Record>> {
        if let Some((segment, offset)) = self.resume_at {
            if !self.seek(segment, offset)? {
                return Ok(Vec::new());
            }
            self.resume_at = None;
        } else if self.shared.swaps.load(Ordering::Acquire) != self.swaps
            && !self.seek(self.segment_base, self.pos)?
        {
            return Ok(Vec::new());
        }
        let end = *self.durable.borrow();
        if let Some(at) = self.resync.take()
            && !self.bad_bytes(at, "unreadable bytes (found earlier)", end)?
        {
            return Ok(Vec::new());
        }
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0;
        while out.len() < max && self.next_seq < end && (out.is_empty() || bytes < max_body_bytes) {
            let at = self.pos;
            let mut reading = At {
                file: &self.file,
                pos: &mut self.pos,
            };
            let why = match read_frame(&mut reading, self.next_seq) {
                Ok(Frame::Record(frame)) => match decode(self.next_seq, frame) {
                    Ok(rec) => {
                        self.next_seq += 1;
                        bytes += rec.event.body().len();
                        out.push(rec);
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
                Err(ReadError::Io(e)) => return Err(e),
                // The end of a sealed segment's records (its later bytes may be left
                // from an earlier use): the next record starts the next segment.
                Ok(Frame::End { .. }) | Err(ReadError::Decode(DecodeError::OtherSequence(_)))
                    if self.next_segment_base() == Some(self.next_seq) =>
                {
                    self.next_segment()?;
                    continue;
                }
                // An intact record of a later sequence where this one should be.
                Err(ReadError::Decode(DecodeError::OtherSequence(found)))
                    if found > self.next_seq && found < end =>
                {
                    let hole = Hole {
                        offset: at,
                        len: 0,
                        from_seq: self.next_seq,
                        to_seq: found,
                    };
                    self.shared
                        .quarantine(self.segment_base, &self.file, hole, "records missing");
                    self.pos = at;
                    self.next_seq = found;
                    continue;
                }
                Ok(Frame::End { .. }) => "the records end before the last synced one".into(),
                Err(ReadError::Decode(e)) => e.to_string(),
            };
            if !self.bad_bytes(at, &why, end)? {
                break;
            }
        }
        Ok(out)
    }

    /// The bytes at `at` are not record `next_seq`, which is synced: damage (or the
    /// segment was freed under the reader). Moves past it to the next intact record,
    /// keeping the bad bytes in quarantine (see `recover`); false when none is there
    /// yet (the damage reaches the end of the segment being written: reading resumes
    /// after it once newer records are synced).
    fn bad_bytes(&mut self, at: u64, why: &str, end: u64) -> io::Result<bool> {
        // Not damage: the segment was freed (and perhaps reused) while being read.
        if !self.listed(self.segment_base) {
            return self.moved_past(self.segment_base);
        }
        let segment = self.segment_base;
        if let Some(h) = self.shared.hole_at(segment, at) {
            self.pos = h.offset + h.len;
            self.next_seq = h.to_seq;
            return Ok(true);
        }
        // Never damage on a first sighting: the name may hold another file by now (a
        // prepared one swapped in for the writer's first append after this read
        // began, its records synced meanwhile). Read again through the name.
        if self.recheck != Some((segment, at)) {
            self.recheck = Some((segment, at));
            self.open(segment)?;
            self.pos = at;
            return Ok(true);
        }
        self.recheck = None;
        let next_base = self.next_segment_base();
        let file_len = self.file.metadata()?.len();
        let rest = recover::read_at(&self.file, at + 1, file_len.saturating_sub(at + 1))?;
        let seqs = self.next_seq..next_base.unwrap_or(end);
        // Frames written by this version store their sequence: nothing else is searched.
        if let Some((off, seq)) = find_record(&rest, seqs, false) {
            let next = at + 1 + off as u64;
            let hole = Hole {
                offset: at,
                len: next - at,
                from_seq: self.next_seq,
                to_seq: seq,
            };
            self.shared.quarantine(segment, &self.file, hole, why);
            self.pos = next;
            self.next_seq = seq;
            return Ok(true);
        }
        // Up to what the segment holds (not the zeros prepared after it).
        let held = self
            .shared
            .segments()
            .iter()
            .find(|s| s.base == segment)
            .map_or(file_len, |s| s.bytes.min(file_len));
        let hole = Hole {
            offset: at,
            len: held.saturating_sub(at),
            from_seq: self.next_seq,
            to_seq: next_base.unwrap_or(end),
        };
        self.shared.quarantine(segment, &self.file, hole, why);
        match next_base {
            Some(_) => self.next_segment(),
            None => {
                // Newer records will follow the bad bytes in this segment.
                self.shared
                    .holes()
                    .retain(|(s, h)| !(*s == segment && h.offset == at));
                self.next_seq = end;
                self.resync = Some(at);
                Ok(false)
            }
        }
    }

    fn next_segment_base(&self) -> Option<u64> {
        self.shared
            .segments()
            .iter()
            .find(|s| s.base > self.segment_base)
            .map(|s| s.base)
    }

    /// Moves to `offset` in segment `base`, (re)opening it by name. A segment the
    /// checkpoint freed meanwhile was wholly confirmed, so the reader stood at its end
    /// (the resume point of a record taken from memory, or a disk read that stopped
    /// on its last record): it moves to the start of the next segment instead. The
    /// freed file may be gone or already reused for newer records. False when there
    /// is no next segment yet (not expected: the one being written is never freed).
    fn seek(&mut self, base: u64, offset: u64) -> io::Result<bool> {
        if self.listed(base) {
            match self.open(base) {
                Ok(()) => {
                    self.pos = offset;
                    return Ok(true);
                }
                // Freed between the two looks.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.moved_past(base)
    }

    /// Segment `base` was freed under the reader: carry on at the start of the next.
    fn moved_past(&mut self, base: u64) -> io::Result<bool> {
        let segment_base = std::mem::replace(&mut self.segment_base, base);
        if self.next_segment()? {
            return Ok(true);
        }
        self.segment_base = segment_base;
        Ok(false)
    }

    fn listed(&self, base: u64) -> bool {
        self.shared.segments().iter().any(|s| s.base == base)
    }

    fn next_segment(&mut self) -> io::Result<bool> {
        let next = {
            let segs = self.shared.segments();
            segs.iter()
                .find(|s| s.base > self.segment_base)
                .map(|s| s.base)
        };
        let Some(base) = next else {
            return Ok(false);
        };
        self.open(base)?;
        self.pos = 0;
        self.next_seq = base;
        Ok(true)
    }

    /// (Re)opens segment `base`, noting the swaps seen before opening it: one that
    /// happens after is caught by the next read.
    fn open(&mut self, base: u64) -> io::Result<()> {
        self.swaps = self.shared.swaps.load(Ordering::Acquire);
        self.file = File::open(segment_path(&self.shared.dir, base))?;
        self.segment_base = base;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> Accepted {
        crate::event::EventBuilder::new(i).accepted()
    }

    fn dedup() -> crate::dedup::Dedup {
        crate::dedup::Dedup::new(Duration::from_secs(3600), 100_000)
    }

    async fn append_n(spool: &Spool, range: std::ops::Range<u64>) -> Vec<u64> {
        let mut seqs = Vec::new();
        for i in range {
            seqs.push(spool.append(event(i)).await.unwrap());
        }
        seqs
    }

    fn read_all(reader: &mut Reader) -> Vec<Record> {
        let mut all = Vec::new();
        loop {
            let b = reader.read_batch(100).unwrap();
            if b.is_empty() {
                return all;
            }
            all.extend(b);
        }
    }

    #[tokio::test]
    async fn append_read_confirm_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, mut reader, rec) =
                Spool::open(dir.path(), 1 << 20, 4096, |_: &Record| {}).unwrap();
            assert_eq!(rec, Recovery::default());
            assert_eq!(append_n(&spool, 0..100).await, (0..100).collect::<Vec<_>>());
            let got = read_all(&mut reader);
            assert_eq!(got.len(), 100);
            assert_eq!(got[42].event.id(), "message.read:42");
            assert!(
                spool.shared.segments().len() > 1,
                "4 KiB segments must roll"
            );
            spool.confirm_until(60);
            spool.checkpoint(spool.cursor()).unwrap();
            assert!(spool.shared.segments()[0].base <= 60);
        }
        let d = dedup();
        let (spool, mut reader, rec) = Spool::open(dir.path(), 1 << 20, 4096, |r: &Record| {
            d.remember(d.key(r.event.source(), r.event.id()), Duration::ZERO)
        })
        .unwrap();
        assert_eq!(rec.pending, 40);
        let got = read_all(&mut reader);
        assert_eq!(got.first().map(|r| r.seq), Some(60));
        assert_eq!(got.len(), 40);
        assert_eq!(got[0].event.id(), "message.read:60");
        // Ids still in the spool are remembered.
        assert_eq!(
            d.check(d.key("q", "message.read:99")),
            crate::dedup::Seen::Duplicate
        );
        assert_eq!(append_n(&spool, 100..101).await, vec![100]);
    }

    /// Records taken from memory and read from disk join up exactly, across
    /// segment rolls and whenever the memory bound leaves a gap.
    #[tokio::test]
    async fn memory_and_disk_reads_join_up() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut reader, _) =
            Spool::open(dir.path(), 1 << 20, 1024, |_: &Record| {}).unwrap();
        append_n(&spool, 0..10).await;
        let first = reader.take_synced(4, usize::MAX);
        assert_eq!(
            first.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(first[3].event.id(), "message.read:3");
        // The rest of the first batch, now from disk, from where memory left off.
        let rest = reader.read_batch(100).unwrap();
        assert_eq!(
            rest.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (4..10).collect::<Vec<_>>()
        );
        assert_eq!(rest[0].event.id(), "message.read:4");

        // Room for ~3 records: most come from disk, the newest from memory.
        spool.shared.tail().max_bytes = 300;
        let mut seen = Vec::new();
        let (mut from_memory, mut from_disk) = (0, 0);
        for round in 0..20u64 {
            append_n(&spool, 10 + round * 7..10 + (round + 1) * 7).await;
            loop {
                let mut got = reader.take_synced(5, usize::MAX);
                if got.is_empty() {
                    got = reader.read_batch(5).unwrap();
                    from_disk += got.len();
                } else {
                    from_memory += got.len();
                }
                if got.is_empty() {
                    break;
                }
                seen.extend(got.into_iter().map(|r| (r.seq, r.event.id().to_string())));
            }
        }
        let want: Vec<(u64, String)> = (10..150)
            .map(|i| (i, format!("message.read:{i}")))
            .collect();
        assert_eq!(seen, want);
        assert!(
            from_memory > 0 && from_disk > 0,
            "{from_memory} / {from_disk}"
        );
        assert!(spool.shared.segments().len() > 2, "1 KiB segments roll");
    }

    /// Offsets of every record in a segment file, from its frame lengths.
    fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut at = 0;
        let mut out = Vec::new();
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            out.push(at);
            at += 8 + len;
        }
        out
    }

    fn ids(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.event.id().to_string()).collect()
    }

    fn quarantined(dir: &Path) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = fs::read_dir(dir.join(QUARANTINE_DIR))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            e.metadata().unwrap().len(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// A record that fails its CRC inside a sealed segment, with acknowledged records
    /// after it there and in later segments: its bytes go to quarantine, and every
    /// record after it is delivered (before, the rest of the segment was skipped).
    #[tokio::test]
    async fn damage_in_a_sealed_segment_is_quarantined_and_skipped_past() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _r, _) =
                Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
            append_n(&spool, 0..40).await;
            assert!(spool.shared.segments().len() >= 3);
        }
        let first = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&first).unwrap();
        let offsets = frame_offsets(&bytes);
        assert!(offsets.len() >= 4, "{offsets:?}");
        // Flip a body byte of the third record, and garble the length of the fourth
        // (its true end is then unknown: only a scan finds the fifth).
        bytes[offsets[2] + 30] ^= 0x40;
        bytes[offsets[3]] ^= 0x77;
        fs::write(&first, &bytes).unwrap();

        let (_spool, mut reader, rec) =
            Spool::open(dir.path(), 1 << 30, 1024, |_: &Record| {}).unwrap();
        assert_eq!(rec.lost_records, 2);
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(rec.quarantined_bytes, (offsets[4] - offsets[2]) as u64);
        let got = read_all(&mut reader);
        let want: Vec<String> = (0..40)
            .filter(|i| *i != 2 && *i != 3)
            .map(|i| format!("message.read:{i}"))
            .collect();
        assert_eq!(ids(&got), want);
        let q = quarantined(dir.path());
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(q[0].1, (offsets[4] - offsets[2]) as u64);
        assert_eq!(
            fs::read(dir.path().join(QUARANTINE_DIR).join(&q[0].0)).unwrap(),
            bytes[offsets[2]..offsets[4]]
        );
    }

    /// The frame of the old framing bug: its length counts more bytes than it holds,
    /// so it swallows the start of the next records. In the last segment, before any
    /// checkpoint: the records after it were acknowledged and must still be delivered.
    #[tokio::test]
    async fn a_frame_longer_than_its_bytes_does_not_take_the_records_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _r, _) =
                Spool::open(dir.path(), 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
            append_n(&spool, 0..20).await;
        }
        let seg = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&seg).unwrap();
        let offsets = frame_offsets(&bytes);
        let at = offsets[5];
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        bytes[at..at + 4].copy_from_slice(&(len + 300).to_le_bytes());
        fs::write(&seg, &bytes).unwrap();

        let (spool, mut reader, rec) =
            Spool::open(dir.path(), 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
        assert_eq!(rec.lost_records, 1);
        let got = read_all(&mut reader);
        let want: Vec<String> = (0..20)
            .filter(|i| *i != 5)
            .map(|i| format!("message.read:{i}"))
            .collect();
        assert_eq!(ids(&got), want);
        // The damaged segment is left as it is; appends go to a new one.
        assert_eq!(append_n(&spool, 20..21).await, vec![20]);
        assert_eq!(spool.shared.segments().len(), 2);
        assert_eq!(ids(&read_all(&mut reader)), vec!["message.read:20"]);
    }

    /// Bad bytes with nothing intact after them, in the last segment: a torn write if
    /// they lie past what the last checkpoint recorded as synced (cut, as before), but
    /// damage to acknowledged records if not (kept in quarantine, never cut).
    #[tokio::test]
    async fn only_a_tail_past_the_synced_end_is_cut() {
        for checkpointed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            {
                let (spool, _r, _) =
                    Spool::open(dir.path(), 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
                append_n(&spool, 0..10).await;
                if checkpointed {
                    // Nothing confirmed, but all ten recorded as synced.
                    spool.checkpoint(0).unwrap();
                }
            }
            let seg = segment_path(dir.path(), 0);
            let mut bytes = fs::read(&seg).unwrap();
            let offsets = frame_offsets(&bytes);
            bytes[offsets[8] + 20] ^= 1;
            bytes[offsets[9] + 20] ^= 1;
            fs::write(&seg, &bytes).unwrap();
            let (spool, mut reader, rec) =
                Spool::open(dir.path(), 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
            assert_eq!(ids(&read_all(&mut reader)).len(), 8);
            if checkpointed {
                assert_eq!(rec.truncated_bytes, 0);
                assert_eq!(rec.lost_records, 2);
                assert_eq!(quarantined(dir.path()).len(), 1);
                // Sequences are never given twice.
                assert_eq!(append_n(&spool, 10..11).await, vec![10]);
            } else {
                assert!(rec.truncated_bytes > 0);
                assert_eq!(rec.lost_records, 0);
                assert!(quarantined(dir.path()).is_empty());
                assert_eq!(append_n(&spool, 10..11).await, vec![8]);
            }
        }
    }

    /// Damage the reader meets after opening (in a record synced and not read yet):
    /// quarantined, and reading goes on with the records after it.
    #[tokio::test]
    async fn the_reader_skips_past_damage_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut reader, _) =
            Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
        append_n(&spool, 0..30).await;
        let seg = segment_path(dir.path(), 0);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        let bytes = fs::read(&seg).unwrap();
        let offsets = frame_offsets(&bytes);
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xEE; 3], offsets[1] as u64 + 12).unwrap();
        drop(f);
        // From disk, not from the writer's memory.
        *reader.shared.tail() = Tail::new(TAIL_MAX_BYTES);
        let got = read_all(&mut reader);
        let want: Vec<String> = (0..30)
            .filter(|i| *i != 1)
            .map(|i| format!("message.read:{i}"))
            .collect();
        assert_eq!(ids(&got), want);
        assert_eq!(quarantined(dir.path()).len(), 1);

        // In the segment being written, up to its synced end: reading resumes with
        // the next records appended after the bad bytes.
        let last = spool.shared.segments().last().unwrap().base;
        append_n(&spool, 30..33).await;
        let seg = segment_path(dir.path(), last);
        let bytes = fs::read(&seg).unwrap();
        let offsets = frame_offsets(&bytes);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        let n = offsets.len();
        for &o in &offsets[n - 3..] {
            std::os::unix::fs::FileExt::write_all_at(&f, &[0xEE; 3], o as u64 + 12).unwrap();
        }
        drop(f);
        *reader.shared.tail() = Tail::new(TAIL_MAX_BYTES);
        assert!(read_all(&mut reader).is_empty());
        assert_eq!(reader.position(), 33);
        append_n(&spool, 33..35).await;
        *reader.shared.tail() = Tail::new(TAIL_MAX_BYTES);
        assert_eq!(
            ids(&read_all(&mut reader)),
            vec!["message.read:33", "message.read:34"]
        );
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment_path(dir.path(), 0);
        let good;
        {
            let (spool, _r, _) =
                Spool::open(dir.path(), 1 << 20, 1 << 16, |_: &Record| {}).unwrap();
            // Either kind of segment file: plain, or zero-filled ahead.
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..20)));
            append_n(&spool, 0..10).await;
            good = spool.shared.segments()[0].bytes;
        }
        // Half a record where the next write would have gone.
        let mut partial = encode(&event(10)).unwrap().to_vec();
        seal(&mut partial, 10);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &partial[..partial.len() / 2], good).unwrap();
        drop(f);
        let (spool, mut reader, rec) =
            Spool::open(dir.path(), 1 << 20, 1 << 16, |_: &Record| {}).unwrap();
        assert_eq!(rec.truncated_bytes, (partial.len() / 2) as u64);
        assert_eq!(rec.pending, 10);
        let bytes = fs::read(&seg).unwrap();
        assert!(bytes.len() as u64 >= good);
        assert!(
            bytes[good as usize..].iter().all(|&b| b == 0),
            "the torn bytes are gone"
        );
        assert_eq!(append_n(&spool, 10..11).await, vec![10]);
        let got = read_all(&mut reader);
        assert_eq!(got.len(), 11);
        assert_eq!(got[10].event.id(), "message.read:10");
    }

    /// Confirmed segments become later ones; their old records never read as new.
    #[tokio::test]
    async fn confirmed_segments_are_recycled_without_replaying_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Spool::open(dir.path(), 1 << 30, 4096, |_: &Record| {}).unwrap();
        let (spool, mut reader, _) = open();
        let mut next = 0;
        // Until the segment being written is a recycled one with, after its records,
        // some confirmed and some not, the old records of its earlier use.
        loop {
            assert!(next < 20_000, "no segment was recycled");
            append_n(&spool, next..next + 10).await;
            let got = read_all(&mut reader);
            assert_eq!(got.len(), 10);
            spool.confirm_until(got[4].seq + 1);
            spool.checkpoint(spool.cursor()).unwrap();
            append_n(&spool, next + 10..next + 13).await;
            let last = *spool.shared.segments().last().unwrap();
            let active = fs::read(segment_path(dir.path(), last.base)).unwrap();
            let end = last.bytes as usize;
            if spool.shared.recycled.load(Ordering::Relaxed) >= 2
                && active[end..end + 8] == record::END
                && active.len() > end + 64
            {
                break;
            }
            let got = read_all(&mut reader);
            spool.confirm_until(got.last().unwrap().seq + 1);
            spool.checkpoint(spool.cursor()).unwrap();
            next += 13;
            // Give the preparing thread time to finish before the next roll.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop((spool, reader));
        for _ in 0..2 {
            let (spool, mut reader, rec) = open();
            assert_eq!(
                rec,
                Recovery {
                    pending: 8,
                    ..Recovery::default()
                }
            );
            let ids: Vec<String> = read_all(&mut reader)
                .into_iter()
                .map(|r| r.event.id().to_string())
                .collect();
            let want: Vec<String> = (next + 5..next + 13)
                .map(|i| format!("message.read:{i}"))
                .collect();
            assert_eq!(ids, want);
            drop((spool, reader));
        }
        // An old record straight after the new ones, with no `END` between (as if a
        // crash kept the page of an old record but lost the one holding the marker):
        // sealed for an earlier sequence, it reads as the end, not as the next record.
        let (spool, _r, _) = open();
        let last = *spool.shared.segments().last().unwrap();
        drop((spool, _r));
        let mut old = encode(&event(3)).unwrap().to_vec();
        seal(&mut old, 3);
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), last.base))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &old, last.bytes).unwrap();
        drop(f);
        let (_spool, mut reader, rec) = open();
        assert_eq!(rec.pending, 8);
        let ids: Vec<String> = read_all(&mut reader)
            .into_iter()
            .map(|r| r.event.id().to_string())
            .collect();
        assert_eq!(ids.len(), 8);
        assert!(!ids.contains(&"message.read:3".to_string()));
    }

    /// The forwarder took a segment's last records from memory, they were confirmed,
    /// the checkpoint freed the segment, and then it fell behind the writer's memory:
    /// the disk read must start at the next segment, not fail on the freed one's name.
    #[tokio::test]
    async fn reading_from_disk_resumes_past_a_segment_freed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut reader, _) =
            Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
        append_n(&spool, 0..60).await;
        let bases: Vec<u64> = spool.shared.segments().iter().map(|s| s.base).collect();
        assert!(bases.len() >= 4, "{bases:?}");
        // Up to the end of the second segment, one record at a time from memory.
        while reader.position() < bases[2] {
            assert_eq!(reader.take_synced(1, usize::MAX).len(), 1);
        }
        assert_eq!(reader.resume_at.map(|(s, _)| s), Some(bases[1]));
        spool.confirm_until(reader.position());
        assert_eq!(spool.checkpoint(spool.cursor()).unwrap(), bases[2]);
        assert!(!reader.listed(bases[1]), "the second segment is freed");
        // More than the writer keeps in memory arrived meanwhile.
        *reader.shared.tail() = Tail::new(TAIL_MAX_BYTES);
        let seqs: Vec<u64> = read_all(&mut reader).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (bases[2]..60).collect::<Vec<_>>());
    }

    /// The reader stopped on a segment's last record; the segment was freed, kept for
    /// reuse and written again with newer records while the reader still had it open
    /// (at its old offset now lie other records, or their `END`): reading on finds the
    /// next segment and every record once.
    #[tokio::test]
    async fn a_reader_at_the_end_of_a_segment_reused_under_it_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut reader, _) =
            Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
        append_n(&spool, 0..30).await;
        let bases: Vec<u64> = spool.shared.segments().iter().map(|s| s.base).collect();
        assert!(bases.len() >= 3, "{bases:?}");
        let first = reader.read_batch(bases[1] as usize).unwrap();
        assert_eq!(first.len() as u64, bases[1]);
        assert_eq!(reader.segment_base, bases[0]);
        spool.confirm_until(bases[1]);
        spool.checkpoint(bases[1]).unwrap();
        // Roll until the kept file is in use again and full of newer records.
        let mut next = 30;
        let mut reused = None;
        loop {
            assert!(next < 300, "the kept segment was not reused");
            append_n(&spool, next..next + 1).await;
            next += 1;
            let last = spool.shared.segments().last().unwrap().base;
            match reused {
                None if spool.shared.recycled.load(Ordering::Relaxed) == 1 => reused = Some(last),
                Some(base) if last != base => break,
                _ => {}
            }
        }
        let seqs: Vec<u64> = read_all(&mut reader).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (bases[1]..next).collect::<Vec<_>>());
    }

    /// Concurrent appenders share paced syncs: rounds of 40 take the interval each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_paced_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _r, _) = Spool::open(dir.path(), 1 << 24, 1 << 20, |_: &Record| {}).unwrap();
        spool.pace_syncs(Duration::from_millis(50));
        let started = Instant::now();
        let tasks: Vec<_> = (0..40u64)
            .map(|c| {
                let spool = spool.clone();
                tokio::spawn(async move { append_n(&spool, c * 5..c * 5 + 5).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().len(), 5);
        }
        // Five appends per task, one group per round: at least 4 paced waits.
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        assert!(
            spool.syncs() <= 12,
            "{} syncs for 200 appends",
            spool.syncs()
        );
    }

    /// A lone sender is not held back by the pacing: it would gain nothing.
    #[tokio::test]
    async fn a_lone_sender_never_waits_for_the_pacing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _r, _) = Spool::open(dir.path(), 1 << 24, 1 << 20, |_: &Record| {}).unwrap();
        spool.pace_syncs(Duration::from_millis(300));
        let started = Instant::now();
        append_n(&spool, 0..10).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn full_spool_refuses_then_frees() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut reader, _) = Spool::open(dir.path(), 16384, 4096, |_: &Record| {}).unwrap();
        let mut accepted = 0;
        let mut i = 0;
        loop {
            match spool.append(event(i)).await {
                Ok(_) => accepted += 1,
                Err(AppendError::Full) => break,
                Err(e) => panic!("{e}"),
            }
            i += 1;
        }
        assert!(accepted > 50, "{accepted}");
        assert!(!spool.has_room() || spool.bytes() > 16384 - 200);
        let got = read_all(&mut reader);
        spool.confirm_until(got.last().unwrap().seq + 1);
        spool.checkpoint(spool.cursor()).unwrap();
        assert!(spool.bytes() < 8192, "{}", spool.bytes());
        spool.append(event(i)).await.unwrap();
    }

    #[test]
    fn a_second_process_cannot_open_it() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _g = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let _a = Spool::open(dir.path(), 1 << 20, 4096, |_: &Record| {}).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), 1 << 20, 4096, |_: &Record| {}),
            Err(OpenError::Locked(_))
        ));
    }
}
