//! The configuration's checks, each naming the key at fault.

use super::*;
use crate::config::source::AckMode;

const MINIMAL: &str = r#"
[sinks.file]
dir = "/tmp/x"
[sources.quickassist]
scheme = "quickassist"
secret_env = "HOOKRELAY_TEST_NEVER_SET"
"#;

/// The keys `validate` names, in order.
fn keys(c: &Config) -> Vec<String> {
    match c.validate() {
        Err(ConfigError::Invalid(p)) => p.iter().map(|p| p.key.clone()).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    c.validate().unwrap();
    let q = &c.sources["quickassist"];
    assert_eq!(q.topic, "{source}.{event}");
    assert_eq!(q.id_from().as_deref(), Some("/data/messageId"));
    assert_eq!(q.event_from(), "/event");
    assert_eq!(q.ack, AckMode::Durable);
    assert_eq!(c.server.max_body_bytes, 1 << 20);
    assert_eq!(c.spool.max_bytes, 1 << 30);
    assert_eq!(c.sinks.for_source(q), vec!["file"]);
}

#[test]
fn unknown_key_is_named() {
    let err = Config::parse(&format!("{MINIMAL}\nbogus_key = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus_key"), "{err}");
    let err = Config::parse("[server]\nlisten_addr = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen_addr"), "{err}");
}

#[test]
fn unknown_scheme_lists_the_known_ones() {
    let err = Config::parse(&MINIMAL.replace("\"quickassist\"\nsecret", "\"nope\"\nsecret"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("quickassist"), "{err}");
}

#[test]
fn bad_template_is_named() {
    let c = Config::parse(&format!("{MINIMAL}topic = \"{{source}}.{{evnt}}\"\n")).unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("sources.quickassist.topic"), "{err}");
    assert!(err.contains("{evnt}"), "{err}");
}

#[test]
fn topic_template_must_render_to_a_legal_topic() {
    let c = Config::parse(&format!("{MINIMAL}topic = \"wa events/{{event}}\"\n")).unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("sources.quickassist.topic"), "{err}");
    let c = Config::parse(&format!("{MINIMAL}topic = \"wa-{{event}}\"\n")).unwrap();
    c.validate().unwrap();
}

#[test]
fn missing_secret_is_a_named_error() {
    let c = Config::parse(MINIMAL).unwrap();
    let err = c.sources["quickassist"]
        .verifier("quickassist")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sources.quickassist.secret_env"), "{err}");
    assert!(err.contains("HOOKRELAY_TEST_NEVER_SET"), "{err}");
}

#[test]
fn empty_secret_file_is_rejected_and_newline_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let text = MINIMAL.replace(
        "secret_env = \"HOOKRELAY_TEST_NEVER_SET\"",
        &format!("secret_file = {:?}", path.display().to_string()),
    );
    let c = Config::parse(&text).unwrap();
    let src = &c.sources["quickassist"];
    std::fs::write(&path, "\n").unwrap();
    let err = src.verifier("quickassist").unwrap_err().to_string();
    assert!(
        err.starts_with("sources.quickassist.secret_file") && err.contains("empty"),
        "{err}"
    );
    std::fs::write(&path, "s3cret\n").unwrap();
    let v = src.verifier("quickassist").unwrap();
    let mut h = hyper::HeaderMap::new();
    let sig = crate::verify::quickassist_sign(b"s3cret", b"{}");
    h.insert("x-webhook-signature", sig.parse().unwrap());
    assert!(v.verify(&h, bytes::Bytes::from_static(b"{}"), "/").is_ok());
}

