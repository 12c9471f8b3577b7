//! The state machine against a simple in-memory model (BTreeMap +
//! revisions), restart, idempotent retries and limits.

// Test helpers outside #[test] fns may unwrap too (clippy.toml only covers
// the test fns themselves).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use raftkv::raft::{Entry, EntryPayload, LogIndex, Membership, NodeId, Term};
use raftkv::storage::{
    ApplyOutcome, Command, Compare, CompareResult, CompareTarget, KeyValue, KvError, KvStore,
    Limits, Op, RangeRequest, RangeResult, RequestId, TxnOp, TxnOpResult,
};

/// The model: etcd semantics written as plainly as possible.
#[derive(Default, Clone)]
struct Model {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

impl Model {
    fn matching(&self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        self.kvs
            .values()
            .filter(|kv| in_range(&kv.key, key, end))
            .cloned()
            .collect()
    }

    fn range(&self, r: &RangeRequest) -> RangeResult {
        let all = self.matching(&r.key, &r.range_end);
        let count = all.len() as u64;
        let mut kvs: Vec<_> = if r.count_only { vec![] } else { all };
        if r.limit != 0 {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        RangeResult {
            kvs,
            count,
            more: !r.count_only && r.limit != 0 && count > r.limit,
            revision: self.revision,
        }
    }

    fn put(&mut self, key: &Bytes, value: &Bytes, rev: i64) -> Option<KeyValue> {
        let prev = self.kvs.get(key.as_ref()).cloned();
        self.kvs.insert(
            key.to_vec(),
            KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                version: prev.as_ref().map_or(1, |p| p.version + 1),
            },
        );
        prev
    }

    fn delete(&mut self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        let gone = self.matching(key, end);
        for kv in &gone {
            self.kvs.remove(kv.key.as_ref());
        }
        gone
    }

    fn holds(kv: Option<&KeyValue>, c: &Compare) -> bool {
        let ord = match (&c.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.cmp(v),
            (CompareTarget::Version(n), _) => kv.map_or(0, |k| k.version).cmp(n),
            (CompareTarget::CreateRevision(n), _) => kv.map_or(0, |k| k.create_revision).cmp(n),
            (CompareTarget::ModRevision(n), _) => kv.map_or(0, |k| k.mod_revision).cmp(n),
        };
        match c.result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
            CompareResult::NotEqual => ord.is_ne(),
        }
    }

    fn apply(&mut self, op: &Op) -> ApplyOutcome {
        let next = self.revision + 1;
        match op {
            Op::Put {
                key,
                value,
                prev_kv,
            } => {
                let prev = self.put(key, value, next);
                self.revision = next;
                ApplyOutcome::Put {
                    revision: next,
                    prev_kv: prev.filter(|_| *prev_kv),
                }
            }
            Op::DeleteRange {
                key,
                range_end,
                prev_kv,
            } => {
                let gone = self.delete(key, range_end);
                if !gone.is_empty() {
                    self.revision = next;
                }
                ApplyOutcome::Delete {
                    revision: self.revision,
                    deleted: gone.len() as u64,
                    prev_kvs: if *prev_kv { gone } else { vec![] },
                }
            }
            Op::Txn {
                compares,
                success,
                failure,
            } => {
                let succeeded = compares.iter().all(|c| {
                    let m = self.matching(&c.key, &c.range_end);
                    if m.is_empty() {
                        Self::holds(None, c)
                    } else {
                        m.iter().all(|kv| Self::holds(Some(kv), c))
                    }
                });
                let mut wrote = false;
                let mut responses = vec![];
                for op in if succeeded { success } else { failure } {
                    responses.push(match op {
                        TxnOp::Range(r) => TxnOpResult::Range(self.range(r)),
                        TxnOp::Put {
                            key,
                            value,
                            prev_kv,
                        } => {
                            wrote = true;
                            let prev = self.put(key, value, next);
                            TxnOpResult::Put {
                                prev_kv: prev.filter(|_| *prev_kv),
                            }
                        }
                        TxnOp::DeleteRange {
                            key,
                            range_end,
                            prev_kv,
                        } => {
                            let gone = self.delete(key, range_end);
                            wrote |= !gone.is_empty();
                            TxnOpResult::DeleteRange {
                                deleted: gone.len() as u64,
                                prev_kvs: if *prev_kv { gone } else { vec![] },
                            }
                        }
                    });
                }
                if wrote {
                    self.revision = next;
                }
                for r in &mut responses {
                    if let TxnOpResult::Range(r) = r {
                        r.revision = self.revision;
                    }
                }
                ApplyOutcome::Txn {
                    revision: self.revision,
                    succeeded,
                    responses,
                }
            }
        }
    }
}

