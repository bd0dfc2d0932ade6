//! `[sinks.nats]`: typed settings, validation, secrets read at start, and the
//! subject and stream-name rules NATS holds names to.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::sink::ConfigProblem;

/// Longest subject published: event topics are at most 249 bytes, and a subject
/// far longer would overflow the server's protocol line (`max_control_line`) and
/// cost the whole connection, not just the one event.
pub const MAX_SUBJECT_LEN: usize = 255;
/// Longest stream name: the server names a directory after it.
pub const MAX_STREAM_NAME_LEN: usize = 255;
/// Longest wait allowed for an ack or a connect: past a minute a broker is down,
/// and the forwarder retries sooner than it would learn anything.
const MAX_TIMEOUT_MS: u64 = 60_000;

/// What JetStream keeps a message for (the stream's retention policy), used only
/// when hookrelay creates the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Until a limit (age, count, size) removes it: what a log of webhooks wants.
    #[default]
    Limits,
    /// Until every consumer that was interested when it arrived has acked it.
    Interest,
    /// Until one consumer acks it.
    Workqueue,
}

impl Retention {
    pub fn as_str(self) -> &'static str {
        match self {
            Retention::Limits => "limits",
            Retention::Interest => "interest",
            Retention::Workqueue => "workqueue",
        }
    }
}

/// Publishes to a JetStream stream and waits for its ack: an ack means the stream
/// stored the message (on `replicas` servers), so it survives a broker crash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// `nats://host:4222` or `tls://host:4222`, one or more servers of one cluster.
    /// No credentials in them: those go in `user` + `password_env`, `token_env` or
    /// `credentials_file`, so the file never holds a secret.
    pub servers: Vec<String>,
    /// The JetStream stream that stores the events (subject = event topic).
    pub stream: String,
    /// Create the stream on start (and again should it vanish) when it is missing.
    /// `false` expects it to be there: start fails naming it if it is not.
    #[serde(default)]
    pub create_stream: bool,
    /// Subjects the stream stores when hookrelay creates it (`"webhooks.>"`).
    /// Required with `create_stream`; there is no default, because `>` would take
    /// every subject of the account, request replies included. An existing stream
    /// is never changed.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Retention policy of a created stream.
    #[serde(default)]
    pub retention: Retention,
    /// Servers each message of a created stream is stored on (1, or 3 or 5 in a cluster).
    #[serde(default = "one")]
    pub replicas: usize,
    /// Oldest message a created stream keeps; none means kept until other limits.
    pub max_age_secs: Option<u64>,
    /// A created stream's duplicate window: a message whose `Nats-Msg-Id` (the event
    /// id) was stored within it is acked without being stored again, so republishing
    /// after a lost ack or a restart does not duplicate.
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
    /// User name for user/password authentication (with `password_env`).
    pub user: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Environment variable holding a token.
    pub token_env: Option<String>,
    /// A `.creds` file (JWT and NKey seed), as `nsc` writes it: a mounted Secret.
    pub credentials_file: Option<PathBuf>,
    /// Require TLS with every server (`tls://` URLs require it anyway).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA(s) that signed the servers' certificates, instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// An ack not received within this fails the event as retriable; it is
    /// published again (the duplicate window drops a copy that did arrive).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// One connection attempt (TCP, TLS, handshake) longer than this fails and is
    /// retried with backoff.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Publishes awaiting their ack at once; a publish past it waits for room
    /// (acks come back within `ack_timeout_ms`). Keep it above the forwarder's
    /// `max_in_flight`, or the sink, not the forwarder, paces delivery.
    #[serde(default = "default_max_pending_acks")]
    pub max_pending_acks: usize,
}

const fn one() -> usize {
    1
}
const fn default_duplicate_window_secs() -> u64 {
    120
}
const fn default_ack_timeout_ms() -> u64 {
    10_000
}
const fn default_connect_timeout_ms() -> u64 {
    5_000
}
const fn default_max_pending_acks() -> usize {
    16_384
}

/// How the sink authenticates, secrets read from where the file points.
#[derive(Clone)]
pub(super) enum Auth {
    None,
    UserPassword { user: String, password: String },
    Token(String),
    CredentialsFile(PathBuf),
}

/// Never prints a secret.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("none"),
            Auth::UserPassword { user, .. } => write!(f, "user {user} with a password"),
            Auth::Token(_) => f.write_str("a token"),
            Auth::CredentialsFile(p) => write!(f, "credentials file {}", p.display()),
        }
    }
}

