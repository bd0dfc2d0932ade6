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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, DecodeError, Frame, ReadError, Record, decode, read_frame};

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
                        each(&rec);
                        seq += 1;
                        pos += record::HEADER_LEN as u64 + len;
                        continue;
                    }
                    Err(e) => e.to_string(),
                }
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
            Err(ReadError::Decode(DecodeError::OtherSequence(s))) if s > seq && s < seq_limit => {
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
