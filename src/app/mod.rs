//! Wires the pieces together for `hookrelay run` and drives shutdown.
//!
//! Drain order on shutdown: readiness off → stop accepting → finish in-flight
//! requests → let the forwarder publish what it can until the drain deadline →
//! persist the cursor → flush producers → return. What was not forwarded stays
//! in the spool for the next start.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

mod check;
mod upkeep;
pub use check::{check_connections, check_offline};
use upkeep::{spawn_archive_pruning, spawn_state_watch};

use crate::config::{
    AckMode, Config, ConfigError, DedupBackend, OnRedisError, SinkConfig, SinkSettings,
};
use crate::deadletter::DeadLetter;
use crate::dedup::{RedisWindow, Space, Window};
use crate::event::{Extractor, now_ns};

use crate::metrics::{self, EventLabels, RequestMetrics};
use crate::server::{self, Ack, App, Limits, Source};
use crate::sink::{FileSink, KafkaSink, NatsSink, RabbitmqSink, Route, Sink, StartError};
use crate::spool::{Record, Spool};
use crate::verify::Verifier;

/// Why `run` or `check` stopped before serving, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sink(#[from] StartError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("the forwarder stopped while running (see the log); exiting to be restarted")]
    ForwarderStopped,
    /// Shutdown (or `hookrelay drain`) ended with this many events still in the
    /// backlogs: exiting non-zero says the pod did not leave its spool empty.
    #[error("{0} event(s) not delivered before the deadline; they stay in the spool")]
    Undelivered(u64),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// What a source checks and reads requests with: built by `run` and `check` alike
/// (its secrets are read, so a missing one stops both).
struct Rules {
    verifier: Arc<Verifier>,
    extractor: Extractor,
}

fn source_rules(config: &Config) -> Result<BTreeMap<String, Rules>, Error> {
    let mut rules = BTreeMap::new();
    for (name, cfg) in &config.sources {
        let verifier = Arc::new(cfg.verifier(name)?);
        let extractor = cfg.extractor(name)?;
        rules.insert(
            name.clone(),
            Rules {
                verifier,
                extractor,
            },
        );
    }
    Ok(rules)
}

