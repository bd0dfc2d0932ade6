use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::event::Event;

fn event(n: u64, source: &str, event_type: &str, body: &[u8]) -> Event {
    Event::from_record(
        Arc::from(source),
        event_type.to_string(),
        format!("{event_type}:{n}"),
        format!("{source}.{event_type}"),
        format!("k{n}"),
        "application/json".to_string(),
        1_700_000_000_000_000_000 + n,
        Bytes::copy_from_slice(body),
        format!("00-4bf92f3577b34da6a3ce929d0e0e{n:04x}-00f067aa0ba902b7-01"),
    )
}

fn msg(e: &Event) -> Message {
    Message {
        seq: 0,
        event: Arc::new(e.clone()),
        replay: false,
    }
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn all(dl: &DeadLetter, filter: &Filter) -> Vec<Entry> {
    dl.list(filter, None, usize::MAX).unwrap().entries
}

/// Four entries: sinks `kafka-eu` and `archive`, sources `shop` and `chat`.
fn four(dl: &DeadLetter) -> Vec<Event> {
    let events = vec![
        event(1, "shop", "order.created", b"{\"n\":1}"),
        event(2, "chat", "message.read", b"{\"n\":2}"),
        event(3, "shop", "order.paid", b"{\"n\":3}"),
        event(4, "chat", "message.read", b"{\"n\":4}"),
    ];
    dl.write("kafka-eu", &msg(&events[0]), "kafka-eu: message too large")
        .unwrap();
    dl.write_all(&[
        ("archive", &msg(&events[1]), "archive: disk quota exceeded"),
        (
            "kafka-eu",
            &msg(&events[2]),
            "kafka-eu: topic authorization failed",
        ),
    ])
    .unwrap();
    dl.write("archive", &msg(&events[3]), "archive: message too large")
        .unwrap();
    events
}

#[test]
fn lines_keep_the_old_keys_in_order_and_add_sink_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let dl = DeadLetter::open(&path).unwrap();
    let before = crate::event::now_ns();
    dl.write(
        "kafka-eu",
        &msg(&event(1, "shop", "order.created", b"{}")),
        "kafka-eu: no",
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    let keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "topic",
            "key",
            "headers",
            "body",
            "reason",
            "sink",
            "dead_lettered_at_ns"
        ]
    );
    assert_eq!(line["reason"], "kafka-eu: no", "the reason is as it was");
    assert_eq!(line["sink"], "kafka-eu");
    assert!(line["dead_lettered_at_ns"].as_u64().unwrap() >= before);
}

#[test]
fn lists_with_each_filter() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap();
    four(&dl);
    let every = all(&dl, &Filter::default());
    assert_eq!(every.len(), 4);
    assert_eq!(every[0].id, 0, "ids are byte offsets");
    assert!(every.windows(2).all(|w| w[0].id < w[1].id));
    let e = &every[1];
    assert_eq!(e.sink.as_deref(), Some("archive"));
    assert_eq!(
        (
            e.source.as_str(),
            e.event_type.as_str(),
            e.event_id.as_str()
        ),
        ("chat", "message.read", "message.read:2")
    );
    assert_eq!(
        (e.topic.as_str(), e.key.as_str()),
        ("chat.message.read", "k2")
    );
    assert_eq!(e.content_type, "application/json");
    assert_eq!(e.received_at_ns, 1_700_000_000_000_000_002);
    assert!(e.dead_lettered_at_ns.is_some());
    assert_eq!(e.size, 7);

    let ids = |f: Filter| -> Vec<String> { all(&dl, &f).into_iter().map(|e| e.event_id).collect() };
    let by_source = Filter {
        source: Some("shop".into()),
        ..Filter::default()
    };
    assert_eq!(ids(by_source), ["order.created:1", "order.paid:3"]);
    let by_event = Filter {
        event: Some("message.read".into()),
        ..Filter::default()
    };
    assert_eq!(ids(by_event), ["message.read:2", "message.read:4"]);
    let by_reason = Filter {
        reason: Some("too large".into()),
        ..Filter::default()
    };
    assert_eq!(ids(by_reason), ["order.created:1", "message.read:4"]);
    let by_sink = Filter {
        sink: Some("kafka-eu".into()),
        ..Filter::default()
    };
    assert_eq!(ids(by_sink), ["order.created:1", "order.paid:3"]);
    let both = Filter {
        source: Some("chat".into()),
        reason: Some("quota".into()),
        ..Filter::default()
    };
    assert_eq!(ids(both), ["message.read:2"]);
    let none = Filter {
        sink: Some("nats".into()),
        ..Filter::default()
    };
    assert_eq!(
        dl.list(&none, None, 10).unwrap(),
        Page {
            entries: vec![],
            next: None
        }
    );
}

