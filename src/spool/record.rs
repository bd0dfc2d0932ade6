//! The on-disk record: `len u32 | crc32c u32 | payload`, little endian.
//!
//! The payload (version 4) is `version u8 | received_at_ns u64 | seven strings, each
//! len u16 + bytes | body_len u32 | body | seq u64`; the seventh string, new in
//! version 4, is the event's `traceparent` (empty when none). The CRC covers all of it, the
//! record's sequence number included, so a torn write (crash mid-append) or a
//! flipped bit is recognised on replay, and a record left in a recycled segment from
//! its earlier use never reads as one of the current log: its sequence differs.
//! Because the sequence is stored, recovery can also find where valid records start
//! again after bad bytes ([`find_record`]) instead of giving up on what follows.
//! Version 3 frames (six strings), version 2 frames (the CRC covers the sequence,
//! which is not stored) and version 1 frames (the CRC covers the payload alone) are
//! still read.
//!
//! From version 3 on every version keeps the frame's outline: the CRC covers the
//! whole payload and the sequence is its last 8 bytes. So an intact frame of a
//! version newer than this binary knows is recognised as such
//! ([`DecodeError::Newer`]), and the spool refuses to open rather than take it for
//! damage and quarantine it: a downgrade stops with a message, never drops.
//!
//! Where the records end: segments are zero-filled ahead of the writer (see
//! `prealloc`), so an all-zero header marks the end (no frame has one, its length is
//! never 0). A recycled segment holds old records after the new ones, so the writer
//! puts [`END`] after every batch there: the end, with unspecified bytes after it.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::event::Event;

/// Version of the frames written: seven strings, the sequence stored at the end.
pub const VERSION: u8 = 4;
/// Six strings (no `traceparent`), the sequence stored at the end.
const VERSION_SIX_STRINGS: u8 = 3;
/// Frames whose CRC covers the sequence, which is not stored.
const VERSION_SEQUENCED: u8 = 2;
/// Frames of this version have a CRC of the payload alone.
const VERSION_UNSEQUENCED: u8 = 1;
/// Frame header: payload length and CRC.
pub const HEADER_LEN: usize = 8;
/// Bytes of the stored sequence at the end of a version 3 payload.
const SEQ_LEN: usize = 8;
/// Marks the end of the records in a segment whose later bytes are left from an
/// earlier use (a zero length, which no frame has, and a non-zero tag).
pub const END: [u8; HEADER_LEN] = [0, 0, 0, 0, b'E', b'N', b'D', b'.'];
/// Larger lengths are corruption, not records (bodies are capped far below this).
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024 * 1024;
/// The payload of an event with empty strings and body (version 2; 3 adds the
/// sequence, 4 a seventh string).
const MIN_PAYLOAD_LEN: usize = 1 + 8 + 6 * 2 + 4;
/// The largest body a frame carries: what is left of `MAX_PAYLOAD_LEN` after the
/// longest metadata.
pub const MAX_BODY_LEN: usize =
    MAX_PAYLOAD_LEN - MIN_PAYLOAD_LEN - 2 - SEQ_LEN - 7 * u16::MAX as usize;
/// Sequences tried for each candidate frame of version 2 (which does not store its
/// sequence) when looking for valid records after bad bytes.
const UNSTORED_SEQ_TRIES: u64 = 1024;

/// An event as stored, with its position in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the log; the forwarder's cursor counts these.
    pub seq: u64,
    pub event: Event,
}

/// Why bytes on disk are not a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The file ends inside the frame: a torn append.
    #[error("truncated record")]
    Truncated,
    #[error("record length {0} out of range")]
    BadLength(usize),
    #[error("crc mismatch")]
    BadCrc,
    /// An intact record of another place in the log (left in a reused segment).
    #[error("record of sequence {0}")]
    OtherSequence(u64),
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
    /// An intact record of a version this binary does not know: written by a newer
    /// hookrelay. Not damage: nothing may be skipped or quarantined over it.
    #[error(
        "a spool record of version {0}, written by a newer hookrelay (this one reads versions 1 to {VERSION}): run that release on this spool; to go back, drain it with that release first (`hookrelay drain`, exit 0) and start this one on an empty spool.dir (the segments keep delivered records)"
    )]
    Newer(u8),
}

/// Why an event cannot be framed. The edge bounds every field far below these
/// limits (see `event`), so this is a bug caught before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {len} bytes, more than a spool record can hold")]
pub struct EncodeError {
    pub field: &'static str,
    pub len: usize,
}

