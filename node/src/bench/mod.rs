//! `raftkv bench`: a load generator that speaks etcd's v3 gRPC API, so that
//! one and the same client measures raftkv and etcd.
//!
//! A run opens `conns` HTTP/2 connections spread over the endpoints and runs
//! `clients` concurrent clients over them, each keeping one request in
//! flight. Keys and values are generated before the run ([`keyspace`]); each
//! client times its requests into its own histogram ([`client`]); the
//! histograms are merged into a [`report::Summary`] at the end. The bench's
//! own CPU time per request is part of the summary ([`cpu`]) because on a
//! small machine the bench competes with the cluster for the same cores.

pub mod client;
pub mod cpu;
pub mod keyspace;
pub mod report;
pub mod run;

use std::time::Duration;

pub use report::{Latency, Summary};
pub use run::run;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Linearizable (etcd's default): goes through the leader's ReadIndex.
    Linearizable,
    /// Served by whichever member receives it, possibly stale.
    Serializable,
}

/// What the clients send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Single-key gets of random keys.
    Get(ReadConsistency),
    /// Gets with probability `read_ratio`, puts otherwise.
    Mixed {
        read_ratio: f64,
        consistency: ReadConsistency,
    },
    /// Compare-and-swap transactions on random keys (see [`client`]).
    Txn,
    /// Puts every key of the key space exactly once, in order, then stops:
    /// loads the store before a read workload.
    Fill,
}

impl Workload {
    /// A short name for reports, e.g. `get-serializable`.
    pub fn name(&self) -> String {
        let c = |c: &ReadConsistency| match c {
            ReadConsistency::Linearizable => "linearizable",
            ReadConsistency::Serializable => "serializable",
        };
        match self {
            Workload::Put => "put".into(),
            Workload::Get(consistency) => format!("get-{}", c(consistency)),
            Workload::Mixed {
                read_ratio,
                consistency,
            } => format!("mixed-{}-reads-{read_ratio}", c(consistency)),
            Workload::Txn => "txn-cas".into(),
            Workload::Fill => "fill".into(),
        }
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long (warm-up not included).
    After(Duration),
    /// After this many requests (warm-up not included).
    Requests(u64),
}

/// Everything a bench run needs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub workload: Workload,
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    pub stop: Stop,
    /// Load is applied but not measured for this long first.
    pub warmup: Duration,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Show a live progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
    /// TLS for `https://` endpoints (trusted CA, client certificate).
    pub tls: crate::tls::ClientTls,
}

/// Why a bench run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid bench configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    KeySpace(#[from] keyspace::KeySpaceError),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("a bench client failed: {0}")]
    Client(String),
}
