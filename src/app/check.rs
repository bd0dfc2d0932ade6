//! `hookrelay check`: what `run` would fail on before serving, found without
//! starting anything, and `--connect`'s reach to each broker.

use std::path::Path;

use super::renamed;
use crate::config::{AckMode, Config, Problems, SinkSettings, segment};
use crate::sink::StartError;

/// `hookrelay check`: everything `run` reads or opens before it starts, without
/// connecting: the sources' secrets, the sinks' client settings and secrets, the
/// TLS files, and the directories it writes. Every problem goes to `out`.
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
    check_dirs(config, out);
}

/// Whether `run` could create and write the directories it uses: the spool (and
/// the dead-letter file beside it) when a backlog would be opened, each backlog's
/// archive, each file sink's directory.
fn check_dirs(config: &Config, out: &mut Problems) {
    let spool = &config.spool.dir;
    let backlogs = spool.exists() || config.sources.values().any(|s| s.ack == AckMode::Durable);
    if backlogs {
        match writable(spool) {
            Err(why) => out.push("spool.dir", why),
            Ok(()) if config.archive.is_some() => {
                for (name, _) in config.sinks.iter() {
                    let dir = spool.join(name).join(crate::spool::ARCHIVE_DIR);
                    if let Err(why) = writable(&dir) {
                        out.push("archive", why);
                    }
                }
            }
            Ok(()) => {}
        }
        let dead = &config.dead_letter.path;
        let parent = dead.parent().unwrap_or(Path::new(""));
        let file = std::fs::OpenOptions::new().append(true).open(dead);
        let why = match file {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => writable(parent).err(),
            Err(e) => Some(format!("cannot write {}: {e}", dead.display())),
            Ok(_) => None,
        };
        if let Some(why) = why {
            out.push("dead_letter.path", why);
        }
    }
    for (name, cfg) in config.sinks.iter() {
        if let SinkSettings::File(f) = &cfg.settings
            && let Err(why) = writable(&f.dir)
        {
            out.push(format!("sinks.{}.dir", segment(name)), why);
        }
    }
}

/// Whether `dir` can be created (as `create_dir_all` would) and written in. Leaves
/// nothing behind: a file is created and removed again in `dir`, or in its
/// nearest ancestor that exists when it does not.
fn writable(dir: &Path) -> Result<(), String> {
    let mut at = dir;
    loop {
        let here = if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            at
        };
        match std::fs::metadata(here) {
            Ok(m) if m.is_dir() => {
                at = here;
                break;
            }
            Ok(_) => {
                return Err(format!(
                    "cannot create {}: {} is not a directory",
                    dir.display(),
                    here.display()
                ));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(parent) => at = parent,
                    None => return Err(format!("cannot create {}: {e}", dir.display())),
                }
            }
            Err(e) => {
                return Err(format!(
                    "cannot create {}: {}: {e}",
                    dir.display(),
                    here.display()
                ));
            }
        }
    }
    let probe = at.join(format!(".hookrelay-check.{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match created {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if at == dir => Err(format!("cannot write in {}: {e}", dir.display())),
        Err(e) => Err(format!(
            "cannot create {}: cannot write in {}: {e}",
            dir.display(),
            at.display()
        )),
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