fn key() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec!["a", "b", "ba", "bb", "c", "d"])
        .prop_map(|s: &str| Bytes::copy_from_slice(s.as_bytes()))
}

fn range_end() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        2 => Just(Bytes::new()),
        1 => Just(Bytes::from_static(b"\0")),
        2 => key(),
    ]
}

fn value() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec!["", "x", "y", "zz"])
        .prop_map(|s: &str| Bytes::copy_from_slice(s.as_bytes()))
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    (key(), range_end(), 0u64..3, any::<bool>(), any::<bool>()).prop_map(
        |(key, range_end, limit, keys_only, count_only)| RangeRequest {
            key,
            range_end,
            limit,
            keys_only,
            count_only,
        },
    )
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        range_req().prop_map(TxnOp::Range),
        (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| TxnOp::Put {
            key,
            value,
            prev_kv
        }),
        (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| {
            TxnOp::DeleteRange {
                key,
                range_end,
                prev_kv,
            }
        }),
    ]
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        value().prop_map(CompareTarget::Value),
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..8).prop_map(CompareTarget::CreateRevision),
        (0i64..8).prop_map(CompareTarget::ModRevision),
    ];
    let result = prop::sample::select(vec![
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ]);
    (
        key(),
        prop_oneof![3 => Just(Bytes::new()), 1 => range_end()],
        target,
        result,
    )
        .prop_map(|(key, range_end, target, result)| Compare {
            key,
            range_end,
            target,
            result,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| Op::Put { key, value, prev_kv }),
        1 => (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| Op::DeleteRange { key, range_end, prev_kv }),
        2 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(txn_op(), 0..4),
            prop::collection::vec(txn_op(), 0..4),
        ).prop_map(|(compares, success, failure)| Op::Txn { compares, success, failure }),
    ]
}

fn command_entry(index: u64, op: Op) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Command(
            Command {
                request_id: None,
                op,
            }
            .encode(),
        ),
    }
}

fn assert_matches_model(store: &KvStore, model: &Model) {
    assert_eq!(store.revision(), model.revision);
    let all = RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    };
    assert_eq!(store.range(&all).unwrap(), model.range(&all));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn the_state_machine_behaves_like_the_model(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..6), 1..12),
        reads in prop::collection::vec(range_req(), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KvStore::open(dir.path(), Limits::default()).unwrap();
        let mut model = Model::default();
        let mut index = 0;
        for (i, batch) in batches.into_iter().enumerate() {
            let entries: Vec<_> = batch.iter().map(|op| { index += 1; command_entry(index, op.clone()) }).collect();
            let expected: Vec<_> = batch.iter().zip(&entries).map(|(op, e)| (e.index, model.apply(op))).collect();
            let got = store.apply(&entries).unwrap();
            prop_assert_eq!(got, expected);
            assert_matches_model(&store, &model);
            for r in &reads {
                prop_assert_eq!(store.range(r).unwrap(), model.range(r));
            }
            if i % 3 == 2 {
                drop(store);
                store = KvStore::open(dir.path(), Limits::default()).unwrap();
                prop_assert_eq!(store.applied_index(), LogIndex(index));
                assert_matches_model(&store, &model);
            }
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(k: &str, v: &str) -> Op {
    Op::Put {
        key: b(k),
        value: b(v),
        prev_kv: true,
    }
}

#[test]
fn revisions_and_per_key_metadata_follow_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    store
        .apply(&[
            command_entry(1, put("a", "1")),
            command_entry(2, put("a", "2")),
            command_entry(3, put("b", "1")),
        ])
        .unwrap();
    let a = store.get(b"a").unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 2, 2));
    assert_eq!(store.revision(), 3);
    // Deleting nothing does not bump the revision; deleting does.
    let out = store
        .apply(&[
            command_entry(
                4,
                Op::DeleteRange {
                    key: b("zz"),
                    range_end: Bytes::new(),
                    prev_kv: false,
                },
            ),
            command_entry(
                5,
                Op::DeleteRange {
                    key: b("a"),
                    range_end: b("c"),
                    prev_kv: false,
                },
            ),
        ])
        .unwrap();
    assert!(matches!(
        out[0].1,
        ApplyOutcome::Delete {
            revision: 3,
            deleted: 0,
            ..
        }
    ));
    assert!(matches!(
        out[1].1,
        ApplyOutcome::Delete {
            revision: 4,
            deleted: 2,
            ..
        }
    ));
    // A re-created key starts over.
    store.apply(&[command_entry(6, put("a", "3"))]).unwrap();
    let a = store.get(b"a").unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[test]
