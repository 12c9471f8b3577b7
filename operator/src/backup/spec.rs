//! The backup and restore parts of the `RaftCluster` resource:
//! `spec.backup`, `spec.restore` and `status.backup`. They are part of the
//! CRD (see `crd.rs`); they live here, beside the code that acts on them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scheduled backups: a CronJob `<name>-backup` saves a backup of the
/// cluster into a volume on `schedule` and keeps the newest `keep`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to take a backup: a cron expression of five fields (minute
    /// hour day-of-month month day-of-week) or a shorthand such as
    /// `@daily`, in the time zone of the cluster's controller-manager
    /// (UTC unless configured otherwise), as for a CronJob.
    #[schemars(length(min = 1, max = 100))]
    pub schedule: String,

    /// How many backups to keep in the volume, the newest ones.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: i32,

    /// Where backups are written.
    pub pvc: BackupPvc,

    /// Stop taking scheduled backups (existing ones are kept; a backup
    /// started by hand from the CronJob still runs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

fn default_keep() -> i32 {
    7
}

/// The PersistentVolumeClaim holding the backups: an existing one
/// (`claimName`), or one the operator creates (`size`, optionally
/// `storageClassName`) named `<cluster>-backup`. A claim the operator
/// creates has no owner: it outlives the cluster, which is the point of a
/// backup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.claimName) != has(self.size)").message("backup.pvc: set claimName (an existing claim) or size (a claim the operator creates), exactly one"))]
#[x_kube(validation = Rule::new("!has(self.storageClassName) || has(self.size)").message("backup.pvc.storageClassName only applies to a claim the operator creates (size)"))]
pub struct BackupPvc {
    /// An existing claim in the cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,

    /// Size of the claim the operator creates, a Kubernetes quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: Option<String>,

    /// Storage class of the claim the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// Bootstrap this cluster from a backup file: the first member restores it
/// into its empty data directory before it starts; the others join and
/// receive the data from it. A member whose data directory already holds
/// data never restores, so leaving this set on a running cluster is
/// harmless. Every member pod mounts the claim (read-only) while this is
/// set, so the claim must be mountable where they run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The claim holding the backup file, in the cluster's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// The backup's file name in that claim, as `status.backup.file` of the
    /// cluster it came from shows it.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]*$"))]
    pub file: String,
}

/// The last successful backup, from the report of the job that took it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the last successful backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The Job that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_job: Option<String>,
    /// The claim it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Its file name in the claim (what `spec.restore.file` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The store's revision it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// When the last backup job failed, if one did after the last success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_time: Option<Time>,
}
