//! Taking over a spool nothing will write to again: the single spool from before
//! each sink had a backlog of its own, or the backlog of a sink since removed from
//! the config. Its unconfirmed records are placed elsewhere (appended to the spools
//! they now belong in, or dead-lettered) and made durable there before the old
//! spool's cursor passes them, batch by batch: a crash half-way leaves the rest in
//! the old spool, to be placed at the next start (at most one batch again:
//! duplicates, never a loss), and a large backlog frees its segments as it goes.

use std::fs;
use std::io;
use std::path::Path;

use super::{ADOPTED_LABEL, AppendError, OpenError, Pending, Record, Spool, record::encode};

/// Records placed between two checkpoints of the old spool.
const BATCH: usize = 4096;
/// Segment size for the spool being adopted: it gets no appends.
const ADOPTED_SEGMENT_BYTES: u64 = 4096;

/// Where an adopted record goes.
pub enum Place {
    /// Appended to these spools.
    Into(Vec<Spool>),
    /// Dead-lettered, with this reason.
    DeadLetter(String),
}

/// Why an old spool could not be taken over; what was not placed stays in it.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("reading {0}: {1}")]
    Read(String, io::Error),
    #[error("placing a record: {0}")]
    Place(String),
    #[error("appending a record: {0}")]
    Append(#[from] AppendError),
    #[error("checkpointing {0}: {1}")]
    Checkpoint(String, io::Error),
}

/// Places every unconfirmed record of the spool at `dir`, in order: `place` says
/// where each goes; records to dead-letter are handed to `dead_letter` a batch at
/// a time (it makes them durable: one sync per batch). After each batch is
/// durable where it went, the old spool's cursor passes it. At the end the
/// spool's own files are deleted (segments kept for damage go to its quarantine,
/// which stays), and the directory if that left it empty. `each` sees every
/// record first, as at an ordinary opening. Returns how many records were placed.
pub async fn adopt(
    dir: &Path,
    each: impl FnMut(&Record),
    mut place: impl FnMut(&Record) -> Result<Place, String>,
    mut dead_letter: impl FnMut(Vec<(Record, String)>) -> Result<(), String>,
) -> Result<u64, AdoptError> {
    // Nothing is appended to it: the segments it prepares ahead (in a thread of
    // their own, see `prealloc`) are kept tiny, and `remove` deletes them.
    let (spool, mut reader, _) = Spool::open_labelled(
        dir,
        ADOPTED_LABEL,
        u64::MAX,
        ADOPTED_SEGMENT_BYTES,
        each,
        false,
    )?;
    let shown = dir.display().to_string();
    let mut placed = 0;
    loop {
        let end = spool.durable_end();
        if reader.position() >= end {
            break;
        }
        let batch = reader
            .read_batch_within(BATCH, 64 << 20)
            .map_err(|e| AdoptError::Read(shown.clone(), e))?;
        if batch.is_empty() {
            break;
        }
        let mut waiting: Vec<Pending> = Vec::new();
        let mut dead = Vec::new();
        for record in batch {
            placed += 1;
            match place(&record).map_err(AdoptError::Place)? {
                Place::Into(spools) => waiting.extend(append_record(&spools, record).await?),
                Place::DeadLetter(why) => dead.push((record, why)),
            }
        }
        if !dead.is_empty() {
            dead_letter(dead).map_err(AdoptError::Place)?;
        }
        for p in waiting {
            p.await?;
        }
        // Everything read so far is safe elsewhere: the old spool may forget it.
        let upto = reader.position();
        spool.confirm_until(upto);
        let s = spool.clone();
        tokio::task::spawn_blocking(move || s.checkpoint(upto))
            .await
            .map_err(|e| AdoptError::Checkpoint(shown.clone(), io::Error::other(e)))?
            .map_err(|e| AdoptError::Checkpoint(shown.clone(), e))?;
    }
    spool.shared.metrics.retire();
    // Segments kept whole for damage (their bytes could not be copied out) are
    // moved to the quarantine, never deleted.
    let kept: Vec<u64> = spool
        .shared
        .segments()
        .iter()
        .filter(|s| s.keep)
        .map(|s| s.base)
        .collect();
    drop((spool, reader));
    for base in kept {
        let path = super::segment_path(dir, base);
        super::recover::keep_whole(dir, &path)
            .map_err(|e| AdoptError::Checkpoint(shown.clone(), e))?;
    }
    let owned = dir.to_path_buf();
    let removed = tokio::task::spawn_blocking(move || remove(&owned))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    if let Err(e) = removed {
        // Everything in it was placed and its cursor says so: what is left is
        // at worst a file to delete by hand, not a reason to stop.
        tracing::warn!(dir = %shown, error = %e, "cannot remove the adopted spool's files");
    }
    Ok(placed)
}

/// Deletes what a spool keeps in `dir`, keeping a quarantine and anything unknown.
/// The spool's preparation thread may create a file after a pass (it outlives the
/// spool briefly), so passes repeat until one finds nothing, for at most 2 s.
fn remove(dir: &Path) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while remove_pass(dir)? > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    fs::File::open(dir)?.sync_all()?;
    if fs::read_dir(dir)?.next().is_none() {
        fs::remove_dir(dir)?;
    }
    Ok(())
}

/// One pass of [`remove`]: how many files it deleted.
fn remove_pass(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.ends_with(".seg")
            || name.ends_with(".prealloc")
            || matches!(name.as_ref(), "cursor" | "cursor.tmp" | "LOCK");
        if ours && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `dir` holds a spool's files (segments or a cursor) directly.
pub fn holds_spool(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            (name.ends_with(".seg") || name == "cursor") && e.file_type().is_ok_and(|t| t.is_file())
        })
    })
}

/// Frames `record` again for appending to `spools` (its sequence is theirs to give).
async fn append_record(spools: &[Spool], record: Record) -> Result<Vec<Pending>, AppendError> {
    let frame = encode(&record.event).map_err(AppendError::Unframable)?;
    super::hand_over_all(spools, frame, record.event).await
}
