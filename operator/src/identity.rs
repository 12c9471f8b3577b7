//! Names, labels and node ids of everything a `RaftCluster` owns.
//!
//! Every builder and the reconciler derive object names from here, so that a
//! pod name, its Raft node id, its PVC and its DNS name can never disagree.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::RaftCluster;

/// Port of the client gRPC API.
pub const CLIENT_PORT: i32 = 2379;
/// Port of the peer (Raft) gRPC transport.
pub const PEER_PORT: i32 = 2380;
/// Port of the HTTP API: status, admin, metrics, probes.
pub const HTTP_PORT: i32 = 8080;
/// Plain-HTTP port of `/metrics`, `/healthz` and `/readyz` when the HTTP
/// port speaks TLS (`--listen-metrics`): probes and Prometheus need no
/// client certificate.
pub const METRICS_PORT: i32 = 9090;
/// Field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "raftkv-operator";
/// Name of the volume claim template holding the data directory.
pub const DATA_VOLUME: &str = "data";

/// A Raft node id. In a StatefulSet the id is the pod ordinal plus one,
/// because raftkv reserves id 0 for "no node".
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl NodeId {
    pub fn from_ordinal(ordinal: u32) -> Self {
        NodeId(u64::from(ordinal) + 1)
    }

    /// The StatefulSet ordinal of this node, if the id came from one.
    pub fn ordinal(self) -> Option<u32> {
        self.0.checked_sub(1).and_then(|o| u32::try_from(o).ok())
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Naming scheme of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub name: String,
    pub namespace: String,
    /// The members' listeners speak TLS (`spec.tls`): every URL is https.
    pub tls: bool,
}

impl ClusterIdentity {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            tls: false,
        }
    }

    /// The same names, with the URLs of a cluster whose listeners do (or
    /// do not) speak TLS.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Identity of a resource read from the API server (namespaced, so a
    /// namespace is always present; "default" guards a hand-built object).
    pub fn of(cluster: &RaftCluster) -> Self {
        Self::new(
            cluster.name_any(),
            cluster.namespace().unwrap_or_else(|| "default".to_string()),
        )
        .with_tls(cluster.spec.tls.enabled())
    }

    pub fn statefulset(&self) -> String {
        self.name.clone()
    }
    pub fn headless_service(&self) -> String {
        format!("{}-peers", self.name)
    }
    pub fn client_service(&self) -> String {
        self.name.clone()
    }
    pub fn pdb(&self) -> String {
        self.name.clone()
    }
    pub fn service_monitor(&self) -> String {
        self.name.clone()
    }
    pub fn network_policy(&self) -> String {
        self.name.clone()
    }
    /// The Secret holding the members' shared peer key.
    pub fn peer_secret(&self) -> String {
        format!("{}-peer", self.name)
    }
    /// With `tls.mode: auto`: the cluster's CA (certificate and key).
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.name)
    }
    /// With `tls.mode: auto`: every member's certificate and key, keyed
    /// by pod name, and the CA certificate.
    pub fn member_tls_secret(&self) -> String {
        format!("{}-tls", self.name)
    }
    /// With `tls.mode: auto`: a client certificate for the users.
    pub fn client_tls_secret(&self) -> String {
        format!("{}-client-tls", self.name)
    }
    /// The client certificate of one user named in `spec.tls.clientUsers`.
    pub fn user_tls_secret(&self, user: &str) -> String {
        format!("{}-client-{user}-tls", self.name)
    }
    /// The cert-manager Certificate behind [`Self::user_tls_secret`].
    pub fn user_certificate(&self, user: &str) -> String {
        format!("{}-client-{user}", self.name)
    }
    /// The client certificate the operator presents to the members
    /// (`auto` and `certManager`).
    pub fn operator_tls_secret(&self) -> String {
        format!("{}-operator-tls", self.name)
    }
    /// With `tls.mode: certManager`: the client and HTTP ports' certificate.
    pub fn server_tls_secret(&self) -> String {
        format!("{}-server-tls", self.name)
    }
    /// With `tls.mode: certManager`: the peer port's certificate.
    pub fn peer_tls_secret(&self) -> String {
        format!("{}-peer-tls", self.name)
    }
    /// The ConfigMap saying how a member with an empty data dir starts.
    pub fn start_config(&self) -> String {
        format!("{}-start", self.name)
    }
    pub fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }
    /// The PVC the StatefulSet controller creates for a pod's data volume.
    pub fn pvc(&self, ordinal: u32) -> String {
        format!("{DATA_VOLUME}-{}-{ordinal}", self.name)
    }
    /// Ordinal of the pod whose data volume claim this is, from its name.
    pub fn pvc_ordinal_of(&self, pvc: &str) -> Option<u32> {
        self.ordinal_of(pvc.strip_prefix(DATA_VOLUME)?.strip_prefix('-')?)
    }
    /// Ordinal of a pod of this cluster, from its name.
    pub fn ordinal_of(&self, pod: &str) -> Option<u32> {
        pod.strip_prefix(&self.name)?
            .strip_prefix('-')?
            .parse()
            .ok()
    }
    /// Stable DNS name of a pod through the headless Service.
    pub fn pod_host(&self, pod: &str) -> String {
        format!("{pod}.{}.{}.svc", self.headless_service(), self.namespace)
    }
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
    pub fn peer_url(&self, pod: &str) -> String {
        format!("{}://{}:{PEER_PORT}", self.scheme(), self.pod_host(pod))
    }
    pub fn client_url(&self, pod: &str) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.scheme(), self.pod_host(pod))
    }
    /// Base URL of the pod's HTTP API (status, membership).
    pub fn http_url(&self, pod: &str) -> String {
        format!("{}://{}:{HTTP_PORT}", self.scheme(), self.pod_host(pod))
    }

    /// Labels that select this cluster's pods. Never user-overridable.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "raftkv".to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
        ])
    }

    /// Labels on every owned object.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        );
        labels
    }

    /// `key=value,...` form of the selector, for list calls and the scale subresource.
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Metadata of an owned object: name, namespace, labels and the controller
/// owner reference that makes Kubernetes garbage-collect it with the cluster.
pub fn owned_meta(cluster: &RaftCluster, id: &ClusterIdentity, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(id.namespace.clone()),
        labels: Some(id.labels()),
        owner_references: owner_reference(cluster).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

fn owner_reference(cluster: &RaftCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_ordinal_plus_one() {
        assert_eq!(NodeId::from_ordinal(0), NodeId(1));
        assert_eq!(NodeId(3).ordinal(), Some(2));
        assert_eq!(NodeId(0).ordinal(), None);
    }

    #[test]
    fn names_follow_statefulset_conventions() {
        let id = ClusterIdentity::new("kv", "prod");
        assert_eq!(id.pod(2), "kv-2");
        assert_eq!(id.pvc(2), "data-kv-2");
        assert_eq!(id.ordinal_of("kv-2"), Some(2));
        assert_eq!(id.ordinal_of("kvx-2"), None);
        assert_eq!(id.ordinal_of("other-1"), None);
        assert_eq!(id.pvc_ordinal_of(&id.pvc(3)), Some(3));
        assert_eq!(id.pvc_ordinal_of("kv-3"), None);
        assert_eq!(id.pvc_ordinal_of("data-other-3"), None);
        assert_eq!(id.peer_url("kv-0"), "http://kv-0.kv-peers.prod.svc:2380");
        let tls = id.clone().with_tls(true);
        assert_eq!(tls.peer_url("kv-0"), "https://kv-0.kv-peers.prod.svc:2380");
        assert_eq!(
            tls.client_url("kv-1"),
            "https://kv-1.kv-peers.prod.svc:2379"
        );
        assert_eq!(tls.http_url("kv-2"), "https://kv-2.kv-peers.prod.svc:8080");
        assert_eq!(
            id.selector_string(),
            "app.kubernetes.io/instance=kv,app.kubernetes.io/name=raftkv"
        );
    }
}
