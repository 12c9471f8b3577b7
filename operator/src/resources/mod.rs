//! Builders of the Kubernetes objects a `RaftCluster` owns. Each builder is a
//! pure function of the cluster (and, where the reconciler decides, a number
//! such as the StatefulSet's replica count), so it is unit-tested without an
//! API server and applied with server-side apply.

pub mod client_service;
pub mod headless_service;
pub mod network_policy;
pub mod pdb;
pub mod peer_secret;
pub mod service_monitor;
pub mod start_config;
pub mod statefulset;

#[cfg(test)]
pub(crate) mod test_cluster {
    use crate::crd::{RaftCluster, RaftClusterSpec};

    /// A 3-replica cluster `kv` in namespace `prod` with a uid, as read from
    /// the API server.
    pub fn cluster() -> RaftCluster {
        let spec: RaftClusterSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3, "image": "raftkv:test", "storage": {"size": "2Gi", "storageClassName": "fast"}
        }))
        .unwrap();
        let mut c = RaftCluster::new("kv", spec);
        c.metadata.namespace = Some("prod".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }
}
