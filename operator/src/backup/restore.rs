//! `spec.restore`: the init container that seeds the bootstrapping member
//! from a backup file.
//!
//! Every pod of the StatefulSet shares one template (and it must not
//! change when the cluster bootstraps, see `start_config`), so the init
//! container is in every pod and decides at each start by itself:
//! `raftkv snapshot restore-if-bootstrapping` reads exactly the
//! configuration `raftkv serve` is about to read (the same environment,
//! the same start ConfigMap keys) and restores only when the member is
//! about to bootstrap a new cluster with an empty data directory. That is
//! pod 0 before the cluster ever had a leader; every other member, and pod
//! 0 once it holds data, is left alone and joins or resumes as usual. A
//! data directory that holds a store is never overwritten.
//!
//! A backup in a claim is mounted read-only; one in an S3-compatible
//! bucket is downloaded into an `emptyDir` by the init container (only
//! when it restores), with the bucket's credentials from their Secret.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, Volume, VolumeMount,
};

use super::cronjob::s3_env;

use crate::crd::RaftCluster;

/// Name of the init container and of the volume holding the backup.
pub const NAME: &str = "restore";
/// Where the claim holding the backup is mounted (read-only).
pub const RESTORE_DIR: &str = "/var/lib/raftkv-restore";

/// The init container for `spec.restore`, built from the member container
/// `main` (same image, environment, data volume and security settings), or
/// `None` without `spec.restore`.
pub fn init_container(cluster: &RaftCluster, main: &Container) -> Option<Container> {
    let restore = cluster.spec.restore.as_ref()?;
    let mut mounts = main.volume_mounts.clone().unwrap_or_default();
    mounts.push(VolumeMount {
        name: NAME.into(),
        mount_path: RESTORE_DIR.into(),
        // The emptyDir the object is downloaded into is written to.
        read_only: restore.s3.is_none().then_some(true),
        ..VolumeMount::default()
    });
    let (file, env) = match &restore.s3 {
        Some(s3) => {
            let mut env = main.env.clone().unwrap_or_default();
            env.extend(s3_env(&s3.store, RESTORE_DIR));
            (format!("s3://{}/{}", s3.bucket, s3.key), Some(env))
        }
        None => (
            format!(
                "{RESTORE_DIR}/{}",
                restore.file.as_deref().unwrap_or_default()
            ),
            main.env.clone(),
        ),
    };
    Some(Container {
        name: NAME.into(),
        image: main.image.clone(),
        image_pull_policy: main.image_pull_policy.clone(),
        args: Some(vec![
            "snapshot".into(),
            "restore-if-bootstrapping".into(),
            file,
        ]),
        env,
        resources: main.resources.clone(),
        security_context: main.security_context.clone(),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Container::default()
    })
}

