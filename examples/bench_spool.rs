//! The spool alone: appends/s, group commits (fdatasyncs)/s and append latency at
//! 1, 16 and 256 concurrent writers, 1 KiB events, on the disk under `target/`.
//! One writer measures a bare fdatasync per append: the floor of any durable 200.
//! Each writer makes its events as the edge does (sign, verify, extract), outside
//! the latency it measures.
//!
//! `cargo run --release --example bench_spool -- [seconds per case]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookrelay::config::Config;
use hookrelay::event::{Accepted, Extracted, Extractor};
use hookrelay::spool::{Record, Spool};
use hookrelay::verify::{Method, Verifier};

/// Events as the edge makes them (the spool takes nothing else): a signed 1 KiB
/// body, verified and extracted.
struct Edge {
    verifier: Verifier,
    extractor: Extractor,
}

impl Edge {
    fn new() -> Edge {
        let config = Config::parse(
            "[sinks.file]\ndir = \"x\"\n[sources.bench]\nscheme = \"quickassist\"\nsecret_env = \"X\"\n",
        )
        .expect("config");
        let method = Method::Quickassist {
            json_stringify: false,
        };
        Edge {
            verifier: Verifier::with_secrets(method, &[b"bench"]).expect("verifier"),
            extractor: config.sources["bench"]
                .extractor("bench")
                .expect("extractor"),
        }
    }

    fn event(&self, w: usize, n: u64) -> Accepted {
        let head = format!(r#"{{"event":"message.read","data":{{"messageId":"{w}-{n}"}},"pad":""#);
        let body = format!("{head}{}\"}}", "x".repeat(1024 - head.len() - 2));
        let mut headers = hyper::HeaderMap::new();
        for (k, v) in self.verifier.sign(body.as_bytes(), "/").expect("sign") {
            headers.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let verified = self
            .verifier
            .verify(&headers, Bytes::from(body), "/")
            .expect("verified");
        match self
            .extractor
            .extract(verified, &headers, "application/json", 0)
        {
            Ok(Extracted::Publish(e)) => e,
            _ => panic!("not extracted"),
        }
    }
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    std::fs::create_dir_all("target/bench").unwrap();
    let dir = tempfile::tempdir_in("target/bench").unwrap();
    let (spool, mut reader, _) =
        Spool::open(dir.path(), 64 << 30, 256 << 20, |_: &Record| {}).unwrap();
    let edge = Arc::new(Edge::new());
    println!("| writers | appends/s | fdatasyncs/s | appends per sync | append p50 | append p99 |");
    println!("|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for writers in [1usize, 16, 256] {
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let syncs_before = spool.syncs();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let spool = spool.clone();
            let edge = edge.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0u64;
                while Instant::now() < end {
                    let e = edge.event(w, n);
                    let t = Instant::now();
                    spool.append(e).await.expect("append");
                    lat.push(t.elapsed().as_micros() as u32);
                    n += 1;
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let syncs = spool.syncs() - syncs_before;
        lat.sort_unstable();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        let rate = lat.len() as f64 / elapsed;
        println!(
            "| {writers} | {rate:.0} | {:.0} | {:.1} | {} us | {} us |",
            syncs as f64 / elapsed,
            lat.len() as f64 / syncs.max(1) as f64,
            pct(0.5),
            pct(0.99)
        );
        json.push(format!(
            "{{\"writers\":{writers},\"appends_per_s\":{rate:.0},\"syncs_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
            syncs as f64 / elapsed,
            pct(0.5),
            pct(0.99)
        ));
        // Keep the spool small between cases.
        while !reader.read_batch(100_000).unwrap().is_empty() {}
        spool.confirm_until(reader.position());
    }
    println!("\njson: [{}]", json.join(","));
}
