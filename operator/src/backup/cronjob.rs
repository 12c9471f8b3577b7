//! The CronJob `<cluster>-backup` and the claim it writes to.
//!
//! Each run is one pod running the cluster's own image:
//! `raftkv snapshot backup` against the client Service saves a backup
//! into the claim, or into an `emptyDir` and then an S3-compatible bucket
//! (credentials from a Secret, as environment variables), and prunes the
//! claim or the bucket's prefix to the newest `keep`. Its JSON report goes
//! to the container's termination message, where the operator reads it
//! (`jobs`), so the operator never needs to mount or read the volume.
//! Runs never overlap (`Forbid`): pruning while another run saves would
//! race.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    SecretKeySelector, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::spec::{BackupSpec, S3Store};
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

/// Where a backup to S3 is saved before its upload (an `emptyDir`).
pub const STAGING_DIR: &str = "/staging";
/// The keys of `credentialsSecret`, each the environment variable of the
/// same name (what every S3 tool reads).
const CREDENTIAL_KEYS: [(&str, bool); 3] = [
    ("AWS_ACCESS_KEY_ID", false),
    ("AWS_SECRET_ACCESS_KEY", false),
    ("AWS_SESSION_TOKEN", true),
];

/// The claim backups go to: the existing one, or the one the operator
/// creates; `None` for backups to S3.
pub fn claim_name(id: &ClusterIdentity, backup: &BackupSpec) -> Option<String> {
    let pvc = backup.pvc.as_ref()?;
    Some(pvc.claim_name.clone().unwrap_or_else(|| backup_name(id)))
}

/// The environment that tells `raftkv snapshot backup|restore` how to
/// reach `store`, with the credentials from its Secret.
pub fn s3_env(store: &S3Store, staging_dir: &str) -> Vec<EnvVar> {
    let plain = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![plain("RAFTKV_S3_STAGING_DIR", staging_dir.into())];
    if let Some(endpoint) = &store.endpoint {
        env.push(plain("RAFTKV_S3_ENDPOINT", endpoint.clone()));
    }
    if let Some(region) = &store.region {
        env.push(plain("RAFTKV_S3_REGION", region.clone()));
    }
    if store.force_path_style {
        env.push(plain("RAFTKV_S3_FORCE_PATH_STYLE", "true".into()));
    }
    if let Some(secret) = &store.credentials_secret {
        env.extend(CREDENTIAL_KEYS.iter().map(|(key, optional)| EnvVar {
            name: (*key).into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: (*key).into(),
                    optional: optional.then_some(true),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }));
    }
    env
}

/// The claim the operator creates when `pvc.size` is given (else `None`).
/// No owner reference: the backups must outlive the cluster.
pub fn claim(cluster: &RaftCluster, backup: &BackupSpec) -> Option<PersistentVolumeClaim> {
    let pvc = backup.pvc.as_ref()?;
    let size = pvc.size.as_ref()?;
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
            storage_class_name: pvc.storage_class_name.clone(),
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
    // The destination: the claim mounted at BACKUP_DIR, or the bucket
    // with an emptyDir to stage in.
    let (destination, env, volume) = match (&backup.s3, claim_name(&id, backup)) {
        (Some(s3), _) => {
            let url = match s3.prefix.as_deref().map(|p| p.trim_matches('/')) {
                Some(prefix) if !prefix.is_empty() => format!("s3://{}/{prefix}", s3.bucket),
                _ => format!("s3://{}", s3.bucket),
            };
            let volume = Volume {
                name: "staging".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            };
            (
                ["--s3".to_string(), url],
                Some(s3_env(&s3.store, STAGING_DIR)),
                (volume, STAGING_DIR),
            )
        }
        (None, claim) => {
            let volume = Volume {
                name: "backups".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.unwrap_or_else(|| backup_name(&id)),
                    read_only: None,
                }),
                ..Volume::default()
            };
            (
                ["--dir".to_string(), BACKUP_DIR.to_string()],
                None,
                (volume, BACKUP_DIR),
            )
        }
    };
    let (volume, mount_path) = volume;
    let mut args: Vec<String> = ["snapshot", "backup"].map(String::from).to_vec();
    args.extend(destination);
    args.extend(
        [
            "--prefix",
            &id.name,
            "--keep",
            &keep.to_string(),
            "--endpoints",
            &endpoint,
            "--report",
            TERMINATION_MESSAGE_PATH,
        ]
        .map(String::from),
    );
    let container = Container {
        name: CONTAINER.into(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().into()),
        args: Some(args),
        env,
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.into()),
        // The report when there is one; the log's tail if the process died
        // before writing it.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: volume.name.clone(),
            mount_path: mount_path.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        security_context: Some(pod_security_context()),
        volumes: Some(vec![volume]),
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
            time_zone: backup.time_zone.clone(),
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
            time_zone: None,
            keep: 5,
            pvc: Some(pvc),
            s3: None,
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

