//! Reading durable records back in order for the forwarder: from memory while it
//! keeps up, from disk when it falls behind, jumping holes the damage left.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::record::{DecodeError, Frame, ReadError, decode, find_record, read_frame};
use super::{Hole, Record, SpoolState, recover, segment_path};
/// Reads a segment from a position with `pread`, buffering nothing: past the synced
/// end of the segment being written the bytes may still be preallocated zeros, and
/// a read-ahead buffer would keep serving them after the writer put records there.
struct Pread<'a> {
    file: &'a File,
    pos: &'a mut u64,
}

impl Read for Pread<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, *self.pos)?;
        *self.pos += n as u64;
        Ok(n)
    }
}

/// Reads durable records in order for the forwarder. Blocking: call it from
/// `spawn_blocking`. It never reads past the synced end.
pub struct Reader {
    pub(super) shared: Arc<SpoolState>,
    durable: watch::Receiver<u64>,
    file: File,
    /// Offset of the next record in `file`.
    pos: u64,
    pub(super) segment_base: u64,
    next_seq: u64,
    /// Where the next record lies on disk after some were taken from memory.
    pub(super) resume_at: Option<(u64, u64)>,
    /// `SpoolState::swaps` as of opening `file`.
    swaps: u64,
    /// Damage at this offset of the segment being written reached its synced end:
    /// the next read looks for newer records after it.
    resync: Option<u64>,
    /// Where bad bytes were seen once and the segment reopened to read them again.
    recheck: Option<(u64, u64)>,
    _lock: Arc<File>,
}

impl Reader {
    pub(super) fn new(
        shared: Arc<SpoolState>,
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
        // Skip what was confirmed before the restart, and not one record more: a
        // hole between the segment's start and `from` makes the sequences run ahead
        // of the count of records read.
        while reader.next_seq < from {
            if reader.read_records(4096, usize::MAX, from)?.is_empty() {
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
        self.read_records(max, max_body_bytes, u64::MAX)
    }

    /// [`Reader::read_batch_within`], reading no record of sequence `until` or later.
    fn read_records(
        &mut self,
        max: usize,
        max_body_bytes: usize,
        until: u64,
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
        while out.len() < max
            && self.next_seq < end.min(until)
            && (out.is_empty() || bytes < max_body_bytes)
        {
            let at = self.pos;
            let mut reading = Pread {
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
                    Err(e @ DecodeError::Newer(_)) => {
                        self.pos = at;
                        return Err(io::Error::other(e));
                    }
                    Err(e) => e.to_string(),
                },
                Err(ReadError::Io(e)) => return Err(e),
                // Written by a newer release (recovery refuses such a spool; this
                // is one written under a running reader): never skipped as damage.
                Err(ReadError::Decode(e @ DecodeError::Newer(_))) => {
                    self.pos = at;
                    return Err(io::Error::other(e));
                }
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

    pub(super) fn listed(&self, base: u64) -> bool {
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
