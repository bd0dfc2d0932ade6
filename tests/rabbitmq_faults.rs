//! Broker-wide RabbitMQ faults on the machine's real broker: a restart while
//! thousands of events flow, and a memory alarm. They change the whole broker, so
//! they run one at a time and always put the broker back.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::amqp::{self, bind, cleanup, drain, unique};
use common::*;
use hyper::StatusCode;

/// `forward.backoff_max_ms` of the broker-restart test.
const BACKOFF_MAX: Duration = Duration::from_millis(2000);

/// One broker-wide fault at a time.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmqctl(args: &[&str]) -> String {
    let o = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"));
    assert!(
        o.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Restores the broker's memory watermark when dropped, even if the test panics.
struct Watermark(String);

impl Watermark {
    fn lower_to_trigger_the_alarm() -> Watermark {
        let original = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]);
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"]);
        Watermark(original)
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        // `0.4` (relative) or `{absolute,N}`.
        let args: Vec<String> = match self
            .0
            .strip_prefix("{absolute,")
            .and_then(|s| s.strip_suffix('}'))
        {
            Some(n) => vec!["absolute".into(), n.into()],
            None => vec![self.0.clone()],
        };
        let mut cmd = vec!["set_vm_memory_high_watermark"];
        cmd.extend(args.iter().map(String::as_str));
        let ok = Command::new("rabbitmqctl")
            .args(&cmd)
            .status()
            .map(|s| s.success());
        if ok.ok() != Some(true) {
            eprintln!(
                "WARNING: could not restore RabbitMQ's memory watermark to {}",
                self.0
            );
        }
    }
}

/// Closes `pid`'s AMQP connections from the broker's side; others are left alone.
fn close_connections_of(pid: u32) {
    let ports = amqp_client_ports(pid);
    assert!(!ports.is_empty(), "process {pid} has no AMQP connection");
    let listing = rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "peer_port",
    ]);
    let mut closed = 0;
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(conn), Some(port)) = (fields.next(), fields.next())
            && port.parse().is_ok_and(|p| ports.contains(&p))
        {
            rabbitmqctl(&[
                "close_connection",
                conn,
                "hookrelay test: closed while blocked",
            ]);
            closed += 1;
        }
    }
    assert!(closed > 0, "none of {ports:?} in\n{listing}");
}

/// Local ports of `pid`'s TCP connections to port 5672, from /proc.
fn amqp_client_ports(pid: u32) -> Vec<u16> {
    let sockets: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[2].ends_with(":1628") && sockets.contains(f[9]) {
                let local = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(local, 16).unwrap());
            }
        }
    }
    ports
}

/// Starts the broker app again if a restart test dies half way.
struct AppRunning;

impl Drop for AppRunning {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .status();
    }
}