#[test]
fn pages_with_after_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap();
    four(&dl);
    let every = all(&dl, &Filter::default());
    let page = dl.list(&Filter::default(), None, 3).unwrap();
    assert_eq!(page.entries, every[..3]);
    assert_eq!(page.next, Some(every[2].id));
    let page = dl.list(&Filter::default(), page.next, 3).unwrap();
    assert_eq!(page.entries, every[3..]);
    assert_eq!(page.next, None, "the end is known, not an empty page away");
    // A full last page says so too.
    let page = dl.list(&Filter::default(), Some(every[1].id), 2).unwrap();
    assert_eq!((page.entries.as_slice(), page.next), (&every[2..], None));
    // Filtered paging: the next page starts after the last entry shown.
    let shop = Filter {
        source: Some("shop".into()),
        ..Filter::default()
    };
    let page = dl.list(&shop, None, 1).unwrap();
    assert_eq!(page.entries, every[..1]);
    let page = dl.list(&shop, page.next, 1).unwrap();
    assert_eq!((page.entries.as_slice(), page.next), (&every[2..3], None));
    // `after` inside a line goes on from the next line; past the end, nothing.
    let page = dl
        .list(&Filter::default(), Some(every[1].id + 5), 10)
        .unwrap();
    assert_eq!(page.entries, every[2..]);
    let page = dl.list(&Filter::default(), Some(u64::MAX), 10).unwrap();
    assert_eq!(page.entries, vec![]);
    assert_eq!(page.next, None);
    // A limit of 0 is a limit of 1.
    assert_eq!(
        dl.list(&Filter::default(), None, 0).unwrap().entries.len(),
        1
    );
}

#[test]
fn a_listing_stops_at_its_budget_and_says_where_to_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap();
    four(&dl);
    let every = all(&dl, &Filter::default());
    let chat = Filter {
        source: Some("chat".into()),
        ..Filter::default()
    };
    // A budget of one byte reads one line per call.
    let mut seen = Vec::new();
    let mut after = None;
    let mut calls = 0;
    loop {
        let page = dl.list_within(&chat, after, 10, 1).unwrap();
        calls += 1;
        seen.extend(page.entries);
        match page.next {
            Some(next) => {
                assert!(after.is_none_or(|a| next > a), "always moves on");
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, vec![every[1].clone(), every[3].clone()]);
    assert!(calls >= 4, "{calls}");
}

#[test]
fn get_returns_the_body_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let dl = DeadLetter::open(&path).unwrap();
    let text = "{\n  \"a\": \"\u{1}\\\"é\t😀\"\r\n}".as_bytes();
    let binary = [0xff, 0x00, b'a', b'\n', 0xc3];
    dl.write("s", &msg(&event(1, "shop", "t", text)), "s: x")
        .unwrap();
    dl.write("s", &msg(&event(2, "shop", "t", &binary)), "s: y")
        .unwrap();
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"body_hex\":\"ff00610ac3\"")
    );
    let every = all(&dl, &Filter::default());
    let first = dl.get(every[0].id).unwrap().unwrap();
    assert_eq!(first.body, text);
    assert_eq!(first.entry, every[0]);
    assert_eq!(first.entry.size, text.len());
    let names: Vec<&str> = first.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "hookrelay-source",
            "hookrelay-event",
            "hookrelay-id",
            "hookrelay-received-at",
            "content-type",
            "traceparent"
        ]
    );
    assert_eq!(first.headers[3].1, "1700000000000000001");
    let second = dl.get(every[1].id).unwrap().unwrap();
    assert_eq!(second.body.as_ref(), binary);
    assert_eq!(second.entry.size, binary.len());
    assert_eq!(
        dl.stats(),
        Stats {
            entries: 2,
            body_bytes: (text.len() + binary.len()) as u64
        }
    );
    // Not a line's start, or past the end: no entry.
    assert_eq!(dl.get(every[1].id - 1).unwrap(), None);
    assert_eq!(dl.get(every[0].id + 1).unwrap(), None);
    assert_eq!(dl.get(u64::MAX).unwrap(), None);
}

