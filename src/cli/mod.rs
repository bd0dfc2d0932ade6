//! The operator's subcommands beside `run`: `spool inspect` reads a stopped
//! instance's disk, `admin ...` talks to a running one. They live in the library,
//! not in `main.rs`, so that their rendering is unit-tested and `main.rs` stays
//! argument parsing only.

mod admin;
mod client;
mod human;
mod inspect;

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `hookrelay spool ...`
#[derive(Subcommand)]
pub enum SpoolCommand {
    /// Report what a spool directory holds, changing nothing; for an instance
    /// that is not running (a running one is asked with `hookrelay admin backlog`).
    Inspect {
        /// A sink's backlog directory, or spool.dir (every backlog in it).
        #[arg(long)]
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `hookrelay admin ...`: where the admin API is, and how to authenticate.
#[derive(Args)]
pub struct AdminArgs {
    /// The admin listener, plain http (loopback, or the pod's IP).
    #[arg(
        long,
        env = "HOOKRELAY_ADMIN_URL",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    pub url: String,
    /// The environment variable holding the admin token (sent as a bearer token).
    #[arg(long, default_value = "HOOKRELAY_ADMIN_TOKEN", global = true)]
    pub token_env: String,
    /// A file holding the admin token, read instead of the variable: the mounted
    /// secret, for `kubectl exec` into an image without a shell.
    #[arg(long, env = "HOOKRELAY_ADMIN_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// Print the server's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Each sink's backlog, state and last error; the archive and dead letters.
    Backlog,
    /// Events sinks refused for good.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Stop delivering to a sink; its backlog keeps what arrives.
    Pause { sink: String },
    /// Deliver to a paused sink again.
    Resume { sink: String },
    /// Publish again events received in a time range, or follow such a job.
    Replay(ReplayArgs),
}

/// Narrows dead letters down; every given field must match.
#[derive(Args, Default)]
pub struct Filter {
    #[arg(long)]
    pub source: Option<String>,
    /// Event type.
    #[arg(long)]
    pub event: Option<String>,
    /// Text in the reason.
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub sink: Option<String>,
}

#[derive(Subcommand)]
pub enum DeadLettersCommand {
    /// One page of dead letters (or every page with --all), oldest first.
    List(ListArgs),
    /// One dead letter: its fields, headers and body.
    Show {
        id: String,
        /// Write only the body's exact bytes to stdout.
        #[arg(long)]
        body_only: bool,
    },
    /// Hand dead letters back to a sink, by id or by filter.
    Redrive(RedriveArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: Filter,
    /// At most this many per page.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this id (the previous page's `next`).
    #[arg(long)]
    pub after: Option<String>,
    /// Follow `next` until the last page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args)]
pub struct RedriveArgs {
    /// A dead letter's id; repeat for several.
    #[arg(long = "id", value_name = "ID", conflicts_with_all = ["source", "event", "reason", "sink", "all"])]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: Filter,
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["source", "event", "reason", "sink"])]
    pub all: bool,
    /// Send them to this sink instead of the one that refused them.
    #[arg(long)]
    pub to_sink: Option<String>,
    /// Have the server wait up to SECS for the sinks to confirm them.
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub status: Option<ReplayCommand>,
    /// From: RFC 3339, or a duration ago (`15m`, `2h`).
    #[arg(long, required = true)]
    pub since: Option<String>,
    /// To (default now): RFC 3339, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub source: Option<String>,
    /// Event type.
    #[arg(long)]
    pub event: Option<String>,
    /// Only to this sink.
    #[arg(long)]
    pub sink: Option<String>,
    /// Follow the job until it ends, printing its progress; fails if it does.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Subcommand)]
pub enum ReplayCommand {
    /// Where a replay job stands.
    Status { job: String },
}

/// Entry point for `main.rs`, which only parses arguments.
pub fn spool(cmd: SpoolCommand) -> anyhow::Result<()> {
    match cmd {
        SpoolCommand::Inspect { dir, json } => inspect::run(&dir, json),
    }
}

/// Entry point for `main.rs`, which only parses arguments.
pub fn admin(args: AdminArgs) -> anyhow::Result<()> {
    admin::run(args)
}
