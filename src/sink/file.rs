//! The embedded sink: JSON Lines, one file per topic, fdatasync'd before confirming.
//!
//! For laptops, demos and tests: `tail -f data/events/quickassist.message.read.jsonl`.
//! Each line carries the topic, the key, the headers and the raw body (as a JSON
//! string, byte for byte; `body_hex` instead if it is not UTF-8).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::{Confirmation, Message, Sink, SinkError};

type Job = (Vec<Message>, oneshot::Sender<Result<(), String>>);

pub struct FileSink {
    jobs: mpsc::Sender<Job>,
}

impl FileSink {
    /// Creates the directory and starts the writer thread.
    pub fn open(dir: &Path) -> io::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        let (jobs, rx) = mpsc::channel(64);
        let writer = Writer {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("file-sink".into())
            .spawn(move || writer.run(rx))?;
        Ok(FileSink { jobs })
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn publish(
        &self,
        batch: Vec<Message>,
    ) -> crate::sink::BoxFuture<'_, Vec<crate::sink::Confirmation>> {
        Box::pin(async move {
            let n = batch.len();
            let (tx, rx) = oneshot::channel();
            let sent = self.jobs.send((batch, tx)).await.is_ok();
            let outcome = async move {
                match rx.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(SinkError::Retriable(e)),
                    Err(_) => Err(SinkError::Retriable("file sink stopped".into())),
                }
            }
            .shared();
            (0..n)
                .map(|_| {
                    let o = outcome.clone();
                    Box::pin(async move {
                        if !sent {
                            return Err(SinkError::Retriable("file sink stopped".into()));
                        }
                        o.await
                    }) as Confirmation
                })
                .collect()
        })
    }
}

struct Writer {
    dir: PathBuf,
    files: HashMap<String, File>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some((mut batch, reply)) = rx.blocking_recv() {
            // Group commit: everything queued meanwhile shares one write and one
            // fdatasync per file.
            let mut replies = vec![reply];
            while let Ok((more, reply)) = rx.try_recv() {
                batch.extend(more);
                replies.push(reply);
            }
            let result = self.write(&batch).map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::warn!(error = %e, "file sink write failed; the forwarder will retry");
                // Reopen on the next write rather than trusting a file in an unknown state.
                self.files.clear();
            }
            for reply in replies {
                let _ = reply.send(result.clone());
            }
        }
    }

    fn write(&mut self, batch: &[Message]) -> io::Result<()> {
        let mut by_topic: HashMap<&str, Vec<u8>> = HashMap::new();
        for m in batch {
            let buf = by_topic.entry(m.event.topic.as_str()).or_default();
            buf.extend_from_slice(&json_line(m, None));
        }
        for (topic, lines) in &by_topic {
            let file = match self.files.get_mut(*topic) {
                Some(f) => f,
                None => {
                    let path = self.dir.join(format!("{topic}.jsonl"));
                    let f = OpenOptions::new().create(true).append(true).open(path)?;
                    self.files.entry(topic.to_string()).or_insert(f)
                }
            };
            file.write_all(lines)?;
        }
        for topic in by_topic.keys() {
            if let Some(f) = self.files.get(*topic) {
                f.sync_data()?;
            }
        }
        Ok(())
    }
}

/// One JSON line for a message; with a `reason` for the dead-letter file.
/// Serialized from borrowed fields: no intermediate JSON tree per event.
pub fn json_line(m: &Message, reason: Option<&str>) -> Vec<u8> {
    use serde::Serialize;
    use serde::ser::SerializeMap;

    struct Headers<'a>(&'a Message);
    impl Serialize for Headers<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let headers = self.0.headers();
            let mut map = s.serialize_map(Some(headers.len()))?;
            for (k, v) in &headers {
                map.serialize_entry(k, &String::from_utf8_lossy(v))?;
            }
            map.end()
        }
    }

    #[derive(Serialize)]
    struct Line<'a> {
        topic: &'a str,
        key: &'a str,
        headers: Headers<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body_hex: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    }

    let e = &m.event;
    let text = std::str::from_utf8(&e.body).ok();
    let line = Line {
        topic: &e.topic,
        key: &e.key,
        headers: Headers(m),
        body: text,
        body_hex: text.is_none().then(|| hex::encode(&e.body)),
        reason,
    };
    let mut out = Vec::with_capacity(e.body.len() + 256);
    // Serializing borrowed strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &line);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use bytes::Bytes;
    use std::sync::Arc;

    fn msg(seq: u64, topic: &str, body: &[u8]) -> Message {
        Message {
            seq,
            event: Event {
                source: Arc::from("q"),
                event_type: "message.read".into(),
                id: format!("id{seq}"),
                topic: topic.into(),
                key: "k".into(),
                content_type: "application/json".into(),
                received_at_ns: 5,
                body: Bytes::copy_from_slice(body),
            },
        }
    }

    #[tokio::test]
    async fn writes_one_file_per_topic_and_keeps_the_body_exact() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path()).unwrap();
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
}
