//! Turning an observation and the planner's verdict into the `status` the
//! user reads with `kubectl get raftc`: phase and message, leader, term, commit
//! and applied index, members and standard conditions.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::crd::{MemberRole, MemberStatus, Phase, RaftCluster, RaftClusterStatus};
use crate::identity::{ClusterIdentity, NodeId};
use crate::node_api::MemberKind;
use crate::observation::ClusterObservation;
use crate::planner::{Step, WaitReason};
use crate::resources::statefulset;
use crate::retained_volumes::Refusal;

/// Inputs besides the node observation.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    pub observation: &'a ClusterObservation,
    pub step: &'a Step,
    pub statefulset_replicas: i32,
    pub ready_replicas: i32,
    /// Ordinals of volumes adopted from an earlier cluster of the same name,
    /// while no leader has been seen.
    pub adopting: &'a BTreeSet<u32>,
    /// Members that refuse their volume.
    pub refusals: &'a [Refusal],
    pub now: Timestamp,
    /// Since when each member that does not answer has not (see
    /// [`down_since`]).
    pub down_since: &'a BTreeMap<NodeId, Timestamp>,
    /// A member down for this long is reported (condition and event).
    pub member_down_seconds: i64,
    /// Some pod runs an older template than the StatefulSet's.
    pub rolling: bool,
    /// Members whose volume was replaced or data directory emptied (see
    /// `member_volumes`).
    pub lost_volumes: &'a BTreeSet<NodeId>,
    /// The record of `member_volumes` to write.
    pub member_volumes: BTreeMap<String, String>,
    /// The record of `member_storage` to write.
    pub member_storage: BTreeMap<String, String>,
    /// Ordinals of pods whose member has not answered, or not caught up,
    /// for longer than the rollout timeout.
    pub overdue: &'a BTreeSet<u32>,
}

/// Since when the cluster has had no leader, if it had one before: when
/// the Available condition last turned false.
fn leaderless_since(cluster: &RaftCluster) -> Option<Timestamp> {
    let status = cluster.status.as_ref()?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Available" && c.status == "False")
        .map(|c| c.last_transition_time.0)
}

/// A learner that has been waited for longer than the rollout timeout.
fn stuck_learner(input: &StatusInput<'_>) -> bool {
    matches!(input.step, Step::WaitCatchUp { id, .. }
        if id.ordinal().is_some_and(|o| input.overdue.contains(&o)))
}

/// Condition reason (and event reason) while retained volumes are adopted.
pub const ADOPTING_VOLUMES: &str = "AdoptingVolumes";
/// Condition reason (and event reason) when a member refuses its volume.
pub const DATA_DIR_REFUSED: &str = "DataDirRefused";
/// Condition reason (and event reason) when a replaced pod does not come
/// back in time and the rollout stops.
pub const ROLLOUT_HALTED: &str = "RolloutHalted";
/// Condition type and reason (and event reason) of members down for longer
/// than the threshold.
pub const MEMBER_DOWN: &str = "MemberDown";
/// Condition reason (and event reason) of a member whose volume was replaced.
pub const VOLUME_LOST: &str = "VolumeLost";
/// A learner has not caught up with the leader within the rollout timeout.
pub const LEARNER_NOT_CATCHING_UP: &str = "LearnerNotCatchingUp";
/// No leader for longer than the member-down threshold after having had
/// one: phase Failed until a quorum is back.
pub const QUORUM_LOST: &str = "QuorumLost";

/// Since when each member of the leader's configuration that does not
/// answer has not: carried over from the previous status, `now` for one
/// that just stopped answering.
pub fn down_since(
    cluster: &RaftCluster,
    obs: &ClusterObservation,
    now: Timestamp,
) -> BTreeMap<NodeId, Timestamp> {
    let Some(leader) = obs.leader() else {
        return BTreeMap::new();
    };
    let healthy = obs.healthy();
    let previous = cluster
        .status
        .as_ref()
        .map(|s| s.members.as_slice())
        .unwrap_or_default();
    leader
        .members
        .iter()
        .filter(|m| !healthy.contains(&m.id))
        .map(|m| {
            let since = previous
                .iter()
                .find(|p| u64::try_from(p.id).ok() == Some(m.id.0))
                .and_then(|p| p.unhealthy_since.as_ref())
                .map_or(now, |t| t.0);
            (m.id, since)
        })
        .collect()
}

