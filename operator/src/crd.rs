//! The `RaftCluster` custom resource (group `raftkv.io`, version `v1alpha1`).
//!
//! These Rust types are the single source of the CRD: `raftkv-operator crd`
//! prints the schema generated from them, and a test fails when the committed
//! YAML drifts. Validation that the API server can enforce lives here too:
//! ranges and formats as schema keywords, and CEL rules
//! (`x-kubernetes-validations`) for changes the operator cannot carry out,
//! such as moving a cluster to another storage class.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::backup::spec::{BackupPvc, BackupSpec, BackupStatus, RestoreSpec};
pub use crate::tls::spec::{
    CertManagerTls, IssuerRef, NetworkPolicySettings, SecretRefTls, TlsMode, TlsSpec,
};

/// Desired state of a raftkv cluster.
// Several printer columns share a `type_`, which this lint mistakes for a
// repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "raftkv.io",
    version = "v1alpha1",
    kind = "RaftCluster",
    plural = "raftclusters",
    // Not "rc": kubectl resolves that to ReplicationControllers first.
    shortname = "raftc",
    namespaced,
    doc = "A Raft-replicated raftkv key-value cluster managed by raftkv-operator",
    status = "RaftClusterStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired number of voting members"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pods that are ready"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "Pod that holds Raft leadership"
    ),
    printcolumn(
        name = "Term",
        type_ = "integer",
        json_path = ".status.term",
        description = "Current Raft term"
    ),
    printcolumn(
        name = "Commit",
        type_ = "integer",
        json_path = ".status.commitIndex",
        description = "Leader's commit index"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.tls) && has(self.tls.mode) ? self.tls.mode : 'disabled') == (has(oldSelf.tls) && has(oldSelf.tls.mode) ? oldSelf.tls.mode : 'disabled')").message("tls.mode is immutable: the members registered their URLs with the scheme they started with"))]
pub struct RaftClusterSpec {
    /// Number of voting members. Odd numbers are recommended: an even number
    /// tolerates no more failures than the odd number below it.
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,

    /// Container image holding the `raftkv` binary.
    #[schemars(length(min = 1))]
    pub image: String,

    /// When to pull the image.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,

    /// Persistent storage for each member's data directory.
    pub storage: StorageSpec,

    /// Compute resources of the raftkv container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Raft timing and log compaction settings passed to every node.
    #[serde(default)]
    pub raft: RaftSpec,

    /// Scheduling and metadata settings applied to every pod.
    #[serde(default)]
    pub pod: PodSettings,

    /// What happens to a member's volume when it is removed by a scale-down or
    /// when the whole cluster is deleted.
    #[serde(default)]
    pub pvc_retention: PvcRetention,

    /// Prometheus Operator integration.
    #[serde(default)]
    pub monitoring: MonitoringSpec,

    /// Scheduled backups (a CronJob running `raftkv snapshot backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// Start this new cluster from a backup file instead of empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,

    /// TLS of the members' listeners and of the operator's calls to them.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Who may reach the members (the operator's NetworkPolicy).
    #[serde(default)]
    pub network_policy: NetworkPolicySettings,
}

/// Image pull policy of the raftkv container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    /// The value Kubernetes expects in `containers[].imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Per-member persistent volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.storageClassName) ? self.storageClassName : '') == (has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')").message("storage.storageClassName is immutable"))]
#[x_kube(validation = Rule::new("self.size == oldSelf.size").message("storage.size is immutable: StatefulSet volume claim templates cannot change"))]
pub struct StorageSpec {
    /// Size of each member's volume, as a Kubernetes quantity (e.g. `1Gi`).
    #[schemars(length(min = 1, max = 32))]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,

    /// Storage class of the volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// Raft settings, handed to `raftkv serve` as environment variables.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.heartbeatIntervalMs * 3 <= self.electionTimeoutMs").message("raft.heartbeatIntervalMs must be at most a third of raft.electionTimeoutMs"))]
pub struct RaftSpec {
    /// Base election timeout in milliseconds (randomized upwards by the node).
    #[serde(default = "default_election_timeout_ms")]
    #[schemars(range(min = 100, max = 60000))]
    pub election_timeout_ms: i32,

    /// Leader heartbeat interval in milliseconds.
    #[serde(default = "default_heartbeat_interval_ms")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_interval_ms: i32,

