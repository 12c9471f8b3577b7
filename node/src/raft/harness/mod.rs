//! A deterministic test harness for the consensus core: many nodes, a
//! simulated network, simulated durable storage, and a checker of Raft's
//! safety properties, all driven from one seed.
//!
//! It is part of the library (not only of the tests) so that unit tests, the
//! randomized simulator (`node/tests/sim.rs`), the scenario tests that walk
//! the paper, and anyone learning Raft can drive real cores the same way.
//! Nothing here does I/O: the same seed replays the same run exactly.
//!
//! - `network.rs`: messages in flight; loss, duplication, delay (hence
//!   reordering) and partitions;
//! - `cluster.rs`: the nodes, each with durable storage and a durable state
//!   machine, crash and restart, and the driver loop that carries out
//!   `Ready`;
//! - `invariants.rs`: Election Safety, Log Matching, Leader Completeness,
//!   State Machine Safety, committed entries never changing, applied index
//!   never going backwards.

mod cluster;
mod invariants;
mod network;

pub use cluster::{Cluster, ClusterOptions, NodeSetup};
pub use invariants::Violation;
pub use network::Faults;
pub(crate) use network::Network;
