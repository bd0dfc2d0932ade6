//! The dead-letter file: events a sink refused for good, with the reason.
//!
//! Never silently dropped: each line is fdatasync'd before the spool cursor may
//! pass the event, and counted in `hookrelay_dead_lettered_total`.
//!
//! The admin lists, shows, removes and redrives them. The file stays append-only,
//! so a line's byte offset is its id for good, and a removal is a tombstone: the
//! offset appended (u64, little endian) to `PATH.removed` beside it. Nothing is
//! ever rewritten, so readers need no lock against the writer: each reads on its
//! own handle up to the length it saw at the start, and a partial last line (a
//! write in progress) is not a line yet. Reading is blocking, as writing is.

mod entry;
mod lines;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::sink::{
    Message,
    file::{Refusal, json_line},
};
pub use entry::{Entry, Filter, Full};
use entry::{Parsed, parse};
use lines::{Line, Lines, MAX_LINE_LEN, starts_line};

/// Bytes one listing reads at most before it returns what it found: a filter that
/// matches little must not hold a thread for the whole of a large file. The page
/// is then short, with a `next` to go on from.
const SCAN_BUDGET: u64 = 256 << 20;

#[derive(Clone)]
pub struct DeadLetter {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Writer>,
    /// `PATH.removed`; its lock also makes removals one at a time.
    tombstones: Mutex<File>,
    removed: RwLock<HashSet<u64>>,
    live: Mutex<Live>,
}

struct Writer {
    file: File,
    /// The file may end inside a line (a crash mid-write, a failed write): the next
    /// write starts with a `\n`, so that its first line is not glued to the fragment.
    torn: bool,
}

/// Live entries, kept as lines are written and removed. Signed: a removal can read
/// a line just written before its writer has counted it.
#[derive(Default)]
struct Live {
    entries: i64,
    body_bytes: i64,
}

/// What the dead letters hold now, cheap to ask for (kept as they change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub entries: u64,
    pub body_bytes: u64,
}

/// One listing's worth of entries, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page; `None` once nothing is left. A page can
    /// be short and still have one (see [`DeadLetter::list`]).
    pub next: Option<u64>,
}

