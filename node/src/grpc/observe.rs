//! Request counts and latencies of the client API
//! (`raftkv_grpc_requests_total{method,code}`,
//! `raftkv_grpc_request_duration_seconds{method}`), recorded by each service
//! call; and the Watch service's figures (`raftkv_grpc_watchers`,
//! `raftkv_grpc_watch_events_sent_total`,
//! `raftkv_grpc_watch_lagged_total`), recorded by its streams.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Status};

use crate::metrics::Metrics;

/// Records calls into the node's metrics; a no-op without metrics (tests).
#[derive(Debug, Clone, Default)]
pub struct Observer {
    metrics: Option<Arc<Metrics>>,
}

impl Observer {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Observer { metrics }
    }

    /// `n` watches were created.
    pub fn watchers_added(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.grpc_watchers.add(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// `n` watches ended (canceled, or their stream closed).
    pub fn watchers_removed(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.grpc_watchers.sub(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// `n` events went out to watchers.
    pub fn watch_events_sent(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.grpc_watch_events_sent_total.inc_by(n as u64);
        }
    }

    /// A watch stream fell behind the change feed and reads history.
    pub fn watch_lagged(&self) {
        if let Some(m) = &self.metrics {
            m.grpc_watch_lagged_total.inc();
        }
    }

    /// Counts one finished call of `method` that began at `started`.
    pub fn record<T>(&self, method: &'static str, started: Instant, result: &Result<T, Status>) {
        let Some(m) = &self.metrics else {
            return;
        };
        let code = match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        m.grpc_requests_total
            .with_label_values(&[method, code_name(code)])
            .inc();
        m.grpc_request_duration_seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// "OK", else the code's name as tonic spells it ("Unavailable"), as
/// documented for the metric in `metrics.rs`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method_and_code() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let o = Observer::new(Some(metrics.clone()));
        o.record("Range", Instant::now(), &Ok::<(), Status>(()));
        o.record("Range", Instant::now(), &Ok::<(), Status>(()));
        o.record::<()>(
            "Put",
            Instant::now(),
            &Err(Status::unavailable("no leader")),
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"raftkv_grpc_requests_total{code="OK",method="Range"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"raftkv_grpc_requests_total{code="Unavailable",method="Put"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"raftkv_grpc_request_duration_seconds_count{method="Put"} 1"#));
        // Without metrics nothing happens (and nothing panics).
        Observer::default().record("Range", Instant::now(), &Ok::<(), Status>(()));
    }
}
