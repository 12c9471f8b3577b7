//! The NetworkPolicy of a cluster's pods: the peer port (Raft traffic)
//! only from the cluster's own members; the client and HTTP ports (etcd
//! API, JSON API) from the sources `spec.networkPolicy.clientFrom` names,
//! or from anywhere when it is absent, as a Service would be; with TLS,
//! the plain metrics port (metrics and probes, no data) from anywhere, so
//! that a Prometheus in another namespace can scrape it.
//!
//! With `clientFrom`, the members and the operator still reach the client
//! and HTTP ports: the operator calls the HTTP API (status, membership).
//! The operator is recognised by its pod label
//! (`app.kubernetes.io/name: raftkv-operator`, in any namespace); a label
//! anyone may set, which is why TLS with client certificates, not the
//! policy, is what authenticates it. An empty `clientFrom` means "members
//! and operator only", never "anyone" (which an empty `from` would mean to
//! Kubernetes).
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
use std::collections::BTreeMap;

/// Pod label of the operator, as the chart sets it.
const OPERATOR_LABEL: (&str, &str) = ("app.kubernetes.io/name", "raftkv-operator");

use crate::crd::RaftCluster;
use crate::identity::{
    CLIENT_PORT, ClusterIdentity, HTTP_PORT, METRICS_PORT, PEER_PORT, owned_meta,
};

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
    let member_peer = NetworkPolicyPeer {
        pod_selector: Some(members.clone()),
        ..NetworkPolicyPeer::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                OPERATOR_LABEL.0.to_string(),
                OPERATOR_LABEL.1.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    // `None`: any source. Otherwise the user's sources, plus the members
    // and the operator.
    let client_from = cluster
        .spec
        .network_policy
        .client_from
        .as_ref()
        .map(|from| {
            from.iter()
                .cloned()
                .chain([member_peer.clone(), operator])
                .collect::<Vec<_>>()
        });
    let mut ingress = vec![
        NetworkPolicyIngressRule {
            from: Some(vec![member_peer]),
            ports: Some(vec![port(PEER_PORT)]),
        },
        NetworkPolicyIngressRule {
            from: client_from,
            ports: Some(vec![port(CLIENT_PORT), port(HTTP_PORT)]),
        },
    ];
    if id.tls {
        ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![port(METRICS_PORT)]),
        });
    }
    NetworkPolicy {
        metadata: owned_meta(cluster, &id, id.network_policy()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
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
        assert!(
            !rules
                .iter()
                .any(|r| ports(r).contains(&IntOrString::Int(METRICS_PORT))),
            "no metrics port without TLS"
        );
    }

    fn client_rule(c: &RaftCluster) -> NetworkPolicyIngressRule {
        build(c)
            .spec
            .unwrap()
            .ingress
            .unwrap()
            .into_iter()
            .find(|r| {
                r.ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == Some(IntOrString::Int(CLIENT_PORT)))
            })
            .unwrap()
    }

    #[test]
    fn client_ports_admit_only_the_named_sources_and_the_members() {
        let mut c = cluster();
        let app: NetworkPolicyPeer = serde_json::from_value(serde_json::json!({
            "namespaceSelector": {"matchLabels": {"team": "payments"}},
            "podSelector": {"matchLabels": {"app": "api"}}
        }))
        .unwrap();
        c.spec.network_policy.client_from = Some(vec![app.clone()]);
        let from = client_rule(&c).from.expect("sources are named");
        assert_eq!(from.len(), 3);
        assert_eq!(from[0], app);
        assert_eq!(
            from[1]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/instance"],
            "kv"
        );
        assert!(
            from[1].namespace_selector.is_none(),
            "members of this namespace only"
        );
        // The operator, wherever it runs, still calls the HTTP API.
        assert_eq!(from[2].namespace_selector, Some(LabelSelector::default()));
        assert_eq!(
            from[2]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/name"],
            "raftkv-operator"
        );
    }

    #[test]
    fn an_empty_client_from_admits_only_the_members_never_anyone() {
        let mut c = cluster();
        c.spec.network_policy.client_from = Some(vec![]);
        let from = client_rule(&c)
            .from
            .expect("an empty from would admit anyone");
        assert_eq!(from.len(), 2, "the members and the operator");
        assert!(from.iter().all(|f| f.pod_selector.is_some()));
    }

    #[test]
    fn with_tls_the_metrics_port_is_open_to_scrapers() {
        let mut c = cluster();
        c.spec.tls.mode = crate::crd::TlsMode::Auto;
        c.spec.network_policy.client_from = Some(vec![]);
        let rules = build(&c).spec.unwrap().ingress.unwrap();
        let metrics = rules
            .iter()
            .find(|r| {
                r.ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == Some(IntOrString::Int(METRICS_PORT)))
            })
            .expect("a rule for the metrics port");
        assert!(metrics.from.is_none());
        assert_eq!(metrics.ports.as_ref().unwrap().len(), 1, "and nothing else");
    }
}
