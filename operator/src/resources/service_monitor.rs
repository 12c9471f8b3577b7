//! The Prometheus Operator `ServiceMonitor` scraping every member's
//! `/metrics`, created when `spec.monitoring.enabled` and the
//! `servicemonitors.monitoring.coreos.com` CRD exists.
//!
//! Only the fields the operator sets are modelled; the type exists so the
//! object is built and tested as Rust, not as loose JSON.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::crd::RaftCluster;
use crate::identity::{ClusterIdentity, owned_meta};

/// Subset of `monitoring.coreos.com/v1` `ServiceMonitor`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// The Service label whose value names the scrape job. Without it the
    /// job is named after the Service (`<cluster>-peers`), which the alert
    /// rules' `job=~".*raftkv.*"` would not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_label: Option<String>,
    pub selector: LabelSelector,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub port: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relabelings: Vec<Relabeling>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Relabeling {
    pub source_labels: Vec<String>,
    pub target_label: String,
}

pub fn build(cluster: &RaftCluster) -> ServiceMonitor {
    let id = ClusterIdentity::of(cluster);
    let mut meta = owned_meta(cluster, &id, id.service_monitor());
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(cluster.spec.monitoring.labels.clone());
    let mut selector = id.selector_labels();
    selector.insert("raftkv.io/service".into(), "peers".into());
    let relabel = |source: &str, target: &str| Relabeling {
        source_labels: vec![source.into()],
        target_label: target.into(),
    };
    ServiceMonitor {
        metadata: meta,
        spec: ServiceMonitorSpec {
            job_label: Some("app.kubernetes.io/name".into()),
            // The headless Service lists every member, ready or not, so a
            // member that is catching up is still scraped.
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            endpoints: vec![Endpoint {
                // With TLS the HTTP port wants a client certificate; the
                // members serve /metrics in plain HTTP on the metrics port.
                port: if id.tls { "metrics" } else { "http" }.into(),
                path: "/metrics".into(),
                interval: cluster.spec.monitoring.interval.clone(),
                // `cluster` and `pod` labels let one dashboard panel show
                // every member of one cluster.
                relabelings: vec![
                    relabel(
                        "__meta_kubernetes_pod_label_app_kubernetes_io_instance",
                        "cluster",
                    ),
                    relabel("__meta_kubernetes_pod_name", "pod"),
                ],
            }],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    #[test]
    fn service_monitor_scrapes_metrics_of_every_member() {
        let mut c = cluster();
        c.spec.monitoring.enabled = true;
        c.spec
            .monitoring
            .labels
            .insert("release".into(), "kube-prometheus-stack".into());
        c.spec.monitoring.interval = Some("15s".into());
        let sm = build(&c);
        assert_eq!(
            sm.metadata.labels.as_ref().unwrap()["release"],
            "kube-prometheus-stack"
        );
        let sel = sm.spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(sel["raftkv.io/service"], "peers");
        assert_eq!(sel["app.kubernetes.io/instance"], "kv");
        let ep = &sm.spec.endpoints[0];
        assert_eq!((ep.port.as_str(), ep.path.as_str()), ("http", "/metrics"));
        assert_eq!(ep.interval.as_deref(), Some("15s"));
        assert!(ep.relabelings.iter().any(|r| r.target_label == "cluster"));
        let json = serde_json::to_value(&sm).unwrap();
        // The job is "raftkv", what the alert rules select on.
        assert_eq!(json["spec"]["jobLabel"], "app.kubernetes.io/name");
        assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(json["kind"], "ServiceMonitor");
    }

    #[test]
    fn with_tls_prometheus_scrapes_the_plain_metrics_port() {
        let mut c = cluster();
        c.spec.tls.mode = crate::crd::TlsMode::Auto;
        assert_eq!(build(&c).spec.endpoints[0].port, "metrics");
    }
}