/// Every source, ready to serve: its rules, where it stores events, its guards.
/// `routed` names each source's sinks; `backlogs` are the sinks' spools.
fn build_sources(
    config: &Config,
    rules: BTreeMap<String, Rules>,
    routes: &BTreeMap<String, Route>,
    backlogs: &BTreeMap<String, Spool>,
    routed: &BTreeMap<String, Vec<String>>,
) -> Result<HashMap<String, Source>, Error> {
    let mut sources = HashMap::new();
    for (
        name,
        Rules {
            verifier,
            extractor,
        },
    ) in rules
    {
        let cfg = &config.sources[&name];
        let sinks = routed.get(&name).map(Vec::as_slice).unwrap_or_default();
        let missing = |what: &str| Error::Setup(format!("sources.{name}: {what}"));
        if sinks.is_empty() {
            return Err(missing("routes to no sink"));
        }
        let ack = match cfg.ack {
            AckMode::Durable => Ack::Durable(
                sinks
                    .iter()
                    .map(|s| {
                        backlogs
                            .get(s)
                            .cloned()
                            .ok_or_else(|| missing("no backlog"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            AckMode::Broker => Ack::Broker {
                routes: sinks
                    .iter()
                    .map(|s| routes.get(s).cloned().ok_or_else(|| missing("no sink")))
                    .collect::<Result<_, _>>()?,
                timeout: cfg.ack_timeout(),
            },
        };
        let events = match &cfg.events {
            Some(allow) => EventLabels::new(&name, allow.iter().map(String::as_str)),
            None => EventLabels::new(&name, cfg.scheme.known_events().iter().copied()),
        };
        let source = Source {
            verifier,
            extractor,
            metrics: RequestMetrics::new(&name),
            events,
            ack,
            allowed_nets: cfg
                .allowed_cidrs
                .iter()
                .filter_map(|c| crate::guard::parse_net(c))
                .collect(),
            rate_limit: cfg
                .rate_limit
                .map(|r| crate::guard::RateLimiter::new(r.per_second, r.burst)),
        };
        sources.insert(name, source);
    }
    Ok(sources)
}

/// File descriptors kept for everything but connections: spool segments and
/// cursor, the dead-letter file, broker sockets, secret and certificate re-reads.
const RESERVED_FDS: u64 = 64;

/// Raises the soft limit on open files to the hard one (as Go's runtime does) and
/// returns it; `None` if it cannot be read.
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Some(lim.rlim_cur)
}

/// `server.max_connections`, lowered if the file descriptor limit could not hold
/// it besides the admin listener, the file sink's files and a reserve: connections
/// must never take the descriptors the spool's next segment or a checkpoint needs.
fn connection_budget(config: &Config) -> usize {
    let wanted = config.server.max_connections;
    let Some(limit) = raise_fd_limit() else {
        return wanted;
    };
    let files = config.sinks.max_open_files();
    let others = RESERVED_FDS + files + server::ADMIN_MAX_CONNECTIONS as u64;
    let room = usize::try_from(limit.saturating_sub(others)).unwrap_or(usize::MAX);
    if wanted <= room {
        return wanted;
    }
    let budget = room.max(1);
    tracing::warn!(
        max_connections = wanted,
        open_files_limit = limit,
        using = budget,
        "server.max_connections does not fit the open-files limit (ulimit -n) besides the admin listener, the file sink and a reserve; using fewer"
    );
    budget
}

/// Opens every configured sink, by name. Must run inside the runtime (producers
/// spawn tasks).
async fn build_sinks(config: &Config) -> Result<BTreeMap<String, Route>, Error> {
    let mut routes = BTreeMap::new();
    for (name, cfg) in config.sinks.iter() {
        let sink: Arc<dyn Sink> = match &cfg.settings {
            SinkSettings::File(file) => Arc::new(
                FileSink::open(&file.dir, file.max_open_files, file.max_topics).map_err(
                    io_error(format!(
                        "sinks.{name}.dir: cannot open {}",
                        file.dir.display()
                    )),
                )?,
            ),
            SinkSettings::Kafka(kafka) => {
                Arc::new(KafkaSink::new(name, kafka).map_err(|e| renamed(e, cfg, name))?)
            }
            SinkSettings::Rabbitmq(rabbitmq) => Arc::new(
                RabbitmqSink::new(name, rabbitmq)
                    .await
                    .map_err(|e| renamed(e, cfg, name))?,
            ),
            SinkSettings::Nats(nats) => Arc::new(
                NatsSink::new(nats)
                    .await
                    .map_err(|e| renamed(e, cfg, name))?,
            ),
        };
        let kind = cfg.settings.kind();
        let route = Route::new(name, kind, crate::faults::wrap_sink(name, sink));
        routes.insert(name.to_string(), route);
    }
    Ok(routes)
}

/// A sink's start error keyed by its name (`sinks.bus...`), not its kind.
fn renamed(e: StartError, cfg: &SinkConfig, name: &str) -> StartError {
    match e {
        StartError::Config(p) => {
            StartError::Config(crate::config::renamed(p, cfg.settings.kind(), name))
        }
        StartError::Broker(why) => {
            let kind = format!("sinks.{}", cfg.settings.kind().as_str());
            let name = crate::config::segment(name);
            StartError::Broker(match why.strip_prefix(&kind) {
                Some(rest) => format!("sinks.{name}{rest}"),
                None => format!("sinks.{name}: {why}"),
            })
        }
    }
}

/// Each source's sinks, by name.
fn routed(config: &Config) -> BTreeMap<String, Vec<String>> {
    config
        .sources
        .iter()
        .map(|(name, cfg)| {
            let sinks = config.sinks.for_source(cfg);
            (name.clone(), sinks.into_iter().map(String::from).collect())
        })
        .collect()
}

/// The backlogs as opened, before their forwarders start.
struct Backlogs {
    opened: BTreeMap<String, crate::backlog::Opened>,
    dead_letter: Option<DeadLetter>,
    /// Held until the process ends: no other process may use these backlogs.
    lock: Option<crate::backlog::Lock>,
}

/// A backlog for each sink a durable source routes to, and for each that has
/// one on disk still; all of them when an earlier version's spool is there.
async fn open_backlogs(
    config: &Config,
    routes: &BTreeMap<String, Route>,
    routed: &BTreeMap<String, Vec<String>>,
    archives: Option<&Arc<crate::spool::Archives>>,
    remember: impl FnMut(&Record),
) -> Result<Backlogs, Error> {
    let spool_dir = &config.spool.dir;
    let old_spool = crate::spool::holds_spool(spool_dir);
    let backlogged: BTreeMap<String, Route> = routes
        .iter()
        .filter(|(sink, _)| {
            old_spool
                || crate::spool::holds_spool(&spool_dir.join(sink))
                || config
                    .sources
                    .iter()
                    .any(|(name, cfg)| cfg.ack == AckMode::Durable && routed[name].contains(*sink))
        })
        .map(|(sink, route)| (sink.clone(), route.clone()))
        .collect();
    if backlogged.is_empty() && !crate::backlog::has_strays(spool_dir, &config.sinks.names()) {
        return Ok(Backlogs {
            opened: BTreeMap::new(),
            dead_letter: None,
            lock: None,
        });
    }
    let dl = DeadLetter::open(&config.dead_letter.path).map_err(io_error(format!(
        "dead_letter.path: cannot open {}",
        config.dead_letter.path.display()
    )))?;
    let (opened, lock) = crate::backlog::open(config, &backlogged, routed, &dl, archives, remember)
        .await
        .map_err(|e| Error::Setup(e.to_string()))?;
    Ok(Backlogs {
        opened,
        dead_letter: Some(dl),
        lock: Some(lock),
    })
}

/// Runs hookrelay until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let names: Vec<String> = config.sources.keys().cloned().collect();
    let sink_names = config.sinks.names();
    metrics::init(
        &names,
        &sink_names,
        &crate::verify::Failure::ALL.map(|f| f.as_str()),
    );
    let routes = build_sinks(&config).await?;
    let rules = source_rules(&config)?;
    let routed = routed(&config);
    // Per-topic series exist from the start for the event types the config knows.
    for (name, cfg) in &config.sources {
        let known: Vec<&str> = match &cfg.events {
            Some(allow) => allow.iter().map(String::as_str).collect(),
            None => cfg.scheme.known_events().to_vec(),
        };
        for sink in &routed[name] {
            for event in &known {
                routes[sink]
                    .metrics
                    .register_topic(&rules[name].extractor.topic_for(event));
            }
        }
    }

    let window = Duration::from_secs(config.dedup.window_secs);
    let dedup = match config.dedup.backend {
        DedupBackend::Memory => Window::memory(window, config.dedup.max_ids),
        DedupBackend::Redis => Window::Redis(
            RedisWindow::new(
                &config.dedup.redis_url()?,
                window,
                Duration::from_millis(config.dedup.redis_timeout_ms),
                config.dedup.on_redis_error == OnRedisError::Accept,
            )
            .map_err(|e| Error::Setup(format!("dedup.redis_url: {e}")))?,
        ),
    };
    // Spool replay remembers ids in the memory window; Redis remembers by itself.
    let now = now_ns();
    let remember = |r: &Record| {
        if let Window::Memory(d) = &dedup {
            let e = &r.event;
            let age = Duration::from_nanos(now.saturating_sub(e.received_at_ns()));
            d.remember(d.key(e.source(), e.id()), age);
            // The replay guard too: a body captured before a restart stays a duplicate.
            let guard = rules
                .get(e.source())
                .and_then(|s| s.extractor.replay_guard(e));
            if let Some(g) = guard {
                d.remember(d.key_in(Space::Body, e.source(), &g), age);
            }
        }
    };
    let (drain_tx, drain_rx) = watch::channel(None);
    let archives = crate::backlog::archives(&config);
    let Backlogs {
        opened,
        dead_letter,
        lock: _spool_lock,
    } = open_backlogs(&config, &routes, &routed, archives.as_ref(), remember).await?;
    if !opened.is_empty() {
        tracing::info!(remembered_ids = dedup.remembered(), "backlogs opened");
    }
    let backlogs: BTreeMap<String, Spool> = opened
        .iter()
        .map(|(sink, o)| (sink.clone(), o.spool.clone()))
        .collect();
    let verifiers: Vec<(String, Arc<Verifier>)> = rules
        .iter()
        .map(|(name, r)| (name.clone(), r.verifier.clone()))
        .collect();
    let sources = build_sources(&config, rules, &routes, &backlogs, &routed)?;
    let api = Arc::new(crate::admin::Api::new(
        config.admin.token()?.as_deref(),
        routes
            .iter()
            .map(|(name, route)| {
                let backlog = opened
                    .get(name)
                    .map(|o| (o.spool.clone(), o.control.clone()));
                (
                    name.clone(),
                    crate::admin::SinkView {
                        route: route.clone(),
                        backlog,
                    },
                )
            })
            .collect(),
        dead_letter.clone(),
        routed.clone(),
        archives.clone(),
        crate::replay::Jobs::new(config.forward.clone()),
    ));
    let mut running = match &dead_letter {
        Some(dl) => crate::backlog::start(opened, &config, dl, &drain_rx),
        None => crate::backlog::Running::default(),
    };
    if let Some(a) = &archives {
        spawn_archive_pruning(a.clone());
    }

    let tls = match &config.server.tls {
        Some(t) => Some(
            crate::tls::acceptor(t.cert_file.clone(), t.key_file.clone())
                .map_err(|e| Error::Setup(format!("server.tls: {e}")))?,
        ),
        None => None,
    };
    let listener = crate::listener::bind(config.server.listen).map_err(io_error(format!(
        "server.listen: cannot bind {}",
        config.server.listen
    )))?;
    let admin = crate::listener::bind(config.server.admin_listen).map_err(io_error(format!(
        "server.admin_listen: cannot bind {}",
        config.server.admin_listen
    )))?;

    let mut app = App::new(
        sources,
        dedup,
        Limits {
            max_body_bytes: config.server.max_body_bytes,
            header_read_timeout: config.header_read_timeout(),
            body_read_timeout: config.body_read_timeout(),
            max_connections: connection_budget(&config),
            idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
            trusted_proxies: config
                .server
                .trusted_proxies
                .iter()
                .filter_map(|p| crate::guard::parse_net(p))
                .collect(),
            unverified_rate_limit: config.server.unverified_rate_limit,
            max_in_flight_body_bytes: config.server.max_in_flight_body_bytes,
        },
    );
    app.access_log = config.log.access;
    if let Some(o) = &config.otlp {
        let (endpoint, name) = (o.endpoint.clone(), o.service_name.clone());
        let timeout = Duration::from_millis(o.timeout_ms);
        // The exporter's HTTP client is a blocking one: built off the workers.
        let spans = tokio::task::spawn_blocking(move || {
            crate::otlp::Spans::start(&endpoint, &name, timeout)
        })
        .await
        .map_err(|e| Error::Setup(format!("otlp: {e}")))?
        .map_err(Error::Setup)?;
        tracing::info!(endpoint = %o.endpoint, "sending a span per request over OTLP");
        app.spans = Some(spans);
    }
    let app = Arc::new(app);
    metrics::spawn_upkeep(prometheus.clone());
    crate::rotation::spawn(verifiers);
    spawn_state_watch(routes.values().cloned().collect(), app.clone());

    tracing::info!(
        webhooks = %crate::listener::local_addr(&listener).map_or_else(String::new, |a| a.to_string()),
        admin = %crate::listener::local_addr(&admin).map_or_else(String::new, |a| a.to_string()),
        sources = ?names,
        sinks = ?sink_names,
        tls = config.server.tls.is_some(),
        "listening"
    );

    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(server::serve_admin(
        admin,
        app.clone(),
        api,
        prometheus,
        async {
            let _ = admin_stop_rx.await;
        },
    ));

    let deadline_len = config.drain_deadline();
    let started = std::cell::Cell::new(None::<Instant>);
    // Set when a forwarder ended while the process was running: what is accepted
    // for its sink from then on would never be delivered, so stop (non-zero) to
    // be restarted.
    let forwarder_died = std::cell::RefCell::new(None::<String>);
    server::serve(
        listener,
        app.clone(),
        async {
            tokio::select! {
                () = shutdown => {}
                (sink, result) = running.first_to_end() => {
                    app.delivering.store(false, std::sync::atomic::Ordering::Relaxed);
                    let why = match result {
                        Ok(()) => "it returned".to_string(),
                        Err(e) if e.is_panic() => format!("it panicked: {}", crate::supervise::panic_text(&*e.into_panic())),
                        Err(e) => e.to_string(),
                    };
                    tracing::error!(sink = %sink, reason = %why, "a forwarder stopped while running; not ready, shutting down to be restarted");
                    *forwarder_died.borrow_mut() = Some(sink);
                }
            }
            started.set(Some(Instant::now()));
            metrics::ready(false);
            tracing::info!(deadline = ?deadline_len, "shutting down: not ready, no new connections, draining");
        },
        deadline_len,
        tls,
    )
    .await;
    let died = forwarder_died.into_inner();
    let deadline = started.get().unwrap_or_else(Instant::now) + deadline_len;
    let _ = drain_tx.send(Some(deadline));
    let spools = running.spools();
    running.stop(deadline, died.as_deref()).await;
    // At once: one wedged sink must not take the others' share of the deadline.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    futures_util::future::join_all(routes.values().map(|r| r.sink.flush(left))).await;
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    if app.spans.is_some() {
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(s) = &app.spans {
                s.shutdown();
            }
        })
        .await;
    }
    // As persisted: a final checkpoint that failed leaves them to the next start.
    let unconfirmed: u64 = spools
        .iter()
        .map(|s| s.durable_end().saturating_sub(s.persisted_cursor()))
        .sum();
    if died.is_some() {
        tracing::info!(unconfirmed, "stopped");
        return Err(Error::ForwarderStopped);
    }
    if unconfirmed > 0 {
        tracing::error!(unconfirmed, deadline = ?deadline_len,
            "stopped with events not yet delivered: they stay in the spool for the next start (or `hookrelay drain`)");
        return Err(Error::Undelivered(unconfirmed));
    }
    tracing::info!("stopped: every accepted event was delivered");
    Ok(())
}

/// `hookrelay drain`: forwards everything in the backlogs under `spool.dir` to
/// their sinks, with no listener, and returns once they are empty or at
/// `timeout` (then [`Error::Undelivered`] with the count left). The tool for a
/// backlog left on a volume whose pod is gone. A paused sink is drained too: the
/// operator asked for everything to go.
pub async fn drain(config: Config, timeout: Duration) -> Result<(), Error> {
    config.validate()?;
    let sink_names = config.sinks.names();
    let source_names: Vec<String> = config.sources.keys().cloned().collect();
    metrics::init(
        &source_names,
        &sink_names,
        &crate::verify::Failure::ALL.map(|f| f.as_str()),
    );
    let routes = build_sinks(&config).await?;
    let routed = routed(&config);
    let Backlogs {
        mut opened,
        dead_letter,
        lock: _lock,
    } = open_backlogs(
        &config,
        &routes,
        &routed,
        crate::backlog::archives(&config).as_ref(),
        |_| {},
    )
    .await?;
    let Some(dead_letter) = dead_letter else {
        tracing::info!("no backlog to drain");
        return Ok(());
    };
    for o in opened.values_mut() {
        o.control = Arc::new(crate::forward::Control::new(None));
    }
    let dead_before = dead_letter.stats().entries;
    let waiting: u64 = opened
        .values()
        .map(|o| o.spool.durable_end().saturating_sub(o.spool.cursor()))
        .sum();
    tracing::info!(events = waiting, timeout = ?timeout, "draining the backlogs");
    let deadline = Instant::now() + timeout;
    let (_drain_tx, drain_rx) = watch::channel(Some(deadline));
    let running = crate::backlog::start(opened, &config, &dead_letter, &drain_rx);
    let spools = running.spools();
    running.stop(deadline, None).await;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    futures_util::future::join_all(routes.values().map(|r| r.sink.flush(left))).await;
    // As persisted: a final checkpoint that failed leaves them to the next run.
    let remaining: u64 = spools
        .iter()
        .map(|s| s.durable_end().saturating_sub(s.persisted_cursor()))
        .sum();
    let dead_lettered = dead_letter.stats().entries.saturating_sub(dead_before);
    if dead_lettered > 0 {
        tracing::warn!(dead_lettered, path = %config.dead_letter.path.display(),
            "events refused for good during the drain are in the dead letters, not in a sink: keep that file");
    }
    if remaining > 0 {
        tracing::error!(
            remaining,
            "drain deadline reached with events left in the backlogs"
        );
        return Err(Error::Undelivered(remaining));
    }
    tracing::info!(delivered = waiting, "drained: every backlog is empty");
    Ok(())
}
