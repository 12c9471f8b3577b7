//! Prometheus metrics of one node: the registry and every metric handle.
//!
//! Names are part of the project's interface (dashboards and alerts use
//! them): see ARCHITECTURE.md. Every series of a node carries the same
//! `/metrics` endpoint, and `raftkv_node_info{id,name,cluster}` joins them to
//! a node, so one query covers all nodes of a cluster.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metric handles of a node. Cheap to share behind an `Arc`.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub raft_term: IntGauge,
    pub raft_commit_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub raft_last_log_index: IntGauge,
    pub raft_is_leader: IntGauge,
    pub raft_has_leader: IntGauge,
    pub raft_leader_changes_total: IntCounter,
    pub raft_proposals_committed_total: IntCounter,
    pub raft_proposals_failed_total: IntCounter,
    pub raft_proposals_pending: IntGauge,
    /// Peer messages and snapshot streams refused as malformed or not
    /// believable; label `reason`.
    pub peer_messages_refused_total: IntCounterVec,
    /// Failed TLS handshakes by listener (`client`, `peer`, `http`) and
    /// why (`error`: a wrong CA, plaintext, garbage; `timeout`).
    pub tls_handshake_failures_total: IntCounterVec,
    pub disk_log_fsync_seconds: Histogram,
    pub raft_peer_match_index: IntGaugeVec,
    pub network_peer_rtt_seconds: HistogramVec,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    /// For the gRPC client API: labels `method` (e.g. "Range") and `code`
    /// (e.g. "OK", "Unavailable").
    pub grpc_requests_total: IntCounterVec,
    /// For the gRPC client API: label `method`.
    pub grpc_request_duration_seconds: HistogramVec,
    /// Watches open on the client API.
    pub grpc_watchers: IntGauge,
    /// Events sent to watches.
    pub grpc_watch_events_sent_total: IntCounter,
    /// Times a watch stream fell behind the change feed and caught up from
    /// history.
    pub grpc_watch_lagged_total: IntCounter,
    pub db_size_bytes: IntGaugeVec,
    pub raft_members: IntGaugeVec,
    pub node_info: IntGaugeVec,
}

/// Latency buckets from 100 µs to ~10 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.5, 14).unwrap_or_default()
}

