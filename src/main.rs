//! The `hookrelay` command: parse arguments, set up logging, hand over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookrelay::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "hookrelay",
    version,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config, connect } => check(&config, connect),
        Command::Sign {
            config,
            source,
            body,
        } => sign(&config, &source, &body),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    ))
}

fn check(path: &Path, connect: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    hookrelay::app::check_offline(&config)?;
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
        config.sinks.names().join(", ")
    );
    if connect {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let report = runtime.block_on(hookrelay::app::check_connections(&config));
        for line in report.map_err(anyhow::Error::msg)? {
            println!("{line}");
        }
    }
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
    for (name, value) in verifier.sign(&bytes, &path).map_err(anyhow::Error::msg)? {
        println!("{name}: {value}");
    }
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
