//! The delivery contract under crashes, a full spool and shutdown: every event
//! that got a 200 reaches the sink (duplicates allowed, losses not).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use hyper::StatusCode;

const LAG: &str = "hookrelay_forward_lag_seconds{sink=\"file\"}";

/// Sends distinct events from 32 connections, SIGKILLs hookrelay after `kill_after`
/// acks, and returns the acked ids.
async fn load_and_kill(
    relay: &mut Relay,
    total: usize,
    kill_after: usize,
    tag: &'static str,
) -> HashSet<String> {
    let conns = 32;
    let load = send_concurrently(
        relay.addr,
        Load::each(conns, total / conns),
        distinct_events(tag),
    );
    load.wait_acked(kill_after, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| {
            panic!(
                "only {} of {kill_after} events acked before the kill\n{}",
                load.acked(),
                relay.logs()
            )
        });
    relay.kill();
    load.stop();
    // The server died or closed connections: what was not answered 200 may or may
    // not be kept; only 200s are promises.
    let sent = load.finish().await;
    sent.assert_no_refusals(&relay.logs());
    sent.acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let acked = load_and_kill(&mut relay, 2400, 1000, "crash").await;
    assert!(acked.len() >= 1000, "{}", acked.len());

    relay.restart();
    let events = relay.wait_for_ids(&acked, Duration::from_secs(60));
    let unique: HashSet<String> = events.iter().map(event_id).collect();
    eprintln!(
        "acked {} / sent 2400; in sink: {} lines, {} unique, {} duplicates",
        acked.len(),
        events.len(),
        unique.len(),
        events.len() - unique.len()
    );
    // Accepted-but-unanswered events may also be there; nothing else may.
    assert!(unique.iter().all(|id| id.contains(":crash-")));
    // The restarted process remembers what its spool holds.
    let mut c = relay.connect().await;
    let any = acked.iter().next().unwrap().clone();
    let (event, mid) = any.split_once(':').unwrap();
    assert_eq!(
        c.post_signed(&event_body(event, mid)).await.json()["status"],
        "duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_spool_tail_is_truncated_and_nothing_acked_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let acked = load_and_kill(&mut relay, 2400, 1000, "torn").await;

    // A crash mid-append leaves half a record (and garbage) at the tail.
    let spool = dir.path().join("spool").join("file");
    let mut segs: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    // Where the next write would have gone: after the last record (frames are
    // `len u32 | crc u32 | payload`), before any zero-filled preallocated space.
    let bytes = std::fs::read(last).unwrap();
    let mut end = 0;
    while end + 8 <= bytes.len() && bytes[end..end + 4] != [0; 4] {
        end += 8 + u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
    }
    {
        let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
        // A plausible length header followed by too few bytes, as a torn write leaves.
        let torn = [200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7];
        std::os::unix::fs::FileExt::write_all_at(&f, &torn, end as u64).unwrap();
    }

    relay.restart();
    relay.wait_for_ids(&acked, Duration::from_secs(60));
    // The torn bytes are gone (truncated, or zeroed inside preallocated space).
    let after = std::fs::read(last).unwrap_or_default();
    assert!(after.iter().skip(end).all(|&b| b == 0));
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_spool_truncated_bytes_total{sink=\"file\"}"),
        11.0
    );
    assert!(relay.logs().contains("truncating"), "{}", relay.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(
        dir.path(),
        "",
        "max_bytes = 65536\nsegment_bytes = 16384",
        "",
    );
    let relay = Relay::start_with(dir.path(), &config);

    // Block the sink: a directory where its topic file must go makes every write fail
    // (retriable), so the spool fills up behind it.
    let blocker = dir.path().join("events/quickassist.message.read.jsonl");
    std::fs::create_dir_all(&blocker).unwrap();

    let mut c = relay.connect().await;
    let mut acked = HashSet::new();
    let mut full = None;
    for i in 0..2000 {
        let r = c
            .post_signed(&event_body("message.read", &format!("full-{i}")))
            .await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            full = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        acked.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    let full = full.expect("the spool never filled");
    assert!(
        full.headers.contains_key("retry-after"),
        "{:?}",
        full.headers
    );
    assert!(acked.len() > 50, "{}", acked.len());
    let mut admin = Client::connect(relay.admin).await;
    assert_eq!(
        admin.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let m = relay.metrics().await;
    assert!(
        metric(
            &m,
            "hookrelay_sink_errors_total{sink=\"file\",kind=\"retriable\"}"
        ) > 0.0
    );
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_requests_total{source=\"quickassist\",status=\"503\"}"
        ),
        1.0
    );
    // The lag gauge is the age of the oldest undelivered event: with the sink held
    // back it grows (`metric` panics on a missing series: it is there).
    let lag = eventually(Duration::from_secs(10), || async {
        let lag = metric(&relay.metrics().await, LAG);
        (lag >= 1.0).then_some(lag)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{LAG} never reached 1 s with the sink held back\n{}",
            relay.logs()
        )
    });

    // The refused event was not remembered: its retry is accepted once there is room.
    std::fs::remove_dir(&blocker).unwrap();
    relay.wait_for_ids(&acked, Duration::from_secs(60));
    let retry_body = event_body("message.read", &format!("full-{}", acked.len()));
    let retried = eventually(Duration::from_secs(20), || async {
        let (status, json) = relay.post(&retry_body).await;
        (status == StatusCode::OK).then_some(json)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "never accepted again after the sink recovered\n{}",
            relay.logs()
        )
    });
    assert_eq!(retried["status"], "accepted");
    assert_eq!(admin.get("/readyz").await.status, StatusCode::OK);
    // Drained, the lag falls back.
    eventually(Duration::from_secs(10), || async {
        (metric(&relay.metrics().await, LAG) < 1.0).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{LAG} never fell below 1 s (from {lag} s) after the spool drained"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let load = send_concurrently(relay.addr, Load::until_stopped(16), distinct_events("term"));
    load.wait_acked(500, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("only {} events acked\n{}", load.acked(), relay.logs()));
    let status = tokio::task::block_in_place(|| relay.terminate(Duration::from_secs(40)));
    load.stop();
    let sent = load.finish().await;
    sent.assert_no_refusals(&relay.logs());
    let acked = sent.acked;
    assert!(status.success(), "exit status {status:?}\n{}", relay.logs());
    // Drained before exit: everything acked is already in the sink, no restart needed.
    let seen: HashSet<String> = relay.events().iter().map(event_id).collect();
    let missing: Vec<_> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acked events missing after drain",
        missing.len()
    );
    assert!(relay.logs().contains("shutting down"));
}

/// A tmpfs of `bytes` mounted on `dir`, unmounted on drop: a disk that really fills.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {bytes}-byte tmpfs failed (the disk-full test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_answers_503_then_accepts_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let _disk = SmallDisk::mount(&spool, 1 << 20);
    // Leave ~160 KiB free: the spool's own size limit (1 GiB) is not what stops it.
    let filler = spool.join("filler");
    std::fs::write(&filler, vec![0u8; (1 << 20) - (160 << 10)]).unwrap();
    let config = base_config(dir.path(), "", "segment_bytes = 65536", "");
    let mut relay = Relay::start_with(dir.path(), &config);

    // Block the sink so nothing is confirmed and freed while the disk fills.
    let blocker = dir.path().join("events/quickassist.message.read.jsonl");
    std::fs::create_dir_all(&blocker).unwrap();
    let mut c = relay.connect().await;
    let mut acked = HashSet::new();
    let mut refused = None;
    for i in 0..2000 {
        let r = c
            .post_signed(&event_body("message.read", &format!("disk-{i}")))
            .await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some((i, r));
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        acked.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    let (refused_at, r) = refused.expect("the disk never filled");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    assert!(acked.len() > 20, "{}", acked.len());
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "hookrelay exited"
    );
    let mut admin = Client::connect(relay.admin).await;
    assert_eq!(
        admin.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "hookrelay_http_requests_total{source=\"quickassist\",status=\"503\"}"
        ),
        1.0
    );
    assert!(relay.logs().contains("spool write failed"));

    // Space returns: the refused event's retry is accepted, readiness recovers.
    std::fs::remove_file(&filler).unwrap();
    let retry = event_body("message.read", &format!("disk-{refused_at}"));
    let r = c.post_signed(&retry).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["status"], "accepted");
    acked.insert(r.json()["id"].as_str().unwrap().to_string());
    assert_eq!(admin.get("/readyz").await.status, StatusCode::OK);

    // No corrupt segment: a restart finds nothing to truncate, and everything acked
    // is delivered once the sink works again.
    drop(c);
    drop(admin);
    relay.restart();
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_spool_truncated_bytes_total{sink=\"file\"}"),
        0.0
    );
    assert_eq!(
        metric(&m, "hookrelay_spool_corrupt_records_total{sink=\"file\"}"),
        0.0
    );
    std::fs::remove_dir(&blocker).unwrap();
    relay.wait_for_ids(&acked, Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_stops_the_process_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let config_text = base_config(dir.path(), "", "", "");
    std::fs::create_dir_all(dir.path()).unwrap();
    let config = dir.path().join("hookrelay.toml");
    std::fs::write(&config, config_text).unwrap();
    let mut relay = Relay::spawn_env(
        dir.path(),
        &config,
        &[(hookrelay::spool::FSYNC_AFTER_ENV, "5")],
    );
    let mut c = relay.connect().await;
    let mut acked = HashSet::new();
    // One request at a time: each is its own group commit.
    for i in 0..5 {
        let r = c
            .post_signed(&event_body("message.read", &format!("fsync-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        acked.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    // The sixth batch's fdatasync fails: no answer at all, and the process stops.
    let sixth = c
        .try_post_signed(&event_body("message.read", "fsync-5"))
        .await;
    assert!(
        sixth.as_ref().map_or(true, |r| !r.status.is_success()),
        "answered {:?} for an unsynced event",
        sixth.map(|r| r.status)
    );
    let status = tokio::task::block_in_place(|| relay.wait_exit(Duration::from_secs(10)))
        .unwrap_or_else(|| panic!("still running after the failed fdatasync\n{}", relay.logs()));
    assert_eq!(
        status.code(),
        Some(hookrelay::spool::EXIT_FSYNC_FAILED),
        "{}",
        relay.logs()
    );
    assert!(
        relay.logs().contains("fdatasync failed"),
        "{}",
        relay.logs()
    );

    // Restarted on a healthy disk: everything answered 200 is delivered.
    drop(c);
    relay = Relay::spawn(dir.path(), &config);
    relay.wait_for_ids(&acked, Duration::from_secs(30));
}
