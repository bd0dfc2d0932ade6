//! Taking over a spool nothing will write to again: the single spool from before
//! each sink had a backlog of its own, or the backlog of a sink since removed from
//! the config. Its unconfirmed records are placed elsewhere (appended to the spools
//! they now belong in, or dead-lettered) and made durable there before its files
//! are deleted: a crash half-way leaves them in the old spool, to be placed again
//! at the next start (duplicates, never a loss).

use std::fs;
use std::io;
use std::path::Path;

use super::{AppendError, OpenError, Pending, Record, Spool, record::encode};

/// Why an old spool could not be taken over; it is left as it was.
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
    #[error("removing the emptied spool {0}: {1}")]
    Remove(String, io::Error),
}

/// Places every unconfirmed record of the spool at `dir`, in order: `place` names
/// the spools it now belongs in, or makes it safe itself (dead-letters it) and
/// names none. Waits until each append is durable, then deletes the spool's segments,
/// cursor and lock (a `quarantine/` stays: damaged bytes are never deleted) and
/// the directory if that left it empty. `each` sees every record first, as at an
/// ordinary opening. Returns how many records were placed.
pub async fn adopt(
    dir: &Path,
    segment_bytes: u64,
    each: impl FnMut(&Record),
    mut place: impl FnMut(&Record) -> Result<Vec<Spool>, String>,
) -> Result<u64, AdoptError> {
    let (spool, mut reader, _) = Spool::open(dir, u64::MAX, segment_bytes, each)?;
    let mut placed = 0;
    let mut waiting = Vec::new();
    while reader.position() < spool.durable_end() {
        let batch = reader
            .read_batch_within(1024, 64 << 20)
            .map_err(|e| AdoptError::Read(dir.display().to_string(), e))?;
        if batch.is_empty() {
            break;
        }
        for record in batch {
            placed += 1;
            let into = place(&record).map_err(AdoptError::Place)?;
            waiting.extend(append_record(&into, record).await?);
            // Bounded: the writers' queues hold what is not yet synced.
            if waiting.len() >= 4096 {
                for p in waiting.drain(..) {
                    p.await?;
                }
            }
        }
    }
    for p in waiting {
        p.await?;
    }
    spool.shared.metrics.retire();
    drop((spool, reader));
    remove(dir).map_err(|e| AdoptError::Remove(dir.display().to_string(), e))?;
    Ok(placed)
}

/// Deletes what a spool keeps in `dir`, keeping a quarantine and anything unknown.
fn remove(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.ends_with(".seg")
            || name.ends_with(".prealloc")
            || matches!(name.as_ref(), "cursor" | "cursor.tmp" | "LOCK");
        if ours && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        }
    }
    fs::File::open(dir)?.sync_all()?;
    if fs::read_dir(dir)?.next().is_none() {
        fs::remove_dir(dir)?;
    }
    Ok(())
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
    let Some((last, rest)) = spools.split_last() else {
        return Ok(Vec::new());
    };
    let mut pending = Vec::with_capacity(spools.len());
    for spool in rest {
        pending.push(spool.hand_over(frame.clone(), record.event.clone()).await?);
    }
    pending.push(last.hand_over(frame, record.event).await?);
    Ok(pending)
}
