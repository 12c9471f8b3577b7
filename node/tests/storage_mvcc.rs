//! The state machine against a model of etcd's MVCC semantics: any sequence
//! of puts, deletes, (nested) transactions and compactions, applied in
//! batches with restarts and snapshot installs in between, then a read at
//! every revision the model still has matches the model, compacted and
//! future revisions fail like etcd's, and compaction really deletes history.
//!
//! The model keeps the whole key space as of every revision (a map per
//! revision): as plain as etcd's semantics can be written.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use raftkv::raft::{Entry, EntryPayload, LogIndex, Membership, NodeId, Term};
use raftkv::storage::{
    ApplyOutcome, Command, Compare, CompareResult, CompareTarget, KeyValue, KvError, KvStore,
    Limits, Op, RangeRequest, RangeResult, SortOrder, SortTarget, TxnOp, TxnOpResult,
};

type Space = BTreeMap<Vec<u8>, KeyValue>;

#[derive(Clone)]
struct Model {
    /// `states[r]`: every key as of revision `r` (index 0 unused).
    states: Vec<Space>,
    compacted: i64,
}

impl Default for Model {
    fn default() -> Self {
        // A fresh store is at revision 1, empty.
        Model {
            states: vec![Space::new(), Space::new()],
            compacted: 0,
        }
    }
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

fn matching(space: &Space, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
    space
        .values()
        .filter(|kv| in_range(&kv.key, key, end))
        .cloned()
        .collect()
}

fn range_in(space: &Space, r: &RangeRequest, current: i64) -> RangeResult {
    let all = matching(space, &r.key, &r.range_end);
    let count = all.len() as u64;
    if r.count_only {
        return RangeResult {
            count,
            revision: current,
            ..Default::default()
        };
    }
    let mut kvs: Vec<KeyValue> = all
        .into_iter()
        .filter(|kv| {
            (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
        })
        .collect();
    let order = match (r.sort_order(), r.sort_target()) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let o = match r.sort_target() {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                o.reverse()
            } else {
                o
            }
        });
    }
    let mut more = false;
    if r.limit != 0 && kvs.len() as u64 > r.limit {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    RangeResult {
        kvs,
        count,
        more,
        revision: current,
    }
}

fn holds(kv: Option<&KeyValue>, c: &Compare) -> bool {
    let ord = match (&c.target, kv) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.cmp(v),
        (CompareTarget::Version(n), _) => kv.map_or(0, |k| k.version).cmp(n),
        (CompareTarget::CreateRevision(n), _) => kv.map_or(0, |k| k.create_revision).cmp(n),
        (CompareTarget::ModRevision(n), _) => kv.map_or(0, |k| k.mod_revision).cmp(n),
        (CompareTarget::Lease(n), _) => kv.map_or(0, |k| k.lease).cmp(n),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
        CompareResult::NotEqual => ord.is_ne(),
    }
}

fn compares_hold(space: &Space, compares: &[Compare]) -> bool {
    compares.iter().all(|c| {
        let m = matching(space, &c.key, &c.range_end);
        if m.is_empty() {
            holds(None, c)
        } else {
            m.iter().all(|kv| holds(Some(kv), c))
        }
    })
}

impl Model {
    fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn latest(&self) -> &Space {
        self.states.last().unwrap()
    }

    fn check_revision(&self, rev: i64) -> Result<(), KvError> {
        if rev > self.current() {
            Err(KvError::FutureRevision)
        } else if rev > 0 && rev < self.compacted {
            Err(KvError::Compacted)
        } else {
            Ok(())
        }
    }

    fn read(&self, r: &RangeRequest) -> Result<RangeResult, KvError> {
        self.check_revision(r.revision)?;
        let space = if r.revision == 0 {
            self.latest()
        } else {
            &self.states[r.revision as usize]
        };
        Ok(range_in(space, r, self.current()))
    }

