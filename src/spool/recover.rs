//! Reading segments back at opening, and telling a torn write from damage.
//!
//! A record that fails its CRC is not always a torn tail. A crash mid-append tears
//! only the last group commit, which was never answered 200; anything else (a bug, bit
//! rot, a bad block) may sit in front of acknowledged records. So:
//!
//! - after bad bytes the scan looks for the next intact record ([`record::find_record`]:
//!   every record stores its sequence and its CRC covers it) and carries on from there;
//!   the bad bytes in between are a *hole*;
//! - holes are copied to `quarantine/` beside the segments (never deleted), counted and
//!   logged at error level, and every intact record after them is delivered;
//! - only bad bytes with no intact record after them, in the last segment, past the
//!   last sequence known to be synced (kept in the cursor file at every checkpoint),
//!   are a torn tail: cut, counted, logged at warn level.
//!
//! What stays out of reach: damage to the last group commit before the next
//! checkpoint recorded it as synced, with nothing written after it, looks exactly
//! like a torn write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, DecodeError, Frame, ReadError, Record, decode, read_frame};
use super::{OpenError, Recovery, Segment, io_err, segment_path};
use crate::metrics;

/// Directory (inside the spool's) where damaged bytes are kept.
pub const QUARANTINE_DIR: &str = "quarantine";

/// The smallest frame: what bounds how many records bad bytes can have swallowed.
const MIN_FRAME_LEN: u64 = 33;

/// Bytes of a segment that hold no readable record, with the sequences they took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    pub offset: u64,
    pub len: u64,
    /// The first sequence lost...
    pub from_seq: u64,
    /// ...and the sequence of the next intact record.
    pub to_seq: u64,
}

/// Bad bytes with no intact record after them.
#[derive(Debug)]
pub struct BadTail {
    pub offset: u64,
    /// The sequence the first bad frame should have had.
    pub seq: u64,
    pub why: String,
}

#[derive(Debug)]
pub struct Scan {
    /// The sequence after the last intact record (or after the last hole).
    pub next_seq: u64,
    /// Where the intact records (and holes) end.
    pub good_len: u64,
    pub file_len: u64,
    /// Just past the last non-zero byte: preallocated zeros may follow.
    pub data_end: u64,
    pub holes: Vec<Hole>,
    pub bad_tail: Option<BadTail>,
    /// The records end in `record::END`, or in a record of the file's earlier use:
    /// what follows is left from that use.
    pub marked_end: bool,
    /// Some record's CRC does not cover its sequence (written by version 1).
    pub unsequenced: bool,
}

/// Reads every intact record of segment `base`, in order, looking past bad bytes.
///
/// `expect_until`: records before this sequence are known to exist (a later segment
/// starts there, or a checkpoint recorded them as synced), so an end before it is
/// damage. `seq_limit`: no record of this segment has this sequence or a later one.
pub fn scan_segment(
    path: &Path,
    base: u64,
    expect_until: u64,
    seq_limit: u64,
    each: &mut dyn FnMut(&Record),
) -> io::Result<Scan> {
    scan_segment_until(path, base, expect_until, seq_limit, &mut |r| {
        each(&r);
        ControlFlow::Continue(())
    })
}

/// [`scan_segment`], handing each record over owned and stopping as soon as `each`
/// breaks (the archive's reader: it wants the records, and rarely all of them). A
/// scan cut short reports what it read so far and no tail.
pub fn scan_segment_until(
    path: &Path,
    base: u64,
    expect_until: u64,
    seq_limit: u64,
    each: &mut dyn FnMut(Record) -> ControlFlow<()>,
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file.try_clone()?);
    let mut scan = Scan {
        next_seq: base,
        good_len: 0,
        file_len,
        data_end: 0,
        holes: Vec::new(),
        bad_tail: None,
        marked_end: false,
        unsequenced: false,
    };
    let (mut seq, mut pos) = (base, 0u64);
    // Whether the last intact record did not store its sequence (written before
    // version 3): only then are such frames looked for after bad bytes.
    let mut unstored = false;
    loop {
        let at = pos;
        let why = match read_frame(&mut r, seq) {
            Ok(Frame::Record(payload)) => {
                let len = payload.len() as u64;
                scan.unsequenced |= !record::is_sequenced(&payload);
                unstored = !record::stores_sequence(&payload);
                match decode(seq, payload) {
                    Ok(rec) => {
                        seq += 1;
                        pos += record::HEADER_LEN as u64 + len;
                        if each(rec).is_break() {
                            scan.next_seq = seq;
                            scan.good_len = pos;
                            scan.data_end = pos;
                            return Ok(scan);
                        }
                        continue;
                    }
                    Err(e @ DecodeError::Newer(_)) => return Err(io::Error::other(e)),
                    Err(e) => e.to_string(),
                }
            }
            // Written by a newer release: refuse the spool rather than quarantine it.
            Err(ReadError::Decode(e @ DecodeError::Newer(_))) => {
                return Err(io::Error::other(format!("{}: {e}", path.display())));
            }
            Ok(Frame::End { marked }) if seq >= expect_until => {
                scan.marked_end = marked;
                break;
            }
            Ok(Frame::End { .. }) => {
                "the records end before the last one known to be synced".into()
            }
            Err(ReadError::Io(e)) => return Err(e),
            // A record of the file's earlier use right after the new ones (a crash
            // kept its page but not the `END` written after the last batch): the end.
            Err(ReadError::Decode(DecodeError::OtherSequence(s)))
                if s < seq && seq >= expect_until =>
            {
                scan.marked_end = true;
                break;
            }
            // An intact record of a later sequence where `seq` should be: the ones
            // in between are missing, though no bytes are bad.
            // Bounded as the scan after bad bytes is (what the rest of the file can
            // hold): a frame forged inside an old body cannot jump the log ahead.
            Err(ReadError::Decode(DecodeError::OtherSequence(s)))
                if s > seq
                    && s < seq_limit
                    && s <= seq.saturating_add(file_len.saturating_sub(at) / MIN_FRAME_LEN + 1) =>
            {
                scan.holes.push(Hole {
                    offset: at,
                    len: 0,
                    from_seq: seq,
                    to_seq: s,
                });
                seq = s;
                r.seek(SeekFrom::Start(at))?;
                continue;
            }
            Err(ReadError::Decode(e)) => e.to_string(),
        };
        // Bad bytes at `at`: pick up at the next intact record after them, if any.
        let rest = read_at(&file, at + 1, file_len.saturating_sub(at + 1))?;
        let most = seq.saturating_add(rest.len() as u64 / MIN_FRAME_LEN + 1);
        match record::find_record(&rest, seq..seq_limit.min(most), unstored) {
            Some((off, found)) => {
                let next = at + 1 + off as u64;
                scan.holes.push(Hole {
                    offset: at,
                    len: next - at,
                    from_seq: seq,
                    to_seq: found,
                });
                seq = found;
                pos = next;
                r.seek(SeekFrom::Start(next))?;
            }
            None => {
                scan.bad_tail = Some(BadTail {
                    offset: at,
                    seq,
                    why,
                });
                break;
            }
        }
    }
    scan.next_seq = seq;
    scan.good_len = pos;
    scan.data_end = if pos < file_len && !scan.marked_end {
        data_end(&mut r, pos)?
    } else {
        pos
    };
    // Preallocated zeros may follow the records; anything else there is the remains
    // of a write that never completed.
    if scan.bad_tail.is_none() && scan.data_end > scan.good_len {
        scan.bad_tail = Some(BadTail {
            offset: pos,
            seq,
            why: "bytes after the end of the records".into(),
        });
    }
    Ok(scan)
}