/// Members down for at least `seconds`, by pod name, with the time since.
fn long_down(
    id: &ClusterIdentity,
    down_since: &BTreeMap<NodeId, Timestamp>,
    now: Timestamp,
    seconds: i64,
) -> Vec<(String, Timestamp)> {
    down_since
        .iter()
        .filter(|(_, since)| now.as_second() - since.as_second() >= seconds)
        .map(|(n, since)| (member_name(id, *n, &n.to_string()), *since))
        .collect()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Phase and message for this observation.
pub fn phase(cluster: &RaftCluster, input: &StatusInput<'_>) -> (Phase, String) {
    let obs = input.observation;
    let id = ClusterIdentity::of(cluster);
    if !input.refusals.is_empty() {
        let phase = if obs.leader().is_some() {
            Phase::Degraded
        } else {
            Phase::Failed
        };
        return (phase, refusal_message(&id, input.refusals));
    }
    let Some(leader) = obs.leader() else {
        // `leader` is cleared by the first pass without one; `bootstrapped`
        // remembers that there ever was one.
        let had_leader = cluster
            .status
            .as_ref()
            .is_some_and(|s| s.leader.is_some() || s.bootstrapped);
        if !input.adopting.is_empty() {
            let volumes: Vec<String> = input.adopting.iter().map(|o| id.pvc(*o)).collect();
            let message = format!(
                "adopting the volumes {} kept from an earlier cluster named {} (pvcRetention: Retain); waiting for their members to elect a leader",
                volumes.join(", "),
                id.name
            );
            return (Phase::Bootstrapping, with_unanswered(&message, obs));
        }
        let leaderless_for = leaderless_since(cluster)
            .map(|since| input.now.as_second() - since.as_second())
            .filter(|_| had_leader);
        let (phase, message) = if input.statefulset_replicas == 0 {
            return (Phase::Pending, "creating the first member".into());
        } else if let Some(seconds) = leaderless_for.filter(|s| *s >= input.member_down_seconds) {
            let message = format!(
                "no leader for {seconds}s: a quorum of members is down or cut off. If their data is gone for good, restore from a backup or recover the most up-to-date member (see 'Backups and recovery' in the README)"
            );
            return (Phase::Failed, with_unanswered(&message, obs));
        } else if had_leader {
            (
                Phase::Degraded,
                "no leader: quorum lost or an election is in progress",
            )
        } else {
            (
                Phase::Bootstrapping,
                "waiting for the first member to elect itself leader",
            )
        };
        return (phase, with_unanswered(message, obs));
    };
    let healthy = obs.healthy();
    let down: Vec<String> = leader
        .members
        .iter()
        .filter(|m| !healthy.contains(&m.id))
        .map(|m| member_name(&id, m.id, &m.name))
        .collect();
    let voters = leader
        .members
        .iter()
        .filter(|m| m.role == MemberKind::Voter)
        .count();
    match input.step {
        Step::Stable if down.is_empty() => (
            Phase::Running,
            format!(
                "{voters} voters, leader {}",
                member_name(&id, leader.id, &leader.name)
            ),
        ),
        Step::Stable => (
            Phase::Degraded,
            format!("members not answering: {}", down.join(", ")),
        ),
        _ if !input.lost_volumes.is_empty() && !matches!(input.step, Step::RemoveMember { .. }) => {
            let lost: Vec<String> = input
                .lost_volumes
                .iter()
                .map(|n| member_name(&id, *n, &n.to_string()))
                .collect();
            (
                Phase::Degraded,
                format!(
                    "{} lost its data and waits to be removed and added again: {}",
                    lost.join(", "),
                    describe(input.step)
                ),
            )
        }
        Step::Wait(WaitReason::QuorumAtRisk {
            id,
            healthy_voters,
            voters,
        }) => (
            Phase::Degraded,
            format!(
                "not removing member {id}: only {healthy_voters} of {voters} voters are healthy"
            ),
        ),
        Step::Wait(WaitReason::NoTransferTarget { from }) => (
            Phase::Degraded,
            format!("leader {from} must step down but no healthy voter can take over"),
        ),
        Step::Wait(WaitReason::NoLeader) => (Phase::Degraded, with_unanswered("no leader", obs)),
        Step::WaitCatchUp {
            id: n,
            match_index,
            commit_index,
        } if stuck_learner(input) => (
            Phase::Degraded,
            format!(
                "learner {} has not caught up within the rollout timeout (replicated {} of commit {commit_index}): check its pod's logs, its disk and its network to the leader",
                member_name(&id, *n, &n.to_string()),
                match_index.map_or("nothing".to_string(), |m| m.to_string()),
            ),
        ),
        Step::Wait(WaitReason::RolloutHalted { ordinal }) => (
            Phase::Degraded,
            format!(
                "rollout halted: {} runs the new pod template but has not answered and caught up within the rollout timeout; the other pods keep the old template. Fix or revert the change to go on",
                id.pod(*ordinal)
            ),
        ),
        Step::Wait(WaitReason::PodNotAnswering { ordinal }) => (
            if input.rolling {
                Phase::Upgrading
            } else {
                Phase::Scaling
            },
            format!("waiting for pod {} to answer", id.pod(*ordinal)),
        ),
        Step::RemoveMember { id: n } if input.lost_volumes.contains(n) => (
            Phase::Degraded,
            format!(
                "{} lost its data: removing it from the configuration, it joins again as a learner",
                member_name(&id, *n, &n.to_string())
            ),
        ),
        step if input.rolling => (Phase::Upgrading, describe(step)),
        step => (Phase::Scaling, describe(step)),
    }
}

/// `message`, followed by why the members that did not answer did not
/// (the most useful clue without a leader: a DNS failure, a refused
/// connection, a timeout).
fn with_unanswered(message: &str, obs: &ClusterObservation) -> String {
    let failures: Vec<String> = obs
        .nodes
        .iter()
        .filter_map(|n| n.status.as_ref().err().map(|e| format!("{}: {e}", n.pod)))
        .collect();
    if failures.is_empty() {
        message.to_string()
    } else {
        format!("{message}; not answering: {}", failures.join("; "))
    }
}

/// What the user reads when members refuse their volumes.
fn refusal_message(id: &ClusterIdentity, refusals: &[Refusal]) -> String {
    let each: Vec<String> = refusals
        .iter()
        .map(|r| {
            let volume = id
                .ordinal_of(&r.pod)
                .map_or_else(|| "its volume".to_string(), |o| id.pvc(o));
            format!("{} refuses {volume}: {}", r.pod, r.message)
        })
        .collect();
    format!(
        "{}. The volume holds data of another Raft cluster id (for instance one written by an operator version that put the RaftCluster's UID into the cluster token); delete the PVC to start that member empty, or restore the cluster it belongs to",
        each.join("; ")
    )
}

/// Reason of the Available condition.
fn availability_reason(obs: &ClusterObservation, refusals: &[Refusal]) -> &'static str {
    if obs.leader().is_some() {
        "LeaderElected"
    } else if !refusals.is_empty() {
        DATA_DIR_REFUSED
    } else if !obs.nodes.is_empty() && obs.answered().next().is_none() {
        "MembersUnreachable"
    } else {
        "NoLeader"
    }
}