    fn apply(&mut self, op: &Op) -> ApplyOutcome {
        let current = self.current();
        let next = current + 1;
        let mut work = self.latest().clone();
        match op {
            Op::Put {
                key,
                value,
                prev_kv,
                ignore_value,
                ignore_lease,
                ..
            } => {
                let prev = work.get(key.as_ref()).cloned();
                if (*ignore_value || *ignore_lease) && prev.is_none() {
                    return ApplyOutcome::Rejected(KvError::KeyNotFound);
                }
                let value = if *ignore_value {
                    prev.as_ref().unwrap().value.clone()
                } else {
                    value.clone()
                };
                put(&mut work, key, value, next);
                self.states.push(work);
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
                let gone = delete(&mut work, key, range_end);
                if !gone.is_empty() {
                    self.states.push(work);
                }
                ApplyOutcome::Delete {
                    revision: self.current(),
                    deleted: gone.len() as u64,
                    prev_kvs: if *prev_kv { gone } else { vec![] },
                }
            }
            Op::Txn {
                compares,
                success,
                failure,
            } => {
                let before = self.latest().clone();
                let ok = compares_hold(&before, compares);
                if let Err(e) = self.check_branch(&before, if ok { success } else { failure }) {
                    return ApplyOutcome::Rejected(e);
                }
                let mut wrote = false;
                let responses = self.run(
                    &before,
                    &mut work,
                    if ok { success } else { failure },
                    next,
                    &mut wrote,
                );
                if wrote {
                    self.states.push(work);
                }
                let mut responses = responses;
                set_revisions(&mut responses, self.current());
                ApplyOutcome::Txn {
                    revision: self.current(),
                    succeeded: ok,
                    responses,
                }
            }
            Op::Compact { revision } => {
                if *revision <= self.compacted {
                    return ApplyOutcome::Rejected(KvError::Compacted);
                }
                if *revision > current {
                    return ApplyOutcome::Rejected(KvError::FutureRevision);
                }
                self.compacted = *revision;
                ApplyOutcome::Compact { revision: current }
            }
            // Alarms do not touch the keyspace; the generator makes none.
            Op::Alarm { .. } => panic!("the model does not generate alarm commands"),
            Op::Auth(_) => panic!("the model does not generate auth commands"),
            // Leases have their own tests (storage/lease.rs).
            Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } | Op::LeaseCheckpoint { .. } => {
                panic!("the model does not generate lease commands")
            }
        }
    }

    /// etcd checks the chosen path (nested compares decided on the state
    /// before the transaction) before running it.
    fn check_branch(&self, before: &Space, ops: &[TxnOp]) -> Result<(), KvError> {
        for op in ops {
            match op {
                TxnOp::Range(r) => self.check_revision(r.revision)?,
                TxnOp::Put {
                    key,
                    ignore_value,
                    ignore_lease,
                    ..
                } => {
                    if (*ignore_value || *ignore_lease) && !before.contains_key(key.as_ref()) {
                        return Err(KvError::KeyNotFound);
                    }
                }
                TxnOp::DeleteRange { .. } => {}
                TxnOp::Txn {
                    compares,
                    success,
                    failure,
                } => {
                    let ok = compares_hold(before, compares);
                    self.check_branch(before, if ok { success } else { failure })?;
                }
            }
        }
        Ok(())
    }

    fn run(
        &self,
        before: &Space,
        work: &mut Space,
        ops: &[TxnOp],
        next: i64,
        wrote: &mut bool,
    ) -> Vec<TxnOpResult> {
        let mut out = vec![];
        for op in ops {
            out.push(match op {
                TxnOp::Range(r) => {
                    let space = if r.revision == 0 {
                        &*work
                    } else {
                        &self.states[r.revision as usize]
                    };
                    TxnOpResult::Range(range_in(space, r, self.current()))
                }
                TxnOp::Put {
                    key,
                    value,
                    prev_kv,
                    ignore_value,
                    ..
                } => {
                    let value = match work.get(key.as_ref()) {
                        Some(p) if *ignore_value => p.value.clone(),
                        _ => value.clone(),
                    };
                    *wrote = true;
                    let prev = put(work, key, value, next);
                    TxnOpResult::Put {
                        prev_kv: prev.filter(|_| *prev_kv),
                    }
                }
                TxnOp::DeleteRange {
                    key,
                    range_end,
                    prev_kv,
                } => {
                    let gone = delete(work, key, range_end);
                    *wrote |= !gone.is_empty();
                    TxnOpResult::DeleteRange {
                        deleted: gone.len() as u64,
                        prev_kvs: if *prev_kv { gone } else { vec![] },
                    }
                }
                TxnOp::Txn {
                    compares,
                    success,
                    failure,
                } => {
                    let ok = compares_hold(before, compares);
                    let responses = self.run(
                        before,
                        work,
                        if ok { success } else { failure },
                        next,
                        wrote,
                    );
                    TxnOpResult::Txn {
                        succeeded: ok,
                        responses,
                    }
                }
            });
        }
        out
    }
}

