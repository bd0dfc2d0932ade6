//! `hookrelay check`, `sign`, and `run`'s refusals, as a user runs them.

mod common;

use std::process::{Command, Output};

use common::*;

fn hookrelay(args: &[&str], secret: Option<&str>) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args).env_remove("HOOKRELAY_TEST_SECRET");
    if let Some(s) = secret {
        cmd.env("HOOKRELAY_TEST_SECRET", s);
    }
    cmd.output().expect("run hookrelay")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_accepts_a_good_config_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, base_config(dir.path(), "", "", "")).unwrap();
    let o = hookrelay(&["check", "--config", good.to_str().unwrap()], Some("s"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok"));

    let cases: [(&str, String); 5] = [
        (
            "unknown field `colour`",
            base_config(dir.path(), "", "", "colour = \"red\""),
        ),
        (
            "max_body_bytes",
            base_config(dir.path(), "max_body_bytes = \"big\"", "", ""),
        ),
        (
            "sources.quickassist.topic",
            base_config(dir.path(), "", "", "topic = \"{nope}\""),
        ),
        (
            "spool.max_bytes",
            base_config(dir.path(), "", "max_bytes = 100\nsegment_bytes = 4096", ""),
        ),
        (
            "scheme",
            base_config(dir.path(), "", "", "")
                .replace("scheme = \"quickassist\"", "scheme = \"nope\""),
        ),
    ];
    for (needle, text) in cases {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let o = hookrelay(&["check", "--config", bad.to_str().unwrap()], Some("s"));
        assert_eq!(o.status.code(), Some(78), "{needle}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{needle} not in: {}",
            stderr(&o)
        );
        // `run` refuses the same file with the same message.
        let o = hookrelay(&["run", "--config", bad.to_str().unwrap()], Some("s"));
        assert_eq!(o.status.code(), Some(78), "{needle}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{needle} not in: {}",
            stderr(&o)
        );
    }
}

#[test]
fn missing_or_empty_secret_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, base_config(dir.path(), "", "", "")).unwrap();
    let path = config.to_str().unwrap();
    for secret in [None, Some("")] {
        for cmd in ["check", "run"] {
            let o = hookrelay(&[cmd, "--config", path], secret);
            assert_eq!(
                o.status.code(),
                Some(78),
                "{cmd} with secret {secret:?}: {}",
                stderr(&o)
            );
            let e = stderr(&o);
            assert!(e.contains("sources.quickassist.secret_env"), "{e}");
            assert!(e.contains("HOOKRELAY_TEST_SECRET"), "{e}");
        }
    }
}

