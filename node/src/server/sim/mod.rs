//! Whole-node deterministic simulation: the real driver loop, the real redb
//! stores and the real snapshot path, under a simulated clock and network,
//! from a seed.
//!
//! The core's simulator (`raft::harness`) proves the protocol with
//! in-memory storage. What it cannot see lives where the core meets the
//! rest of a node: the state machine's configuration, snapshot images cut
//! from redb and installed through staging files, the driver's order of
//! persist/send/apply, compaction, readiness. Here each node is a real
//! [`Driver`](super::driver) over real `LogStore`/`KvStore` files, turned
//! synchronously by the simulation instead of by tokio: ticks are counted,
//! peer messages and snapshot images travel through a simulated network
//! that loses, duplicates, delays (hence reorders) and partitions, and
//! nodes crash (everything in memory is lost) and restart from their data
//! directories, also in the middle of a snapshot transfer. Every tick, the
//! invariants in `checks.rs` are checked. A failing seed replays exactly.
//!
//! - `cluster.rs`: the nodes, the workload and the fault schedule;
//! - `outbox.rs`: what the driver sends, collected for the network;
//! - `checks.rs`: the invariants.

mod checks;
mod cluster;
mod outbox;

pub use checks::Violation;
pub use cluster::{Report, SimCluster, SimOptions};
