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
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{AckMode, Config, ConfigError, DedupBackend, OnRedisError};
use crate::deadletter::DeadLetter;
use crate::dedup::{RedisWindow, Space, Window};
use crate::event::{Extractor, now_ns};
use crate::forward::{self, Forwarder, Routes};
use crate::metrics::{self, EventLabels, RequestMetrics};
use crate::server::{self, Ack, App, Limits, Source};
use crate::sink::{FileSink, KafkaSink, RabbitmqSink, Route, Sink, SinkKind, StartError};
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
fn build_sources(
    config: &Config,
    rules: BTreeMap<String, Rules>,
    sinks: &HashMap<SinkKind, Route>,
    spool: Option<&Spool>,
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
        let ack = match cfg.ack {
            AckMode::Durable => Ack::Durable(
                spool
                    .cloned()
                    .ok_or_else(|| Error::Setup(format!("sources.{name}: no spool")))?,
            ),
            AckMode::Broker => {
                let route = config
                    .sinks
                    .for_source(cfg)
                    .and_then(|kind| sinks.get(&kind))
                    .ok_or_else(|| Error::Setup(format!("sources.{name}.sink: not configured")))?;
                Ack::Broker {
                    route: route.clone(),
                    timeout: cfg.ack_timeout(),
                }
            }
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
    let files = config.sinks.file.as_ref().map_or(0, |f| f.max_open_files) as u64;
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

/// Opens every configured sink. Must run inside the runtime (producers spawn tasks).
async fn build_sinks(config: &Config) -> Result<HashMap<SinkKind, Route>, Error> {
    let mut sinks = HashMap::new();
    if let Some(file) = &config.sinks.file {
        let sink: Arc<dyn Sink> = Arc::new(
            FileSink::open(&file.dir, file.max_open_files, file.max_topics).map_err(io_error(
                format!("sinks.file.dir: cannot open {}", file.dir.display()),
            ))?,
        );
        sinks.insert(SinkKind::File, Route::new(crate::faults::wrap_sink(sink)));
    }
    if let Some(kafka) = &config.sinks.kafka {
        let sink: Arc<dyn Sink> = Arc::new(KafkaSink::new(kafka)?);
        sinks.insert(SinkKind::Kafka, Route::new(crate::faults::wrap_sink(sink)));
    }
    if let Some(rabbitmq) = &config.sinks.rabbitmq {
        let sink: Arc<dyn Sink> = Arc::new(RabbitmqSink::new(rabbitmq).await?);
        sinks.insert(
            SinkKind::Rabbitmq,
            Route::new(crate::faults::wrap_sink(sink)),
        );
    }
    Ok(sinks)
}

/// `hookrelay check`: everything `run` reads before it starts, without connecting.
pub fn check_offline(config: &Config) -> Result<(), Error> {
    source_rules(config)?;
    if let Some(kafka) = &config.sinks.kafka {
        kafka.client_config().map_err(StartError::from)?;
    }
    if let Some(t) = &config.server.tls {
        crate::tls::load(&t.cert_file, &t.key_file)
            .map_err(|e| Error::Setup(format!("server.tls: {e}")))?;
    }
    if let Some(rabbitmq) = &config.sinks.rabbitmq {
        rabbitmq.resolved_uri().map_err(StartError::from)?;
    }
    Ok(())
}

/// `hookrelay check --connect`: reaches every broker sink, or says why not.
pub async fn check_connections(config: &Config) -> Result<Vec<String>, StartError> {
    let mut report = Vec::new();
    if let Some(kafka) = &config.sinks.kafka {
        report.push(crate::sink::kafka::check_connection(kafka)?);
    }
    if let Some(rabbitmq) = &config.sinks.rabbitmq {
        report.push(crate::sink::rabbitmq::check_connection(rabbitmq).await?);
    }
    Ok(report)
}

/// Runs hookrelay until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let names: Vec<String> = config.sources.keys().cloned().collect();
    let kinds: Vec<&str> = config.sinks.kinds().iter().map(|k| k.as_str()).collect();
    metrics::init(
        &names,
        &kinds,
        &crate::verify::Failure::ALL.map(|f| f.as_str()),
    );
    let sinks = build_sinks(&config).await?;
    let rules = source_rules(&config)?;
    // Per-topic series exist from the start for the event types the config knows.
    for (name, cfg) in &config.sources {
        if let Some(route) = config.sinks.for_source(cfg).and_then(|k| sinks.get(&k)) {
            let known: Vec<&str> = match &cfg.events {
                Some(allow) => allow.iter().map(String::as_str).collect(),
                None => cfg.scheme.known_events().to_vec(),
            };
            for event in known {
                route
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
    let durable = config.sources.values().any(|s| s.ack == AckMode::Durable);
    let (drain_tx, drain_rx) = watch::channel(None);
    let mut forwarding: Option<tokio::task::JoinHandle<()>> = None;
    let mut spool = None;
    if durable {
        let (s, reader, recovery) = Spool::open(
            &config.spool.dir,
            config.spool.max_bytes,
            config.spool.segment_bytes,
            remember,
        )
        .map_err(|e| Error::Setup(format!("spool.dir: {e}")))?;
        s.pace_syncs(Duration::from_micros(config.spool.min_sync_interval_us));
        tracing::info!(
            dir = %config.spool.dir.display(),
            pending = recovery.pending,
            truncated_bytes = recovery.truncated_bytes,
            quarantined_bytes = recovery.quarantined_bytes,
            remembered_ids = dedup.remembered(),
            "spool opened"
        );
        let mut by_source = HashMap::new();
        for (name, src) in &config.sources {
            let route = config
                .sinks
                .for_source(src)
                .and_then(|k| sinks.get(&k))
                .ok_or_else(|| Error::Setup(format!("sources.{name}.sink: not configured")))?;
            by_source.insert(name.clone(), route.clone());
        }
        let default = sinks
            .values()
            .next()
            .cloned()
            .ok_or_else(|| Error::Setup("sinks: no sink configured".into()))?;
        let dead_letter = DeadLetter::open(&config.dead_letter.path).map_err(io_error(format!(
            "dead_letter.path: cannot open {}",
            config.dead_letter.path.display()
        )))?;
        let forwarder = Forwarder::new(
            s.clone(),
            reader,
            Routes::new(by_source, default),
            dead_letter,
            config.forward.clone(),
        );
        forwarding = Some(tokio::spawn(forwarder.run(drain_rx)));
        spool = Some(s);
    }
    let verifiers: Vec<(String, Arc<Verifier>)> = rules
        .iter()
        .map(|(name, r)| (name.clone(), r.verifier.clone()))
        .collect();
    let sources = build_sources(&config, rules, &sinks, spool.as_ref())?;

    let tls = match &config.server.tls {
        Some(t) => Some(
            crate::tls::acceptor(t.cert_file.clone(), t.key_file.clone())
                .map_err(|e| Error::Setup(format!("server.tls: {e}")))?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(io_error(format!(
            "server.listen: cannot bind {}",
            config.server.listen
        )))?;
    let admin = TcpListener::bind(config.server.admin_listen)
        .await
        .map_err(io_error(format!(
            "server.admin_listen: cannot bind {}",
            config.server.admin_listen
        )))?;

    let app_spool = spool.clone();
    let app = Arc::new(App::new(
        sources,
        dedup,
        spool,
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
    ));
    metrics::spawn_upkeep(prometheus.clone());
    crate::rotation::spawn(verifiers);
    metrics::ready(true);

    tracing::info!(
        webhooks = %crate::listener::local_addr(&listener).map_or_else(String::new, |a| a.to_string()),
        admin = %crate::listener::local_addr(&admin).map_or_else(String::new, |a| a.to_string()),
        sources = ?names,
        sinks = ?kinds,
        tls = config.server.tls.is_some(),
        "listening"
    );

    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(server::serve_admin(admin, app.clone(), prometheus, async {
        let _ = admin_stop_rx.await;
    }));

    let deadline_len = config.drain_deadline();
    let started = std::cell::Cell::new(None::<Instant>);
    // Set when the forwarder ended while the process was running: what is accepted
    // from then on would never be delivered, so stop (non-zero) to be restarted.
    let forwarder_died = std::cell::Cell::new(false);
    server::serve(
        listener,
        app.clone(),
        async {
            let ended = async {
                match forwarding.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown => {}
                result = ended => {
                    app.delivering.store(false, std::sync::atomic::Ordering::Relaxed);
                    forwarder_died.set(true);
                    let why = match result {
                        Ok(()) => "it returned".to_string(),
                        Err(e) if e.is_panic() => format!("it panicked: {}", crate::supervise::panic_text(&*e.into_panic())),
                        Err(e) => e.to_string(),
                    };
                    tracing::error!(reason = %why, "the forwarder stopped while running; not ready, shutting down to be restarted");
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
    if forwarder_died.get() {
        forwarding = None;
    }
    let deadline = started.get().unwrap_or_else(Instant::now) + deadline_len;
    let _ = drain_tx.send(Some(deadline));
    if let Some(mut f) = forwarding {
        // The forwarder stops itself at the deadline, saving the cursor, unless a sink
        // holds it inside a publish (a blocked broker); then stop it here and save the
        // cursor it reached from the spool's memory: at worst, duplicates after restart.
        let grace = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        let stopped_early = match tokio::time::timeout(grace, &mut f).await {
            Ok(Ok(())) => false,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "forwarder task failed");
                true
            }
            Err(_) => {
                f.abort();
                tracing::warn!("forwarder still busy at the drain deadline; stopped it");
                true
            }
        };
        if stopped_early && let Some(s) = &app_spool {
            let sinks = sinks.values().map(|r| r.sink.clone()).collect();
            // A sink wedged inside a publish may never sync: then keep the old cursor.
            match tokio::time::timeout(
                Duration::from_secs(2),
                forward::checkpoint(s.clone(), sinks),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot persist the spool cursor at shutdown")
                }
                Err(_) => tracing::warn!(
                    "sinks did not sync at shutdown; the spool replays from its last checkpoint"
                ),
            }
        }
    }
    for route in sinks.values() {
        let left = deadline.saturating_duration_since(Instant::now());
        route.sink.flush(left.max(Duration::from_millis(100))).await;
    }
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    let unconfirmed = app
        .spool
        .as_ref()
        .map_or(0, |s| s.durable_end().saturating_sub(s.cursor()));
    tracing::info!(unconfirmed, "stopped");
    if forwarder_died.get() {
        return Err(Error::ForwarderStopped);
    }
    Ok(())
}