#[test]
fn sign_prints_the_header_a_sender_would_send() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, base_config(dir.path(), "", "", "")).unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, DOC_EXAMPLE).unwrap();
    let o = hookrelay(
        &[
            "sign",
            "--config",
            config.to_str().unwrap(),
            "--source",
            "quickassist",
            "--body",
            body.to_str().unwrap(),
        ],
        Some(SECRET),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("x-webhook-signature: {}\n", sign(DOC_EXAMPLE.as_bytes()))
    );
    let o = hookrelay(
        &[
            "sign",
            "--config",
            config.to_str().unwrap(),
            "--source",
            "nope",
            "--body",
            body.to_str().unwrap(),
        ],
        Some(SECRET),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown source 'nope'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn two_processes_cannot_share_a_spool() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Relay::start(dir.path());
    let o = Command::new(binary())
        .args(["run", "--config"])
        .arg(dir.path().join("hookrelay.toml"))
        .env("HOOKRELAY_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("in use by another hookrelay process"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_quickstart_config_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = Command::new(binary())
        .args([
            "check",
            "--config",
            &format!("{root}/examples/quickstart.toml"),
        ])
        .env("QUICKASSIST_WEBHOOK_SECRET", "dev-secret")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// An example config with a broker password from `password_var`: valid with the
/// variable set, refused (naming the variable) without it.
fn check_broker_example(file: &str, password_var: &str) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/examples/{file}"))
        .unwrap()
        .replace(
            "/etc/hookrelay/quickassist-secret",
            secret.to_str().unwrap(),
        );
    let config = dir.path().join(file);
    std::fs::write(&config, text).unwrap();
    let check = |with_password: bool| {
        let mut cmd = Command::new(binary());
        cmd.args(["check", "--config", config.to_str().unwrap()]);
        if with_password {
            cmd.env(password_var, "pw");
        } else {
            cmd.env_remove(password_var);
        }
        cmd.output().unwrap()
    };
    let o = check(true);
    assert!(o.status.success(), "{file}: {}", stderr(&o));
    let o = check(false);
    assert!(!o.status.success(), "{file} passed without {password_var}");
    assert!(stderr(&o).contains(password_var), "{}", stderr(&o));
}

#[test]
fn the_kafka_example_config_is_valid() {
    check_broker_example("kafka.toml", "KAFKA_PASSWORD");
}

#[test]
fn the_rabbitmq_example_config_is_valid() {
    check_broker_example("rabbitmq.toml", "RABBITMQ_PASSWORD");
}

#[test]
fn the_providers_example_config_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/examples/providers.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut cmd = Command::new(binary());
    cmd.args(["check", "--config", &path]);
    for line in text.lines() {
        if let Some(var) = line.split('"').nth(1).filter(|_| {
            line.trim_start().starts_with("secret_env")
                || line.trim_start().starts_with("verify_token_env")
        }) {
            // Standard Webhooks secrets are base64 keys.
            cmd.env(
                var,
                if var == "SVIX_SECRET" {
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                } else {
                    "s3cret"
                },
            );
        }
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("16 source(s)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The 1-based line of `text` that starts with `needle` (trimmed), for the line
/// numbers `check` must print.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle} not in:\n{text}"))
}

/// Three mistakes in three sections, of three kinds (a value of the wrong type,
/// an unknown key, a cross-field check): one run of `check` reports all of them,
/// each as `file:line: key: why`, and exits 78 (EX_CONFIG); `run` refuses the
/// file listing the same.
#[test]
fn check_reports_every_problem_at_once_with_its_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = base_config(
        dir.path(),
        "max_body_bytes = \"big\"",
        "",
        "colour = \"red\"",
    )
    .replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:18080\"",
    )
    .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:18080\"");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, &text).unwrap();
    let file = path.to_str().unwrap();
    let want = [
        format!(
            "{file}:{}: server.admin_listen: must differ from server.listen",
            line_of(&text, "admin_listen")
        ),
        format!(
            "{file}:{}: server.max_body_bytes: invalid type: string \"big\"",
            line_of(&text, "max_body_bytes")
        ),
        format!(
            "{file}:{}: sources.quickassist.colour: unknown field `colour`",
            line_of(&text, "colour")
        ),
    ];
    for cmd in ["check", "run"] {
        let o = hookrelay(&[cmd, "--config", file], Some("s"));
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(78), "{cmd}: {e}");
        assert!(e.contains(&format!("3 problems in {file}")), "{cmd}: {e}");
        for line in &want {
            assert!(
                e.lines().any(|l| l.starts_with(line.as_str())),
                "{cmd}: {line} not in:\n{e}"
            );
        }
        assert!(!String::from_utf8_lossy(&o.stdout).contains(": ok"));
    }
}

/// A file that is not there is said once (it was said twice: the error's own
/// message and its source), with exit 78 like any configuration error.
#[test]
fn a_missing_config_file_is_reported_once() {
    let o = hookrelay(&["check", "--config", "/nonexistent/hookrelay.toml"], None);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{e}");
    assert_eq!(
        e,
        "hookrelay: cannot read /nonexistent/hookrelay.toml: No such file or directory (os error 2)\n"
    );
}

/// `${VAR}` in a value is used as written (hookrelay expands no variables): the
/// file is valid, but `check` warns, naming the key and line and the `_env` key
/// to use instead.
#[test]
fn check_warns_of_a_variable_written_in_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let sink = "[sinks.kafka]\nbrokers = \"127.0.0.1:1\"\n[sinks.kafka.librdkafka]\n\"sasl.password\" = \"${KAFKA_PASSWORD}\"\n";
    let text = config_with_sink(dir.path(), "", "", sink, "");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let file = path.to_str().unwrap();
    let o = hookrelay(&["check", "--config", file], Some("s"));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let warning = format!(
        "warning: {file}:{}: sinks.kafka.librdkafka.\"sasl.password\": \"${{KAFKA_PASSWORD}}\" is used as written",
        line_of(&text, "\"sasl.password\"")
    );
    assert!(out.contains(&warning), "{warning} not in:\n{out}");
    assert!(
        out.contains("librdkafka_from_env instead: \"sasl.password\" = \"KAFKA_PASSWORD\""),
        "{out}"
    );
}

