//! Black-box harness: runs the real `hookrelay` binary on ephemeral ports and
//! talks to it over real TCP.
#![allow(dead_code)]

pub mod amqp;
pub mod kafka;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const SECRET: &str = "test-secret";

/// TheQuickAssist documentation's example, byte for byte as printed (2-space indent).
pub const DOC_EXAMPLE: &str = r#"{
  "event": "message.delivered",
  "timestamp": "2024-01-15T10:30:00Z",
  "data": {
    "messageId": "msg_123456789",
    "recipient": "+1234567890",
    "template": "welcome_message",
    "deliveredAt": "2024-01-15T10:30:00Z",
    "deviceType": "android"
  },
  "webhookId": "whk_abc123"
}"#;

pub const EVENT_TYPES: [&str; 4] = [
    "message.delivered",
    "message.read",
    "message.failed",
    "template.status_update",
];

pub fn sign(body: &[u8]) -> String {
    hookrelay::verify::quickassist_sign(SECRET.as_bytes(), body)
}

/// A compact TheQuickAssist event with a unique message id.
pub fn event_body(event: &str, message_id: &str) -> String {
    format!(
        r#"{{"event":"{event}","timestamp":"2024-01-15T10:30:00Z","data":{{"messageId":"{message_id}","recipient":"+1234567890"}},"webhookId":"whk_abc123"}}"#
    )
}

/// The config every test starts from; `extra` is appended (more sources, overrides).
pub fn base_config(data: &Path, server_extra: &str, spool_extra: &str, extra: &str) -> String {
    config_with_sink(
        data,
        server_extra,
        spool_extra,
        &format!(
            "[sinks.file]\ndir = \"{}\"\n",
            data.join("events").display()
        ),
        extra,
    )
}

/// Like [`base_config`] with `sink` (one or more `[sinks.*]` sections) instead of the file sink.
pub fn config_with_sink(
    data: &Path,
    server_extra: &str,
    spool_extra: &str,
    sink: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{server_extra}

[spool]
dir = "{spool}"
{spool_extra}

[log]
format = "json"
level = "info"

{sink}

[dead_letter]
path = "{dead}"

[sources.quickassist]
scheme = "quickassist"
secret_env = "HOOKRELAY_TEST_SECRET"
{extra}
"#,
        spool = data.join("spool").display(),
        dead = data.join("dead-letter.jsonl").display(),
    )
}

pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub data: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// The binary under test; `HOOKRELAY_BIN` runs the same tests against another
/// build (an older commit, to see a test fail before its fix).
pub fn binary() -> String {
    std::env::var("HOOKRELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hookrelay").to_string())
}

impl Relay {
    /// Writes `config_text` into `data/hookrelay.toml` and starts the binary on it.
    pub fn start_with(data: &Path, config_text: &str) -> Relay {
        std::fs::create_dir_all(data).unwrap();
        let config = data.join("hookrelay.toml");
        std::fs::write(&config, config_text).unwrap();
        Self::spawn(data, &config)
    }

    /// Starts with `sink` (`[sinks.*]` sections) instead of the file sink and
    /// `source_extra` appended to the quickassist source.
    pub fn start_with_sink(data: &Path, sink: &str, source_extra: &str) -> Relay {
        Self::start_with(data, &config_with_sink(data, "", "", sink, source_extra))
    }

    pub fn start(data: &Path) -> Relay {
        Self::start_with(data, &base_config(data, "", "", ""))
    }

    pub fn spawn(data: &Path, config: &Path) -> Relay {
        Self::spawn_env(data, config, &[])
    }

    /// Starts with extra environment variables (fault injection).
    pub fn spawn_env(data: &Path, config: &Path, env: &[(&str, &str)]) -> Relay {
        Self::spawn_limited(data, config, env, None)
    }

