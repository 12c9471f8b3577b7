//! [`Ready`]: everything the driver must do after stepping the core.

use super::message::Message;
use super::snapshot::Snapshot;
use super::types::{Entry, HardState, LogIndex, NodeId, Term};

/// Work for the driver, in the order it must be done:
///
/// 1. persist `snapshot` (if any), then `entries`, then `hard_state`, as one
///    durable write (group commit);
/// 2. send `messages` — after step 1, because a vote or an append
///    acknowledgement promises that the state is durable. A driver may send
///    those for which [`Message::can_send_before_persist`] holds (a
///    leader's appends and heartbeats) while step 1 is still running;
/// 3. apply `committed_entries` to the state machine, in order;
/// 4. serve `read_states` once the state machine has applied their index;
/// 5. call [`RaftNode::advance`](super::RaftNode::advance).
///
/// No other call may be made on the core between `ready()` and `advance()`.
///
/// A driver that persists on another thread (`Config::async_persistence`)
/// instead queues step 1 together with the messages that must wait for it,
/// does steps 3 and 4 (only durable entries are handed out to apply), and
/// calls [`RaftNode::advance_handed`](super::RaftNode::advance_handed) at
/// once; when a queued write is durable it sends that write's messages and
/// reports it with [`RaftNode::on_persisted`](super::RaftNode::on_persisted).
/// Writes must become durable in the order they were handed out.
#[derive(Debug, Default)]
pub struct Ready {
    /// Set when the hard state changed since the last `Ready`.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, to install before `entries`.
    pub snapshot: Option<Snapshot>,
    /// Entries to append to durable storage. Any stored entries at or after
    /// `entries[0].index` must be discarded (they conflict with the leader).
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    /// Committed entries to apply to the state machine, in log order.
    pub committed_entries: Vec<Entry>,
    /// ReadIndex requests that are now safe to serve.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether there is anything to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
    }
}

/// A linearizable read that may be served once the state machine has applied
/// `index` (Ongaro's thesis §6.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's token from [`RaftNode::read_index`](super::RaftNode::read_index).
    pub ctx: u64,
    pub index: LogIndex,
}

/// Who a node is right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleState {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl RoleState {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleState::Follower => "follower",
            RoleState::PreCandidate => "pre-candidate",
            RoleState::Candidate => "candidate",
            RoleState::Leader => "leader",
        }
    }
}

/// A cheap, copyable summary of a node, for status pages and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: RoleState,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    /// The leader's commit index as this node last heard it (its own when
    /// it leads): what "caught up" is measured against.
    pub leader_commit: LogIndex,
    pub applied_index: LogIndex,
    pub last_log_index: LogIndex,
    pub first_log_index: LogIndex,
}