/// Human-readable description of a planner step.
pub fn describe(step: &Step) -> String {
    match step {
        Step::RaiseStatefulSet { replicas } => {
            format!("raising the StatefulSet to {replicas} pods")
        }
        Step::AddLearner { id, .. } => format!("adding member {id} as a learner"),
        Step::WaitCatchUp {
            id,
            match_index,
            commit_index,
        } => format!(
            "waiting for learner {id} to catch up (match {} of commit {commit_index})",
            match_index.map_or("unknown".to_string(), |m| m.to_string())
        ),
        Step::Promote { id } => format!("promoting member {id} to voter"),
        Step::TransferLeader { from, to } => format!("moving leadership from {from} to {to}"),
        Step::RemoveMember { id } => format!("removing member {id}"),
        Step::ShrinkStatefulSet { replicas } => {
            format!("shrinking the StatefulSet to {replicas} pods")
        }
        Step::ReplacePod { ordinal } => {
            format!("replacing the pod of ordinal {ordinal}, which runs an older pod template")
        }
        Step::Wait(WaitReason::PodTerminating { ordinal }) => {
            format!("waiting for the pod of ordinal {ordinal} to terminate")
        }
        Step::Wait(WaitReason::MemberCatchingUp {
            ordinal,
            applied,
            commit_index,
        }) => format!(
            "waiting for the member of ordinal {ordinal} to catch up (applied {} of commit {commit_index}) before the next pod",
            applied.map_or("unknown".to_string(), |a| a.to_string())
        ),
        Step::DeletePvc { ordinal } => {
            format!("deleting the volume of retired pod ordinal {ordinal}")
        }
        Step::Wait(reason) => format!("waiting: {reason:?}"),
        Step::Stable => "stable".into(),
    }
}