    /// Starts with extra environment variables and, when given, a limit on open
    /// files (soft and hard) set in the child before it runs.
    pub fn spawn_limited(
        data: &Path,
        config: &Path,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Relay {
        let mut cmd = Command::new(binary());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("HOOKRELAY_TEST_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hookrelay");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = tx.send((
                        v["webhooks"].as_str().unwrap_or_default().to_string(),
                        v["admin"].as_str().unwrap_or_default().to_string(),
                    ));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (addr, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "hookrelay did not start; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Relay {
            child,
            addr: addr.parse().unwrap(),
            admin: admin.parse().unwrap(),
            config: config.to_path_buf(),
            data: data.to_path_buf(),
            logs,
        }
    }

    /// SIGKILL: the crash case.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        signal(self.child.id(), "TERM");
        self.wait_exit(within).unwrap_or_else(|| {
            panic!(
                "hookrelay did not exit within {within:?} of SIGTERM\n{}",
                self.logs()
            )
        })
    }

    /// The exit status once the process has exited on its own, `None` if it is
    /// still running after `within`. Blocking: in an async test, call it inside
    /// `tokio::task::block_in_place`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        eventually_blocking(within, || self.child.try_wait().unwrap())
    }

    pub fn restart(&mut self) {
        self.kill();
        *self = Relay::spawn(&self.data.clone(), &self.config.clone());
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    pub async fn post(&self, body: &str) -> (StatusCode, serde_json::Value) {
        let mut c = self.connect().await;
        let r = c.post_signed(body).await;
        (r.status, r.json())
    }

    pub async fn metrics(&self) -> String {
        let mut c = Client::connect(self.admin).await;
        let r = c.get("/metrics").await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// Every line the file sink wrote, across topics.
    pub fn events(&self) -> Vec<serde_json::Value> {
        read_events(&self.data.join("events"))
    }

    /// Waits until the file sink holds every id in `ids`; panics with the missing ones.
    pub fn wait_for_ids(&self, ids: &HashSet<String>, within: Duration) -> Vec<serde_json::Value> {
        let mut missing = Vec::new();
        eventually_blocking(within, || {
            let events = self.events();
            let seen: HashSet<String> = events.iter().map(event_id).collect();
            missing = ids.iter().filter(|i| !seen.contains(*i)).cloned().collect();
            missing.is_empty().then_some(events)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} acked events never reached the sink within {within:?}, e.g. {:?}\nlogs:\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                self.logs()
            )
        })
    }

    /// Waits until the spool holds nothing unconfirmed (`hookrelay_spool_events`
    /// is 0): everything accepted so far has reached the sink, and no retry of it
    /// can still come. `None` if that did not happen within `within`.
    pub async fn wait_drained(&self, within: Duration) -> Option<()> {
        eventually(within, || async {
            (metric_sum(&self.metrics().await, "hookrelay_spool_events") == 0.0).then_some(())
        })
        .await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

pub fn event_id(line: &serde_json::Value) -> String {
    line["headers"]["hookrelay-id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn read_events(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            // A line being written right now may be incomplete; the next poll sees it whole.
            if let Ok(v) = serde_json::from_str(line) {
                out.push(v);
            }
        }
    }
    out
}

/// Value of one sample in Prometheus text, e.g. `metric(&text, "x_total{a=\"b\"}")`;
/// panics when the series is not there (a missing series is never read as 0).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("series {series} not found in:\n{text}"))
}

