//! Named sinks: several of a kind, fan-out, and what happens to spooled events
//! whose sink or source left the config. Isolation under a broker outage is in
//! `rabbitmq_faults.rs` (it stops the shared broker, one test at a time).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use hyper::StatusCode;

/// A config with `sinks` (`[sinks.*]` sections) and quickassist-scheme sources,
/// each `(name, extra lines)`.
fn config(data: &Path, sinks: &str, sources: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [spool]\ndir = \"{spool}\"\nsegment_bytes = 1048576\n\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n\n\
         [dead_letter]\npath = \"{dead}\"\n\n{sinks}\n",
        spool = data.join("spool").display(),
        dead = data.join("dead-letter.jsonl").display(),
    );
    for (name, extra) in sources {
        text.push_str(&format!(
            "\n[sources.{name}]\nscheme = \"quickassist\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\n{extra}\n"
        ));
    }
    text
}

fn file_sink(data: &Path, name: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"file\"\ndir = \"{}\"\n",
        data.join(name).display()
    )
}

fn ids_in(dir: &Path) -> Vec<String> {
    read_events(dir).iter().map(event_id).collect()
}

fn dead_letters(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join("dead-letter.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Posts `n` distinct events to `source`; returns the ids answered 200 accepted.
async fn post_n(relay: &Relay, source: &str, tag: &str, n: usize) -> HashSet<String> {
    let mut c = relay.connect().await;
    let mut acked = HashSet::new();
    for i in 0..n {
        let r = c
            .post_signed_to(
                source,
                &event_body(EVENT_TYPES[i % 4], &format!("{tag}-{i}")),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{source}: {:?}", r.json());
        acked.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    acked
}

/// Every event of a fanned-out source lands in each of its sinks, each counted
/// under its own name; a source routed to one named sink reaches only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_each_event_to_every_sink_counted_per_sink() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sinks = format!("{}{}", file_sink(d, "archive"), file_sink(d, "local"));
    let relay = Relay::start_with(
        d,
        &config(
            d,
            &sinks,
            &[
                ("fan", "sinks = [\"archive\", \"local\"]"),
                ("one", "sink = \"local\""),
            ],
        ),
    );
    let fan = post_n(&relay, "fan", "f", 200).await;
    let one = post_n(&relay, "one", "o", 50).await;
    relay
        .wait_drained(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("not drained\n{}", relay.logs()));
    let archive: Vec<String> = ids_in(&d.join("archive"));
    let local: Vec<String> = ids_in(&d.join("local"));
    let set = |v: &[String]| v.iter().cloned().collect::<HashSet<_>>();
    assert_eq!(
        set(&archive),
        fan,
        "the archive holds the fanned-out events only"
    );
    assert_eq!(
        set(&local),
        fan.union(&one).cloned().collect::<HashSet<_>>()
    );
    // Each in its own backlog.
    for sink in ["archive", "local"] {
        assert!(d.join("spool").join(sink).is_dir(), "no backlog for {sink}");
    }
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_sink_published_total{sink=\"archive\"}"),
        archive.len() as f64
    );
    assert_eq!(
        metric(&m, "hookrelay_sink_published_total{sink=\"local\"}"),
        local.len() as f64
    );
    assert_eq!(metric(&m, "hookrelay_spool_events{sink=\"archive\"}"), 0.0);
    assert_eq!(
        metric(
            &m,
            "hookrelay_sink_state{sink=\"local\",state=\"delivering\"}"
        ),
        1.0
    );
    // A repeat is a duplicate once, whatever the fan-out.
    let mut c = relay.connect().await;
    let r = c
        .post_signed_to("fan", &event_body(EVENT_TYPES[0], "f-0"))
        .await;
    assert_eq!(r.json()["status"], "duplicate");
}

/// Events spooled for a sink that is then removed from the config, or from a
/// source that is removed, go to the dead letters with that reason: not to
/// whichever sink is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_sink_or_source_dead_letters_its_spooled_events_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_held, closed) = refused_port();
    // Two sinks whose broker is not there: everything stays in their backlogs.
    let down = |name: &str| {
        format!(
            "[sinks.{name}]\ntype = \"rabbitmq\"\nuri = \"amqp://guest:guest@{closed}/%2f\"\nconnect_timeout_ms = 200\n"
        )
    };
    let before = config(
        d,
        &format!("{}{}", down("gone"), down("kept")),
        &[
            ("stays", "sink = \"kept\""),
            ("leaves", "sink = \"kept\""),
            ("old", "sink = \"gone\""),
        ],
    );
    let mut relay = Relay::start_with(d, &before);
    let stays = post_n(&relay, "stays", "s", 20).await;
    let leaves = post_n(&relay, "leaves", "l", 10).await;
    let old = post_n(&relay, "old", "o", 15).await;
    relay.kill();

    // `kept` now delivers to a file; `gone` and the source `leaves` are removed.
    let after = config(
        d,
        &format!(
            "[sinks.kept]\ntype = \"file\"\ndir = \"{}\"\n",
            d.join("kept").display()
        ),
        &[("stays", "sink = \"kept\"")],
    );
    // `check` says what the start will do with the removed sink's backlog.
    let (ok, out) = check(d, &after);
    assert!(ok, "{out}");
    assert!(
        out.contains("a backlog of sink 'gone'") && out.contains("dead-letters"),
        "{out}"
    );
    std::fs::write(&relay.config, after).unwrap();
    relay.restart();
    eventually_blocking(Duration::from_secs(30), || {
        (ids_in(&d.join("kept")).len() >= stays.len() && dead_letters(d).len() >= 25).then_some(())
    })
    .unwrap_or_else(|| panic!("not delivered or dead-lettered\n{}", relay.logs()));
    let kept: HashSet<String> = ids_in(&d.join("kept")).into_iter().collect();
    assert_eq!(
        kept, stays,
        "only the remaining source's events are published"
    );
    let dead = dead_letters(d);
    let reason_of = |id: &str| {
        dead.iter()
            .find(|l| l["headers"]["hookrelay-id"] == id)
            .map(|l| l["reason"].as_str().unwrap_or_default().to_string())
    };
    for id in &old {
        let why = reason_of(id).unwrap_or_else(|| panic!("{id} not dead-lettered"));
        assert!(
            why.contains("sink 'gone' was removed from the config"),
            "{why}"
        );
    }
    for id in &leaves {
        let why = reason_of(id).unwrap_or_else(|| panic!("{id} not dead-lettered"));
        assert!(
            why.contains("source 'leaves' was removed from the config"),
            "{why}"
        );
    }
    assert_eq!(dead.len(), old.len() + leaves.len());
    // The removed sink's backlog is gone; the next start finds nothing to redo.
    assert!(!d.join("spool").join("gone").exists());
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "hookrelay_dead_lettered_total{sink=\"gone\"}"),
        old.len() as f64
    );
    // What is adopted is labelled apart (a live sink could be named like the
    // removed one) and reads 0 after: nothing waits on a backlog that is gone.
    assert!(!m.contains("hookrelay_spool_events{sink=\"gone\"}"));
    assert_eq!(metric(&m, "hookrelay_spool_events{sink=\"_adopted\"}"), 0.0);
    relay
        .wait_drained(Duration::from_secs(10))
        .await
        .expect("drained");
    assert_eq!(
        metric(&m, "hookrelay_dead_lettered_total{sink=\"kept\"}"),
        leaves.len() as f64
    );
}