fn set_revisions(rs: &mut [TxnOpResult], revision: i64) {
    for r in rs {
        match r {
            TxnOpResult::Range(r) => r.revision = revision,
            TxnOpResult::Txn { responses, .. } => set_revisions(responses, revision),
            _ => {}
        }
    }
}

fn put(space: &mut Space, key: &Bytes, value: Bytes, rev: i64) -> Option<KeyValue> {
    let prev = space.get(key.as_ref()).cloned();
    space.insert(
        key.to_vec(),
        KeyValue {
            key: key.clone(),
            value,
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            // The model grants no leases.
            lease: 0,
        },
    );
    prev
}

fn delete(space: &mut Space, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
    let gone = matching(space, key, end);
    for kv in &gone {
        space.remove(kv.key.as_ref());
    }
    gone
}

// ---- generators -------------------------------------------------------------

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
    let shape = (key(), range_end(), 0u64..3, any::<bool>(), any::<bool>());
    let extras = (
        prop_oneof![3 => Just(0i64), 1 => 0i64..12],
        0i32..3,
        0i32..5,
        prop_oneof![3 => Just(0i64), 1 => 0i64..10],
        prop_oneof![3 => Just(0i64), 1 => 0i64..10],
    );
    (shape, extras).prop_map(
        |(
            (key, range_end, limit, keys_only, count_only),
            (revision, order, target, min_mod, max_create),
        )| {
            RangeRequest {
                key,
                range_end,
                limit,
                keys_only,
                count_only,
                revision,
                sort_order: order,
                sort_target: target,
                min_mod_revision: min_mod,
                max_create_revision: max_create,
                ..Default::default()
            }
        },
    )
}

fn put_op() -> impl Strategy<Value = (Bytes, Bytes, bool, bool)> {
    (key(), value(), any::<bool>(), prop::bool::weighted(0.1))
}

fn leaf_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        range_req().prop_map(TxnOp::Range),
        put_op().prop_map(|(key, value, prev_kv, ignore_value)| TxnOp::Put {
            key,
            value: if ignore_value { Bytes::new() } else { value },
            prev_kv,
            ignore_value,
            ignore_lease: false,
            lease: 0,
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

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        4 => leaf_op(),
        1 => (
            prop::collection::vec(compare(), 0..2),
            prop::collection::vec(leaf_op(), 0..3),
            prop::collection::vec(leaf_op(), 0..3),
        ).prop_map(|(compares, success, failure)| TxnOp::Txn { compares, success, failure }),
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
        4 => put_op().prop_map(|(key, value, prev_kv, ignore_value)| Op::Put {
            key,
            value: if ignore_value { Bytes::new() } else { value },
            prev_kv,
            ignore_value,
            ignore_lease: false,
            lease: 0,
        }),
        1 => (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| Op::DeleteRange { key, range_end, prev_kv }),
        2 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(txn_op(), 0..4),
            prop::collection::vec(txn_op(), 0..4),
        ).prop_map(|(compares, success, failure)| Op::Txn { compares, success, failure }),
        1 => (0i64..16).prop_map(|revision| Op::Compact { revision }),
    ]
}

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

/// Every revision the model can still read, read in full from the store.
fn assert_history_matches(store: &KvStore, model: &Model) {
    assert_eq!(store.revision(), model.current());
    assert_eq!(store.compacted_revision(), model.compacted);
    for rev in 0..=model.current() + 1 {
        let all = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            revision: rev,
            ..Default::default()
        };
        let got = store.range(&all).map_err(|e| match e {
            raftkv::storage::StoreError::InvalidRequest(e) => e,
            other => panic!("{other}"),
        });
        assert_eq!(got, model.read(&all), "read at revision {rev}");
    }
}