async fn wait_metric(relay: &Relay, series: &str, want: f64, within: Duration) {
    eventually(within, || async {
        (metric(&relay.metrics().await, series) == want).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{series} never reached {want}\n{}", relay.logs()));
}

/// Reads `queue` until every id in `ids` was seen; returns (consumed, duplicates).
async fn consume_all(queue: &str, ids: &HashSet<String>, within: Duration) -> (usize, usize) {
    let (conn, ch) = amqp::channel().await;
    let counts: &RefCell<HashMap<String, usize>> = &RefCell::new(HashMap::new());
    eventually(within, || async {
        // What the queue holds now, without waiting.
        let got = drain(&ch, queue, usize::MAX, Duration::ZERO).await;
        let mut counts = counts.borrow_mut();
        for m in got {
            *counts.entry(m.header("hookrelay-id")).or_default() += 1;
        }
        ids.iter().all(|id| counts.contains_key(id)).then_some(())
    })
    .await;
    let _ = conn.close(200, "done".into()).await;
    let counts = counts.take();
    let missing: Vec<_> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acked events never consumed within {within:?}, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let consumed: usize = counts.values().sum();
    (consumed, consumed - counts.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let _one = BROKER.lock().await;
    let ex = unique("hr-restart");
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_sink(dir.path(), "", "", &amqp::sink_section(&ex, ""), "").replace(
        "[log]",
        &format!(
            "[forward]\nbackoff_max_ms = {}\n\n[log]",
            BACKOFF_MAX.as_millis()
        ),
    );
    let relay = Relay::start_with(dir.path(), &config);
    let q = format!("{ex}.all");
    {
        let (conn, ch) = amqp::channel().await;
        bind(&ch, &q, &ex, "#", true).await;
        let _ = conn.close(200, "bound".into()).await;
    }

    // Durable mode answers 200 through a broker restart. Each connection keeps
    // sending until the restart is over, and at least 500 events.
    let load = send_concurrently(
        relay.addr,
        Load::until_stopped(8)
            .at_least(500)
            .paced(Duration::from_millis(3)),
        distinct_events("rs"),
    );
    load.wait_acked(1000, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("only {} events acked\n{}", load.acked(), relay.logs()));
    let started = Instant::now();
    tokio::task::spawn_blocking(|| {
        let guard = AppRunning;
        rabbitmqctl(&["stop_app"]);
        // The broker stays down on purpose for longer than the relay's longest
        // retry backoff, so it has to retry more than once.
        std::thread::sleep(BACKOFF_MAX + Duration::from_secs(1));
        drop(guard); // start_app + await_startup
    })
    .await
    .unwrap();
    load.stop();
    let outage = started.elapsed();
    let sent = load.finish().await;
    sent.assert_all_accepted(&relay.logs());
    let acked = sent.acked;
    let (consumed, duplicates) = consume_all(&q, &acked, Duration::from_secs(120)).await;
    eprintln!(
        "broker restart ({outage:?}): acked {}, consumed {consumed}, duplicates {duplicates}, lost 0",
        acked.len()
    );
    let m = relay.metrics().await;
    assert!(
        metric(&m, "hookrelay_rabbitmq_connects_total{sink=\"rabbitmq\"}") >= 1.0,
        "never reconnected"
    );
    cleanup(&ex, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_pauses_publishing_and_everything_arrives_after() {
    let _one = BROKER.lock().await;
    let ex = unique("hr-alarm");
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_sink(
        dir.path(),
        &amqp::sink_section(&ex, ""),
        "\n[sources.brokered]\nscheme = \"quickassist\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\nack = \"broker\"\nack_timeout_ms = 1000\n",
    );
    let q = format!("{ex}.all");
    {
        let (conn, ch) = amqp::channel().await;
        bind(&ch, &q, &ex, "#", true).await;
        let _ = conn.close(200, "bound".into()).await;
    }
    let mut c = relay.connect().await;
    let mut acked = HashSet::new();
    for i in 0..20 {
        let r = c
            .post_signed(&event_body("message.read", &format!("before-{i}")))
            .await;
        acked.insert(r.json()["id"].as_str().unwrap().to_string());
    }

    let alarm = Watermark::lower_to_trigger_the_alarm();
    // RabbitMQ blocks a connection (and says so) at its first publish under the alarm,
    // and HTTP keeps answering 200 in durable mode: the spool absorbs the alarm.
    // One event per round until then: the block comes with a publish.
    let n = Cell::new(0);
    let alarm_acked = RefCell::new(Vec::new());
    eventually(Duration::from_secs(30), || {
        let (n, alarm_acked, relay) = (&n, &alarm_acked, &relay);
        async move {
            if metric(
                &relay.metrics().await,
                "hookrelay_rabbitmq_blocked{sink=\"rabbitmq\"}",
            ) == 1.0
            {
                return Some(());
            }
            let body = event_body("message.delivered", &format!("alarm-{}", n.get()));
            n.set(n.get() + 1);
            let (status, json) = relay.post(&body).await;
            assert_eq!(status, StatusCode::OK, "{json:?}");
            alarm_acked
                .borrow_mut()
                .push(json["id"].as_str().unwrap().to_string());
            None
        }
    })
    .await
    .unwrap_or_else(|| panic!("never blocked\n{}", relay.logs()));
    acked.extend(alarm_acked.take());
    for i in 0..200 {
        let r = c
            .post_signed(&event_body("message.delivered", &format!("during-{i}")))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        acked.insert(r.json()["id"].as_str().unwrap().to_string());
    }
    assert!(
        metric(
            &relay.metrics().await,
            "hookrelay_spool_events{sink=\"rabbitmq\"}"
        ) > 0.0,
        "nothing held back while blocked"
    );
    // A broker-mode source cannot confirm: 503 within its deadline, not a hang.
    let body = event_body("message.failed", "brokered");
    let sig = sign(body.as_bytes());
    let started = Instant::now();
    let r = c
        .request(
            "POST",
            "/webhooks/brokered",
            &[("x-webhook-signature", &sig)],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // Still ready: the durable source can accept (its backlog has room), and
    // /readyz fails only when no source can.
    let mut admin = Client::connect(relay.admin).await;
    assert_eq!(admin.get("/readyz").await.status, StatusCode::OK);

    // The connection dies while blocked (closed from the broker's side, as a broker
    // restart would): publishing reconnects instead of waiting for an unblock the
    // dead connection will never bring, and the next connection is blocked afresh.
    let connects = metric(
        &relay.metrics().await,
        "hookrelay_rabbitmq_connects_total{sink=\"rabbitmq\"}",
    );
    close_connections_of(relay.child.id());
    eventually(Duration::from_secs(30), || async {
        (metric(
            &relay.metrics().await,
            "hookrelay_rabbitmq_connects_total{sink=\"rabbitmq\"}",
        ) > connects)
            .then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no reconnect after the blocked connection was closed\n{}",
            relay.logs()
        )
    });
    wait_metric(
        &relay,
        "hookrelay_rabbitmq_blocked{sink=\"rabbitmq\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;

    drop(alarm);
    wait_metric(
        &relay,
        "hookrelay_rabbitmq_blocked{sink=\"rabbitmq\"}",
        0.0,
        Duration::from_secs(30),
    )
    .await;
    let (consumed, duplicates) = consume_all(&q, &acked, Duration::from_secs(60)).await;
    eprintln!(
        "memory alarm: acked {}, consumed {consumed}, duplicates {duplicates}, lost 0",
        acked.len()
    );
    wait_metric(
        &relay,
        "hookrelay_spool_events{sink=\"rabbitmq\"}",
        0.0,
        Duration::from_secs(30),
    )
    .await;
    cleanup(&ex, &[&q]).await;
}

/// What one source's sender saw: answers by status, and the ids accepted.
#[derive(Default)]
struct Seen {
    acked: HashSet<String>,
    /// (when, status, the id if accepted) of every answer.
    answers: Vec<(Instant, u16, String)>,
}

/// Posts distinct events to `source` until `stop`, a short pause between them.
fn send_to(
    relay: &Relay,
    source: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    let addr = relay.addr;
    tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        let mut seen = Seen::default();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let body = event_body(EVENT_TYPES[i % 4], &format!("{source}-{i}"));
            let r = c.post_signed_to(source, &body).await;
            let mut id = String::new();
            if r.status == StatusCode::OK {
                id = r.json()["id"].as_str().unwrap().to_string();
                seen.acked.insert(id.clone());
            }
            seen.answers.push((Instant::now(), r.status.as_u16(), id));
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen
    })
}

/// One sink's outage is not another's. RabbitMQ is stopped for 20 s under load
/// from three sources: one routed to RabbitMQ only, one fanned out to RabbitMQ and
/// a file archive, one to a second file sink. The file-only source never gets a
/// 503 and its sink keeps its usual lag; the RabbitMQ sources get 503 only once
/// the RabbitMQ backlog's budget is spent; /readyz stays 200; after the broker is
/// back every acked event is in each sink it was routed to (0 lost per sink).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sinks_outage_refuses_only_the_sources_routed_to_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _one = BROKER.lock().await;
    let ex = unique("hr-isolation");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A 512 KiB budget for RabbitMQ's backlog: a few seconds of this load.
    let budget = 512 * 1024;
    let bus = amqp::sink_section(
        &ex,
        &format!("backlog_max_bytes = {budget}\nconfirm_timeout_ms = 2000"),
    )
    .replace("[sinks.rabbitmq]", "[sinks.bus]\ntype = \"rabbitmq\"");
    let sinks = format!(
        "{bus}\n[sinks.archive]\ntype = \"file\"\ndir = \"{}\"\n[sinks.local]\ntype = \"file\"\ndir = \"{}\"\n",
        d.join("archive").display(),
        d.join("local").display()
    );
    let mut text = config_with_sink(d, "", "segment_bytes = 131072", &sinks, "sink = \"local\"")
        .replace("[log]", "[forward]\nbackoff_max_ms = 1000\n\n[log]");
    for (name, route) in [
        ("fan", "sinks = [\"bus\", \"archive\"]"),
        ("busonly", "sink = \"bus\""),
    ] {
        text.push_str(&format!(
            "\n[sources.{name}]\nscheme = \"quickassist\"\nsecret_env = \"HOOKRELAY_TEST_SECRET\"\n{route}\n"
        ));
    }
    let relay = Relay::start_with(d, &text);
    let q = format!("{ex}.all");
    {
        let (conn, ch) = amqp::channel().await;
        bind(&ch, &q, &ex, "#", true).await;
        let _ = conn.close(200, "bound".into()).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let senders = [
        ("busonly", send_to(&relay, "busonly", stop.clone())),
        ("fan", send_to(&relay, "fan", stop.clone())),
        ("quickassist", send_to(&relay, "quickassist", stop.clone())),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The outage, watched from the admin port every 250 ms.
    let outage = tokio::task::spawn_blocking(|| {
        let guard = AppRunning;
        rabbitmqctl(&["stop_app"]);
        let down = Instant::now();
        std::thread::sleep(Duration::from_secs(20));
        (down, guard)
    });
    let mut not_ready = 0;
    let mut worst_local_lag: f64 = 0.0;
    let mut bus_full_at = None;
    while !outage.is_finished() {
        let mut admin = Client::connect(relay.admin).await;
        if admin.get("/readyz").await.status != StatusCode::OK {
            not_ready += 1;
        }
        let m = relay.metrics().await;
        worst_local_lag =
            worst_local_lag.max(metric(&m, "hookrelay_forward_lag_seconds{sink=\"local\"}"));
        worst_local_lag = worst_local_lag.max(metric(
            &m,
            "hookrelay_forward_lag_seconds{sink=\"archive\"}",
        ));
        if bus_full_at.is_none()
            && metric(&m, "hookrelay_sink_state{sink=\"bus\",state=\"full\"}") == 1.0
        {
            bus_full_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (down, guard) = outage.await.unwrap();
    // The archive holds every fanned-out event accepted so far, while RabbitMQ is still down.
    let archive_before_restart: HashSet<String> = read_events(&d.join("archive"))
        .iter()
        .map(event_id)
        .collect();
    drop(guard); // start_app + await_startup
    let up = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = HashMap::new();
    for (name, task) in senders {
        seen.insert(name, task.await.unwrap());
    }
    let during = |s: &Seen, status: u16| {
        s.answers
            .iter()
            .filter(|(t, st, _)| *t >= down && *t < up && *st == status)
            .count()
    };
    for (name, s) in &seen {
        eprintln!(
            "{name}: acked {}, during the outage: {} accepted, {} refused (503)",
            s.acked.len(),
            during(s, 200),
            during(s, 503)
        );
    }
    eprintln!(
        "worst file-sink lag during the outage: {worst_local_lag:.2} s; not ready {not_ready} times"
    );

    let local = &seen["quickassist"];
    assert!(
        local.answers.iter().all(|(_, st, _)| *st == 200),
        "the file-only source was refused while RabbitMQ was down\n{}",
        relay.logs()
    );
    assert_eq!(not_ready, 0, "/readyz failed while a source could accept");
    assert!(
        worst_local_lag < 2.0,
        "the file sinks lagged {worst_local_lag} s"
    );
    let busonly = &seen["busonly"];
    let first_503 = busonly
        .answers
        .iter()
        .find(|(_, st, _)| *st == 503)
        .map(|(t, _, _)| *t)
        .unwrap_or_else(|| panic!("RabbitMQ's budget was never spent: no 503 for busonly"));
    assert!(first_503 >= down, "a 503 before the outage");
    let full_at = bus_full_at
        .expect("hookrelay_sink_state{state=\"full\"} never showed RabbitMQ's backlog full");
    assert!(
        first_503 + Duration::from_millis(500) >= full_at,
        "busonly got 503 before RabbitMQ's backlog was full"
    );
    assert!(
        during(busonly, 200) >= 500,
        "busonly was refused after only {} accepted during the outage",
        during(busonly, 200)
    );
    let fan = &seen["fan"];
    // Accepted at least 2 s before the broker came back: in the archive by then.
    let fan_missing: Vec<&String> = fan
        .answers
        .iter()
        .filter(|(t, st, _)| *st == 200 && *t + Duration::from_secs(2) < up)
        .map(|(_, _, id)| id)
        .filter(|id| !archive_before_restart.contains(*id))
        .collect();
    assert!(
        fan_missing.is_empty(),
        "the archive fell behind while RabbitMQ was down: {} missing",
        fan_missing.len()
    );

    // Everything is delivered once the broker is back: 0 lost per sink.
    let to_bus: HashSet<String> = busonly.acked.union(&fan.acked).cloned().collect();
    let (consumed, duplicates) = consume_all(&q, &to_bus, Duration::from_secs(120)).await;
    relay
        .wait_drained(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("backlogs never drained\n{}", relay.logs()));
    let archive: HashSet<String> = read_events(&d.join("archive"))
        .iter()
        .map(event_id)
        .collect();
    let local_ids: HashSet<String> = read_events(&d.join("local")).iter().map(event_id).collect();
    assert!(
        fan.acked.is_subset(&archive),
        "fan-out events missing from the archive"
    );
    assert!(
        local.acked.is_subset(&local_ids),
        "events missing from the local file sink"
    );
    eprintln!(
        "isolation: bus acked {} consumed {consumed} (duplicates {duplicates}) lost 0; archive acked {} lost 0; local acked {} lost 0",
        to_bus.len(),
        fan.acked.len(),
        local.acked.len()
    );
    cleanup(&ex, &[&q]).await;
}

/// `hookrelay_sink_up` follows the broker with nothing being sent: 0 within 5 s
/// of `rabbitmqctl stop_app`, 1 again after `start_app` without an event to
/// publish (the sink reconnects on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_up_follows_stop_app_and_start_app() {
    let _one = BROKER.lock().await;
    let ex = unique("hr-up");
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_sink(dir.path(), "", "", &amqp::sink_section(&ex, ""), "");
    let relay = Relay::start_with(dir.path(), &config);
    const UP: &str = "hookrelay_sink_up{sink=\"rabbitmq\"}";
    wait_metric(&relay, UP, 1.0, Duration::from_secs(10)).await;

    let guard = AppRunning;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    let stopped = Instant::now();
    wait_metric(&relay, UP, 0.0, Duration::from_secs(5)).await;
    eprintln!("sink_up 0 after {:?}", stopped.elapsed());
    assert!(stopped.elapsed() <= Duration::from_secs(5));

    tokio::task::spawn_blocking(move || drop(guard)) // start_app + await_startup
        .await
        .unwrap();
    let started = Instant::now();
    wait_metric(&relay, UP, 1.0, Duration::from_secs(20)).await;
    eprintln!("sink_up 1 again {:?} after start_app", started.elapsed());
    cleanup(&ex, &[]).await;
}
