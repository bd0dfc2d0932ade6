//! The archive's tests: segments kept past confirmation, scans by time, pruning.

use super::*;
use crate::event::EventBuilder;
use crate::spool::{Spool, holds_spool, segment_path};
use std::sync::atomic::Ordering;

const SEC: u64 = 1_000_000_000;

fn at(i: u64, received_at_ns: u64) -> crate::event::Accepted {
    EventBuilder::new(i)
        .id(format!("e{i}"))
        .received_at_ns(received_at_ns)
        .accepted()
}

fn scan_ids(a: &Archive, since: u64, until: u64) -> Vec<String> {
    let mut ids = Vec::new();
    a.scan(since, until, |r| {
        ids.push(r.event.id().to_string());
        ControlFlow::Continue(())
    })
    .unwrap();
    ids
}

/// Appends `n` events from `first`, stamped `t0 + i` seconds, confirms them all
/// and checkpoints.
async fn deliver(spool: &Spool, first: u64, n: u64, t0: u64) {
    for i in first..first + n {
        spool.append(at(i, t0 + i * SEC)).await.unwrap();
    }
    spool.confirm_until(spool.durable_end());
    let s = spool.clone();
    tokio::task::spawn_blocking(move || s.checkpoint(s.cursor()))
        .await
        .unwrap()
        .unwrap();
}

/// Sets a file's mtime (ns since the epoch).
fn touch(path: &Path, ns: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// With an archive, confirmed segments are moved into `archive/` (never recycled
/// into the live log), the spool goes on taking and delivering events, and
/// opening it again neither replays nor counts what was archived.
#[tokio::test]
async fn confirmed_segments_move_to_the_archive_instead_of_being_recycled() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("sink");
    let archives = Archives::new(root.path(), Duration::from_secs(3600), 1 << 30);
    let t0 = crate::event::now_ns() - 3600 * SEC;
    {
        let (spool, _reader, _) =
            Spool::open_with(&dir, 1 << 30, 4096, |_: &Record| {}, true).unwrap();
        spool.set_archive(Some(archives.clone()));
        for round in 0..10 {
            deliver(&spool, round * 50, 50, t0).await;
        }
        assert_eq!(spool.shared.recycled.load(Ordering::Relaxed), 0);
        let live: Vec<u64> = spool.shared.segments().iter().map(|s| s.base).collect();
        assert_eq!(live.len(), 1, "only the segment being written stays");
        let archive = archives.archive("sink");
        let segs = archive.segments().unwrap();
        assert!(segs.len() > 5, "{} archived", segs.len());
        for s in &segs {
            assert!(!segment_path(&dir, s.base).exists());
        }
        // Every confirmed record is there, in order, once.
        let ids = scan_ids(&archive, 0, u64::MAX);
        let want: Vec<String> = (0..live[0]).map(|i| format!("e{i}")).collect();
        assert_eq!(ids, want);
        assert_eq!(spool.bytes(), spool.shared.segments()[0].bytes);
        // Still taking events.
        deliver(&spool, 500, 50, t0).await;
    }
    let (spool, mut reader, rec) = Spool::open(&dir, 1 << 30, 4096, |_: &Record| {}).unwrap();
    assert_eq!(rec.pending, 0);
    assert!(reader.read_batch(100).unwrap().is_empty());
    assert_eq!(spool.bytes(), spool.shared.segments()[0].bytes);
    // Nothing looks into the archive for a spool: a directory holding only an
    // archive is no spool to adopt.
    drop((spool, reader));
    let only = root.path().join("gone");
    std::fs::create_dir_all(only.join(ARCHIVE_DIR)).unwrap();
    std::fs::rename(
        archives.archive("sink").segments().unwrap()[0].path.clone(),
        only.join(ARCHIVE_DIR).join("00000000000000000000.seg"),
    )
    .unwrap();
    assert!(!holds_spool(&only));
    assert!(holds_spool(&dir));
    let sinks: Vec<String> = archives
        .all()
        .unwrap()
        .iter()
        .map(|a| a.sink().to_string())
        .collect();
    assert_eq!(sinks, ["gone", "sink"]);
}

