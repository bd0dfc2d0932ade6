//! The durable spool: an append-only segmented log with group commit.
//!
//! A 200 is sent only after the event's record is fdatasync'd here. One writer
//! thread takes appends from every request, writes whatever has queued up as one
//! batch, syncs once, and only then answers them all (group commit: one fsync per
//! batch, not per request). The forwarder takes synced records from memory while it
//! keeps up (the writer hands them over with their place on disk) and reads them
//! back from disk when it falls behind or after a restart; it publishes them and
//! moves a persisted cursor forward as the sink confirms; segments wholly behind
//! the cursor are recycled or deleted, or, with an archive, moved into it (see
//! `archive`).
//!
//! Layout of the directory:
//! - `LOCK`: held with an exclusive file lock so two processes never share a spool.
//! - `{base_seq:020}.seg`: segments; the first record in each has sequence `base_seq`.
//! - `cursor`: the first sequence not yet confirmed (8 bytes LE + CRC32C). It may
//!   lag the truth; replaying from an older cursor only causes duplicates.
//! - `archive/`, `quarantine/`: confirmed segments kept for replay, damaged bytes
//!   kept for inspection. Nothing that reads the log looks into either.

mod adopt;
pub mod archive;
mod faults;
pub mod inspect;
mod prealloc;
#[cfg(test)]
mod proptests;
mod reader;
mod record;
mod recover;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::event::{Accepted, Event};
use crate::metrics;

pub use adopt::{AdoptError, Place, adopt, holds_spool};
pub use archive::{ARCHIVE_DIR, Archive, Archives};
pub use faults::{FSYNC_AFTER_ENV, FSYNC_DELAY_ENV};
pub use inspect::{InspectError, Inspection, inspect};
pub use reader::Reader;
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
struct SpoolState {
    dir: PathBuf,
    /// The budget; past it appends are refused (`Full`). Raised while adopting an
    /// old spool's records, which were acknowledged already (see `backlog`).
    max_bytes: AtomicU64,
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
    /// Where confirmed segments go instead of being reused or deleted, if anywhere.
    archives: Mutex<Option<Arc<Archives>>>,
    metrics: metrics::SpoolMetrics,
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

impl SpoolState {
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
        self.metrics.quarantined(hole.len, lost);
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

/// Hands one event to every spool in `spools` (a source routed to several sinks,
/// each with a backlog of its own), framed once; one [`Pending`] per spool, in
/// order. When any of them has no room nothing is appended, so that a refused
/// request leaves no copy behind for the provider's retry to duplicate (a spool
/// filling between the check and the append still can: a duplicate, never a loss).
pub async fn submit_to(spools: &[Spool], event: Accepted) -> Result<Vec<Pending>, AppendError> {
    if spools.len() > 1 && !spools.iter().all(Spool::has_space) {
        return Err(AppendError::Full);
    }
    let frame = encode(&event).map_err(AppendError::Unframable)?;
    // The body ends the frame. Kept as a slice of it, the event handed to the
    // forwarder holds one exact allocation instead of pinning the connection's
    // read buffer (which a small body may share with much more) until confirmed.
    let mut event = event.into_event();
    event.share_body(frame.slice(record::body_range(frame.len(), event.body().len())));
    hand_over_all(spools, frame, event).await
}

/// Hands one framed event to each spool's writer (the last one gets the original,
/// the others a copy); one [`Pending`] per spool, in order.
async fn hand_over_all(
    spools: &[Spool],
    frame: bytes::Bytes,
    event: Event,
) -> Result<Vec<Pending>, AppendError> {
    let Some((last, rest)) = spools.split_last() else {
        return Ok(Vec::new());
    };
    let mut pending = Vec::with_capacity(spools.len());
    for spool in rest {
        pending.push(spool.hand_over(frame.clone(), event.clone()).await?);
    }
    pending.push(last.hand_over(frame, event).await?);
    Ok(pending)
}

/// Handle for appending; cheap to clone into every request task.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<writer::Append>,
    shared: Arc<SpoolState>,
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

/// A spool is named by its directory: under `spool.dir` each sink's backlog is
/// the directory of the sink's name, and its series carry that name. A spool
/// being adopted (see `adopt`) is labelled [`ADOPTED_LABEL`] instead, which no
/// sink can be named.
fn label_of(dir: &Path) -> String {
    dir.file_name()
        .map_or_else(|| "spool".into(), |n| n.to_string_lossy().into_owned())
}

/// The `sink` label of a spool being adopted.
pub const ADOPTED_LABEL: &str = "_adopted";

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

    /// Keeps confirmed segments in `<dir>/archive/` for replay, pruned by `archives`
    /// (`None`: reused or deleted, as without an archive). The live path pays only
    /// for the lost recycling: the writer's next segments are zero-filled ones.
    pub fn set_archive(&self, archives: Option<Arc<Archives>>) {
        *self
            .shared
            .archives
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = archives;
    }

    /// Sets the budget (and its gauge): appends past it are refused again.
    pub fn set_max_bytes(&self, max_bytes: u64) {
        self.shared.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.shared.metrics.set_max(max_bytes);
    }

