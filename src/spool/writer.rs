//! The single thread that writes and syncs: group commit, segment rolls, and the
//! hand-over of synced records to the reader.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    AppendError, MAX_BATCH_BYTES, Record, Segment, SpoolState, Synced, faults, prealloc, record,
    segment_path,
};
use crate::event::Event;
/// One event on its way to the writer, framed by the caller.
pub(super) struct Append {
    pub(super) frame: Bytes,
    pub(super) event: Event,
    pub(super) reply: oneshot::Sender<Result<u64, AppendError>>,
}

/// Creates a segment and syncs the directory so its name survives a crash.
pub(super) fn create_segment(dir: &Path, base: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(segment_path(dir, base))?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// The single thread that writes and syncs.
pub(super) struct Writer {
    pub(super) shared: Arc<SpoolState>,
    pub(super) file: File,
    /// Base sequence of the segment `file` is.
    pub(super) segment: u64,
    /// Whether `file` was zero-filled ahead (its syncs then only flush data).
    pub(super) preallocated: bool,
    /// Whether `file` was recycled: every write then ends in `record::END`, since
    /// old records, not zeros, follow the new ones.
    pub(super) marked: bool,
    pub(super) prealloc: prealloc::Prealloc,
    pub(super) next_seq: u64,
    pub(super) segment_bytes: u64,
    pub(super) durable: watch::Sender<u64>,
    pub(super) faults: faults::Faults,
}

impl Writer {
    /// Runs the writer on its own thread. A panic there would leave appends
    /// unanswered: it stops the process instead, like a failed sync (what was
    /// answered 200 is on disk).
    pub(super) fn start(self, rx: mpsc::Receiver<Append>) -> io::Result<()> {
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| self.run(rx));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    crate::supervise::stop(&format!(
                        "the spool writer panicked: {}",
                        crate::supervise::panic_text(&*panic)
                    ));
                }
            })?;
        Ok(())
    }

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
            .load(Ordering::Relaxed)
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
        self.shared.metrics.fsync(started.elapsed());
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
        self.shared.metrics.set(
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
