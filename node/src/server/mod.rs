//! The node's runtime: the driver task that owns the consensus core and the
//! state machine, the peer transport, and [`NodeHandle`], through which the
//! client APIs talk to the driver.
//!
//! - `driver/`: the loop (step → ready → persist → send → apply → answer),
//!   one file per stage;
//! - `inbound.rs`: what the network hands the driver;
//! - `outbox.rs`: what the driver needs of the network;
//! - `transport.rs` / `peer_service.rs`: the peer protocol, out and in;
//! - `peer_auth.rs`: who may speak on the peer port (certificates, a shared
//!   secret);
//! - `forward.rs`: followers forwarding client requests to the leader;
//! - `wire.rs`: core messages ⇄ protobuf;
//! - `member_info.rs`: what a member's configuration context holds;
//! - `start.rs`: opening storage and starting all of the above;
//! - `sim/`: the whole-node deterministic simulation (real driver and
//!   storage, simulated clock and network).

mod driver;
pub(crate) use driver::kv_error;
mod forward;
mod handle;
mod inbound;
mod member_info;
mod outbox;
pub mod peer_auth;
pub mod peer_proto;
mod peer_service;
pub(crate) mod put_path;
pub mod sim;
mod start;
mod transport;
pub mod wire;

pub use driver::{DriverConfig, DriverError, Health};
pub use handle::{
    ClientError, Consistency, DEFAULT_WATCH_PROGRESS_INTERVAL, HashKvResult, LeaseAnswer,
    LeaseQuery, LeaseReply, MemberChange, MemberStatus, NewMember, NodeHandle, NodeStatus,
    ReadResult, WriteResult,
};
#[cfg(test)]
pub(crate) use member_info::bad_member_urls;
pub use member_info::{MAX_MEMBER_URL_BYTES, MemberInfo, MemberUrlError, validate_member_url};
pub use peer_auth::{MemberDirectory, PeerAuth, PeerSecret, PeerSecurity};
pub use start::{
    Bootstrap, DEFAULT_LEASE_CHECKPOINT_INTERVAL, NodeConfig, RunningNode, cluster_id_of,
    cluster_id_of_token, start,
};
pub use transport::normalize_url;
