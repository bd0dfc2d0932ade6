//! The spool's own tests: appends, reads from memory and disk, recovery, recycling.

use super::*;
use std::fs::{self, OpenOptions};
use std::time::Instant;

fn event(i: u64) -> Accepted {
    crate::event::EventBuilder::new(i).accepted()
}

fn dedup() -> crate::dedup::MemoryWindow {
    crate::dedup::MemoryWindow::new(Duration::from_secs(3600), 100_000)
}

async fn append_n(spool: &Spool, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in range {
        seqs.push(spool.append(event(i)).await.unwrap());
    }
    seqs
}

fn read_all(reader: &mut Reader) -> Vec<Record> {
    let mut all = Vec::new();
    loop {
        let b = reader.read_batch(100).unwrap();
        if b.is_empty() {
            return all;
        }
        all.extend(b);
    }
}

#[tokio::test]
async fn append_read_confirm_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, mut reader, rec) =
            Spool::open(dir.path(), 1 << 20, 4096, |_: &Record| {}).unwrap();
        assert_eq!(rec, Recovery::default());
        assert_eq!(append_n(&spool, 0..100).await, (0..100).collect::<Vec<_>>());
        let got = read_all(&mut reader);
        assert_eq!(got.len(), 100);
        assert_eq!(got[42].event.id(), "message.read:42");
        assert!(
            spool.shared.segments().len() > 1,
            "4 KiB segments must roll"
        );
        spool.confirm_until(60);
        spool.checkpoint(spool.cursor()).unwrap();
        assert!(spool.shared.segments()[0].base <= 60);
    }
    let d = dedup();
    let (spool, mut reader, rec) = Spool::open(dir.path(), 1 << 20, 4096, |r: &Record| {
        d.remember(d.key(r.event.source(), r.event.id()), Duration::ZERO)
    })
    .unwrap();
    assert_eq!(rec.pending, 40);
    let got = read_all(&mut reader);
    assert_eq!(got.first().map(|r| r.seq), Some(60));
    assert_eq!(got.len(), 40);
    assert_eq!(got[0].event.id(), "message.read:60");
    // Ids still in the spool are remembered.
    assert_eq!(
        d.check(d.key("q", "message.read:99")),
        crate::dedup::Seen::Duplicate
    );
    assert_eq!(append_n(&spool, 100..101).await, vec![100]);
}

/// Records taken from memory and read from disk join up exactly, across
/// segment rolls and whenever the memory bound leaves a gap.
#[tokio::test]
async fn memory_and_disk_reads_join_up() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader, _) = Spool::open(dir.path(), 1 << 20, 1024, |_: &Record| {}).unwrap();
    append_n(&spool, 0..10).await;
    let first = reader.take_synced(4, usize::MAX);
    assert_eq!(
        first.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(first[3].event.id(), "message.read:3");
    // The rest of the first batch, now from disk, from where memory left off.
    let rest = reader.read_batch(100).unwrap();
    assert_eq!(
        rest.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (4..10).collect::<Vec<_>>()
    );
    assert_eq!(rest[0].event.id(), "message.read:4");

    // Room for ~3 records: most come from disk, the newest from memory.
    spool.shared.tail().max_bytes = 300;
    let mut seen = Vec::new();
    let (mut from_memory, mut from_disk) = (0, 0);
    for round in 0..20u64 {
        append_n(&spool, 10 + round * 7..10 + (round + 1) * 7).await;
        loop {
            let mut got = reader.take_synced(5, usize::MAX);
            if got.is_empty() {
                got = reader.read_batch(5).unwrap();
                from_disk += got.len();
            } else {
                from_memory += got.len();
            }
            if got.is_empty() {
                break;
            }
            seen.extend(got.into_iter().map(|r| (r.seq, r.event.id().to_string())));
        }
    }
    let want: Vec<(u64, String)> = (10..150)
        .map(|i| (i, format!("message.read:{i}")))
        .collect();
    assert_eq!(seen, want);
    assert!(
        from_memory > 0 && from_disk > 0,
        "{from_memory} / {from_disk}"
    );
    assert!(spool.shared.segments().len() > 2, "1 KiB segments roll");
}

