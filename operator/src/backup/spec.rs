//! The backup and restore parts of the `RaftCluster` resource:
//! `spec.backup`, `spec.restore` and `status.backup`. They are part of the
//! CRD (see `crd.rs`); they live here, beside the code that acts on them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scheduled backups: a CronJob `<name>-backup` saves a backup of the
/// cluster into a volume or an S3-compatible bucket on `schedule` and
/// keeps the newest `keep`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.pvc) != has(self.s3)").message("backup: set pvc (a volume) or s3 (a bucket), exactly one"))]
#[x_kube(validation = Rule::new("!has(self.timeZone) || !self.schedule.contains('TZ=')").message("backup: give the time zone in timeZone or in the schedule (CRON_TZ=, TZ=), not both"))]
pub struct BackupSpec {
    /// When to take a backup: a cron expression of five fields (minute
    /// hour day-of-month month day-of-week) or a shorthand such as
    /// `@daily`, in `timeZone` (default: the time zone of the cluster's
    /// controller-manager, UTC unless configured otherwise), as for a
    /// CronJob.
    #[schemars(length(min = 1, max = 100))]
    pub schedule: String,

    /// The time zone `schedule` is read in, a tz database name such as
    /// `Europe/Berlin` or `Etc/UTC` (the CronJob's `timeZone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"))]
    pub time_zone: Option<String>,

    /// How many backups to keep in the volume, the newest ones.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: i32,

    /// Write backups into a volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<BackupPvc>,

    /// Write backups into an S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<BackupS3>,

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

/// An S3-compatible bucket holding backups, as `<prefix>/<cluster>-<UTC
/// time>.db`. The backup job saves each backup to an `emptyDir` first
/// (the node's ephemeral storage must hold one backup), then uploads it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupS3 {
    /// The bucket (it must exist).
    #[schemars(length(min = 3, max = 63))]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix of the backups in the bucket, e.g. `prod/kv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*/?$"))]
    pub prefix: Option<String>,
    #[serde(flatten)]
    pub store: S3Store,
}

/// How to reach an S3-compatible store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Store {
    /// The S3 API's URL, for stores other than AWS (MinIO, Ceph, R2, ...);
    /// default: AWS's endpoint of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub endpoint: Option<String>,
    /// The bucket's region (default us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// Address the bucket as a path of the endpoint rather than as a host
    /// name (most self-hosted stores want this).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_path_style: bool,
    /// A Secret in the cluster's namespace with the keys
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`). Without it, the job's pod gets no
    /// credentials from the operator (e.g. for a service account with an
    /// IAM role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

/// Bootstrap this cluster from a backup file: the first member restores it
/// into its empty data directory before it starts; the others join and
/// receive the data from it. A member whose data directory already holds
/// data never restores, so leaving this set on a running cluster is
/// harmless. The backup is a file in a claim (`claimName` and `file`:
/// every member pod mounts the claim read-only while this is set, so it
/// must be mountable where they run) or an object in an S3-compatible
/// bucket (`s3`: downloaded into an `emptyDir` first).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.claimName) == has(self.file)").message("restore: claimName and file go together"))]
#[x_kube(validation = Rule::new("has(self.claimName) != has(self.s3)").message("restore: set claimName and file (a volume) or s3 (a bucket), exactly one"))]
pub struct RestoreSpec {
    /// The claim holding the backup file, in the cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// The backup's file name in that claim, as `status.backup.file` of the
    /// cluster it came from shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9._-]*$"))]
    pub file: Option<String>,
    /// The backup as an object of an S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<RestoreS3>,
}

/// A backup in an S3-compatible bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreS3 {
    #[schemars(length(min = 3, max = 63))]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket: String,
    /// The backup's key, e.g. `prod/kv/kv-20261201T030000Z.db` (the path
    /// of `status.backup.location` of the cluster it came from).
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$"))]
    pub key: String,
    #[serde(flatten)]
    pub store: S3Store,
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
    /// The claim it is in (backups to a volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Where it is: its path in the backup job's volume, or its `s3://`
    /// URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
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
