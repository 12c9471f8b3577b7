//! The messages Raft peers exchange.
//!
//! Messages are one-way values: an answer is just another message travelling
//! the other way. The transport may lose, duplicate, delay or reorder any of
//! them; the protocol is safe regardless.

use super::snapshot::Snapshot;
use super::types::{Entry, LogIndex, NodeId, Term};

/// A message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term. For a pre-vote request this is the term the sender
    /// *would* campaign in, not its current term.
    pub term: Term,
    pub body: MessageBody,
}

impl Message {
    /// Whether the driver may send this message before the `Ready` that
    /// carries it is persisted. A leader's appends, heartbeats, snapshots
    /// and TimeoutNow promise nothing about its own disk: it counts itself
    /// toward a commit only once its write is durable (thesis §10.2.1), so
    /// writing its log in parallel with replicating it is safe. Votes and
    /// acknowledgements promise durable state and must wait.
    pub fn can_send_before_persist(&self) -> bool {
        matches!(
            self.body,
            MessageBody::Append(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::InstallSnapshot(_)
                | MessageBody::TimeoutNow
        )
    }
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// RequestVote, or its PreVote rehearsal (thesis §9.6).
    Vote(VoteRequest),
    VoteResponse(VoteResponse),
    /// AppendEntries carrying log entries (possibly none, when probing).
    Append(AppendRequest),
    AppendResponse(AppendResponse),
    /// A leader's periodic heartbeat. It carries the commit index (capped at
    /// what the follower is known to hold) and, when ReadIndex requests wait
    /// on it, the context that confirms leadership.
    Heartbeat(Heartbeat),
    HeartbeatResponse(HeartbeatResponse),
    /// InstallSnapshot: the follower needs entries the leader has compacted.
    /// The snapshot's data may travel out of band (see [`Snapshot`]).
    InstallSnapshot(Snapshot),
    /// Leadership transfer: the receiver should campaign at once (thesis §3.10).
    TimeoutNow,
}

/// A vote (or pre-vote) request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteRequest {
    pub pre_vote: bool,
    pub last_log_index: LogIndex,
    pub last_log_term: Term,
    /// Set when the campaign was started by a leadership transfer: the voter
    /// must then not ignore it because it recently heard from the old leader.
    pub transfer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteResponse {
    pub pre_vote: bool,
    pub granted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    pub prev_log_index: LogIndex,
    pub prev_log_term: Term,
    pub entries: Vec<Entry>,
    pub leader_commit: LogIndex,
}

/// The answer to [`AppendRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendResponse {
    /// The follower's log now matches the leader's up to `match_index`.
    Accepted { match_index: LogIndex },
    /// The follower does not have an entry at `rejected_index` with the term
    /// the leader claimed. `hint_index`/`hint_term` name the last entry at or
    /// before `rejected_index` whose term is at most the leader's
    /// `prev_log_term` (or the follower's last index if its log is shorter),
    /// so the leader can skip a whole term per round trip instead of one
    /// index.
    Rejected {
        rejected_index: LogIndex,
        hint_index: LogIndex,
        hint_term: Term,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// What the follower may commit: the leader's commit index, capped at
    /// what the leader knows the follower has.
    pub commit: LogIndex,
    /// The leader's commit index itself, so that a follower knows how far
    /// behind it is (readiness), even while it waits for a snapshot.
    pub leader_commit: LogIndex,
    /// The newest ReadIndex round this heartbeat confirms, if any.
    pub read_round: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub read_round: u64,
}