/// Offsets of every record in a segment file, from its frame lengths.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push(at);
        at += 8 + len;
    }
    out
}

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.event.id().to_string()).collect()
}

fn quarantined(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = fs::read_dir(dir.join(QUARANTINE_DIR))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A record of a version newer than this binary reads (a downgrade onto a spool a
/// later release wrote): the spool refuses to open with a message saying so, and
/// nothing is quarantined, truncated or changed on disk.
#[tokio::test]
async fn a_record_of_a_newer_version_refuses_the_spool_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _r, _) =
            Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
        append_n(&spool, 0..20).await;
    }
    let first = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&first).unwrap();
    let offsets = frame_offsets(&bytes);
    // The third record as a later version would frame it: same outline, the CRC
    // over the whole payload.
    let (at, next) = (offsets[2], offsets[3]);
    bytes[at + record::HEADER_LEN] = record::VERSION + 1;
    let crc = crc32c::crc32c(&bytes[at + record::HEADER_LEN..next]);
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    fs::write(&first, &bytes).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| (e.path(), fs::read(e.path()).unwrap()))
        .collect();

    let err = match Spool::open(dir.path(), 1 << 30, 1024, |_: &Record| {}) {
        Ok(_) => panic!("opened a spool holding a record of a newer version"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("version {}", record::VERSION + 1)),
        "{err}"
    );
    assert!(err.contains("newer hookrelay"), "{err}");
    assert!(quarantined(dir.path()).is_empty());
    for (path, was) in before {
        assert_eq!(fs::read(&path).unwrap(), was, "{} changed", path.display());
    }
}

/// A record that fails its CRC inside a sealed segment, with acknowledged records
/// after it there and in later segments: its bytes go to quarantine, and every
/// record after it is delivered (before, the rest of the segment was skipped).
#[tokio::test]
async fn damage_in_a_sealed_segment_is_quarantined_and_skipped_past() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _r, _) =
            Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
        append_n(&spool, 0..40).await;
        assert!(spool.shared.segments().len() >= 3);
    }
    let first = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&first).unwrap();
    let offsets = frame_offsets(&bytes);
    assert!(offsets.len() >= 4, "{offsets:?}");
    // Flip a body byte of the third record, and garble the length of the fourth
    // (its true end is then unknown: only a scan finds the fifth).
    bytes[offsets[2] + 30] ^= 0x40;
    bytes[offsets[3]] ^= 0x77;
    fs::write(&first, &bytes).unwrap();

    let (_spool, mut reader, rec) =
        Spool::open(dir.path(), 1 << 30, 1024, |_: &Record| {}).unwrap();
    assert_eq!(rec.lost_records, 2);
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.quarantined_bytes, (offsets[4] - offsets[2]) as u64);
    let got = read_all(&mut reader);
    let want: Vec<String> = (0..40)
        .filter(|i| *i != 2 && *i != 3)
        .map(|i| format!("message.read:{i}"))
        .collect();
    assert_eq!(ids(&got), want);
    let q = quarantined(dir.path());
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].1, (offsets[4] - offsets[2]) as u64);
    assert_eq!(
        fs::read(dir.path().join(QUARANTINE_DIR).join(&q[0].0)).unwrap(),
        bytes[offsets[2]..offsets[4]]
    );
}

