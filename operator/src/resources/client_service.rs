//! The client Service: one stable ClusterIP address for applications, in
//! front of every ready member (followers forward writes to the leader, so
//! any ready member can serve a client).

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use crate::crd::RaftCluster;
use crate::identity::{CLIENT_PORT, ClusterIdentity, HTTP_PORT, owned_meta};
use crate::resources::headless_service::port;

pub fn build(cluster: &RaftCluster) -> Service {
    let id = ClusterIdentity::of(cluster);
    let mut meta = owned_meta(cluster, &id, id.client_service());
    meta.labels
        .get_or_insert_with(Default::default)
        .insert("raftkv.io/service".into(), "client".into());
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(id.selector_labels()),
            ports: Some(vec![port("client", CLIENT_PORT), port("http", HTTP_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    #[test]
    fn client_service_routes_only_to_ready_members_on_client_ports() {
        let svc = build(&cluster());
        let spec = svc.spec.unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("kv"));
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.publish_not_ready_addresses, None);
        let ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [2379, 8080]);
        assert_eq!(spec.selector.unwrap().len(), 2);
    }
}
