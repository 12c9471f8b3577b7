//! Backups of a cluster from the operator's side (`spec.backup`,
//! `spec.restore`, `status.backup`).
//!
//! The node does the work: `raftkv snapshot backup` saves a backup into a
//! volume, prunes the old ones and reports what it did as JSON in its
//! container's termination message; `raftkv snapshot
//! restore-if-bootstrapping` seeds a bootstrapping member from a backup.
//! The operator only wires them up:
//!
//! - `schedule`: checking the cron expression, and the longest gap between
//!   two runs (what "too old" means for the alert);
//! - `cronjob`: the CronJob `<cluster>-backup` and the claim it writes to;
//! - `restore`: the init container that restores the first member;
//! - `jobs`: reading the finished backup Jobs (and their pods'
//!   termination messages) into `status.backup` and the `BackupFailed`
//!   condition;
//! - `reconcile`: the API calls of one pass.

pub mod cronjob;
pub mod jobs;
pub mod reconcile;
pub mod restore;
pub mod schedule;
pub mod spec;

use std::collections::BTreeMap;

use crate::identity::{ClusterIdentity, FIELD_MANAGER};

/// `app.kubernetes.io/name` of backup CronJobs, Jobs and their pods. Not
/// the members' `raftkv`: a backup pod must never count as a member.
pub const BACKUP_APP: &str = "raftkv-backup";
/// The condition that reports failing backups.
pub const BACKUP_FAILED: &str = "BackupFailed";

/// Name of the CronJob, and of the claim the operator creates.
pub fn backup_name(id: &ClusterIdentity) -> String {
    format!("{}-backup", id.name)
}

/// Labels of the backup CronJob, its Jobs and pods, and the claim.
pub fn labels(id: &ClusterIdentity) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), BACKUP_APP.to_string()),
        ("app.kubernetes.io/instance".to_string(), id.name.clone()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        ),
    ])
}

/// Selector of a cluster's backup Jobs and pods, for list calls.
pub fn selector(id: &ClusterIdentity) -> String {
    format!(
        "app.kubernetes.io/name={BACKUP_APP},app.kubernetes.io/instance={}",
        id.name
    )
}
