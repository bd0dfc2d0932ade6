//! The on-disk record: `len u32 | crc32c u32 | payload`, little endian.
//!
//! The payload holds the event's metadata and its raw body. The CRC covers the
//! payload and the record's sequence number (version 2; version 1, written before
//! segments were recycled, covers the payload alone and is still read), so a torn
//! write (crash mid-append) or a flipped bit is recognised on replay and the tail is
//! cut there instead of being published, and a record left in a recycled segment
//! from its earlier use never reads as one of the current log: its sequence differs.
//!
//! Where the records end: segments are zero-filled ahead of the writer (see
//! `prealloc`), so an all-zero header marks the end (no frame has one, its length is
//! never 0). A recycled segment holds old records after the new ones, so the writer
//! puts [`END`] after every batch there: the end, with unspecified bytes after it.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::event::Event;

/// Version of the frames written; the CRC covers the sequence from version 2 on.
const VERSION: u8 = 2;
/// Frames of this version have a CRC of the payload alone.
const VERSION_UNSEQUENCED: u8 = 1;
/// Frame header: payload length and CRC.
pub const HEADER_LEN: usize = 8;
/// Marks the end of the records in a segment whose later bytes are left from an
/// earlier use (a zero length, which no frame has, and a non-zero tag).
pub const END: [u8; HEADER_LEN] = [0, 0, 0, 0, b'E', b'N', b'D', b'.'];
/// Larger lengths are corruption, not records (bodies are capped far below this).
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024 * 1024;

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
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Frames an event for appending; done by the request task, off the writer thread.
/// The CRC in the header covers the payload only until [`seal`] adds the sequence.
pub fn encode(e: &Event) -> Bytes {
    let strs = [
        e.source.as_bytes(),
        e.event_type.as_bytes(),
        e.id.as_bytes(),
        e.topic.as_bytes(),
        e.key.as_bytes(),
        e.content_type.as_bytes(),
    ];
    let payload_len = 1 + 8 + strs.iter().map(|s| 2 + s.len()).sum::<usize>() + 4 + e.body.len();
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload_len);
    buf.put_u32_le(payload_len as u32);
    buf.put_u32_le(0); // CRC, filled in below.
    buf.put_u8(VERSION);
    buf.put_u64_le(e.received_at_ns);
    for s in strs {
        // Every string is bounded well below 64 KiB at the edge; clamp defensively.
        let s = &s[..s.len().min(u16::MAX as usize)];
        buf.put_u16_le(s.len() as u16);
        buf.put_slice(s);
    }
    buf.put_u32_le(e.body.len() as u32);
    buf.put_slice(&e.body);
    let crc = crc32c::crc32c(&buf[HEADER_LEN..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf.freeze()
}

/// Binds an [`encode`]d frame to its place in the log, once the writer knows it:
/// appends the sequence to the payload's CRC (8 bytes of CRC work, not the payload's).
pub fn seal(frame: &mut [u8], seq: u64) {
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let crc = crc32c::crc32c_append(crc, &seq.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Whether a payload's CRC covered its sequence: a segment holding only such records
/// can be reused, its old records never reading as later ones.
pub fn is_sequenced(payload: &[u8]) -> bool {
    payload.first() != Some(&VERSION_UNSEQUENCED)
}

/// What lies at a position in a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The payload of a record whose CRC checks for the sequence asked for.
    Record(Bytes),
    /// No more records: the end of the file, preallocated zeros, or [`END`]
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
    let mut expected = crc32c::crc32c(&payload);
    if is_sequenced(&payload) {
        expected = crc32c::crc32c_append(expected, &seq.to_le_bytes());
    }
    if expected != crc {
        return Err(DecodeError::BadCrc.into());
    }
    Ok(Frame::Record(Bytes::from(payload)))
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
    if !matches!(payload.get_u8(), VERSION | VERSION_UNSEQUENCED) {
        return Err(DecodeError::Malformed("unknown version"));
    }
    let received_at_ns = payload.get_u64_le();
    let source = string(&mut payload)?;
    let event_type = string(&mut payload)?;
    let id = string(&mut payload)?;
    let topic = string(&mut payload)?;
    let key = string(&mut payload)?;
    let content_type = string(&mut payload)?;
    need(&payload, 4)?;
    let body_len = payload.get_u32_le() as usize;
    if payload.remaining() != body_len {
        return Err(DecodeError::Malformed("body length"));
    }
    Ok(Record {
        seq,
        event: Event {
            source: Arc::from(source),
            event_type,
            id,
            topic,
            key,
            content_type,
            received_at_ns,
            body: payload,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(i: u64) -> Event {
        Event {
            source: Arc::from("quickassist"),
            event_type: "message.read".into(),
            id: format!("message.read:msg_{i}"),
            topic: "quickassist.message.read".into(),
            key: format!("msg_{i}"),
            content_type: "application/json".into(),
            received_at_ns: 1_700_000_000_000_000_000 + i,
            body: Bytes::from(format!("{{\"event\":\"message.read\",\"n\":{i}}}")),
        }
    }

    fn sealed(e: &Event, seq: u64) -> Vec<u8> {
        let mut frame = encode(e).to_vec();
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
    }

    /// A record left in a recycled segment is never read as another sequence's.
    #[test]
    fn a_record_reads_only_at_its_own_sequence() {
        let framed = sealed(&event(3), 9);
        for seq in [0, 8, 10, 9 + (1 << 32), u64::MAX] {
            assert!(
                matches!(
                    read_frame(&mut &framed[..], seq),
                    Err(ReadError::Decode(DecodeError::BadCrc))
                ),
                "read at {seq}"
            );
        }
        // Not sealed at all (the writer always seals): no sequence matches either.
        let unsealed = encode(&event(3));
        assert!(read_frame(&mut &unsealed[..], 9).is_err());
    }

    /// Spools written before the sequence was in the CRC still replay after an upgrade.
    #[test]
    fn version_1_frames_still_read() {
        let e = event(4);
        let mut framed = encode(&e).to_vec();
        framed[HEADER_LEN] = VERSION_UNSEQUENCED;
        let crc = crc32c::crc32c(&framed[HEADER_LEN..]);
        framed[4..8].copy_from_slice(&crc.to_le_bytes());
        let payload = payload(read_frame(&mut &framed[..], 77).unwrap());
        assert_eq!(decode(77, payload).unwrap().event, e);
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
}