#[test]
fn remove_is_idempotent_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let dl = DeadLetter::open(&path).unwrap();
    four(&dl);
    let every = all(&dl, &Filter::default());
    let full = dl.stats();
    assert_eq!(full.entries, 4);
    let (a, b) = (every[1].id, every[2].id);
    // Unknown ids (inside a line, past the end) and repeats are passed over.
    assert_eq!(dl.remove(&[a, a, a + 1, u64::MAX]).unwrap(), 1);
    assert_eq!(dl.remove(&[a]).unwrap(), 0, "already removed");
    assert_eq!(dl.remove(&[a, b]).unwrap(), 1);
    assert_eq!(dl.get(a).unwrap(), None);
    let left = vec![every[0].clone(), every[3].clone()];
    assert_eq!(all(&dl, &Filter::default()), left);
    let stats = Stats {
        entries: 2,
        body_bytes: full.body_bytes - (every[1].size + every[2].size) as u64,
    };
    assert_eq!(dl.stats(), stats);
    assert_eq!(std::fs::read(removed_path(&path)).unwrap().len(), 16);
    drop(dl);

    // A crash mid-append left a torn word: ignored, and cut before the next one.
    append(&removed_path(&path), &[7, 0, 0]);
    let dl = DeadLetter::open(&path).unwrap();
    assert_eq!(all(&dl, &Filter::default()), left);
    assert_eq!(dl.stats(), stats);
    assert_eq!(dl.remove(&[a, b]).unwrap(), 0);
    assert_eq!(dl.remove(&[every[0].id]).unwrap(), 1);
    assert_eq!(std::fs::read(removed_path(&path)).unwrap().len(), 24);
    drop(dl);
    let dl = DeadLetter::open(&path).unwrap();
    assert_eq!(all(&dl, &Filter::default()), vec![every[3].clone()]);
    assert_eq!(dl.stats().entries, 1);
}

#[test]
fn a_partial_last_line_is_ignored_and_the_next_write_starts_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let dl = DeadLetter::open(&path).unwrap();
    let e = event(1, "shop", "t", b"{}");
    dl.write("s", &msg(&e), "s: x").unwrap();
    let line = std::fs::read(&path).unwrap();
    // A write in progress: the reader sees a line without its end.
    append(&path, &line[..line.len() / 2]);
    assert_eq!(all(&dl, &Filter::default()).len(), 1);
    drop(dl);
    // After a crash, the fragment stays; the next line does not run into it.
    let dl = DeadLetter::open(&path).unwrap();
    assert_eq!(dl.stats().entries, 1);
    dl.write("s", &msg(&e), "s: again").unwrap();
    let every = all(&dl, &Filter::default());
    assert_eq!(every.len(), 2);
    assert_eq!(every[1].reason, "s: again");
    assert_eq!(dl.get(every[1].id).unwrap().unwrap().body, e.body().clone());
    assert_eq!(dl.stats().entries, 2);
}