/// Frames an event for appending; done by the request task, off the writer thread.
/// The CRC in the header covers the payload only until [`seal`] adds the sequence.
/// Refuses rather than cuts: a frame is either exactly the event or not written.
pub fn encode(e: &Event) -> Result<Bytes, EncodeError> {
    let strs: [(&'static str, &[u8]); 7] = [
        ("source", e.source().as_bytes()),
        ("event type", e.event_type().as_bytes()),
        ("event id", e.id().as_bytes()),
        ("topic", e.topic().as_bytes()),
        ("key", e.key().as_bytes()),
        ("content type", e.content_type().as_bytes()),
        ("traceparent", e.traceparent().as_bytes()),
    ];
    for (field, s) in strs {
        if s.len() > u16::MAX as usize {
            return Err(EncodeError {
                field,
                len: s.len(),
            });
        }
    }
    if e.body().len() > MAX_BODY_LEN {
        return Err(EncodeError {
            field: "body",
            len: e.body().len(),
        });
    }
    let payload_len =
        1 + 8 + strs.iter().map(|(_, s)| 2 + s.len()).sum::<usize>() + 4 + e.body().len() + SEQ_LEN;
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload_len);
    buf.put_u32_le(payload_len as u32);
    buf.put_u32_le(0); // CRC, filled in below.
    buf.put_u8(VERSION);
    buf.put_u64_le(e.received_at_ns());
    for (_, s) in strs {
        buf.put_u16_le(s.len() as u16);
        buf.put_slice(s);
    }
    buf.put_u32_le(e.body().len() as u32);
    buf.put_slice(e.body());
    let crc = crc32c::crc32c(&buf[HEADER_LEN..]);
    buf.put_u64_le(0); // The sequence, written by `seal`.
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(buf.len(), HEADER_LEN + payload_len);
    Ok(buf.freeze())
}

/// Where the body lies in an [`encode`]d frame.
pub fn body_range(frame_len: usize, body_len: usize) -> Range<usize> {
    frame_len - SEQ_LEN - body_len..frame_len - SEQ_LEN
}

/// Binds an [`encode`]d frame to its place in the log, once the writer knows it:
/// stores the sequence and appends it to the CRC (8 bytes of CRC work, not the
/// payload's).
pub fn seal(frame: &mut [u8], seq: u64) {
    let n = frame.len();
    frame[n - SEQ_LEN..].copy_from_slice(&seq.to_le_bytes());
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let crc = crc32c::crc32c_append(crc, &seq.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Whether a payload's CRC covered its sequence: a segment holding only such records
/// can be reused, its old records never reading as later ones.
pub fn is_sequenced(payload: &[u8]) -> bool {
    payload.first() != Some(&VERSION_UNSEQUENCED)
}

/// Whether a payload stores its sequence (version 3 on).
pub fn stores_sequence(payload: &[u8]) -> bool {
    payload.first().is_some_and(|v| *v >= VERSION_SIX_STRINGS)
}

/// What lies at a position in a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The payload of a record whose CRC checks for the sequence asked for.
    Record(Bytes),
    /// No more records: the end of the file, preallocated zeros, or `END`
    /// (`marked`: the bytes after it are left from an earlier use of the file).
    End { marked: bool },
}

/// Reads the frame of record `seq`.
pub fn read_frame(r: &mut impl Read, seq: u64) -> Result<Frame, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(Frame::End { marked: false }),
        _ if header == [0; HEADER_LEN] => return Ok(Frame::End { marked: false }),
        _ if header == END => return Ok(Frame::End { marked: true }),
        n if n < HEADER_LEN => return Err(DecodeError::Truncated.into()),
        _ => {}
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(1 + 8..=MAX_PAYLOAD_LEN).contains(&len) {
        return Err(DecodeError::BadLength(len).into());
    }
    let mut payload = vec![0u8; len];
    if read_full(r, &mut payload)? < len {
        return Err(DecodeError::Truncated.into());
    }
    check(&payload, crc, seq)?;
    Ok(Frame::Record(Bytes::from(payload)))
}

