//! State machine apply throughput: `KvStore::apply` of 256-byte puts over a
//! 20k-key space, for several batch sizes (one redb write transaction per
//! batch, as the applier does), so the fixed cost of a transaction shows
//! next to the cost of each put.

use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use raftkv::raft::{Entry, EntryPayload, LogIndex, Term};
use raftkv::storage::{Command, KvStore, Limits, Op};

const KEYS: u64 = 20_000;

fn put(i: u64) -> EntryPayload {
    let cmd = Command::new(Op::Put {
        key: Bytes::from(format!("key-{:08}", (i * 7919) % KEYS)),
        value: Bytes::from(vec![(i % 251) as u8; 256]),
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
        lease: 0,
    });
    EntryPayload::Command(cmd.encode())
}

fn entries(from: u64, n: u64) -> Vec<Entry> {
    (from..from + n)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(i),
            payload: put(i),
        })
        .collect()
}

fn kv_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let kv = KvStore::open(dir.path(), Limits::default()).unwrap_or_else(|e| panic!("open: {e}"));
    let mut next = 1;
    // Every key exists: the puts below update, as a steady state does.
    while next <= KEYS {
        kv.apply(&entries(next, 1000))
            .unwrap_or_else(|e| panic!("fill: {e}"));
        next += 1000;
    }
    let mut group = c.benchmark_group("kv_apply");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for batch in [1u64, 8, 64, 512] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::new("puts_256B", batch), &batch, |b, &n| {
            b.iter(|| {
                let batch = entries(next, n);
                next += n;
                kv.apply(&batch).unwrap_or_else(|e| panic!("apply: {e}"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kv_apply);
criterion_main!(benches);