fn check(data: &Path, text: &str) -> (bool, String) {
    check_config(data, text, &[])
}

/// `hookrelay check` names an unknown sink, a sink named twice, a sink no source
/// uses (a warning only), a type it does not know, and takes both forms.
#[test]
fn check_names_unknown_duplicated_and_unused_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let two = format!("{}{}", file_sink(d, "a"), file_sink(d, "b"));

    let (ok, out) = check(d, &config(d, &two, &[("q", "sink = \"c\"")]));
    assert!(
        !ok && out.contains("sources.q.sink") && out.contains("unknown sink 'c'"),
        "{out}"
    );

    let (ok, out) = check(d, &config(d, &two, &[("q", "sinks = [\"a\", \"zz\"]")]));
    assert!(
        !ok && out.contains("sources.q.sinks") && out.contains("unknown sink 'zz'"),
        "{out}"
    );

    let (ok, out) = check(d, &config(d, &two, &[("q", "sinks = [\"a\", \"a\"]")]));
    assert!(!ok && out.contains("names sink 'a' twice"), "{out}");

    let dup = format!("{}{}", file_sink(d, "a"), file_sink(d, "a"));
    let (ok, out) = check(d, &config(d, &dup, &[("q", "")]));
    assert!(
        !ok && out.contains("sinks")
            && out.contains('a')
            && out.to_lowercase().contains("duplicate"),
        "{out}"
    );

    let (ok, out) = check(d, &config(d, &two, &[("q", "")]));
    assert!(!ok && out.contains("several sinks are configured"), "{out}");

    let (ok, out) = check(d, &config(d, &two, &[("q", "sink = \"a\"")]));
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: sinks.b: no source routes to it"),
        "{out}"
    );

    let (ok, out) = check(
        d,
        &config(d, "[sinks.bus]\ntype = \"carrier-pigeon\"\n", &[("q", "")]),
    );
    assert!(
        !ok && out.contains("sinks.bus.type") && out.contains("unknown sink type"),
        "{out}"
    );

    let (ok, out) = check(d, &config(d, "[sinks.bus]\ndir = \"x\"\n", &[("q", "")]));
    assert!(
        !ok && out.contains("sinks.bus") && out.contains("type ="),
        "{out}"
    );

    // The form from before names: the name is the kind.
    let (ok, out) = check(
        d,
        &config(
            d,
            &format!("[sinks.file]\ndir = \"{}\"\n", d.join("e").display()),
            &[("q", "")],
        ),
    );
    assert!(ok && out.contains("sink(s): file"), "{out}");
    let (ok, out) = check(
        d,
        &config(d, &two, &[("q", "sink = \"a\""), ("r", "sink = \"b\"")]),
    );
    assert!(
        ok && out.contains("a (file), b (file)") && !out.contains("warning"),
        "{out}"
    );

    // Two file sinks cannot share a directory.
    let same = "[sinks.a]\ntype = \"file\"\ndir = \"x\"\n[sinks.b]\ntype = \"file\"\ndir = \"x\"\n";
    let (ok, out) = check(d, &config(d, same, &[("q", "sinks = [\"a\", \"b\"]")]));
    assert!(!ok && out.contains("sinks.b.dir"), "{out}");

    // A hostile sink name (it names a directory and a label) is refused.
    let (ok, out) = check(
        d,
        &config(
            d,
            "[sinks.\"../up\"]\ntype = \"file\"\ndir = \"x\"\n",
            &[("q", "")],
        ),
    );
    assert!(!ok && out.contains("a sink name is at most"), "{out}");
    let long = format!("[sinks.{}]\ntype = \"file\"\ndir = \"x\"\n", "s".repeat(65));
    let (ok, out) = check(d, &config(d, &long, &[("q", "")]));
    assert!(!ok && out.contains("a sink name is at most"), "{out}");
    let (ok, out) = check(
        d,
        &config(
            d,
            "[sinks.bus]\ntype = \"file\"\ndir = \"x\"\nbacklog_max_bytes = -1\n",
            &[("q", "")],
        ),
    );
    assert!(!ok && out.contains("sinks.bus.backlog_max_bytes"), "{out}");
    let (ok, out) = check(
        d,
        &config(
            d,
            "[sinks.quarantine]\ntype = \"file\"\ndir = \"x\"\n",
            &[("q", "")],
        ),
    );
    assert!(!ok && out.contains("the name is taken"), "{out}");
    let (ok, out) = check(
        d,
        &config(
            d,
            "[sinks.\"hookrelay.lock\"]\ntype = \"file\"\ndir = \"x\"\n",
            &[("q", "")],
        ),
    );
    assert!(!ok && out.contains("the name is taken"), "{out}");
}