/// Checks a payload's CRC for record `seq`.
fn check(payload: &[u8], crc: u32, seq: u64) -> Result<(), DecodeError> {
    let mut expected = crc32c::crc32c(payload);
    match payload.first() {
        Some(&v) if v >= VERSION_SIX_STRINGS && payload.len() >= SEQ_LEN => {
            if expected != crc {
                return Err(DecodeError::BadCrc);
            }
            // The sequence first: a newer frame of another place in the log (left
            // in a reused segment, or forged inside an old body) is that, not a
            // reason to refuse the spool.
            let stored = stored_seq(payload);
            return if stored != seq {
                Err(DecodeError::OtherSequence(stored))
            } else if v > VERSION {
                Err(DecodeError::Newer(v))
            } else {
                Ok(())
            };
        }
        Some(&VERSION_UNSEQUENCED) => {}
        _ => expected = crc32c::crc32c_append(expected, &seq.to_le_bytes()),
    }
    if expected == crc {
        Ok(())
    } else {
        Err(DecodeError::BadCrc)
    }
}

fn stored_seq(payload: &[u8]) -> u64 {
    let mut b = [0u8; SEQ_LEN];
    b.copy_from_slice(&payload[payload.len() - SEQ_LEN..]);
    u64::from_le_bytes(b)
}

/// Looks through `bytes` for the first intact record whose sequence is in `seqs`,
/// and returns its offset and sequence: where reading picks up again after bad bytes.
///
/// Candidates are cheap to rule out (a plausible length, a known version, a stored
/// sequence in range, a well-formed payload) before the CRC is computed, so a scan
/// over a segment of garbage costs a pass over its bytes.
///
/// Bodies are sender-chosen bytes, so a body may hold what looks like a frame. Two
/// rules keep such a forgery from being taken for a record: an intact record of an
/// earlier sequence (left from the file's earlier use) is stepped over whole, never
/// searched inside; and version 2 frames, which do not store their sequence (the
/// first `UNSTORED_SEQ_TRIES` of the range are tried), are looked for only where
/// `unstored` says the segment was written with them. The CRC work of one scan is
/// bounded too (`CRC_BUDGET` times the bytes scanned).
pub fn find_record(bytes: &[u8], seqs: Range<u64>, unstored: bool) -> Option<(usize, u64)> {
    if seqs.is_empty() {
        return None;
    }
    let mut budget = bytes.len().saturating_mul(CRC_BUDGET).max(1 << 20);
    let mut at = 0;
    while at + HEADER_LEN + MIN_PAYLOAD_LEN <= bytes.len() {
        match candidate(bytes, at, &seqs, unstored, &mut budget) {
            Candidate::Record(seq) => return Some((at, seq)),
            Candidate::Older(len) => at += HEADER_LEN + len,
            Candidate::No => at += 1,
        }
        if budget == 0 {
            return None;
        }
    }
    None
}

/// CRC work a scan may do, in multiples of the bytes it scans.
const CRC_BUDGET: usize = 4;

enum Candidate {
    Record(u64),
    /// An intact record of an earlier sequence, `len` payload bytes long.
    Older(usize),
    No,
}

fn candidate(
    bytes: &[u8],
    at: usize,
    seqs: &Range<u64>,
    unstored: bool,
    budget: &mut usize,
) -> Candidate {
    let header = &bytes[at..at + HEADER_LEN];
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(MIN_PAYLOAD_LEN..=MAX_PAYLOAD_LEN).contains(&len) {
        return Candidate::No;
    }
    let Some(payload) = bytes.get(at + HEADER_LEN..at + HEADER_LEN + len) else {
        return Candidate::No;
    };
    let mut spend = |n: usize| {
        *budget = budget.saturating_sub(n);
    };
    match payload[0] {
        v @ (VERSION | VERSION_SIX_STRINGS) => {
            if len < MIN_PAYLOAD_LEN + SEQ_LEN
                || !well_formed(&payload[..len - SEQ_LEN], strings(v))
            {
                return Candidate::No;
            }
            let seq = stored_seq(payload);
            let plausible = seqs.contains(&seq) || seq < seqs.start;
            if !plausible {
                return Candidate::No;
            }
            spend(len);
            if crc32c::crc32c(payload) != crc {
                return Candidate::No;
            }
            if seq < seqs.start {
                Candidate::Older(len)
            } else {
                Candidate::Record(seq)
            }
        }
        VERSION_SEQUENCED if unstored => {
            if !well_formed(payload, 6) {
                return Candidate::No;
            }
            spend(len);
            let base = crc32c::crc32c(payload);
            let last = seqs.end.min(seqs.start.saturating_add(UNSTORED_SEQ_TRIES));
            match (seqs.start..last).find(|s| crc32c::crc32c_append(base, &s.to_le_bytes()) == crc)
            {
                Some(seq) => Candidate::Record(seq),
                None => Candidate::No,
            }
        }
        _ => Candidate::No,
    }
}

