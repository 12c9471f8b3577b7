//! The cert-manager `Certificate`s of `tls.mode: certManager`, built as
//! dynamic objects: the operator needs only the shape of the object, not
//! cert-manager's CRDs in its types.
//!
//! Three certificates, from the Issuer the user names:
//! `<name>-server` (client and HTTP ports) into Secret `<name>-server-tls`,
//! `<name>-peer` (peer port) into `<name>-peer-tls`, and `<name>-operator`
//! (the operator's client certificate) into `<name>-operator-tls`. One
//! certificate serves every member, so it names them all with a wildcard
//! (`*.<name>-peers.<namespace>.svc`): a member's certificate then also
//! matches the peer URLs of the other members, which makes the peer
//! identity check weaker than with `auto`'s one certificate per member
//! (a member could claim another member's id; a non-member still cannot).
//! cert-manager renews each certificate when a third of its life is left
//! and rewrites the Secret; the members reload it from disk.

use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

use super::auto::OPERATOR_CN;
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
    vec![
        member(format!("{}-server", id.name), id.server_tls_secret()),
        member(format!("{}-peer", id.name), id.peer_tls_secret()),
        certificate(
            cluster,
            &id,
            format!("{}-operator", id.name),
            json!({
                "secretName": id.operator_tls_secret(),
                "commonName": OPERATOR_CN,
                "usages": ["digital signature", "key encipherment", "client auth"],
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "issuerRef": issuer_ref,
            }),
        ),
    ]
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
}