fn voters() -> Membership {
    Membership::with_voters([(NodeId(1), Bytes::new())])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn history_behaves_like_the_model_at_every_revision(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..6), 1..10),
        reads in prop::collection::vec(range_req(), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KvStore::open(dir.path(), Limits::default()).unwrap();
        store.adopt_membership(&voters()).unwrap();
        let mut model = Model::default();
        let mut index = 0;
        for (i, batch) in batches.into_iter().enumerate() {
            // What the leader refuses never reaches the log.
            let batch: Vec<Op> = batch
                .into_iter()
                .filter(|op| Limits::default().check_op(op).is_ok())
                .collect();
            let entries: Vec<_> = batch.iter().map(|op| { index += 1; command_entry(index, op.clone()) }).collect();
            let expected: Vec<_> = batch.iter().zip(&entries).map(|(op, e)| (e.index, model.apply(op))).collect();
            let got = store.apply(&entries).unwrap();
            prop_assert_eq!(got, expected);
            assert_history_matches(&store, &model);
            for r in &reads {
                let got = store.range(r).map_err(|e| match e {
                    raftkv::storage::StoreError::InvalidRequest(e) => e,
                    other => panic!("{other}"),
                });
                prop_assert_eq!(got, model.read(r), "{:?}", r);
            }
            match i % 3 {
                1 => {
                    drop(store);
                    store = KvStore::open(dir.path(), Limits::default()).unwrap();
                    prop_assert_eq!(store.applied_index(), LogIndex(index));
                    assert_history_matches(&store, &model);
                }
                2 => {
                    // Move the whole state machine through a snapshot image.
                    let other = tempfile::tempdir().unwrap();
                    let installed = KvStore::open(other.path(), Limits::default()).unwrap();
                    let mut reader = store.snapshot().unwrap();
                    let mut installer = installed.begin_install().unwrap();
                    while let Some(chunk) = reader.next_chunk() {
                        installer.write_chunk(&chunk.unwrap()).unwrap();
                    }
                    installer.finish().unwrap();
                    assert_history_matches(&installed, &model);
                }
                _ => {}
            }
        }
    }
}

#[test]
fn a_fresh_store_is_at_revision_one_and_the_first_write_makes_two() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    assert_eq!(store.revision(), 1);
    let out = store
        .apply(&[command_entry(
            1,
            Op::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::new(),
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
                lease: 0,
            },
        )])
        .unwrap();
    assert!(matches!(out[0].1, ApplyOutcome::Put { revision: 2, .. }));
}

/// The size of the state machine's history: every version stored.
fn versions_stored(dir: &std::path::Path) -> usize {
    let db = redb::Database::open(dir.join("kv.redb")).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let versions = redb::TableDefinition::<(i64, u32), (&[u8], &[u8])>::new("versions");
    let t = txn.open_table(versions).unwrap();
    redb::ReadableTableMetadata::len(&t).unwrap() as usize
}

#[test]
fn compaction_deletes_superseded_versions_in_bounded_steps() {
    let dir = tempfile::tempdir().unwrap();
    let put = |k: String| Op::Put {
        key: Bytes::from(k),
        value: Bytes::from_static(b"v"),
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
        lease: 0,
    };
    let mut index = 0;
    let mut next = |op| {
        index += 1;
        command_entry(index, op)
    };
    // 2,000 versions: 500 keys written 4 times, then 100 of them deleted.
    let mut entries = vec![];
    for round in 0..4 {
        for k in 0..500 {
            let _ = round;
            entries.push(next(put(format!("k{k:03}"))));
        }
    }
    entries.push(next(Op::DeleteRange {
        key: Bytes::from_static(b"k000"),
        range_end: Bytes::from_static(b"k100"),
        prev_kv: false,
    }));
    let compact_at = 2 + 2_000; // the revision of the delete
    entries.push(next(Op::Compact {
        revision: compact_at,
    }));
    {
        let store = KvStore::open(dir.path(), Limits::default()).unwrap();
        store.apply(&entries).unwrap();
    }
    // One step per entry, the compaction's own included: its budget alone
    // cannot delete 1,600 versions.
    let after_compact = versions_stored(dir.path());
    assert!(after_compact > 400, "{after_compact} versions left");
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let mut noops = vec![];
    for _ in 0..20 {
        index += 1;
        noops.push(Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Noop,
        });
    }
    store.apply(&noops).unwrap();
    drop(store);
    // Left: the latest version of the 400 live keys; the deleted keys are gone.
    assert_eq!(versions_stored(dir.path()), 400);
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let all = RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        revision: compact_at,
        count_only: true,
        ..Default::default()
    };
    assert_eq!(store.range(&all).unwrap().count, 400);
}