impl NatsSinkConfig {
    /// Checks that need no network and no environment; secrets are read by
    /// [`Self::auth`] at start.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem [`Self::validate`] would stop at the first of.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut p = |k: &str, why: String| {
            out.push(ConfigProblem::new(format!("sinks.nats.{k}"), why));
        };
        if self.servers.is_empty() {
            p(
                "servers",
                "must list at least one nats:// or tls:// URL".into(),
            );
        }
        for s in &self.servers {
            if let Err(why) = check_server(s) {
                p("servers", why);
            }
        }
        if let Err(why) = check_stream_name(&self.stream) {
            p("stream", why);
        }
        if self.create_stream && self.subjects.is_empty() {
            p(
                "subjects",
                "create_stream = true needs the subjects the stream stores (\"webhooks.>\")".into(),
            );
        }
        for s in &self.subjects {
            if let Err(why) = check_pattern(s) {
                p("subjects", format!("'{s}': {why}"));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            p("replicas", "must be between 1 and 5".into());
        }
        if self.max_age_secs == Some(0) {
            p(
                "max_age_secs",
                "must be greater than 0 (leave it out for no age limit)".into(),
            );
        }
        if self.duplicate_window_secs == 0 {
            p(
                "duplicate_window_secs",
                "must be greater than 0: it is what makes republishing safe".into(),
            );
        }
        if let Some(age) = self.max_age_secs
            && self.duplicate_window_secs > age
        {
            p(
                "duplicate_window_secs",
                format!("must not exceed max_age_secs ({age}); JetStream refuses such a stream"),
            );
        }
        if let Some(why) = self.auth_problem() {
            out.push(why);
        }
        let mut p = |k: &str, why: String| {
            out.push(ConfigProblem::new(format!("sinks.nats.{k}"), why));
        };
        if self.ca_file.is_some() && !self.tls {
            p("ca_file", "is used only with tls = true".into());
        }
        for (key, ms) in [
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if !(100..=MAX_TIMEOUT_MS).contains(&ms) {
                p(key, format!("must be between 100 and {MAX_TIMEOUT_MS}"));
            }
        }
        if !(1..=1_000_000).contains(&self.max_pending_acks) {
            p("max_pending_acks", "must be between 1 and 1000000".into());
        }
        out
    }

    /// The first problem with how the sink authenticates.
    fn auth_problem(&self) -> Option<ConfigProblem> {
        let p = |k: &str, why: &str| Some(ConfigProblem::new(format!("sinks.nats.{k}"), why));
        let ways = [
            self.user.is_some() || self.password_env.is_some(),
            self.token_env.is_some(),
            self.credentials_file.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return p(
                "credentials_file",
                "set only one of user + password_env, token_env and credentials_file",
            );
        }
        match (&self.user, &self.password_env) {
            (Some(u), _) if u.is_empty() => return p("user", "must not be empty"),
            (Some(_), None) => return p("password_env", "user needs password_env"),
            (None, Some(_)) => return p("user", "password_env needs user"),
            _ => {}
        }
        for (k, var) in [
            ("password_env", &self.password_env),
            ("token_env", &self.token_env),
        ] {
            if var
                .as_deref()
                .is_some_and(|v| v.is_empty() || v.contains('='))
            {
                return p(k, "must name an environment variable");
            }
        }
        None
    }

    /// Whether the credentials named can be read now, as the sink reads them at
    /// start (for `check`).
    pub fn check_secrets(&self) -> Result<(), ConfigProblem> {
        self.auth().map(|_| ())
    }

    /// The credentials, read from the environment now: a variable named but unset
    /// or empty is a problem at start, not a silent anonymous connection.
    pub(super) fn auth(&self) -> Result<Auth, ConfigProblem> {
        let env = |key: &str, var: &str| match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(ConfigProblem::new(
                format!("sinks.nats.{key}"),
                format!("environment variable {var} is not set or empty"),
            )),
        };
        if let (Some(user), Some(var)) = (&self.user, &self.password_env) {
            return Ok(Auth::UserPassword {
                user: user.clone(),
                password: env("password_env", var)?,
            });
        }
        if let Some(var) = &self.token_env {
            return Ok(Auth::Token(env("token_env", var)?));
        }
        if let Some(path) = &self.credentials_file {
            return Ok(Auth::CredentialsFile(path.clone()));
        }
        Ok(Auth::None)
    }

    /// Where to connect, for logs and errors (the URLs hold no credentials).
    pub fn display_target(&self) -> String {
        self.servers.join(",")
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// A server URL the client can dial: `nats://` or `tls://` (this build has no
/// websocket transport), a host, and no credentials.
fn check_server(s: &str) -> Result<(), String> {
    if !(s.starts_with("nats://") || s.starts_with("tls://")) {
        return Err(format!("'{s}' must start with nats:// or tls://"));
    }
    let addr = async_nats::ServerAddr::from_str(s).map_err(|e| format!("'{s}': {e}"))?;
    if addr.has_user_pass() {
        return Err(
            "a server URL must not hold credentials: use user + password_env, token_env or credentials_file"
                .into(),
        );
    }
    if addr.into_inner().host_str().is_none_or(str::is_empty) {
        return Err(format!("'{s}' names no host"));
    }
    Ok(())
}

/// NATS stream names: printable ASCII without `.`, `*`, `>` (subject tokens) or
/// path separators (the server names a directory after the stream).
pub(super) fn check_stream_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_STREAM_NAME_LEN {
        return Err(format!("must be 1 to {MAX_STREAM_NAME_LEN} characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(format!(
            "'{s}' holds {c:?}; a stream name is printable ASCII without spaces, '.', '*', '>', '/' or '\\'"
        ));
    }
    Ok(())
}

