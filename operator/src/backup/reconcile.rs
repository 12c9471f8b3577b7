//! The backup part of one reconcile pass: create the claim if the
//! operator owns it, apply the CronJob, read the finished Jobs, and hand
//! back what goes into the status and the metrics. A cluster without
//! `spec.backup` costs no API call (unless it had one: then the CronJob is
//! deleted once).

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tracing::info;

use super::spec::BackupStatus;
use super::{BACKUP_FAILED, backup_name, cronjob, jobs, schedule, selector};
use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::identity::{ClusterIdentity, FIELD_MANAGER};

/// What the pass learned about backups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// `status.backup` (None: no `spec.backup`).
    pub status: Option<BackupStatus>,
    /// The `BackupFailed` condition (None: remove it).
    pub condition: Option<Condition>,
    /// Longest gap between two scheduled runs, in seconds.
    pub interval_seconds: Option<i64>,
    /// When the CronJob was created (Unix time): a cluster that has no
    /// successful backup a schedule gap after that never had one.
    pub configured_since: Option<i64>,
}

impl Observed {
    /// Put the backup status and condition into `status`.
    pub fn apply_to(self, status: &mut RaftClusterStatus) {
        status.backup = self.status;
        status.conditions.retain(|c| c.type_ != BACKUP_FAILED);
        status.conditions.extend(self.condition);
    }
}

/// One pass for `cluster`'s backups that never fails the cluster's pass:
/// an API error (say, RBAC without the batch rules of this version) is
/// logged and shown as `BackupFailed` with reason `BackupNotReconciled`,
/// the last known `status.backup` kept, so that membership and rollouts go
/// on whatever happens to backups.
pub async fn reconcile_or_report(
    client: &Client,
    cluster: &RaftCluster,
    now: Timestamp,
) -> Observed {
    match reconcile(client, cluster, now).await {
        Ok(observed) => observed,
        Err(error) => {
            tracing::warn!(%error, "backup reconcile failed");
            let previous = cluster.status.as_ref();
            let previous_condition =
                previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == BACKUP_FAILED));
            Observed {
                status: previous.and_then(|s| s.backup.clone()),
                condition: cluster.spec.backup.as_ref().map(|_| {
                    jobs::not_reconciled(
                        previous_condition,
                        format!("the operator could not reconcile backups: {error}"),
                        now,
                        cluster.metadata.generation,
                    )
                }),
                interval_seconds: None,
                configured_since: None,
            }
        }
    }
}

