//! Black-box harness: runs the real `hookrelay` binary on ephemeral ports and
//! talks to it over real TCP.
#![allow(dead_code)]

pub mod amqp;
pub mod kafka;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hookrelay did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
        let deadline = Instant::now() + within;
        loop {
            let events = self.events();
            let seen: HashSet<String> = events.iter().map(event_id).collect();
            let missing: Vec<&String> = ids.iter().filter(|i| !seen.contains(*i)).collect();
            if missing.is_empty() {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} acked events never reached the sink, e.g. {:?}\nlogs:\n{}",
                    missing.len(),
                    &missing[..missing.len().min(5)],
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// Value of one sample in Prometheus text, e.g. `metric(&text, "x_total{a=\"b\"}")`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("series {series} not found in:\n{text}"))
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
        let sender = Self::open(addr).await.expect("connect");
        Client {
            sender,
            addr,
            closed: false,
        }
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
