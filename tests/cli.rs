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