#[test]
fn scheme_options_are_checked_against_the_scheme() {
    for (extra, key) in [
        (
            "public_url = \"https://x\"\n",
            "sources.quickassist.public_url",
        ),
        (
            "token_header = \"x-token\"\n",
            "sources.quickassist.token_header",
        ),
        (
            "event_from = \"nowhere\"\n",
            "sources.quickassist.event_from",
        ),
        (
            "rate_limit = { per_second = 0.0, burst = 1 }\n",
            "sources.quickassist.rate_limit",
        ),
        (
            "allowed_cidrs = [\"10.0.0.0/33\"]\n",
            "sources.quickassist.allowed_cidrs",
        ),
    ] {
        let c = Config::parse(&format!("{MINIMAL}{extra}")).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with(key), "{extra}: {err}");
    }
    let twilio = MINIMAL.replace("\"quickassist\"\nsecret", "\"twilio\"\nsecret");
    let err = Config::parse(&twilio)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("sources.quickassist.public_url"), "{err}");
    let meta = MINIMAL.replace("\"quickassist\"\nsecret", "\"meta\"\nsecret");
    let err = Config::parse(&meta)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("sources.quickassist.verify_token_env"),
        "{err}"
    );
    // Several secrets while rotating.
    let c = Config::parse(&MINIMAL.replace(
        "secret_env = \"HOOKRELAY_TEST_NEVER_SET\"",
        "secret_env = [\"A\", \"B\"]\nsecret_file = \"/x\"",
    ))
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.sources["quickassist"].secret_sources().len(), 3);
}

#[test]
fn broker_ack_needs_a_broker_sink() {
    let c = Config::parse(&format!("{MINIMAL}ack = \"broker\"\n")).unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("sources.quickassist.ack"), "{err}");
}

#[test]
fn no_sink_and_no_source_are_errors() {
    let c = Config::parse("[sources.a]\nscheme = \"quickassist\"\nsecret_env = \"X\"\n").unwrap();
    assert!(c.validate().unwrap_err().to_string().starts_with("sinks"));
    let c = Config::parse("[sinks.file]\ndir = \"x\"\n").unwrap();
    assert!(c.validate().unwrap_err().to_string().starts_with("sources"));
}

#[test]
fn spool_limits_are_checked() {
    let c = Config::parse(&format!(
        "{MINIMAL}[spool]\nmax_bytes = 10000\nsegment_bytes = 8192\n"
    ))
    .unwrap();
    // Too small for the spool, and so for the file sink's share of it.
    assert_eq!(keys(&c), ["spool.max_bytes", "spool.max_bytes"]);
    let c = Config::parse(&format!(
        "{MINIMAL}[spool]\nmin_sync_interval_us = 100001\n"
    ))
    .unwrap();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .starts_with("spool.min_sync_interval_us")
    );
    let c = Config::parse(&format!("{MINIMAL}[spool]\nmin_sync_interval_us = 0\n")).unwrap();
    assert!(c.validate().is_ok());
    assert_eq!(SpoolConfig::default().min_sync_interval_us, 1000);
}

/// Named sinks: the type from `type` or from the name; a sink's own problems are
/// keyed by its name; budgets are shared equally unless set.
#[test]
fn named_sinks_parse_and_are_checked_under_their_name() {
    let src =
        "[sources.q]\nscheme = \"quickassist\"\nsecret_env = \"X\"\nsinks = [\"a\", \"bus\"]\n";
    let c = Config::parse(&format!(
        "[spool]\nmax_bytes = 1073741824\n[sinks.a]\ntype = \"file\"\ndir = \"x\"\n\
         [sinks.bus]\ntype = \"kafka\"\nbrokers = \"k:9092\"\nbacklog_max_bytes = 268435456\n{src}"
    ))
    .unwrap();
    assert_eq!(c.sinks.names(), vec!["a", "bus"]);
    assert_eq!(
        c.sinks.get("bus").unwrap().settings.kind(),
        crate::sink::SinkKind::Kafka
    );
    assert_eq!(c.sinks.for_source(&c.sources["q"]), vec!["a", "bus"]);
    assert_eq!(c.sinks.backlog_budget("bus", c.spool.max_bytes), 268435456);
    assert_eq!(
        c.sinks.backlog_budget("a", c.spool.max_bytes),
        1073741824 - 268435456
    );

    let c = Config::parse(&format!(
        "[sinks.a]\ntype = \"file\"\ndir = \"x\"\n[sinks.bus]\ntype = \"kafka\"\nbrokers = \"k:9092\"\nlinger_ms = 100000\n{src}"
    ))
    .unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("sinks.bus.linger_ms"), "{err}");

    let err = Config::parse("[sinks.bus]\ntype = \"file\"\ndir = \"x\"\nbogus = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sinks.bus") && err.contains("bogus"), "{err}");

    let c = Config::parse(&format!(
        "[spool]\nsegment_bytes = 1048576\n[sinks.a]\ntype = \"file\"\ndir = \"x\"\nbacklog_max_bytes = 1048576\n[sinks.bus]\ntype = \"file\"\ndir = \"y\"\n{src}"
    ))
    .unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("sinks.a.backlog_max_bytes"), "{err}");
}

