//! The `raftkv` command line: one subcommand per module.

pub mod bench;

use clap::{Parser, Subcommand};

/// raftkv: a Raft-replicated key-value store with etcd's v3 API.
#[derive(Debug, Parser)]
#[command(name = "raftkv", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load-test raftkv or etcd over etcd's v3 gRPC API.
    Bench(bench::BenchArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Bench(args) => bench::run(args).await,
        }
    }
}
