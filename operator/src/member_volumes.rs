//! Which data each member joined the Raft configuration with, and which
//! members have lost it.
//!
//! A member is its log and its vote as much as its id. If its PVC is deleted
//! (or its data directory emptied) the pod comes back under the same name
//! and id with an empty data directory: keeping it as a voter would count a
//! member that remembers neither what it acknowledged nor whom it voted for.
//! The operator records, per member, an identity of the data it joined
//! with, twice over: the UID of its PVC (`status.memberVolumes`) and the
//! storage id its node reports, drawn when the data directory was created
//! (`status.memberStorage`). Either one changed means the data was
//! replaced, and the planner removes the member so that it joins again as a
//! new learner. The same two functions serve both records: each maps a pod
//! ordinal to the identity seen now.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::{ClusterIdentity, NodeId};
use crate::planner::ObservedRaft;

/// The record to write: every current member keeps the identity recorded
/// when it was first seen, a new member gets its current one, a member
/// that left is forgotten. Without a leader the configuration is unknown
/// and the record is kept as it was.
pub fn record(
    previous: &BTreeMap<String, String>,
    raft: Option<&ObservedRaft>,
    id: &ClusterIdentity,
    current: &BTreeMap<u32, String>,
) -> BTreeMap<String, String> {
    let Some(raft) = raft else {
        return previous.clone();
    };
    raft.members
        .iter()
        .filter_map(|m| {
            let ordinal = m.id.ordinal()?;
            let pod = id.pod(ordinal);
            let uid = previous
                .get(&pod)
                .or_else(|| current.get(&ordinal))?
                .clone();
            Some((pod, uid))
        })
        .collect()
}

/// Members whose data is no longer the one they joined with.
pub fn lost(
    previous: &BTreeMap<String, String>,
    raft: Option<&ObservedRaft>,
    id: &ClusterIdentity,
    current: &BTreeMap<u32, String>,
) -> BTreeSet<NodeId> {
    let Some(raft) = raft else {
        return BTreeSet::new();
    };
    raft.members
        .iter()
        .filter(|m| {
            m.id.ordinal().is_some_and(|o| {
                matches!(
                    (previous.get(&id.pod(o)), current.get(&o)),
                    (Some(joined), Some(now)) if joined != now
                )
            })
        })
        .map(|m| m.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::ObservedMember;

    fn raft(ids: &[u64]) -> ObservedRaft {
        ObservedRaft {
            leader: NodeId(ids[0]),
            commit_index: 10,
            members: ids
                .iter()
                .map(|i| ObservedMember {
                    id: NodeId(*i),
                    voter: true,
                    match_index: Some(10),
                })
                .collect(),
        }
    }

    fn uids(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
        pairs.iter().map(|(o, u)| (*o, u.to_string())).collect()
    }

    fn rec(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(p, u)| (p.to_string(), u.to_string()))
            .collect()
    }

    #[test]
    fn a_replaced_pvc_marks_its_member_lost_until_it_left_and_joined_again() {
        let id = ClusterIdentity::new("kv", "prod");
        let before = rec(&[("kv-0", "a"), ("kv-1", "b")]);
        let now = uids(&[(0, "a"), (1, "b2")]);
        let both = raft(&[1, 2]);
        assert_eq!(
            lost(&before, Some(&both), &id, &now),
            BTreeSet::from([NodeId(2)])
        );
        // The record keeps the old UID while the member is in the
        // configuration, so it stays lost until it is removed...
        assert_eq!(record(&before, Some(&both), &id, &now), before);
        // ...then it is forgotten, and recorded anew once it is back.
        let removed = record(&before, Some(&raft(&[1])), &id, &now);
        assert_eq!(removed, rec(&[("kv-0", "a")]));
        let back = record(&removed, Some(&both), &id, &now);
        assert_eq!(back, rec(&[("kv-0", "a"), ("kv-1", "b2")]));
        assert!(lost(&back, Some(&both), &id, &now).is_empty());
    }

    #[test]
    fn nothing_is_lost_or_forgotten_without_a_leader_or_a_pvc() {
        let id = ClusterIdentity::new("kv", "prod");
        let before = rec(&[("kv-0", "a")]);
        assert_eq!(record(&before, None, &id, &uids(&[])), before);
        assert!(lost(&before, None, &id, &uids(&[(0, "x")])).is_empty());
        // A PVC not (yet) re-created is not a replaced one.
        assert!(lost(&before, Some(&raft(&[1])), &id, &uids(&[])).is_empty());
    }
}