/// `[archive]` is off unless present; present, it gets its defaults, and its
/// bounds are checked naming the key.
#[test]
fn archive_is_off_by_default_and_checked_when_on() {
    let c = Config::parse(MINIMAL).unwrap();
    assert!(c.archive.is_none());
    let c = Config::parse(&format!("[archive]\n{MINIMAL}")).unwrap();
    c.validate().unwrap();
    let a = c.archive.as_ref().unwrap();
    assert_eq!((a.retention_hours, a.max_bytes), (24, 1 << 30));
    assert_eq!(a.retention(), Duration::from_secs(24 * 3600));

    let c = Config::parse(&format!("[archive]\nretention_hours = 0\n{MINIMAL}")).unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("archive.retention_hours"), "{err}");
    // Two segments at least: 2 x 64 MiB by default.
    let c = Config::parse(&format!("[archive]\nmax_bytes = 134217727\n{MINIMAL}")).unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("archive.max_bytes"), "{err}");
    assert!(err.contains("spool.segment_bytes"), "{err}");
    let c = Config::parse(&format!("[archive]\nmax_bytes = 134217728\n{MINIMAL}")).unwrap();
    c.validate().unwrap();
    let err = Config::parse(&format!("[archive]\nretention = 1\n{MINIMAL}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("retention"), "{err}");
}

/// `[admin]`: off without a token; a token that is missing, short, not a header
/// value, or given twice is refused naming the key; a file's whitespace is trimmed.
#[test]
fn admin_token_is_checked_where_it_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let with = |admin: &str| Config::parse(&format!("{MINIMAL}\n[admin]\n{admin}\n")).unwrap();
    assert_eq!(Config::parse(MINIMAL).unwrap().admin.token().unwrap(), None);
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        format!("token_file = {:?}", p.display().to_string())
    };
    let good = with(&file("good", "  0123456789abcdefXYZ\n"));
    assert_eq!(
        good.admin.token().unwrap().as_deref(),
        Some("0123456789abcdefXYZ")
    );
    for (admin, key, why) in [
        (
            "token_env = \"HOOKRELAY_TEST_NEVER_SET\"",
            "admin.token_env",
            "not set",
        ),
        (&file("short", "short"), "admin.token_file", "at least 16"),
        (
            &file("spaces", "0123456789 abcdef 0123"),
            "admin.token_file",
            "printable",
        ),
        (
            &file("control", "0123456789abcdef\u{7}x"),
            "admin.token_file",
            "printable",
        ),
        (
            &format!("token_env = \"X\"\n{}", file("both", "0123456789abcdefXYZ")),
            "admin.token_env",
            "not both",
        ),
        (
            &format!(
                "token_file = {:?}",
                dir.path().join("missing").display().to_string()
            ),
            "admin.token_file",
            "cannot read",
        ),
    ] {
        let err = with(admin).admin.token().unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(why), "{admin}: {err}");
    }
    // A long token is fine: it is hashed, never copied into a header here.
    let long = with(&file("long", &"t".repeat(4096)));
    assert_eq!(long.admin.token().unwrap().map(|t| t.len()), Some(4096));
}

