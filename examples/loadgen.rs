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
//! `--idle-connections N` holds N more keep-alive connections for the whole run
//! besides the active ones: each completes one signed request (a real HTTP/1.1
//! keep-alive connection the server holds, not a half-open socket), `--idle-batch`
//! at a time so the listen backlog is not overrun, before the clock starts, then
//! sends nothing until the end (or, with `--idle-every S`, one request after each S
//! seconds without one, to stay under a server's idle timeout), when each is
//! checked (closed by the server: its connection task ended) and sent one last
//! request. `--interval-secs S` adds the
//! p99 of each S-second window of the measured run (by intended send time), to
//! show when a tail happens. `lag_p99_us`: how late requests were sent (open loop:
//! waiting for an idle connection, or for the load generator to run), the part of
//! the latency spent before the server saw the request.
//!
//! `cargo run --release --example loadgen -- --url http://127.0.0.1:8080/webhooks/quickassist \
//!     --secret dev-secret --connections 64 --seconds 10 --body-bytes 1024`

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};

struct Args {
    url: String,
    secret: String,
    connections: usize,
    seconds: f64,
    warmup: f64,
    body_bytes: usize,
    /// Open loop at this many requests per second in total; 0 = closed loop.
    rate: f64,
    /// Keep-alive connections held idle besides the active ones.
    idle_connections: usize,
    /// Idle connections set up at once.
    idle_batch: usize,
    /// An idle connection sends a request after this many seconds without one; 0 = never.
    idle_every: f64,
    /// Width of the windows the per-interval p99 is given for; 0 = none.
    interval_secs: f64,
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
        idle_connections: 0,
        idle_batch: 256,
        idle_every: 0.0,
        interval_secs: 0.0,
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
            "--idle-connections" => a.idle_connections = v.parse().expect("--idle-connections"),
            "--idle-batch" => a.idle_batch = v.parse::<usize>().expect("--idle-batch").max(1),
            "--idle-every" => a.idle_every = v.parse().expect("--idle-every"),
            "--interval-secs" => a.interval_secs = v.parse().expect("--interval-secs"),
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

type Sender = http1::SendRequest<Full<Bytes>>;

/// A signed POST of `b` to `path`.
fn post(path: &str, authority: &str, b: Bytes, sig: String) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("x-webhook-signature", sig)
        .body(Full::new(b))
        .expect("request")
}

