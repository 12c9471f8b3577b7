//! The StatefulSet running the members: stable pod names (hence stable Raft
//! ids and DNS names) and one PersistentVolumeClaim per member for the redb
//! data directory.
//!
//! The replica count is the reconciler's decision, not `spec.replicas`: the
//! membership planner raises it one pod at a time ahead of adding a learner
//! and lowers it only after the member has left the Raft configuration.
//!
//! The update strategy is `OnDelete`: a changed template (a new image, a new
//! setting) replaces no pod by itself; the operator deletes the outdated
//! pods one at a time, in an order that keeps the quorum (the planner's
//! rollout rule). The template depends on the spec alone, never on the
//! cluster's progress (see `start_config`), so that nothing but a spec
//! change makes pods outdated.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretKeySelector, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::peer_secret;
use crate::crd::{PvcRetention, RaftCluster};
use crate::identity::{
    CLIENT_PORT, ClusterIdentity, DATA_VOLUME, HTTP_PORT, METRICS_PORT, PEER_PORT, owned_meta,
};
use crate::resources::start_config::{INITIAL_CLUSTER_KEY, JOIN_KEY};

/// Where the data volume is mounted and `RAFTKV_DATA_DIR` points.
pub const DATA_DIR: &str = "/var/lib/raftkv";
/// Unprivileged uid/gid the node runs as (the image's non-root user).
pub const RUN_AS_USER: i64 = 65532;
/// Floor of the termination grace period: a leader that is told to stop
/// transfers leadership and waits for the transfer to land before exiting.
const MIN_GRACE_SECONDS: i64 = 60;

/// The StatefulSet asking for `replicas` pods.
pub fn build(cluster: &RaftCluster, replicas: i32) -> StatefulSet {
    let id = ClusterIdentity::of(cluster);
    let spec = &cluster.spec;

    let mut pod_labels: BTreeMap<String, String> = spec.pod.labels.clone();
    pod_labels.extend(id.labels());

    StatefulSet {
        metadata: owned_meta(cluster, &id, id.statefulset()),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(id.headless_service()),
            // Parallel: after a full restart every member must come up at
            // once, since no single member can elect a leader (and become
            // ready) on its own; OrderedReady would wait on pod 0 forever.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(id.selector_labels()),
                ..LabelSelector::default()
            },
            // On scale-down the operator deletes a member's volume itself,
            // once the member has left the Raft configuration. When the
            // cluster is deleted, Kubernetes deletes the volumes with the
            // StatefulSet if pvcRetention says so: no finalizer, so deleting
            // a cluster never depends on the operator still running.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        match spec.pvc_retention {
                            PvcRetention::Retain => "Retain",
                            PvcRetention::Delete => "Delete",
                        }
                        .into(),
                    ),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!spec.pod.annotations.is_empty())
                        .then(|| spec.pod.annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(cluster, &id)),
            },
            volume_claim_templates: Some(vec![data_claim(cluster)]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// Every pod the operator makes runs as the image's unprivileged user,
/// under the runtime's default seccomp profile; `fs_group` makes a fresh
/// volume writable by that user.
pub(crate) fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Every container the operator makes: a read-only root filesystem, no
/// privilege escalation, no capabilities.
pub(crate) fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn pod_spec(cluster: &RaftCluster, id: &ClusterIdentity) -> PodSpec {
    let spec = &cluster.spec;
    let grace = MIN_GRACE_SECONDS.max(10 * i64::from(spec.raft.election_timeout_ms) / 1000);
    let main = container(cluster, id);
    // With spec.restore: the init container that seeds the bootstrapping
    // member from a backup, and the backup's claim.
    let restore = crate::backup::restore::init_container(cluster, &main).map(|c| vec![c]);
    PodSpec {
        containers: vec![main],
        init_containers: restore,
        termination_grace_period_seconds: Some(grace),
        security_context: Some(pod_security_context()),
        node_selector: (!spec.pod.node_selector.is_empty()).then(|| spec.pod.node_selector.clone()),
        tolerations: (!spec.pod.tolerations.is_empty()).then(|| spec.pod.tolerations.clone()),
        affinity: spec.pod.affinity.clone(),
        topology_spread_constraints: (!spec.pod.topology_spread_constraints.is_empty())
            .then(|| spec.pod.topology_spread_constraints.clone()),
        priority_class_name: spec.pod.priority_class_name.clone(),
        // A read-only root filesystem still needs somewhere for scratch files.
        volumes: Some(
            std::iter::once(Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            })
            .chain(crate::backup::restore::volume(cluster))
            .chain(
                crate::tls::pod::build(cluster, id)
                    .into_iter()
                    .flat_map(|t| t.volumes),
            )
            .collect(),
        ),
        ..PodSpec::default()
    }
}

