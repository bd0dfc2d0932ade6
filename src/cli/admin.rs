//! `hookrelay admin ...`: each subcommand is one call (or a few) to a running
//! instance's admin API, printed for a person, or as the server's JSON with `--json`.
//!
//! The human rendering reads the answers leniently (a field it does not know
//! is ignored, one missing is shown as `-`): the client may be older or newer
//! than the server it talks to.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{AdminClient, escape};
use super::human::{age, age_of, print, size, table};
use super::{AdminArgs, AdminCommand, DeadLettersCommand, ReplayArgs, ReplayCommand};

/// Between two looks at a replay being waited for.
const POLL: Duration = Duration::from_secs(1);

/// One subcommand, on a runtime of its own: the CLI has no other async work.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.url, &args.token_env, args.token_file.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let json = args.json;
    runtime.block_on(async move {
        match args.command {
            AdminCommand::Backlog => backlog(&client, json).await,
            AdminCommand::DeadLetters(cmd) => dead_letters(&client, cmd, json).await,
            AdminCommand::Pause { sink } => pause(&client, &sink, true, json).await,
            AdminCommand::Resume { sink } => pause(&client, &sink, false, json).await,
            AdminCommand::Replay(args) => replay(&client, args, json).await,
        }
    })
}

/// The server's JSON, indented.
fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(v).context("encoding JSON")?;
    text.push('\n');
    print(text.as_bytes())
}

fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Backlog {
    sinks: Vec<SinkBacklog>,
    archive: Option<ArchiveUse>,
    dead_letters: Option<DeadLetterCount>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SinkBacklog {
    sink: String,
    kind: String,
    state: String,
    paused: bool,
    events: u64,
    bytes: u64,
    oldest_age_secs: Option<f64>,
    in_flight: u64,
    last_error: Option<String>,
    last_error_age_secs: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ArchiveUse {
    bytes: u64,
    max_bytes: u64,
    segments: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeadLetterCount {
    count: u64,
    bytes: u64,
}

async fn backlog(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let v = client.get("/admin/backlog").await?;
    if json {
        return print_json(&v);
    }
    let b: Backlog = serde_json::from_value(v).context("reading /admin/backlog")?;
    let rows: Vec<Vec<String>> = b
        .sinks
        .iter()
        .map(|s| {
            let state = if s.paused && s.state != "paused" {
                format!("{} (paused)", s.state)
            } else {
                s.state.clone()
            };
            let error = match (&s.last_error, s.last_error_age_secs) {
                (Some(e), Some(a)) => format!("{e} ({} ago)", age(a)),
                (Some(e), None) => e.clone(),
                (None, _) => "-".into(),
            };
            vec![
                s.sink.clone(),
                or_dash(Some(&s.kind)),
                or_dash(Some(&state)),
                s.events.to_string(),
                size(s.bytes),
                s.oldest_age_secs.map_or_else(|| "-".into(), age),
                s.in_flight.to_string(),
                error,
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SINK",
            "KIND",
            "STATE",
            "EVENTS",
            "BYTES",
            "OLDEST",
            "IN FLIGHT",
            "LAST ERROR",
        ],
        &rows,
    );
    if let Some(a) = &b.archive {
        out.push_str(&format!(
            "archive: {} of {} in {} segment(s)\n",
            size(a.bytes),
            size(a.max_bytes),
            a.segments
        ));
    }
    if let Some(d) = &b.dead_letters {
        out.push_str(&format!("dead letters: {} ({})\n", d.count, size(d.bytes)));
    }
    print(out.as_bytes())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeadLetterRow {
    id: Value,
    sink: Option<String>,
    source: String,
    event_type: String,
    reason: String,
    received_at: String,
    dead_lettered_at: Option<String>,
    size: u64,
}

async fn dead_letters(
    client: &AdminClient,
    cmd: DeadLettersCommand,
    json: bool,
) -> anyhow::Result<()> {
    match cmd {
        DeadLettersCommand::List(a) => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (key, value) in [
                ("source", &a.filter.source),
                ("event", &a.filter.event),
                ("reason", &a.filter.reason),
                ("sink", &a.filter.sink),
            ] {
                if let Some(v) = value {
                    query.append_pair(key, v);
                }
            }
            if let Some(n) = a.limit {
                query.append_pair("limit", &n.to_string());
            }
            let query = query.finish();
            list(client, &query, a.after, a.all, json).await
        }
        DeadLettersCommand::Show { id, body_only } => {
            let v = client
                .get(&format!("/admin/dead-letters/{}", escape(&id)))
                .await?;
            if body_only {
                return print(&body_of(&v)?);
            }
            if json {
                return print_json(&v);
            }
            print(&show(&v)?)
        }
        DeadLettersCommand::Redrive(a) => redrive(client, a, json).await,
    }
}

/// One page, or (`all`) every page from `after` on, following `next`.
async fn list(
    client: &AdminClient,
    query: &str,
    mut after: Option<String>,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut items: Vec<Value> = Vec::new();
    let mut first: Option<Value> = None;
    let next = loop {
        let mut q = query.to_string();
        if let Some(a) = &after {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str("after=");
            q.push_str(&escape(a));
        }
        let path = if q.is_empty() {
            "/admin/dead-letters".to_string()
        } else {
            format!("/admin/dead-letters?{q}")
        };
        let page = client.get(&path).await?;
        let rows = page
            .get("dead_letters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let next = page.get("next").and_then(Value::as_str).map(str::to_string);
        let empty = rows.is_empty();
        items.extend(rows);
        if first.is_none() {
            first = Some(page);
        }
        // A server handing back the same cursor, or an empty page with one,
        // would loop for ever.
        match next {
            Some(n) if all && !empty && after.as_deref() != Some(n.as_str()) => after = Some(n),
            n => break n,
        }
    };
    if json {
        // One page as the server sent it; several merged into one, `next` spent.
        let v = match first {
            Some(page) if !all => page,
            _ => json!({ "dead_letters": items, "next": next }),
        };
        return print_json(&v);
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = items
        .into_iter()
        .map(|v| {
            let d: DeadLetterRow = serde_json::from_value(v).unwrap_or_default();
            let when = d.dead_lettered_at.as_deref().unwrap_or(&d.received_at);
            vec![
                text(&d.id),
                age_of(when, now).unwrap_or_else(|| "-".into()),
                or_dash(d.sink.as_deref()),
                or_dash(Some(&d.source)),
                or_dash(Some(&d.event_type)),
                size(d.size),
                d.reason,
            ]
        })
        .collect();
    if rows.is_empty() {
        print(b"no dead letters\n")?;
    } else {
        print(
            table(
                &["ID", "AGE", "SINK", "SOURCE", "EVENT", "SIZE", "REASON"],
                &rows,
            )
            .as_bytes(),
        )?;
    }
    if let Some(n) = next {
        eprintln!("more: add --after {n}, or --all for every page");
    }
    Ok(())
}

/// The exact bytes of a dead letter's body: text as sent, or hex decoded.
fn body_of(v: &Value) -> anyhow::Result<Vec<u8>> {
    if let Some(text) = v.get("body").and_then(Value::as_str) {
        return Ok(text.as_bytes().to_vec());
    }
    if let Some(h) = v.get("body_hex").and_then(Value::as_str) {
        return hex::decode(h).context("the answer's body_hex is not hex");
    }
    bail!("the answer holds neither body nor body_hex")
}

/// The dead letter's fields, its headers, a blank line, then its body as it is.
fn show(v: &Value) -> anyhow::Result<Vec<u8>> {
    let field = |k: &str| v.get(k).map_or_else(|| "-".into(), text);
    let now = SystemTime::now();
    let with_age = |k: &str| {
        let t = field(k);
        match age_of(&t, now) {
            Some(a) => format!("{t} ({a} ago)"),
            None => t,
        }
    };
    let size_text = v
        .get("size")
        .and_then(Value::as_u64)
        .map_or_else(|| "-".into(), size);
    let rows: Vec<Vec<String>> = [
        ("id:", field("id")),
        ("sink:", field("sink")),
        ("source:", field("source")),
        ("event type:", field("event_type")),
        ("event id:", field("event_id")),
        ("topic:", field("topic")),
        ("key:", field("key")),
        ("content type:", field("content_type")),
        ("reason:", field("reason")),
        ("received at:", with_age("received_at")),
        ("dead-lettered at:", with_age("dead_lettered_at")),
        ("size:", size_text),
    ]
    .into_iter()
    .map(|(k, v)| vec![k.to_string(), v])
    .collect();
    let table = table(&["", ""], &rows);
    // The header row of the table is empty: drop its line.
    let mut out = table.trim_start_matches('\n').as_bytes().to_vec();
    out.push(b'\n');
    if let Some(headers) = v.get("headers").and_then(Value::as_object) {
        for (k, h) in headers {
            let h = h.as_str().map_or_else(|| h.to_string(), str::to_string);
            out.extend_from_slice(format!("{k}: {h}\n").as_bytes());
        }
        out.push(b'\n');
    }
    out.extend_from_slice(&body_of(v)?);
    Ok(out)
}

async fn redrive(client: &AdminClient, a: super::RedriveArgs, json: bool) -> anyhow::Result<()> {
    let mut body = serde_json::Map::new();
    if !a.ids.is_empty() {
        body.insert("ids".into(), json!(a.ids));
    } else if a.all {
        body.insert("all".into(), json!(true));
    } else {
        for (key, value) in [
            ("source", a.filter.source),
            ("event", a.filter.event),
            ("reason", a.filter.reason),
            ("sink", a.filter.sink),
        ] {
            if let Some(v) = value {
                body.insert(key.into(), json!(v));
            }
        }
        if body.is_empty() {
            bail!(
                "say which dead letters to redrive: --id ID (repeatable), a filter (--source, --event, --reason, --sink), or --all"
            );
        }
    }
    if let Some(to) = a.to_sink {
        body.insert("to_sink".into(), json!(to));
    }
    if let Some(w) = a.wait {
        body.insert("wait_secs".into(), json!(w));
    }
    let wait = Duration::from_secs(a.wait.unwrap_or(0));
    let v = client
        .post("/admin/dead-letters/redrive", &Value::Object(body), wait)
        .await?;
    let failed = v
        .get("failed")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if json {
        print_json(&v)?;
    } else {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let mut out = format!(
            "redriven {}, already removed {}, confirmed {}, dead-lettered again {}, failed {}\n",
            n("redriven"),
            n("already_removed"),
            n("confirmed"),
            n("dead_lettered_again"),
            failed.len()
        );
        if !failed.is_empty() {
            let rows: Vec<Vec<String>> = failed
                .iter()
                .map(|f| {
                    let s = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
                    vec![s("id"), s("error")]
                })
                .collect();
            out.push_str(&table(&["ID", "ERROR"], &rows));
        }
        print(out.as_bytes())?;
    }
    if !failed.is_empty() {
        bail!("{} dead letter(s) were not redriven", failed.len());
    }
    Ok(())
}

async fn pause(client: &AdminClient, sink: &str, pause: bool, json: bool) -> anyhow::Result<()> {
    let verb = if pause { "pause" } else { "resume" };
    let v = client
        .post(
            &format!("/admin/sinks/{}/{verb}", escape(sink)),
            &json!({}),
            Duration::ZERO,
        )
        .await?;
    if json {
        return print_json(&v);
    }
    let name = v.get("sink").and_then(Value::as_str).unwrap_or(sink);
    let now = match v.get("paused").and_then(Value::as_bool) {
        Some(true) => "paused: its backlog keeps what arrives",
        Some(false) => "delivering",
        None => "done",
    };
    print(format!("{name}: {now}\n").as_bytes())
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(default)]
struct ReplayJob {
    job: Value,
    state: String,
    scanned: u64,
    matched: u64,
    published: u64,
    failed: u64,
    error: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

impl ReplayJob {
    fn line(&self) -> String {
        let mut s = format!(
            "replay {}: {}: scanned {}, matched {}, published {}, failed {}",
            text(&self.job),
            self.state,
            self.scanned,
            self.matched,
            self.published,
            self.failed
        );
        if let Some(e) = &self.error {
            s.push_str(&format!(" ({e})"));
        }
        let since = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| super::human::parse_rfc3339(t).ok())
        };
        match (since(&self.started_at), since(&self.finished_at)) {
            (Some(a), Some(b)) => {
                let took = b.duration_since(a).unwrap_or_default().as_secs_f64();
                s.push_str(&format!(", took {}", age(took)));
            }
            (Some(_), None) => {
                if let Some(a) = age_of(self.started_at.as_deref().unwrap_or(""), SystemTime::now())
                {
                    s.push_str(&format!(", started {a} ago"));
                }
            }
            _ => {}
        }
        s.push('\n');
        s
    }
}

async fn replay(client: &AdminClient, a: ReplayArgs, json: bool) -> anyhow::Result<()> {
    if let Some(ReplayCommand::Status { job }) = a.status {
        let v = status(client, &job).await?;
        return if json {
            print_json(&v)
        } else {
            print(job_of(&v)?.line().as_bytes())
        };
    }
    let now = SystemTime::now();
    let since =
        super::human::parse_time(a.since.as_deref().unwrap_or(""), now).context("--since")?;
    let until = match &a.until {
        Some(u) => super::human::parse_time(u, now).context("--until")?,
        None => now,
    };
    if since > until {
        bail!("--since is after --until: nothing to replay");
    }
    let mut body = serde_json::Map::new();
    body.insert("since".into(), json!(super::human::rfc3339(since)));
    body.insert("until".into(), json!(super::human::rfc3339(until)));
    for (key, value) in [("source", a.source), ("event", a.event), ("sink", a.sink)] {
        if let Some(v) = value {
            body.insert(key.into(), json!(v));
        }
    }
    let started = client
        .post("/admin/replay", &Value::Object(body), Duration::ZERO)
        .await?;
    let job = match started.get("job") {
        Some(v @ (Value::String(_) | Value::Number(_))) => text(v),
        _ => bail!("the server started a replay but named no job: {started}"),
    };
    if !a.wait {
        return if json {
            print_json(&started)
        } else {
            print(
                format!("replay {job}: started (follow it: hookrelay admin replay status {job})\n")
                    .as_bytes(),
            )
        };
    }
    let mut shown: Option<ReplayJob> = None;
    let last = loop {
        tokio::time::sleep(POLL).await;
        let v = status(client, &job).await?;
        let j = job_of(&v)?;
        let running = j.state == "running";
        if !json && shown.as_ref() != Some(&j) {
            print(j.line().as_bytes())?;
        }
        shown = Some(j);
        if !running {
            break v;
        }
    };
    if json {
        print_json(&last)?;
    }
    let j = job_of(&last)?;
    if j.state == "failed" {
        bail!(
            "replay {job} failed: {}",
            j.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(())
}

async fn status(client: &AdminClient, job: &str) -> anyhow::Result<Value> {
    client.get(&format!("/admin/replay/{}", escape(job))).await
}

fn job_of(v: &Value) -> anyhow::Result<ReplayJob> {
    serde_json::from_value(v.clone()).context("reading a replay job")
}

/// A string as it is, anything else (an id sent as a number) as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