/// The frame of the old framing bug: its length counts more bytes than it holds,
/// so it swallows the start of the next records. In the last segment, before any
/// checkpoint: the records after it were acknowledged and must still be delivered.
#[tokio::test]
async fn a_frame_longer_than_its_bytes_does_not_take_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _r, _) = Spool::open(dir.path(), 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
        append_n(&spool, 0..20).await;
    }
    let seg = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&seg).unwrap();
    let offsets = frame_offsets(&bytes);
    let at = offsets[5];
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    bytes[at..at + 4].copy_from_slice(&(len + 300).to_le_bytes());
    fs::write(&seg, &bytes).unwrap();

    let (spool, mut reader, rec) =
        Spool::open(dir.path(), 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
    assert_eq!(rec.lost_records, 1);
    let got = read_all(&mut reader);
    let want: Vec<String> = (0..20)
        .filter(|i| *i != 5)
        .map(|i| format!("message.read:{i}"))
        .collect();
    assert_eq!(ids(&got), want);
    // The damaged segment is left as it is; appends go to a new one.
    assert_eq!(append_n(&spool, 20..21).await, vec![20]);
    assert_eq!(spool.shared.segments().len(), 2);
    assert_eq!(ids(&read_all(&mut reader)), vec!["message.read:20"]);
}

/// Bad bytes with nothing intact after them, in the last segment: a torn write if
/// they lie past what the last checkpoint recorded as synced (cut, as before), but
/// damage to acknowledged records if not (kept in quarantine, never cut).
#[tokio::test]
async fn only_a_tail_past_the_synced_end_is_cut() {
    for checkpointed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _r, _) =
                Spool::open(dir.path(), 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
            append_n(&spool, 0..10).await;
            if checkpointed {
                // Nothing confirmed, but all ten recorded as synced.
                spool.checkpoint(0).unwrap();
            }
        }
        let seg = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&seg).unwrap();
        let offsets = frame_offsets(&bytes);
        bytes[offsets[8] + 20] ^= 1;
        bytes[offsets[9] + 20] ^= 1;
        fs::write(&seg, &bytes).unwrap();
        let (spool, mut reader, rec) =
            Spool::open(dir.path(), 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
        assert_eq!(ids(&read_all(&mut reader)).len(), 8);
        if checkpointed {
            assert_eq!(rec.truncated_bytes, 0);
            assert_eq!(rec.lost_records, 2);
            assert_eq!(quarantined(dir.path()).len(), 1);
            // Sequences are never given twice.
            assert_eq!(append_n(&spool, 10..11).await, vec![10]);
        } else {
            assert!(rec.truncated_bytes > 0);
            assert_eq!(rec.lost_records, 0);
            assert!(quarantined(dir.path()).is_empty());
            assert_eq!(append_n(&spool, 10..11).await, vec![8]);
        }
    }
}

/// Damage the reader meets after opening (in a record synced and not read yet):
/// quarantined, and reading goes on with the records after it.
#[tokio::test]
async fn the_reader_skips_past_damage_it_finds() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader, _) =
        Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
    append_n(&spool, 0..30).await;
    let seg = segment_path(dir.path(), 0);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    let bytes = fs::read(&seg).unwrap();
    let offsets = frame_offsets(&bytes);
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xEE; 3], offsets[1] as u64 + 12).unwrap();
    drop(f);
    // From disk, not from the writer's memory.
    *reader.shared.tail() = Tail::new(TAIL_MAX_BYTES);
    let got = read_all(&mut reader);
    let want: Vec<String> = (0..30)
        .filter(|i| *i != 1)
        .map(|i| format!("message.read:{i}"))
        .collect();
    assert_eq!(ids(&got), want);
    assert_eq!(quarantined(dir.path()).len(), 1);

    // In the segment being written, up to its synced end: reading resumes with
    // the next records appended after the bad bytes.
    let last = spool.shared.segments().last().unwrap().base;
    append_n(&spool, 30..33).await;
    let seg = segment_path(dir.path(), last);
    let bytes = fs::read(&seg).unwrap();
    let offsets = frame_offsets(&bytes);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    let n = offsets.len();
    for &o in &offsets[n - 3..] {
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xEE; 3], o as u64 + 12).unwrap();
    }
    drop(f);
    *reader.shared.tail() = Tail::new(TAIL_MAX_BYTES);
    assert!(read_all(&mut reader).is_empty());
    assert_eq!(reader.position(), 33);
    append_n(&spool, 33..35).await;
    *reader.shared.tail() = Tail::new(TAIL_MAX_BYTES);
    assert_eq!(
        ids(&read_all(&mut reader)),
        vec!["message.read:33", "message.read:34"]
    );
}

