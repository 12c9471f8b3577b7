//! The ConfigMap that tells a member with an empty data directory how to
//! start: bootstrap a new one-node cluster, or wait to be added.
//!
//! The choice lives here, not in the pod template, because it changes once
//! (when the cluster first has a leader) and a template change is a new
//! StatefulSet revision: every pod would have to be replaced, pod 0 right
//! after it bootstrapped. The template refers to this ConfigMap's keys
//! (`configMapKeyRef`, optional), and a container reads them when it
//! starts, so a pod started later sees the current choice while the
//! template stays the same for the cluster's whole life.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::crd::RaftCluster;
use crate::identity::{ClusterIdentity, owned_meta};

/// Key holding `RAFTKV_INITIAL_CLUSTER` while the cluster bootstraps.
pub const INITIAL_CLUSTER_KEY: &str = "initialCluster";
/// Key holding `RAFTKV_JOIN` once it has.
pub const JOIN_KEY: &str = "join";

/// How a member whose data directory is empty starts its Raft state (a
/// member that has data resumes from it either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// Before the cluster ever had a leader, only pod 0 exists, and it
    /// bootstraps a one-node cluster (`RAFTKV_INITIAL_CLUSTER`).
    Bootstrap,
    /// Once bootstrapped, every member starts with `RAFTKV_JOIN=true` and
    /// waits to be added by the operator. This matters for pod 0 too: if it
    /// lost its volume it must not bootstrap a second, one-node cluster
    /// beside the real one.
    Join,
}

/// The ConfigMap for `mode`.
pub fn build(cluster: &RaftCluster, mode: StartMode) -> ConfigMap {
    let id = ClusterIdentity::of(cluster);
    let data = match mode {
        StartMode::Bootstrap => (
            INITIAL_CLUSTER_KEY,
            format!("1={}", id.peer_url(&id.pod(0))),
        ),
        StartMode::Join => (JOIN_KEY, "true".to_string()),
    };
    ConfigMap {
        metadata: owned_meta(cluster, &id, id.start_config()),
        data: Some(BTreeMap::from([(data.0.to_string(), data.1)])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    #[test]
    fn a_bootstrapping_cluster_names_pod_0_as_its_only_member() {
        let cm = build(&cluster(), StartMode::Bootstrap);
        assert_eq!(cm.metadata.name.as_deref(), Some("kv-start"));
        assert_eq!(
            cm.data.unwrap(),
            BTreeMap::from([(
                INITIAL_CLUSTER_KEY.to_string(),
                "1=http://kv-0.kv-peers.prod.svc:2380".to_string()
            )])
        );
    }

    #[test]
    fn a_bootstrapped_cluster_only_joins() {
        let cm = build(&cluster(), StartMode::Join);
        assert_eq!(
            cm.data.unwrap(),
            BTreeMap::from([(JOIN_KEY.to_string(), "true".to_string())])
        );
        assert_eq!(cm.metadata.owner_references.unwrap()[0].kind, "RaftCluster");
    }
}