/// Writes `text` to `data/check.toml` and runs `hookrelay check [extra] --config`
/// on it: (succeeded, stdout and stderr).
pub fn check_config(data: &Path, text: &str, extra: &[&str]) -> (bool, String) {
    std::fs::create_dir_all(data).unwrap();
    let path = data.join("check.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(binary())
        .arg("check")
        .args(extra)
        .arg("--config")
        .arg(&path)
        .env("HOOKRELAY_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The sum of every sample of `name`, whatever its labels (one per sink, say);
/// panics when there is none.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse().ok()
        })
        .collect();
    assert!(!values.is_empty(), "series {name} not found in:\n{text}");
    values.iter().sum()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One HTTP/1.1 keep-alive connection; a new one after an answer that closed it
/// (failed signatures do), as an HTTP client would.
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    closed: bool,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr).await.expect("connect")
    }

    /// Like `connect`, but a refused or failed connection is an `Err`, not a panic.
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let sender = Self::open(addr).await?;
        Ok(Client {
            sender,
            addr,
            closed: false,
        })
    }

    async fn open(addr: SocketAddr) -> std::io::Result<http1::SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        if self.closed {
            // A server that is gone leaves the closed connection, whose error follows.
            if let Ok(sender) = Self::open(self.addr).await {
                self.sender = sender;
            }
            self.closed = false;
        }
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        self.closed = parts
            .headers
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        self.send(req).await.expect("request failed")
    }

    pub async fn post_signed(&mut self, body: &str) -> Reply {
        let sig = sign(body.as_bytes());
        self.request(
            "POST",
            "/webhooks/quickassist",
            &[
                ("x-webhook-signature", &sig),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
    }

    /// Like `post_signed`, to `/webhooks/{source}` (every test source signs with [`SECRET`]).
    pub async fn post_signed_to(&mut self, source: &str, body: &str) -> Reply {
        let sig = sign(body.as_bytes());
        self.request(
            "POST",
            &format!("/webhooks/{source}"),
            &[
                ("x-webhook-signature", &sig),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
    }

    /// Like `post_signed`, but a dead server is an `Err`, not a panic.
    pub async fn try_post_signed(&mut self, body: &str) -> Result<Reply, hyper::Error> {
        let sig = sign(body.as_bytes());
        let req = Request::builder()
            .method("POST")
            .uri("/webhooks/quickassist")
            .header("host", self.addr.to_string())
            .header("x-webhook-signature", sig)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        self.send(req).await
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[], b"").await
    }
}

/// Sends raw bytes, then reads the answer's status line.
pub async fn raw(addr: SocketAddr, parts: &[(&[u8], Duration)]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (bytes, pause) in parts {
        if s.write_all(bytes).await.is_err() {
            break;
        }
        tokio::time::sleep(*pause).await;
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no answer")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// How often [`eventually`] and [`eventually_blocking`] look again.
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Some`, every [`POLL`], for at most `within`;
/// `None` once the time is up.
///
/// Every test that waits goes through here, because a wait must say what it
/// waits for and fail loudly after a bound. A fixed sleep before an assertion
/// fails on a loaded machine and wastes time on an idle one; a loop without a
/// bound hangs the suite instead of failing it. The caller says what never
/// happened, with what helps to see why:
/// `eventually(..).await.unwrap_or_else(|| panic!("never blocked\n{}", relay.logs()))`.
///
/// `check` runs at once (no wait when the state is already there), and once more
/// after the last pause. The bound counts whole calls: keep each one short.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for synchronous tests and helpers: same contract, the pauses
/// block the calling thread.
pub fn eventually_blocking<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Keeps a port bound, and nobody listening on it, for as long as it lives.
pub struct ReservedPort(TcpSocket);

/// An address where connections are refused, for a test's "broker that is not
/// there". The port stays bound (not listening) while the guard lives, so no other
/// test or process can start listening there meanwhile, as it could on a port
/// bound and dropped at once. SO_REUSEADDR stays off: on Linux, a second socket
/// could otherwise bind the same port as long as neither listens.
pub fn refused_port() -> (ReservedPort, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(false).expect("SO_REUSEADDR off");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().expect("local_addr");
    (ReservedPort(socket), addr)
}

/// Starts an external server that must be told its port up front (it cannot
/// report a port-0 bind back), as `spawn(port)` does. The port is only free when
/// chosen: should something take it before the server binds, the server exits (or
/// someone else is found listening there) and another port is tried, up to five.
/// Returns once that very process listens on the port.
pub fn start_on_free_port(
    what: &str,
    within: Duration,
    mut spawn: impl FnMut(u16) -> Child,
) -> (Child, u16) {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a port")
            .port();
        let mut child = spawn(port);
        let pid = child.id();
        let outcome = eventually_blocking(within, || {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(Err(format!("exited ({status})")));
            }
            listens_on(pid, port).then_some(Ok(()))
        });
        let why = match outcome {
            Some(Ok(())) => return (child, port),
            Some(Err(why)) => why,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                // Not a port taken by someone else: the server itself is the trouble.
                assert!(
                    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                    "{what} did not listen on port {port} within {within:?}"
                );
                "someone else listens there".to_string()
            }
        };
        eprintln!("{what} on port {port}: {why}; trying another port ({attempt}/{ATTEMPTS})");
    }
    panic!("{what} did not start on any of {ATTEMPTS} ports")
}

/// Whether process `pid` holds a TCP socket listening on `port` (Linux, from /proc).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let sockets: HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                let f: Vec<&str> = line.split_whitespace().collect();
                f.len() > 9
                    && f[3] == "0A" // LISTEN
                    && f[1]
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                        == Some(port)
                    && sockets.contains(f[9])
            })
    })
}

/// How [`send_concurrently`] sends: over how many connections, how many events on
/// each, how fast.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub connections: usize,
    /// Events each connection sends before [`Sender::stop`] can end it.
    pub at_least: usize,
    /// Events each connection sends at most.
    pub at_most: usize,
    /// A pause after each answer: a steady stream rather than a burst.
    pub pause: Duration,
}

impl Load {
    /// `per_connection` events on each of `connections`, back to back;
    /// [`Sender::stop`] ends them early.
    pub fn each(connections: usize, per_connection: usize) -> Load {
        Load {
            connections,
            at_least: 0,
            at_most: per_connection,
            pause: Duration::ZERO,
        }
    }

    /// Events on each of `connections` until [`Sender::stop`] (or the relay goes away).
    pub fn until_stopped(connections: usize) -> Load {
        Load::each(connections, usize::MAX)
    }

    /// At least `n` events on each connection, whenever the stop comes.
    pub fn at_least(self, n: usize) -> Load {
        Load {
            at_least: n,
            ..self
        }
    }

    pub fn paced(self, pause: Duration) -> Load {
        Load { pause, ..self }
    }
}

/// Distinct signed events, cycling through [`EVENT_TYPES`]: message id
/// `{tag}-{connection}-{i}`.
pub fn distinct_events(tag: &str) -> impl Fn(usize, usize) -> String + Send + Sync + 'static {
    let tag = tag.to_string();
    move |c, i| event_body(EVENT_TYPES[i % 4], &format!("{tag}-{c}-{i}"))
}

/// What [`send_concurrently`] sent, once every connection is done.
#[derive(Debug, Default)]
pub struct Sent {
    /// Ids answered 200 "accepted": the relay's promises.
    pub acked: HashSet<String>,
    /// Answers by status, with the body's `status` for 200s: `"200 accepted"`,
    /// `"200 duplicate"`, `"503"`.
    pub statuses: BTreeMap<String, usize>,
    /// Connections that could not connect or failed mid-request (the relay was
    /// killed, say); each stopped sending there.
    pub errors: Vec<String>,
}

impl Sent {
    /// Panics unless every answer was 200 "accepted". Failed connections are
    /// allowed: what was not answered is no promise either way.
    pub fn assert_no_refusals(&self, logs: &str) {
        assert!(
            self.statuses.keys().all(|s| s == "200 accepted"),
            "answers {:?}\n{logs}",
            self.statuses
        );
    }

    /// Panics unless every event sent was answered 200 "accepted".
    pub fn assert_all_accepted(&self, logs: &str) {
        self.assert_no_refusals(logs);
        assert!(
            self.errors.is_empty(),
            "{} connections failed, e.g. {:?}\n{logs}",
            self.errors.len(),
            &self.errors[..self.errors.len().min(5)]
        );
    }
}

/// A load [`send_concurrently`] started, running in the background.
pub struct Sender {
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Sent>>,
}

impl Sender {
    /// Events answered 200 "accepted" so far, across connections.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` events were accepted; `None` if not within `within`.
    pub async fn wait_acked(&self, n: usize, within: Duration) -> Option<usize> {
        eventually(within, || async {
            let acked = self.acked();
            (acked >= n).then_some(acked)
        })
        .await
    }

    /// Each connection ends after its current request (and its `at_least`).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for every connection to end; what they sent, merged.
    pub async fn finish(self) -> Sent {
        let mut all = Sent::default();
        for t in self.tasks {
            let sent = t.await.expect("a sending connection panicked");
            all.acked.extend(sent.acked);
            for (s, n) in sent.statuses {
                *all.statuses.entry(s).or_default() += n;
            }
            all.errors.extend(sent.errors);
        }
        all
    }
}

/// Opens `load.connections` concurrent HTTP/1.1 keep-alive connections to `addr`
/// and posts signed events on each, `body(connection, i)` the `i`th of a
/// connection. A connection that cannot connect within 5 s, or fails mid-request,
/// stops (recorded in [`Sent::errors`]); other answers are counted and sending
/// goes on. [`Sender::finish`] waits for the result.
pub fn send_concurrently(
    addr: SocketAddr,
    load: Load,
    body: impl Fn(usize, usize) -> String + Send + Sync + 'static,
) -> Sender {
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let body = Arc::new(body);
    let tasks = (0..load.connections)
        .map(|c| {
            let (acked, stop, body) = (acked.clone(), stop.clone(), body.clone());
            tokio::spawn(async move {
                let mut sent = Sent::default();
                let mut client =
                    match tokio::time::timeout(Duration::from_secs(5), Client::try_connect(addr))
                        .await
                    {
                        Ok(Ok(client)) => client,
                        Ok(Err(e)) => {
                            sent.errors.push(format!("connection {c}: {e}"));
                            return sent;
                        }
                        Err(_) => {
                            sent.errors
                                .push(format!("connection {c}: connect timed out"));
                            return sent;
                        }
                    };
                let mut i = 0;
                while i < load.at_most && !(i >= load.at_least && stop.load(Ordering::Relaxed)) {
                    match client.try_post_signed(&body(c, i)).await {
                        Ok(r) => {
                            let json = r.json();
                            let answer = if r.status == StatusCode::OK {
                                format!("200 {}", json["status"].as_str().unwrap_or("?"))
                            } else {
                                r.status.as_u16().to_string()
                            };
                            if answer == "200 accepted" {
                                sent.acked
                                    .insert(json["id"].as_str().unwrap_or_default().to_string());
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            *sent.statuses.entry(answer).or_default() += 1;
                        }
                        Err(e) => {
                            sent.errors.push(format!("connection {c}, event {i}: {e}"));
                            break;
                        }
                    }
                    i += 1;
                    if !load.pause.is_zero() {
                        tokio::time::sleep(load.pause).await;
                    }
                }
                sent
            })
        })
        .collect();
    Sender { acked, stop, tasks }
}

/// A provider's W3C `traceparent` for the correlation tests.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `(trace id, parent span id, flags)` of a well-formed version-00 `traceparent`.
pub fn traceparent_parts(s: &str) -> Option<(String, String, String)> {
    let p: Vec<&str> = s.split('-').collect();
    let hex = |v: &str, n: usize| {
        v.len() == n && v.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    (p.len() == 4
        && p[0] == "00"
        && hex(p[1], 32)
        && hex(p[2], 16)
        && hex(p[3], 2)
        && p[1] != "0".repeat(32)
        && p[2] != "0".repeat(16))
    .then(|| (p[1].to_string(), p[2].to_string(), p[3].to_string()))
}

/// Checks what a message published for a request carried as `traceparent`: the
/// provider's trace continued under the relay's own span when `sent` is a valid
/// one, a new trace otherwise.
pub fn assert_continues(sent: Option<&str>, published: &str) {
    let (trace, span, flags) =
        traceparent_parts(published).unwrap_or_else(|| panic!("not a traceparent: {published:?}"));
    match sent.and_then(traceparent_parts) {
        Some((t, s, f)) => {
            assert_eq!(trace, t, "the provider's trace");
            assert_ne!(span, s, "the relay's own span, not the provider's");
            assert_eq!(flags, f);
        }
        None => assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "a new trace"),
    }
}

/// Posts a signed `message.read` of message id `id`, with `traceparent` when given.
pub async fn post_traced(c: &mut Client, id: &str, traceparent: Option<&str>) -> Reply {
    let body = event_body("message.read", id);
    let sig = sign(body.as_bytes());
    let mut h = vec![("x-webhook-signature", sig.as_str())];
    if let Some(tp) = traceparent {
        h.push(("traceparent", tp));
    }
    c.request("POST", "/webhooks/quickassist", &h, body.as_bytes())
        .await
}
