//! The Secrets of `tls.mode: auto`, as a pure function of what exists and
//! the time: which certificates to keep, which to issue or renew.
//!
//! - `<name>-ca` (`kubernetes.io/tls`): the CA, made once.
//! - `<name>-tls`: `ca.crt` and, for every member pod, `<pod>.crt` and
//!   `<pod>.key`. One Secret for all members, mounted into every pod; a
//!   pod picks its own files by its name (`$(RAFTKV_NAME)` in the flag
//!   values), so the pod template is the same for every member and does
//!   not change when the cluster grows. A member's certificate names its
//!   own DNS names only: the peer identity check (a peer's certificate must
//!   name the host of the peer URL it claims) then tells members apart.
//! - `<name>-operator-tls` (`kubernetes.io/tls`, with `ca.crt`): the client
//!   certificate the operator presents to the members.
//! - `<name>-client-tls` (the same layout): the administrator's client
//!   certificate (common name `root`), to give to etcdctl.
//! - `<name>-client-<user>-tls` (the same layout), for every user named in
//!   `spec.tls.clientUsers`: a certificate whose common name is that user,
//!   so that with etcd's auth enabled its holder has that user's
//!   permissions and no more.
//!
//! The operator's own certificate has the common name `root` as well: it
//! adds and removes members, which etcd's auth reserves for root, and it
//! must go on doing so after someone enables auth. Whoever can read the
//! operator's Secret can read the CA's key beside it, so the name gives
//! nothing away that the namespace did not already.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use time::OffsetDateTime;

use super::authority::{Authority, IssuedPem, PkiError, Usage, needs_renewal};
use crate::crd::RaftCluster;
use crate::identity::{ClusterIdentity, owned_meta};

/// Keys of a `kubernetes.io/tls` Secret (and cert-manager's `ca.crt`).
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
/// Common name of the operator's client certificate: root, whose
/// permissions membership changes need once auth is enabled.
pub const OPERATOR_CN: &str = "root";
/// Common name of the administrator's client certificate.
pub const CLIENT_CN: &str = "root";
/// Label on a user's certificate Secret (and cert-manager Certificate):
/// the user it names.
pub const CLIENT_USER_LABEL: &str = "raftkv.io/client-user";

/// A member's certificate file in `<name>-tls`.
pub fn member_cert_key(pod: &str) -> String {
    format!("{pod}.crt")
}
/// A member's key file in `<name>-tls`.
pub fn member_key_key(pod: &str) -> String {
    format!("{pod}.key")
}

