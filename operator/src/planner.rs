//! The membership planner: given what the operator observes (the Raft
//! configuration as the leader reports it, which nodes answer, which pods and
//! volumes exist) and what the user asked for, the next single safe step.
//!
//! It is a pure function on purpose. The reconciler carries out one step per
//! pass and then observes again, so an operator that crashed mid-way, or a
//! step that failed, simply leads to the same or the following step on the
//! next pass: there is no hidden progress to lose. The rules, in order:
//!
//! 1. Without a leader nothing changes (except creating the first pod).
//! 2. A pod is brought back for every wanted member whose pod is missing.
//! 3. A learner is first finished: promoted once caught up if it is wanted,
//!    removed if it is not. At most one learner exists at a time, so at most
//!    one membership change is ever in flight.
//! 4. Scale down: the highest unwanted voter first has leadership moved off
//!    it, then is removed, but only if a quorum of healthy voters remains.
//! 5. Scale up: raise the StatefulSet by one pod, wait until the pod answers,
//!    add it as a learner (then rule 3 promotes it).
//! 6. Shrink the StatefulSet by one once its last pod is no longer a member,
//!    then delete that pod's volume if the retention policy says so.
//! 7. Roll pods that run an older pod template (the StatefulSet uses
//!    `OnDelete`, so only the operator replaces them): one at a time, a
//!    member that is down first, then followers, the leader last and only
//!    after leadership moved to a member on the new template; each replaced
//!    member must answer and have applied up to the leader's commit index
//!    before the next pod goes. A replaced member that does not get there
//!    within the patience (`overdue`) halts the rollout.
//!
//! Before all of these (after rule 2), a member whose volume was replaced
//! (it lost its log and its vote) is removed from the configuration; rule 5
//! then adds it back as a learner and rule 3 promotes it.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::NodeId;

/// A member of the Raft configuration as the leader reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedMember {
    pub id: NodeId,
    pub voter: bool,
    /// Highest log index known to be replicated on this member (leader's view).
    pub match_index: Option<u64>,
}

/// The Raft configuration, read from the leader's `/v1/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRaft {
    pub leader: NodeId,
    pub commit_index: u64,
    pub members: Vec<ObservedMember>,
}

/// Everything the planner decides from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanInput {
    /// `spec.replicas`: wanted voters, ordinals `0..desired`.
    pub desired: u32,
    /// `spec.replicas` of the StatefulSet today (0 if it does not exist).
    pub statefulset_replicas: u32,
    /// `None` when no node reports a leader.
    pub raft: Option<ObservedRaft>,
    /// Nodes that answered `/v1/status` on this pass.
    pub healthy: BTreeSet<NodeId>,
    /// Ordinals of pods that exist.
    pub pods: BTreeSet<u32>,
    /// Ordinals of data PVCs that exist.
    pub pvcs: BTreeSet<u32>,
    /// `pvcRetention: Delete`.
    pub delete_pvcs: bool,
    /// A learner whose match index is within this many entries of the
    /// leader's commit index counts as caught up.
    pub max_catch_up_lag: u64,
    /// Ordinals of pods created from an older pod template than the
    /// StatefulSet's current one.
    pub outdated: BTreeSet<u32>,
    /// Ordinals of pods being deleted.
    pub terminating: BTreeSet<u32>,
    /// Each answering node's own applied index.
    pub applied: BTreeMap<NodeId, u64>,
    /// Members whose data volume is not the one they joined with: they
    /// lost their log and their vote, and must join again as new members.
    pub lost_volumes: BTreeSet<NodeId>,
    /// Ordinals of pods on the current template whose member has not
    /// answered, or not caught up, for longer than the rollout waits.
    pub overdue: BTreeSet<u32>,
}

/// Why the planner holds still.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    NoLeader,
    PodNotAnswering {
        ordinal: u32,
    },
    /// Removing this member now would leave fewer healthy voters than a quorum.
    QuorumAtRisk {
        id: NodeId,
        healthy_voters: usize,
        voters: usize,
    },
    /// No healthy, wanted voter can take over leadership.
    NoTransferTarget {
        from: NodeId,
    },
    /// A pod of a member is being deleted; nothing else moves until its
    /// replacement is back.
    PodTerminating {
        ordinal: u32,
    },
    /// A member on the current template has not yet applied up to the
    /// leader's commit index; the rollout waits for it.
    MemberCatchingUp {
        ordinal: u32,
        applied: Option<u64>,
        commit_index: u64,
    },
    /// A member on the current template has been down or behind for longer
    /// than the rollout waits: no further pod is replaced until it recovers
    /// or the template changes.
    RolloutHalted {
        ordinal: u32,
    },
}