/// One pass for `cluster`'s backups.
pub async fn reconcile(
    client: &Client,
    cluster: &RaftCluster,
    now: Timestamp,
) -> Result<Observed, kube::Error> {
    let id = ClusterIdentity::of(cluster);
    let previous = cluster.status.as_ref();
    let previous_condition =
        previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == BACKUP_FAILED));
    let generation = cluster.metadata.generation;
    let cronjobs = Api::<CronJob>::namespaced(client.clone(), &id.namespace);
    let Some(backup) = cluster.spec.backup.as_ref() else {
        if previous.is_some_and(|s| s.backup.is_some()) {
            match cronjobs
                .delete(&backup_name(&id), &DeleteParams::default())
                .await
            {
                Ok(_) => info!("spec.backup removed: deleted the backup CronJob"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(Observed::default());
    };
    let previous_status = previous.and_then(|s| s.backup.as_ref());
    let cron = match schedule::parse(&backup.schedule) {
        Ok(c) => c,
        Err(message) => {
            return Ok(Observed {
                status: Some(previous_status.cloned().unwrap_or_default()),
                condition: Some(jobs::invalid_schedule(
                    previous_condition,
                    message,
                    now,
                    generation,
                )),
                interval_seconds: None,
                configured_since: None,
            });
        }
    };
    if let Some(claim) = cronjob::claim(cluster, backup) {
        // Created, never applied: a claim's spec is all but immutable,
        // and a changed size must not fail every pass.
        let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &id.namespace);
        match claims.create(&PostParams::default(), &claim).await {
            Ok(_) => info!(claim = %backup_name(&id), "created the backup claim"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let applied = cronjobs
        .patch(
            &backup_name(&id),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(cronjob::build(cluster, backup)),
        )
        .await?;
    let configured_since = applied
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    let params = ListParams::default().labels(&selector(&id));
    let job_list = Api::<Job>::namespaced(client.clone(), &id.namespace)
        .list(&params)
        .await?;
    let pod_list = Api::<Pod>::namespaced(client.clone(), &id.namespace)
        .list(&params)
        .await?;
    let finished = jobs::finished(&job_list.items, &pod_list.items);
    let claim = cronjob::claim_name(&id, backup);
    let status = jobs::status(previous_status, claim.as_deref(), &finished);
    if status.last_successful_job != previous_status.and_then(|s| s.last_successful_job.clone()) {
        info!(
            job = status.last_successful_job.as_deref().unwrap_or_default(),
            file = status.file.as_deref().unwrap_or_default(),
            revision = status.revision.unwrap_or_default(),
            "backup succeeded"
        );
    }
    let condition = jobs::condition(previous_condition, &finished, &status, now, generation);
    Ok(Observed {
        interval_seconds: schedule::longest_gap_seconds(&cron, now),
        configured_since,
        status: Some(status),
        condition: Some(condition),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::backup::spec::{BackupPvc, BackupSpec};
    use crate::fixtures::{Expect, FakeNodes, context, serve};
    use crate::resources::test_cluster::cluster;

    fn with_backup() -> RaftCluster {
        let mut c = cluster();
        c.spec.backup = Some(BackupSpec {
            schedule: "0 3 * * *".into(),
            keep: 2,
            time_zone: None,
            s3: None,
            pvc: Some(BackupPvc {
                claim_name: None,
                size: Some("1Gi".into()),
                storage_class_name: None,
            }),
            suspend: false,
        });
        c
    }

    async fn run(c: RaftCluster, script: Vec<Expect>) -> Observed {
        let (ctx, handle) = context(FakeNodes::default());
        let verifier = serve(handle, script);
        let now: Timestamp = "2026-12-01T04:00:00Z".parse().unwrap();
        let observed = reconcile(&ctx.client, &c, now).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), verifier)
            .await
            .expect("a scripted request was never made")
            .expect("API server verifier failed");
        observed
    }

    fn list(items: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items})
    }

    #[tokio::test]
    async fn a_pass_creates_the_claim_applies_the_cronjob_and_reads_the_jobs() {
        let job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "kv-backup-now", "namespace": "prod"},
            "status": {
                "completionTime": "2026-12-01T03:00:05Z",
                "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-01T03:00:05Z"}],
            },
        });
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kv-backup-now-abc", "namespace": "prod",
                         "labels": {"batch.kubernetes.io/job-name": "kv-backup-now"}},
            "status": {"containerStatuses": [{
                "name": "backup", "image": "raftkv:test", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "finishedAt": "2026-12-01T03:00:04Z",
                    "message": r#"{"file":"kv-20261201T030000Z.db","revision":7,"size_bytes":2048,"time":"2026-12-01T03:00:03Z"}"#}},
            }]},
        });
        let script = vec![
            Expect::new(
                Method::POST,
                "/api/v1/namespaces/prod/persistentvolumeclaims",
                |b| {
                    assert_eq!(b["metadata"]["name"], "kv-backup");
                    assert!(b["metadata"].get("ownerReferences").is_none());
                    (StatusCode::CREATED, b.clone())
                },
            ),
            Expect::apply("/apis/batch/v1/namespaces/prod/cronjobs/kv-backup", |b| {
                assert_eq!(b["spec"]["schedule"], "0 3 * * *");
                assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
            }),
            Expect::get("/apis/batch/v1/namespaces/prod/jobs", list(json!([job]))),
            Expect::get("/api/v1/namespaces/prod/pods", list(json!([pod]))),
        ];
        let observed = run(with_backup(), script).await;
        let status = observed.status.unwrap();
        assert_eq!(status.file.as_deref(), Some("kv-20261201T030000Z.db"));
        assert_eq!(status.revision, Some(7));
        assert_eq!(status.size_bytes, Some(2048));
        assert_eq!(status.claim_name.as_deref(), Some("kv-backup"));
        let condition = observed.condition.unwrap();
        assert_eq!(
            (condition.type_.as_str(), condition.status.as_str()),
            ("BackupFailed", "False")
        );
        assert_eq!(observed.interval_seconds, Some(86_400));
    }

    #[tokio::test]
    async fn an_api_error_is_reported_in_the_condition_not_as_a_failed_pass() {
        let (ctx, handle) = context(FakeNodes::default());
        let script = vec![
            Expect::new(
                Method::POST,
                "/api/v1/namespaces/prod/persistentvolumeclaims",
                |b| (StatusCode::CREATED, b.clone()),
            ),
            Expect::new(
                Method::PATCH,
                "/apis/batch/v1/namespaces/prod/cronjobs/kv-backup",
                |_| {
                    (
                        StatusCode::FORBIDDEN,
                        json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"cronjobs.batch is forbidden"}),
                    )
                },
            ),
        ];
        let verifier = serve(handle, script);
        let now: Timestamp = "2026-12-01T04:00:00Z".parse().unwrap();
        let observed = reconcile_or_report(&ctx.client, &with_backup(), now).await;
        verifier.await.unwrap();
        let condition = observed.condition.unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "BackupNotReconciled")
        );
        assert!(
            condition.message.contains("forbidden"),
            "{}",
            condition.message
        );
    }

    #[tokio::test]
    async fn an_invalid_schedule_is_reported_and_nothing_is_applied() {
        let mut c = with_backup();
        if let Some(b) = c.spec.backup.as_mut() {
            b.schedule = "every night".into();
        }
        let observed = run(c, vec![]).await;
        let condition = observed.condition.unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "InvalidSchedule")
        );
        assert!(
            condition.message.contains("every night"),
            "{}",
            condition.message
        );
    }

    #[tokio::test]
    async fn without_spec_backup_nothing_is_asked_unless_it_was_just_removed() {
        let observed = run(cluster(), vec![]).await;
        assert_eq!(observed, Observed::default());
        let mut c = cluster();
        c.status = Some(RaftClusterStatus {
            backup: Some(BackupStatus::default()),
            ..RaftClusterStatus::default()
        });
        let script = vec![Expect::not_found(
            Method::DELETE,
            "/apis/batch/v1/namespaces/prod/cronjobs/kv-backup",
        )];
        assert_eq!(run(c, script).await, Observed::default());
    }

    #[test]
    fn the_observation_replaces_the_backup_condition_only() {
        let mut status = RaftClusterStatus::default();
        status.conditions.push(Condition {
            type_: "Available".into(),
            status: "True".into(),
            reason: "Ok".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        });
        let mut backup = status.conditions[0].clone();
        backup.type_ = BACKUP_FAILED.into();
        Observed {
            status: Some(BackupStatus::default()),
            condition: Some(backup.clone()),
            interval_seconds: None,
            configured_since: None,
        }
        .apply_to(&mut status);
        assert_eq!(status.conditions.len(), 2);
        Observed::default().apply_to(&mut status);
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].type_, "Available");
        assert!(status.backup.is_none());
    }
}
