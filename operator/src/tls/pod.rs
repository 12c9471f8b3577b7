//! What TLS adds to a member's pod: the certificate Secrets as read-only
//! volumes and the `raftkv serve` TLS flags (as environment variables)
//! pointing into them.
//!
//! With TLS the HTTP port needs a client certificate (with
//! `clientCertAuth`), which neither a kubelet's probe nor a plain
//! Prometheus scrape presents; so the pod also serves `/metrics`,
//! `/healthz` and `/readyz` in plain HTTP on [`METRICS_PORT`]
//! (`--listen-metrics`, as etcd's `--listen-metrics-urls`), and the probes
//! and the ServiceMonitor use that port. It answers nothing else: no key,
//! no value, no admin call.

use k8s_openapi::api::core::v1::{EnvVar, SecretVolumeSource, Volume, VolumeMount};

use super::auto::{CA_CRT, TLS_CRT, TLS_KEY};
use crate::crd::{RaftCluster, TlsMode};
use crate::identity::{ClusterIdentity, METRICS_PORT};

/// Where the certificate volumes are mounted.
pub const TLS_DIR: &str = "/etc/raftkv/tls";

/// Volumes, mounts and variables of a member's TLS.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodTls {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub env: Vec<EnvVar>,
}

/// The files of one listener's certificate.
struct Files {
    cert: String,
    key: String,
    ca: String,
}

