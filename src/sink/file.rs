//! The embedded sink: JSON Lines, one file per topic.
//!
//! For laptops, demos and tests: `tail -f data/events/quickassist.message.read.jsonl`.
//! Each line carries the topic, the key, the headers and the raw body (as a JSON
//! string, byte for byte; `body_hex` instead if it is not UTF-8).
//!
//! Senders choose event types, so the sink bounds what they can make it hold: at
//! most `max_open_files` files are open (the least recently written one is synced
//! and closed to make room), and at most `max_topics` topic files are created (an
//! event for a new topic past that is refused for good: dead-lettered with the
//! reason).
//!
//! A batch is confirmed once its lines are written; the files are fdatasync'd when
//! the forwarder checkpoints ([`Sink::sync`]), before the spool forgets those
//! events. One sync per file per checkpoint instead of one per file per batch: each
//! fdatasync costs CPU, and every topic's file would add one per batch. Between syncs, written lines go to the disk in small steps rather
//! than in one burst per checkpoint, which would stall the spool's own syncs (see
//! [`crate::disk`]).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::{Confirmation, Message, Sink, SinkError, jsonstr};

/// Messages refused for good, by sequence, with the reason; `None` when none were
/// (the usual case: no allocation).
type Refused = Option<Arc<Vec<(u64, String)>>>;
type Reply = oneshot::Sender<Result<Refused, String>>;

/// Lines go to the kernel in writes of about this size, built in one reused buffer:
/// a merged batch of large bodies (up to `forward.max_in_flight_bytes` of them) is
/// never serialized whole in memory, and no buffer grows and is freed per write.
const WRITE_CHUNK: usize = 1 << 20;

enum Job {
    Write(Vec<Message>, Reply),
    /// fdatasync every file written since the last sync.
    Sync(oneshot::Sender<Result<(), String>>),
}

pub struct FileSink {
    jobs: mpsc::Sender<Job>,
}

impl FileSink {
    /// Creates the directory and starts the writer thread.
    pub fn open(dir: &Path, max_open_files: usize, max_topics: usize) -> io::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        // Topic files already there count towards the cap.
        let mut topics = HashSet::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(topic) = name.to_string_lossy().strip_suffix(".jsonl") {
                topics.insert(topic.to_string());
            }
        }
        let (jobs, rx) = mpsc::channel(64);
        let writer = Writer {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            unsynced: HashSet::new(),
            buf: Vec::with_capacity(WRITE_CHUNK),
            uses: 0,
            max_open_files: max_open_files.max(1),
            topics,
            max_topics,
        };
        std::thread::Builder::new()
            .name("file-sink".into())
            .spawn(move || {
                // Panics in a write are kept to the event (`write_caught`); one
                // anywhere else would leave every publish unanswered: stop instead.
                let run = AssertUnwindSafe(|| writer.run(rx));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    crate::supervise::stop(&format!(
                        "the file sink's writer panicked: {}",
                        crate::supervise::panic_text(&*panic)
                    ));
                }
            })?;
        Ok(FileSink { jobs })
    }
}

impl Sink for FileSink {
    fn publish(
        &self,
        batch: Vec<Message>,
    ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let seqs: Vec<u64> = batch.iter().map(|m| m.seq).collect();
            let sent = self.jobs.send(Job::Write(batch, tx)).await.is_ok();
            let outcome = async move {
                match rx.await {
                    Ok(Ok(refused)) => Ok(refused),
                    Ok(Err(e)) => Err(SinkError::Retriable(e)),
                    Err(_) => Err(SinkError::Retriable("file sink stopped".into())),
                }
            }
            .shared();
            seqs.into_iter()
                .map(|seq| {
                    let o = outcome.clone();
                    Box::pin(async move {
                        if !sent {
                            return Err(SinkError::Retriable("file sink stopped".into()));
                        }
                        match o.await? {
                            Some(refused) => match refused.iter().find(|(s, _)| *s == seq) {
                                Some((_, why)) => Err(SinkError::Permanent(why.clone())),
                                None => Ok(()),
                            },
                            None => Ok(()),
                        }
                    }) as Confirmation
                })
                .collect()
        })
    }

    fn sync(&self) -> crate::sink::BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let stopped = || SinkError::Retriable("file sink stopped".into());
            self.jobs.send(Job::Sync(tx)).await.map_err(|_| stopped())?;
            rx.await
                .map_err(|_| stopped())?
                .map_err(SinkError::Retriable)
        })
    }
}