/// Reason of the Progressing condition: what the operator is doing or
/// waiting for, one word a user can search for.
pub fn step_reason(step: &Step, phase: Phase) -> &'static str {
    match step {
        Step::RaiseStatefulSet { .. } | Step::ShrinkStatefulSet { .. } => "Scaling",
        Step::AddLearner { .. } => "AddingMember",
        Step::WaitCatchUp { .. } | Step::Wait(WaitReason::MemberCatchingUp { .. }) => {
            "MemberCatchingUp"
        }
        Step::Promote { .. } => "PromotingMember",
        Step::TransferLeader { .. } => "TransferringLeadership",
        Step::RemoveMember { .. } => "RemovingMember",
        Step::DeletePvc { .. } => "DeletingVolume",
        Step::ReplacePod { .. } => "ReplacingPod",
        Step::Wait(WaitReason::NoLeader) => "NoLeader",
        Step::Wait(WaitReason::PodNotAnswering { .. }) => "PodNotAnswering",
        Step::Wait(WaitReason::QuorumAtRisk { .. }) => "QuorumAtRisk",
        Step::Wait(WaitReason::NoTransferTarget { .. }) => "NoTransferTarget",
        Step::Wait(WaitReason::PodTerminating { .. }) => "PodTerminating",
        Step::Wait(WaitReason::RolloutHalted { .. }) => ROLLOUT_HALTED,
        Step::Stable => phase.as_str(),
    }
}

