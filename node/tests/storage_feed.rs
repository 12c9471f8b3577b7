//! The state machine's change feed against its own history: what the feed
//! announces while entries apply is exactly what a replay of history reads
//! back afterwards (same changes, same order, same previous values), the
//! announcements cover contiguous revisions, a replay never splits a
//! revision, and a compacted start or an installed snapshot is reported.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use raftkv::raft::{Entry, EntryPayload, LogIndex, Term};
use raftkv::storage::{
    Applied, Change, ChangeKind, Command, KvStore, Limits, Op, Replay, ReplayRequest, TxnOp,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn entry(index: u64, op: Op) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Command(
            Command {
                request_id: None,
                auth: None,
                op,
            }
            .encode(),
        ),
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: b(key),
        value: b(value),
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
        lease: 0,
    }
}

fn delete(key: &str, range_end: &str) -> Op {
    Op::DeleteRange {
        key: b(key),
        range_end: b(range_end),
        prev_kv: false,
    }
}

fn txn_put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: b(key),
        value: b(value),
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
        lease: 0,
    }
}

/// A mix of puts, overwrites, deletes, range deletes and transactions,
/// applied in batches of three entries.
fn workload() -> Vec<Op> {
    let mut ops = Vec::new();
    for i in 0..30 {
        let k = format!("k{}", i % 5);
        ops.push(put(&k, &format!("v{i}")));
        if i % 4 == 0 {
            ops.push(delete(&k, ""));
        }
        if i % 7 == 0 {
            ops.push(Op::Txn {
                compares: vec![],
                success: vec![
                    txn_put("t1", &i.to_string()),
                    TxnOp::DeleteRange {
                        key: b("k"),
                        range_end: b("k3"),
                        prev_kv: false,
                    },
                    txn_put("t2", &i.to_string()),
                ],
                failure: vec![],
            });
        }
        if i % 11 == 0 {
            ops.push(delete("a", "\0"));
        }
    }
    // A delete of nothing writes nothing, announces nothing.
    ops.push(delete("absent", ""));
    ops
}

fn apply_all(store: &KvStore, ops: Vec<Op>) {
    let entries: Vec<Entry> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| entry(i as u64 + 1, op))
        .collect();
    for batch in entries.chunks(3) {
        store.apply(batch).unwrap();
    }
}

fn replay_all(store: &KvStore, from: i64, max_changes: usize) -> (Vec<Change>, i64) {
    match store
        .replay(&ReplayRequest {
            from,
            key: vec![0],
            range_end: vec![0],
            prev_kv: true,
            max_changes,
        })
        .unwrap()
    {
        Replay::Changes {
            changes, through, ..
        } => (changes, through),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_feed_announces_exactly_what_history_replays() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let mut feed = store.subscribe();
    apply_all(&store, workload());

    let mut announced = Vec::new();
    let mut covered = 1;
    while let Ok(applied) = feed.try_recv() {
        match applied.as_ref() {
            Applied::Changes {
                after,
                revision,
                changes,
            } => {
                assert_eq!(*after, covered, "announcements are contiguous");
                assert!(changes.iter().all(|c| c.revision() > *after));
                assert!(changes.iter().all(|c| c.revision() <= *revision));
                covered = *revision;
                announced.extend(changes.iter().cloned());
            }
            other => panic!("nothing jumped here: {other:?}"),
        }
    }
    assert_eq!(covered, store.revision());
    assert!(announced.len() > 50, "{}", announced.len());
    assert!(announced.iter().any(|c| c.kind == ChangeKind::Delete));

    let (replayed, through) = replay_all(&store, 1, usize::MAX);
    assert_eq!(through, store.revision());
    assert_eq!(replayed, announced);
    // A delete is etcd's tombstone: the key and the revision, nothing else.
    let d = announced
        .iter()
        .find(|c| c.kind == ChangeKind::Delete)
        .unwrap();
    assert!(d.kv.value.is_empty() && d.kv.version == 0 && d.kv.create_revision == 0);
    assert!(d.prev.is_some());
}

#[test]
fn a_replay_stops_at_a_revision_boundary_and_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    apply_all(&store, workload());
    let (all, _) = replay_all(&store, 1, usize::MAX);
    let mut resumed = Vec::new();
    let mut from = 1;
    while from <= store.revision() {
        let (chunk, through) = replay_all(&store, from, 2);
        assert!(!chunk.is_empty());
        // Whole revisions only: the next change is at a later revision.
        let next = all.get(resumed.len() + chunk.len());
        assert!(next.is_none_or(|n| n.revision() > through));
        resumed.extend(chunk);
        from = through + 1;
    }
    assert_eq!(resumed, all);
}

#[test]
fn a_replay_from_below_the_compacted_revision_is_refused_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let mut ops = vec![put("a", "1"), put("a", "2"), put("a", "3")];
    ops.push(Op::Compact { revision: 3 });
    apply_all(&store, ops);
    let req = |from| ReplayRequest {
        from,
        key: b"a".to_vec(),
        range_end: vec![],
        prev_kv: true,
        max_changes: 100,
    };
    assert_eq!(
        store.replay(&req(2)).unwrap(),
        Replay::Compacted { compacted: 3 }
    );
    let Replay::Changes { changes, .. } = store.replay(&req(3)).unwrap() else {
        panic!("readable from the compacted revision on");
    };
    let revs: Vec<i64> = changes.iter().map(Change::revision).collect();
    assert_eq!(revs, vec![3, 4]);
    // The previous version of the first one is below the compaction.
    assert_eq!(changes[0].prev, None);
    assert_eq!(changes[1].prev.as_ref().unwrap().value, b("2"));
}

#[test]
fn an_installed_snapshot_is_announced_as_a_jump() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = KvStore::open(src_dir.path(), Limits::default()).unwrap();
    apply_all(&src, workload());
    let mut reader = src.snapshot().unwrap();
    let mut image = Vec::new();
    while let Some(c) = reader.next_chunk() {
        image.extend_from_slice(&c.unwrap());
    }

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = KvStore::open(dst_dir.path(), Limits::default()).unwrap();
    let mut feed = dst.subscribe();
    let mut installer = dst.begin_install().unwrap();
    installer.write_chunk(&image).unwrap();
    installer.finish().unwrap();
    let applied = feed.try_recv().unwrap();
    assert_eq!(
        *applied,
        Applied::Jumped {
            revision: src.revision()
        }
    );
    // And what it jumped over is in its history.
    assert_eq!(
        replay_all(&dst, 1, usize::MAX),
        replay_all(&src, 1, usize::MAX)
    );
}
