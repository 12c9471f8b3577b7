//! The state machine's revisions and metadata, restart, idempotent retries
//! and limits. (Its behaviour against a model of etcd's semantics, history
//! included, is `storage_mvcc.rs`.)

// Test helpers outside #[test] fns may unwrap too (clippy.toml only covers
// the test fns themselves).
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use raftkv::raft::{Entry, EntryPayload, LogIndex, Membership, NodeId, Term};
use raftkv::storage::{
    ApplyOutcome, Command, Compare, CompareResult, CompareTarget, KvError, KvStore, Limits, Op,
    RangeRequest, RequestId, TxnOp, TxnOpResult,
};

fn command_entry(index: u64, op: Op) -> Entry {
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

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(k: &str, v: &str) -> Op {
    Op::Put {
        key: b(k),
        value: b(v),
        prev_kv: true,
        ignore_value: false,
        ignore_lease: false,
        lease: 0,
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
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    assert_eq!(store.revision(), 4);
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
            revision: 4,
            deleted: 0,
            ..
        }
    ));
    assert!(matches!(
        out[1].1,
        ApplyOutcome::Delete {
            revision: 5,
            deleted: 2,
            ..
        }
    ));
    // A re-created key starts over.
    store.apply(&[command_entry(6, put("a", "3"))]).unwrap();
    let a = store.get(b"a").unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (6, 6, 1));
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
                ignore_value: false,
                ignore_lease: false,
                lease: 0,
            },
            TxnOp::Put {
                key: b("owner"),
                value: b("me"),
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
                lease: 0,
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
            revision: 2,
            succeeded: true,
            ..
        }
    ));
    match &out[1].1 {
        ApplyOutcome::Txn {
            revision: 2,
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
                auth: None,
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
    assert_eq!(store.revision(), 2);
    assert_eq!(store.get(b"k").unwrap().unwrap().version, 1);
    store.apply(&[at(cmd(2, "two"), 3)]).unwrap();
    assert_eq!(store.revision(), 3);
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
                auth: None,
                op: put(key, "v"),
            }
            .encode(),
        ),
    };
    let first = store.apply(&[cmd(1, "k1")]).unwrap();
    assert!(matches!(first[0].1, ApplyOutcome::Put { revision: 2, .. }));
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
    assert_eq!(store.revision(), 2);
}

#[test]
fn malformed_commands_are_rejected_and_the_log_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_key_bytes: 4,
        max_value_bytes: 8,
        max_txn_ops: 2,
        ..Limits::default()
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
                        ignore_value: false,
                        ignore_lease: false,
                        lease: 0,
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
    assert!(matches!(out[3].1, ApplyOutcome::Put { revision: 2, .. }));
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
        ..Limits::default()
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
    assert!(matches!(out[0].1, ApplyOutcome::Put { revision: 2, .. }));
    assert!(matches!(out[1].1, ApplyOutcome::Put { revision: 3, .. }));
    assert!(matches!(out[2].1, ApplyOutcome::Txn { .. }));
    assert_eq!(store.get(b"toolong").unwrap().unwrap().value, b("v"));
    assert_eq!(store.revision(), 3);
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
    assert_eq!(store.revision(), 11);
    assert_eq!(store.get(b"k").unwrap().unwrap().version, 10);
    drop(store);
    // Current: a full replay changes nothing.
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    assert!(store.apply(&log).unwrap().is_empty());
    assert_eq!(store.revision(), 11);
    // A gap is refused.
    let gap = store
        .apply(&[command_entry(12, put("k", "x"))])
        .unwrap_err();
    assert!(gap.to_string().contains("cannot apply entry 12"), "{gap}");
}

#[test]
fn applying_never_syncs_and_sync_due_says_when_to() {
    use raftkv::storage::DURABLE_EVERY_ENTRIES;
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let log: Vec<_> = (1..=DURABLE_EVERY_ENTRIES)
        .map(|i| command_entry(i, put("k", &i.to_string())))
        .collect();
    store.apply(&log[..log.len() - 1]).unwrap();
    assert!(!store.sync_due());
    // The applier answers the batch first, then syncs: apply alone leaves
    // it due, however many entries it applied.
    store.apply(&log[log.len() - 1..]).unwrap();
    assert!(store.sync_due());
    store.sync().unwrap();
    assert!(!store.sync_due());
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