/// TLS of `cluster`'s pods; `None` with TLS off.
pub fn build(cluster: &RaftCluster, id: &ClusterIdentity) -> Option<PodTls> {
    let tls = &cluster.spec.tls;
    let (volumes, server, peer) = match tls.mode {
        TlsMode::Disabled => return None,
        TlsMode::Auto => {
            // One Secret for every member; each pod takes its own files.
            let pod = "$(RAFTKV_NAME)";
            let files = || Files {
                cert: format!("{TLS_DIR}/{pod}.crt"),
                key: format!("{TLS_DIR}/{pod}.key"),
                ca: format!("{TLS_DIR}/{CA_CRT}"),
            };
            (
                vec![(
                    "tls".to_string(),
                    id.member_tls_secret(),
                    TLS_DIR.to_string(),
                )],
                files(),
                files(),
            )
        }
        TlsMode::CertManager | TlsMode::SecretRef => {
            let (server, peer) = match (&tls.mode, &tls.secret_ref) {
                (TlsMode::SecretRef, Some(r)) => (
                    r.server_secret_name.clone(),
                    r.peer_secret_name
                        .clone()
                        .unwrap_or_else(|| r.server_secret_name.clone()),
                ),
                _ => (id.server_tls_secret(), id.peer_tls_secret()),
            };
            let files = |dir: &str| Files {
                cert: format!("{dir}/{TLS_CRT}"),
                key: format!("{dir}/{TLS_KEY}"),
                ca: format!("{dir}/{CA_CRT}"),
            };
            let (server_dir, peer_dir) = (format!("{TLS_DIR}/server"), format!("{TLS_DIR}/peer"));
            (
                vec![
                    ("tls-server".to_string(), server, server_dir.clone()),
                    ("tls-peer".to_string(), peer, peer_dir.clone()),
                ],
                files(&server_dir),
                files(&peer_dir),
            )
        }
    };
    let mut env = vec![
        plain("RAFTKV_CERT_FILE", &server.cert),
        plain("RAFTKV_KEY_FILE", &server.key),
        plain("RAFTKV_TRUSTED_CA_FILE", &server.ca),
        plain("RAFTKV_PEER_CERT_FILE", &peer.cert),
        plain("RAFTKV_PEER_KEY_FILE", &peer.key),
        plain("RAFTKV_PEER_TRUSTED_CA_FILE", &peer.ca),
        // A peer must hold a certificate of the CA naming the member it
        // claims to be (on top of the shared peer secret).
        plain("RAFTKV_PEER_CLIENT_CERT_AUTH", "true"),
        plain("RAFTKV_LISTEN_METRICS", &format!("0.0.0.0:{METRICS_PORT}")),
    ];
    if tls.client_cert_auth {
        env.push(plain("RAFTKV_CLIENT_CERT_AUTH", "true"));
    }
    Some(PodTls {
        volumes: volumes
            .iter()
            .map(|(name, secret, _)| Volume {
                name: name.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    // Owner and group (the pod's fsGroup) only: the node
                    // runs as that user.
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            })
            .collect(),
        mounts: volumes
            .into_iter()
            .map(|(name, _, path)| VolumeMount {
                name,
                mount_path: path,
                read_only: Some(true),
                ..VolumeMount::default()
            })
            .collect(),
        env,
    })
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CertManagerTls, IssuerRef, SecretRefTls};
    use crate::resources::test_cluster::cluster;
    use std::collections::BTreeMap;

    fn env_map(p: &PodTls) -> BTreeMap<String, String> {
        p.env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn tls_off_adds_nothing() {
        let c = cluster();
        assert_eq!(build(&c, &ClusterIdentity::of(&c)), None);
    }

    #[test]
    fn auto_mounts_one_secret_and_each_pod_picks_its_own_files() {
        let mut c = cluster();
        c.spec.tls.mode = TlsMode::Auto;
        c.spec.tls.client_cert_auth = true;
        let p = build(&c, &ClusterIdentity::of(&c)).unwrap();
        assert_eq!(p.volumes.len(), 1);
        let secret = p.volumes[0].secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("kv-tls"));
        assert_eq!(p.mounts[0].mount_path, "/etc/raftkv/tls");
        assert_eq!(p.mounts[0].read_only, Some(true));
        let env = env_map(&p);
        assert_eq!(
            env["RAFTKV_CERT_FILE"],
            "/etc/raftkv/tls/$(RAFTKV_NAME).crt"
        );
        assert_eq!(env["RAFTKV_KEY_FILE"], "/etc/raftkv/tls/$(RAFTKV_NAME).key");
        assert_eq!(env["RAFTKV_PEER_CERT_FILE"], env["RAFTKV_CERT_FILE"]);
        assert_eq!(env["RAFTKV_TRUSTED_CA_FILE"], "/etc/raftkv/tls/ca.crt");
        assert_eq!(env["RAFTKV_PEER_CLIENT_CERT_AUTH"], "true");
        assert_eq!(env["RAFTKV_CLIENT_CERT_AUTH"], "true");
        assert_eq!(env["RAFTKV_LISTEN_METRICS"], "0.0.0.0:9090");
        c.spec.tls.client_cert_auth = false;
        let p = build(&c, &ClusterIdentity::of(&c)).unwrap();
        assert!(!env_map(&p).contains_key("RAFTKV_CLIENT_CERT_AUTH"));
    }

    #[test]
    fn cert_manager_and_secret_ref_mount_a_server_and_a_peer_secret() {
        let mut c = cluster();
        c.spec.tls.mode = TlsMode::CertManager;
        c.spec.tls.cert_manager = Some(CertManagerTls {
            issuer_ref: IssuerRef {
                name: "ca".into(),
                kind: "Issuer".into(),
                group: "cert-manager.io".into(),
            },
        });
        let p = build(&c, &ClusterIdentity::of(&c)).unwrap();
        let secrets: Vec<_> = p
            .volumes
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(secrets, ["kv-server-tls", "kv-peer-tls"]);
        let env = env_map(&p);
        assert_eq!(env["RAFTKV_CERT_FILE"], "/etc/raftkv/tls/server/tls.crt");
        assert_eq!(env["RAFTKV_PEER_KEY_FILE"], "/etc/raftkv/tls/peer/tls.key");
        assert_eq!(
            env["RAFTKV_PEER_TRUSTED_CA_FILE"],
            "/etc/raftkv/tls/peer/ca.crt"
        );

        c.spec.tls.mode = TlsMode::SecretRef;
        c.spec.tls.secret_ref = Some(SecretRefTls {
            server_secret_name: "mine".into(),
            peer_secret_name: None,
            operator_secret_name: Some("op".into()),
        });
        let p = build(&c, &ClusterIdentity::of(&c)).unwrap();
        let secrets: Vec<_> = p
            .volumes
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(
            secrets,
            ["mine", "mine"],
            "the peer port defaults to the server's"
        );
    }
}
