//! The vocabulary of the protocol: identifiers, terms, log indexes and log
//! entries.
//!
//! `NodeId`, `Term` and `LogIndex` are distinct types so that a term can never
//! be passed where an index is expected; all three are plain `u64`s on the
//! wire and on disk.

use std::fmt;

use bytes::Bytes;

use super::membership::Membership;

/// The identity of a member of the cluster. `0` is never a valid id; it is
/// used on the wire for "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// A Raft term: a logical clock that increases with every election.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

/// A position in the replicated log. The first entry has index 1; index 0
/// stands for "before the first entry".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

impl NodeId {
    /// The raw value, for the wire and for metrics labels.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Term {
    pub const ZERO: Term = Term(0);
    /// The largest term a message may carry. Real terms grow by one per
    /// election and never come near it; a larger one is refused at the door
    /// (see `admission`), so that local arithmetic on terms can never reach
    /// the end of `u64`.
    pub const MAX_VALID: Term = Term(u64::MAX >> 1);

    pub fn get(self) -> u64 {
        self.0
    }

    /// The term after this one. Saturates instead of wrapping: admission
    /// keeps terms far below the end, and a bug must fail safe, not restart
    /// the clock at 0.
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);
    /// The largest index a message may carry; see [`Term::MAX_VALID`].
    pub const MAX_VALID: LogIndex = LogIndex(u64::MAX >> 1);

    pub fn get(self) -> u64 {
        self.0
    }

    /// The index after this one (saturating, like [`Term::next`]).
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.saturating_add(1))
    }

    /// The index before this one, saturating at zero.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// `self + n` (saturating).
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0.saturating_add(n))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub payload: EntryPayload,
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// Appended by every new leader at the start of its term, so that it can
    /// commit (and learn the commit index of) entries from earlier terms
    /// (Raft paper §5.4.2, §8).
    Noop,
    /// An opaque command for the state machine.
    Command(Bytes),
    /// The complete membership configuration that is in force from this entry
    /// on. Carrying the whole configuration (rather than a delta) lets a node
    /// that joins late learn every member, with its context, from any one
    /// such entry. A configuration takes effect as soon as it is appended, not
    /// when it commits (Ongaro's thesis §4.1).
    Membership(Membership),
}

impl Entry {
    /// A rough size in bytes, used to bound the size of messages.
    pub fn approximate_size(&self) -> usize {
        let payload = match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(data) => data.len(),
            EntryPayload::Membership(m) => m.approximate_size(),
        };
        payload + 24
    }
}

/// The state every node must persist before it answers a message: the
/// current term, whom it voted for in that term, and the commit index it
/// knows of (Raft paper, Figure 2).
///
/// Persisting `commit` is not required for safety; it lets a restarted node
/// re-apply its committed entries without waiting for a leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: LogIndex,
}

impl HardState {
    /// Whether going from `prev` to this state must reach the disk before
    /// anything that relies on it is sent: a new term or vote must (a
    /// node must never vote twice in a term), the commit index alone need
    /// not (etcd's MustSync).
    pub fn must_sync_after(&self, prev: &HardState) -> bool {
        self.term != prev.term || self.vote != prev.vote
    }
}
