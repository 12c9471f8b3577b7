//! Volumes a RaftCluster finds from an earlier life: a cluster deleted with
//! `pvcRetention: Retain` and applied again under the same name finds its
//! members' PVCs (the StatefulSet names them `data-<cluster>-<ordinal>`).
//!
//! The operator adopts them: the cluster id comes from a token that is the
//! same for the same namespace and name (`statefulset::cluster_token`), the
//! StatefulSet is raised to cover every retained volume at once so that the
//! old members can elect a leader again, and no pod bootstraps a new
//! cluster beside them. A member that still refuses its volume (written for
//! another cluster id, e.g. by an operator version whose token held the
//! RaftCluster's UID) says why in its log; the operator reads that from the
//! pod status and reports it.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;

use crate::crd::RaftCluster;
use crate::identity::ClusterIdentity;

/// What raftkv says when a data directory belongs to another cluster id.
const FOREIGN_DATA: &str = "belongs to cluster";

/// Ordinals of the data volumes that existed before this RaftCluster was
/// created, hence were kept from an earlier cluster of the same name.
pub fn retained_ordinals(
    cluster: &RaftCluster,
    id: &ClusterIdentity,
    pvcs: &[PersistentVolumeClaim],
) -> BTreeSet<u32> {
    let Some(created) = cluster.creation_timestamp() else {
        return BTreeSet::new();
    };
    pvcs.iter()
        .filter(|p| p.creation_timestamp().is_some_and(|t| t.0 < created.0))
        .filter_map(|p| id.pvc_ordinal_of(&p.name_any()))
        .collect()
}

/// A member pod whose node refused its data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub pod: String,
    /// The node's own words (the tail of its log).
    pub message: String,
}

/// The pods whose raftkv container last stopped because its volume belongs
/// to another cluster.
pub fn refusals(pods: &[Pod]) -> Vec<Refusal> {
    pods.iter()
        .filter_map(|pod| {
            let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
            let message = statuses.iter().find_map(|c| {
                [c.state.as_ref(), c.last_state.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.terminated.as_ref()?.message.as_deref())
                    .find_map(foreign_data_line)
            })?;
            Some(Refusal {
                pod: pod.name_any(),
                message,
            })
        })
        .collect()
}

/// The line of a log tail that says the data belongs to another cluster.
fn foreign_data_line(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(FOREIGN_DATA))
        .map(|l| l.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn pvc(name: &str, created: i64) -> PersistentVolumeClaim {
        let mut p = PersistentVolumeClaim::default();
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        p
    }

    #[test]
    fn volumes_older_than_the_cluster_are_retained_ones() {
        let mut c = cluster();
        c.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_000).unwrap()));
        let id = ClusterIdentity::of(&c);
        let pvcs = [
            pvc("data-kv-0", 10),
            pvc("data-kv-2", 999),
            // Created by this cluster's StatefulSet.
            pvc("data-kv-1", 1_000),
            pvc("data-kv-3", 1_005),
            // Another cluster's.
            pvc("data-other-0", 10),
        ];
        assert_eq!(retained_ordinals(&c, &id, &pvcs), BTreeSet::from([0, 2]));
    }

    #[test]
    fn a_node_refusing_a_foreign_volume_is_found_in_the_pod_status() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kv-0"},
            "status": {"containerStatuses": [{
                "name": "raftkv", "image": "raftkv", "imageID": "", "ready": false,
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message":
                    "2025-01-01T00:00:00Z INFO opening storage\nError: /var/lib/raftkv/log.redb: belongs to cluster 0x1a, not to this node's cluster 0x2b\n"}}
            }]}
        }))
        .unwrap();
        let healthy: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kv-1"},
            "status": {"containerStatuses": [{
                "name": "raftkv", "image": "raftkv", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}
            }]}
        }))
        .unwrap();
        assert_eq!(
            refusals(&[pod, healthy]),
            [Refusal {
                pod: "kv-0".into(),
                message: "Error: /var/lib/raftkv/log.redb: belongs to cluster 0x1a, not to this node's cluster 0x2b".into(),
            }]
        );
    }
}