#[test]
fn old_format_lines_name_the_sink_in_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let headers = r#"{"hookrelay-source":"shop","hookrelay-event":"order.created","hookrelay-id":"order.created:1","hookrelay-received-at":"5","content-type":"application/json"}"#;
    let old = |reason: &str| {
        format!(
            "{{\"topic\":\"shop.order.created\",\"key\":\"1\",\"headers\":{headers},\"body\":\"{{}}\",\"reason\":{}}}\n",
            serde_json::to_string(reason).unwrap()
        )
    };
    std::fs::write(
        &path,
        [
            old("kafka-eu: message too large"),
            old("sink 'gone' was removed from the config"),
            old("not a sink: the prefix has spaces"),
            old(&format!("{}: too long a name", "s".repeat(65))),
        ]
        .concat(),
    )
    .unwrap();
    let dl = DeadLetter::open(&path).unwrap();
    let every = all(&dl, &Filter::default());
    let sinks: Vec<Option<&str>> = every.iter().map(|e| e.sink.as_deref()).collect();
    assert_eq!(sinks, [Some("kafka-eu"), None, None, None]);
    assert_eq!(every[0].dead_lettered_at_ns, None);
    assert_eq!(every[0].received_at_ns, 5);
    let kafka = Filter {
        sink: Some("kafka-eu".into()),
        ..Filter::default()
    };
    assert_eq!(all(&dl, &kafka), every[..1]);
    let full = dl.get(0).unwrap().unwrap();
    assert_eq!(full.body.as_ref(), b"{}");
    assert_eq!(full.event().unwrap().topic(), "shop.order.created");
}

#[test]
fn malformed_and_oversized_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let dl = DeadLetter::open(&path).unwrap();
    let e = event(1, "shop", "t", b"{}");
    dl.write("s", &msg(&e), "s: first").unwrap();
    let good = std::fs::read_to_string(&path).unwrap();
    let mut bad: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{}".to_vec(),
        b"[1,2]".to_vec(),
        b"{\"topic\":1}".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        good.replace("\"body\":\"{}\"", "\"body\":\"{}\",\"body_hex\":\"00\"")
            .trim_end()
            .into(),
        good.replace("\"body\":\"{}\"", "\"body_hex\":\"0g\"")
            .trim_end()
            .into(),
        good.replace("\"1700000000000000001\"", "\"-1\"")
            .trim_end()
            .into(),
        good.replace("\"hookrelay-id\":", "\"hookrelay-idx\":")
            .trim_end()
            .into(),
        good.replace(
            "\"content-type\":\"application/json\"",
            "\"content-type\":7",
        )
        .trim_end()
        .into(),
        good.replace("\"reason\"", "\"topic\":\"twice\",\"reason\"")
            .trim_end()
            .into(),
        [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
        vec![b'x'; MAX_LINE_LEN + 1],
        [
            b"{\"topic\":\"".as_slice(),
            &vec![b'a'; MAX_LINE_LEN],
            b"\"}",
        ]
        .concat(),
    ];
    for line in &mut bad {
        line.push(b'\n');
        append(&path, line);
    }
    dl.write("s", &msg(&e), "s: last").unwrap();
    let every = all(&dl, &Filter::default());
    let reasons: Vec<&str> = every.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["s: first", "s: last"]);
    // Every bad line's start is no entry to show or remove.
    let mut at = good.len() as u64;
    for line in &bad {
        assert_eq!(dl.get(at).unwrap(), None);
        assert_eq!(dl.remove(&[at]).unwrap(), 0);
        at += line.len() as u64;
    }
    assert_eq!(at, every[1].id);
    let dl = DeadLetter::open(&path).unwrap();
    assert_eq!(dl.stats().entries, 2);
    // Paging over them works too.
    let page = dl.list(&Filter::default(), Some(0), 1).unwrap();
    assert_eq!((page.entries.as_slice(), page.next), (&every[1..], None));
}

#[test]
fn event_round_trips_to_an_identical_event() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap();
    let events = [
        event(
            1,
            "shop",
            "order.created",
            "{\"é\":\"\\u0000\n\"}".as_bytes(),
        ),
        event(2, "chat", "message.read", &[0, 0xff, 0xfe, 7]),
        event(3, "chat", "message.read", b""),
    ];
    for e in &events {
        dl.write("s", &msg(e), "s: refused").unwrap();
    }
    let every = all(&dl, &Filter::default());
    for (entry, e) in every.iter().zip(&events) {
        let full = dl.get(entry.id).unwrap().unwrap();
        assert_eq!(&full.event().unwrap().into_event(), e);
    }
}

