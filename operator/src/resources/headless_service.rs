//! The headless Service that gives every member a stable DNS name
//! (`<pod>.<name>-peers.<ns>.svc`), used for peer traffic and by the operator.
//!
//! It publishes not-ready addresses: a member that is not ready yet (a new
//! learner, or a node after restart waiting for a leader) must still be
//! reachable by its peers, or it could never become ready.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

use crate::crd::RaftCluster;
use crate::identity::{
    CLIENT_PORT, ClusterIdentity, HTTP_PORT, METRICS_PORT, PEER_PORT, owned_meta,
};

pub fn build(cluster: &RaftCluster) -> Service {
    let id = ClusterIdentity::of(cluster);
    let mut meta = owned_meta(cluster, &id, id.headless_service());
    meta.labels
        .get_or_insert_with(Default::default)
        .insert("raftkv.io/service".into(), "peers".into());
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(id.selector_labels()),
            ports: Some(
                [
                    port("client", CLIENT_PORT),
                    port("peer", PEER_PORT),
                    port("http", HTTP_PORT),
                ]
                .into_iter()
                // With TLS, the plain metrics port the ServiceMonitor scrapes.
                .chain(id.tls.then(|| port("metrics", METRICS_PORT)))
                .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub(crate) fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name.into()),
        ),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    #[test]
    fn headless_service_publishes_not_ready_members() {
        let svc = build(&cluster());
        let spec = svc.spec.unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("kv-peers"));
        assert_eq!(svc.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap()["app.kubernetes.io/instance"], "kv");
        let ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [2379, 2380, 8080]);
    }

    #[test]
    fn with_tls_the_plain_metrics_port_is_published_too() {
        let mut c = cluster();
        c.spec.tls.mode = crate::crd::TlsMode::Auto;
        let ports: Vec<i32> = build(&c)
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, [2379, 2380, 8080, 9090]);
    }

    #[test]
    fn headless_service_is_owned_by_the_cluster() {
        let svc = build(&cluster());
        let owner = &svc.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "RaftCluster");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
    }
}