fn container(cluster: &RaftCluster, id: &ClusterIdentity) -> Container {
    let spec = &cluster.spec;
    let tls = crate::tls::pod::build(cluster, id);
    let mut ports = vec![
        container_port("client", CLIENT_PORT),
        container_port("peer", PEER_PORT),
        container_port("http", HTTP_PORT),
    ];
    // With TLS the HTTP port wants a client certificate, which a kubelet's
    // probe does not have: probes go to the plain metrics port.
    let probe_port = if tls.is_some() {
        ports.push(container_port("metrics", METRICS_PORT));
        "metrics"
    } else {
        "http"
    };
    Container {
        name: "raftkv".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        args: Some(vec!["serve".into()]),
        env: Some(env(cluster, id)),
        ports: Some(ports),
        readiness_probe: Some(http_probe("/readyz", probe_port, 5, 3)),
        liveness_probe: Some(Probe {
            // Generous: a node replaying its log after restart is alive.
            initial_delay_seconds: Some(10),
            ..http_probe("/healthz", probe_port, 10, 6)
        }),
        resources: spec.resources.clone(),
        // A node that refuses to start (e.g. a volume of another cluster)
        // says why on stderr; this puts the tail of that log into the pod
        // status, where the operator reads it and reports it.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(container_security_context()),
        volume_mounts: Some(
            vec![
                VolumeMount {
                    name: DATA_VOLUME.into(),
                    mount_path: DATA_DIR.into(),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(tls.into_iter().flat_map(|t| t.mounts))
            .collect(),
        ),
        ..Container::default()
    }
}

/// The token all pods of `cluster` share; raftkv hashes it into the
/// cluster id, and a node refuses a data directory written for another id.
///
/// It is `<namespace>/<name>`: stable across deleting and re-creating the
/// RaftCluster, so that a cluster re-created under the same name adopts the
/// volumes `pvcRetention: Retain` kept (as a StatefulSet re-created under
/// the same name gets its pods' volumes back). Once used, the token is kept
/// in `status.clusterToken` and never changes. Clusters bootstrapped by
/// earlier operator versions, which added the RaftCluster's UID, keep that
/// token: their volumes were written for it.
pub fn cluster_token(cluster: &RaftCluster) -> String {
    let id = ClusterIdentity::of(cluster);
    match cluster.status.as_ref() {
        Some(s) if s.cluster_token.is_some() => s.cluster_token.clone().unwrap_or_default(),
        Some(s) if s.bootstrapped => {
            let uid = cluster.metadata.uid.as_deref().unwrap_or_default();
            format!("{}/{}/{uid}", id.namespace, id.name)
        }
        _ => format!("{}/{}", id.namespace, id.name),
    }
}

/// Environment that configures `raftkv serve`. Every pod shares one
/// template, so per-pod values come from the pod's own name: the node takes
/// its id from its ordinal (`RAFTKV_ID_FROM_ORDINAL`), and the addresses use
/// Kubernetes' `$(VAR)` expansion of `RAFTKV_NAME`. How a node with an
/// empty data directory starts comes from the cluster's start ConfigMap
/// (`start_config`); a node that has data resumes from it either way.
pub(crate) fn env(cluster: &RaftCluster, id: &ClusterIdentity) -> Vec<EnvVar> {
    let raft = &cluster.spec.raft;
    // The same URLs the operator registers for a pod (`ClusterIdentity`),
    // with the pod's name filled in by Kubernetes.
    let this_pod = "$(RAFTKV_NAME)";
    vec![
        field_env("RAFTKV_NAME", "metadata.name"),
        plain("RAFTKV_ID_FROM_ORDINAL", "true"),
        plain("RAFTKV_DATA_DIR", DATA_DIR),
        plain("RAFTKV_LISTEN_CLIENT", &format!("0.0.0.0:{CLIENT_PORT}")),
        plain("RAFTKV_LISTEN_PEER", &format!("0.0.0.0:{PEER_PORT}")),
        plain("RAFTKV_LISTEN_HTTP", &format!("0.0.0.0:{HTTP_PORT}")),
        plain("RAFTKV_ADVERTISE_PEER", &id.peer_url(this_pod)),
        plain("RAFTKV_ADVERTISE_CLIENT", &id.client_url(this_pod)),
        // Every pod, bootstrapping or joining, derives the same cluster id
        // from this token (see `cluster_token`).
        plain("RAFTKV_CLUSTER_TOKEN", &cluster_token(cluster)),
        // Exactly one of these two keys is set at a time.
        config_env("RAFTKV_INITIAL_CLUSTER", id, INITIAL_CLUSTER_KEY),
        config_env("RAFTKV_JOIN", id, JOIN_KEY),
        plain(
            "RAFTKV_ELECTION_TIMEOUT_MS",
            &raft.election_timeout_ms.to_string(),
        ),
        plain(
            "RAFTKV_HEARTBEAT_INTERVAL_MS",
            &raft.heartbeat_interval_ms.to_string(),
        ),
        plain(
            "RAFTKV_SNAPSHOT_EVERY",
            &raft.snapshot_threshold.to_string(),
        ),
        plain(
            "RAFTKV_REQUEST_TIMEOUT_MS",
            &raft.request_timeout_ms.to_string(),
        ),
        // Members authenticate each other's peer streams with the
        // cluster's secret (`peer_secret`); `raftkv serve` refuses to start
        // with an unauthenticated peer port.
        secret_env("RAFTKV_PEER_SECRET", &id.peer_secret(), peer_secret::KEY),
    ]
    .into_iter()
    // With spec.tls: the certificate files and the plain metrics port.
    .chain(
        crate::tls::pod::build(cluster, id)
            .into_iter()
            .flat_map(|t| t.env),
    )
    .collect()
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A variable set from a key of the start ConfigMap, absent when the key is.
fn config_env(name: &str, id: &ClusterIdentity, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: id.start_config(),
                key: key.into(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, port: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn data_claim(cluster: &RaftCluster) -> PersistentVolumeClaim {
    let storage = &cluster.spec.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    fn env_of(sts: &StatefulSet) -> BTreeMap<String, String> {
        let c = &sts.spec.template.spec.as_ref().unwrap().containers[0];
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn statefulset_uses_the_requested_replicas_not_the_spec() {
        let sts = build(&cluster(), 1);
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("kv-peers"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    }

    #[test]
    fn deleting_the_cluster_deletes_volumes_only_with_pvc_retention_delete() {
        let policy = |retention| {
            let mut c = cluster();
            c.spec.pvc_retention = retention;
            build(&c, 3)
                .spec
                .persistent_volume_claim_retention_policy
                .unwrap()
        };
        let delete = policy(PvcRetention::Delete);
        assert_eq!(delete.when_deleted.as_deref(), Some("Delete"));
        // Scale-down volumes go only after the member left the configuration.
        assert_eq!(delete.when_scaled.as_deref(), Some("Retain"));
        let retain = policy(PvcRetention::Retain);
        assert_eq!(retain.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(retain.when_scaled.as_deref(), Some("Retain"));
    }

    #[test]
    fn statefulset_claims_a_volume_per_member_for_the_data_dir() {
        let spec = build(&cluster(), 3).spec;
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let cs = claim.spec.as_ref().unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("data"));
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
            Quantity("2Gi".into())
        );
        let c = &spec.template.spec.unwrap().containers[0];
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "data")
            .unwrap();
        assert_eq!(mount.mount_path, DATA_DIR);
    }

    #[test]
    fn statefulset_probes_readyz_and_healthz_on_the_http_port() {
        let pod = build(&cluster(), 3).spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        let http = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .unwrap();
        assert_eq!(http.container_port, 8080);
    }

    #[test]
    fn statefulset_runs_locked_down() {
        let pod = build(&cluster(), 3).spec.template.spec.unwrap();
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert!(pod.termination_grace_period_seconds.unwrap() >= 60);
    }

    #[test]
    fn grace_period_grows_with_a_long_election_timeout() {
        let mut c = cluster();
        c.spec.raft.election_timeout_ms = 20_000;
        let pod = build(&c, 3).spec.template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(200));
    }

    #[test]
    fn statefulset_env_configures_raftkv_serve() {
        let mut c = cluster();
        c.spec.raft.election_timeout_ms = 1500;
        let env = env_of(&build(&c, 3));
        assert_eq!(env["RAFTKV_ID_FROM_ORDINAL"], "true");
        assert_eq!(env["RAFTKV_DATA_DIR"], "/var/lib/raftkv");
        assert_eq!(env["RAFTKV_LISTEN_HTTP"], "0.0.0.0:8080");
        assert_eq!(
            env["RAFTKV_ADVERTISE_PEER"],
            "http://$(RAFTKV_NAME).kv-peers.prod.svc:2380"
        );
        assert_eq!(
            env["RAFTKV_ADVERTISE_CLIENT"],
            "http://$(RAFTKV_NAME).kv-peers.prod.svc:2379"
        );
        assert!(
            !env.contains_key("RAFTKV_PEER_AUTH"),
            "the peer port is never left unauthenticated"
        );
        // A joining node can only start if it knows the cluster id.
        assert_eq!(env["RAFTKV_CLUSTER_TOKEN"], "prod/kv");
        assert_eq!(env["RAFTKV_ELECTION_TIMEOUT_MS"], "1500");
        assert_eq!(env["RAFTKV_SNAPSHOT_EVERY"], "10000");
        // RAFTKV_NAME comes from the downward API and must precede its uses.
        let sts = build(&c, 3);
        let vars = sts.spec.template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        assert_eq!(vars[0].name, "RAFTKV_NAME");
        assert_eq!(
            vars[0]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
    }

    #[test]
    fn members_read_the_peer_secret_from_the_clusters_secret() {
        let sts = build(&cluster(), 3);
        let vars = sts.spec.template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let secret = vars
            .iter()
            .find(|v| v.name == "RAFTKV_PEER_SECRET")
            .expect("the peer secret is set");
        assert_eq!(secret.value, None, "never inlined into the pod spec");
        let from = secret
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("kv-peer", "secret")
        );
        assert_eq!(from.optional, Some(false), "no secret, no start");
    }

    #[test]
    fn a_cluster_recreated_under_the_same_name_keeps_its_token() {
        // Deleted and applied again: another UID, the same cluster id, so
        // the retained volumes are accepted.
        let first = cluster();
        let mut again = cluster();
        again.metadata.uid = Some("uid-2".into());
        assert_eq!(cluster_token(&first), cluster_token(&again));
        assert_eq!(cluster_token(&again), "prod/kv");
        // Another namespace or name is another cluster.
        let mut other = cluster();
        other.metadata.namespace = Some("staging".into());
        assert_ne!(cluster_token(&first), cluster_token(&other));
    }

    #[test]
    fn a_recorded_or_legacy_token_never_changes() {
        let mut c = cluster();
        c.status = Some(crate::crd::RaftClusterStatus {
            cluster_token: Some("prod/kv/uid-0".into()),
            bootstrapped: true,
            ..Default::default()
        });
        assert_eq!(cluster_token(&c), "prod/kv/uid-0");
        // Bootstrapped by an operator that used the UID and did not record it.
        c.status = Some(crate::crd::RaftClusterStatus {
            bootstrapped: true,
            ..Default::default()
        });
        assert_eq!(cluster_token(&c), "prod/kv/uid-1");
    }

    #[test]
    fn a_refusing_node_leaves_its_reason_in_the_pod_status() {
        let pod = build(&cluster(), 3).spec.template.spec.unwrap();
        assert_eq!(
            pod.containers[0].termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
    }

    /// The defect this guards against: the template switched from
    /// `RAFTKV_INITIAL_CLUSTER` to `RAFTKV_JOIN` once the cluster had a
    /// leader, a new revision, and pod 0 was replaced right after it
    /// bootstrapped.
    #[test]
    fn the_template_does_not_change_when_the_cluster_bootstraps() {
        let fresh = cluster();
        let mut bootstrapped = cluster();
        bootstrapped.status = Some(crate::crd::RaftClusterStatus {
            bootstrapped: true,
            cluster_token: Some("prod/kv".into()),
            leader: Some("kv-0".into()),
            ..Default::default()
        });
        assert_eq!(
            build(&fresh, 1).spec.template,
            build(&bootstrapped, 3).spec.template
        );
    }

    #[test]
    fn the_start_mode_comes_from_the_start_config_map() {
        let sts = build(&cluster(), 1);
        let vars = sts.spec.template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        for (name, key) in [
            ("RAFTKV_INITIAL_CLUSTER", INITIAL_CLUSTER_KEY),
            ("RAFTKV_JOIN", JOIN_KEY),
        ] {
            let var = vars.iter().find(|v| v.name == name).unwrap();
            let r = var
                .value_from
                .as_ref()
                .unwrap()
                .config_map_key_ref
                .as_ref()
                .unwrap();
            assert_eq!((r.name.as_str(), r.key.as_str()), ("kv-start", key));
            assert_eq!(r.optional, Some(true), "only one key exists at a time");
        }
    }

    #[test]
    fn only_the_operator_replaces_pods() {
        let strategy = build(&cluster(), 3).spec.update_strategy.unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("OnDelete"));
    }

    /// Contract with the node: every variable the StatefulSet sets is one
    /// `raftkv serve` reads (an `env = "..."` of its clap arguments). A
    /// renamed or misspelled variable would otherwise be silently ignored
    /// and the node would run on a default.
    #[test]
    fn every_env_var_the_statefulset_sets_is_read_by_raftkv_serve() {
        let source =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src/cli/serve.rs");
        let serve = std::fs::read_to_string(&source).unwrap();
        let read: std::collections::BTreeSet<&str> = serve
            .split("env = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(read.contains("RAFTKV_DATA_DIR"), "parsed {read:?}");
        let mut c = cluster();
        // With TLS on, so that the TLS variables are checked too.
        c.spec.tls.mode = crate::crd::TlsMode::Auto;
        let set = env(&c, &ClusterIdentity::of(&c));
        assert!(set.iter().any(|v| v.name == "RAFTKV_PEER_CERT_FILE"));
        let unknown: Vec<&str> = set
            .iter()
            .map(|v| v.name.as_str())
            .filter(|n| !read.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "the StatefulSet sets {unknown:?}, which `raftkv serve` does not read"
        );
    }

    #[test]
    fn with_tls_urls_are_https_and_probes_use_the_plain_metrics_port() {
        let mut c = cluster();
        c.spec.tls.mode = crate::crd::TlsMode::Auto;
        let sts = build(&c, 3);
        let env = env_of(&sts);
        assert_eq!(
            env["RAFTKV_ADVERTISE_PEER"],
            "https://$(RAFTKV_NAME).kv-peers.prod.svc:2380"
        );
        assert_eq!(
            env["RAFTKV_ADVERTISE_CLIENT"],
            "https://$(RAFTKV_NAME).kv-peers.prod.svc:2379"
        );
        // The file variables use RAFTKV_NAME, which must come first.
        let pod = sts.spec.template.spec.unwrap();
        let c0 = &pod.containers[0];
        let names: Vec<&str> = c0
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("RAFTKV_NAME") < pos("RAFTKV_CERT_FILE"));
        let probe = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().port.clone();
        assert_eq!(
            probe(&c0.readiness_probe),
            IntOrString::String("metrics".into())
        );
        assert_eq!(
            probe(&c0.liveness_probe),
            IntOrString::String("metrics".into())
        );
        assert!(
            c0.ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.container_port == 9090)
        );
        assert!(
            c0.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/etc/raftkv/tls")
        );
        assert!(
            pod.volumes.unwrap().iter().any(|v| v
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref())
                == Some("kv-tls"))
        );
        // TLS off: as before, no metrics port.
        let plain = build(&cluster(), 3).spec.template.spec.unwrap();
        assert!(
            !plain.containers[0]
                .ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.container_port == 9090)
        );
    }

    #[test]
    fn user_pod_labels_never_override_the_selector() {
        let mut c = cluster();
        c.spec
            .pod
            .labels
            .insert("app.kubernetes.io/instance".into(), "hijack".into());
        c.spec.pod.labels.insert("team".into(), "storage".into());
        c.spec.pod.priority_class_name = Some("high".into());
        let spec = build(&c, 3).spec;
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "kv");
        assert_eq!(labels["team"], "storage");
        assert_eq!(
            spec.template.spec.unwrap().priority_class_name.as_deref(),
            Some("high")
        );
    }
}
