//! Runs a bench: connects, starts the clients, shows progress, merges what
//! the clients measured into a [`Summary`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::transport::{Channel, Endpoint};

use super::client::{ClientStats, STATUS_CODES, run_client};
use super::cpu::process_cpu_time;
use super::keyspace::KeySpace;
use super::report::{Latency, Summary};
use super::{BenchConfig, BenchError, Stop, Workload};
use crate::grpc::proto::etcdserverpb::kv_client::KvClient;

/// What all clients of a run share. Only atomics are written during the
/// run.
#[derive(Debug)]
pub(crate) struct Shared {
    pub workload: Workload,
    pub keyspace: KeySpace,
    /// Requests started before this are warm-up and not measured.
    pub measure_from: Instant,
    /// Duration mode: no request starts after this, and requests that end
    /// after it are not counted.
    pub deadline: Option<Instant>,
    /// Request-count mode: how many measured requests to issue in all.
    pub budget: Option<u64>,
    pub tickets: AtomicU64,
    /// Measured successes and failures so far (for the progress bar).
    pub done: AtomicU64,
    pub failed: AtomicU64,
    /// Set to stop every client early (e.g. when one of them fails).
    pub stop: AtomicBool,
    /// Set once every client has finished (ends the progress bar).
    pub finished: AtomicBool,
    /// fill workload: the next key to put.
    pub next_key: AtomicU64,
    /// txn workload: the last mod revision seen of each key.
    pub revisions: Vec<AtomicI64>,
}

/// Runs one bench as configured and returns what it measured.
pub async fn run(config: &BenchConfig) -> Result<Summary, BenchError> {
    validate(config)?;
    let keyspace = KeySpace::new(config.keys, config.key_size, config.value_size)?;
    let channels = connect(config).await?;

    let revisions = match config.workload {
        Workload::Txn => (0..keyspace.len()).map(|_| AtomicI64::new(0)).collect(),
        _ => Vec::new(),
    };
    let started = Instant::now();
    let measure_from = started + config.warmup;
    let (deadline, budget) = match config.stop {
        Stop::After(d) => (Some(measure_from + d), None),
        Stop::Requests(n) => (None, Some(n)),
    };
    let shared = Arc::new(Shared {
        workload: config.workload,
        keyspace,
        measure_from,
        deadline,
        budget,
        tickets: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        next_key: AtomicU64::new(0),
        revisions,
    });

    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..config.clients {
        let kv = KvClient::new(channels[id % channels.len()].clone());
        tasks.spawn(run_client(id, shared.clone(), kv));
    }

    let progress = config
        .progress
        .then(|| tokio::spawn(show_progress(shared.clone(), config.stop, config.warmup)));

    // CPU is sampled when the measured period begins (after the warm-up).
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = process_cpu_time();

    let mut merged = ClientStats {
        latency_us: Histogram::new(3).map_err(|e| BenchError::Client(e.to_string()))?,
        ok: 0,
        failed_by_code: [0; STATUS_CODES],
        txn_compare_failed: 0,
    };
    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(stats)) => {
                merged
                    .latency_us
                    .add(&stats.latency_us)
                    .map_err(|e| BenchError::Client(e.to_string()))?;
                merged.ok += stats.ok;
                merged.txn_compare_failed += stats.txn_compare_failed;
                for (m, s) in merged.failed_by_code.iter_mut().zip(stats.failed_by_code) {
                    *m += s;
                }
            }
            Ok(Err(e)) => {
                shared.stop.store(true, Ordering::Relaxed);
                first_failure.get_or_insert(e.to_string());
            }
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                first_failure.get_or_insert(e.to_string());
            }
        }
    }
    let ended = Instant::now();
    let cpu_after = process_cpu_time();
    shared.finished.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    if let Some(e) = first_failure {
        return Err(BenchError::Client(e));
    }

    let elapsed = match deadline {
        Some(d) => d.saturating_duration_since(measure_from),
        None => ended.saturating_duration_since(measure_from),
    };
    let errors: u64 = merged.failed_by_code.iter().sum();
    let errors_by_code: BTreeMap<String, u64> = merged
        .failed_by_code
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| {
            let name = format!("{:?}", tonic::Code::from_i32(code as i32));
            (name, *n)
        })
        .collect();
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let total = merged.ok + errors;
    Ok(Summary {
        workload: config.workload.name(),
        endpoints: config.endpoints.clone(),
        clients: config.clients,
        conns: channels.len(),
        keys: config.keys,
        key_size: config.key_size,
        value_size: config.value_size,
        elapsed_s: elapsed.as_secs_f64(),
        requests: merged.ok,
        errors,
        errors_by_code,
        throughput: Summary::throughput_of(merged.ok, elapsed),
        latency: Latency::from_micros(&merged.latency_us),
        txn_compare_failed: matches!(config.workload, Workload::Txn)
            .then_some(merged.txn_compare_failed),
        cpu_s: cpu.map(|c| c.as_secs_f64()),
        cpu_us_per_request: cpu
            .filter(|_| total > 0)
            .map(|c| c.as_secs_f64() * 1e6 / total as f64),
    })
}

fn validate(config: &BenchConfig) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::Config(m.to_string()));
    if config.endpoints.is_empty() {
        return bad("at least one endpoint is needed");
    }
    if config.clients == 0 || config.conns == 0 {
        return bad("--clients and --conns must be at least 1");
    }
    if let Workload::Mixed { read_ratio, .. } = config.workload
        && !(0.0..=1.0).contains(&read_ratio)
    {
        return bad("--read-ratio must be between 0 and 1");
    }
    match config.stop {
        Stop::After(d) if d.is_zero() => bad("--duration must be positive"),
        Stop::Requests(0) => bad("--requests must be at least 1"),
        _ => Ok(()),
    }
}