/// The full status to write.
pub fn build(cluster: &RaftCluster, input: &StatusInput<'_>) -> RaftClusterStatus {
    let obs = input.observation;
    let id = ClusterIdentity::of(cluster);
    let leader = obs.leader();
    let healthy = obs.healthy();
    let (phase, message) = phase(cluster, input);
    let members = leader
        .map(|l| {
            l.members
                .iter()
                .map(|m| MemberStatus {
                    id: to_i64(m.id.0),
                    name: member_name(&id, m.id, &m.name),
                    role: if m.role == MemberKind::Voter {
                        MemberRole::Voter
                    } else {
                        MemberRole::Learner
                    },
                    is_leader: m.id == l.id,
                    healthy: healthy.contains(&m.id),
                    match_index: m.match_index.map(to_i64),
                    unhealthy_since: input.down_since.get(&m.id).map(|t| Time(*t)),
                })
                .collect()
        })
        .unwrap_or_default();

    let available = leader.is_some();
    let progressing = matches!(
        phase,
        Phase::Scaling | Phase::Upgrading | Phase::Bootstrapping | Phase::Pending
    );
    let halted = matches!(input.step, Step::Wait(WaitReason::RolloutHalted { .. }));
    let long_down = long_down(&id, input.down_since, input.now, input.member_down_seconds);
    let down_message = long_down
        .iter()
        .map(|(pod, since)| format!("{pod} has not answered since {since}"))
        .collect::<Vec<_>>()
        .join("; ");
    let degraded = phase == Phase::Degraded || phase == Phase::Failed;
    let previous = cluster
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = cluster.metadata.generation;
    let conditions = vec![
        condition(
            previous,
            "Available",
            available,
            availability_reason(obs, input.refusals),
            &message,
            generation,
            input.now,
        ),
        condition(
            previous,
            "Progressing",
            progressing,
            if !input.adopting.is_empty() && !available {
                ADOPTING_VOLUMES
            } else if stuck_learner(input) {
                LEARNER_NOT_CATCHING_UP
            } else if phase == Phase::Failed && input.refusals.is_empty() {
                QUORUM_LOST
            } else {
                step_reason(input.step, phase)
            },
            &message,
            generation,
            input.now,
        ),
        condition(
            previous,
            "Degraded",
            degraded,
            if !input.refusals.is_empty() {
                DATA_DIR_REFUSED
            } else if halted {
                ROLLOUT_HALTED
            } else if !input.lost_volumes.is_empty() {
                VOLUME_LOST
            } else if stuck_learner(input) {
                LEARNER_NOT_CATCHING_UP
            } else if phase == Phase::Failed {
                QUORUM_LOST
            } else if !long_down.is_empty() {
                MEMBER_DOWN
            } else {
                phase.as_str()
            },
            &message,
            generation,
            input.now,
        ),
        condition(
            previous,
            MEMBER_DOWN,
            !long_down.is_empty(),
            if long_down.is_empty() {
                "MembersAnswering"
            } else {
                MEMBER_DOWN
            },
            &down_message,
            generation,
            input.now,
        ),
    ];

    RaftClusterStatus {
        phase: Some(phase),
        message: Some(message),
        leader: leader.map(|l| member_name(&id, l.id, &l.name)),
        leader_id: leader.map(|l| to_i64(l.id.0)),
        term: leader.map(|l| l.term).or(obs.term()).map(to_i64),
        commit_index: leader.map(|l| to_i64(l.commit_index)),
        applied_index: leader.map(|l| to_i64(l.applied_index)),
        members,
        replicas: input.statefulset_replicas,
        ready_replicas: input.ready_replicas,
        selector: Some(id.selector_string()),
        observed_generation: generation,
        conditions,
        // The reconciler sets this after acting on monitoring.
        service_monitor: cluster.status.as_ref().is_some_and(|s| s.service_monitor),
        bootstrapped: is_bootstrapped(cluster, obs),
        cluster_token: Some(statefulset::cluster_token(cluster)),
        member_volumes: input.member_volumes.clone(),
        member_storage: input.member_storage.clone(),
        // The reconciler sets this from the backup Jobs (`backup`).
        backup: cluster.status.as_ref().and_then(|s| s.backup.clone()),
        // The pass issued (or asked cert-manager for) these before it got
        // here, and removed the Secrets of users no longer listed.
        client_users: if cluster.spec.tls.enabled() {
            crate::tls::auto::client_users(cluster).cloned().collect()
        } else {
            Vec::new()
        },
    }
}

/// The name a member goes by in the status: its pod's, `<cluster>-<ordinal>`,
/// whatever name the node reports. Members the bootstrap configuration
/// listed (`RAFTKV_INITIAL_CLUSTER` carries only ids and URLs) are named
/// `node-<id>` by raftkv, those added later by the pod name the operator
/// sent; users look for pods. Ids that are no ordinal keep their own name.
pub fn member_name(id: &ClusterIdentity, node: NodeId, reported: &str) -> String {
    node.ordinal()
        .map_or_else(|| reported.to_string(), |o| id.pod(o))
}

/// Sticky: once a leader was seen, the cluster stays bootstrapped.
pub fn is_bootstrapped(cluster: &RaftCluster, obs: &ClusterObservation) -> bool {
    cluster.status.as_ref().is_some_and(|s| s.bootstrapped) || obs.leader().is_some()
}

