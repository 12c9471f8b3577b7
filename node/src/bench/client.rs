//! One simulated client: a loop that keeps exactly one request in flight,
//! timing each and recording it in its own histogram (no locks shared with
//! other clients on the hot path).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hdrhistogram::Histogram;
use tonic::transport::Channel;

use super::keyspace::XorShift;
use super::run::Shared;
use super::{ReadConsistency, Workload};
use crate::grpc::proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, kv_client::KvClient,
    request_op, response_op,
};

/// Highest latency the histograms track exactly (one hour, in µs); slower
/// requests are recorded as this value.
const MAX_TRACKED_MICROS: u64 = 3_600_000_000;

/// gRPC defines 17 status codes (0..=16).
pub(crate) const STATUS_CODES: usize = 17;

/// What one client measured.
#[derive(Debug)]
pub(crate) struct ClientStats {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub failed_by_code: [u64; STATUS_CODES],
    pub txn_compare_failed: u64,
}

impl ClientStats {
    fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(ClientStats {
            latency_us: Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)?,
            ok: 0,
            failed_by_code: [0; STATUS_CODES],
            txn_compare_failed: 0,
        })
    }
}

/// How one request went, beyond success or failure.
enum Done {
    Plain,
    TxnCompareFailed,
    /// fill: every key has been handed out; the client stops.
    KeySpaceExhausted,
}

/// Runs one client until the run's deadline or request budget is reached.
pub(crate) async fn run_client(
    id: usize,
    shared: Arc<Shared>,
    mut kv: KvClient<Channel>,
) -> Result<ClientStats, hdrhistogram::CreationError> {
    let mut stats = ClientStats::new()?;
    let mut rng = XorShift::new((id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    loop {
        let start = Instant::now();
        if shared.deadline.is_some_and(|d| start >= d) || shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let measured = start >= shared.measure_from;
        if measured
            && let Some(budget) = shared.budget
            && shared.tickets.fetch_add(1, Ordering::Relaxed) >= budget
        {
            break;
        }
        let result = issue(&mut kv, &shared, &mut rng).await;
        if matches!(result, Ok(Done::KeySpaceExhausted)) {
            break;
        }
        let end = Instant::now();
        if !measured || shared.deadline.is_some_and(|d| end > d) {
            continue;
        }
        match result {
            Ok(done) => {
                let us = u64::try_from((end - start).as_micros()).unwrap_or(u64::MAX);
                stats.latency_us.saturating_record(us.max(1));
                stats.ok += 1;
                if matches!(done, Done::TxnCompareFailed) {
                    stats.txn_compare_failed += 1;
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                let code = (status.code() as usize).min(STATUS_CODES - 1);
                stats.failed_by_code[code] += 1;
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(stats)
}

async fn issue(
    kv: &mut KvClient<Channel>,
    shared: &Shared,
    rng: &mut XorShift,
) -> Result<Done, tonic::Status> {
    match shared.workload {
        Workload::Put => put(kv, shared, rng).await,
        Workload::Get(consistency) => get(kv, shared, rng, consistency).await,
        Workload::Mixed {
            read_ratio,
            consistency,
        } => {
            if rng.chance(read_ratio) {
                get(kv, shared, rng, consistency).await
            } else {
                put(kv, shared, rng).await
            }
        }
        Workload::Txn => compare_and_swap(kv, shared, rng).await,
        Workload::Fill => fill(kv, shared).await,
    }
}

async fn put(
    kv: &mut KvClient<Channel>,
    shared: &Shared,
    rng: &mut XorShift,
) -> Result<Done, tonic::Status> {
    let n = rng.next_u64();
    let req = PutRequest {
        key: shared.keyspace.key(n as usize),
        value: shared.keyspace.value(n >> 32),
        ..Default::default()
    };
    kv.put(req).await.map(|_| Done::Plain)
}

async fn fill(kv: &mut KvClient<Channel>, shared: &Shared) -> Result<Done, tonic::Status> {
    let index = shared.next_key.fetch_add(1, Ordering::Relaxed);
    if index >= shared.keyspace.len() as u64 {
        return Ok(Done::KeySpaceExhausted);
    }
    let req = PutRequest {
        key: shared.keyspace.key(index as usize),
        value: shared.keyspace.value(index),
        ..Default::default()
    };
    kv.put(req).await.map(|_| Done::Plain)
}

async fn get(
    kv: &mut KvClient<Channel>,
    shared: &Shared,
    rng: &mut XorShift,
    consistency: ReadConsistency,
) -> Result<Done, tonic::Status> {
    let req = RangeRequest {
        key: shared.keyspace.key(rng.next_u64() as usize),
        serializable: consistency == ReadConsistency::Serializable,
        ..Default::default()
    };
    kv.range(req).await.map(|_| Done::Plain)
}

/// A compare-and-swap on one key: "if its mod revision is still the one I
/// last saw, write a new value; otherwise tell me the current one". The last
/// seen revision of every key is shared by all clients, so clients race each
/// other like real optimistic writers do.
async fn compare_and_swap(
    kv: &mut KvClient<Channel>,
    shared: &Shared,
    rng: &mut XorShift,
) -> Result<Done, tonic::Status> {
    let index = rng.below(shared.keyspace.len());
    let key = shared.keyspace.key(index);
    let seen = shared.revisions[index].load(Ordering::Relaxed);
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::ModRevision(seen)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value: shared.keyspace.value(rng.next_u64()),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key,
                keys_only: true,
                ..Default::default()
            })),
        }],
    };
    let resp = kv.txn(req).await?.into_inner();
    if resp.succeeded {
        let revision = resp.header.map_or(0, |h| h.revision);
        shared.revisions[index].store(revision, Ordering::Relaxed);
        return Ok(Done::Plain);
    }
    let current = resp
        .responses
        .first()
        .and_then(|r| match &r.response {
            Some(response_op::Response::ResponseRange(range)) => Some(range),
            _ => None,
        })
        .and_then(|range| range.kvs.first())
        .map_or(0, |kv| kv.mod_revision);
    shared.revisions[index].store(current, Ordering::Relaxed);
    Ok(Done::TxnCompareFailed)
}