/// Opens `conns` connections (never more than there are clients), the i-th
/// to endpoint `i mod len`, so that load spreads over the members.
async fn connect(config: &BenchConfig) -> Result<Vec<Channel>, BenchError> {
    let conns = config.conns.min(config.clients);
    let connector = crate::tls::connect::Connector::new(match config.tls.trusted_ca {
        Some(_) => Some(config.tls.client_config()?),
        None => None,
    });
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &config.endpoints[i % config.endpoints.len()];
        let uri = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        let failed = |source| BenchError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(failed)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let channel = connector.connect(channel).await.map_err(failed)?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Redraws the progress bar a few times a second with the current rate and
/// error count, until every client has finished.
async fn show_progress(shared: Arc<Shared>, stop: Stop, warmup: Duration) {
    let style = ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let length = match stop {
        Stop::After(d) => u64::try_from((d + warmup).as_millis()).unwrap_or(u64::MAX),
        Stop::Requests(n) => n,
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(style);
    let start = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if shared.finished.load(Ordering::Relaxed) {
            bar.finish_and_clear();
            return;
        }
        let now = Instant::now();
        let done = shared.done.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, done);
        bar.set_position(match stop {
            Stop::After(_) => u64::try_from(now.duration_since(start).as_millis()).unwrap_or(0),
            Stop::Requests(_) => done + failed,
        });
        let phase = if now < shared.measure_from {
            "warming up, "
        } else {
            ""
        };
        bar.set_message(format!(
            "{phase}{rate:.0} req/s, {done} ok, {failed} errors"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::ReadConsistency;
    use crate::grpc::fake_backend::FakeBackend;
    use crate::grpc::proto::etcdserverpb::RangeRequest;

    async fn server() -> (String, FakeBackend, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let backend = FakeBackend::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::grpc::serve_with_shutdown(
            listener,
            None,
            backend.clone(),
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, backend, stop)
    }

    fn config(endpoint: &str, workload: Workload, stop: Stop) -> BenchConfig {
        BenchConfig {
            tls: crate::tls::ClientTls::default(),
            workload,
            endpoints: vec![endpoint.to_string()],
            clients: 4,
            conns: 2,
            stop,
            warmup: Duration::ZERO,
            keys: 50,
            key_size: 8,
            value_size: 16,
            progress: false,
        }
    }

    #[tokio::test]
    async fn fill_puts_every_key_exactly_once() {
        let (addr, _backend, _stop) = server().await;
        let s = run(&config(&addr, Workload::Fill, Stop::Requests(50)))
            .await
            .unwrap();
        assert_eq!((s.requests, s.errors), (50, 0));
        let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
        let all = kv
            .range(RangeRequest {
                key: bytes::Bytes::from_static(b"k"),
                range_end: bytes::Bytes::from_static(b"l"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.count, 50);
        // One revision per put (a fresh store is at 1): no key was written
        // twice.
        assert_eq!(all.header.unwrap().revision, 51);
    }

    #[tokio::test]
    async fn a_request_budget_is_met_exactly_and_latencies_are_recorded() {
        let (addr, _backend, _stop) = server().await;
        for workload in [
            Workload::Put,
            Workload::Get(ReadConsistency::Serializable),
            Workload::Mixed {
                read_ratio: 0.5,
                consistency: ReadConsistency::Linearizable,
            },
            Workload::Txn,
        ] {
            let s = run(&config(&addr, workload, Stop::Requests(200)))
                .await
                .unwrap();
            assert_eq!((s.requests, s.errors), (200, 0), "{workload:?}");
            assert!(s.latency.max_ms > 0.0 && s.latency.p50_ms <= s.latency.max_ms);
            assert!(s.throughput > 0.0);
            assert!(s.cpu_us_per_request.is_some());
        }
    }

    #[tokio::test]
    async fn a_timed_run_counts_only_the_measured_period() {
        let (addr, _backend, _stop) = server().await;
        let mut c = config(
            &addr,
            Workload::Put,
            Stop::After(Duration::from_millis(300)),
        );
        c.warmup = Duration::from_millis(100);
        let s = run(&c).await.unwrap();
        assert!((s.elapsed_s - 0.3).abs() < 1e-6, "{}", s.elapsed_s);
        assert!(s.requests > 0);
    }

    #[tokio::test]
    async fn failed_requests_are_counted_by_code_and_not_as_throughput() {
        let (addr, backend, _stop) = server().await;
        backend.fail_with(Some(crate::server::ClientError::NoLeader));
        let s = run(&config(&addr, Workload::Put, Stop::Requests(20)))
            .await
            .unwrap();
        assert_eq!((s.requests, s.errors), (0, 20));
        assert_eq!(s.errors_by_code.get("Unavailable"), Some(&20));
        assert_eq!(s.throughput, 0.0);
    }

    #[tokio::test]
    async fn nonsense_configurations_are_refused() {
        let bad = |c: BenchConfig| async move { run(&c).await.unwrap_err() };
        let mut c = config("127.0.0.1:1", Workload::Put, Stop::Requests(1));
        c.clients = 0;
        assert!(matches!(bad(c).await, BenchError::Config(_)));
        let c = config(
            "127.0.0.1:1",
            Workload::Mixed {
                read_ratio: 1.5,
                consistency: ReadConsistency::Linearizable,
            },
            Stop::Requests(1),
        );
        assert!(matches!(bad(c).await, BenchError::Config(_)));
    }
}
