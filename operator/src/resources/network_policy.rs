//! The NetworkPolicy of a cluster's pods: the peer port (Raft traffic)
//! only from the cluster's own members; the client and HTTP ports (etcd
//! API, JSON API, metrics, probes) from anywhere, as a Service would be.
//!
//! The peer secret already authenticates every peer stream; the policy is
//! the second wall, where the network plugin enforces policies, so that a
//! pod of another application cannot even open a connection to it.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::RaftCluster;
use crate::identity::{CLIENT_PORT, ClusterIdentity, HTTP_PORT, PEER_PORT, owned_meta};

pub fn build(cluster: &RaftCluster) -> NetworkPolicy {
    let id = ClusterIdentity::of(cluster);
    let members = LabelSelector {
        match_labels: Some(id.selector_labels()),
        ..LabelSelector::default()
    };
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    NetworkPolicy {
        metadata: owned_meta(cluster, &id, id.network_policy()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(members),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![port(PEER_PORT)]),
                },
                // No `from`: any source.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(CLIENT_PORT), port(HTTP_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    #[test]
    fn only_members_reach_the_peer_port_and_anyone_the_client_ports() {
        let np = build(&cluster());
        let spec = np.spec.unwrap();
        let members = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(members["app.kubernetes.io/instance"], "kv");
        let rules = spec.ingress.unwrap();
        let ports = |r: &NetworkPolicyIngressRule| -> Vec<IntOrString> {
            r.ports
                .iter()
                .flatten()
                .filter_map(|p| p.port.clone())
                .collect()
        };
        let peer: Vec<_> = rules
            .iter()
            .filter(|r| ports(r).contains(&IntOrString::Int(PEER_PORT)))
            .collect();
        assert_eq!(peer.len(), 1, "one rule opens the peer port");
        let from = peer[0]
            .from
            .as_ref()
            .expect("the peer rule names its sources");
        assert_eq!(
            from[0].pod_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&members)
        );
        assert!(from[0].namespace_selector.is_none() && from[0].ip_block.is_none());
        let open: Vec<_> = rules.iter().filter(|r| r.from.is_none()).collect();
        assert_eq!(open.len(), 1);
        assert!(!ports(open[0]).contains(&IntOrString::Int(PEER_PORT)));
        assert!(ports(open[0]).contains(&IntOrString::Int(CLIENT_PORT)));
        assert!(ports(open[0]).contains(&IntOrString::Int(HTTP_PORT)));
    }
}
