//! `raftkv-operator` binary: `crd` prints the CustomResourceDefinition, `run`
//! starts the controller.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "raftkv-operator",
    version,
    about = "Kubernetes operator for raftkv clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the RaftCluster CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = raftkv_operator::crd::crd_yaml().context("serializing the CRD")?;
            print!("{yaml}");
        }
    }
    Ok(())
}