struct Writer {
    dir: PathBuf,
    files: HashMap<String, TopicFile>,
    /// Topics written since their last fdatasync (all of them open: a file is synced
    /// before it is closed).
    unsynced: HashSet<String>,
    /// Lines not yet written; empty between writes.
    buf: Vec<u8>,
    /// Counts file uses, for least-recently-used eviction.
    uses: u64,
    max_open_files: usize,
    /// Topics with a file in `dir`.
    topics: HashSet<String>,
    max_topics: usize,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut next = rx.blocking_recv();
        while let Some(job) = next.take() {
            let (mut batch, reply) = match job {
                Job::Sync(reply) => {
                    let _ = reply.send(self.sync().map_err(|e| e.to_string()));
                    next = rx.blocking_recv();
                    continue;
                }
                Job::Write(batch, reply) => (batch, reply),
            };
            // Everything queued meanwhile shares one write per file; a sync waits its turn.
            let mut replies = vec![reply];
            loop {
                match rx.try_recv() {
                    Ok(Job::Write(more, reply)) => {
                        batch.extend(more);
                        replies.push(reply);
                    }
                    Ok(sync) => {
                        next = Some(sync);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let result = self.write_caught(&batch).map_err(|e| e.to_string());
            if let Err(e) = &result {
                // The files stay open: a later fdatasync on the same descriptors is
                // what reports a lost writeback (a new descriptor would not see it).
                tracing::warn!(error = %e, "file sink write failed; the forwarder will retry");
            }
            for reply in replies {
                let _ = reply.send(result.clone());
            }
            if next.is_none() {
                next = rx.blocking_recv();
            }
        }
    }

    /// [`Writer::write`], with a panic (a bug) kept to the message it happened on:
    /// the batch is written again one message at a time, and a message that panics
    /// alone is refused for good (dead-lettered with the panic as its reason).
    /// Lines written before the panic may be written twice: duplicates, not losses.
    fn write_caught(&mut self, batch: &[Message]) -> io::Result<Refused> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.write(batch))) {
            Ok(written) => written,
            Err(panic) => {
                tracing::error!(panic = %crate::supervise::panic_text(&*panic),
                    "the file sink panicked writing a batch; writing it one event at a time");
                self.buf.clear();
                let mut refused = Vec::new();
                for m in batch {
                    let one = std::slice::from_ref(m);
                    match std::panic::catch_unwind(AssertUnwindSafe(|| self.write(one))) {
                        Ok(Ok(Some(r))) => refused.extend(r.iter().cloned()),
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(panic) => {
                            self.buf.clear();
                            crate::metrics::sink_panic("file");
                            let why = format!(
                                "the file sink panicked on this event: {}",
                                crate::supervise::panic_text(&*panic)
                            );
                            refused.push((m.seq, why));
                        }
                    }
                }
                Ok((!refused.is_empty()).then(|| Arc::new(refused)))
            }
        }
    }

    fn write(&mut self, batch: &[Message]) -> io::Result<Refused> {
        // Topics in the order they first appear in the batch, so that at the
        // max_topics cap the earliest events are the ones that get a file.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut by_topic: Vec<(&str, Vec<&Message>)> = Vec::new();
        for m in batch {
            let topic = m.event.topic();
            let i = *index.entry(topic).or_insert_with(|| {
                by_topic.push((topic, Vec::new()));
                by_topic.len() - 1
            });
            by_topic[i].1.push(m);
        }
        let mut refused = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let mut written = Ok(());
        for (topic, messages) in &by_topic {
            if !self.topics.contains(*topic) && self.topics.len() >= self.max_topics {
                let why = format!(
                    "the file sink holds {} topic files, its cap (sinks.file.max_topics): no file is created for topic {topic}",
                    self.topics.len()
                );
                refused.extend(messages.iter().map(|m| (m.seq, why.clone())));
                continue;
            }
            written = self
                .file(topic)
                .and_then(|file| write_lines(file, messages, &mut buf));
            if !self.unsynced.contains(*topic) {
                self.unsynced.insert(topic.to_string());
            }
            if written.is_err() {
                break;
            }
        }
        buf.clear();
        // One line far over a chunk (a body near server.max_body_bytes) is not kept.
        buf.shrink_to(WRITE_CHUNK);
        self.buf = buf;
        written.map(|()| (!refused.is_empty()).then(|| Arc::new(refused)))
    }

    fn file(&mut self, topic: &str) -> io::Result<&mut TopicFile> {
        self.uses += 1;
        if !self.files.contains_key(topic) {
            if self.files.len() >= self.max_open_files {
                self.close_least_recent()?;
            }
            let path = self.dir.join(format!("{topic}.jsonl"));
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            let len = file.metadata()?.len();
            self.topics.insert(topic.to_string());
            self.files.insert(
                topic.to_string(),
                TopicFile {
                    file,
                    len,
                    handed: len,
                    used: 0,
                },
            );
        }
        let open = self.files.get_mut(topic).expect("inserted above");
        open.used = self.uses;
        Ok(open)
    }

    /// Closes the file written least recently, synced first if it has unsynced lines
    /// (the spool must not forget them before they are on disk).
    fn close_least_recent(&mut self) -> io::Result<()> {
        let Some(topic) = self
            .files
            .iter()
            .min_by_key(|(_, o)| o.used)
            .map(|(t, _)| t.clone())
        else {
            return Ok(());
        };
        if self.unsynced.contains(&topic)
            && let Some(open) = self.files.get(&topic)
        {
            if let Err(e) = open.file.sync_data() {
                crate::supervise::stop_after_failed_sync("file sink", &e);
            }
            self.unsynced.remove(&topic);
        }
        self.files.remove(&topic);
        Ok(())
    }

    /// Syncs every topic written since its last sync. A failed fdatasync stops the
    /// process, as the spool's does: the lines' fate is unknown, and a retried sync
    /// could succeed over writes the kernel dropped, letting the spool forget them.
    fn sync(&mut self) -> io::Result<()> {
        let topics: Vec<String> = self.unsynced.iter().cloned().collect();
        for topic in topics {
            if let Err(e) = self.file(&topic)?.file.sync_data() {
                crate::supervise::stop_after_failed_sync("file sink", &e);
            }
            self.unsynced.remove(&topic);
        }
        Ok(())
    }
}

