//! Membership configurations: which nodes vote and which only learn.
//!
//! raftkv changes membership one node at a time (Ongaro's thesis §4.1): any
//! two consecutive configurations then share a majority, so no joint
//! consensus is needed. A new node is first added as a *learner* (it receives
//! the log but does not vote or count toward quorums), promoted to voter once
//! it has caught up, and removed in a later step. The core allows at most one
//! uncommitted configuration change at a time.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::types::NodeId;

/// Whether a member votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Voter,
    Learner,
}

/// One member of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub role: Role,
    /// Opaque to the core. The node keeps the member's name and addresses
    /// here, so that every configuration in the log (and every snapshot) says
    /// how to reach each member.
    pub context: Bytes,
}

/// A complete membership configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    members: BTreeMap<NodeId, Member>,
}

/// A single-step change to a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// Add a new, non-voting member.
    AddLearner { id: NodeId, context: Bytes },
    /// Make a learner a voter.
    Promote { id: NodeId },
    /// Remove a member (voter or learner).
    Remove { id: NodeId },
}

/// Why a configuration change cannot be applied to a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("node {0} is not a learner")]
    NotLearner(NodeId),
    #[error("node {0} is the last voter; removing it would leave no one to elect a leader")]
    LastVoter(NodeId),
    #[error("node id 0 is reserved")]
    InvalidId,
}

impl Membership {
    /// A configuration in which every given node is a voter.
    pub fn with_voters(voters: impl IntoIterator<Item = (NodeId, Bytes)>) -> Self {
        let members = voters
            .into_iter()
            .map(|(id, context)| {
                (
                    id,
                    Member {
                        role: Role::Voter,
                        context,
                    },
                )
            })
            .collect();
        Membership { members }
    }

    /// Every member with its role and context, ordered by id.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &Member)> + '_ {
        self.members.iter().map(|(id, m)| (*id, m))
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        matches!(self.members.get(&id), Some(m) if m.role == Role::Voter)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        matches!(self.members.get(&id), Some(m) if m.role == Role::Learner)
    }

    /// The voters, ordered by id.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role == Role::Voter)
            .map(|(id, _)| *id)
    }

    /// The learners, ordered by id.
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role == Role::Learner)
            .map(|(id, _)| *id)
    }

    /// All member ids, ordered.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.keys().copied()
    }

    pub fn voter_count(&self) -> usize {
        self.voters().count()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The configuration that results from applying `change`.
    pub fn apply(&self, change: &ConfChange) -> Result<Membership, ConfChangeError> {
        let mut next = self.clone();
        match change {
            ConfChange::AddLearner { id, context } => {
                if id.0 == 0 {
                    return Err(ConfChangeError::InvalidId);
                }
                if self.contains(*id) {
                    return Err(ConfChangeError::AlreadyMember(*id));
                }
                next.members.insert(
                    *id,
                    Member {
                        role: Role::Learner,
                        context: context.clone(),
                    },
                );
            }
            ConfChange::Promote { id } => match next.members.get_mut(id) {
                None => return Err(ConfChangeError::NotMember(*id)),
                Some(m) if m.role != Role::Learner => return Err(ConfChangeError::NotLearner(*id)),
                Some(m) => m.role = Role::Voter,
            },
            ConfChange::Remove { id } => {
                if !self.contains(*id) {
                    return Err(ConfChangeError::NotMember(*id));
                }
                if self.is_voter(*id) && self.voter_count() == 1 {
                    return Err(ConfChangeError::LastVoter(*id));
                }
                next.members.remove(id);
            }
        }
        Ok(next)
    }

    /// A rough size in bytes, for message size accounting.
    pub fn approximate_size(&self) -> usize {
        self.members.values().map(|m| 16 + m.context.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        Membership::with_voters((1..=3).map(|i| (NodeId(i), Bytes::new())))
    }

    #[test]
    fn a_learner_is_added_promoted_and_removed() {
        let m = three();
        let m = m
            .apply(&ConfChange::AddLearner {
                id: NodeId(4),
                context: Bytes::from_static(b"n4"),
            })
            .unwrap();
        assert!(m.is_learner(NodeId(4)));
        assert_eq!(m.voter_count(), 3);
        let m = m.apply(&ConfChange::Promote { id: NodeId(4) }).unwrap();
        assert!(m.is_voter(NodeId(4)));
        assert_eq!(m.voter_count(), 4);
        let m = m.apply(&ConfChange::Remove { id: NodeId(4) }).unwrap();
        assert!(!m.contains(NodeId(4)));
    }

    #[test]
    fn invalid_changes_are_refused() {
        let m = three();
        assert_eq!(
            m.apply(&ConfChange::AddLearner {
                id: NodeId(1),
                context: Bytes::new()
            }),
            Err(ConfChangeError::AlreadyMember(NodeId(1)))
        );
        assert_eq!(
            m.apply(&ConfChange::Promote { id: NodeId(1) }),
            Err(ConfChangeError::NotLearner(NodeId(1)))
        );
        assert_eq!(
            m.apply(&ConfChange::Remove { id: NodeId(9) }),
            Err(ConfChangeError::NotMember(NodeId(9)))
        );
        let single = Membership::with_voters([(NodeId(1), Bytes::new())]);
        assert_eq!(
            single.apply(&ConfChange::Remove { id: NodeId(1) }),
            Err(ConfChangeError::LastVoter(NodeId(1)))
        );
    }
}