/// A torn record at the tail of either kind of segment file is cut: a plain file
/// (the records, then its end) is truncated after the last good record; a
/// zero-filled one (the records, then preallocated zeros) has the torn bytes zeroed
/// and keeps its length. Which kind the writer starts with depends on whether a
/// zero-filled file is ready at the first append, so each is made on purpose.
#[tokio::test]
async fn torn_tail_is_truncated_and_counted() {
    for zero_filled in [false, true] {
        torn_tail_is_truncated_and_counted_in(zero_filled).await;
    }
}

async fn torn_tail_is_truncated_and_counted_in(zero_filled: bool) {
    const SEGMENT_BYTES: u64 = 1 << 16;
    let kind = if zero_filled { "zero-filled" } else { "plain" };
    let dir = tempfile::tempdir().unwrap();
    let seg = segment_path(dir.path(), 0);
    let good;
    {
        // The first append waits for the zero-filled file being prepared. A segment
        // size no filesystem has twice free makes that preparation fail at once
        // instead, and the writer keeps the plain file.
        let segment_bytes = if zero_filled {
            SEGMENT_BYTES
        } else {
            u64::MAX / 2
        };
        let (spool, _r, _) =
            Spool::open_with(dir.path(), 1 << 20, segment_bytes, |_: &Record| {}, true).unwrap();
        append_n(&spool, 0..10).await;
        good = spool.shared.segments()[0].bytes;
    }
    let len = fs::metadata(&seg).unwrap().len();
    if zero_filled {
        assert_eq!(len, SEGMENT_BYTES, "{kind}: not zero-filled ahead");
    } else {
        assert_eq!(len, good, "{kind}: not a plain file");
    }
    // Half a record where the next write would have gone.
    let mut partial = encode(&event(10)).unwrap().to_vec();
    seal(&mut partial, 10);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &partial[..partial.len() / 2], good).unwrap();
    drop(f);
    let (spool, mut reader, rec) =
        Spool::open(dir.path(), 1 << 20, SEGMENT_BYTES, |_: &Record| {}).unwrap();
    assert_eq!(rec.truncated_bytes, (partial.len() / 2) as u64, "{kind}");
    assert_eq!(rec.pending, 10, "{kind}");
    let bytes = fs::read(&seg).unwrap();
    // Truncated (plain), or zeroed keeping the preallocated space (zero-filled).
    assert_eq!(bytes.len() as u64, len, "{kind}");
    assert!(
        bytes[good as usize..].iter().all(|&b| b == 0),
        "{kind}: the torn bytes are gone"
    );
    assert_eq!(append_n(&spool, 10..11).await, vec![10], "{kind}");
    let got = read_all(&mut reader);
    assert_eq!(got.len(), 11, "{kind}");
    assert_eq!(got[10].event.id(), "message.read:10", "{kind}");
}