/// A scan hands over exactly the records of its window, in order, across
/// segments; segments wholly outside it are not read at all.
#[tokio::test]
async fn scan_returns_exactly_the_window() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let archives = Archives::new(root.path(), Duration::from_secs(3600), 1 << 30);
    let t0 = 1_000_000 * SEC;
    let (spool, _reader, _) = Spool::open_with(&dir, 1 << 30, 4096, |_: &Record| {}, true).unwrap();
    spool.set_archive(Some(archives.clone()));
    // Events a second apart, a 20-minute gap between the two halves.
    deliver(&spool, 0, 200, t0).await;
    deliver(&spool, 200, 200, t0 + 1200 * SEC).await;
    deliver(&spool, 400, 30, t0 + 1200 * SEC).await;
    let archive = archives.archive("s");
    let segs = archive.segments().unwrap();
    // mtimes as if written when their last records were received.
    for s in &segs {
        let mut last = 0;
        scan_segment_until(&s.path, s.base, s.base, u64::MAX, &mut |r| {
            last = r.event.received_at_ns();
            ControlFlow::Continue(())
        })
        .unwrap();
        touch(&s.path, last);
    }
    let stamp = |i: u64| {
        if i < 200 {
            t0 + i * SEC
        } else {
            t0 + (1200 + i) * SEC
        }
    };
    let archived = archive.segments().unwrap();
    let live = spool.shared.segments()[0].base;
    assert!(live > 300, "{live}");
    for (since, until) in [
        (10, 20),
        (0, 1),
        (150, 260),
        (199, 200),
        (live - 20, live),
        (0, live),
    ] {
        let got = scan_ids(&archive, stamp(since), stamp(until));
        let want: Vec<String> = (since..until).map(|i| format!("e{i}")).collect();
        assert_eq!(got, want, "[{since}, {until})");
    }
    // Stopping early.
    let mut got = Vec::new();
    archive
        .scan(stamp(5), u64::MAX, |r| {
            got.push(r.seq);
            if got.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(got, [5, 6, 7]);
    let stats = archive.stats().unwrap();
    assert_eq!(stats.oldest_ns, Some(t0));
    assert_eq!(stats.segments, archived.len() as u64);
    assert_eq!(stats.newest_ns, archived.last().map(|s| s.mtime_ns));

    // What is skipped is not read: an intruder (a record inside the window) in a
    // segment last written long before the window, and in segments after the first
    // record past the window, is never handed over.
    let intrude = |seg: &ArchivedSegment, received_at: u64| {
        let mtime = seg.mtime_ns;
        let mut f = crate::spool::encode(
            &EventBuilder::new(0)
                .id("intruder")
                .received_at_ns(received_at)
                .build(),
        )
        .unwrap()
        .to_vec();
        crate::spool::seal(&mut f, seg.base);
        std::fs::write(&seg.path, f).unwrap();
        touch(&seg.path, mtime);
    };
    let kept = std::fs::read(&archived[0].path).unwrap();
    intrude(&archived[0], stamp(301));
    assert_eq!(
        scan_ids(&archive, stamp(300), stamp(303)),
        ["e300", "e301", "e302"]
    );
    std::fs::write(&archived[0].path, kept).unwrap();
    touch(&archived[0].path, archived[0].mtime_ns);
    let second_half = archived
        .iter()
        .position(|s| s.mtime_ns >= stamp(200))
        .unwrap();
    for seg in &archived[second_half + 1..] {
        intrude(seg, stamp(11));
    }
    assert_eq!(scan_ids(&archive, stamp(10), stamp(12)), ["e10", "e11"]);
}

/// Archived segments hold bytes after their records (`END` and older records
/// of a recycled file, zeros): a scan stops where the records stop.
#[test]
fn a_scan_stops_where_the_records_stop() {
    let root = tempfile::tempdir().unwrap();
    let a = Archive::open(&root.path().join("s"));
    std::fs::create_dir_all(a.dir()).unwrap();
    let frame = |i: u64, seq: u64| {
        let mut f = crate::spool::encode(&at(i, (i + 1) * SEC))
            .unwrap()
            .to_vec();
        crate::spool::seal(&mut f, seq);
        f
    };
    // Segment 100: two records, END, then two records of the file's earlier use.
    let mut bytes = [frame(100, 100), frame(101, 101)].concat();
    bytes.extend_from_slice(&crate::spool::record::END);
    bytes.extend([frame(7, 7), frame(8, 8)].concat());
    std::fs::write(a.dir().join("00000000000000000100.seg"), &bytes).unwrap();
    // Segment 102: one record, then zeros.
    let mut bytes = frame(102, 102);
    bytes.extend(vec![0u8; 4096]);
    std::fs::write(a.dir().join("00000000000000000102.seg"), &bytes).unwrap();
    assert_eq!(scan_ids(&a, 0, u64::MAX), ["e100", "e101", "e102"]);
}

/// Pruning goes over every sink's archive together: first what is past the
/// retention, then the oldest until the total fits; the gauges follow.
#[test]
fn prune_drops_past_retention_then_oldest_over_budget() {
    let root = tempfile::tempdir().unwrap();
    let archives = Archives::new(root.path(), Duration::from_secs(3600), 3000);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let now_ns = 1_000_000 * SEC;
    // (sink, base, age in minutes): 1000 bytes each.
    let segs = [
        ("a", 0, 90),
        ("b", 0, 70),
        ("a", 10, 50),
        ("b", 10, 40),
        ("a", 20, 30),
        ("b", 20, 20),
        ("a", 30, 10),
    ];
    for (sink, base, age) in segs {
        let dir = root.path().join(sink).join(ARCHIVE_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{base:020}.seg"));
        std::fs::write(&path, vec![1u8; 1000]).unwrap();
        touch(&path, now_ns - age * 60 * SEC);
    }
    // Not archived segments: left alone.
    std::fs::write(
        root.path().join("a").join(ARCHIVE_DIR).join("notes.txt"),
        "x",
    )
    .unwrap();
    let left = |sink: &str| -> Vec<u64> {
        archives
            .archive(sink)
            .segments()
            .unwrap()
            .iter()
            .map(|s| s.base)
            .collect()
    };
    // Budget aside (large): only the two past the hour go.
    let p = prune_all(
        &archives.all().unwrap(),
        Duration::from_secs(3600),
        1 << 30,
        now,
    )
    .unwrap();
    assert_eq!(
        p,
        Pruned {
            segments: 2,
            bytes: 2000
        }
    );
    assert_eq!((left("a"), left("b")), (vec![10, 20, 30], vec![10, 20]));
    // Within 3000 bytes: the oldest go, whichever sink they belong to.
    let p = archives.prune(now).unwrap();
    assert_eq!(
        p,
        Pruned {
            segments: 2,
            bytes: 2000
        }
    );
    assert_eq!((left("a"), left("b")), (vec![20, 30], vec![20]));
    let stats = archives.stats().unwrap();
    assert_eq!(
        stats
            .iter()
            .map(|s| (s.sink.as_str(), s.bytes, s.segments))
            .collect::<Vec<_>>(),
        [("a", 2000, 2), ("b", 1000, 1)]
    );
    assert!(
        root.path()
            .join("a")
            .join(ARCHIVE_DIR)
            .join("notes.txt")
            .exists()
    );
    // Nothing to do.
    assert_eq!(archives.prune(now).unwrap(), Pruned::default());
}

/// A spool started over (sequences from 0 again) never overwrites an archived
/// segment of the same name; both are kept and listed.
#[test]
fn a_reused_name_does_not_overwrite_an_archived_segment() {
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("s");
    std::fs::create_dir_all(&spool).unwrap();
    for body in ["first", "second"] {
        let seg = segment_path(&spool, 0);
        std::fs::write(&seg, body).unwrap();
        move_in(&spool, &seg).unwrap();
    }
    let segs = Archive::open(&spool).segments().unwrap();
    assert_eq!(segs.len(), 2);
    assert!(segs.iter().all(|s| s.base == 0));
    let mut bodies: Vec<String> = segs
        .iter()
        .map(|s| std::fs::read_to_string(&s.path).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["first", "second"]);
}