fn a_transaction_on_a_missing_key_compares_as_zero_and_bumps_the_revision_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let txn = Op::Txn {
        compares: vec![Compare {
            key: b("lock"),
            range_end: Bytes::new(),
            target: CompareTarget::CreateRevision(0),
            result: CompareResult::Equal,
        }],
        success: vec![
            TxnOp::Put {
                key: b("lock"),
                value: b("me"),
                prev_kv: false,
            },
            TxnOp::Put {
                key: b("owner"),
                value: b("me"),
                prev_kv: false,
            },
        ],
        failure: vec![TxnOp::Range(RangeRequest::key(b("lock")))],
    };
    let out = store
        .apply(&[command_entry(1, txn.clone()), command_entry(2, txn)])
        .unwrap();
    assert!(matches!(
        &out[0].1,
        ApplyOutcome::Txn {
            revision: 1,
            succeeded: true,
            ..
        }
    ));
    match &out[1].1 {
        ApplyOutcome::Txn {
            revision: 1,
            succeeded: false,
            responses,
        } => match &responses[..] {
            [TxnOpResult::Range(r)] => assert_eq!(r.kvs[0].value, b("me")),
            other => panic!("unexpected responses {other:?}"),
        },
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[test]
fn a_retried_request_gets_its_original_outcome_and_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let cmd = |seq, v: &str| Entry {
        term: Term(1),
        index: LogIndex(0),
        payload: EntryPayload::Command(
            Command {
                request_id: Some(RequestId { client_id: 7, seq }),
                op: put("k", v),
            }
            .encode(),
        ),
    };
    let at = |mut e: Entry, i| {
        e.index = LogIndex(i);
        e
    };
    let first = store.apply(&[at(cmd(1, "one"), 1)]).unwrap();
    // A retry in a later entry (and after a restart) gets the same answer.
    drop(store);
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let retry = store.apply(&[at(cmd(1, "one"), 2)]).unwrap();
    assert_eq!(first[0].1, retry[0].1);
    assert_eq!(store.revision(), 1);
    assert_eq!(store.get(b"k").unwrap().unwrap().version, 1);
    store.apply(&[at(cmd(2, "two"), 3)]).unwrap();
    assert_eq!(store.revision(), 2);
    let stale = store.apply(&[at(cmd(1, "one"), 4)]).unwrap();
    assert!(matches!(
        stale[0].1,
        ApplyOutcome::Rejected(KvError::StaleRequest { last_seq: 2, .. })
    ));
    assert_eq!(store.get(b"k").unwrap().unwrap().value, b("two"));
}

#[test]
fn a_reused_sequence_number_with_another_command_is_refused_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let cmd = |index, key: &str| Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Command(
            Command {
                request_id: Some(RequestId {
                    client_id: 7,
                    seq: 1,
                }),
                op: put(key, "v"),
            }
            .encode(),
        ),
    };
    let first = store.apply(&[cmd(1, "k1")]).unwrap();
    assert!(matches!(first[0].1, ApplyOutcome::Put { revision: 1, .. }));
    let reused = store.apply(&[cmd(2, "k2")]).unwrap();
    assert!(
        matches!(
            reused[0].1,
            ApplyOutcome::Rejected(KvError::IdempotencyConflict {
                client_id: 7,
                seq: 1
            })
        ),
        "{:?}",
        reused[0].1
    );
    assert!(store.get(b"k2").unwrap().is_none());
    // The true retry still gets its original answer.
    let retry = store.apply(&[cmd(3, "k1")]).unwrap();
    assert_eq!(retry[0].1, first[0].1);
    assert_eq!(store.revision(), 1);
}

#[test]
fn malformed_commands_are_rejected_and_the_log_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_key_bytes: 4,
        max_value_bytes: 8,
        max_txn_ops: 2,
    };
    let store = KvStore::open(dir.path(), limits).unwrap();
    let garbage = Entry {
        term: Term(1),
        index: LogIndex(1),
        payload: EntryPayload::Command(Bytes::from_static(&[0xff, 0xff, 0x01])),
    };
    let out = store
        .apply(&[
            garbage,
            command_entry(2, put("", "v")),
            command_entry(
                3,
                Op::Txn {
                    compares: vec![],
                    success: vec![TxnOp::Put {
                        key: b(""),
                        value: b("v"),
                        prev_kv: false,
                    }],
                    failure: vec![],
                },
            ),
            command_entry(4, put("k", "ok")),
        ])
        .unwrap();
    assert!(matches!(
        out[0].1,
        ApplyOutcome::Rejected(KvError::Undecodable(_))
    ));
    assert!(matches!(
        out[1].1,
        ApplyOutcome::Rejected(KvError::EmptyKey)
    ));
    assert!(matches!(
        out[2].1,
        ApplyOutcome::Rejected(KvError::EmptyKey)
    ));
    assert!(matches!(out[3].1, ApplyOutcome::Put { revision: 1, .. }));
    assert_eq!(store.applied_index(), LogIndex(4));
}