impl Metrics {
    /// Creates and registers every metric. Fails only on a programming error
    /// (a duplicate or invalid name).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(latency_buckets()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let fsync = Histogram::with_opts(
            HistogramOpts::new(
                "raftkv_disk_log_fsync_seconds",
                "Duration of one durable write of the Raft log (one per Ready: group commit)",
            )
            .buckets(latency_buckets()),
        )?;
        registry.register(Box::new(fsync.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            raft_term: gauge("raftkv_raft_term", "Current Raft term")?,
            raft_commit_index: gauge("raftkv_raft_commit_index", "Highest committed log index")?,
            raft_applied_index: gauge(
                "raftkv_raft_applied_index",
                "Highest log index applied to the state machine",
            )?,
            raft_last_log_index: gauge("raftkv_raft_last_log_index", "Last index in the log")?,
            raft_is_leader: gauge("raftkv_raft_is_leader", "1 if this node is the leader")?,
            raft_has_leader: gauge("raftkv_raft_has_leader", "1 if this node knows a leader")?,
            raft_leader_changes_total: counter(
                "raftkv_raft_leader_changes_total",
                "Times the leader this node knows of changed",
            )?,
            raft_proposals_committed_total: counter(
                "raftkv_raft_proposals_committed_total",
                "Client proposals committed and applied",
            )?,
            raft_proposals_failed_total: counter(
                "raftkv_raft_proposals_failed_total",
                "Client proposals that failed (not leader, overwritten, timed out)",
            )?,
            raft_proposals_pending: gauge(
                "raftkv_raft_proposals_pending",
                "Client proposals waiting to commit",
            )?,
            peer_messages_refused_total: counter_vec(
                "raftkv_peer_messages_refused_total",
                "Peer messages and snapshots refused (malformed, non-member, stale)",
                &["reason"],
            )?,
            tls_handshake_failures_total: counter_vec(
                "raftkv_tls_handshake_failures_total",
                "TLS handshakes that failed (wrong CA, plaintext, garbage) or timed out",
                &["listener", "reason"],
            )?,
            disk_log_fsync_seconds: fsync,
            raft_peer_match_index: gauge_vec(
                "raftkv_raft_peer_match_index",
                "Leader only: the highest log index known replicated on each peer",
                &["peer"],
            )?,
            network_peer_rtt_seconds: histogram_vec(
                "raftkv_network_peer_rtt_seconds",
                "Heartbeat round-trip time to each peer",
                &["peer"],
            )?,
            http_requests_total: counter_vec(
                "raftkv_http_requests_total",
                "HTTP API requests",
                &["route", "method", "status"],
            )?,
            http_request_duration_seconds: histogram_vec(
                "raftkv_http_request_duration_seconds",
                "HTTP API request latency",
                &["route"],
            )?,
            grpc_requests_total: counter_vec(
                "raftkv_grpc_requests_total",
                "gRPC client API requests",
                &["method", "code"],
            )?,
            grpc_request_duration_seconds: histogram_vec(
                "raftkv_grpc_request_duration_seconds",
                "gRPC client API request latency",
                &["method"],
            )?,
            grpc_watchers: gauge("raftkv_grpc_watchers", "Watches open on the client API")?,
            grpc_watch_events_sent_total: counter(
                "raftkv_grpc_watch_events_sent_total",
                "Events sent to watches",
            )?,
            grpc_watch_lagged_total: counter(
                "raftkv_grpc_watch_lagged_total",
                "Times a watch stream fell behind the change feed and read history instead",
            )?,
            db_size_bytes: gauge_vec(
                "raftkv_db_size_bytes",
                "Bytes on disk of each store (db = log: its segments as allocated | kv: its file)",
                &["db"],
            )?,
            raft_members: gauge_vec(
                "raftkv_raft_members",
                "Members of the configuration by role (voter | learner)",
                &["role"],
            )?,
            node_info: gauge_vec(
                "raftkv_node_info",
                "Always 1; labels identify the node",
                &["id", "name", "cluster"],
            )?,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_names_are_exported() {
        let m = Metrics::new().unwrap();
        m.raft_peer_match_index.with_label_values(&["2"]).set(5);
        m.network_peer_rtt_seconds
            .with_label_values(&["2"])
            .observe(0.001);
        m.http_requests_total
            .with_label_values(&["/v1/kv/{key}", "GET", "200"])
            .inc();
        m.http_request_duration_seconds
            .with_label_values(&["/v1/kv/{key}"])
            .observe(0.01);
        m.grpc_requests_total
            .with_label_values(&["Range", "OK"])
            .inc();
        m.grpc_request_duration_seconds
            .with_label_values(&["Range"])
            .observe(0.01);
        m.db_size_bytes.with_label_values(&["log"]).set(1);
        m.peer_messages_refused_total
            .with_label_values(&["absurd_term"])
            .inc();
        m.raft_members.with_label_values(&["voter"]).set(3);
        m.tls_handshake_failures_total
            .with_label_values(&["client", "error"])
            .inc();
        m.node_info.with_label_values(&["1", "n1", "42"]).set(1);
        m.disk_log_fsync_seconds.observe(0.002);
        let text = m.render();
        for name in [
            "raftkv_raft_term",
            "raftkv_raft_commit_index",
            "raftkv_raft_applied_index",
            "raftkv_raft_last_log_index",
            "raftkv_raft_is_leader",
            "raftkv_raft_has_leader",
            "raftkv_raft_leader_changes_total",
            "raftkv_raft_proposals_committed_total",
            "raftkv_raft_proposals_failed_total",
            "raftkv_raft_proposals_pending",
            "raftkv_disk_log_fsync_seconds_bucket",
            "raftkv_raft_peer_match_index{peer=\"2\"}",
            "raftkv_network_peer_rtt_seconds_bucket{peer=\"2\"",
            "raftkv_http_requests_total{method=\"GET\",route=\"/v1/kv/{key}\",status=\"200\"}",
            "raftkv_http_request_duration_seconds_bucket",
            "raftkv_grpc_requests_total{code=\"OK\",method=\"Range\"}",
            "raftkv_grpc_request_duration_seconds_bucket",
            "raftkv_db_size_bytes{db=\"log\"}",
            "raftkv_peer_messages_refused_total{reason=\"absurd_term\"}",
            "raftkv_raft_members{role=\"voter\"}",
            "raftkv_tls_handshake_failures_total{listener=\"client\",reason=\"error\"}",
            "raftkv_node_info{cluster=\"42\",id=\"1\",name=\"n1\"}",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
