//! The Raft consensus core.
//!
//! This module is a pure, deterministic state machine in the style of
//! etcd's raft library: it is *stepped*, it never *runs*. It owns no socket,
//! file, clock, thread or unseeded random generator. A driver feeds it
//!
//! - [`RaftNode::tick`]: one logical clock tick;
//! - [`RaftNode::step`]: a message from a peer;
//! - [`RaftNode::propose`], [`RaftNode::read_index`],
//!   [`RaftNode::change_membership`], [`RaftNode::transfer_leader`]:
//!   requests from clients and administrators;
//!
//! and then asks [`RaftNode::ready`] what to do: persist, send, apply, serve
//! reads, and finally [`RaftNode::advance`]. Because nothing here touches the
//! outside world, a test can drive many nodes through a simulated network
//! from a seed and replay any failure exactly (see [`harness`]).
//!
//! Where to find what:
//! - `admission.rs`: what a message from the network must satisfy first;
//! - `node.rs`: the protocol itself — roles, elections, replication, reads,
//!   membership and leadership transfer, dispatched by role;
//! - `log.rs`: the log as the core sees it, durable part plus unstable tail;
//! - `progress.rs` and `inflights.rs`: what the leader knows of each follower;
//! - `quorum.rs`: majority arithmetic (who won, what is committed);
//! - `read_only.rs`: pending ReadIndex requests;
//! - `membership.rs`, `message.rs`, `snapshot.rs`, `storage.rs`, `types.rs`,
//!   `ready.rs`, `config.rs`: the vocabulary the rest is written in.

mod admission;
mod config;
mod inflights;
mod log;
mod membership;
mod message;
mod node;
mod progress;
mod quorum;
mod read_only;
mod ready;
mod snapshot;
mod storage;
mod types;

pub mod harness;

pub use admission::Refusal;
pub use config::{Config, ConfigError};
pub use membership::{ConfChange, ConfChangeError, Member, Membership, Role};
pub use message::{
    AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, Message, MessageBody, VoteRequest,
    VoteResponse,
};
pub use node::{PeerProgress, Proposal, ProposeError, RaftError, RaftNode};
pub use ready::{ReadState, Ready, RoleState, Status};
pub use snapshot::{Snapshot, SnapshotMeta};
pub use storage::{InitialState, MemStorage, Storage, StorageError};
pub use types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
