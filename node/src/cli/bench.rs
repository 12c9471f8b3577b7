//! `raftkv bench`: flags, and printing the summary as text or JSON.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::bench::{BenchConfig, ReadConsistency, Stop, Workload};

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// Puts of random keys.
    Put,
    /// Gets of random keys (see --consistency).
    Get,
    /// Gets and puts, --read-ratio of them gets.
    Mixed,
    /// Compare-and-swap transactions on random keys.
    Txn,
    /// Put every key once, in order, then stop (loads the store for gets).
    Fill,
}

/// Read consistency of gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Linearizable (through the leader).
    #[value(alias = "l")]
    Linearizable,
    /// Serializable (local, possibly stale).
    #[value(alias = "s")]
    Serializable,
}

/// Output format of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    Text,
    Json,
}

/// Flags of `raftkv bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: WorkloadArg,
    /// Comma-separated gRPC endpoints (host:port), raftkv or etcd.
    #[arg(
        long,
        env = "RAFTKV_BENCH_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections, spread round-robin over the endpoints.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// How long to measure, e.g. 10s, 500ms, 2m (default 10s).
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Stop after this many measured requests instead of after a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Load applied before measuring starts, e.g. 2s.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Consistency of gets (get and mixed workloads).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Fraction of requests that are gets (mixed workload).
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Summary format.
    #[arg(long, value_enum, default_value_t = OutputArg::Text)]
    pub output: OutputArg,
    /// Do not draw the live progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub tls: crate::cli::client::TlsClientArgs,
}

impl BenchArgs {
    /// The bench configuration these flags describe.
    pub fn config(&self) -> BenchConfig {
        let consistency = match self.consistency {
            ConsistencyArg::Linearizable => ReadConsistency::Linearizable,
            ConsistencyArg::Serializable => ReadConsistency::Serializable,
        };
        let workload = match self.workload {
            WorkloadArg::Put => Workload::Put,
            WorkloadArg::Get => Workload::Get(consistency),
            WorkloadArg::Mixed => Workload::Mixed {
                read_ratio: self.read_ratio,
                consistency,
            },
            WorkloadArg::Txn => Workload::Txn,
            WorkloadArg::Fill => Workload::Fill,
        };
        let stop = match (self.requests, self.duration) {
            _ if workload == Workload::Fill => Stop::Requests(self.keys),
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) => Stop::After(d),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        BenchConfig {
            tls: self.tls.client_tls(),
            workload,
            endpoints: self.endpoints.clone(),
            clients: self.clients,
            conns: self.conns,
            stop,
            warmup: self.warmup,
            keys: self.keys,
            key_size: self.key_size,
            value_size: self.value_size,
            progress: !self.no_progress && self.output == OutputArg::Text,
        }
    }
}

/// Runs the bench and prints its summary on stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let summary = crate::bench::run(&args.config()).await?;
    match args.output {
        OutputArg::Text => print!("{summary}"),
        OutputArg::Json => println!(
            "{}",
            serde_json::to_string_pretty(&summary).context("encoding the summary")?
        ),
    }
    Ok(())
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn durations_parse_in_the_usual_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn flags_become_a_bench_configuration() {
        let w = Wrapper::try_parse_from([
            "bench",
            "mixed",
            "--endpoints",
            "a:1,b:2",
            "--clients",
            "100",
            "--conns",
            "10",
            "--requests",
            "5000",
            "--read-ratio",
            "0.9",
            "--consistency",
            "s",
        ])
        .unwrap();
        let c = w.args.config();
        assert_eq!(c.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(c.clients, 100);
        assert_eq!(c.stop, Stop::Requests(5000));
        assert_eq!(
            c.workload,
            Workload::Mixed {
                read_ratio: 0.9,
                consistency: ReadConsistency::Serializable
            }
        );
    }

    #[test]
    fn duration_and_requests_cannot_both_be_given() {
        assert!(
            Wrapper::try_parse_from(["bench", "put", "--duration", "1s", "--requests", "5"])
                .is_err()
        );
    }
}