/// `len` bytes of `file` from `offset` (fewer at its end).
pub fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Offset just past the last non-zero byte at or after `from` (`from` if none).
fn data_end(r: &mut BufReader<File>, from: u64) -> io::Result<u64> {
    r.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, mut end) = (from, from);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(end);
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            end = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
}

/// Copies a hole's bytes to `quarantine/{segment}-{offset}.bad` and syncs the copy,
/// so the segment may later be freed without losing them. Done once: a copy of the
/// same length already there is kept.
pub fn quarantine(dir: &Path, segment: u64, file: &File, hole: &Hole) -> io::Result<PathBuf> {
    let qdir = dir.join(QUARANTINE_DIR);
    let path = qdir.join(format!("{segment:020}-{:012}.bad", hole.offset));
    if fs::metadata(&path).is_ok_and(|m| m.len() == hole.len) {
        return Ok(path);
    }
    if !qdir.exists() {
        fs::create_dir_all(&qdir)?;
        File::open(dir)?.sync_all()?;
    }
    let tmp = qdir.join(format!("{segment:020}-{:012}.tmp", hole.offset));
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)?;
    let mut done = 0;
    while done < hole.len {
        let chunk = read_at(file, hole.offset + done, (hole.len - done).min(1 << 20))?;
        if chunk.is_empty() {
            break;
        }
        out.write_all(&chunk)?;
        done += chunk.len() as u64;
    }
    out.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(&qdir)?.sync_all()?;
    Ok(path)
}

/// Moves a whole segment into the quarantine (its damaged bytes could not be
/// copied there when they were found). A rename: it needs no room.
pub fn keep_whole(dir: &Path, segment: &Path) -> io::Result<()> {
    let qdir = dir.join(QUARANTINE_DIR);
    fs::create_dir_all(&qdir)?;
    let name = segment.file_name().unwrap_or_default();
    fs::rename(segment, qdir.join(name))?;
    File::open(dir)?.sync_all()
}

/// What opening found on disk, for the spool to start from.
pub(super) struct Recovered {
    pub segments: Vec<Segment>,
    pub holes: Vec<(u64, Hole)>,
    /// The sequence the next append gets.
    pub next_seq: u64,
    /// The first sequence to deliver.
    pub cursor: u64,
    /// Whether the last segment's records end in `record::END` (it was recycled).
    pub marked_end: bool,
    /// The last segment holds damage: appends go to a new one.
    pub sealed_by_damage: bool,
    pub recovery: Recovery,
}

/// Reads every segment back, handing each record to `each`; cuts a torn tail and
/// quarantines damage (see the module doc).
pub(super) fn recover(
    dir: &Path,
    metrics: &metrics::SpoolMetrics,
    each: &mut impl FnMut(&Record),
) -> Result<Recovered, OpenError> {
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
        let mut scan =
            scan_segment(&path, base, expect_until, seq_limit, each).map_err(io_err(&path))?;
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
                metrics.truncated(cut);
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
                    && let Err(e) = quarantine(dir, base, &file, hole)
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
                metrics.quarantined(hole.len, hole.to_seq - hole.from_seq);
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

    Ok(Recovered {
        segments,
        holes,
        next_seq,
        cursor,
        marked_end,
        sealed_by_damage,
        recovery,
    })
}

/// The persisted cursor and, when recorded, the sequence every record before which
/// was synced (files written before it was recorded hold the cursor alone).
pub(super) fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
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

/// Writes the cursor file atomically (via rename), with the synced end beside it.
pub(super) fn write_cursor(dir: &Path, cursor: u64, synced_end: u64) -> io::Result<()> {
    let mut buf = cursor.to_le_bytes().to_vec();
    buf.extend_from_slice(&synced_end.to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join("cursor"))?;
    // The rename itself must survive a crash for the synced end to be trusted.
    File::open(dir)?.sync_all()
}