/// The volume of the backup's claim (or the emptyDir an object is
/// downloaded into), or `None` without `spec.restore`.
pub fn volume(cluster: &RaftCluster) -> Option<Volume> {
    let restore = cluster.spec.restore.as_ref()?;
    Some(match &restore.claim_name {
        Some(claim_name) if restore.s3.is_none() => Volume {
            name: NAME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        },
        _ => Volume {
            name: NAME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RestoreSpec;
    use crate::resources::start_config::{INITIAL_CLUSTER_KEY, JOIN_KEY};
    use crate::resources::statefulset::{self, DATA_DIR};
    use crate::resources::test_cluster::cluster;

    fn restoring() -> RaftCluster {
        let mut c = cluster();
        c.spec.restore = Some(RestoreSpec {
            claim_name: Some("kv-backup".into()),
            file: Some("kv-20261201T030000Z.db".into()),
            s3: None,
        });
        c
    }

    #[test]
    fn without_spec_restore_pods_have_no_init_container() {
        let pod = statefulset::build(&cluster(), 1)
            .spec
            .template
            .spec
            .unwrap();
        assert!(pod.init_containers.is_none());
        assert!(pod.volumes.unwrap().iter().all(|v| v.name != NAME));
    }

    #[test]
    fn the_init_container_restores_the_file_into_the_data_dir() {
        let pod = statefulset::build(&restoring(), 1)
            .spec
            .template
            .spec
            .unwrap();
        let init = &pod.init_containers.as_ref().unwrap()[0];
        let main = &pod.containers[0];
        assert_eq!(
            init.args.as_ref().unwrap(),
            &[
                "snapshot",
                "restore-if-bootstrapping",
                "/var/lib/raftkv-restore/kv-20261201T030000Z.db"
            ]
        );
        assert_eq!(init.image, main.image);
        // The same configuration as `raftkv serve`: the id from the pod's
        // name, the cluster token, and the start mode from the ConfigMap.
        assert_eq!(init.env, main.env);
        let env = init.env.as_ref().unwrap();
        for name in [
            "RAFTKV_ID_FROM_ORDINAL",
            "RAFTKV_CLUSTER_TOKEN",
            "RAFTKV_DATA_DIR",
        ] {
            assert!(env.iter().any(|v| v.name == name), "{name}");
        }
        let from_config = |key: &str| {
            env.iter().any(|v| {
                v.value_from
                    .as_ref()
                    .and_then(|f| f.config_map_key_ref.as_ref())
                    .is_some_and(|r| r.key == key)
            })
        };
        assert!(from_config(INITIAL_CLUSTER_KEY) && from_config(JOIN_KEY));
        let mounts = init.volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == DATA_DIR && m.read_only != Some(true))
        );
        let backup = mounts.iter().find(|m| m.name == NAME).unwrap();
        assert_eq!(backup.read_only, Some(true));
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == NAME)
            .unwrap();
        let claim = volume.persistent_volume_claim.unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("kv-backup", Some(true))
        );
    }

    #[test]
    fn a_backup_in_s3_is_downloaded_into_an_empty_dir_with_the_secrets_credentials() {
        let mut c = cluster();
        c.spec.restore = Some(RestoreSpec {
            claim_name: None,
            file: None,
            s3: Some(crate::backup::spec::RestoreS3 {
                bucket: "raftkv-backups".into(),
                key: "prod/kv/kv-20261201T030000Z.db".into(),
                store: crate::backup::spec::S3Store {
                    endpoint: Some("http://minio.storage.svc:9000".into()),
                    region: None,
                    force_path_style: true,
                    credentials_secret: Some("kv-s3".into()),
                },
            }),
        });
        let pod = statefulset::build(&c, 1).spec.template.spec.unwrap();
        let init = &pod.init_containers.as_ref().unwrap()[0];
        let main = &pod.containers[0];
        assert_eq!(
            init.args.as_ref().unwrap(),
            &[
                "snapshot",
                "restore-if-bootstrapping",
                "s3://raftkv-backups/prod/kv/kv-20261201T030000Z.db"
            ]
        );
        let env = init.env.as_ref().unwrap();
        // The member's own configuration, then the store's.
        assert!(main.env.as_ref().unwrap().iter().all(|v| env.contains(v)));
        let value = |name: &str| {
            env.iter()
                .find(|v| v.name == name)
                .and_then(|v| v.value.clone())
        };
        assert_eq!(value("RAFTKV_S3_STAGING_DIR").as_deref(), Some(RESTORE_DIR));
        assert_eq!(
            value("RAFTKV_S3_ENDPOINT").as_deref(),
            Some("http://minio.storage.svc:9000")
        );
        let secret = env
            .iter()
            .find(|v| v.name == "AWS_SECRET_ACCESS_KEY")
            .and_then(|v| v.value_from.as_ref()?.secret_key_ref.clone())
            .unwrap();
        assert_eq!(secret.name, "kv-s3");
        // The member container gets no credentials.
        assert!(
            main.env
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| !v.name.starts_with("AWS_"))
        );
        let mount = init
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == NAME)
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (RESTORE_DIR, None)
        );
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == NAME)
            .unwrap();
        assert!(volume.empty_dir.is_some() && volume.persistent_volume_claim.is_none());
    }

    #[test]
    fn the_template_does_not_change_when_a_restored_cluster_bootstraps() {
        let fresh = restoring();
        let mut bootstrapped = restoring();
        bootstrapped.status = Some(crate::crd::RaftClusterStatus {
            bootstrapped: true,
            cluster_token: Some("prod/kv".into()),
            ..Default::default()
        });
        assert_eq!(
            statefulset::build(&fresh, 1).spec.template,
            statefulset::build(&bootstrapped, 3).spec.template
        );
    }
}