/// The next single step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    RaiseStatefulSet {
        replicas: u32,
    },
    AddLearner {
        id: NodeId,
        ordinal: u32,
    },
    WaitCatchUp {
        id: NodeId,
        match_index: Option<u64>,
        commit_index: u64,
    },
    Promote {
        id: NodeId,
    },
    TransferLeader {
        from: NodeId,
        to: NodeId,
    },
    RemoveMember {
        id: NodeId,
    },
    ShrinkStatefulSet {
        replicas: u32,
    },
    DeletePvc {
        ordinal: u32,
    },
    /// Delete a pod that runs an older template; the StatefulSet creates it
    /// again from the current one.
    ReplacePod {
        ordinal: u32,
    },
    Wait(WaitReason),
    Stable,
}

impl Step {
    /// Whether this step changes something (as opposed to waiting).
    pub fn is_action(&self) -> bool {
        !matches!(
            self,
            Step::Wait(_) | Step::WaitCatchUp { .. } | Step::Stable
        )
    }
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn wanted(id: NodeId, desired: u32) -> bool {
    id.ordinal().is_some_and(|o| o < desired)
}

/// The next single safe step. See the module documentation for the rules.
pub fn next_step(input: &PlanInput) -> Step {
    let Some(raft) = &input.raft else {
        if input.statefulset_replicas == 0 && input.desired > 0 {
            return Step::RaiseStatefulSet { replicas: 1 };
        }
        return Step::Wait(WaitReason::NoLeader);
    };
    let members = &raft.members;
    let is_member = |ordinal: u32| {
        members
            .iter()
            .any(|m| m.id == NodeId::from_ordinal(ordinal))
    };

    // 2. Every wanted member needs its pod.
    if let Some(highest) = members
        .iter()
        .filter(|m| wanted(m.id, input.desired))
        .filter_map(|m| m.id.ordinal())
        .max()
        && highest >= input.statefulset_replicas
    {
        return Step::RaiseStatefulSet {
            replicas: highest + 1,
        };
    }

    let voters: Vec<&ObservedMember> = members.iter().filter(|m| m.voter).collect();
    let healthy_voters = |exclude: Option<NodeId>| {
        voters
            .iter()
            .filter(|m| Some(m.id) != exclude && input.healthy.contains(&m.id))
            .count()
    };

    // A member that lost its volume leaves first (then rules 5 and 3 bring
    // it back as a learner). Leadership moves off it if it leads; it must
    // not take the quorum with it.
    if let Some(lost) = members
        .iter()
        .filter(|m| input.lost_volumes.contains(&m.id))
        .min_by_key(|m| m.id)
    {
        if lost.id == raft.leader {
            return transfer_away(input, &voters, lost.id);
        }
        if lost.voter {
            let after = healthy_voters(Some(lost.id));
            if voters.len() <= 1 || after < quorum(voters.len() - 1) {
                return Step::Wait(WaitReason::QuorumAtRisk {
                    id: lost.id,
                    healthy_voters: healthy_voters(None),
                    voters: voters.len(),
                });
            }
        }
        return Step::RemoveMember { id: lost.id };
    }

    // 3. Finish the learner in flight.
    if let Some(learner) = members.iter().filter(|m| !m.voter).min_by_key(|m| m.id) {
        if !wanted(learner.id, input.desired) {
            return Step::RemoveMember { id: learner.id };
        }
        let caught_up = learner
            .match_index
            .is_some_and(|mi| mi.saturating_add(input.max_catch_up_lag) >= raft.commit_index)
            && input.healthy.contains(&learner.id);
        if !caught_up {
            return Step::WaitCatchUp {
                id: learner.id,
                match_index: learner.match_index,
                commit_index: raft.commit_index,
            };
        }
        return Step::Promote { id: learner.id };
    }

    // 4. Scale down, highest ordinal first.
    if let Some(leaving) = voters
        .iter()
        .filter(|m| !wanted(m.id, input.desired))
        .max_by_key(|m| m.id)
    {
        if leaving.id == raft.leader {
            return transfer_away(input, &voters, leaving.id);
        }
        let before = healthy_voters(None);
        let after = healthy_voters(Some(leaving.id));
        if before < quorum(voters.len()) || after < quorum(voters.len() - 1) || voters.len() <= 1 {
            return Step::Wait(WaitReason::QuorumAtRisk {
                id: leaving.id,
                healthy_voters: before,
                voters: voters.len(),
            });
        }
        return Step::RemoveMember { id: leaving.id };
    }

    // 5. Scale up, lowest missing ordinal first.
    if let Some(ordinal) = (0..input.desired).find(|o| !is_member(*o)) {
        if input.statefulset_replicas <= ordinal {
            return Step::RaiseStatefulSet {
                replicas: ordinal + 1,
            };
        }
        let id = NodeId::from_ordinal(ordinal);
        if !input.healthy.contains(&id) {
            return Step::Wait(WaitReason::PodNotAnswering { ordinal });
        }
        return Step::AddLearner { id, ordinal };
    }

    // 6. Retire pods and volumes no member uses any more.
    if input.statefulset_replicas > input.desired {
        let last = input.statefulset_replicas - 1;
        if !is_member(last) {
            return Step::ShrinkStatefulSet { replicas: last };
        }
    }
    if input.delete_pvcs
        && let Some(&ordinal) = input.pvcs.iter().find(|o| {
            **o >= input.statefulset_replicas && !is_member(**o) && !input.pods.contains(o)
        })
    {
        return Step::DeletePvc { ordinal };
    }

    // 7. Roll pods on an older template.
    roll(input, raft, &voters)
}

/// Move leadership off `from` to the most caught-up healthy, wanted voter
/// that runs the current template (ties: the lowest id).
fn transfer_away(input: &PlanInput, voters: &[&ObservedMember], from: NodeId) -> Step {
    let target = voters
        .iter()
        .filter(|m| {
            m.id != from
                && wanted(m.id, input.desired)
                && input.healthy.contains(&m.id)
                && !input.lost_volumes.contains(&m.id)
        })
        .max_by_key(|m| {
            let current = m.id.ordinal().is_some_and(|o| !input.outdated.contains(&o));
            (current, m.match_index.unwrap_or(0), std::cmp::Reverse(m.id))
        });
    match target {
        Some(to) => Step::TransferLeader { from, to: to.id },
        None => Step::Wait(WaitReason::NoTransferTarget { from }),
    }
}

/// Rule 7: the next step of a rolling replacement of outdated pods, or
/// [`Step::Stable`] when every pod runs the current template.
fn roll(input: &PlanInput, raft: &ObservedRaft, voters: &[&ObservedMember]) -> Step {
    let member_ordinals: BTreeSet<u32> =
        raft.members.iter().filter_map(|m| m.id.ordinal()).collect();
    // Pods that are not members (none once scaling settled) are replaced
    // freely: they carry nothing.
    let outdated: Vec<u32> = input
        .outdated
        .iter()
        .copied()
        .filter(|o| input.pods.contains(o))
        .collect();
    if outdated.is_empty() {
        return Step::Stable;
    }
    if let Some(&ordinal) = input
        .terminating
        .iter()
        .find(|o| member_ordinals.contains(o))
    {
        return Step::Wait(WaitReason::PodTerminating { ordinal });
    }
    // Every member already on the current template must be back and caught
    // up before another pod goes.
    for m in &raft.members {
        let Some(ordinal) = m.id.ordinal() else {
            continue;
        };
        if input.outdated.contains(&ordinal) {
            continue;
        }
        let applied = input.applied.get(&m.id).copied();
        let caught_up = input.healthy.contains(&m.id)
            && applied
                .is_some_and(|a| a.saturating_add(input.max_catch_up_lag) >= raft.commit_index);
        if caught_up {
            continue;
        }
        if input.overdue.contains(&ordinal) {
            return Step::Wait(WaitReason::RolloutHalted { ordinal });
        }
        if !input.healthy.contains(&m.id) {
            return Step::Wait(WaitReason::PodNotAnswering { ordinal });
        }
        return Step::Wait(WaitReason::MemberCatchingUp {
            ordinal,
            applied,
            commit_index: raft.commit_index,
        });
    }
    // A pod that is no member, or whose member does not answer, first: it
    // serves nobody, so replacing it costs nothing. Then followers, highest
    // ordinal first; the leader last.
    let is_healthy_member =
        |o: u32| member_ordinals.contains(&o) && input.healthy.contains(&NodeId::from_ordinal(o));
    let next = outdated
        .iter()
        .copied()
        .find(|o| !is_healthy_member(*o))
        .or_else(|| {
            outdated
                .iter()
                .copied()
                .rev()
                .find(|o| NodeId::from_ordinal(*o) != raft.leader)
        });
    let Some(ordinal) = next else {
        // Only the leader's pod is left.
        if voters.len() > 1 {
            return transfer_away(input, voters, raft.leader);
        }
        // A single voter cannot keep serving while its pod is replaced.
        return Step::ReplacePod {
            ordinal: raft.leader.ordinal().unwrap_or(0),
        };
    };
    let id = NodeId::from_ordinal(ordinal);
    let is_voter = voters.iter().any(|m| m.id == id);
    if is_voter && input.healthy.contains(&id) {
        let others = voters
            .iter()
            .filter(|m| m.id != id && input.healthy.contains(&m.id))
            .count();
        if others < quorum(voters.len()) {
            return Step::Wait(WaitReason::QuorumAtRisk {
                id,
                healthy_voters: others + 1,
                voters: voters.len(),
            });
        }
    }
    Step::ReplacePod { ordinal }
}

/// The step before [`next_step`] for a cluster that has never had a leader
/// but found the volumes of an earlier cluster of the same name
/// (`retained`, by ordinal; see `retained_volumes`): start a pod for every
/// one of them at once. Their members may need each other for a quorum, so
/// the one-pod bootstrap of a new cluster would wait forever. `None` once
/// they all have pods, or when there is nothing to adopt.
pub fn adopt_retained(
    statefulset_replicas: u32,
    raft: Option<&ObservedRaft>,
    retained: &BTreeSet<u32>,
) -> Option<Step> {
    if raft.is_some() {
        return None;
    }
    let highest = *retained.iter().max()?;
    (highest >= statefulset_replicas).then_some(Step::RaiseStatefulSet {
        replicas: highest + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: u64 = 10;

    #[test]
    fn retained_volumes_all_get_their_pods_before_a_leader_exists() {
        let retained = BTreeSet::from([0, 1, 2]);
        assert_eq!(
            adopt_retained(0, None, &retained),
            Some(Step::RaiseStatefulSet { replicas: 3 })
        );
        assert_eq!(
            adopt_retained(1, None, &retained),
            Some(Step::RaiseStatefulSet { replicas: 3 })
        );
        assert_eq!(adopt_retained(3, None, &retained), None);
        assert_eq!(adopt_retained(0, None, &BTreeSet::new()), None);
        let raft = ObservedRaft {
            leader: NodeId(1),
            commit_index: 5,
            members: vec![],
        };
        assert_eq!(adopt_retained(0, Some(&raft), &retained), None);
    }

    fn voter(id: u64, match_index: u64) -> ObservedMember {
        ObservedMember {
            id: NodeId(id),
            voter: true,
            match_index: Some(match_index),
        }
    }
    fn learner(id: u64, match_index: Option<u64>) -> ObservedMember {
        ObservedMember {
            id: NodeId(id),
            voter: false,
            match_index,
        }
    }

    /// A scenario: desired voters, StatefulSet replicas, leader, members;
    /// every member and every pod `0..sts` answers unless told otherwise.
    struct Case {
        name: &'static str,
        desired: u32,
        sts: u32,
        leader: Option<u64>,
        members: Vec<ObservedMember>,
        down: &'static [u64],
        pvcs: &'static [u32],
        delete_pvcs: bool,
        expect: Step,
    }

    impl Case {
        fn input(&self) -> PlanInput {
            let mut healthy: BTreeSet<NodeId> = (0..self.sts).map(NodeId::from_ordinal).collect();
            for m in &self.members {
                if m.id.ordinal().is_some_and(|o| o < self.sts) {
                    healthy.insert(m.id);
                }
            }
            for d in self.down {
                healthy.remove(&NodeId(*d));
            }
            PlanInput {
                desired: self.desired,
                statefulset_replicas: self.sts,
                raft: self.leader.map(|l| ObservedRaft {
                    leader: NodeId(l),
                    commit_index: 100,
                    members: self.members.clone(),
                }),
                healthy,
                pods: (0..self.sts).collect(),
                pvcs: self.pvcs.iter().copied().collect(),
                delete_pvcs: self.delete_pvcs,
                max_catch_up_lag: LAG,
                outdated: BTreeSet::new(),
                terminating: BTreeSet::new(),
                applied: healthy_applied(&self.members),
                lost_volumes: BTreeSet::new(),
                overdue: BTreeSet::new(),
            }
        }
    }

    /// Every member has applied what its match index says.
    fn healthy_applied(members: &[ObservedMember]) -> BTreeMap<NodeId, u64> {
        members
            .iter()
            .map(|m| (m.id, m.match_index.unwrap_or(0)))
            .collect()
    }

    fn case(
        name: &'static str,
        desired: u32,
        sts: u32,
        leader: Option<u64>,
        members: Vec<ObservedMember>,
        expect: Step,
    ) -> Case {
        Case {
            name,
            desired,
            sts,
            leader,
            members,
            down: &[],
            pvcs: &[],
            delete_pvcs: false,
            expect,
        }
    }

    fn run(cases: Vec<Case>) {
        for c in cases {
            assert_eq!(next_step(&c.input()), c.expect, "case: {}", c.name);
        }
    }

    #[test]
    fn bootstrap_and_leaderless_cases() {
        run(vec![
            case(
                "nothing exists: create the first pod",
                3,
                0,
                None,
                vec![],
                Step::RaiseStatefulSet { replicas: 1 },
            ),
            case(
                "first pod not elected yet",
                3,
                1,
                None,
                vec![],
                Step::Wait(WaitReason::NoLeader),
            ),
            case(
                "leader lost mid-scale: change nothing",
                5,
                4,
                None,
                vec![],
                Step::Wait(WaitReason::NoLeader),
            ),
            case(
                "single node cluster is stable",
                1,
                1,
                Some(1),
                vec![voter(1, 100)],
                Step::Stable,
            ),
        ]);
    }

    #[test]
    fn scale_up_walks_raise_add_catch_up_promote() {
        run(vec![
            case(
                "1 of 3: raise the StatefulSet",
                3,
                1,
                Some(1),
                vec![voter(1, 100)],
                Step::RaiseStatefulSet { replicas: 2 },
            ),
            case(
                "pod 1 answers: add it as learner",
                3,
                2,
                Some(1),
                vec![voter(1, 100)],
                Step::AddLearner {
                    id: NodeId(2),
                    ordinal: 1,
                },
            ),
            case(
                "learner far behind: wait",
                3,
                2,
                Some(1),
                vec![voter(1, 100), learner(2, Some(50))],
                Step::WaitCatchUp {
                    id: NodeId(2),
                    match_index: Some(50),
                    commit_index: 100,
                },
            ),
            case(
                "learner match unknown: wait",
                3,
                2,
                Some(1),
                vec![voter(1, 100), learner(2, None)],
                Step::WaitCatchUp {
                    id: NodeId(2),
                    match_index: None,
                    commit_index: 100,
                },
            ),
            case(
                "learner within lag: promote",
                3,
                2,
                Some(1),
                vec![voter(1, 100), learner(2, Some(95))],
                Step::Promote { id: NodeId(2) },
            ),
            case(
                "2 of 3 voters: raise again",
                3,
                2,
                Some(1),
                vec![voter(1, 100), voter(2, 100)],
                Step::RaiseStatefulSet { replicas: 3 },
            ),
            case(
                "3 of 3 voters: stable",
                3,
                3,
                Some(1),
                vec![voter(1, 100), voter(2, 100), voter(3, 100)],
                Step::Stable,
            ),
        ]);
    }

    #[test]
    fn scale_up_waits_for_the_new_pod_to_answer() {
        run(vec![Case {
            down: &[2],
            ..case(
                "pod 1 not up",
                3,
                2,
                Some(1),
                vec![voter(1, 100)],
                Step::Wait(WaitReason::PodNotAnswering { ordinal: 1 }),
            )
        }]);
    }

    #[test]
    fn an_unhealthy_learner_is_not_promoted_even_if_it_was_caught_up() {
        run(vec![Case {
            down: &[2],
            ..case(
                "learner caught up but gone",
                3,
                2,
                Some(1),
                vec![voter(1, 100), learner(2, Some(100))],
                Step::WaitCatchUp {
                    id: NodeId(2),
                    match_index: Some(100),
                    commit_index: 100,
                },
            )
        }]);
    }

    #[test]
    fn scale_down_moves_leadership_off_the_last_pod_first() {
        let three = || vec![voter(1, 90), voter(2, 100), voter(3, 100)];
        run(vec![
            case(
                "leader on pod 2: transfer to the most caught-up wanted voter",
                2,
                3,
                Some(3),
                three(),
                Step::TransferLeader {
                    from: NodeId(3),
                    to: NodeId(2),
                },
            ),
            case(
                "leader elsewhere: remove member 3",
                2,
                3,
                Some(2),
                three(),
                Step::RemoveMember { id: NodeId(3) },
            ),
            case(
                "member 3 gone: shrink",
                2,
                3,
                Some(2),
                vec![voter(1, 100), voter(2, 100)],
                Step::ShrinkStatefulSet { replicas: 2 },
            ),
            case(
                "shrunk, volumes retained: stable",
                2,
                2,
                Some(2),
                vec![voter(1, 100), voter(2, 100)],
                Step::Stable,
            ),
        ]);
    }

    #[test]
    fn transfer_ties_go_to_the_lowest_id() {
        run(vec![case(
            "equal match",
            1,
            3,
            Some(3),
            vec![voter(1, 100), voter(2, 100), voter(3, 100)],
            Step::TransferLeader {
                from: NodeId(3),
                to: NodeId(1),
            },
        )]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_and_one_at_a_time() {
        let five = || (1..=5).map(|i| voter(i, 100)).collect::<Vec<_>>();
        run(vec![
            case(
                "5 -> 3 starts with member 5",
                3,
                5,
                Some(1),
                five(),
                Step::RemoveMember { id: NodeId(5) },
            ),
            case(
                "member 5 removed, pod 4 still running: remove member 4 before shrinking below it",
                3,
                5,
                Some(1),
                (1..=4).map(|i| voter(i, 100)).collect(),
                Step::RemoveMember { id: NodeId(4) },
            ),
            case(
                "both removed: shrink by one",
                3,
                5,
                Some(1),
                (1..=3).map(|i| voter(i, 100)).collect(),
                Step::ShrinkStatefulSet { replicas: 4 },
            ),
            case(
                "shrink again",
                3,
                4,
                Some(1),
                (1..=3).map(|i| voter(i, 100)).collect(),
                Step::ShrinkStatefulSet { replicas: 3 },
            ),
        ]);
    }

    #[test]
    fn scale_down_never_leaves_fewer_healthy_voters_than_a_quorum() {
        run(vec![
            Case {
                // 3 voters, member 2 down: removing 3 leaves {1,2} with one
                // healthy voter, below a quorum of 2.
                down: &[2],
                ..case(
                    "removal would lose quorum",
                    2,
                    3,
                    Some(1),
                    vec![voter(1, 100), voter(2, 100), voter(3, 100)],
                    Step::Wait(WaitReason::QuorumAtRisk {
                        id: NodeId(3),
                        healthy_voters: 2,
                        voters: 3,
                    }),
                )
            },
            Case {
                // The leaving member itself is down: {1,2} both healthy, and
                // the old configuration still has 2 of 3. Safe.
                down: &[3],
                ..case(
                    "removing a dead member is allowed",
                    2,
                    3,
                    Some(1),
                    vec![voter(1, 100), voter(2, 100), voter(3, 100)],
                    Step::RemoveMember { id: NodeId(3) },
                )
            },
            Case {
                down: &[1, 2],
                ..case(
                    "leader must move but every wanted voter is down",
                    2,
                    3,
                    Some(3),
                    vec![voter(1, 100), voter(2, 100), voter(3, 100)],
                    Step::Wait(WaitReason::NoTransferTarget { from: NodeId(3) }),
                )
            },
            case(
                "2 -> 1 with both healthy is allowed",
                1,
                2,
                Some(1),
                vec![voter(1, 100), voter(2, 100)],
                Step::RemoveMember { id: NodeId(2) },
            ),
        ]);
    }

    #[test]
    fn unwanted_learner_is_removed_rather_than_promoted() {
        run(vec![case(
            "user scaled back to 1 while a learner was catching up",
            1,
            2,
            Some(1),
            vec![voter(1, 100), learner(2, Some(10))],
            Step::RemoveMember { id: NodeId(2) },
        )]);
    }

    #[test]
    fn restart_mid_way_resumes_from_observed_state() {
        run(vec![
            // Crashed after raising the StatefulSet, before adding: add now.
            case(
                "after raise",
                3,
                3,
                Some(1),
                vec![voter(1, 100), voter(2, 100)],
                Step::AddLearner {
                    id: NodeId(3),
                    ordinal: 2,
                },
            ),
            // Crashed after adding the learner: promote, do not add again.
            case(
                "after add",
                3,
                3,
                Some(1),
                vec![voter(1, 100), voter(2, 100), learner(3, Some(100))],
                Step::Promote { id: NodeId(3) },
            ),
            // Crashed after the transfer: remove, do not transfer again.
            case(
                "after transfer",
                2,
                3,
                Some(1),
                vec![voter(1, 100), voter(2, 100), voter(3, 100)],
                Step::RemoveMember { id: NodeId(3) },
            ),
            // Someone scaled the StatefulSet down under a member: bring its pod back.
            case(
                "pod of a wanted member missing",
                3,
                1,
                Some(1),
                vec![voter(1, 100), voter(2, 100), voter(3, 100)],
                Step::RaiseStatefulSet { replicas: 3 },
            ),
        ]);
    }

    #[test]
    fn volumes_are_deleted_only_after_their_pod_left_and_only_when_asked() {
        let two = || vec![voter(1, 100), voter(2, 100)];
        run(vec![
            Case {
                pvcs: &[0, 1, 2],
                delete_pvcs: true,
                ..case(
                    "delete the retired pod's volume",
                    2,
                    2,
                    Some(1),
                    two(),
                    Step::DeletePvc { ordinal: 2 },
                )
            },
            Case {
                pvcs: &[0, 1, 2],
                delete_pvcs: false,
                ..case("retain", 2, 2, Some(1), two(), Step::Stable)
            },
            Case {
                pvcs: &[0, 1, 2],
                delete_pvcs: true,
                ..case(
                    "not before the shrink",
                    2,
                    3,
                    Some(1),
                    two(),
                    Step::ShrinkStatefulSet { replicas: 2 },
                )
            },
        ]);
    }

    #[test]
    fn pvc_of_a_pod_still_terminating_is_kept() {
        let c = Case {
            pvcs: &[0, 1, 2],
            delete_pvcs: true,
            ..case(
                "",
                2,
                2,
                Some(1),
                vec![voter(1, 100), voter(2, 100)],
                Step::Stable,
            )
        };
        let mut input = c.input();
        input.pods.insert(2);
        assert_eq!(next_step(&input), Step::Stable);
    }

    /// Walk a simulated cluster from 1 to 5 and back to 1 by applying every
    /// step the planner returns; at no point may there be two learners,
    /// fewer voters than one, or more than one change per step.
    #[test]
    fn planner_drives_a_simulated_cluster_up_and_down() {
        let mut sts = 0u32;
        let mut members: Vec<ObservedMember> = vec![];
        let mut leader: Option<u64> = None;
        let mut pvcs: BTreeSet<u32> = BTreeSet::new();
        for desired in [5u32, 1] {
            for _ in 0..100 {
                let healthy = (0..sts).map(NodeId::from_ordinal).collect();
                let input = PlanInput {
                    desired,
                    statefulset_replicas: sts,
                    raft: leader.map(|l| ObservedRaft {
                        leader: NodeId(l),
                        commit_index: 100,
                        members: members.clone(),
                    }),
                    healthy,
                    pods: (0..sts).collect(),
                    pvcs: pvcs.clone(),
                    delete_pvcs: true,
                    max_catch_up_lag: LAG,
                    outdated: BTreeSet::new(),
                    terminating: BTreeSet::new(),
                    applied: healthy_applied(&members),
                    lost_volumes: BTreeSet::new(),
                    overdue: BTreeSet::new(),
                };
                let step = next_step(&input);
                match step {
                    Step::RaiseStatefulSet { replicas } => {
                        assert_eq!(replicas, sts + 1, "raise by one pod at a time");
                        sts = replicas;
                        pvcs.insert(sts - 1);
                        if leader.is_none() {
                            // Pod 0 bootstraps a one-node cluster.
                            leader = Some(1);
                            members.push(voter(1, 100));
                        }
                    }
                    Step::AddLearner { id, .. } => members.push(learner(id.0, Some(0))),
                    Step::WaitCatchUp { id, .. } => {
                        members.iter_mut().find(|m| m.id == id).unwrap().match_index = Some(100)
                    }
                    Step::Promote { id } => {
                        members.iter_mut().find(|m| m.id == id).unwrap().voter = true
                    }
                    Step::TransferLeader { to, .. } => leader = Some(to.0),
                    Step::RemoveMember { id } => {
                        assert_ne!(Some(id.0), leader, "never remove the leader");
                        members.retain(|m| m.id != id)
                    }
                    Step::ShrinkStatefulSet { replicas } => {
                        assert_eq!(replicas + 1, sts);
                        sts = replicas
                    }
                    Step::DeletePvc { ordinal } => {
                        pvcs.remove(&ordinal);
                    }
                    Step::ReplacePod { ordinal } => panic!("nothing is outdated: {ordinal}"),
                    Step::Wait(reason) => panic!("unexpected wait {reason:?}"),
                    Step::Stable => break,
                }
                assert!(
                    members.iter().filter(|m| !m.voter).count() <= 1,
                    "two changes in flight"
                );
                assert!(members.iter().any(|m| m.voter), "no voter left");
            }
            let voters: Vec<u64> = members.iter().filter(|m| m.voter).map(|m| m.id.0).collect();
            assert_eq!(voters, (1..=u64::from(desired)).collect::<Vec<_>>());
            assert_eq!(sts, desired);
        }
        assert_eq!(pvcs, BTreeSet::from([0]));
    }

    fn three_voters(leader: u64) -> PlanInput {
        case(
            "",
            3,
            3,
            Some(leader),
            vec![voter(1, 100), voter(2, 100), voter(3, 100)],
            Step::Stable,
        )
        .input()
    }

    #[test]
    fn a_template_change_replaces_followers_first_highest_ordinal_first() {
        let mut input = three_voters(1);
        input.outdated = BTreeSet::from([0, 1, 2]);
        assert_eq!(next_step(&input), Step::ReplacePod { ordinal: 2 });
        // Pod 2 replaced and caught up: pod 1 next.
        input.outdated = BTreeSet::from([0, 1]);
        assert_eq!(next_step(&input), Step::ReplacePod { ordinal: 1 });
    }

    #[test]
    fn the_leaders_pod_goes_last_after_leadership_moved_to_the_new_template() {
        let mut input = three_voters(1);
        input.outdated = BTreeSet::from([0]);
        assert_eq!(
            next_step(&input),
            Step::TransferLeader {
                from: NodeId(1),
                to: NodeId(2),
            }
        );
        // Leadership moved: now the old leader is a follower like any other.
        let mut moved = three_voters(2);
        moved.outdated = BTreeSet::from([0]);
        assert_eq!(next_step(&moved), Step::ReplacePod { ordinal: 0 });
    }

    #[test]
    fn a_replaced_member_must_answer_and_catch_up_before_the_next_pod_goes() {
        let mut input = three_voters(1);
        input.outdated = BTreeSet::from([0, 1]);
        // Pod 2 was replaced and its pod is still being deleted.
        input.terminating = BTreeSet::from([2]);
        assert_eq!(
            next_step(&input),
            Step::Wait(WaitReason::PodTerminating { ordinal: 2 })
        );
        input.terminating.clear();
        // Back, but not answering yet.
        input.healthy.remove(&NodeId(3));
        assert_eq!(
            next_step(&input),
            Step::Wait(WaitReason::PodNotAnswering { ordinal: 2 })
        );
        // Answering, applied far behind the leader's commit.
        input.healthy.insert(NodeId(3));
        input.applied.insert(NodeId(3), 20);
        assert_eq!(
            next_step(&input),
            Step::Wait(WaitReason::MemberCatchingUp {
                ordinal: 2,
                applied: Some(20),
                commit_index: 100,
            })
        );
        // Caught up: the next pod.
        input.applied.insert(NodeId(3), 100);
        assert_eq!(next_step(&input), Step::ReplacePod { ordinal: 1 });
    }

    #[test]
    fn a_new_template_that_never_comes_up_halts_the_rollout() {
        let mut input = three_voters(1);
        input.outdated = BTreeSet::from([0, 1]);
        input.healthy.remove(&NodeId(3));
        input.overdue = BTreeSet::from([2]);
        assert_eq!(
            next_step(&input),
            Step::Wait(WaitReason::RolloutHalted { ordinal: 2 })
        );
        // Reverting the template makes the broken pod the outdated one: it
        // is replaced (it serves nobody), the healthy ones are left alone.
        input.outdated = BTreeSet::from([2]);
        input.overdue.clear();
        assert_eq!(next_step(&input), Step::ReplacePod { ordinal: 2 });
    }

    #[test]
    fn a_rollout_never_takes_a_healthy_member_while_another_is_down() {
        // Member 3 (outdated too) is down: replacing member 2 would leave
        // one of three voters.
        let mut input = three_voters(1);
        input.outdated = BTreeSet::from([0, 1, 2]);
        input.healthy.remove(&NodeId(3));
        // The down one goes first: it serves nobody.
        assert_eq!(next_step(&input), Step::ReplacePod { ordinal: 2 });
        input.outdated = BTreeSet::from([0, 1]);
        // Pod 2 on the new template but down and not yet overdue: wait.
        assert_eq!(
            next_step(&input),
            Step::Wait(WaitReason::PodNotAnswering { ordinal: 2 })
        );
    }

    #[test]
    fn a_single_voter_is_replaced_in_place() {
        let mut input = case("", 1, 1, Some(1), vec![voter(1, 100)], Step::Stable).input();
        input.outdated = BTreeSet::from([0]);
        assert_eq!(next_step(&input), Step::ReplacePod { ordinal: 0 });
    }

    #[test]
    fn a_member_that_lost_its_volume_is_removed_then_added_back_as_a_learner() {
        let mut input = three_voters(1);
        input.lost_volumes = BTreeSet::from([NodeId(2)]);
        assert_eq!(next_step(&input), Step::RemoveMember { id: NodeId(2) });
        // Removed: it is a wanted ordinal that is no member, and it answers.
        let mut removed = case(
            "",
            3,
            3,
            Some(1),
            vec![voter(1, 100), voter(3, 100)],
            Step::Stable,
        )
        .input();
        removed.lost_volumes = BTreeSet::new();
        assert_eq!(
            next_step(&removed),
            Step::AddLearner {
                id: NodeId(2),
                ordinal: 1,
            }
        );
        // The leader itself lost its volume: leadership moves first.
        let mut input = three_voters(2);
        input.lost_volumes = BTreeSet::from([NodeId(2)]);
        assert_eq!(
            next_step(&input),
            Step::TransferLeader {
                from: NodeId(2),
                to: NodeId(1),
            }
        );
        // Removing it must not cost the quorum: with member 3 down, the
        // remaining {1, 3} would have one healthy voter.
        let mut input = three_voters(1);
        input.lost_volumes = BTreeSet::from([NodeId(2)]);
        input.healthy.remove(&NodeId(3));
        assert_eq!(
            next_step(&input),
            Step::Wait(WaitReason::QuorumAtRisk {
                id: NodeId(2),
                healthy_voters: 2,
                voters: 3,
            })
        );
    }
}