/// Reading goes on past what it cannot read: each value at fault is reported
/// under its key, a missing required field at its table, and what the checks
/// would say about the defaults left in their place is not.
#[test]
fn every_value_that_cannot_be_read_is_reported_at_once() {
    let text = "[server]\n\
        max_body_bytes = \"big\"\n\
        listen_addr = \"x\"\n\
        [spool]\n\
        segment_bytes = 1\n\
        [sinks.bus]\n\
        type = \"kafka\"\n\
        [sinks.odd]\n\
        type = \"carrier-pigeon\"\n\
        [sinks.file]\n\
        dir = \"x\"\n\
        max_open_files = -1\n\
        [sources.a]\n\
        scheme = \"nope\"\n\
        [sources.b]\n\
        scheme = \"quickassist\"\n\
        secret_env = 3\n\
        sinks = [\"bus\", \"file\"]\n";
    let err = Config::parse(text).unwrap_err();
    let ConfigError::Invalid(problems) = err else {
        panic!("{err}");
    };
    let mut keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "server.listen_addr",
            "server.max_body_bytes",
            "sinks.bus",
            "sinks.file.max_open_files",
            "sinks.odd.type",
            "sources.a.scheme",
            "sources.b.secret_env",
        ],
        "{problems}"
    );
    let why = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.why.clone())
            .unwrap()
    };
    assert!(why("sinks.bus").contains("missing field `brokers`"));
    assert!(why("sources.a.scheme").contains("unknown variant `nope`"));
    assert!(why("sinks.odd.type").contains("carrier-pigeon"));
}

/// `check` and `run` read a file through [`Checked`]: deserialization and the
/// checks together, each problem with its line, in the file's order; checks of
/// values left out are not reported (`sources.b` has no readable secret, and no
/// "set secret_env" about the default), nor is a sink that could not be read
/// reported missing where a source names it.
#[test]
fn a_file_gets_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = "[server]\n\
        listen = \"127.0.0.1:8080\"\n\
        admin_listen = \"127.0.0.1:8080\"\n\
        [sinks.bus]\n\
        type = \"kafka\"\n\
        [sinks.file]\n\
        dir = \"x\"\n\
        [sources.b]\n\
        scheme = \"quickassist\"\n\
        secret_env = 3\n\
        sinks = [\"bus\", \"file\"]\n\
        topic = \"{nope}\"\n";
    std::fs::write(&path, text).unwrap();
    let err = Checked::read(&path).unwrap().into_result().unwrap_err();
    let ConfigError::Invalid(problems) = &err else {
        panic!("{err}");
    };
    let at: Vec<(Option<usize>, &str)> =
        problems.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        at,
        [
            (Some(3), "server.admin_listen"),
            (Some(4), "sinks.bus"),
            (Some(10), "sources.b.secret_env"),
            (Some(12), "sources.b.topic"),
        ],
        "{err}"
    );
    let shown = err.to_string();
    let file = path.display();
    assert!(
        shown.starts_with(&format!("4 problems in {file}:\n")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "\n{file}:3: server.admin_listen: must differ from server.listen\n"
        )),
        "{shown}"
    );
}

/// A syntax error stops reading: it is the only problem, with its line.
#[test]
fn a_syntax_error_is_the_only_problem() {
    let err = Config::parse("[server]\nlisten = \n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
}

/// `${VAR}` in any string value, nested or in an array, is a warning naming
/// its key and line and what to write instead.
#[test]
fn variables_written_in_values_are_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = format!(
        "{MINIMAL}events = [\"a\", \"${{EVENT}}\"]\n[dedup]\nredis_url = \"redis://:${{REDIS_PW}}@h\"\nredis_url_env = \"$NOT_THIS\"\n"
    );
    std::fs::write(&path, &text).unwrap();
    let warnings = Checked::read(&path).unwrap().warnings();
    let file = path.display();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "{file}:7: sources.quickassist.events: \"${{EVENT}}\""
        )),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with(&format!("{file}:9: dedup.redis_url: ")),
        "{warnings:?}"
    );
    assert!(
        warnings[1].ends_with("redis_url_env = \"REDIS_PW\""),
        "{warnings:?}"
    );
}

/// `forward.linger_ms` defaults to 5, 0 is allowed (no wait), and more than a
/// second is refused by name: it delays every delivery by up to that.
#[test]
fn forward_linger_is_bounded() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.forward.linger_ms, 5);
    for ok in [0, 1000] {
        let c = Config::parse(&format!("{MINIMAL}\n[forward]\nlinger_ms = {ok}\n")).unwrap();
        c.validate().unwrap();
    }
    let c = Config::parse(&format!("{MINIMAL}\n[forward]\nlinger_ms = 1001\n")).unwrap();
    assert_eq!(keys(&c), vec!["forward.linger_ms"]);
}