/// Every name a member is reached by: its own DNS names through the
/// headless Service (the host of its peer URL first), the client Service
/// (clients connect through it and verify it), and loopback for a check
/// run inside the pod.
pub fn member_hosts(id: &ClusterIdentity, pod: &str) -> Vec<String> {
    let headless = id.headless_service();
    let ns = &id.namespace;
    let client = id.client_service();
    vec![
        id.pod_host(pod),
        format!("{}.cluster.local", id.pod_host(pod)),
        format!("{pod}.{headless}.{ns}"),
        format!("{pod}.{headless}"),
        client.clone(),
        format!("{client}.{ns}"),
        format!("{client}.{ns}.svc"),
        format!("{client}.{ns}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

/// The CA Secret for a new CA.
pub fn ca_secret(cluster: &RaftCluster, ca: &Authority) -> Secret {
    let id = ClusterIdentity::of(cluster);
    tls_secret(
        cluster,
        id.ca_secret(),
        [
            (TLS_CRT, ca.cert_pem().to_string()),
            (TLS_KEY, ca.key_pem().to_string()),
        ],
    )
}

/// The CA kept in `secret`.
pub fn load_ca(name: &str, secret: &Secret) -> Result<Authority, PkiError> {
    let text = |key: &str| {
        data_text(secret, key).ok_or_else(|| PkiError::BadCa {
            secret: name.to_string(),
            detail: format!("no {key}"),
        })
    };
    Authority::load(name, &text(TLS_CRT)?, &text(TLS_KEY)?)
}

/// What the Secrets of a cluster should hold now.
#[derive(Debug)]
pub struct Desired {
    /// `<name>-tls`, if it must be written (absent or changed).
    pub members: Option<Secret>,
    /// `<name>-operator-tls`, if it must be written.
    pub operator: Option<Secret>,
    /// `<name>-client-tls`, if it must be written.
    pub client: Option<Secret>,
    /// The operator's certificate and key as they are after the writes.
    pub operator_identity: IssuedPem,
}

/// The Secrets for members `0..members` given the existing ones: every
/// certificate that is missing, from another CA, or due for renewal is
/// issued anew; the others are kept as they are.
pub fn desired(
    cluster: &RaftCluster,
    ca: &Authority,
    members: u32,
    existing_members: Option<&Secret>,
    existing_operator: Option<&Secret>,
    existing_client: Option<&Secret>,
    now: OffsetDateTime,
) -> Result<Desired, PkiError> {
    let id = ClusterIdentity::of(cluster);
    // Certificates of another CA (a CA Secret deleted and made anew) are
    // all replaced.
    let same_ca = |s: Option<&Secret>| -> Option<Secret> {
        s.filter(|s| data_text(s, CA_CRT).as_deref() == Some(ca.cert_pem()))
            .cloned()
    };
    let old_members = same_ca(existing_members);
    let mut data: BTreeMap<String, String> =
        BTreeMap::from([(CA_CRT.to_string(), ca.cert_pem().to_string())]);
    for ordinal in 0..members {
        let pod = id.pod(ordinal);
        let (crt, key) = (member_cert_key(&pod), member_key_key(&pod));
        let kept = old_members.as_ref().and_then(|s| {
            let cert = data_text(s, &crt)?;
            let k = data_text(s, &key)?;
            (!needs_renewal(cert.as_bytes(), now)).then_some(IssuedPem { cert, key: k })
        });
        let pem = match kept {
            Some(pem) => pem,
            None => ca.issue(&pod, &member_hosts(&id, &pod), Usage::Member, now)?,
        };
        data.insert(crt, pem.cert);
        data.insert(key, pem.key);
    }
    let members_secret = opaque_secret(cluster, id.member_tls_secret(), data);
    let members = changed(existing_members, members_secret);

    let (operator, operator_identity) = client_secret(
        cluster,
        ca,
        id.operator_tls_secret(),
        OPERATOR_CN,
        same_ca(existing_operator).as_ref(),
        existing_operator,
        now,
    )?;
    let (client, _) = client_secret(
        cluster,
        ca,
        id.client_tls_secret(),
        CLIENT_CN,
        same_ca(existing_client).as_ref(),
        existing_client,
        now,
    )?;
    Ok(Desired {
        members,
        operator,
        client,
        operator_identity,
    })
}

/// The certificate Secret of every user in `spec.tls.clientUsers` that
/// must be written (missing, of another CA, or due for renewal), given the
/// existing ones by user.
pub fn user_secrets(
    cluster: &RaftCluster,
    ca: &Authority,
    existing: &BTreeMap<String, Secret>,
    now: OffsetDateTime,
) -> Result<Vec<Secret>, PkiError> {
    let id = ClusterIdentity::of(cluster);
    let mut write = Vec::new();
    for user in client_users(cluster) {
        let old = existing.get(user);
        let good_ca = old.filter(|s| data_text(s, CA_CRT).as_deref() == Some(ca.cert_pem()));
        let (secret, _) = client_secret(
            cluster,
            ca,
            id.user_tls_secret(user),
            user,
            good_ca,
            old,
            now,
        )?;
        if let Some(mut secret) = secret {
            secret
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(CLIENT_USER_LABEL.to_string(), user.clone());
            write.push(secret);
        }
    }
    Ok(write)
}

/// The users of `spec.tls.clientUsers`, each once, in order.
pub fn client_users(cluster: &RaftCluster) -> impl Iterator<Item = &String> {
    let mut seen = std::collections::BTreeSet::new();
    cluster
        .spec
        .tls
        .client_users
        .iter()
        .filter(move |u| seen.insert(u.as_str()))
}

/// Users whose certificates the operator issued before (the status's
/// record) and that are no longer in the spec: their Secrets go.
pub fn dropped_users(cluster: &RaftCluster) -> Vec<String> {
    let wanted: std::collections::BTreeSet<&String> = client_users(cluster).collect();
    cluster
        .status
        .as_ref()
        .map(|s| {
            s.client_users
                .iter()
                .filter(|u| !wanted.contains(u))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A client certificate Secret: the existing one if still good, else a
/// new certificate. Returns the Secret to write (if any) and the pair.
fn client_secret(
    cluster: &RaftCluster,
    ca: &Authority,
    name: String,
    common_name: &str,
    good_ca: Option<&Secret>,
    existing: Option<&Secret>,
    now: OffsetDateTime,
) -> Result<(Option<Secret>, IssuedPem), PkiError> {
    let kept = good_ca.and_then(|s| {
        let cert = data_text(s, TLS_CRT)?;
        let key = data_text(s, TLS_KEY)?;
        (!needs_renewal(cert.as_bytes(), now)).then_some(IssuedPem { cert, key })
    });
    let pem = match kept {
        Some(pem) => pem,
        None => ca.issue(common_name, &[], Usage::Client, now)?,
    };
    let secret = tls_secret(
        cluster,
        name,
        [
            (TLS_CRT, pem.cert.clone()),
            (TLS_KEY, pem.key.clone()),
            (CA_CRT, ca.cert_pem().to_string()),
        ],
    );
    Ok((changed(existing, secret), pem))
}

/// `desired` unless `existing` already holds the same data.
fn changed(existing: Option<&Secret>, desired: Secret) -> Option<Secret> {
    let same = existing.is_some_and(|e| e.data == desired.data && e.type_ == desired.type_);
    (!same).then_some(desired)
}

fn tls_secret<const N: usize>(
    cluster: &RaftCluster,
    name: String,
    data: [(&str, String); N],
) -> Secret {
    Secret {
        type_: Some("kubernetes.io/tls".into()),
        ..opaque_secret(
            cluster,
            name,
            data.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        )
    }
}

fn opaque_secret(cluster: &RaftCluster, name: String, data: BTreeMap<String, String>) -> Secret {
    let id = ClusterIdentity::of(cluster);
    Secret {
        metadata: owned_meta(cluster, &id, name),
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A key of a Secret as text (PEM is ASCII).
pub fn data_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;
    use time::Duration;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn tls_cluster() -> RaftCluster {
        let mut c = cluster();
        c.spec.tls.mode = crate::crd::TlsMode::Auto;
        c
    }

    fn keys(s: &Secret) -> Vec<String> {
        s.data.as_ref().unwrap().keys().cloned().collect()
    }

    #[test]
    fn every_member_gets_its_own_certificate_in_one_secret() {
        let c = tls_cluster();
        let ca = Authority::new("prod/kv", now()).unwrap();
        let d = desired(&c, &ca, 3, None, None, None, now()).unwrap();
        let members = d.members.expect("a new secret is written");
        assert_eq!(members.metadata.name.as_deref(), Some("kv-tls"));
        assert_eq!(
            members.metadata.owner_references.as_ref().unwrap()[0].kind,
            "RaftCluster"
        );
        assert_eq!(
            keys(&members),
            [
                "ca.crt", "kv-0.crt", "kv-0.key", "kv-1.crt", "kv-1.key", "kv-2.crt", "kv-2.key"
            ]
        );
        assert_eq!(data_text(&members, CA_CRT).unwrap(), ca.cert_pem());
        assert_ne!(
            data_text(&members, "kv-0.crt"),
            data_text(&members, "kv-1.crt")
        );
        let op = d.operator.unwrap();
        assert_eq!(op.metadata.name.as_deref(), Some("kv-operator-tls"));
        assert_eq!(op.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(keys(&op), ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(
            d.client.unwrap().metadata.name.as_deref(),
            Some("kv-client-tls")
        );
    }

    #[test]
    fn the_host_of_the_peer_url_is_the_first_name_of_a_member() {
        // The node's peer identity check matches the peer URL's host.
        let id = ClusterIdentity::of(&tls_cluster());
        let hosts = member_hosts(&id, "kv-1");
        let peer_host = id.peer_url("kv-1");
        assert!(
            peer_host.contains(&format!("//{}:", hosts[0])),
            "{peer_host}"
        );
        assert!(hosts.contains(&"kv.prod.svc".to_string()));
        assert!(hosts.contains(&"kv-1.kv-peers.prod.svc.cluster.local".to_string()));
        assert!(!hosts.iter().any(|h| h.contains("kv-0")));
    }

    #[test]
    fn good_certificates_are_kept_and_nothing_is_rewritten() {
        let c = tls_cluster();
        let ca = Authority::new("prod/kv", now()).unwrap();
        let first = desired(&c, &ca, 3, None, None, None, now()).unwrap();
        let (m, o, cl) = (
            first.members.unwrap(),
            first.operator.unwrap(),
            first.client.unwrap(),
        );
        let later = now() + Duration::days(30);
        let again = desired(&c, &ca, 3, Some(&m), Some(&o), Some(&cl), later).unwrap();
        assert!(again.members.is_none() && again.operator.is_none() && again.client.is_none());
        assert_eq!(again.operator_identity, first.operator_identity);
    }

    #[test]
    fn certificates_are_renewed_before_they_expire() {
        let c = tls_cluster();
        let ca = Authority::new("prod/kv", now()).unwrap();
        let first = desired(&c, &ca, 2, None, None, None, now()).unwrap();
        let (m, o) = (first.members.unwrap(), first.operator.unwrap());
        // Day 61 of 90: less than a third left.
        let later = now() + Duration::days(61);
        let renewed = desired(&c, &ca, 2, Some(&m), Some(&o), None, later).unwrap();
        let m2 = renewed.members.expect("renewed");
        for key in ["kv-0.crt", "kv-1.crt", "kv-0.key"] {
            assert_ne!(data_text(&m, key), data_text(&m2, key), "{key}");
            let cert = data_text(&m2, "kv-0.crt").unwrap();
            assert!(!needs_renewal(cert.as_bytes(), later));
        }
        assert!(renewed.operator.is_some());
        assert_ne!(renewed.operator_identity, first.operator_identity);
    }

    #[test]
    fn a_new_member_gets_a_certificate_and_the_others_keep_theirs() {
        let c = tls_cluster();
        let ca = Authority::new("prod/kv", now()).unwrap();
        let m = desired(&c, &ca, 3, None, None, None, now())
            .unwrap()
            .members
            .unwrap();
        let grown = desired(&c, &ca, 4, Some(&m), None, None, now())
            .unwrap()
            .members
            .unwrap();
        assert!(keys(&grown).contains(&"kv-3.crt".to_string()));
        assert_eq!(data_text(&m, "kv-0.crt"), data_text(&grown, "kv-0.crt"));
    }

    #[test]
    fn certificates_of_another_ca_are_replaced() {
        let c = tls_cluster();
        let old = Authority::new("prod/kv", now()).unwrap();
        let m = desired(&c, &old, 1, None, None, None, now())
            .unwrap()
            .members
            .unwrap();
        let new = Authority::new("prod/kv", now()).unwrap();
        let m2 = desired(&c, &new, 1, Some(&m), None, None, now())
            .unwrap()
            .members
            .unwrap();
        assert_eq!(data_text(&m2, CA_CRT).unwrap(), new.cert_pem());
        assert_ne!(data_text(&m, "kv-0.crt"), data_text(&m2, "kv-0.crt"));
    }

    #[test]
    fn the_operator_is_root_so_that_it_may_change_membership_under_auth() {
        let ca = Authority::new("prod/kv", now()).unwrap();
        let d = desired(&tls_cluster(), &ca, 1, None, None, None, now()).unwrap();
        assert_eq!(pem_common_name(&d.operator_identity.cert), "root");
    }

    fn pem_common_name(pem: &str) -> String {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        cn.as_str().unwrap().to_string()
    }

    fn common_name(secret: &Secret) -> String {
        pem_common_name(&data_text(secret, TLS_CRT).unwrap())
    }

    #[test]
    fn listed_users_get_their_own_certificates_kept_until_renewal() {
        let mut c = tls_cluster();
        c.spec.tls.client_users = vec!["alice".into(), "bob".into(), "alice".into()];
        let ca = Authority::new("prod/kv", now()).unwrap();
        let first = user_secrets(&c, &ca, &BTreeMap::new(), now()).unwrap();
        let names: Vec<_> = first
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["kv-client-alice-tls", "kv-client-bob-tls"]);
        assert_eq!(common_name(&first[0]), "alice");
        assert_eq!(common_name(&first[1]), "bob");
        assert_eq!(keys(&first[0]), ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(
            first[1].metadata.labels.as_ref().unwrap()[CLIENT_USER_LABEL],
            "bob"
        );
        let existing: BTreeMap<String, Secret> = ["alice", "bob"]
            .into_iter()
            .map(String::from)
            .zip(first.iter().cloned())
            .collect();
        let later = now() + Duration::days(30);
        assert!(user_secrets(&c, &ca, &existing, later).unwrap().is_empty());
        let much_later = now() + Duration::days(61);
        assert_eq!(
            user_secrets(&c, &ca, &existing, much_later).unwrap().len(),
            2
        );
    }

    #[test]
    fn users_taken_off_the_list_are_the_ones_dropped() {
        let mut c = tls_cluster();
        c.spec.tls.client_users = vec!["bob".into()];
        c.status = Some(crate::crd::RaftClusterStatus {
            client_users: vec!["alice".into(), "bob".into()],
            ..Default::default()
        });
        assert_eq!(dropped_users(&c), ["alice"]);
        c.spec.tls.client_users.clear();
        assert_eq!(dropped_users(&c), ["alice", "bob"]);
        c.status = None;
        assert!(dropped_users(&c).is_empty());
    }

    #[test]
    fn the_ca_secret_round_trips() {
        let c = tls_cluster();
        let ca = Authority::new("prod/kv", now()).unwrap();
        let secret = ca_secret(&c, &ca);
        assert_eq!(secret.metadata.name.as_deref(), Some("kv-ca"));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let loaded = load_ca("kv-ca", &secret).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let mut broken = secret.clone();
        broken.data.as_mut().unwrap().remove(TLS_KEY);
        assert!(load_ca("kv-ca", &broken).is_err());
    }
}
