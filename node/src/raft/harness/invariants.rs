//! Raft's safety properties (paper Figure 3), checked as the cluster runs.
//!
//! The checker sees every durable write, every commit index a node reports
//! and every entry applied, and remembers what the whole cluster has
//! committed and applied. Each property is checked at the moment it could
//! first be broken, which after every step covers the whole state.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::raft::{Entry, EntryPayload, LogIndex, NodeId, Term};

/// A broken safety property, with what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.property, self.detail)
    }
}

fn violation(property: &'static str, detail: String) -> Violation {
    Violation { property, detail }
}

/// A digest of an entry's payload, so entries can be compared cheaply.
pub fn payload_digest(e: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    match &e.payload {
        EntryPayload::Noop => 0u8.hash(&mut h),
        EntryPayload::Command(data) => {
            1u8.hash(&mut h);
            data.hash(&mut h);
        }
        EntryPayload::Membership(m) => {
            2u8.hash(&mut h);
            for (id, member) in m.members() {
                id.hash(&mut h);
                (member.role as u8).hash(&mut h);
                member.context.hash(&mut h);
            }
        }
    }
    h.finish()
}

/// The state machine's running digest after applying `e` on top of `prev`.
pub fn chain_digest(prev: u64, e: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    e.index.hash(&mut h);
    e.term.hash(&mut h);
    payload_digest(e).hash(&mut h);
    h.finish()
}

#[derive(Debug, Default)]
pub struct Invariants {
    /// Who led each term.
    leaders: BTreeMap<Term, NodeId>,
    /// For each (index, term) ever written by anyone: the payload digest and
    /// the term of the entry before it. Log Matching says both are unique.
    written: BTreeMap<(LogIndex, Term), (u64, Option<Term>)>,
    /// Every committed entry: its term, payload digest, and the term of the
    /// first node that reported it committed (the entry was committed by a
    /// leader of that term or earlier).
    committed: BTreeMap<LogIndex, (Term, u64, Term)>,
    /// The state machine digest after applying each index.
    applied: BTreeMap<LogIndex, u64>,
    /// Steps checked, for the summary.
    pub checks: u64,
}

impl Invariants {
    /// Election Safety: at most one leader per term.
    pub fn saw_leader(&mut self, term: Term, id: NodeId) -> Result<(), Violation> {
        self.checks += 1;
        match self.leaders.get(&term) {
            Some(other) if *other != id => Err(violation(
                "Election Safety",
                format!("nodes {other} and {id} both led term {term}"),
            )),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, id);
                Ok(())
            }
        }
    }

    /// Whether `id` was already seen leading `term`.
    pub fn is_known_leader(&self, term: Term, id: NodeId) -> bool {
        self.leaders.get(&term) == Some(&id)
    }

    /// Log Matching: two entries with the same index and term carry the same
    /// command and follow entries with the same term (and so, inductively,
    /// identical logs up to there). `prev_term` is the writer's term at
    /// `index - 1`, if it still has that entry.
    pub fn saw_write(
        &mut self,
        node: NodeId,
        e: &Entry,
        prev_term: Option<Term>,
        node_commit: LogIndex,
    ) -> Result<(), Violation> {
        self.checks += 1;
        if e.index <= node_commit {
            return Err(violation(
                "committed entries never change",
                format!(
                    "node {node} rewrote index {} at or below its commit index {node_commit}",
                    e.index
                ),
            ));
        }
        let digest = payload_digest(e);
        match self.written.get(&(e.index, e.term)) {
            Some((d, p)) => {
                if *d != digest {
                    return Err(violation(
                        "Log Matching",
                        format!(
                            "node {node} holds a different entry at index {} term {}",
                            e.index, e.term
                        ),
                    ));
                }
                if let (Some(p), Some(q)) = (p, prev_term) {
                    if *p != q {
                        return Err(violation(
                            "Log Matching",
                            format!(
                                "node {node}: entries at index {} term {} follow different terms ({p} vs {q})",
                                e.index, e.term
                            ),
                        ));
                    }
                }
            }
            None => {
                self.written.insert((e.index, e.term), (digest, prev_term));
            }
        }
        Ok(())
    }

    /// A node reports that `e` is committed. Committed entries never change:
    /// every node that commits an index commits the same entry.
    pub fn saw_commit(
        &mut self,
        node: NodeId,
        e: &Entry,
        node_term: Term,
    ) -> Result<(), Violation> {
        self.checks += 1;
        let digest = payload_digest(e);
        match self.committed.get(&e.index) {
            Some((t, d, _)) if *t != e.term || *d != digest => Err(violation(
                "committed entries never change",
                format!(
                    "node {node} committed index {} with term {}, but term {t} was committed there before",
                    e.index, e.term
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(e.index, (e.term, digest, node_term));
                Ok(())
            }
        }
    }

    /// Leader Completeness: a new leader's log holds every entry committed in
    /// an earlier term. `term_at` answers the leader's term at an index,
    /// `None` if compacted into its snapshot.
    pub fn check_leader_complete(
        &mut self,
        node: NodeId,
        term: Term,
        term_at: impl Fn(LogIndex) -> Result<Option<Term>, ()>,
    ) -> Result<(), Violation> {
        self.checks += 1;
        for (index, (t, _, committed_by)) in &self.committed {
            if *committed_by >= term {
                // Possibly committed in this leader's term or later by
                // another leader: not covered by the property.
                continue;
            }
            match term_at(*index) {
                Ok(Some(have)) if have == *t => {}
                Ok(None) => {} // inside the leader's snapshot: committed data
                Ok(Some(have)) => {
                    return Err(violation(
                        "Leader Completeness",
                        format!(
                            "leader {node} of term {term} has term {have} at committed index {index} (committed term {t})"
                        ),
                    ));
                }
                Err(()) => {
                    return Err(violation(
                        "Leader Completeness",
                        format!("leader {node} of term {term} lacks committed index {index}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// State Machine Safety: an applied entry is a committed one, and every
    /// node's state machine is identical after applying the same index.
    pub fn saw_apply(
        &mut self,
        node: NodeId,
        e: &Entry,
        previous_applied: LogIndex,
        digest_after: u64,
    ) -> Result<(), Violation> {
        self.checks += 1;
        if e.index != previous_applied.next() {
            return Err(violation(
                "applied index never goes backwards or skips",
                format!(
                    "node {node} applied index {} after {previous_applied}",
                    e.index
                ),
            ));
        }
        match self.committed.get(&e.index) {
            Some((t, d, _)) if *t == e.term && *d == payload_digest(e) => {}
            _ => {
                return Err(violation(
                    "State Machine Safety",
                    format!(
                        "node {node} applied index {} term {} which is not the committed entry",
                        e.index, e.term
                    ),
                ));
            }
        }
        self.saw_state(node, e.index, digest_after)
    }

    /// The state machine of `node` is `digest` at `index` (after applying or
    /// installing a snapshot).
    pub fn saw_state(
        &mut self,
        node: NodeId,
        index: LogIndex,
        digest: u64,
    ) -> Result<(), Violation> {
        match self.applied.get(&index) {
            Some(d) if *d != digest => Err(violation(
                "State Machine Safety",
                format!("node {node} has a different state at index {index}"),
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(index, digest);
                Ok(())
            }
        }
    }

    /// The committed entry at `index`, if known.
    pub fn committed_term(&self, index: LogIndex) -> Option<Term> {
        self.committed.get(&index).map(|(t, _, _)| *t)
    }

    pub fn max_committed(&self) -> LogIndex {
        self.committed
            .keys()
            .next_back()
            .copied()
            .unwrap_or_default()
    }
}
