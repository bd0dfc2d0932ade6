//! The `hookrelay` command: parse arguments, set up logging, hand over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

/// mimalloc: the request path allocates small, short-lived buffers on every
/// worker thread, which glibc's allocator serves with lock contention.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use hookrelay::config::{Checked, Config, ConfigError, LogFormat};

#[derive(Parser)]
#[command(
    name = "hookrelay",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("HOOKRELAY_COMMIT"), ")"),
    about = "Signed webhooks in, durable events out to Kafka, RabbitMQ or files."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, env = "HOOKRELAY_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file (and its secrets) and exit.
    Check {
        #[arg(long, short, env = "HOOKRELAY_CONFIG")]
        config: PathBuf,
        /// Also connect to every configured broker and report what it says.
        #[arg(long)]
        connect: bool,
    },
    /// Exit 0 when the admin listener answers /healthz (container health checks;
    /// the runtime image has no shell or curl).
    Health {
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
    },
    /// Forward everything in the backlogs under `spool.dir` to the sinks, with no
    /// listener, and exit: 0 once empty, non-zero with the count left at the
    /// timeout (for a volume whose pod is gone).
    Drain {
        #[arg(long, short, env = "HOOKRELAY_CONFIG")]
        config: PathBuf,
        /// Give up after this long (e.g. 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print the signature header(s) a source's sender would attach to a body.
    Sign {
        #[arg(long, short, env = "HOOKRELAY_CONFIG")]
        config: PathBuf,
        /// The source whose scheme and secret to use.
        #[arg(long, short)]
        source: String,
        /// File holding the exact body bytes to sign (`-` for stdin).
        #[arg(long, short)]
        body: PathBuf,
    },
    /// Look at a spool on disk while no instance runs on it.
    #[command(subcommand)]
    Spool(hookrelay::cli::SpoolCommand),
    /// Ask a running instance's admin API (backlogs, dead letters, pausing, replays).
    Admin(hookrelay::cli::AdminArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config, connect } => check(&config, connect),
        Command::Health { admin } => health(&admin),
        Command::Drain { config, timeout } => drain(&config, timeout),
        Command::Sign {
            config,
            source,
            body,
        } => sign(&config, &source, &body),
        Command::Spool(cmd) => hookrelay::cli::spool(cmd),
        Command::Admin(args) => hookrelay::cli::admin(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookrelay: {}", message(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// EX_CONFIG (sysexits.h): what `vector validate` exits with when the
/// configuration does not validate, its environment checks included.
const EX_CONFIG: u8 = 78;

/// `check` refused the configuration for what it found outside the file (a
/// broker `--connect` could not reach); the details are printed already.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// [`EX_CONFIG`] when the configuration cannot work: anything `check` refuses,
/// and what `run` and `drain` refuse before starting (a problem in the file, a
/// secret they cannot read); 1 for every other failure.
fn exit_code(e: &anyhow::Error) -> u8 {
    use hookrelay::app::Error as App;
    use hookrelay::sink::StartError;
    let config = e.is::<ConfigError>()
        || e.is::<Refused>()
        || matches!(
            e.downcast_ref::<App>(),
            Some(App::Config(_) | App::Sink(StartError::Config(_)))
        );
    if config { EX_CONFIG } else { 1 }
}

/// The error and its causes, `: `-separated as anyhow's `{:#}` prints them, but
/// without a cause whose text ends the message already (errors that print their
/// source in their own message would otherwise say it twice).
fn message(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.ends_with(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_logging(&config);
    let prometheus = hookrelay::metrics::install()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(hookrelay::app::run(
        config,
        prometheus,
        hookrelay::shutdown::signal(),
    ))?;
    Ok(())
}

fn drain(path: &Path, timeout: std::time::Duration) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_logging(&config);
    let _prometheus = hookrelay::metrics::install()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(hookrelay::app::drain(config, timeout))?;
    Ok(())
}

/// Every problem at once (each `file:line: key: why`), warnings, then with
/// `--connect` each broker as it answers; `PATH: ok` only once all of it passed.
fn check(path: &Path, connect: bool) -> anyhow::Result<()> {
    let mut checked = Checked::read(path)?;
    hookrelay::app::check_offline(&checked.config, &mut checked.problems);
    for warning in checked.warnings() {
        println!("warning: {warning}");
    }
    let config = checked.into_result()?;
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    for stray in hookrelay::backlog::strays(&config.spool.dir, &config.sinks.names()) {
        println!(
            "warning: {}: a backlog of sink '{stray}', which is not in this config: the next start dead-letters its events",
            config.spool.dir.join(&stray).display()
        );
    }
    if connect {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let failed =
            runtime.block_on(hookrelay::app::check_connections(
                &config,
                |result| match result {
                    Ok(line) => println!("{line}"),
                    Err(e) => eprintln!("{e}"),
                },
            ));
        if failed > 0 {
            return Err(Refused(format!(
                "{}: {failed} sink(s) could not be reached",
                path.display()
            ))
            .into());
        }
    }
    let sinks: Vec<String> = config
        .sinks
        .iter()
        .map(|(name, s)| match s.settings.kind().as_str() {
            kind if kind == name => name.to_string(),
            kind => format!("{name} ({kind})"),
        })
        .collect();
    println!(
        "{}: ok ({} source(s): {}; sink(s): {})",
        path.display(),
        config.sources.len(),
        config
            .sources
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        sinks.join(", ")
    );
    Ok(())
}

fn sign(path: &Path, source: &str, body: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let src = config.sources.get(source).with_context(|| {
        format!(
            "unknown source '{source}', configured: {}",
            config
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let bytes = if body.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(body).with_context(|| format!("cannot read {}", body.display()))?
    };
    let verifier = src.verifier(source)?;
    let path = format!("/webhooks/{source}");
    for (name, value) in verifier.sign(&bytes, &path)? {
        println!("{name}: {value}");
    }
    Ok(())
}

fn health(admin: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    use std::time::Duration;
    let addr = admin
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {admin}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut head = [0u8; 16];
    let n = s.read(&mut head)?;
    if head[..n].starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        anyhow::bail!("{admin}/healthz did not answer 200")
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Colour only for a person at a terminal: a log collector reading a pipe
    // would store the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
