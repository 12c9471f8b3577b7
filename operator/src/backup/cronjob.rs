//! The CronJob `<cluster>-backup` and the claim it writes to.
//!
//! Each run is one pod running the cluster's own image:
//! `raftkv snapshot backup` against the client Service saves a backup
//! into the claim and prunes it to the newest `keep`. Its JSON report goes
//! to the container's termination message, where the operator reads it
//! (`jobs`), so the operator never needs to mount or read the volume.
//! Runs never overlap (`Forbid`): pruning while another run saves would
//! race.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSpec, PodTemplateSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::spec::BackupSpec;
use super::{backup_name, labels};
use crate::crd::RaftCluster;
use crate::identity::{CLIENT_PORT, ClusterIdentity, owned_meta};
use crate::resources::statefulset::{container_security_context, pod_security_context};

/// Where the backup claim is mounted in the job's pod.
pub const BACKUP_DIR: &str = "/backups";
/// The container's termination message file (Kubernetes' default path).
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Name of the job's container.
pub const CONTAINER: &str = "backup";
/// Finished Jobs kept (and so read by the operator) per outcome.
const JOBS_KEPT: i32 = 3;
/// A run that has not finished after this long is stopped and fails.
const RUN_DEADLINE_SECONDS: i64 = 3600;

/// The claim backups go to: the existing one, or the one the operator
/// creates.
pub fn claim_name(id: &ClusterIdentity, backup: &BackupSpec) -> String {
    backup
        .pvc
        .claim_name
        .clone()
        .unwrap_or_else(|| backup_name(id))
}

/// The claim the operator creates when `pvc.size` is given (else `None`).
/// No owner reference: the backups must outlive the cluster.
pub fn claim(cluster: &RaftCluster, backup: &BackupSpec) -> Option<PersistentVolumeClaim> {
    let size = backup.pvc.size.as_ref()?;
    let id = ClusterIdentity::of(cluster);
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(backup_name(&id)),
            namespace: Some(id.namespace.clone()),
            labels: Some(labels(&id)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: backup.pvc.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

/// The CronJob for `backup` (the cluster's `spec.backup`).
pub fn build(cluster: &RaftCluster, backup: &BackupSpec) -> CronJob {
    let id = ClusterIdentity::of(cluster);
    let mut meta = owned_meta(cluster, &id, backup_name(&id));
    meta.labels = Some(labels(&id));
    let keep = backup.keep.max(1);
    let endpoint = format!("{}.{}.svc:{CLIENT_PORT}", id.client_service(), id.namespace);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().into()),
        args: Some(
            [
                "snapshot",
                "backup",
                "--dir",
                BACKUP_DIR,
                "--prefix",
                &id.name,
                "--keep",
                &keep.to_string(),
                "--endpoints",
                &endpoint,
                "--report",
                TERMINATION_MESSAGE_PATH,
            ]
            .map(String::from)
            .to_vec(),
        ),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.into()),
        // The report when there is one; the log's tail if the process died
        // before writing it.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: "backups".into(),
            mount_path: BACKUP_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        security_context: Some(pod_security_context()),
        volumes: Some(vec![Volume {
            name: "backups".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&id, backup),
                read_only: None,
            }),
            ..Volume::default()
        }]),
        node_selector: (!cluster.spec.pod.node_selector.is_empty())
            .then(|| cluster.spec.pod.node_selector.clone()),
        tolerations: (!cluster.spec.pod.tolerations.is_empty())
            .then(|| cluster.spec.pod.tolerations.clone()),
        ..PodSpec::default()
    };
    CronJob {
        metadata: meta,
        spec: CronJobSpec {
            schedule: backup.schedule.clone(),
            suspend: Some(backup.suspend),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(JOBS_KEPT),
            failed_jobs_history_limit: Some(JOBS_KEPT),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&id)),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    // One retry: a leader change during the save is worth
                    // another try, a broken cluster is not worth many.
                    backoff_limit: Some(1),
                    active_deadline_seconds: Some(RUN_DEADLINE_SECONDS),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(labels(&id)),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        },
        ..CronJob::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::spec::BackupPvc;
    use crate::resources::test_cluster::cluster;

    fn backup(pvc: BackupPvc) -> BackupSpec {
        BackupSpec {
            schedule: "0 3 * * *".into(),
            keep: 5,
            pvc,
            suspend: false,
        }
    }

    fn created() -> BackupPvc {
        BackupPvc {
            claim_name: None,
            size: Some("5Gi".into()),
            storage_class_name: Some("slow".into()),
        }
    }

    #[test]
    fn the_cronjob_saves_into_the_claim_and_keeps_the_newest() {
        let c = cluster();
        let cj = build(&c, &backup(created()));
        assert_eq!(cj.metadata.name.as_deref(), Some("kv-backup"));
        assert_eq!(
            cj.metadata.owner_references.as_ref().unwrap()[0].kind,
            "RaftCluster"
        );
        let spec = cj.spec;
        assert_eq!(spec.schedule, "0 3 * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("raftkv:test"));
        assert_eq!(
            container.args.as_ref().unwrap().join(" "),
            "snapshot backup --dir /backups --prefix kv --keep 5 \
             --endpoints kv.prod.svc:2379 --report /dev/termination-log"
        );
        assert_eq!(
            container.termination_message_path.as_deref(),
            Some(TERMINATION_MESSAGE_PATH)
        );
        let claim = pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(claim.claim_name, "kv-backup");
        assert_eq!(
            container.volume_mounts.as_ref().unwrap()[0].mount_path,
            BACKUP_DIR
        );
    }

    #[test]
    fn backup_pods_are_never_taken_for_members() {
        let c = cluster();
        let id = ClusterIdentity::of(&c);
        let cj = build(&c, &backup(created()));
        let template = cj.spec.job_template.spec.unwrap().template;
        let labels = template.metadata.unwrap().labels.unwrap();
        let members = id.selector_labels();
        assert!(
            members.iter().any(|(k, v)| labels.get(k) != Some(v)),
            "backup pod labels {labels:?} match the member selector {members:?}"
        );
        assert_eq!(labels["app.kubernetes.io/instance"], "kv");
    }

    #[test]
    fn an_existing_claim_is_used_and_none_is_created() {
        let c = cluster();
        let pvc = BackupPvc {
            claim_name: Some("nightly".into()),
            size: None,
            storage_class_name: None,
        };
        assert!(claim(&c, &backup(pvc.clone())).is_none());
        let cj = build(&c, &backup(pvc));
        let pod = cj.spec.job_template.spec.unwrap().template.spec.unwrap();
        let volume = pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(volume.claim_name, "nightly");
    }

    #[test]
    fn a_created_claim_outlives_the_cluster() {
        let c = cluster();
        let pvc = claim(&c, &backup(created())).unwrap();
        assert_eq!(pvc.metadata.name.as_deref(), Some("kv-backup"));
        assert!(pvc.metadata.owner_references.is_none());
        let spec = pvc.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("slow"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("5Gi".into())
        );
    }
}