#[cfg(test)]
mod s3_tests {
    use super::*;
    use crate::backup::spec::BackupS3;
    use crate::resources::test_cluster::cluster;

    fn to_s3(credentials_secret: Option<&str>) -> BackupSpec {
        BackupSpec {
            schedule: "0 3 * * *".into(),
            time_zone: Some("Europe/Berlin".into()),
            keep: 4,
            pvc: None,
            s3: Some(BackupS3 {
                bucket: "raftkv-backups".into(),
                prefix: Some("prod/kv/".into()),
                store: S3Store {
                    endpoint: Some("http://minio.storage.svc:9000".into()),
                    region: Some("eu-central-1".into()),
                    force_path_style: true,
                    credentials_secret: credentials_secret.map(String::from),
                },
            }),
            suspend: false,
        }
    }

    fn env_value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.as_deref())
    }

    #[test]
    fn a_backup_to_s3_uploads_from_an_empty_dir_and_creates_no_claim() {
        let c = cluster();
        let b = to_s3(Some("kv-s3"));
        assert!(claim(&c, &b).is_none());
        assert_eq!(claim_name(&ClusterIdentity::of(&c), &b), None);
        let cj = build(&c, &b);
        assert_eq!(cj.spec.time_zone.as_deref(), Some("Europe/Berlin"));
        let pod = cj.spec.job_template.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.args.as_ref().unwrap().join(" "),
            "snapshot backup --s3 s3://raftkv-backups/prod/kv --prefix kv --keep 4 \
             --endpoints kv.prod.svc:2379 --report /dev/termination-log"
        );
        let volumes = pod.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert!(volumes[0].empty_dir.is_some() && volumes[0].persistent_volume_claim.is_none());
        let mount = &container.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            (volumes[0].name.as_str(), STAGING_DIR)
        );
        let env = container.env.as_ref().unwrap();
        assert_eq!(env_value(env, "RAFTKV_S3_STAGING_DIR"), Some(STAGING_DIR));
        assert_eq!(
            env_value(env, "RAFTKV_S3_ENDPOINT"),
            Some("http://minio.storage.svc:9000")
        );
        assert_eq!(env_value(env, "RAFTKV_S3_REGION"), Some("eu-central-1"));
        assert_eq!(env_value(env, "RAFTKV_S3_FORCE_PATH_STYLE"), Some("true"));
    }

    #[test]
    fn s3_credentials_come_from_the_secret_as_the_aws_variables() {
        let c = cluster();
        let cj = build(&c, &to_s3(Some("kv-s3")));
        let pod = cj.spec.job_template.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        for (name, optional) in [
            ("AWS_ACCESS_KEY_ID", None),
            ("AWS_SECRET_ACCESS_KEY", None),
            ("AWS_SESSION_TOKEN", Some(true)),
        ] {
            let var = env.iter().find(|v| v.name == name).unwrap();
            let r = var
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
                .unwrap();
            assert_eq!((r.name.as_str(), r.key.as_str()), ("kv-s3", name));
            assert_eq!(r.optional, optional, "{name}");
        }
        // Without a Secret: no credentials from the operator at all (an
        // IAM role of the service account, say).
        let cj = build(&c, &to_s3(None));
        let pod = cj.spec.job_template.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        assert!(env.iter().all(|v| !v.name.starts_with("AWS_")));
    }

    #[test]
    fn a_bucket_without_a_prefix_keeps_backups_at_its_root() {
        let c = cluster();
        let mut b = to_s3(None);
        b.s3.as_mut().unwrap().prefix = None;
        let cj = build(&c, &b);
        let pod = cj.spec.job_template.spec.unwrap().template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(args[2..4], ["--s3", "s3://raftkv-backups"]);
    }
}