/// The leader decides about sizes once, before a command enters the log: a
/// member started with smaller limits applies what the others apply, or the
/// replicas would diverge.
#[test]
fn size_limits_are_not_re_checked_at_apply() {
    let dir = tempfile::tempdir().unwrap();
    let small = Limits {
        max_key_bytes: 4,
        max_value_bytes: 8,
        max_txn_ops: 2,
    };
    let store = KvStore::open(dir.path(), small).unwrap();
    let out = store
        .apply(&[
            command_entry(1, put("toolong", "v")),
            command_entry(2, put("k", "much too long")),
            command_entry(
                3,
                Op::Txn {
                    compares: vec![],
                    success: vec![TxnOp::Range(RangeRequest::key(b("a"))); 3],
                    failure: vec![],
                },
            ),
        ])
        .unwrap();
    assert!(matches!(out[0].1, ApplyOutcome::Put { revision: 1, .. }));
    assert!(matches!(out[1].1, ApplyOutcome::Put { revision: 2, .. }));
    assert!(matches!(out[2].1, ApplyOutcome::Txn { .. }));
    assert_eq!(store.get(b"toolong").unwrap().unwrap().value, b("v"));
    assert_eq!(store.revision(), 2);
}

fn voters(n: u64) -> Membership {
    Membership::with_voters((1..=n).map(|i| (NodeId(i), Bytes::new())))
}

#[test]
fn noop_and_membership_entries_move_the_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let out = store
        .apply(&[
            Entry {
                term: Term(2),
                index: LogIndex(1),
                payload: EntryPayload::Noop,
            },
            Entry {
                term: Term(2),
                index: LogIndex(2),
                payload: EntryPayload::Membership(voters(5)),
            },
        ])
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(store.applied_index(), LogIndex(2));
    assert_eq!(store.applied_term(), Term(2));
    drop(store);
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    assert_eq!(store.membership(), voters(5));
    assert_eq!(store.applied_index(), LogIndex(2));
}

#[test]
fn a_restart_behind_the_log_replays_and_a_current_one_skips_replays() {
    let dir = tempfile::tempdir().unwrap();
    let log: Vec<_> = (1..=10)
        .map(|i| command_entry(i, put("k", &i.to_string())))
        .collect();
    {
        // The state machine stopped at 4 while the log committed 10.
        let store = KvStore::open(dir.path(), Limits::default()).unwrap();
        store.apply(&log[..4]).unwrap();
    }
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    assert_eq!(store.applied_index(), LogIndex(4));
    // The node re-applies (applied, commit]; handing it a little more is
    // harmless: entries already applied are skipped.
    store.apply(&log[2..]).unwrap();
    assert_eq!(store.applied_index(), LogIndex(10));
    assert_eq!(store.revision(), 10);
    assert_eq!(store.get(b"k").unwrap().unwrap().version, 10);
    drop(store);
    // Current: a full replay changes nothing.
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    assert!(store.apply(&log).unwrap().is_empty());
    assert_eq!(store.revision(), 10);
    // A gap is refused.
    let gap = store
        .apply(&[command_entry(12, put("k", "x"))])
        .unwrap_err();
    assert!(gap.to_string().contains("cannot apply entry 12"), "{gap}");
}

#[test]
fn a_kv_file_that_is_not_ours_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kv.redb"), b"not a database at all").unwrap();
    let err = KvStore::open(dir.path(), Limits::default()).unwrap_err();
    assert!(err.to_string().contains("kv.redb"), "{err}");
}

#[test]
fn an_unknown_kv_format_or_a_corrupt_record_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    drop(KvStore::open(dir.path(), Limits::default()).unwrap());
    let meta = redb::TableDefinition::<&str, &[u8]>::new("meta");
    let write_state = |bytes: &[u8]| {
        let db = redb::Database::open(dir.path().join("kv.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(meta)
            .unwrap()
            .insert("state", bytes)
            .unwrap();
        txn.commit().unwrap();
    };
    // protobuf: format_version = 42
    write_state(&[0x08, 42]);
    let err = KvStore::open(dir.path(), Limits::default()).unwrap_err();
    assert!(err.to_string().contains("kv.redb"), "{err}");
    assert!(
        err.to_string().contains("unknown format version 42"),
        "{err}"
    );
    write_state(&[0x0a, 0xff, 0xff]);
    let err = KvStore::open(dir.path(), Limits::default()).unwrap_err();
    assert!(
        err.to_string().contains("kv.redb: stored state is corrupt"),
        "{err}"
    );
}