/// A dead-letter file under `dir` with one line written, and that line parsed:
/// what the hand-editing tests start from.
fn one_written(dir: &Path) -> (std::path::PathBuf, DeadLetter, serde_json::Value) {
    let path = dir.join("dead.jsonl");
    let dl = DeadLetter::open(&path).unwrap();
    dl.write("s", &msg(&event(1, "shop", "t", b"{}")), "s: x")
        .unwrap();
    let good = serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim_end()).unwrap();
    (path, dl, good)
}

#[test]
fn event_refuses_a_hand_edited_line_out_of_the_edge_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let (path, dl, good) = one_written(dir.path());
    let edits: [(&str, serde_json::Value); 5] = [
        ("/topic", "t".repeat(250).into()),
        ("/topic", "a/../b".into()),
        ("/headers/hookrelay-event", "".into()),
        ("/headers/content-type", "text/\u{7f}plain".into()),
        ("/key", "k".repeat(1025).into()),
    ];
    for (at, value) in edits {
        let mut edited = good.clone();
        *edited.pointer_mut(at).unwrap() = value;
        let id = std::fs::metadata(&path).unwrap().len();
        append(&path, format!("{edited}\n").as_bytes());
        let full = dl.get(id).unwrap().expect("listed and shown as it is");
        let why = full.event().unwrap_err();
        assert!(why.starts_with(&format!("entry {id}: ")), "{why}");
    }
    let why = dl.get(0).unwrap().unwrap().event();
    assert!(why.is_ok(), "the line as written redrives");
    let first_edit = all(&dl, &Filter::default())[1].clone();
    let why = dl.get(first_edit.id).unwrap().unwrap().event().unwrap_err();
    assert!(why.contains("topic"), "{why}");
}

/// A hand-edited `traceparent` goes back out only as a valid version-00 value:
/// a later version's extra fields are dropped, and a value carrying control bytes
/// (a header injection into Kafka or AMQP) or malformed is not carried at all.
#[test]
fn a_redriven_traceparent_is_valid_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (path, dl, good) = one_written(dir.path());
    let tp = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cases = [
        (format!("00-{tp}"), format!("00-{tp}")),
        (format!("01-{tp}-later-fields"), format!("00-{tp}")),
        (format!("01-{tp}-\r\nx-injected: 1"), String::new()),
        (format!("00-{tp}-"), String::new()),
        ("00-zz".to_string(), String::new()),
        ("t".repeat(600), String::new()),
    ];
    for (written, redriven) in cases {
        let mut edited = good.clone();
        *edited.pointer_mut("/headers/traceparent").unwrap() = written.clone().into();
        let id = std::fs::metadata(&path).unwrap().len();
        append(&path, format!("{edited}\n").as_bytes());
        let event = dl.get(id).unwrap().unwrap().event().unwrap().into_event();
        assert_eq!(event.traceparent(), redriven, "{written:?}");
    }
}

#[test]
fn readers_see_whole_lines_while_a_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&dir.path().join("dead.jsonl")).unwrap();
    let body = vec![b'x'; 100_000];
    let writer = {
        let dl = dl.clone();
        let e = event(1, "shop", "t", &body);
        std::thread::spawn(move || {
            for _ in 0..200 {
                dl.write("s", &msg(&e), "s: x").unwrap();
            }
        })
    };
    while !writer.is_finished() {
        let page = dl.list(&Filter::default(), None, usize::MAX).unwrap();
        assert!(page.entries.iter().all(|e| e.size == body.len()));
    }
    writer.join().unwrap();
    assert_eq!(all(&dl, &Filter::default()).len(), 200);
    assert_eq!(dl.stats().entries, 200);
}
