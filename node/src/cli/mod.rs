//! The `raftkv` command line: one subcommand per file.
//!
//! - `serve`: run a node;
//! - `dev`: run a local cluster of real `serve` processes;
//! - `kv`, `cluster`, `member`, `leader`: a client of the HTTP API
//!   (`client.rs` holds the HTTP plumbing and output formatting shared by
//!   them);
//! - `bench`: a load generator over etcd's v3 gRPC API;
//! - `recover`: offline tools for a cluster that lost its quorum for good;
//! - `snapshot`: backups: save one from a member, check one, restore one;
//!   `snapshot_rotation` keeps a directory (or, through `s3`, an
//!   S3-compatible bucket) of scheduled backups.
//!
//! Every flag has a `RAFTKV_*` environment variable equivalent.

mod admin;
pub mod bench;
mod client;
mod dev;
mod kv;
mod recover;
mod s3;
mod serve;
mod snapshot;
mod snapshot_rotation;

use clap::{Parser, Subcommand};

pub use client::{ClientArgs, Output};
pub use serve::ServeArgs;

/// raftkv: a Raft-replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "raftkv", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node.
    Serve(Box<ServeArgs>),
    /// Run a local cluster of real nodes on loopback (Ctrl-C stops it).
    Dev(dev::DevArgs),
    /// Read and write keys.
    Kv(kv::KvArgs),
    /// Cluster-wide views.
    Cluster(admin::ClusterArgs),
    /// Membership: list, add (as learner), promote, remove.
    Member(admin::MemberArgs),
    /// Leadership.
    Leader(admin::LeaderArgs),
    /// Load-test raftkv or etcd over etcd's v3 gRPC API.
    Bench(bench::BenchArgs),
    /// Recover from the permanent loss of a quorum (offline).
    Recover(recover::RecoverArgs),
    /// Backups: save, check (status) and restore (offline).
    Snapshot(snapshot::SnapshotArgs),
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Kv(args) => kv::run(args).await,
        Command::Cluster(args) => admin::run_cluster(args).await,
        Command::Member(args) => admin::run_member(args).await,
        Command::Leader(args) => admin::run_leader(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Recover(args) => recover::run(args).await,
        Command::Snapshot(args) => snapshot::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
