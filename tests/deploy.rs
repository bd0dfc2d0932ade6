//! The dashboard and the alert and recording rules only name metrics the running
//! binary exports, from the first scrape (every series is registered at zero).

mod common;

use std::collections::BTreeSet;

use common::*;

fn referenced_metrics() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut text = String::new();
    for f in [
        "deploy/prometheus/alerts.yaml",
        "deploy/prometheus/recording.yaml",
        "deploy/grafana/hookrelay.json",
    ] {
        text.push_str(&std::fs::read_to_string(format!("{root}/{f}")).unwrap());
    }
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("hookrelay_") {
        let start = i + pos;
        // Recording rule names (hookrelay:...) and labels are not metric names.
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_rules_name_only_exported_metrics() {
    let names = referenced_metrics();
    assert!(names.len() >= 12, "{names:?}");
    let dir = tempfile::tempdir().unwrap();
    // Every sink configured (brokers unreachable: their metrics are registered anyway).
    // Bound, not listening, for the whole test: connections are refused.
    let (_reserved, closed) = refused_port();
    let sinks = format!(
        "[sinks.file]\ndir = \"{}\"\n[sinks.kafka]\nbrokers = \"{closed}\"\n[sinks.rabbitmq]\nuri = \"amqp://guest:guest@{closed}/%2f\"\n",
        dir.path().join("events").display()
    );
    let config = config_with_sink(dir.path(), "", "", &sinks, "sink = \"file\"\n");
    let relay = Relay::start_with(dir.path(), &config);
    let scraped = relay.metrics().await;
    let exported: BTreeSet<&str> = scraped
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            !exported.contains(n.as_str()) && !exported.contains(format!("{n}_bucket").as_str())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:?}\nexported: {exported:?}"
    );
}