impl DeadLetter {
    /// Opens (or creates) the file and its tombstones and counts the live entries,
    /// which reads the whole file once.
    pub fn open(path: &Path) -> io::Result<DeadLetter> {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent)?;
        }
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(p)
        };
        let file = open(path)?;
        let mut tombstones = open(&removed_path(path))?;
        // The files' names must survive a crash as well as their lines.
        if let Some(parent) = parent {
            File::open(parent)?.sync_all()?;
        }
        let mut words = Vec::new();
        tombstones.read_to_end(&mut words)?;
        // A torn last word was never synced: no removal of it was ever confirmed.
        let removed: HashSet<u64> = words
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
            .collect();
        let end = file.metadata()?.len();
        let torn = end > 0 && {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, end - 1)?;
            last[0] != b'\n'
        };
        let dl = DeadLetter {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(Writer { file, torn }),
                tombstones: Mutex::new(tombstones),
                removed: RwLock::new(removed),
                live: Mutex::new(Live::default()),
            }),
        };
        dl.count_live(end)?;
        Ok(dl)
    }

    /// Appends and syncs one event that `sink` refused. Blocking.
    pub fn write(&self, sink: &str, m: &Message, reason: &str) -> io::Result<()> {
        self.write_all(&[(sink, m, reason)])
    }

    /// Appends several events (each with the sink that refused it) and syncs once.
    /// Blocking.
    pub fn write_all(&self, events: &[(&str, &Message, &str)]) -> io::Result<()> {
        let at_ns = crate::event::now_ns();
        let mut lines = Vec::new();
        let (mut entries, mut body_bytes) = (0, 0);
        for (sink, m, reason) in events {
            let line = json_line(
                m,
                Some(&Refusal {
                    sink,
                    reason,
                    at_ns,
                }),
            );
            // Counted as readers will see it: a line past their cap is skipped.
            if line.len() - 1 <= MAX_LINE_LEN {
                entries += 1;
                body_bytes += m.event.body().len() as i64;
            }
            lines.extend_from_slice(&line);
        }
        let mut w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.torn {
            w.file.write_all(b"\n")?;
        }
        if let Err(e) = w.file.write_all(&lines) {
            w.torn = true;
            return Err(e);
        }
        // As for the spool: a failed fdatasync is not retried (the event would then be
        // forgotten on the word of a sync that may have lost it).
        if let Err(e) = w.file.sync_data() {
            crate::supervise::stop_after_failed_sync("dead-letter file", &e);
        }
        w.torn = false;
        drop(w);
        self.count(entries, body_bytes);
        Ok(())
    }

    /// Live entries after `after` (from the start without it), oldest first, at most
    /// `limit` of them (0 is taken as 1). Reads from `after` on, not from the start.
    /// The file's length: every entry written later has an id at least this.
    pub fn end(&self) -> io::Result<u64> {
        Ok(std::fs::metadata(&self.inner.path)?.len())
    }

    /// Stops after reading [`SCAN_BUDGET`] bytes, with a `next` to go on from, so a
    /// page may be short (even empty) before the end. Blocking.
    pub fn list(&self, filter: &Filter, after: Option<u64>, limit: usize) -> io::Result<Page> {
        self.list_within(filter, after, limit, SCAN_BUDGET)
    }

    /// [`DeadLetter::list`] reading about `budget` bytes at most.
    fn list_within(
        &self,
        filter: &Filter,
        after: Option<u64>,
        limit: usize,
        budget: u64,
    ) -> io::Result<Page> {
        let limit = limit.max(1);
        let file = File::open(&self.inner.path)?;
        let end = file.metadata()?.len();
        let mut lines = Lines::new(file, after.unwrap_or(0), end)?;
        if after.is_some() {
            // Strictly after: pass over the line there (to the next line's start, if
            // `after` is not one).
            lines.next_line()?;
        }
        let start = lines.position();
        let mut skipped = Skipped::default();
        let mut entries: Vec<Entry> = Vec::new();
        let mut looked_at = after;
        let next = loop {
            if lines.position() - start > budget {
                break looked_at;
            }
            let Some((id, line)) = lines.next_line()? else {
                break None;
            };
            looked_at = Some(id);
            let Some(p) = skipped.parse(id, line) else {
                continue;
            };
            if self.is_removed(id) || !filter.matches(&p.entry) {
                continue;
            }
            // One more than the page holds: only then is there a next page.
            if entries.len() == limit {
                break entries.last().map(|e| e.id);
            }
            entries.push(p.entry);
        };
        skipped.warn(&self.inner.path, "listing");
        Ok(Page { entries, next })
    }

    /// The entry at `id` with its headers and body; `None` if removed, or if no
    /// well-formed line starts there. Blocking.
    pub fn get(&self, id: u64) -> io::Result<Option<Full>> {
        if self.is_removed(id) {
            return Ok(None);
        }
        let file = File::open(&self.inner.path)?;
        let end = file.metadata()?.len();
        Ok(parsed_at(&file, end, id)?.and_then(|p| p.full().ok()))
    }

    /// Removes entries for good (redriven, or given up on): how many were removed
    /// now. Ids already removed, or that no entry starts at, are passed over, so
    /// that a retried request removes nothing twice. Synced before it returns.
    /// Blocking.
    pub fn remove(&self, ids: &[u64]) -> io::Result<usize> {
        let mut tombstones = self
            .inner
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let file = File::open(&self.inner.path)?;
        let end = file.metadata()?.len();
        let mut fresh = Vec::new();
        let mut seen = HashSet::new();
        let mut body_bytes = 0;
        for &id in ids {
            if !seen.insert(id) || self.is_removed(id) {
                continue;
            }
            if let Some(p) = parsed_at(&file, end, id)? {
                fresh.push(id);
                body_bytes += p.entry.size as i64;
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        // Words are whole from the file's start: a torn one (a crash, a failed
        // write) is cut before appending, or every later word would be misread.
        let len = tombstones.metadata()?.len();
        let whole = len - len % 8;
        if whole != len {
            tombstones.set_len(whole)?;
        }
        let words: Vec<u8> = fresh.iter().flat_map(|id| id.to_le_bytes()).collect();
        if let Err(e) = tombstones.write_all(&words) {
            // Best effort: a torn word left behind is cut by the next removal.
            let _ = tombstones.set_len(whole);
            return Err(e);
        }
        // Unlike the file itself, a failed sync here loses no event: at worst a
        // removed entry comes back after a restart. So it is an error, not a stop.
        tombstones.sync_data()?;
        self.inner
            .removed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(&fresh);
        drop(tombstones);
        self.count(-(fresh.len() as i64), -body_bytes);
        Ok(fresh.len())
    }

    /// Live entries and their bodies' bytes, without reading the file.
    pub fn stats(&self) -> Stats {
        let live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        Stats {
            entries: live.entries.max(0) as u64,
            body_bytes: live.body_bytes.max(0) as u64,
        }
    }

    fn is_removed(&self, id: u64) -> bool {
        self.inner
            .removed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Counts what the file holds at `end`, at opening.
    fn count_live(&self, end: u64) -> io::Result<()> {
        let mut lines = Lines::new(File::open(&self.inner.path)?, 0, end)?;
        let mut skipped = Skipped::default();
        let (mut entries, mut body_bytes) = (0, 0);
        while let Some((id, line)) = lines.next_line()? {
            if let Some(p) = skipped.parse(id, line)
                && !self.is_removed(id)
            {
                entries += 1;
                body_bytes += p.entry.size as i64;
            }
        }
        skipped.warn(&self.inner.path, "counting them at start");
        self.count(entries, body_bytes);
        Ok(())
    }

    fn count(&self, entries: i64, body_bytes: i64) {
        let mut live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        live.entries += entries;
        live.body_bytes += body_bytes;
        crate::metrics::dead_letters_stored(live.entries.max(0) as u64);
    }
}

/// One line (without its `\n`) as the readers take it: for the fuzz harness, which
/// holds every event the edge accepts to coming back from its line identical.
pub(crate) fn parse_line(id: u64, line: &[u8]) -> Result<Full, String> {
    parse(id, line)?.full().map_err(String::from)
}

/// The well-formed line starting at `id` in `file` (of length `end`), removed or not.
fn parsed_at(file: &File, end: u64, id: u64) -> io::Result<Option<Parsed>> {
    if !starts_line(file, id, end)? {
        return Ok(None);
    }
    match Lines::new(file.try_clone()?, id, end)?.next_line()? {
        Some((_, Line::Whole(line))) => Ok(parse(id, line).ok()),
        _ => Ok(None),
    }
}

/// Where the tombstones of the file at `path` are kept.
fn removed_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".removed");
    PathBuf::from(name)
}

/// Lines one reading passed over, reported once for all of them.
#[derive(Default)]
struct Skipped {
    malformed: u64,
    too_long: u64,
    /// The first malformed line and what is wrong with it.
    first: Option<(u64, String)>,
}

impl Skipped {
    /// The line as an entry, or `None` (counted) if it is none.
    fn parse(&mut self, id: u64, line: Line<'_>) -> Option<Parsed> {
        match line {
            Line::TooLong => {
                self.too_long += 1;
                None
            }
            // What a write after a torn one starts with: not damage of its own.
            Line::Whole([]) => None,
            Line::Whole(bytes) => match parse(id, bytes) {
                Ok(p) => Some(p),
                Err(why) => {
                    self.malformed += 1;
                    self.first.get_or_insert((id, why));
                    None
                }
            },
        }
    }

    fn warn(&self, path: &Path, doing: &str) {
        if self.malformed == 0 && self.too_long == 0 {
            return;
        }
        let (first_id, why) = self.first.clone().unwrap_or_default();
        tracing::warn!(path = %path.display(), malformed = self.malformed,
            too_long = self.too_long, max_line_bytes = MAX_LINE_LEN, first_id, why = %why,
            "dead-letter lines skipped while {doing}: not entries hookrelay wrote");
    }
}