/// What `run` would fail on as it starts is refused by `check` already: a spool
/// directory (or a file sink's) that cannot be created, here under a regular
/// file, and a librdkafka property librdkafka does not know.
#[test]
fn check_refuses_what_run_would_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let spool = blocker.join("spool");
    let events = blocker.join("events");
    let sink = format!(
        "[sinks.file]\ndir = \"{}\"\n[sinks.kafka]\nbrokers = \"127.0.0.1:1\"\n[sinks.kafka.librdkafka]\n\"no.such.property\" = \"1\"\n",
        events.display()
    );
    let text = config_with_sink(dir.path(), "", "", &sink, "sinks = [\"file\", \"kafka\"]")
        .replace(
            &format!("dir = \"{}\"", dir.path().join("spool").display()),
            &format!("dir = \"{}\"", spool.display()),
        );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let file = path.to_str().unwrap();
    let o = hookrelay(&["check", "--config", file], Some("s"));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{e}");
    let spool_line = text
        .lines()
        .position(|l| l.contains(&spool.display().to_string()))
        .unwrap()
        + 1;
    for want in [
        format!(
            "{file}:{spool_line}: spool.dir: cannot create {}: {} is not a directory",
            spool.display(),
            blocker.display()
        ),
        format!(
            "{file}:{}: sinks.file.dir: cannot create {}",
            line_of(&text, &format!("dir = \"{}\"", events.display())),
            events.display()
        ),
        format!(
            "{file}:{}: sinks.kafka.librdkafka.\"no.such.property\": No such configuration property",
            line_of(&text, "\"no.such.property\"")
        ),
    ] {
        assert!(
            e.lines().any(|l| l.starts_with(&want)),
            "{want} not in:\n{e}"
        );
    }
    assert!(!blocker.join("spool").exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "check left files behind"
    );
}

/// `check --connect` says `PATH: ok` only once every broker answered: a broker
/// that cannot be reached is reported, with no ok before or after, and exit 78.
#[test]
fn check_connect_prints_no_ok_when_a_broker_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let sink = "[sinks.rabbitmq]\nuri = \"amqp://guest:guest@127.0.0.1:1/%2f\"\nconnect_timeout_ms = 2000\n";
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config_with_sink(dir.path(), "", "", sink, "")).unwrap();
    let file = path.to_str().unwrap();
    let o = hookrelay(&["check", "--config", file], Some("s"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": ok"));
    let o = hookrelay(&["check", "--connect", "--config", file], Some("s"));
    let (out, e) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert_eq!(o.status.code(), Some(78), "{out}{e}");
    assert!(!out.contains("ok"), "{out}");
    assert!(
        e.contains("sinks.rabbitmq: cannot connect to amqp://127.0.0.1:1/"),
        "{e}"
    );
    assert!(e.contains("1 sink(s) could not be reached"), "{e}");
}

#[test]
fn health_subcommand_reports_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let ok = Command::new(binary())
        .args(["health", "--admin", &relay.admin.to_string()])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Bound, not listening, for the whole test: connections are refused.
    let (_reserved, closed) = refused_port();
    let down = Command::new(binary())
        .args(["health", "--admin", &closed.to_string()])
        .output()
        .unwrap();
    assert!(!down.status.success());
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

fn inspect(dir: &std::path::Path, json: bool) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(["spool", "inspect", "--dir"]).arg(dir);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