/// Strings in a payload of a known version.
fn strings(version: u8) -> usize {
    if version >= VERSION { 7 } else { 6 }
}

/// Whether the metadata lengths of a payload (without a stored sequence) add up.
fn well_formed(mut p: &[u8], strings: usize) -> bool {
    if p.len() < MIN_PAYLOAD_LEN {
        return false;
    }
    p.advance(1 + 8);
    for _ in 0..strings {
        if p.remaining() < 2 {
            return false;
        }
        let n = p.get_u16_le() as usize;
        if p.remaining() < n {
            return false;
        }
        p.advance(n);
    }
    p.remaining() >= 4 && p.get_u32_le() as usize == p.remaining()
}

/// Either the disk failed us or the bytes are not a record.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Parses a CRC-checked payload. The body is a slice of `payload`, not a copy.
pub fn decode(seq: u64, mut payload: Bytes) -> Result<Record, DecodeError> {
    fn need(p: &Bytes, n: usize) -> Result<(), DecodeError> {
        if p.remaining() < n {
            Err(DecodeError::Malformed("short payload"))
        } else {
            Ok(())
        }
    }
    fn string(p: &mut Bytes) -> Result<String, DecodeError> {
        need(p, 2)?;
        let len = p.get_u16_le() as usize;
        need(p, len)?;
        String::from_utf8(p.split_to(len).to_vec()).map_err(|_| DecodeError::Malformed("utf-8"))
    }
    need(&payload, 9)?;
    let version = payload.get_u8();
    match version {
        VERSION | VERSION_SIX_STRINGS => {
            need(&payload, 8 + SEQ_LEN)?;
            payload.truncate(payload.len() - SEQ_LEN);
        }
        VERSION_SEQUENCED | VERSION_UNSEQUENCED => {}
        v if v > VERSION => return Err(DecodeError::Newer(v)),
        _ => return Err(DecodeError::Malformed("unknown version")),
    }
    let received_at_ns = payload.get_u64_le();
    let source = string(&mut payload)?;
    let event_type = string(&mut payload)?;
    let id = string(&mut payload)?;
    let topic = string(&mut payload)?;
    let key = string(&mut payload)?;
    let content_type = string(&mut payload)?;
    let traceparent = if version == VERSION {
        string(&mut payload)?
    } else {
        String::new()
    };
    need(&payload, 4)?;
    let body_len = payload.get_u32_le() as usize;
    if payload.remaining() != body_len {
        return Err(DecodeError::Malformed("body length"));
    }
    Ok(Record {
        seq,
        event: Event::from_record(
            Arc::from(source),
            event_type,
            id,
            topic,
            key,
            content_type,
            received_at_ns,
            payload,
            traceparent,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBuilder;

    fn builder(i: u64) -> EventBuilder {
        EventBuilder::new(i)
            .source("quickassist")
            .id(format!("message.read:msg_{i}"))
            .topic("quickassist.message.read")
            .key(format!("msg_{i}"))
            .received_at_ns(1_700_000_000_000_000_000 + i)
            .body(format!("{{\"event\":\"message.read\",\"n\":{i}}}"))
    }

    pub(crate) fn event(i: u64) -> Event {
        builder(i).build()
    }

    fn sealed(e: &Event, seq: u64) -> Vec<u8> {
        let mut frame = encode(e).unwrap().to_vec();
        seal(&mut frame, seq);
        frame
    }

    fn payload(frame: Frame) -> Bytes {
        match frame {
            Frame::Record(p) => p,
            end => panic!("{end:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let e = event(3);
        let framed = sealed(&e, 9);
        let payload = payload(read_frame(&mut &framed[..], 9).unwrap());
        assert_eq!(decode(9, payload).unwrap(), Record { seq: 9, event: e });
        let frame = encode(&event(3)).unwrap();
        assert_eq!(
            &frame[body_range(frame.len(), event(3).body().len())],
            &event(3).body()[..]
        );
    }

    /// A field the record cannot carry is refused, never cut: cutting it once made
    /// the frame's length disagree with its bytes, and recovery then cut every
    /// record after it as a torn tail.
    #[test]
    fn fields_too_long_to_frame_are_refused() {
        let e = builder(1).content_type("x".repeat(70 * 1024)).build();
        assert_eq!(
            encode(&e),
            Err(EncodeError {
                field: "content type",
                len: 70 * 1024
            })
        );
        let e = builder(1)
            .content_type("x".repeat(u16::MAX as usize))
            .build();
        let framed = sealed(&e, 4);
        let back = decode(4, payload(read_frame(&mut &framed[..], 4).unwrap())).unwrap();
        assert_eq!(back.event, e);
    }

    /// A record left in a recycled segment is never read as another sequence's.
    #[test]
    fn a_record_reads_only_at_its_own_sequence() {
        let framed = sealed(&event(3), 9);
        for seq in [0, 8, 10, 9 + (1 << 32), u64::MAX] {
            assert!(
                matches!(
                    read_frame(&mut &framed[..], seq),
                    Err(ReadError::Decode(DecodeError::OtherSequence(9)))
                ),
                "read at {seq}"
            );
        }
        // Not sealed at all (the writer always seals): no sequence matches either.
        let unsealed = encode(&event(3)).unwrap();
        assert!(read_frame(&mut &unsealed[..], 9).is_err());
    }

    /// An encoded frame as versions 1 to 3 wrote it: six strings (the event's
    /// `traceparent` must be empty), the version byte given, sequence stored or
    /// not, CRC over the payload, then the sequence when given.
    fn old_frame(e: &Event, version: u8, seq: Option<u64>) -> Vec<u8> {
        assert!(e.traceparent().is_empty());
        let mut framed = encode(e).unwrap().to_vec();
        // The empty seventh string sits just before the body length.
        let at = framed.len() - SEQ_LEN - e.body().len() - 4 - 2;
        assert_eq!(&framed[at..at + 2], &[0, 0]);
        framed.drain(at..at + 2);
        if version < VERSION_SIX_STRINGS {
            framed.truncate(framed.len() - SEQ_LEN);
        }
        let len = (framed.len() - HEADER_LEN) as u32;
        framed[..4].copy_from_slice(&len.to_le_bytes());
        framed[HEADER_LEN] = version;
        if version == VERSION_SIX_STRINGS {
            let n = framed.len();
            framed[n - SEQ_LEN..].copy_from_slice(&seq.unwrap().to_le_bytes());
            let crc = crc32c::crc32c(&framed[HEADER_LEN..]);
            framed[4..8].copy_from_slice(&crc.to_le_bytes());
            return framed;
        }
        let mut crc = crc32c::crc32c(&framed[HEADER_LEN..]);
        if let Some(s) = seq {
            crc = crc32c::crc32c_append(crc, &s.to_le_bytes());
        }
        framed[4..8].copy_from_slice(&crc.to_le_bytes());
        framed
    }

    /// Frames written by version 3 (six strings), version 2 (sequence in the CRC,
    /// not stored) and version 1 (no sequence at all) still read after an upgrade.
    #[test]
    fn older_frames_still_read() {
        let e = event(4);
        let framed = old_frame(&e, VERSION_UNSEQUENCED, None);
        let payload1 = payload(read_frame(&mut &framed[..], 77).unwrap());
        assert_eq!(decode(77, payload1).unwrap().event, e);
        let framed = old_frame(&e, VERSION_SEQUENCED, Some(78));
        let payload2 = payload(read_frame(&mut &framed[..], 78).unwrap());
        assert_eq!(decode(78, payload2).unwrap().event, e);
        assert!(read_frame(&mut &framed[..], 79).is_err());
        // And are found after bad bytes, within the tries.
        let mut bytes = vec![0xAB; 100];
        bytes.extend_from_slice(&framed);
        assert_eq!(find_record(&bytes, 70..2000, true), Some((100, 78)));
        assert_eq!(find_record(&bytes, 79..2000, true), None);
        // Only where the segment was written with them.
        assert_eq!(find_record(&bytes, 70..2000, false), None);

        let v3 = old_frame(&e, VERSION_SIX_STRINGS, Some(80));
        let payload3 = payload(read_frame(&mut &v3[..], 80).unwrap());
        assert!(stores_sequence(&payload3));
        assert_eq!(decode(80, payload3).unwrap().event, e);
        let mut bytes = vec![0xCD; 31];
        bytes.extend_from_slice(&v3);
        assert_eq!(find_record(&bytes, 70..2000, false), Some((31, 80)));
    }

    #[test]
    fn the_traceparent_round_trips() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let e = builder(5).traceparent(tp).build();
        let framed = sealed(&e, 3);
        let back = decode(3, payload(read_frame(&mut &framed[..], 3).unwrap())).unwrap();
        assert_eq!(back.event.traceparent(), tp);
        assert_eq!(back.event, e);
    }

    /// An intact frame of a version this binary does not know was written by a newer
    /// release: it is reported as such (the spool refuses to open), never read as
    /// damage to be quarantined; the same bytes with a flipped bit are damage.
    #[test]
    fn a_newer_version_is_refused_not_taken_for_damage() {
        let mut framed = encode(&event(6)).unwrap().to_vec();
        framed[HEADER_LEN] = VERSION + 1;
        let crc = crc32c::crc32c(&framed[HEADER_LEN..framed.len() - SEQ_LEN]);
        framed[4..8].copy_from_slice(&crc.to_le_bytes());
        seal(&mut framed, 12);
        match read_frame(&mut &framed[..], 12) {
            Err(ReadError::Decode(DecodeError::Newer(v))) => assert_eq!(v, VERSION + 1),
            other => panic!("{other:?}"),
        }
        // At another place in the log (left in a reused segment, or forged inside
        // an old body) it is that, never a reason to refuse the spool.
        assert!(matches!(
            read_frame(&mut &framed[..], 13),
            Err(ReadError::Decode(DecodeError::OtherSequence(12)))
        ));
        let message = DecodeError::Newer(VERSION + 1).to_string();
        assert!(message.contains("newer hookrelay"), "{message}");
        let mut flipped = framed.clone();
        flipped[HEADER_LEN + 3] ^= 1;
        assert!(matches!(
            read_frame(&mut &flipped[..], 12),
            Err(ReadError::Decode(DecodeError::BadCrc))
        ));
    }

    #[test]
    fn ends() {
        let mut r: &[u8] = &[];
        assert_eq!(read_frame(&mut r, 0).unwrap(), Frame::End { marked: false });
        let zeros = [0u8; 64];
        assert_eq!(
            read_frame(&mut &zeros[..], 0).unwrap(),
            Frame::End { marked: false }
        );
        let mut marked = END.to_vec();
        marked.extend_from_slice(&sealed(&event(1), 0));
        assert_eq!(
            read_frame(&mut &marked[..], 0).unwrap(),
            Frame::End { marked: true }
        );
    }

    #[test]
    fn every_truncation_is_detected() {
        let framed = sealed(&event(1), 0);
        for cut in 1..framed.len() {
            let r = read_frame(&mut &framed[..cut], 0);
            assert!(
                matches!(r, Err(ReadError::Decode(DecodeError::Truncated))),
                "cut at {cut}: {r:?}"
            );
        }
    }

    #[test]
    fn every_bit_flip_in_the_payload_is_detected() {
        let framed = sealed(&event(1), 5);
        for i in HEADER_LEN..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x10;
            assert!(read_frame(&mut &bad[..], 5).is_err(), "flip at {i}");
        }
    }

    /// After garbage, a flipped record or a torn one, the next intact record of
    /// the range is found wherever it starts; records outside the range are not.
    #[test]
    fn the_next_record_is_found_after_bad_bytes() {
        let mut bytes = vec![0x5A; 13];
        let mut broken = sealed(&event(1), 10);
        broken[30] ^= 1;
        bytes.extend_from_slice(&broken);
        let torn = sealed(&event(2), 11);
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        let at = bytes.len();
        bytes.extend_from_slice(&sealed(&event(3), 12));
        assert_eq!(find_record(&bytes, 10..100, false), Some((at, 12)));
        assert_eq!(
            find_record(&bytes, 13..100, false),
            None,
            "outside the range"
        );
        assert_eq!(find_record(&bytes, 0..12, false), None, "outside the range");
        assert_eq!(find_record(&bytes[..bytes.len() - 1], 10..100, false), None);
        assert_eq!(find_record(&[], 0..100, false), None);
    }

    /// A body holding what looks like a later record (a sender can put any bytes
    /// there): inside an intact older record it is stepped over, never taken.
    #[test]
    fn a_frame_forged_inside_an_older_records_body_is_not_taken() {
        let forged = sealed(&event(66), 20);
        let carrier = builder(1)
            .body(Bytes::from(
                [b"{\"x\":\"".as_slice(), &forged, b"\"}"].concat(),
            ))
            .build();
        let mut bytes = vec![0x33; 9];
        bytes.extend_from_slice(&sealed(&carrier, 3));
        assert_eq!(find_record(&bytes, 10..100, false), None);
        // The same bytes outside any record would be found (so the test can fail).
        let mut loose = vec![0x33; 9];
        loose.extend_from_slice(&forged);
        assert_eq!(find_record(&loose, 10..100, false), Some((9, 20)));
    }
}