/// Sends one request and reads its answer whole.
async fn exchange(sender: &mut Sender, req: Request<Full<Bytes>>) -> Option<StatusCode> {
    sender.ready().await.ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// Signs distinct events of one kind (`idle`, `probe`...) as requests.
#[derive(Clone)]
struct Signer {
    tag: std::sync::Arc<str>,
    secret: std::sync::Arc<str>,
    path: std::sync::Arc<str>,
    authority: std::sync::Arc<str>,
    size: usize,
}

impl Signer {
    fn post(&self, kind: &str, i: usize) -> Request<Full<Bytes>> {
        let b = body(&format!("{}-{kind}", self.tag), i, self.size);
        let sig = hookrelay::verify::quickassist_sign(self.secret.as_bytes(), &b);
        post(&self.path, &self.authority, b, sig)
    }
}

/// A keep-alive connection held idle: its sender, the task driving it (finished
/// once the server closed it), and when its one request was answered.
struct Idle {
    sender: Sender,
    conn: JoinHandle<()>,
    answered: Instant,
}

/// Connects, completes one request, and returns the connection to hold idle.
async fn open_idle(
    authority: String,
    req: Request<Full<Bytes>>,
) -> Result<(Idle, StatusCode), String> {
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let status = exchange(&mut sender, req)
        .await
        .ok_or("no answer to the first request")?;
    let idle = Idle {
        sender,
        conn,
        answered: Instant::now(),
    };
    Ok((idle, status))
}

/// What the active connections counted in the measured window.
#[derive(Default)]
struct Tally {
    ok: u64,
    other: u64,
    server_errors: u64,
    /// (window index, latency, send lag) of each measured request, in µs; the lag
    /// is how late it was sent (open loop: waiting for an idle connection, or for
    /// the load generator itself to run).
    lat: Vec<(u32, u32, u32)>,
    /// Every answer, the warm-up's included: for CPU per request.
    answered: u64,
}

/// The value at quantile `p` of sorted `v`.
fn pct(v: &[u32], p: f64) -> u32 {
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
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
    let signer = Signer {
        tag: tag.as_str().into(),
        secret: a.secret.as_str().into(),
        path: path.as_str().into(),
        authority: authority.as_str().into(),
        size: a.body_bytes,
    };
    // The idle connections, a batch at a time, before the clock starts.
    let mut idle = Vec::with_capacity(a.idle_connections);
    let (mut idle_failed, mut idle_non_2xx, mut first_error) = (0u64, 0u64, None);
    let setup = Instant::now();
    for from in (0..a.idle_connections).step_by(a.idle_batch) {
        let mut batch = JoinSet::new();
        for i in from..(from + a.idle_batch).min(a.idle_connections) {
            batch.spawn(open_idle(authority.clone(), signer.post("idle", i)));
        }
        while let Some(r) = batch.join_next().await {
            match r.expect("idle task") {
                Ok((c, status)) => {
                    idle_non_2xx += u64::from(!status.is_success());
                    idle.push(c);
                }
                Err(e) => {
                    idle_failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let idle_setup_s = setup.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        eprintln!("warning: {idle_failed} idle connections failed to set up; the first: {e}");
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let window = a.interval_secs;
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
    // With --idle-every, each idle connection sends a request whenever it has been
    // idle that long, until the end.
    let every = Duration::from_secs_f64(a.idle_every);
    let keepers: Vec<JoinHandle<(Idle, u64, usize, bool)>> = idle
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let signer = signer.clone();
            tokio::spawn(async move {
                let (mut non_2xx, mut sent) = (0u64, 0usize);
                while !every.is_zero() && c.answered + every < end {
                    tokio::time::sleep_until((c.answered + every).into()).await;
                    let req = signer.post("keep", i * 1_000_000 + sent);
                    match exchange(&mut c.sender, req).await {
                        Some(status) => non_2xx += u64::from(!status.is_success()),
                        None => return (c, non_2xx, sent, true),
                    }
                    c.answered = Instant::now();
                    sent += 1;
                }
                (c, non_2xx, sent, false)
            })
        })
        .collect();
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
            let mut t = Tally::default();
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
                let sent = Instant::now();
                if sent >= end {
                    finished = true;
                    break;
                }
                let Some(status) = exchange(&mut sender, post(&path, &authority, b, sig)).await
                else {
                    break;
                };
                t.answered += 1;
                if now >= measure_from {
                    let w = if window > 0.0 {
                        ((now - measure_from).as_secs_f64() / window) as u32
                    } else {
                        0
                    };
                    let lag = sent.saturating_duration_since(now).as_micros() as u32;
                    t.lat.push((w, now.elapsed().as_micros() as u32, lag));
                    if status.is_success() {
                        t.ok += 1
                    } else {
                        t.other += 1
                    }
                    t.server_errors += u64::from(status.is_server_error());
                }
            }
            if !finished && Instant::now() < end {
                eprintln!("warning: a connection ran out of events or failed before the end");
            }
            t
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.expect("task");
        all.ok += t.ok;
        all.other += t.other;
        all.server_errors += t.server_errors;
        all.lat.extend(t.lat);
        all.answered += t.answered;
    }
    // The idle connections at the end: which the server closed, how long the others
    // were held idle, and whether each still answers.
    let mut idle = Vec::with_capacity(keepers.len());
    let (mut keep_failed, mut keep_requests) = (0u64, 0usize);
    for k in keepers {
        let (c, non_2xx, sent, failed) = k.await.expect("idle task");
        idle_non_2xx += non_2xx;
        keep_requests += sent;
        keep_failed += u64::from(failed);
        idle.push(c);
    }
    let checked = Instant::now();
    let idle_closed = idle
        .iter()
        .filter(|c| c.conn.is_finished() || c.sender.is_closed())
        .count();
    let held = |pick: fn(f64, f64) -> f64| {
        idle.iter()
            .map(|c| (checked - c.answered).as_secs_f64())
            .reduce(pick)
            .unwrap_or(0.0)
    };
    let (quiet_min_s, quiet_max_s) = (held(f64::min), held(f64::max));
    let mut probes = JoinSet::new();
    for (i, mut c) in idle.into_iter().enumerate() {
        let req = signer.post("probe", i);
        probes.spawn(async move { exchange(&mut c.sender, req).await });
    }
    let (mut probe_ok, mut probe_failed) = (0u64, 0u64);
    while let Some(r) = probes.join_next().await {
        match r.expect("probe task") {
            Some(s) if s.is_success() => probe_ok += 1,
            Some(_) => idle_non_2xx += 1,
            None => probe_failed += 1,
        }
    }
    let mut lat: Vec<u32> = all.lat.iter().map(|&(_, l, _)| l).collect();
    lat.sort_unstable();
    let mut lag: Vec<u32> = all.lat.iter().map(|&(_, _, g)| g).collect();
    lag.sort_unstable();
    let mut out = serde_json::json!({
        "mode": if a.rate > 0.0 { "open" } else { "closed" },
        "requests": all.ok + all.other,
        "answered": all.answered,
        "ok": all.ok,
        "non_2xx": all.other,
        "http_5xx": all.server_errors,
        "rps": ((all.ok + all.other) as f64 / a.seconds).round(),
        "p50_us": pct(&lat, 0.5),
        "p99_us": pct(&lat, 0.99),
        "p999_us": pct(&lat, 0.999),
        "max_us": lat.last().copied().unwrap_or(0),
        "lag_p99_us": pct(&lag, 0.99),
    });
    if a.idle_connections > 0 {
        out["idle"] = serde_json::json!({
            "asked": a.idle_connections,
            "established": a.idle_connections as u64 - idle_failed,
            "failed": idle_failed,
            "first_error": first_error,
            "non_2xx": idle_non_2xx,
            "setup_s": (idle_setup_s * 100.0).round() / 100.0,
            "held_s": ((checked - start).as_secs_f64() * 100.0).round() / 100.0,
            "quiet_min_s": (quiet_min_s * 100.0).round() / 100.0,
            "quiet_max_s": (quiet_max_s * 100.0).round() / 100.0,
            "every_s": a.idle_every,
            "closed_by_server": idle_closed,
            "keep_requests": keep_requests,
            "keep_failed": keep_failed,
            "probe_ok": probe_ok,
            "probe_failed": probe_failed,
        });
    }
    if window > 0.0 {
        let n = all.lat.iter().map(|&(w, _, _)| w + 1).max().unwrap_or(0);
        let mut by: Vec<(Vec<u32>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); n as usize];
        for &(w, l, g) in &all.lat {
            by[w as usize].0.push(l);
            by[w as usize].1.push(g);
        }
        let windows: Vec<_> = by
            .iter_mut()
            .enumerate()
            .map(|(w, (v, lags))| {
                v.sort_unstable();
                lags.sort_unstable();
                serde_json::json!({
                    "from_s": w as f64 * window,
                    "n": v.len(),
                    "p99_us": pct(v, 0.99),
                    "p999_us": pct(v, 0.999),
                    "max_us": v.last().copied().unwrap_or(0),
                    "lag_p99_us": pct(lags, 0.99),
                })
            })
            .collect();
        out["interval_secs"] = window.into();
        out["intervals"] = windows.into();
    }
    println!("{out}");
}