/// `spool inspect` on a sink's backlog left by a stopped instance: what a start
/// would deliver, counted by type, with nothing on disk changed; refused while a
/// process holds the spool, whether the instance or anyone holding its LOCK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_inspect_reports_a_stopped_backlog_and_refuses_a_held_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spool = d.join("spool");
    let (_held, closed) = refused_port();
    // A broker that is not there: everything stays in the backlog.
    let sink = format!(
        "[sinks.bus]\ntype = \"rabbitmq\"\nuri = \"amqp://guest:guest@{closed}/%2f\"\nconnect_timeout_ms = 200\n"
    );
    let mut relay = Relay::start_with_sink(d, &sink, "sink = \"bus\"");
    async fn post(relay: &Relay, range: std::ops::Range<usize>) {
        for i in range {
            let (status, body) = relay
                .post(&event_body(EVENT_TYPES[i % 2], &format!("m-{i}")))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    post(&relay, 0..5).await;

    let o = tokio::task::block_in_place(|| inspect(&spool, false));
    assert!(!o.status.success(), "inspected a running instance's spool");
    assert!(
        stderr(&o).contains(&format!(
            "{} is held by a running hookrelay (its LOCK is taken): use `hookrelay admin backlog` instead",
            spool.display()
        )),
        "{}",
        stderr(&o)
    );
    relay.kill();

    let before = snapshot(d);
    let o = tokio::task::block_in_place(|| inspect(&spool, true));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bus = &v["spools"][0];
    assert_eq!(v["spools"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(bus["name"], "bus");
    assert_eq!(bus["pending"], 5, "{v:#}");
    assert_eq!(bus["lost_records"], 0);
    assert!(bus["oldest_pending"].as_str().unwrap().ends_with('Z'));
    let by_type: Vec<(String, u64)> = bus["pending_by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["source"], "quickassist");
            (
                t["event_type"].as_str().unwrap().to_string(),
                t["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_type,
        [
            (EVENT_TYPES[0].to_string(), 3),
            (EVENT_TYPES[1].to_string(), 2)
        ]
    );
    let o = tokio::task::block_in_place(|| inspect(&spool.join("bus"), false));
    assert!(o.status.success(), "{}", stderr(&o));
    let human = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "bus (",
        "5 event(s)",
        "quickassist",
        EVENT_TYPES[0],
        "RECORDS",
    ] {
        assert!(human.contains(needle), "{needle} not in:\n{human}");
    }
    assert_eq!(snapshot(d), before, "inspect changed the spool");

    // Anyone holding the backlog's LOCK keeps inspect out.
    let lock = std::fs::File::open(spool.join("bus").join("LOCK")).unwrap();
    lock.try_lock().unwrap();
    let o = tokio::task::block_in_place(|| inspect(&spool, false));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is held by a running hookrelay"),
        "{}",
        stderr(&o)
    );
    drop(lock);

    // After more events arrived, the report has them.
    relay.restart();
    post(&relay, 5..8).await;
    relay.kill();
    let o = tokio::task::block_in_place(|| inspect(&spool, true));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spools"][0]["pending"], 8, "{v:#}");
}

/// A stand-in for a running instance's admin API, answering as the contract
/// says, and keeping every request it got.
mod stub {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use serde_json::{Value, json};

    pub const TOKEN: &str = "t0ken";
    /// Dead letter 2's body: not UTF-8, so it travels as hex.
    pub const BINARY_BODY: &[u8] = &[0x00, 0xff, 0x10, b'\n', 0x80, b'x'];
    pub const TEXT_BODY: &str = "{\"event\":\"message.read\",\n  \"n\": 1}";

    #[derive(Debug, Clone)]
    pub struct Seen {
        pub method: String,
        pub path: String,
        pub auth: Option<String>,
        pub body: Vec<u8>,
    }

    impl Seen {
        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    pub struct Stub {
        pub url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        _runtime: tokio::runtime::Runtime,
    }

    impl Stub {
        /// `off`: every request gets a bare 404, as from an instance without the API.
        pub fn start(off: bool) -> Stub {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let polls = Arc::new(Mutex::new(HashMap::new()));
            let log = seen.clone();
            runtime.spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (log, polls) = (log.clone(), polls.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (log, polls) = (log.clone(), polls.clone());
                            async move {
                                Ok::<_, hyper::Error>(answer(req, off, &log, &polls).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Stub {
                url,
                seen,
                _runtime: runtime,
            }
        }

        pub fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        pub fn last(&self) -> Seen {
            self.seen().pop().expect("no request reached the stub")
        }
    }

    pub fn backlog() -> Value {
        json!({
            "sinks": [
                {"sink": "bus", "kind": "rabbitmq", "state": "retrying", "paused": false,
                 "events": 123, "bytes": 4567, "oldest_age_secs": 1.5, "in_flight": 10,
                 "last_error": "connection refused", "last_error_age_secs": 3.2},
                {"sink": "local", "kind": "file", "state": "connected", "paused": false,
                 "events": 0, "bytes": 0, "oldest_age_secs": null, "in_flight": 0,
                 "last_error": null, "last_error_age_secs": null}
            ],
            "archive": {"bytes": 1048576, "max_bytes": 10485760, "segments": 3},
            "dead_letters": {"count": 2, "bytes": 300}
        })
    }

    pub fn dead_letter(id: &str) -> Value {
        json!({"id": id, "sink": if id == "1" { json!("bus") } else { Value::Null },
               "source": "qa", "event_type": "message.read", "event_id": format!("ev-{id}"),
               "topic": "qa.message.read", "key": "k", "content_type": "application/json",
               "reason": format!("broker refused it ({id})"),
               "received_at": "2024-01-15T10:30:00Z", "dead_lettered_at": "2024-01-15T10:31:00.5Z",
               "size": 123})
    }

    fn reply(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .unwrap()
    }

    async fn answer(
        req: Request<hyper::body::Incoming>,
        off: bool,
        log: &Mutex<Vec<Seen>>,
        polls: &Mutex<HashMap<String, u32>>,
    ) -> Response<Full<Bytes>> {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
        log.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            auth: auth.clone(),
            body: body.clone(),
        });
        if off {
            return Response::builder()
                .status(404)
                .body(Full::new(Bytes::from_static(b"not found")))
                .unwrap();
        }
        if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "bad or missing token"}),
            );
        }
        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
        let ok = |v| reply(StatusCode::OK, v);
        match (method.as_str(), route) {
            ("GET", "/admin/backlog") => ok(backlog()),
            ("GET", "/admin/dead-letters") if query.contains("after=2") => {
                ok(json!({"dead_letters": [dead_letter("2")], "next": null}))
            }
            ("GET", "/admin/dead-letters") => {
                ok(json!({"dead_letters": [dead_letter("1")], "next": "2"}))
            }
            ("GET", "/admin/dead-letters/1") => {
                let mut v = dead_letter("1");
                v["headers"] = json!({"hookrelay-id": "ev-1", "x-trace": "abc"});
                v["body"] = json!(TEXT_BODY);
                ok(v)
            }
            ("GET", "/admin/dead-letters/2") => {
                let mut v = dead_letter("2");
                v["headers"] = json!({});
                v["body_hex"] = json!(hex::encode(BINARY_BODY));
                ok(v)
            }
            ("GET", p) if p.starts_with("/admin/dead-letters/") => reply(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no dead letter {}", &p[20..])}),
            ),
            ("POST", "/admin/dead-letters/redrive") => {
                let asked: Value = serde_json::from_slice(&body).unwrap();
                if asked["event"] == "broken" {
                    ok(json!({"redriven": 1, "already_removed": 0, "confirmed": 0,
                              "failed": [{"id": "9", "error": "sink 'nope' is not configured"}]}))
                } else {
                    ok(json!({"redriven": 2, "already_removed": 1, "confirmed": 2, "failed": []}))
                }
            }
            ("POST", "/admin/sinks/bus/pause") => ok(json!({"sink": "bus", "paused": true})),
            ("POST", "/admin/sinks/bus/resume") => ok(json!({"sink": "bus", "paused": false})),
            ("POST", "/admin/replay") => {
                let asked: Value = serde_json::from_slice(&body).unwrap();
                let job = if asked["source"] == "fail" { "8" } else { "7" };
                polls.lock().unwrap().insert(job.to_string(), 0);
                reply(
                    StatusCode::ACCEPTED,
                    json!({"job": job, "state": "running"}),
                )
            }
            ("GET", p) if p.starts_with("/admin/replay/") => {
                let job = &p["/admin/replay/".len()..];
                let n = {
                    let mut polls = polls.lock().unwrap();
                    let n = polls.entry(job.to_string()).or_insert(0);
                    *n += 1;
                    *n
                };
                let (state, error, finished) = match (job, n) {
                    (_, 1 | 2) => ("running", Value::Null, Value::Null),
                    ("8", _) => (
                        "failed",
                        json!("broker gone"),
                        json!("2024-01-15T10:30:09Z"),
                    ),
                    _ => ("done", Value::Null, json!("2024-01-15T10:30:09Z")),
                };
                ok(
                    json!({"job": job, "state": state, "scanned": 10 * n, "matched": 5 * n,
                          "published": 5 * n, "failed": 0, "error": error,
                          "started_at": "2024-01-15T10:30:00Z", "finished_at": finished}),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                json!({"error": "no such admin path"}),
            ),
        }
    }
}

/// Runs `hookrelay admin --url URL ARGS` with the token variable set to `token`.
fn admin(stub: &stub::Stub, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(["admin", "--url", &stub.url])
        .args(args)
        .env_remove("HOOKRELAY_ADMIN_URL")
        .env_remove("HOOKRELAY_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("HOOKRELAY_ADMIN_TOKEN", t);
    }
    cmd.output().expect("run hookrelay admin")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn admin_backlog_and_dead_letters_print_tables_and_the_servers_json() {
    let stub = stub::Stub::start(false);
    let ok = |args: &[&str]| {
        let o = admin(&stub, args, Some(stub::TOKEN));
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };

    let human = stdout(&ok(&["backlog"]));
    assert_eq!(
        stub.last().auth.as_deref(),
        Some("Bearer t0ken"),
        "the token goes as a bearer token"
    );
    let lines: Vec<&str> = human.lines().collect();
    assert!(lines[0].starts_with("SINK "), "{human}");
    for needle in [
        "rabbitmq",
        "retrying",
        "4.5 KiB",
        "1.5s",
        "connection refused (3.2s ago)",
    ] {
        assert!(lines[1].contains(needle), "{needle} not in: {human}");
    }
    // Columns line up.
    let col = |line: &str, word: &str| line.find(word).unwrap();
    assert_eq!(col(lines[0], "KIND"), col(lines[1], "rabbitmq"), "{human}");
    assert_eq!(col(lines[0], "KIND"), col(lines[2], "file"), "{human}");
    assert_eq!(col(lines[0], "EVENTS"), col(lines[1], "123"), "{human}");
    assert!(
        human.contains("archive: 1.0 MiB of 10.0 MiB in 3 segment(s)"),
        "{human}"
    );
    assert!(human.contains("dead letters: 2 (300 B)"), "{human}");

    let json = stdout(&ok(&["--json", "backlog"]));
    assert!(
        json.contains("\n  \"sinks\": ["),
        "not pretty-printed: {json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v, stub::backlog());

    // One page: a table, and where the next one starts.
    let o = ok(&["dead-letters", "list", "--source", "qa", "--limit", "1"]);
    assert_eq!(stub.last().path, "/admin/dead-letters?source=qa&limit=1");
    let human = stdout(&o);
    assert!(human.starts_with("ID "), "{human}");
    for needle in [
        "bus",
        "qa",
        "message.read",
        "123 B",
        "broker refused it (1)",
    ] {
        assert!(human.contains(needle), "{needle} not in: {human}");
    }
    assert!(!human.contains("broker refused it (2)"), "{human}");
    assert!(stderr(&o).contains("--after 2"), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&ok(&["dead-letters", "list", "--json"]).stdout).unwrap();
    assert_eq!(v["next"], "2");
    assert_eq!(v["dead_letters"][0], stub::dead_letter("1"));

    // Every page.
    let before = stub.seen().len();
    let human = stdout(&ok(&["dead-letters", "list", "--source", "qa", "--all"]));
    let paths: Vec<String> = stub.seen()[before..]
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/admin/dead-letters?source=qa",
            "/admin/dead-letters?source=qa&after=2"
        ]
    );
    assert!(human.contains("broker refused it (1)") && human.contains("broker refused it (2)"));
    let v: serde_json::Value =
        serde_json::from_slice(&ok(&["dead-letters", "list", "--all", "--json"]).stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"dead_letters": [stub::dead_letter("1"), stub::dead_letter("2")], "next": null})
    );

    // One dead letter: fields, headers, then the body as it is.
    let shown = stdout(&ok(&["dead-letters", "show", "1"]));
    assert!(shown.contains("reason:"), "{shown}");
    assert!(shown.contains("broker refused it (1)"), "{shown}");
    assert!(
        shown.contains("\nhookrelay-id: ev-1\nx-trace: abc\n\n"),
        "{shown}"
    );
    assert!(shown.ends_with(stub::TEXT_BODY), "{shown}");
    assert_eq!(
        ok(&["dead-letters", "show", "1", "--body-only"]).stdout,
        stub::TEXT_BODY.as_bytes()
    );
    assert_eq!(
        ok(&["dead-letters", "show", "2", "--body-only"]).stdout,
        stub::BINARY_BODY
    );
    let o = admin(&stub, &["dead-letters", "show", "99"], Some(stub::TOKEN));
    assert!(!o.status.success());
    assert_eq!(stderr(&o), "hookrelay: 404 Not Found: no dead letter 99\n");
}

#[test]
fn admin_errors_explain_a_refused_token_and_an_api_that_is_off() {
    let stub = stub::Stub::start(false);
    let o = admin(&stub, &["backlog"], None);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.starts_with("hookrelay: 401 Unauthorized: bad or missing token"),
        "{e}"
    );
    assert!(e.contains("HOOKRELAY_ADMIN_TOKEN is not set"), "{e}");
    assert_eq!(stub.last().auth, None, "no token, no header");

    let o = admin(&stub, &["backlog"], Some("wrong"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the token in HOOKRELAY_ADMIN_TOKEN was refused"),
        "{}",
        stderr(&o)
    );

    // --token-env names another variable.
    let o = Command::new(binary())
        .args([
            "admin",
            "--url",
            &stub.url,
            "--token-env",
            "OPS_TOKEN",
            "backlog",
        ])
        .env_remove("HOOKRELAY_ADMIN_TOKEN")
        .env("OPS_TOKEN", format!("{}\n", stub::TOKEN))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // --token-file reads the mounted secret (trailing newline trimmed) in place of
    // the variable: an image without a shell has no way to set one for exec.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{}\n", stub::TOKEN)).unwrap();
    let with_file = |path: &std::path::Path| {
        Command::new(binary())
            .args(["admin", "--url", &stub.url, "--token-file"])
            .arg(path)
            .arg("backlog")
            .env("HOOKRELAY_ADMIN_TOKEN", "wrong")
            .output()
            .unwrap()
    };
    let o = with_file(&file);
    assert!(o.status.success(), "{}", stderr(&o));
    let long = dir.path().join("long-token");
    std::fs::write(&long, "t".repeat(5000)).unwrap();
    let o = with_file(&long);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("longer than 4096 bytes"),
        "{}",
        stderr(&o)
    );
    let o = with_file(&dir.path().join("missing"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--token-file") && stderr(&o).contains("missing"),
        "{}",
        stderr(&o)
    );

    // HOOKRELAY_ADMIN_URL stands in for --url.
    let o = Command::new(binary())
        .args(["admin", "backlog", "--json"])
        .env("HOOKRELAY_ADMIN_URL", &stub.url)
        .env("HOOKRELAY_ADMIN_TOKEN", stub::TOKEN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let off = stub::Stub::start(true);
    for args in [
        &["backlog"][..],
        &["pause", "bus"],
        &["dead-letters", "list"],
    ] {
        let o = admin(&off, args, Some(stub::TOKEN));
        assert!(!o.status.success());
        assert_eq!(
            stderr(&o),
            "hookrelay: 404 Not Found: the admin API is off on this instance (no admin.token_env / admin.token_file configured)\n"
        );
    }

    let (_reserved, closed) = refused_port();
    let o = Command::new(binary())
        .args(["admin", "--url", &format!("http://{closed}"), "backlog"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    let o = Command::new(binary())
        .args(["admin", "--url", "https://127.0.0.1:9090", "backlog"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("plain http"), "{}", stderr(&o));
}

#[test]
fn admin_redrive_sends_ids_or_a_filter_and_pause_resume_name_the_sink() {
    let stub = stub::Stub::start(false);
    let run = |args: &[&str]| admin(&stub, args, Some(stub::TOKEN));

    let o = run(&[
        "dead-letters",
        "redrive",
        "--id",
        "1",
        "--id",
        "2",
        "--to-sink",
        "archive",
        "--wait",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = stub.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/admin/dead-letters/redrive")
    );
    assert_eq!(
        seen.json(),
        serde_json::json!({"ids": ["1", "2"], "to_sink": "archive", "wait_secs": 5})
    );
    assert!(
        stdout(&o).contains(
            "redriven 2, already removed 1, confirmed 2, dead-lettered again 0, failed 0"
        ),
        "{}",
        stdout(&o)
    );

    let o = run(&[
        "dead-letters",
        "redrive",
        "--source",
        "qa",
        "--reason",
        "broker refused",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stub.last().json(),
        serde_json::json!({"source": "qa", "reason": "broker refused"})
    );
    let o = run(&["dead-letters", "redrive", "--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stub.last().json(), serde_json::json!({"all": true}));

    // Nothing chosen: refused before any request; ids and a filter do not mix.
    let before = stub.seen().len();
    assert!(!run(&["dead-letters", "redrive"]).status.success());
    assert!(
        !run(&["dead-letters", "redrive", "--id", "1", "--source", "qa"])
            .status
            .success()
    );
    assert_eq!(stub.seen().len(), before);

    // Some not redriven: listed, and the exit says so.
    let o = run(&["dead-letters", "redrive", "--event", "broken"]);
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains("sink 'nope' is not configured"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("1 dead letter(s) were not redriven"),
        "{}",
        stderr(&o)
    );

    let o = run(&["pause", "bus"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stub.last().path, "/admin/sinks/bus/pause");
    assert!(stdout(&o).starts_with("bus: paused"), "{}", stdout(&o));
    let o = run(&["resume", "bus", "--json"]);
    assert_eq!(stub.last().path, "/admin/sinks/bus/resume");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"sink": "bus", "paused": false}));
}

#[test]
fn admin_replay_waits_until_the_job_ends_and_fails_when_it_does() {
    let stub = stub::Stub::start(false);
    let run = |args: &[&str]| admin(&stub, args, Some(stub::TOKEN));

    let o = run(&[
        "replay",
        "--since",
        "2024-01-15T10:30:00Z",
        "--until",
        "2024-01-15T12:30:00+01:00",
        "--event",
        "message.read",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stub.last().json(),
        serde_json::json!({"since": "2024-01-15T10:30:00.000Z", "until": "2024-01-15T11:30:00.000Z",
                           "event": "message.read"})
    );
    assert!(stdout(&o).contains("replay 7: started"), "{}", stdout(&o));

    let before = stub.seen().len();
    let o = run(&["replay", "--since", "15m", "--source", "qa", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = stub.seen()[before..].to_vec();
    let asked = seen[0].json();
    let at = |k: &str| humantime::parse_rfc3339(asked[k].as_str().unwrap()).unwrap();
    let span = at("until").duration_since(at("since")).unwrap();
    assert!(span.as_secs().abs_diff(900) <= 1, "{asked}");
    assert_eq!(asked["source"], "qa");
    let polls = seen.iter().filter(|s| s.path == "/admin/replay/7").count();
    assert_eq!(polls, 3, "polled until no longer running: {seen:?}");
    let out = stdout(&o);
    assert!(
        out.contains("replay 7: running: scanned 10, matched 5"),
        "{out}"
    );
    assert!(
        out.contains("replay 7: done: scanned 30, matched 15, published 15, failed 0, took 9.0s"),
        "{out}"
    );

    let o = run(&[
        "replay", "--since", "1h", "--source", "fail", "--wait", "--json",
    ]);
    assert!(!o.status.success(), "a failed replay exits non-zero");
    assert!(
        stderr(&o).contains("replay 8 failed: broker gone"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "failed");

    let o = run(&["replay", "status", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("replay 7: done"), "{}", stdout(&o));
    assert!(
        !run(&["replay", "--until", "1h"]).status.success(),
        "--since is required"
    );
}
