//! Carrying out the planner's node-side steps (add learner, promote, remove,
//! transfer leadership) and observing every node, independently of
//! Kubernetes. The reconciler uses these; so can a test that drives real
//! raftkv processes on loopback (with a `StaticResolver`), growing and
//! shrinking a cluster with exactly the operator's membership logic.

use std::collections::BTreeSet;

use tracing::info;

use crate::identity::ClusterIdentity;
use crate::node_api::AddMemberRequest;
use crate::node_client::{AddressResolver, NodeClient, NodeError};
use crate::observation::{ClusterObservation, NodeObservation};
use crate::planner::Step;

/// Ask every pod in `ordinals` for its status, concurrently.
pub async fn observe<N: NodeClient>(
    node: &N,
    id: &ClusterIdentity,
    ordinals: &BTreeSet<u32>,
) -> ClusterObservation {
    let calls = ordinals.iter().map(|&ordinal| {
        let pod = id.pod(ordinal);
        async move {
            let status = node.status(id, &pod).await.map_err(|e| e.to_string());
            NodeObservation {
                ordinal,
                pod,
                status,
            }
        }
    });
    ClusterObservation {
        nodes: futures::future::join_all(calls).await,
    }
}

/// Result of [`apply`].
#[derive(Debug, PartialEq, Eq)]
pub enum NodeStepOutcome {
    /// The node accepted the change.
    Done,
    /// The node refused for a transient reason (a change in flight, no
    /// leader); the next pass will plan again.
    Deferred,
    /// Not a node-side step (or no leader to send it to): nothing was sent.
    NotSent,
}

/// Send a node-side step to the leader (any node would forward it; asking
/// the leader saves a hop and fails fast when leadership moved).
pub async fn apply<N: NodeClient, R: AddressResolver>(
    node: &N,
    resolver: &R,
    id: &ClusterIdentity,
    obs: &ClusterObservation,
    step: &Step,
) -> Result<NodeStepOutcome, NodeError> {
    let Some(leader) = obs.leader().and_then(|l| l.id.ordinal()).map(|o| id.pod(o)) else {
        return Ok(NodeStepOutcome::NotSent);
    };
    let result = match step {
        Step::AddLearner { id: new, ordinal } => {
            let pod = id.pod(*ordinal);
            let req = AddMemberRequest {
                id: *new,
                name: pod.clone(),
                peer_url: resolver.peer_url(id, &pod),
                client_url: resolver.client_url(id, &pod),
                learner: true,
            };
            node.add_learner(id, &leader, &req).await
        }
        Step::Promote { id: member } => node.promote(id, &leader, *member).await,
        Step::RemoveMember { id: member } => node.remove(id, &leader, *member).await,
        Step::TransferLeader { to, .. } => node.transfer_leader(id, &leader, *to).await,
        _ => return Ok(NodeStepOutcome::NotSent),
    };
    match result {
        Ok(()) => Ok(NodeStepOutcome::Done),
        Err(e @ (NodeError::ChangeInProgress { .. } | NodeError::NoLeader { .. })) => {
            info!(error = %e, ?step, "node deferred the step");
            Ok(NodeStepOutcome::Deferred)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeNodes;
    use crate::identity::NodeId;
    use crate::node_api::NodeRole;
    use crate::node_client::DnsResolver;
    use crate::observation::tests::status;

    fn cluster() -> (ClusterIdentity, FakeNodes) {
        let m = [(1, true, None), (2, true, Some(100))];
        let nodes = FakeNodes::with(vec![
            status(1, NodeRole::Follower, 3, Some(2), &m),
            status(2, NodeRole::Leader, 3, Some(2), &m),
        ]);
        (ClusterIdentity::new("kv", "prod"), nodes)
    }

    #[tokio::test]
    async fn steps_go_to_the_leader_with_resolved_urls() {
        let (id, nodes) = cluster();
        let obs = observe(&nodes, &id, &BTreeSet::from([0, 1, 2])).await;
        assert!(
            obs.nodes[2].status.is_err(),
            "kv-2 does not exist in the fake"
        );
        let step = Step::AddLearner {
            id: NodeId(3),
            ordinal: 2,
        };
        assert_eq!(
            apply(&nodes, &DnsResolver, &id, &obs, &step).await.unwrap(),
            NodeStepOutcome::Done
        );
        let step = Step::TransferLeader {
            from: NodeId(2),
            to: NodeId(1),
        };
        assert_eq!(
            apply(&nodes, &DnsResolver, &id, &obs, &step).await.unwrap(),
            NodeStepOutcome::Done
        );
        assert_eq!(
            nodes.calls(),
            [
                "kv-1: add learner 3 kv-2 http://kv-2.kv-peers.prod.svc:2380 learner=true",
                "kv-1: transfer leader to 1"
            ]
        );
    }

    #[tokio::test]
    async fn kubernetes_steps_and_leaderless_clusters_send_nothing() {
        let (id, nodes) = cluster();
        let obs = observe(&nodes, &id, &BTreeSet::from([0, 1])).await;
        let raise = Step::RaiseStatefulSet { replicas: 3 };
        assert_eq!(
            apply(&nodes, &DnsResolver, &id, &obs, &raise)
                .await
                .unwrap(),
            NodeStepOutcome::NotSent
        );
        let empty = ClusterObservation::default();
        let promote = Step::Promote { id: NodeId(3) };
        assert_eq!(
            apply(&nodes, &DnsResolver, &id, &empty, &promote)
                .await
                .unwrap(),
            NodeStepOutcome::NotSent
        );
        assert!(nodes.calls().is_empty());
    }
}