/// Appends the messages' lines to `file` a chunk at a time, in order.
fn write_lines(file: &mut TopicFile, messages: &[&Message], buf: &mut Vec<u8>) -> io::Result<()> {
    for m in messages {
        json_line_into(buf, m, None);
        if buf.len() >= WRITE_CHUNK {
            file.append(buf)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        file.append(buf)?;
        buf.clear();
    }
    Ok(())
}

/// A topic's file, and how much of it was handed to the disk.
struct TopicFile {
    file: File,
    len: u64,
    /// Everything before this offset is written back or on its way.
    handed: u64,
    /// `Writer::uses` when last written: the least recent is closed first.
    used: u64,
}

impl TopicFile {
    fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        self.file.write_all(lines)?;
        self.len += lines.len() as u64;
        if self.len - self.handed >= crate::disk::WRITEBACK_STEP {
            // Only a hint to the kernel: the fdatasync at the checkpoint is what counts.
            if let Err(e) =
                crate::disk::start_writeback(&self.file, self.handed, self.len - self.handed)
            {
                tracing::debug!(error = %e, "cannot start writeback of the file sink");
            }
            self.handed = self.len;
        }
        Ok(())
    }
}

/// What a dead-letter line adds to the event: the sink that refused it, why, and when,
/// so that the admin can list dead letters by sink and tell old ones from new.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    pub sink: &'a str,
    pub reason: &'a str,
    /// Nanoseconds since the Unix epoch.
    pub at_ns: u64,
}

/// One JSON line for a message; with a [`Refusal`] for the dead-letter file.
pub fn json_line(m: &Message, refusal: Option<&Refusal<'_>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.event.body().len() + 256);
    json_line_into(&mut out, m, refusal);
    out
}

