//! What the operator sees of a cluster's Raft state on one reconcile: the
//! `/v1/status` answer (or failure) of every pod, and the views derived from
//! it that the planner and the status writer need.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::NodeId;
use crate::node_api::{MemberKind, NodeRole, NodeStatus};
use crate::planner::{ObservedMember, ObservedRaft};

/// One pod's answer.
#[derive(Clone, Debug)]
pub struct NodeObservation {
    pub ordinal: u32,
    pub pod: String,
    pub status: Result<NodeStatus, String>,
}

/// Every pod's answer, in ordinal order.
#[derive(Clone, Debug, Default)]
pub struct ClusterObservation {
    pub nodes: Vec<NodeObservation>,
}

impl ClusterObservation {
    pub fn answered(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.iter().filter_map(|n| n.status.as_ref().ok())
    }

    /// The node that says it is leader in the highest term. A stale leader
    /// of an older term (partitioned away) loses to the current one.
    pub fn leader(&self) -> Option<&NodeStatus> {
        self.answered()
            .filter(|s| s.role == NodeRole::Leader)
            .max_by_key(|s| s.term)
    }

    /// Node ids that answered.
    pub fn healthy(&self) -> BTreeSet<NodeId> {
        self.answered().map(|s| s.id).collect()
    }

    /// The storage id each answering node reports, by its pod ordinal.
    pub fn storage_ids(&self) -> BTreeMap<u32, String> {
        self.answered()
            .filter_map(|s| {
                let id = s.storage_id.as_ref().filter(|id| !id.is_empty())?;
                Some((s.id.ordinal()?, id.clone()))
            })
            .collect()
    }

    /// Highest term any node reports.
    pub fn term(&self) -> Option<u64> {
        self.answered().map(|s| s.term).max()
    }

    /// The Raft configuration from the leader's point of view, the only one
    /// that knows every member's match index.
    pub fn raft(&self) -> Option<ObservedRaft> {
        let leader = self.leader()?;
        let members = leader
            .members
            .iter()
            .map(|m| ObservedMember {
                id: m.id,
                voter: m.role == MemberKind::Voter,
                // The leader's own log is by definition fully matched.
                match_index: if m.id == leader.id {
                    Some(m.match_index.unwrap_or(leader.last_log_index))
                } else {
                    m.match_index
                },
            })
            .collect();
        Some(ObservedRaft {
            leader: leader.id,
            commit_index: leader.commit_index,
            members,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::node_api::MemberInfo;

    /// A status as node `id` (pod `kv-{id-1}`) would report it; `members` is
    /// `(id, voter, match_index)`.
    pub fn status(
        id: u64,
        role: NodeRole,
        term: u64,
        leader: Option<u64>,
        members: &[(u64, bool, Option<u64>)],
    ) -> NodeStatus {
        NodeStatus {
            id: NodeId(id),
            name: format!("kv-{}", id - 1),
            role,
            term,
            leader_id: leader.map(NodeId),
            commit_index: 100,
            applied_index: 99,
            last_log_index: 100,
            storage_id: None,
            members: members
                .iter()
                .map(|(mid, voter, mi)| MemberInfo {
                    id: NodeId(*mid),
                    name: format!("kv-{}", mid - 1),
                    peer_url: String::new(),
                    client_url: String::new(),
                    role: if *voter {
                        MemberKind::Voter
                    } else {
                        MemberKind::Learner
                    },
                    match_index: *mi,
                })
                .collect(),
        }
    }

    fn obs(statuses: Vec<Result<NodeStatus, String>>) -> ClusterObservation {
        ClusterObservation {
            nodes: statuses
                .into_iter()
                .enumerate()
                .map(|(i, s)| NodeObservation {
                    ordinal: i as u32,
                    pod: format!("kv-{i}"),
                    status: s,
                })
                .collect(),
        }
    }

    #[test]
    fn the_leader_of_the_highest_term_wins() {
        let m = [(1, true, None), (2, true, Some(90))];
        let o = obs(vec![
            Ok(status(1, NodeRole::Leader, 3, Some(1), &m)),
            Ok(status(2, NodeRole::Leader, 4, Some(2), &m)),
            Err("timeout".into()),
        ]);
        assert_eq!(o.leader().unwrap().id, NodeId(2));
        assert_eq!(o.healthy(), BTreeSet::from([NodeId(1), NodeId(2)]));
        assert_eq!(o.term(), Some(4));
    }

    #[test]
    fn raft_view_comes_from_the_leader_with_its_own_match_filled_in() {
        let m = [(1, true, None), (2, false, Some(40))];
        let o = obs(vec![
            Ok(status(1, NodeRole::Leader, 2, Some(1), &m)),
            Ok(status(2, NodeRole::Learner, 2, Some(1), &[])),
        ]);
        let raft = o.raft().unwrap();
        assert_eq!(raft.leader, NodeId(1));
        assert_eq!(raft.members[0].match_index, Some(100));
        assert_eq!(
            raft.members[1],
            ObservedMember {
                id: NodeId(2),
                voter: false,
                match_index: Some(40)
            }
        );
    }

    #[test]
    fn no_leader_means_no_raft_view() {
        let o = obs(vec![
            Ok(status(1, NodeRole::Candidate, 5, None, &[])),
            Err("refused".into()),
        ]);
        assert!(o.raft().is_none());
    }
}
