//! Load generator: N keep-alive connections, each sending distinct, correctly
//! signed TheQuickAssist events (signed before the clock starts, so signing costs
//! the generator nothing during the run).
//!
//! Closed loop (default): each connection sends its next request as soon as the
//! previous one is answered: maximum throughput. Open loop (`--rate R`): requests
//! are scheduled at R per second in total, and latency is measured from each
//! request's intended send time, so a stall is charged to every request it delays
//! (no coordinated omission). The schedule is kept by a pacer thread with
//! sub-millisecond sleeps: tokio's 1 ms timer would make every request up to a
//! millisecond late and charge that to the server. Each due request goes to the
//! first idle connection (a fixed round robin would queue it behind one slow
//! answer while others sit idle).
//!
//! `cargo run --release --example loadgen -- --url http://127.0.0.1:8080/webhooks/quickassist \
//!     --secret dev-secret --connections 64 --seconds 10 --body-bytes 1024`

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

struct Args {
    url: String,
    secret: String,
    connections: usize,
    seconds: f64,
    warmup: f64,
    body_bytes: usize,
    /// Open loop at this many requests per second in total; 0 = closed loop.
    rate: f64,
}

fn parse() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080/webhooks/quickassist".into(),
        secret: "dev-secret".into(),
        connections: 64,
        seconds: 10.0,
        warmup: 2.0,
        body_bytes: 1024,
        rate: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--url" => a.url = v,
            "--secret" => a.secret = v,
            "--connections" => a.connections = v.parse().expect("--connections"),
            "--seconds" => a.seconds = v.parse().expect("--seconds"),
            "--warmup" => a.warmup = v.parse().expect("--warmup"),
            "--body-bytes" => a.body_bytes = v.parse().expect("--body-bytes"),
            "--rate" => a.rate = v.parse().expect("--rate"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

const TYPES: [&str; 4] = [
    "message.delivered",
    "message.read",
    "message.failed",
    "template.status_update",
];

/// A compact event padded to about `size` bytes, unique by `tag` and `n`.
fn body(tag: &str, n: usize, size: usize) -> Bytes {
    let head = format!(
        r#"{{"event":"{}","timestamp":"2024-01-15T10:30:00Z","data":{{"messageId":"{tag}-{n}","recipient":"+1234567890","pad":""#,
        TYPES[n % 4]
    );
    let tail = r#""},"webhookId":"whk_bench"}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

#[tokio::main]
async fn main() {
    let a = parse();
    let uri: hyper::Uri = a.url.parse().expect("--url");
    let authority = uri.authority().expect("url needs host:port").to_string();
    let path = uri.path().to_string();
    let tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    // Closed loop: enough distinct events for 150k requests/s (the bare baseline here
    // has measured 43-128k), pre-signed, each connection its own slice; at most ~3 GiB of them
    // (16 KiB bodies would need 29 GiB at 150k/s): a connection that runs out says so,
    // and the figure is then a floor. Open loop (a soak runs minutes): each connection
    // signs its next event just in time, about a microsecond, well inside the gap
    // between its slots.
    let budget = (3usize << 30) / (a.body_bytes + 160);
    let total = (((a.seconds + a.warmup) * 150_000.0) as usize).min(budget);
    let per_conn = total / a.connections;
    let mut slices: Vec<Box<dyn Iterator<Item = (Bytes, String)> + Send>> =
        Vec::with_capacity(a.connections);
    if a.rate == 0.0 {
        eprintln!(
            "signing {total} distinct events of ~{} bytes...",
            a.body_bytes
        );
    }
    for c in 0..a.connections {
        let (tag, secret, size) = (tag.clone(), a.secret.clone(), a.body_bytes);
        let conns = a.connections;
        let make = move |i: usize| {
            let b = body(&tag, i * conns + c, size);
            let sig = hookrelay::verify::quickassist_sign(secret.as_bytes(), &b);
            (b, sig)
        };
        if a.rate > 0.0 {
            // Any connection may take any share of the schedule: never runs out.
            slices.push(Box::new((0..).map(make)));
        } else {
            let v: Vec<_> = (0..per_conn).map(make).collect();
            slices.push(Box::new(v.into_iter()));
        }
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    // Open loop: the pacer hands out the intended send times as they come due; the
    // idle connections queue (fairly) for the next one.
    let (pacer, slots) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let slots = std::sync::Arc::new(tokio::sync::Mutex::new(slots));
    if a.rate > 0.0 {
        let period = Duration::from_secs_f64(1.0 / a.rate);
        std::thread::spawn(move || {
            let mut k: u32 = 0;
            loop {
                let at = start + period * k;
                if at >= end {
                    break;
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let _ = pacer.send(at);
                k += 1;
            }
        });
    } else {
        drop(pacer);
    }
    let mut tasks = Vec::new();
    for events in slices {
        let slots = slots.clone();
        let open_loop = a.rate > 0.0;
        let authority = authority.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .expect("connect");
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let (mut ok, mut other, mut lat) = (0u64, 0u64, Vec::new());
            // Every answer, the warm-up's included: for CPU per request.
            let mut answered = 0u64;
            let mut finished = false;
            for (b, sig) in events {
                let now = if open_loop {
                    let next = slots.lock().await.recv().await;
                    match next {
                        Some(at) => at,
                        None => {
                            finished = true;
                            break;
                        }
                    }
                } else {
                    Instant::now()
                };
                if Instant::now() >= end {
                    finished = true;
                    break;
                }
                let req = Request::post(&path)
                    .header("host", &authority)
                    .header("content-type", "application/json")
                    .header("x-webhook-signature", sig)
                    .body(Full::new(b))
                    .expect("request");
                if sender.ready().await.is_err() {
                    break;
                }
                let Ok(resp) = sender.send_request(req).await else {
                    break;
                };
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                answered += 1;
                if now >= measure_from {
                    lat.push(now.elapsed().as_micros() as u32);
                    if status.is_success() {
                        ok += 1
                    } else {
                        other += 1
                    }
                }
            }
            if !finished && Instant::now() < end {
                eprintln!("warning: a connection ran out of events or failed before the end");
            }
            (ok, other, lat, answered)
        }));
    }
    let (mut ok, mut other, mut lat, mut answered) = (0u64, 0u64, Vec::new(), 0u64);
    for t in tasks {
        let (o, x, l, n) = t.await.expect("task");
        ok += o;
        other += x;
        lat.extend(l);
        answered += n;
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"mode\":\"{}\",\"requests\":{},\"answered\":{answered},\"ok\":{ok},\"non_2xx\":{other},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
        if a.rate > 0.0 { "open" } else { "closed" },
        ok + other,
        (ok + other) as f64 / a.seconds,
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
}