/// Appends one JSON line to `out`, written straight from the borrowed fields: no
/// intermediate JSON tree, no buffer per line. Keys in a fixed order: `topic`, `key`,
/// `headers`, then `body` (or `body_hex`) and, for the dead-letter file, `reason`,
/// `sink` and `dead_lettered_at_ns` (appended after `reason`, which older lines end
/// with, so that readers of either kind find the keys they know where they were).
fn json_line_into(out: &mut Vec<u8>, m: &Message, refusal: Option<&Refusal<'_>>) {
    let e = &m.event;
    out.reserve(e.body().len() + 256);
    out.extend_from_slice(b"{\"topic\":");
    jsonstr::write(out, e.topic());
    out.extend_from_slice(b",\"key\":");
    jsonstr::write(out, e.key());
    out.extend_from_slice(b",\"headers\":{");
    for (i, (k, v)) in m.headers().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        jsonstr::write(out, k);
        out.push(b':');
        jsonstr::write(out, &String::from_utf8_lossy(v));
    }
    out.push(b'}');
    match std::str::from_utf8(e.body()) {
        Ok(text) => {
            out.extend_from_slice(b",\"body\":");
            jsonstr::write(out, text);
        }
        Err(_) => {
            out.extend_from_slice(b",\"body_hex\":\"");
            out.extend_from_slice(hex::encode(e.body()).as_bytes());
            out.push(b'"');
        }
    }
    if let Some(r) = refusal {
        out.extend_from_slice(b",\"reason\":");
        jsonstr::write(out, r.reason);
        out.extend_from_slice(b",\"sink\":");
        jsonstr::write(out, r.sink);
        out.extend_from_slice(b",\"dead_lettered_at_ns\":");
        out.extend_from_slice(r.at_ns.to_string().as_bytes());
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    fn msg(seq: u64, topic: &str, body: &[u8]) -> Message {
        Message {
            seq,
            event: Arc::new(
                crate::event::EventBuilder::new(seq)
                    .id(format!("id{seq}"))
                    .topic(topic)
                    .key("k")
                    .received_at_ns(5)
                    .body(Bytes::copy_from_slice(body))
                    .build(),
            ),
            replay: false,
        }
    }

    #[tokio::test]
    async fn writes_one_file_per_topic_and_keeps_the_body_exact() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path(), 64, 1000).unwrap();
        let pretty = b"{\n  \"event\": \"message.read\"\n}";
        let confirms = sink
            .publish(vec![
                msg(0, "a.b", pretty),
                msg(1, "a.c", b"{}"),
                msg(2, "a.b", &[0xff, 0]),
            ])
            .await;
        assert_eq!(confirms.len(), 3);
        for c in confirms {
            c.await.unwrap();
        }
        let ab = std::fs::read_to_string(dir.path().join("a.b.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = ab
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["body"].as_str().unwrap().as_bytes(), pretty);
        assert_eq!(lines[0]["headers"]["hookrelay-id"], "id0");
        assert_eq!(lines[0]["headers"]["hookrelay-received-at"], "5");
        assert_eq!(lines[1]["body_hex"], "ff00");
        assert!(dir.path().join("a.c.jsonl").exists());
    }

    /// The line is what serializing the same fields with serde_json gives, in order.
    #[test]
    fn line_is_serde_json_of_the_same_fields() {
        let s = |v: &str| serde_json::to_string(v).unwrap();
        let m = msg(
            7,
            "quickassist.message.read",
            "{\"a\":\"\u{1}\\\"é\"}\n".as_bytes(),
        );
        let headers: Vec<String> = m
            .headers()
            .iter()
            .map(|(k, v)| format!("{}:{}", s(k), s(std::str::from_utf8(v).unwrap())))
            .collect();
        let head = format!(
            "{{\"topic\":{},\"key\":{},\"headers\":{{{}}}",
            s("quickassist.message.read"),
            s("k"),
            headers.join(",")
        );
        let body = s(std::str::from_utf8(m.event.body()).unwrap());
        let line = String::from_utf8(json_line(&m, None)).unwrap();
        assert_eq!(line, format!("{head},\"body\":{body}}}\n"));
        let refusal = Refusal {
            sink: "kafka-eu",
            reason: "too \"big\"",
            at_ns: 9,
        };
        let line = String::from_utf8(json_line(&m, Some(&refusal))).unwrap();
        assert_eq!(
            line,
            format!(
                "{head},\"body\":{body},\"reason\":{},\"sink\":\"kafka-eu\",\"dead_lettered_at_ns\":9}}\n",
                s("too \"big\"")
            )
        );
        let m = msg(7, "quickassist.message.read", &[0xff, 0x00, b'a']);
        let line = String::from_utf8(json_line(&m, None)).unwrap();
        assert!(line.ends_with("},\"body_hex\":\"ff0061\"}\n"), "{line}");
        serde_json::from_str::<serde_json::Value>(&line).unwrap();
    }

    /// Lines reach the disk in steps as they are written, not in one burst at the sync.
    #[test]
    fn hands_lines_to_the_disk_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer {
            dir: dir.path().to_path_buf(),
            files: HashMap::new(),
            unsynced: HashSet::new(),
            buf: Vec::new(),
            uses: 0,
            max_open_files: 8,
            topics: HashSet::new(),
            max_topics: 100,
        };
        let line = vec![b'x'; 1000];
        let f = w.file("t").unwrap();
        while f.len + 1000 < crate::disk::WRITEBACK_STEP {
            f.append(&line).unwrap();
        }
        assert_eq!(f.handed, 0);
        f.append(&line).unwrap();
        assert_eq!(f.handed, f.len);
        assert_eq!(f.len, crate::disk::WRITEBACK_STEP.div_ceil(1000) * 1000);
        // Reopened, it starts from the file's length.
        w.files.clear();
        let f = w.file("t").unwrap();
        assert_eq!(f.handed, f.len);
        assert!(f.len > crate::disk::WRITEBACK_STEP);
    }

    /// A batch larger than a write chunk, over two topics, arrives whole and in order.
    #[tokio::test]
    async fn batches_larger_than_a_chunk_are_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path(), 64, 1000).unwrap();
        let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(8 * 1024));
        let batch: Vec<Message> = (0..400)
            .map(|i| msg(i, if i % 3 == 0 { "a.c" } else { "a.b" }, body.as_bytes()))
            .collect();
        for c in sink.publish(batch).await {
            c.await.unwrap();
        }
        for (topic, want) in [
            ("a.b", (0..400).filter(|i| i % 3 != 0).collect::<Vec<u64>>()),
            ("a.c", (0..400).filter(|i| i % 3 == 0).collect()),
        ] {
            let text = std::fs::read_to_string(dir.path().join(format!("{topic}.jsonl"))).unwrap();
            let ids: Vec<u64> = text
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    assert_eq!(v["body"].as_str().unwrap(), body);
                    v["headers"]["hookrelay-id"].as_str().unwrap()[2..]
                        .parse()
                        .unwrap()
                })
                .collect();
            assert_eq!(ids, want, "{topic}");
        }
    }

    /// Three hundred event types: at most `max_open_files` files open at once, every
    /// line written and synced; past `max_topics` a new topic is refused for good
    /// (its events are dead-lettered), topics that have a file keep working.
    #[tokio::test]
    async fn open_files_and_created_topics_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.topic.jsonl"), "").unwrap();
        let sink = FileSink::open(dir.path(), 8, 250).unwrap();
        let batch: Vec<Message> = (0..300).map(|i| msg(i, &format!("t.{i}"), b"{}")).collect();
        let results: Vec<Result<(), SinkError>> =
            futures_util::future::join_all(sink.publish(batch).await).await;
        let refused = results.iter().filter(|r| r.is_err()).count();
        // 250 topics, one of them already there: 249 new files, given to the
        // topics in batch order.
        assert_eq!(refused, 300 - 249);
        assert!(results[..249].iter().all(Result::is_ok));
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(r, SinkError::Permanent(why) if why.contains("sinks.file.max_topics")),
                "{r:?}"
            );
        }
        sink.sync().await.unwrap();
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 250);
        // A known topic still takes events once the cap is reached.
        for c in sink.publish(vec![msg(1000, "t.3", b"{}")]).await {
            c.await.unwrap();
        }
        let t3 = std::fs::read_to_string(dir.path().join("t.3.jsonl")).unwrap();
        assert_eq!(t3.lines().count(), 2);
        // And the writer held at most 8 files open (counted from /proc).
        let fds = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p.starts_with(dir.path()))
            .count();
        assert!(fds <= 8, "{fds} files open");
    }

    /// A sync covers every batch handed over before it, confirmed or not yet.
    #[tokio::test]
    async fn sync_covers_what_was_published_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path(), 64, 1000).unwrap();
        let pending = sink
            .publish((0..100).map(|i| msg(i, "a.b", b"{}")).collect())
            .await;
        sink.sync().await.unwrap();
        let ab = std::fs::read_to_string(dir.path().join("a.b.jsonl")).unwrap();
        assert_eq!(ab.lines().count(), 100);
        for c in pending {
            c.await.unwrap();
        }
        // Nothing new: a sync with nothing to do succeeds too.
        sink.sync().await.unwrap();
    }
}