/// Confirmed segments become later ones; their old records never read as new.
#[tokio::test]
async fn confirmed_segments_are_recycled_without_replaying_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Spool::open(dir.path(), 1 << 30, 4096, |_: &Record| {}).unwrap();
    let (spool, mut reader, _) = open();
    let mut next = 0;
    // Until the segment being written is a recycled one with, after its records,
    // some confirmed and some not, the old records of its earlier use.
    loop {
        assert!(next < 20_000, "no segment was recycled");
        append_n(&spool, next..next + 10).await;
        let got = read_all(&mut reader);
        assert_eq!(got.len(), 10);
        spool.confirm_until(got[4].seq + 1);
        spool.checkpoint(spool.cursor()).unwrap();
        append_n(&spool, next + 10..next + 13).await;
        let last = *spool.shared.segments().last().unwrap();
        let active = fs::read(segment_path(dir.path(), last.base)).unwrap();
        let end = last.bytes as usize;
        if spool.shared.recycled.load(Ordering::Relaxed) >= 2
            && active[end..end + 8] == record::END
            && active.len() > end + 64
        {
            break;
        }
        let got = read_all(&mut reader);
        spool.confirm_until(got.last().unwrap().seq + 1);
        spool.checkpoint(spool.cursor()).unwrap();
        next += 13;
        // Give the preparing thread time to finish before the next roll.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop((spool, reader));
    for _ in 0..2 {
        let (spool, mut reader, rec) = open();
        assert_eq!(
            rec,
            Recovery {
                pending: 8,
                ..Recovery::default()
            }
        );
        let ids: Vec<String> = read_all(&mut reader)
            .into_iter()
            .map(|r| r.event.id().to_string())
            .collect();
        let want: Vec<String> = (next + 5..next + 13)
            .map(|i| format!("message.read:{i}"))
            .collect();
        assert_eq!(ids, want);
        drop((spool, reader));
    }
    // An old record straight after the new ones, with no `END` between (as if a
    // crash kept the page of an old record but lost the one holding the marker):
    // sealed for an earlier sequence, it reads as the end, not as the next record.
    let (spool, _r, _) = open();
    let last = *spool.shared.segments().last().unwrap();
    drop((spool, _r));
    let mut old = encode(&event(3)).unwrap().to_vec();
    seal(&mut old, 3);
    let f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), last.base))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &old, last.bytes).unwrap();
    drop(f);
    let (_spool, mut reader, rec) = open();
    assert_eq!(rec.pending, 8);
    let ids: Vec<String> = read_all(&mut reader)
        .into_iter()
        .map(|r| r.event.id().to_string())
        .collect();
    assert_eq!(ids.len(), 8);
    assert!(!ids.contains(&"message.read:3".to_string()));
}

/// The forwarder took a segment's last records from memory, they were confirmed,
/// the checkpoint freed the segment, and then it fell behind the writer's memory:
/// the disk read must start at the next segment, not fail on the freed one's name.
#[tokio::test]
async fn reading_from_disk_resumes_past_a_segment_freed_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader, _) =
        Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
    append_n(&spool, 0..60).await;
    let bases: Vec<u64> = spool.shared.segments().iter().map(|s| s.base).collect();
    assert!(bases.len() >= 4, "{bases:?}");
    // Up to the end of the second segment, one record at a time from memory.
    while reader.position() < bases[2] {
        assert_eq!(reader.take_synced(1, usize::MAX).len(), 1);
    }
    assert_eq!(reader.resume_at.map(|(s, _)| s), Some(bases[1]));
    spool.confirm_until(reader.position());
    assert_eq!(spool.checkpoint(spool.cursor()).unwrap(), bases[2]);
    assert!(!reader.listed(bases[1]), "the second segment is freed");
    // More than the writer keeps in memory arrived meanwhile.
    *reader.shared.tail() = Tail::new(TAIL_MAX_BYTES);
    let seqs: Vec<u64> = read_all(&mut reader).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (bases[2]..60).collect::<Vec<_>>());
}

/// The reader stopped on a segment's last record; the segment was freed, kept for
/// reuse and written again with newer records while the reader still had it open
/// (at its old offset now lie other records, or their `END`): reading on finds the
/// next segment and every record once.
#[tokio::test]
async fn a_reader_at_the_end_of_a_segment_reused_under_it_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader, _) =
        Spool::open_with(dir.path(), 1 << 30, 1024, |_: &Record| {}, true).unwrap();
    append_n(&spool, 0..30).await;
    let bases: Vec<u64> = spool.shared.segments().iter().map(|s| s.base).collect();
    assert!(bases.len() >= 3, "{bases:?}");
    let first = reader.read_batch(bases[1] as usize).unwrap();
    assert_eq!(first.len() as u64, bases[1]);
    assert_eq!(reader.segment_base, bases[0]);
    spool.confirm_until(bases[1]);
    spool.checkpoint(bases[1]).unwrap();
    // Roll until the kept file is in use again and full of newer records.
    let mut next = 30;
    let mut reused = None;
    loop {
        assert!(next < 300, "the kept segment was not reused");
        append_n(&spool, next..next + 1).await;
        next += 1;
        let last = spool.shared.segments().last().unwrap().base;
        match reused {
            None if spool.shared.recycled.load(Ordering::Relaxed) == 1 => reused = Some(last),
            Some(base) if last != base => break,
            _ => {}
        }
    }
    let seqs: Vec<u64> = read_all(&mut reader).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (bases[1]..next).collect::<Vec<_>>());
}