/// A subject an event can be published to: printable ASCII, at most
/// [`MAX_SUBJECT_LEN`] bytes, dot-separated tokens none of them empty, and no
/// wildcard (`*`, `>`), which would name many subjects rather than one.
pub fn check_subject(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "subject of {} bytes: NATS takes 1 to {MAX_SUBJECT_LEN} here",
            s.len()
        ));
    }
    if let Some(b) = s.bytes().find(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "subject '{}' holds byte {b:#04x}: NATS subjects take no spaces or control characters",
            s.escape_default()
        ));
    }
    if s.contains(['*', '>']) {
        return Err(format!(
            "subject '{s}' holds a wildcard ('*' or '>'): a message goes to one subject"
        ));
    }
    if s.split('.').any(str::is_empty) {
        return Err(format!(
            "subject '{s}' has an empty token (leading, trailing or double '.')"
        ));
    }
    Ok(())
}

/// A subject a stream may store: like [`check_subject`], but `*` may stand for one
/// token and `>` for the rest (as the last token). `>` alone is refused: it would
/// take every subject of the account, JetStream's own replies included.
fn check_pattern(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
        return Err(format!("must be 1 to {MAX_SUBJECT_LEN} bytes"));
    }
    if s == ">" {
        return Err("'>' alone would store every subject of the account".into());
    }
    if s.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("no spaces or control characters".into());
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err("empty token (leading, trailing or double '.')".into());
        }
        let last = i + 1 == tokens.len();
        match *t {
            "*" => {}
            ">" if last => {}
            ">" => return Err("'>' may only be the last token".into()),
            t if t.contains(['*', '>']) => {
                return Err("a wildcard must be a whole token".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `subject` is one of those `pattern` (a stream subject) names.
pub(super) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut want = pattern.split('.');
    let mut have = subject.split('.');
    loop {
        match (want.next(), have.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(w), Some(h)) if w == h => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> NatsSinkConfig {
        toml::from_str(&format!(
            "servers = [\"nats://127.0.0.1:4222\"]\nstream = \"HOOKS\"\n{extra}"
        ))
        .unwrap()
    }

    fn key(extra: &str) -> String {
        parse(extra).validate().unwrap_err().key
    }

    #[test]
    fn defaults() {
        let c = parse("");
        c.validate().unwrap();
        assert!(!c.create_stream);
        assert!(c.subjects.is_empty());
        assert_eq!(c.retention, Retention::Limits);
        assert_eq!(c.replicas, 1);
        assert_eq!(c.max_age_secs, None);
        assert_eq!(c.duplicate_window_secs, 120);
        assert_eq!(c.ack_timeout(), Duration::from_secs(10));
        assert_eq!(c.connect_timeout(), Duration::from_secs(5));
        assert!(matches!(c.auth().unwrap(), Auth::None));
        assert_eq!(c.display_target(), "nats://127.0.0.1:4222");
        let c = parse(
            "create_stream = true\nsubjects = [\"q.>\", \"x.*.y\"]\nretention = \"workqueue\"\nreplicas = 3\nmax_age_secs = 86400\ntls = true\nca_file = \"/ca.pem\"\n",
        );
        c.validate().unwrap();
        assert_eq!(c.retention, Retention::Workqueue);
        assert!(
            toml::from_str::<NatsSinkConfig>("servers = []\nstream = \"S\"\nbogus = 1").is_err()
        );
        assert!(
            toml::from_str::<NatsSinkConfig>(
                "servers = []\nstream = \"S\"\nretention = \"forever\""
            )
            .is_err()
        );
    }

    #[test]
    fn bad_values_are_named() {
        let c: NatsSinkConfig = toml::from_str("servers = []\nstream = \"S\"").unwrap();
        assert_eq!(c.validate().unwrap_err().key, "sinks.nats.servers");
        for bad in [
            "\"http://h:4222\"",
            "\"127.0.0.1:4222\"",
            "\"ws://h:80\"",
            "\"nats://u:p@h:4222\"",
            "\"nats://\"",
        ] {
            let c: NatsSinkConfig =
                toml::from_str(&format!("servers = [{bad}]\nstream = \"S\"")).unwrap();
            assert_eq!(c.validate().unwrap_err().key, "sinks.nats.servers", "{bad}");
        }
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a\\\\b", "t\\u0000"] {
            let c: NatsSinkConfig =
                toml::from_str(&format!("servers = [\"nats://h\"]\nstream = \"{bad}\"")).unwrap();
            assert_eq!(
                c.validate().unwrap_err().key,
                "sinks.nats.stream",
                "{bad:?}"
            );
        }
        assert_eq!(key("create_stream = true"), "sinks.nats.subjects");
        for bad in [
            "\">\"",
            "\"a..b\"",
            "\"a.>.b\"",
            "\"a b\"",
            "\"a*.b\"",
            "\".a\"",
        ] {
            assert_eq!(
                key(&format!("subjects = [{bad}]")),
                "sinks.nats.subjects",
                "{bad}"
            );
        }
        assert_eq!(key("replicas = 0"), "sinks.nats.replicas");
        assert_eq!(key("replicas = 6"), "sinks.nats.replicas");
        assert_eq!(key("max_age_secs = 0"), "sinks.nats.max_age_secs");
        assert_eq!(
            key("duplicate_window_secs = 0"),
            "sinks.nats.duplicate_window_secs"
        );
        assert_eq!(key("max_age_secs = 60"), "sinks.nats.duplicate_window_secs");
        assert_eq!(key("ack_timeout_ms = 0"), "sinks.nats.ack_timeout_ms");
        assert_eq!(key("ack_timeout_ms = 60001"), "sinks.nats.ack_timeout_ms");
        assert_eq!(
            key("connect_timeout_ms = 0"),
            "sinks.nats.connect_timeout_ms"
        );
        assert_eq!(key("max_pending_acks = 0"), "sinks.nats.max_pending_acks");
        assert_eq!(key("ca_file = \"/ca.pem\""), "sinks.nats.ca_file");
        assert_eq!(key("user = \"u\""), "sinks.nats.password_env");
        assert_eq!(key("password_env = \"P\""), "sinks.nats.user");
        assert_eq!(key("user = \"\"\npassword_env = \"P\""), "sinks.nats.user");
        assert_eq!(key("token_env = \"\""), "sinks.nats.token_env");
        assert_eq!(
            key("token_env = \"T\"\ncredentials_file = \"/x.creds\""),
            "sinks.nats.credentials_file"
        );
    }

    #[test]
    fn secrets_come_from_the_environment() {
        // SAFETY: no other test reads or writes these variables.
        unsafe { std::env::set_var("HOOKRELAY_TEST_NATS_PASSWORD", "s3cret") };
        let c = parse("user = \"relay\"\npassword_env = \"HOOKRELAY_TEST_NATS_PASSWORD\"");
        c.validate().unwrap();
        match c.auth().unwrap() {
            Auth::UserPassword { user, password } => {
                assert_eq!((user.as_str(), password.as_str()), ("relay", "s3cret"))
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{:?}", c.auth().unwrap()).contains("s3cret"));
        let c = parse("token_env = \"HOOKRELAY_TEST_UNSET_VAR\"");
        c.validate().unwrap();
        let err = c.auth().unwrap_err();
        assert_eq!(err.key, "sinks.nats.token_env");
        assert!(err.why.contains("HOOKRELAY_TEST_UNSET_VAR"), "{err:?}");
    }

    #[test]
    fn subjects_and_patterns() {
        for ok in ["a", "q.message.read", "a-b_c.D9"] {
            check_subject(ok).unwrap();
        }
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        for bad in [
            "", "a..b", ".a", "a.", "a b", "a.*", "a.>", "*", "a\r\nb", "é", &long,
        ] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
        assert!(subject_matches("q.>", "q.message.read"));
        assert!(!subject_matches("q.>", "q"));
        assert!(subject_matches("q.*.read", "q.message.read"));
        assert!(!subject_matches("q.*", "q.message.read"));
        assert!(subject_matches("q.message.read", "q.message.read"));
        assert!(!subject_matches("q.message", "q.message.read"));
        assert!(!subject_matches("r.>", "q.message.read"));
    }
}
