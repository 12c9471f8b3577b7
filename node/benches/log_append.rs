//! Log append throughput: one durable `persist` (one append to a segment, one
//! fsync) per batch of 256-byte entries, for several batch sizes, next to a
//! plain write + fsync loop on the same disk. Entries/s is the criterion
//! throughput; fsyncs per entry is 1 / batch size by construction (one
//! durable commit per batch), printed for each group. `log_read_tail`
//! measures reading the newest entries, as a leader does to replicate.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use raftkv::raft::{Entry, EntryPayload, HardState, LogIndex, NodeId, Storage, Term};
use raftkv::storage::{Identity, LogStore};

fn entries(from: u64, n: u64) -> Vec<Entry> {
    (from..from + n)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(i),
            payload: EntryPayload::Command(Bytes::from(vec![(i % 251) as u8; 256])),
        })
        .collect()
}

fn log_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for batch in [1u64, 16, 256, 1024] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let log = LogStore::open(
            dir.path(),
            Identity {
                cluster_id: 1,
                node_id: NodeId(1),
            },
        )
        .unwrap_or_else(|e| panic!("open: {e}"));
        println!(
            "batch {batch}: fsyncs per entry = {:.5}",
            1.0 / batch as f64
        );
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::new("entries_256B", batch), &batch, |b, &n| {
            b.iter(|| {
                let next = log.last_index().unwrap_or_default().next();
                let batch = entries(next.get(), n);
                let hs = HardState {
                    term: Term(1),
                    vote: Some(NodeId(1)),
                    commit: next,
                };
                log.persist(None, &batch, Some(&hs))
                    .unwrap_or_else(|e| panic!("persist: {e}"));
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("plain_fsync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let mut file = std::fs::File::create(dir.path().join("fsync-loop"))
        .unwrap_or_else(|e| panic!("create: {e}"));
    let block = [0x5au8; 256];
    group.bench_function("write_256B_fsync", |b| {
        b.iter(|| {
            file.write_all(&block)
                .and_then(|()| file.sync_all())
                .unwrap_or_else(|e| panic!("write: {e}"));
        })
    });
    group.finish();
}

/// What the leader pays to read recent entries for replication; decides
/// whether an in-memory tail cache is worth having.
fn log_read_tail(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let log = LogStore::open(
        dir.path(),
        Identity {
            cluster_id: 1,
            node_id: NodeId(1),
        },
    )
    .unwrap_or_else(|e| panic!("open: {e}"));
    for start in (1..10_000).step_by(1000) {
        log.persist(None, &entries(start, 1000), None)
            .unwrap_or_else(|e| panic!("persist: {e}"));
    }
    let last = log.last_index().unwrap_or_default();
    let mut group = c.benchmark_group("log_read_tail");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [1u64, 64] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("entries_256B", n), &n, |b, &n| {
            b.iter(|| {
                log.entries(LogIndex(last.get() + 1 - n), last.next(), None)
                    .unwrap_or_else(|e| panic!("read: {e}"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, log_append, log_read_tail);
criterion_main!(benches);