/// A standard condition whose `lastTransitionTime` only moves when its
/// status flips, as `kubectl wait --for=condition=...` users expect.
fn condition(
    previous: &[Condition],
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if on { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Name of the cluster for logs and metrics labels.
pub fn display_name(cluster: &RaftCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_api::NodeRole;
    use crate::observation::NodeObservation;
    use crate::observation::tests::status;
    use crate::resources::test_cluster::cluster;

    fn three_healthy() -> ClusterObservation {
        let m = [(1, true, None), (2, true, Some(100)), (3, true, Some(98))];
        ClusterObservation {
            nodes: (1..=3)
                .map(|i| NodeObservation {
                    ordinal: i as u32 - 1,
                    pod: format!("kv-{}", i - 1),
                    status: Ok(status(
                        i,
                        if i == 2 {
                            NodeRole::Leader
                        } else {
                            NodeRole::Follower
                        },
                        7,
                        Some(2),
                        &m,
                    )),
                })
                .collect(),
        }
    }

    const NONE: &BTreeSet<u32> = &BTreeSet::new();
    const NO_IDS: &BTreeSet<NodeId> = &BTreeSet::new();
    const NOT_DOWN: &BTreeMap<NodeId, Timestamp> = &BTreeMap::new();

    fn input<'a>(obs: &'a ClusterObservation, step: &'a Step) -> StatusInput<'a> {
        StatusInput {
            observation: obs,
            step,
            statefulset_replicas: 3,
            ready_replicas: 3,
            adopting: NONE,
            refusals: &[],
            now: Timestamp::UNIX_EPOCH,
            down_since: NOT_DOWN,
            member_down_seconds: 60,
            rolling: false,
            lost_volumes: NO_IDS,
            member_volumes: BTreeMap::new(),
            member_storage: BTreeMap::new(),
            overdue: NONE,
        }
    }

    fn cond<'a>(s: &'a RaftClusterStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_halted_rollout_is_degraded_with_its_reason() {
        let obs = three_healthy();
        let step = Step::Wait(WaitReason::RolloutHalted { ordinal: 2 });
        let mut i = input(&obs, &step);
        i.rolling = true;
        let s = build(&cluster(), &i);
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .contains("rollout halted: kv-2")
        );
        assert_eq!(cond(&s, "Degraded").reason, ROLLOUT_HALTED);
        assert_eq!(cond(&s, "Progressing").reason, ROLLOUT_HALTED);
        // While it goes on, it is Upgrading with what it waits for.
        let step = Step::Wait(WaitReason::MemberCatchingUp {
            ordinal: 2,
            applied: Some(5),
            commit_index: 100,
        });
        let mut i = input(&obs, &step);
        i.rolling = true;
        let s = build(&cluster(), &i);
        assert_eq!(s.phase, Some(Phase::Upgrading));
        assert_eq!(cond(&s, "Progressing").status, "True");
        assert_eq!(cond(&s, "Progressing").reason, "MemberCatchingUp");
    }

    #[test]
    fn a_member_down_longer_than_the_threshold_is_reported() {
        let mut obs = three_healthy();
        obs.nodes[2].status = Err("connection refused".into());
        let mut c = cluster();
        let now = Timestamp::from_second(1_000).unwrap();
        // First pass it is down: since now, not yet reported.
        let since = down_since(&c, &obs, now);
        assert_eq!(since, BTreeMap::from([(NodeId(3), now)]));
        let mut i = input(&obs, &Step::Stable);
        i.now = now;
        i.down_since = &since;
        let s = build(&c, &i);
        assert_eq!(
            s.members[2].unhealthy_since,
            Some(Time(now)),
            "recorded in the member's status"
        );
        assert_eq!(cond(&s, MEMBER_DOWN).status, "False");
        // 60 s later, still down: the time is carried over and reported.
        c.status = Some(s);
        let later = Timestamp::from_second(1_060).unwrap();
        let since = down_since(&c, &obs, later);
        assert_eq!(since[&NodeId(3)], now);
        let mut i = input(&obs, &Step::Stable);
        i.now = later;
        i.down_since = &since;
        let s = build(&c, &i);
        assert_eq!(cond(&s, MEMBER_DOWN).status, "True");
        assert!(
            cond(&s, MEMBER_DOWN)
                .message
                .contains("kv-2 has not answered since")
        );
        assert_eq!(cond(&s, "Degraded").reason, MEMBER_DOWN);
        // Back: forgotten.
        let healthy = three_healthy();
        assert!(down_since(&c, &healthy, later).is_empty());
    }

    #[test]
    fn healthy_stable_cluster_is_running_with_leader_term_and_commit() {
        let obs = three_healthy();
        let s = build(&cluster(), &input(&obs, &Step::Stable));
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(s.leader.as_deref(), Some("kv-1"));
        assert_eq!(
            (s.leader_id, s.term, s.commit_index, s.applied_index),
            (Some(2), Some(7), Some(100), Some(99))
        );
        assert_eq!(s.members.len(), 3);
        assert!(s.members[1].is_leader && s.members.iter().all(|m| m.healthy));
        assert_eq!(s.members[2].match_index, Some(98));
        let cond = |t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .status
                .clone()
        };
        assert_eq!(
            (cond("Available"), cond("Progressing"), cond("Degraded")),
            ("True".into(), "False".into(), "False".into())
        );
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=kv,app.kubernetes.io/name=raftkv")
        );
    }

    #[test]
    fn members_are_named_after_their_pods_whatever_the_node_reports() {
        // raftkv names the members of its bootstrap configuration node-<id>.
        let mut obs = three_healthy();
        for node in &mut obs.nodes {
            if let Ok(s) = node.status.as_mut() {
                s.members[0].name = "node-1".into();
            }
        }
        obs.nodes[0].status = Err("connection refused".into());
        let s = build(&cluster(), &input(&obs, &Step::Stable));
        let names: Vec<&str> = s.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["kv-0", "kv-1", "kv-2"]);
        assert_eq!(s.leader.as_deref(), Some("kv-1"));
        assert_eq!(s.message.as_deref(), Some("members not answering: kv-0"));
    }

    #[test]
    fn a_silent_member_makes_the_cluster_degraded() {
        let mut obs = three_healthy();
        obs.nodes[2].status = Err("connection refused".into());
        let s = build(&cluster(), &input(&obs, &Step::Stable));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert!(s.message.unwrap().contains("kv-2"));
        assert!(!s.members[2].healthy);
    }

    #[test]
    fn scaling_steps_show_as_scaling_and_progressing() {
        let obs = three_healthy();
        let step = Step::Promote { id: NodeId(4) };
        let s = build(&cluster(), &input(&obs, &step));
        assert_eq!(s.phase, Some(Phase::Scaling));
        assert_eq!(s.message.as_deref(), Some("promoting member 4 to voter"));
        assert_eq!(
            s.conditions
                .iter()
                .find(|c| c.type_ == "Progressing")
                .unwrap()
                .status,
            "True"
        );
    }

    #[test]
    fn losing_the_leader_after_having_one_is_degraded_not_bootstrapping() {
        let obs = ClusterObservation::default();
        let step = Step::Wait(WaitReason::NoLeader);
        let mut c = cluster();
        assert_eq!(
            build(&c, &input(&obs, &step)).phase,
            Some(Phase::Bootstrapping)
        );
        c.status = Some(RaftClusterStatus {
            leader: Some("kv-0".into()),
            ..Default::default()
        });
        let s = build(&c, &input(&obs, &step));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(s.conditions[0].status, "False");
        // Bootstrapped stays set once seen, even without a leader now.
        assert!(build(&cluster(), &input(&three_healthy(), &Step::Stable)).bootstrapped);
        c.status = Some(RaftClusterStatus {
            bootstrapped: true,
            ..Default::default()
        });
        assert!(build(&c, &input(&obs, &step)).bootstrapped);
        assert!(!build(&cluster(), &input(&obs, &step)).bootstrapped);
    }

    #[test]
    fn a_cluster_without_a_leader_for_longer_than_the_threshold_has_failed() {
        let healthy = three_healthy();
        let mut c = cluster();
        let t0 = Timestamp::from_second(1_000).unwrap();
        let mut i = input(&healthy, &Step::Stable);
        i.now = t0;
        c.status = Some(build(&c, &i));

        let gone = ClusterObservation::default();
        let step = Step::Wait(WaitReason::NoLeader);
        let pass = |c: &mut RaftCluster, at: i64| {
            let mut i = input(&gone, &step);
            i.now = Timestamp::from_second(at).unwrap();
            let s = build(c, &i);
            c.status = Some(s.clone());
            s
        };
        // Lost, and still lost a pass later: degraded, never "bootstrapping".
        assert_eq!(pass(&mut c, 1_010).phase, Some(Phase::Degraded));
        let s = pass(&mut c, 1_020);
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(cond(&s, "Available").status, "False");
        // The threshold (60 s in `input`) after the leader was lost: failed.
        let s = pass(&mut c, 1_070);
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(cond(&s, "Degraded").reason, QUORUM_LOST);
        assert!(s.message.as_deref().unwrap().contains("no leader for 60s"));
        // A quorum back: running again.
        let mut i = input(&healthy, &Step::Stable);
        i.now = Timestamp::from_second(1_080).unwrap();
        assert_eq!(build(&c, &i).phase, Some(Phase::Running));
    }

    #[test]
    fn a_learner_that_does_not_catch_up_in_time_is_reported() {
        let obs = three_healthy();
        let step = Step::WaitCatchUp {
            id: NodeId(4),
            match_index: Some(3),
            commit_index: 100,
        };
        let s = build(&cluster(), &input(&obs, &step));
        assert_eq!(s.phase, Some(Phase::Scaling));
        assert_eq!(cond(&s, "Progressing").reason, "MemberCatchingUp");
        let overdue = BTreeSet::from([3]);
        let mut i = input(&obs, &step);
        i.overdue = &overdue;
        let s = build(&cluster(), &i);
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(cond(&s, "Degraded").reason, LEARNER_NOT_CATCHING_UP);
        assert_eq!(cond(&s, "Progressing").reason, LEARNER_NOT_CATCHING_UP);
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .contains("learner kv-3 has not caught up within the rollout timeout (replicated 3 of commit 100)"),
            "{:?}",
            s.message
        );
    }

    #[test]
    fn without_a_leader_the_status_says_why_the_members_do_not_answer() {
        let mut obs = three_healthy();
        for node in &mut obs.nodes {
            node.status = Err(format!(
                "node {} unreachable: error sending request: dns error: failed to lookup address",
                node.pod
            ));
        }
        let step = Step::Wait(WaitReason::NoLeader);
        let s = build(&cluster(), &input(&obs, &step));
        assert_eq!(s.phase, Some(Phase::Bootstrapping));
        let available = &s.conditions[0];
        assert_eq!(
            (available.type_.as_str(), available.status.as_str()),
            ("Available", "False")
        );
        assert_eq!(available.reason, "MembersUnreachable");
        assert!(
            available.message.contains("kv-0: node kv-0 unreachable")
                && available.message.contains("dns error"),
            "{}",
            available.message
        );
        assert_eq!(s.message.as_deref(), Some(available.message.as_str()));
    }

    #[test]
    fn condition_transition_time_is_kept_while_status_is_unchanged() {
        let obs = three_healthy();
        let mut c = cluster();
        let first = build(&c, &input(&obs, &Step::Stable));
        c.status = Some(first.clone());
        let later = StatusInput {
            now: Timestamp::from_second(1_000_000).unwrap(),
            ..input(&obs, &Step::Stable)
        };
        let second = build(&c, &later);
        assert_eq!(
            first.conditions[0].last_transition_time,
            second.conditions[0].last_transition_time
        );
        let step = Step::Promote { id: NodeId(4) };
        let third = build(
            &c,
            &StatusInput {
                step: &step,
                ..later
            },
        );
        let progressing = third
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(
            progressing.last_transition_time,
            Time(Timestamp::from_second(1_000_000).unwrap())
        );
    }
}
