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
        assert!(!o.status.success(), "{needle}: accepted");
        assert!(
            stderr(&o).contains(needle),
            "{needle} not in: {}",
            stderr(&o)
        );
        // `run` refuses the same file with the same message.
        let o = hookrelay(&["run", "--config", bad.to_str().unwrap()], Some("s"));
        assert!(!o.status.success(), "{needle}: run started");
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
            assert!(
                !o.status.success(),
                "{cmd} with secret {secret:?} succeeded"
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
