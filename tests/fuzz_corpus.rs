//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the same entry
//! points the fuzz targets call, on the stable toolchain: every input that ever
//! mattered to the fuzzer stays a regression test. A panic fails the test.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panicked", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
    n
}

#[test]
fn verify_corpus() {
    assert_eq!(
        hookrelay::fuzzing::scheme_count(),
        16,
        "every scheme is fuzzed"
    );
    replay("verify", hookrelay::fuzzing::verify);
}

#[test]
fn extract_corpus() {
    replay("extract", hookrelay::fuzzing::extract);
}

#[test]
fn config_corpus() {
    replay("config", hookrelay::fuzzing::config);
}

#[test]
fn spool_record_corpus() {
    replay("spool_record", hookrelay::fuzzing::spool_record);
}

#[test]
fn edge_corpus() {
    let n = replay("edge", |data| {
        let _ = hookrelay::fuzzing::edge(data);
    });
    assert!(n > 100, "{n} inputs");
}