    /// `wait_for_prepared`: a roll waits for the segment being zero-filled instead of
    /// starting a plain one, so that what tests exercise does not depend on timing.
    fn open_with(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        each: impl FnMut(&Record),
        wait_for_prepared: bool,
    ) -> Result<(Spool, Reader, Recovery), OpenError> {
        let label = label_of(dir);
        Spool::open_labelled(
            dir,
            &label,
            max_bytes,
            segment_bytes,
            each,
            wait_for_prepared,
        )
    }

    /// `label` is the `sink` label of its series.
    fn open_labelled(
        dir: &Path,
        label: &str,
        max_bytes: u64,
        segment_bytes: u64,
        mut each: impl FnMut(&Record),
        wait_for_prepared: bool,
    ) -> Result<(Spool, Reader, Recovery), OpenError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let spool_metrics = metrics::SpoolMetrics::register(label, max_bytes);
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

        let recover::Recovered {
            mut segments,
            holes,
            next_seq,
            cursor,
            mut marked_end,
            sealed_by_damage,
            recovery,
        } = recover::recover(dir, &spool_metrics, &mut each)?;
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
                let f = writer::create_segment(dir, next_seq).map_err(io_err(dir))?;
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
        let shared = Arc::new(SpoolState {
            dir: dir.to_path_buf(),
            max_bytes: AtomicU64::new(max_bytes),
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
            archives: Mutex::new(None),
            metrics: spool_metrics,
        });
        let lock = Arc::new(lock);
        shared.metrics.set(total, next_seq - cursor);

        let (durable_tx, durable_rx) = watch::channel(next_seq);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = writer::Writer {
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
        writer.start(rx).map_err(io_err(dir))?;

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
        let mut pending = submit_to(std::slice::from_ref(self), event).await?;
        pending.pop().ok_or(AppendError::Closed)
    }

    async fn hand_over(&self, frame: bytes::Bytes, event: Event) -> Result<Pending, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Append {
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
    /// Why: every fdatasync costs CPU, and at moderate load groups are small and
    /// syncs many; waiting a little gathers more appends per sync, at up to
    /// `interval` more per 200 (figures: docs/benchmarks.md, "Figures behind
    /// choices in the code").
    pub fn pace_syncs(&self, interval: Duration) {
        let us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        self.shared.sync_interval_us.store(us, Ordering::Relaxed);
    }

    /// Ready to accept: the writer is healthy and the spool has room.
    pub fn has_room(&self) -> bool {
        !self.shared.write_failed.load(Ordering::Relaxed) && self.has_space()
    }

    /// Below its budget (whatever the writer's health): a failed write is cleared
    /// only by a later append that succeeds, so what decides whether to try one
    /// must not wait for it.
    pub fn has_space(&self) -> bool {
        !self.shared.full.load(Ordering::Relaxed)
            && self.shared.bytes.load(Ordering::Relaxed)
                < self.shared.max_bytes.load(Ordering::Relaxed)
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
        s.metrics.set(
            s.bytes.load(Ordering::Acquire),
            self.durable_end().saturating_sub(cursor),
        );
    }

    /// Persists `upto` (at most the confirmed cursor) as the restart point, then
    /// frees the segments wholly behind it (into the archive, with one, which is
    /// then pruned); returns the cursor persisted. The caller
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
        let archives = s.archives.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (mut freed, mut archived) = (0, 0);
        for (i, seg) in behind.iter().enumerate() {
            let path = segment_path(&s.dir, seg.base);
            let recycle = || {
                seg.recyclable
                    && s.spare.offer(&path).unwrap_or_else(|e| {
                        tracing::debug!(segment = %path.display(), error = %e, "cannot keep a confirmed spool segment for reuse");
                        false
                    })
            };
            let gone = if seg.keep {
                recover::keep_whole(&s.dir, &path)
            } else if archives.is_some() {
                archive::move_in(&s.dir, &path).map(|()| archived += 1)
            } else if recycle() {
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
        if let Some(a) = archives.filter(|_| archived > 0) {
            a.archived(&s.dir);
        }
        let total = s.bytes.fetch_sub(freed, Ordering::AcqRel) - freed;
        s.metrics
            .set(total, self.durable_end().saturating_sub(self.cursor()));
        Ok(cursor)
    }

    /// Writes the cursor file and returns the cursor written. Losing it only causes
    /// duplicates. It also records how far the log was synced, so that recovery can
    /// tell damage to acknowledged records from a torn write.
    fn persist_cursor(&self, cursor: u64) -> io::Result<u64> {
        recover::write_cursor(&self.shared.dir, cursor, self.durable_end())?;
        self.shared.persisted.store(cursor, Ordering::Release);
        Ok(cursor)
    }

    /// The cursor as last persisted: what a checkpoint whose sinks could not sync
    /// persists again, with the synced end brought up to date.
    pub fn persisted_cursor(&self) -> u64 {
        self.shared.persisted.load(Ordering::Acquire)
    }
}
