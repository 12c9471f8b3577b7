//! The cert-manager `Certificate`s of `tls.mode: certManager`, built as
//! dynamic objects: the operator needs only the shape of the object, not
//! cert-manager's CRDs in its types.
//!
//! Three certificates, from the Issuer the user names:
//! `<name>-server` (client and HTTP ports) into Secret `<name>-server-tls`,
//! `<name>-peer` (peer port) into `<name>-peer-tls`, and `<name>-operator`
//! (the operator's client certificate, common name `root`) into
//! `<name>-operator-tls`, and one `<name>-client-<user>` into
//! `<name>-client-<user>-tls` for every user of `spec.tls.clientUsers`. One
//! certificate serves every member, so it names them all with a wildcard
//! (`*.<name>-peers.<namespace>.svc`): a member's certificate then also
//! matches the peer URLs of the other members, which makes the peer
//! identity check weaker than with `auto`'s one certificate per member
//! (a member could claim another member's id; a non-member still cannot).
//! cert-manager renews each certificate when a third of its life is left
//! and rewrites the Secret; the members reload it from disk.

use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

use super::auto::{CLIENT_USER_LABEL, OPERATOR_CN, client_users};
use crate::crd::{IssuerRef, RaftCluster};
use crate::identity::{ClusterIdentity, owned_meta};

/// `cert-manager.io/v1` `Certificate`.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// The DNS names every member answers to, as wildcards where the name
/// holds the pod's.
fn member_dns_names(id: &ClusterIdentity) -> Vec<String> {
    let (headless, ns, client) = (id.headless_service(), &id.namespace, id.client_service());
    vec![
        format!("*.{headless}.{ns}.svc"),
        format!("*.{headless}.{ns}.svc.cluster.local"),
        client.clone(),
        format!("{client}.{ns}"),
        format!("{client}.{ns}.svc"),
        format!("{client}.{ns}.svc.cluster.local"),
        "localhost".into(),
    ]
}

/// The certificates of `cluster`, issued by `issuer`.
pub fn certificates(cluster: &RaftCluster, issuer: &IssuerRef) -> Vec<DynamicObject> {
    let id = ClusterIdentity::of(cluster);
    let issuer_ref = json!({"name": issuer.name, "kind": issuer.kind, "group": issuer.group});
    let member = |name: String, secret: String| {
        certificate(
            cluster,
            &id,
            name,
            json!({
                "secretName": secret,
                "commonName": id.name,
                "dnsNames": member_dns_names(&id),
                "ipAddresses": ["127.0.0.1"],
                "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "issuerRef": issuer_ref,
            }),
        )
    };
    let client = |name: String, secret: String, common_name: &str| {
        certificate(
            cluster,
            &id,
            name,
            json!({
                "secretName": secret,
                "commonName": common_name,
                "usages": ["digital signature", "key encipherment", "client auth"],
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "issuerRef": issuer_ref,
            }),
        )
    };
    let mut certs = vec![
        member(format!("{}-server", id.name), id.server_tls_secret()),
        member(format!("{}-peer", id.name), id.peer_tls_secret()),
        client(
            format!("{}-operator", id.name),
            id.operator_tls_secret(),
            OPERATOR_CN,
        ),
    ];
    for user in client_users(cluster) {
        let mut cert = client(id.user_certificate(user), id.user_tls_secret(user), user);
        cert.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(CLIENT_USER_LABEL.to_string(), user.clone());
        certs.push(cert);
    }
    certs
}

fn certificate(
    cluster: &RaftCluster,
    id: &ClusterIdentity,
    name: String,
    spec: serde_json::Value,
) -> DynamicObject {
    let mut obj = DynamicObject::new(&name, &api_resource()).data(json!({ "spec": spec }));
    obj.metadata = owned_meta(cluster, id, name);
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    #[test]
    fn three_certificates_from_the_named_issuer_into_the_mounted_secrets() {
        let issuer = IssuerRef {
            name: "corp-ca".into(),
            kind: "ClusterIssuer".into(),
            group: "cert-manager.io".into(),
        };
        let certs = certificates(&cluster(), &issuer);
        let by_name = |n: &str| {
            certs
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(n))
                .unwrap_or_else(|| panic!("no certificate {n}"))
        };
        assert_eq!(certs.len(), 3);
        for c in &certs {
            let v = serde_json::to_value(c).unwrap();
            assert_eq!(v["apiVersion"], "cert-manager.io/v1");
            assert_eq!(v["kind"], "Certificate");
            assert_eq!(v["metadata"]["namespace"], "prod");
            assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
            assert_eq!(v["spec"]["issuerRef"]["name"], "corp-ca");
            assert_eq!(v["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        }
        let server = &by_name("kv-server").data["spec"];
        assert_eq!(server["secretName"], "kv-server-tls");
        let dns: Vec<&str> = server["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d.as_str())
            .collect();
        // Every member's peer URL host is covered by the wildcard.
        assert!(dns.contains(&"*.kv-peers.prod.svc"), "{dns:?}");
        assert!(dns.contains(&"kv.prod.svc"), "{dns:?}");
        let peer = &by_name("kv-peer").data["spec"];
        assert_eq!(peer["secretName"], "kv-peer-tls");
        assert!(
            peer["usages"].to_string().contains("server auth")
                && peer["usages"].to_string().contains("client auth"),
            "a member both serves and dials its peers"
        );
        let op = &by_name("kv-operator").data["spec"];
        assert_eq!(op["secretName"], "kv-operator-tls");
        assert_eq!(op["commonName"], OPERATOR_CN);
        assert!(!op["usages"].to_string().contains("server auth"));
    }

    #[test]
    fn every_listed_user_gets_a_client_certificate_named_for_it() {
        let issuer = IssuerRef {
            name: "corp-ca".into(),
            kind: "Issuer".into(),
            group: "cert-manager.io".into(),
        };
        let mut c = cluster();
        c.spec.tls.client_users = vec!["alice".into(), "bob".into(), "alice".into()];
        let certs = certificates(&c, &issuer);
        assert_eq!(certs.len(), 5, "one per user, listed twice or not");
        let alice = certs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some("kv-client-alice"))
            .expect("alice's certificate");
        assert_eq!(alice.data["spec"]["commonName"], "alice");
        assert_eq!(alice.data["spec"]["secretName"], "kv-client-alice-tls");
        assert_eq!(
            alice.metadata.labels.as_ref().unwrap()[CLIENT_USER_LABEL],
            "alice"
        );
        assert!(
            !alice.data["spec"]["usages"]
                .to_string()
                .contains("server auth")
        );
    }
}
