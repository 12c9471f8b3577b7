//! What a bench run measured, as a human-readable summary or as JSON for
//! scripts (`--output json`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The result of one bench run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub workload: String,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Length of the measured period (warm-up excluded).
    pub elapsed_s: f64,
    /// Requests that succeeded in the measured period.
    pub requests: u64,
    /// Requests that failed in the measured period.
    pub errors: u64,
    /// Failures by gRPC status code name.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latency of successful requests.
    pub latency: Latency,
    /// For the txn workload: transactions whose comparison failed (another
    /// client won the race); they count as successful requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn_compare_failed: Option<u64>,
    /// The bench process's own CPU time over the measured period.
    pub cpu_s: Option<f64>,
    /// The bench's CPU time per request (successful or not), in microseconds.
    pub cpu_us_per_request: Option<f64>,
}

impl Summary {
    pub(crate) fn throughput_of(requests: u64, elapsed: Duration) -> f64 {
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workload     {} ({}-byte keys, {}-byte values, {} keys)",
            self.workload, self.key_size, self.value_size, self.keys
        )?;
        writeln!(f, "endpoints    {}", self.endpoints.join(","))?;
        writeln!(
            f,
            "clients      {} over {} connection(s)",
            self.clients, self.conns
        )?;
        writeln!(
            f,
            "requests     {} ok, {} failed in {:.2} s",
            self.requests, self.errors, self.elapsed_s
        )?;
        for (code, n) in &self.errors_by_code {
            writeln!(f, "  failed     {n} x {code}")?;
        }
        if let Some(n) = self.txn_compare_failed {
            writeln!(f, "txn          {n} lost the compare-and-swap race")?;
        }
        writeln!(f, "throughput   {:.1} req/s", self.throughput)?;
        let l = &self.latency;
        writeln!(
            f,
            "latency ms   mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        )?;
        match (self.cpu_s, self.cpu_us_per_request) {
            (Some(s), Some(per)) => writeln!(f, "bench cpu    {s:.2} s ({per:.1} µs per request)"),
            _ => writeln!(f, "bench cpu    unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::from_micros(&h);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
        assert_eq!(
            Latency::from_micros(&Histogram::new(3).unwrap()),
            Latency::default()
        );
    }

    #[test]
    fn a_summary_renders_as_json_with_the_fields_scripts_read() {
        let s = Summary {
            workload: "put".into(),
            endpoints: vec!["127.0.0.1:2379".into()],
            clients: 10,
            conns: 2,
            keys: 100,
            key_size: 8,
            value_size: 256,
            elapsed_s: 2.0,
            requests: 200,
            errors: 1,
            errors_by_code: BTreeMap::from([("Unavailable".to_string(), 1)]),
            throughput: 100.0,
            latency: Latency::default(),
            txn_compare_failed: None,
            cpu_s: Some(0.5),
            cpu_us_per_request: Some(2487.5),
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["throughput"], 100.0);
        assert_eq!(v["errors_by_code"]["Unavailable"], 1);
        assert!(v["latency"]["p99_ms"].is_number());
        assert!(v.get("txn_compare_failed").is_none());
        assert!(s.to_string().contains("throughput   100.0 req/s"));
    }
}
