//! The operator's subcommands beside `run`: `spool inspect` reads a stopped
//! instance's disk. They live in the library,
//! not in `main.rs`, so that their rendering is unit-tested and `main.rs` stays
//! argument parsing only.

mod human;
mod inspect;

use std::path::PathBuf;

use clap::Subcommand;

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

pub fn spool(cmd: SpoolCommand) -> anyhow::Result<()> {
    match cmd {
        SpoolCommand::Inspect { dir, json } => inspect::run(&dir, json),
    }
}