    /// Applied entries between two snapshots (log compaction).
    #[serde(default = "default_snapshot_threshold")]
    #[schemars(range(min = 100, max = 100000000))]
    pub snapshot_threshold: i64,

    /// How long a client request may wait for commit before failing.
    #[serde(default = "default_request_timeout_ms")]
    #[schemars(range(min = 100, max = 300000))]
    pub request_timeout_ms: i32,
}

fn default_election_timeout_ms() -> i32 {
    1000
}
fn default_heartbeat_interval_ms() -> i32 {
    100
}
fn default_snapshot_threshold() -> i64 {
    10000
}
fn default_request_timeout_ms() -> i32 {
    5000
}

impl Default for RaftSpec {
    fn default() -> Self {
        Self {
            election_timeout_ms: default_election_timeout_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            snapshot_threshold: default_snapshot_threshold(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

/// Pod-level settings copied onto every member pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Extra labels (the operator's own selector labels always win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Whether member volumes outlive their members.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PvcRetention {
    /// Keep volumes; a member that comes back finds its data.
    #[default]
    Retain,
    /// Delete a member's volume once it has left the Raft configuration, and
    /// all volumes when the cluster is deleted.
    Delete,
}

/// ServiceMonitor settings (Prometheus Operator).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a ServiceMonitor scraping every member's `/metrics`.
    #[serde(default)]
    pub enabled: bool,
    /// Labels on the ServiceMonitor, so that a Prometheus selects it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval, a Prometheus duration such as `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: Option<String>,
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Pod name of the Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_index: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<i64>,
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Pods the StatefulSet currently asks for.
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the member pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The operator created a ServiceMonitor (and removes it when
    /// monitoring is turned off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service_monitor: bool,
    /// The cluster has had a leader once; from then on no pod may bootstrap
    /// a new cluster, every pod joins. Never reset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrapped: bool,
    /// The token the members derive the Raft cluster id from
    /// (`RAFTKV_CLUSTER_TOKEN`). Recorded once, never changed: a member
    /// refuses a data directory written for another cluster id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_token: Option<String>,
    /// Pod name -> UID of the data volume (PVC) its member joined the
    /// configuration with. A member whose PVC now has another UID lost its
    /// log and its vote; the operator removes it and adds it back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub member_volumes: BTreeMap<String, String>,
    /// Pod name -> storage id of the data directory its member joined the
    /// configuration with (reported by the node). Another id means the
    /// directory was emptied on the same volume: the member lost its log
    /// and its vote just the same.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub member_storage: BTreeMap<String, String>,
    /// The last successful scheduled backup (with `spec.backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// The users of `spec.tls.clientUsers` whose certificates the operator
    /// issued: a user taken off the spec loses its Secret on the next pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_users: Vec<String>,
}

/// Lifecycle phase of a cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Bootstrapping,
    Running,
    Scaling,
    /// Pods on an older template are being replaced one at a time.
    Upgrading,
    Degraded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Bootstrapping => "Bootstrapping",
            Phase::Running => "Running",
            Phase::Scaling => "Scaling",
            Phase::Upgrading => "Upgrading",
            Phase::Degraded => "Degraded",
            Phase::Failed => "Failed",
        }
    }
}

/// One member of the Raft configuration as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub id: i64,
    pub name: String,
    pub role: MemberRole,
    pub is_leader: bool,
    /// The member answered `/v1/status` during the last reconcile.
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_index: Option<i64>,
    /// Since when the member has not answered (absent while it answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<Time>,
}

/// Voting role of a member.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Voter,
    Learner,
}

