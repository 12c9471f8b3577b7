//! Prometheus metrics of the operator itself (prefix `raftkv_operator_`):
//! reconcile counts, failures and durations, and per-cluster gauges of the
//! Raft state the operator last observed.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::crd::RaftClusterStatus;

/// All operator metrics, registered in one registry served on `/metrics`.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciliations: IntCounter,
    pub failures: IntCounterVec,
    pub duration: Histogram,
    leader_id: IntGaugeVec,
    term: IntGaugeVec,
    commit_index: IntGaugeVec,
    members: IntGaugeVec,
    ready_replicas: IntGaugeVec,
    backup_last_success: IntGaugeVec,
    backup_interval: IntGaugeVec,
    backup_configured: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciliations = IntCounter::new(
            "raftkv_operator_reconciliations_total",
            "Reconcile passes started",
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "raftkv_operator_reconcile_errors_total",
                "Reconcile passes that failed, by error kind",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "raftkv_operator_reconcile_duration_seconds",
                "Duration of one reconcile pass",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["namespace", "cluster"])
        };
        let leader_id = gauge(
            "raftkv_operator_cluster_leader_id",
            "Raft id of the cluster's leader (0 = none)",
        )?;
        let term = gauge("raftkv_operator_cluster_term", "Raft term last observed")?;
        let commit_index = gauge(
            "raftkv_operator_cluster_commit_index",
            "Leader's commit index last observed",
        )?;
        let members = gauge(
            "raftkv_operator_cluster_members",
            "Members in the Raft configuration",
        )?;
        let ready_replicas = gauge(
            "raftkv_operator_cluster_ready_replicas",
            "Ready member pods",
        )?;
        let backup_last_success = gauge(
            "raftkv_operator_backup_last_success_timestamp_seconds",
            "Unix time of the cluster's last successful scheduled backup",
        )?;
        let backup_interval = gauge(
            "raftkv_operator_backup_schedule_interval_seconds",
            "Longest gap between two runs of the cluster's backup schedule",
        )?;
        let backup_configured = gauge(
            "raftkv_operator_backup_configured_timestamp_seconds",
            "Unix time the cluster's backup CronJob was created",
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        for g in [
            &leader_id,
            &term,
            &commit_index,
            &members,
            &ready_replicas,
            &backup_last_success,
            &backup_interval,
            &backup_configured,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        Ok(Self {
            registry,
            reconciliations,
            failures,
            duration,
            leader_id,
            term,
            commit_index,
            members,
            ready_replicas,
            backup_last_success,
            backup_interval,
            backup_configured,
        })
    }

    /// Update the backup gauges: the last success's time (absent until
    /// there is one), the schedule's longest gap (absent without a
    /// schedule) and when the CronJob was created, which together say
    /// whether the newest backup is too old, or whether there should have
    /// been one by now.
    pub fn observe_backup(&self, namespace: &str, cluster: &str, backup: BackupGauges) {
        let l = [namespace, cluster];
        for (gauge, value) in [
            (&self.backup_last_success, backup.last_success),
            (&self.backup_interval, backup.interval_seconds),
            (&self.backup_configured, backup.configured_since),
        ] {
            match value {
                Some(v) => gauge.with_label_values(&l).set(v),
                None => {
                    let _ = gauge.remove_label_values(&l);
                }
            }
        }
    }

    /// Update the per-cluster gauges from a freshly written status.
    pub fn observe_cluster(&self, namespace: &str, cluster: &str, status: &RaftClusterStatus) {
        let l = [namespace, cluster];
        self.leader_id
            .with_label_values(&l)
            .set(status.leader_id.unwrap_or(0));
        self.term
            .with_label_values(&l)
            .set(status.term.unwrap_or(0));
        self.commit_index
            .with_label_values(&l)
            .set(status.commit_index.unwrap_or(0));
        self.members
            .with_label_values(&l)
            .set(i64::try_from(status.members.len()).unwrap_or(i64::MAX));
        self.ready_replicas
            .with_label_values(&l)
            .set(i64::from(status.ready_replicas));
    }

    /// Drop the gauges of a deleted cluster so dashboards stop showing it.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        let l = [namespace, cluster];
        for g in [
            &self.leader_id,
            &self.term,
            &self.commit_index,
            &self.members,
            &self.ready_replicas,
            &self.backup_last_success,
            &self.backup_interval,
            &self.backup_configured,
        ] {
            // Absent series are fine: the cluster may never have been observed.
            let _ = g.remove_label_values(&l);
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

/// The values of the backup gauges of one cluster (each absent: no
/// series).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupGauges {
    /// Unix time of the last successful backup.
    pub last_success: Option<i64>,
    /// Longest gap between two runs of the schedule, in seconds.
    pub interval_seconds: Option<i64>,
    /// Unix time the backup CronJob was created.
    pub configured_since: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_gauges_appear_and_disappear() {
        let m = Metrics::new().unwrap();
        m.reconciliations.inc();
        m.failures.with_label_values(&["kube"]).inc();
        let status = RaftClusterStatus {
            leader_id: Some(2),
            term: Some(7),
            commit_index: Some(42),
            ..Default::default()
        };
        m.observe_cluster("prod", "kv", &status);
        let text = m.render().unwrap();
        assert!(
            text.contains(r#"raftkv_operator_cluster_term{cluster="kv",namespace="prod"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"raftkv_operator_cluster_commit_index{cluster="kv",namespace="prod"} 42"#
            )
        );
        assert!(text.contains("raftkv_operator_reconciliations_total 1"));
        assert!(text.contains(r#"raftkv_operator_reconcile_errors_total{error="kube"} 1"#));
        m.forget_cluster("prod", "kv");
        assert!(!m.render().unwrap().contains(r#"cluster="kv""#));
    }

    #[test]
    fn backup_gauges_follow_the_last_success_and_the_schedule() {
        let m = Metrics::new().unwrap();
        m.observe_backup(
            "prod",
            "kv",
            BackupGauges {
                last_success: None,
                interval_seconds: Some(3600),
                configured_since: Some(1),
            },
        );
        let text = m.render().unwrap();
        assert!(!text.contains("raftkv_operator_backup_last_success_timestamp_seconds{"));
        assert!(text.contains(
            r#"raftkv_operator_backup_schedule_interval_seconds{cluster="kv",namespace="prod"} 3600"#
        ));
        m.observe_backup(
            "prod",
            "kv",
            BackupGauges {
                last_success: Some(1_764_558_000),
                interval_seconds: Some(3600),
                configured_since: Some(1),
            },
        );
        assert!(m.render().unwrap().contains(
            r#"raftkv_operator_backup_last_success_timestamp_seconds{cluster="kv",namespace="prod"} 1764558000"#
        ));
        m.observe_backup(
            "prod",
            "kv",
            BackupGauges {
                last_success: None,
                interval_seconds: None,
                configured_since: None,
            },
        );
        assert!(!m.render().unwrap().contains("raftkv_operator_backup_"));
        m.observe_backup(
            "prod",
            "kv",
            BackupGauges {
                last_success: Some(1),
                interval_seconds: Some(1),
                configured_since: Some(1),
            },
        );
        m.forget_cluster("prod", "kv");
        assert!(!m.render().unwrap().contains("raftkv_operator_backup_"));
    }

    /// Every `raftkv_operator_*` name in `text`.
    fn operator_metric_names(text: &str) -> Vec<String> {
        let prefix = "raftkv_operator_";
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.push(name);
        }
        names
    }

    /// `helm test` greps the operator's `/metrics` for a metric name, and
    /// the alert rules query some: a name the operator does not export makes
    /// the test fail forever and the alert never fire.
    #[test]
    fn metric_names_used_by_the_chart_test_and_the_alerts_are_exported() {
        let m = Metrics::new().unwrap();
        // Labelled families only appear once they have a series.
        m.failures.with_label_values(&["kube"]).inc();
        m.observe_cluster("prod", "kv", &RaftClusterStatus::default());
        m.observe_backup(
            "prod",
            "kv",
            BackupGauges {
                last_success: Some(1),
                interval_seconds: Some(86_400),
                configured_since: Some(1),
            },
        );
        let exported: Vec<String> = m
            .render()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let tests_dir = root.join("charts/raftkv-operator/templates/tests");
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&tests_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.push(root.join("deploy/prometheus/alerts.yaml"));
        files.push(root.join("deploy/grafana/raftkv.json"));
        let mut checked = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in operator_metric_names(&text) {
                assert!(
                    exported.contains(&name),
                    "{} uses {name}, which the operator does not export (it exports {exported:?})",
                    file.display()
                );
                checked += 1;
            }
        }
        assert!(
            checked >= 2,
            "the chart test and the alerts name operator metrics"
        );
    }
}
