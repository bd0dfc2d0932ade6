//! `hookrelay check`: what `run` would fail on before serving, found without
//! starting anything, and `--connect`'s reach to each broker.

use super::renamed;
use crate::config::{Config, Problems, SinkSettings, segment};
use crate::sink::StartError;

/// `hookrelay check`: everything `run` reads before it starts, without
/// connecting: the sources' secrets, the sinks' client settings and secrets, and
/// the TLS files. Every problem goes to `out`.
pub fn check_offline(config: &Config, out: &mut Problems) {
    for (name, cfg) in &config.sources {
        if let Err(e) = cfg.verifier(name) {
            out.add(e);
        }
        if let Err(e) = cfg.extractor(name) {
            out.add(e);
        }
    }
    for (name, cfg) in config.sinks.iter() {
        let problem = match &cfg.settings {
            SinkSettings::Kafka(kafka) => kafka.client_config().err(),
            SinkSettings::Rabbitmq(rabbitmq) => rabbitmq.resolved_uri().err(),
            SinkSettings::Nats(nats) => nats.check_secrets().err(),
            SinkSettings::File(_) => None,
        };
        if let Some(p) = problem {
            let p = crate::config::renamed(p, cfg.settings.kind(), name);
            out.push(p.key, p.why);
        }
    }
    if let Some(t) = &config.server.tls
        && let Err(e) = crate::tls::load(&t.cert_file, &t.key_file)
    {
        out.push("server.tls", e);
    }
}

/// `hookrelay check --connect`: reaches every broker sink in turn and hands each
/// result to `report` as it comes (`sinks.NAME: ...`, either way); returns how
/// many could not be reached.
pub async fn check_connections(
    config: &Config,
    mut report: impl FnMut(Result<String, StartError>),
) -> usize {
    let mut failed = 0;
    for (name, cfg) in config.sinks.iter() {
        let result = match &cfg.settings {
            SinkSettings::Kafka(kafka) => crate::sink::kafka::check_connection(kafka),
            SinkSettings::Rabbitmq(rabbitmq) => {
                crate::sink::rabbitmq::check_connection(rabbitmq).await
            }
            SinkSettings::Nats(nats) => crate::sink::nats::check_connection(nats).await,
            SinkSettings::File(_) => continue,
        };
        let result = result
            .map(|line| format!("sinks.{}: {line}", segment(name)))
            .map_err(|e| renamed(e, cfg, name));
        failed += usize::from(result.is_err());
        report(result);
    }
    failed
}
