//! The dead-letter file's lines as readers see them, each at its byte offset.
//!
//! Readers share the file with a writer appending to it: each reads on a handle of
//! its own, only up to the length it saw at the start, so a line being written is a
//! partial last line, and a partial last line is not a line yet. The file may also
//! be edited by hand: a line longer than [`MAX_LINE_LEN`] is passed over without
//! being held in memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Take};
use std::os::unix::fs::FileExt;

/// Longest line read: a longer one is skipped (counted, not parsed), so that a damaged
/// or hand-made file cannot make a reader hold gigabytes. An event's line is about
/// its body's size (twice that as `body_hex`).
pub const MAX_LINE_LEN: usize = 16 << 20;

/// The lines of one file from an offset up to a length seen once.
pub struct Lines {
    reader: BufReader<Take<File>>,
    pos: u64,
    buf: Vec<u8>,
}

/// One whole line (its `\n` excluded), or the fact that it was too long to read.
pub enum Line<'a> {
    Whole(&'a [u8]),
    TooLong,
}

impl Lines {
    /// Reads `file` from `from` up to `end` (a length observed earlier). `from` may
    /// come from a request: past the end it reads nothing (a seek that far fails).
    pub fn new(mut file: File, from: u64, end: u64) -> io::Result<Lines> {
        let from = from.min(end);
        file.seek(SeekFrom::Start(from))?;
        Ok(Lines {
            reader: BufReader::with_capacity(64 << 10, file.take(end.saturating_sub(from))),
            pos: from,
            buf: Vec::new(),
        })
    }

    /// Where the next line starts.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next whole line and its offset; `None` at the end, a partial last line
    /// included (a write in progress, or one a crash cut short).
    pub fn next_line(&mut self) -> io::Result<Option<(u64, Line<'_>)>> {
        let start = self.pos;
        self.buf.clear();
        let mut long = false;
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if !long {
                if self.buf.len() + take > MAX_LINE_LEN {
                    long = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            let used = take + usize::from(done);
            self.reader.consume(used);
            self.pos += used as u64;
            if done {
                break;
            }
        }
        let line = if long {
            Line::TooLong
        } else {
            Line::Whole(&self.buf)
        };
        Ok(Some((start, line)))
    }
}

/// Whether a line starts at `id` in a file of length `end`: ids are offsets, so
/// anything else (inside a line, past the end) names no entry.
pub fn starts_line(file: &File, id: u64, end: u64) -> io::Result<bool> {
    if id >= end {
        return Ok(false);
    }
    if id == 0 {
        return Ok(true);
    }
    let mut before = [0u8; 1];
    file.read_exact_at(&mut before, id - 1)?;
    Ok(before[0] == b'\n')
}