/// Concurrent appenders share paced syncs: rounds of 40 take the interval each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_paced_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _r, _) = Spool::open(dir.path(), 1 << 24, 1 << 20, |_: &Record| {}).unwrap();
    spool.pace_syncs(Duration::from_millis(50));
    let started = Instant::now();
    let tasks: Vec<_> = (0..40u64)
        .map(|c| {
            let spool = spool.clone();
            tokio::spawn(async move { append_n(&spool, c * 5..c * 5 + 5).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().len(), 5);
    }
    // Five appends per task, one group per round: at least 4 paced waits.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert!(
        spool.syncs() <= 12,
        "{} syncs for 200 appends",
        spool.syncs()
    );
}

/// A lone sender is not held back by the pacing: it would gain nothing.
#[tokio::test]
async fn a_lone_sender_never_waits_for_the_pacing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _r, _) = Spool::open(dir.path(), 1 << 24, 1 << 20, |_: &Record| {}).unwrap();
    spool.pace_syncs(Duration::from_millis(300));
    let started = Instant::now();
    append_n(&spool, 0..10).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn full_spool_refuses_then_frees() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader, _) = Spool::open(dir.path(), 16384, 4096, |_: &Record| {}).unwrap();
    let mut accepted = 0;
    let mut i = 0;
    loop {
        match spool.append(event(i)).await {
            Ok(_) => accepted += 1,
            Err(AppendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        i += 1;
    }
    assert!(accepted > 50, "{accepted}");
    assert!(!spool.has_room() || spool.bytes() > 16384 - 200);
    let got = read_all(&mut reader);
    spool.confirm_until(got.last().unwrap().seq + 1);
    spool.checkpoint(spool.cursor()).unwrap();
    assert!(spool.bytes() < 8192, "{}", spool.bytes());
    spool.append(event(i)).await.unwrap();
}

#[test]
fn a_second_process_cannot_open_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let _a = Spool::open(dir.path(), 1 << 20, 4096, |_: &Record| {}).unwrap();
    assert!(matches!(
        Spool::open(dir.path(), 1 << 20, 4096, |_: &Record| {}),
        Err(OpenError::Locked(_))
    ));
}

/// Adoption moves the old spool's cursor after each batch is safe elsewhere: a
/// failure half-way (here the dead-letter step) leaves only the rest to place at
/// the next attempt, not everything again.
#[tokio::test]
async fn adoption_resumes_where_a_failure_left_it() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    {
        let (spool, _r, _) = Spool::open(&old, 1 << 30, 1 << 20, |_: &Record| {}).unwrap();
        for i in 0..5000 {
            spool.append(event(i)).await.unwrap();
        }
    }
    let mut batches = 0;
    let failing = adopt::adopt(
        &old,
        |_: &Record| {},
        |_: &Record| Ok(Place::DeadLetter("gone".into())),
        |batch: Vec<(Record, String)>| {
            batches += 1;
            assert!(batch.len() <= 4096);
            if batches == 2 {
                Err("disk trouble".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert!(failing.is_err());
    let mut placed = Vec::new();
    let n = adopt::adopt(
        &old,
        |_: &Record| {},
        |r: &Record| {
            placed.push(r.seq);
            Ok(Place::DeadLetter("gone".into()))
        },
        |_: Vec<(Record, String)>| Ok(()),
    )
    .await
    .unwrap();
    assert_eq!(n, 5000 - 4096, "only what the failed batch left");
    assert_eq!(placed.first(), Some(&4096));
    assert!(
        !adopt::holds_spool(&old),
        "the emptied spool's files are gone"
    );
}