/// The CRD as YAML, exactly as committed under `deploy/crd/` and the chart.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    use kube::CustomResourceExt;
    serde_norway::to_string(&RaftCluster::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn crd_json() -> serde_json::Value {
        serde_json::to_value(RaftCluster::crd()).unwrap()
    }

    #[test]
    fn crd_names_group_and_short_name() {
        let crd = RaftCluster::crd();
        assert_eq!(crd.spec.group, "raftkv.io");
        assert_eq!(crd.spec.names.plural, "raftclusters");
        assert_eq!(crd.spec.names.short_names, Some(vec!["raftc".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    }

    /// Short names kubectl already resolves, to built-in resources (as
    /// listed by `kubectl api-resources` on Kubernetes 1.34) or to CRDs
    /// that are installed almost everywhere (cert-manager, Prometheus
    /// Operator, Argo, Istio, Knative). A short name that collides is
    /// resolved to the other resource first: `kubectl get rc demo` read
    /// ReplicationControllers.
    const TAKEN_SHORT_NAMES: &[&str] = &[
        // core/v1 and the built-in API groups
        "cm", "cs", "ep", "ev", "limits", "no", "ns", "po", "pv", "pvc", "quota", "rc", "sa", "svc",
        "crd", "crds", "ds", "deploy", "rs", "sts", "hpa", "cj", "csr", "ing", "netpol", "pdb",
        "pc", "psp", "sc", "eps", "ingclass", "vac", // widespread CRDs
        "cert", "certs", "cr", "crs", "smon", "pmon", "prom", "promrule", "am", "app", "apps",
        "appproj", "wf", "cwf", "vs", "gw", "dr", "se", "pa", "ra", "ksvc", "rt", "cfg", "rev",
        "vm", "vmi",
    ];

    #[test]
    fn short_names_collide_with_no_builtin_or_common_resource() {
        let names = RaftCluster::crd().spec.names;
        let short = names.short_names.unwrap_or_default();
        assert!(!short.is_empty(), "a short name saves typing");
        for s in &short {
            assert!(
                !TAKEN_SHORT_NAMES.contains(&s.as_str()),
                "short name {s:?} is already taken; kubectl would resolve it to another resource"
            );
            assert_ne!(s, &names.plural);
            assert_ne!(Some(s), names.singular.as_ref());
        }
    }

    #[test]
    fn crd_has_status_and_scale_subresources() {
        let v = crd_json();
        let sub = &v["spec"]["versions"][0]["subresources"];
        assert!(sub["status"].is_object());
        assert_eq!(sub["scale"]["specReplicasPath"], ".spec.replicas");
        assert_eq!(sub["scale"]["statusReplicasPath"], ".status.replicas");
        assert_eq!(sub["scale"]["labelSelectorPath"], ".status.selector");
    }

    #[test]
    fn crd_printer_columns_show_cluster_health() {
        let v = crd_json();
        let cols: Vec<String> = v["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            cols,
            [
                "Replicas", "Ready", "Leader", "Term", "Commit", "Phase", "Age"
            ]
        );
    }

    #[test]
    fn crd_schema_limits_replicas_and_carries_cel_rules() {
        let v = crd_json();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["replicas"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert_eq!(
            spec["properties"]["replicas"]["maximum"].as_f64(),
            Some(9.0)
        );
        let rules = spec["properties"]["storage"]["x-kubernetes-validations"].to_string();
        assert!(rules.contains("storageClassName is immutable"), "{rules}");
        let raft_rules = spec["properties"]["raft"]["x-kubernetes-validations"].to_string();
        assert!(raft_rules.contains("heartbeatIntervalMs"), "{raft_rules}");
        let spec_rules = spec["x-kubernetes-validations"].to_string();
        assert!(spec_rules.contains("tls.mode is immutable"), "{spec_rules}");
        let tls_rules = spec["properties"]["tls"]["x-kubernetes-validations"].to_string();
        assert!(tls_rules.contains("has(self.certManager)"), "{tls_rules}");
    }

    #[test]
    fn spec_defaults_fill_optional_sections() {
        let spec: RaftClusterSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3, "image": "raftkv:dev", "storage": {"size": "1Gi"}
        }))
        .unwrap();
        assert_eq!(spec.pvc_retention, PvcRetention::Retain);
        assert_eq!(spec.raft, RaftSpec::default());
        assert!(!spec.monitoring.enabled);
        assert_eq!(spec.image_pull_policy, ImagePullPolicy::IfNotPresent);
        assert_eq!(spec.tls.mode, TlsMode::Disabled);
        assert_eq!(spec.network_policy.client_from, None);
    }

    /// CI and `cargo test` catch a CRD that changed without regenerating the
    /// committed copies (`raftkv-operator crd > ...`).
    #[test]
    fn committed_crd_files_match_generated_output() {
        let generated = crd_yaml().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for rel in [
            "deploy/crd/raftclusters.raftkv.io.yaml",
            "charts/raftkv-operator/crds/raftclusters.raftkv.io.yaml",
        ] {
            let committed = std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| {
                panic!("{rel} is missing ({e}); run `raftkv-operator crd > {rel}`")
            });
            assert!(
                committed == generated,
                "{rel} differs from `raftkv-operator crd`; regenerate it with `cargo run -p raftkv-operator -- crd > {rel}`"
            );
        }
    }
}
