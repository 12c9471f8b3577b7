//! The durable log against `MemStorage` as the model, with a reopen after
//! every step, and the refusals to open a file that is not ours.

// Test helpers outside #[test] fns may unwrap too (clippy.toml only covers
// the test fns themselves).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use raftkv::raft::{
    Entry, EntryPayload, HardState, LogIndex, MemStorage, Membership, NodeId, Snapshot,
    SnapshotMeta, Storage, StorageError, Term,
};
use raftkv::storage::{Disk, FaultyDisk, Identity, LEGACY_LOG_FILE, LOG_DIR, LogStore, StoreError};

const ID: Identity = Identity {
    cluster_id: 0xc1,
    node_id: NodeId(1),
};

fn voters(n: u64) -> Membership {
    Membership::with_voters((1..=n).map(|i| (NodeId(i), Bytes::from(format!("n{i}")))))
}

fn entry(index: u64, term: u64) -> Entry {
    let payload = match index % 7 {
        0 => EntryPayload::Noop,
        3 => EntryPayload::Membership(voters(index % 4 + 1)),
        _ => EntryPayload::Command(Bytes::from(format!("cmd {index} of term {term}"))),
    };
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload,
    }
}

/// Every question the core may ask gets the same answer from both.
fn assert_same(store: &LogStore, model: &MemStorage) {
    assert_eq!(
        store.initial_state().unwrap(),
        model.initial_state().unwrap()
    );
    let first = model.first_index().unwrap();
    let last = model.last_index().unwrap();
    assert_eq!(store.first_index().unwrap(), first);
    assert_eq!(store.last_index().unwrap(), last);
    assert_eq!(store.snapshot().unwrap(), model.snapshot().unwrap());
    for i in first.prev().get().saturating_sub(1)..=last.get() + 1 {
        assert_eq!(
            store.term(LogIndex(i)),
            model.term(LogIndex(i)),
            "term({i})"
        );
    }
    assert_eq!(
        store.entries(first, last.next(), None),
        model.entries(first, last.next(), None)
    );
    assert_eq!(
        store.entries(first, last.next(), Some(100)),
        model.entries(first, last.next(), Some(100))
    );
    if first.get() > 1 {
        assert_eq!(
            store.entries(first.prev(), last.next(), None),
            Err(StorageError::Compacted(first.prev()))
        );
    }
    assert_eq!(
        store.entries(first, last.plus(2), None),
        Err(StorageError::Unavailable(last.plus(2)))
    );
}

#[derive(Clone, Debug)]
enum Step {
    /// Append `n` entries of `term` starting `back` entries before the end.
    Append {
        back: u64,
        n: u64,
        term: u64,
    },
    Commit,
    /// Compact at `frac` of the way through the committed part of the log.
    Compact {
        frac: f64,
    },
    /// Install a received snapshot `ahead` entries past the last index.
    Snapshot {
        ahead: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..4, 0u64..6, 0u64..3).prop_map(|(back, n, term)| Step::Append { back, n, term }),
        2 => Just(Step::Commit),
        1 => (0.0f64..1.0).prop_map(|frac| Step::Compact { frac }),
        1 => (0u64..5).prop_map(|ahead| Step::Snapshot { ahead }),
    ]
}

fn run(dir: &Path, steps: &[Step]) {
    let mut store = LogStore::open(dir, ID).unwrap();
    assert!(store.is_new());
    store.bootstrap(&voters(3)).unwrap();
    let mut model = MemStorage::new(voters(3));
    let mut term = 1;
    for s in steps {
        match *s {
            Step::Append {
                back,
                n,
                term: bump,
            } => {
                term += bump;
                let first = model.first_index().unwrap();
                let start = model
                    .last_index()
                    .unwrap()
                    .next()
                    .get()
                    .saturating_sub(back);
                let start = start.max(first.get());
                let entries: Vec<_> = (start..start + n).map(|i| entry(i, term)).collect();
                model.append(&entries).unwrap();
                // Commit must never exceed what is stored.
                let mut hs = model.hard_state();
                hs.term = Term(term);
                hs.commit = hs.commit.min(model.last_index().unwrap());
                hs.vote = Some(NodeId(term % 3 + 1));
                model.set_hard_state(hs);
                store.persist(None, &entries, Some(&hs)).unwrap();
            }
            Step::Commit => {
                let mut hs = model.hard_state();
                hs.commit = model.last_index().unwrap();
                model.set_hard_state(hs);
                store.persist(None, &[], Some(&hs)).unwrap();
            }
            Step::Compact { frac } => {
                let base = model.first_index().unwrap().prev().get();
                let commit = model.hard_state().commit.get();
                if commit > base {
                    let at = LogIndex(base + 1 + ((commit - base - 1) as f64 * frac) as u64);
                    let membership = store.membership_at(at).unwrap();
                    model.compact(at, membership, Bytes::new()).unwrap();
                    store.compact_to(at).unwrap();
                }
            }
            Step::Snapshot { ahead } => {
                term += 1;
                let meta = SnapshotMeta {
                    index: model.last_index().unwrap().plus(ahead),
                    term: Term(term),
                    membership: voters(ahead % 3 + 1),
                };
                model.apply_snapshot(Snapshot {
                    meta: meta.clone(),
                    data: Bytes::new(),
                });
                store.persist(Some(&meta), &[], None).unwrap();
            }
        }
        assert_same(&store, &model);
        drop(store);
        store = LogStore::open(dir, ID).unwrap();
        assert!(!store.recovered_after_crash());
        assert_same(&store, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn the_log_matches_mem_storage_after_every_step_and_reopen(
        steps in prop::collection::vec(step(), 1..30)
    ) {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), &steps);
    }
}

#[test]
fn the_membership_in_force_at_an_index_comes_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), ID).unwrap();
    store.bootstrap(&voters(1)).unwrap();
    let entries: Vec<_> = (1..=5).map(|i| entry(i, 1)).collect(); // index 3 is a membership entry
    store.persist(None, &entries, None).unwrap();
    assert_eq!(store.membership_at(LogIndex(2)).unwrap(), voters(1));
    assert_eq!(store.membership_at(LogIndex(5)).unwrap(), voters(4));
}

#[test]
fn a_snapshot_entries_and_hard_state_are_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), ID).unwrap();
    store.bootstrap(&voters(3)).unwrap();
    store
        .persist(None, &[entry(1, 1), entry(2, 1)], None)
        .unwrap();
    let meta = SnapshotMeta {
        index: LogIndex(10),
        term: Term(2),
        membership: voters(2),
    };
    let hs = HardState {
        term: Term(3),
        vote: Some(NodeId(2)),
        commit: LogIndex(11),
    };
    store
        .persist(Some(&meta), &[entry(11, 3), entry(12, 3)], Some(&hs))
        .unwrap();
    drop(store);
    let store = LogStore::open(dir.path(), ID).unwrap();
    assert_eq!(store.first_index().unwrap(), LogIndex(11));
    assert_eq!(store.last_index().unwrap(), LogIndex(12));
    assert_eq!(store.term(LogIndex(10)).unwrap(), Term(2));
    assert_eq!(store.hard_state(), hs);
    assert_eq!(store.initial_state().unwrap().membership, voters(2));
}

#[test]
fn appends_that_would_break_the_log_are_refused_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), ID).unwrap();
    store.persist(None, &[entry(1, 1)], None).unwrap();
    let gap = store.persist(None, &[entry(3, 1)], None).unwrap_err();
    assert!(matches!(gap, StoreError::InvalidAppend { .. }), "{gap}");
    let holes = store
        .persist(None, &[entry(2, 1), entry(4, 1)], None)
        .unwrap_err();
    assert!(matches!(holes, StoreError::InvalidAppend { .. }), "{holes}");
    store.persist(None, &[entry(2, 1)], None).unwrap();
    assert_eq!(store.last_index().unwrap(), LogIndex(2));
    let uncommitted = store.compact_to(LogIndex(2)).unwrap_err();
    assert!(
        uncommitted.to_string().contains("not committed"),
        "{uncommitted}"
    );
}

#[test]
fn bootstrapping_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), ID).unwrap();
    store.bootstrap(&voters(3)).unwrap();
    assert!(matches!(
        store.bootstrap(&voters(3)),
        Err(StoreError::AlreadyBootstrapped { .. })
    ));
}

fn open_err(dir: &Path, id: Identity) -> String {
    let err = LogStore::open(dir, id).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(LOG_DIR), "error does not name the file: {msg}");
    msg
}

#[test]
fn a_data_dir_of_another_cluster_or_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    LogStore::open(dir.path(), ID)
        .unwrap()
        .bootstrap(&voters(3))
        .unwrap();
    let msg = open_err(
        dir.path(),
        Identity {
            cluster_id: 0xc2,
            ..ID
        },
    );
    assert!(msg.contains("cluster 0xc1"), "{msg}");
    let msg = open_err(
        dir.path(),
        Identity {
            node_id: NodeId(2),
            ..ID
        },
    );
    assert!(msg.contains("node 1"), "{msg}");
    // The refusals changed nothing.
    assert_eq!(
        LogStore::open(dir.path(), ID)
            .unwrap()
            .initial_state()
            .unwrap()
            .membership,
        voters(3)
    );
}

#[test]
fn a_legacy_log_of_an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join(LEGACY_LOG_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            // protobuf: format_version = 99, cluster_id = 0xc1, node_id = 1
            meta.insert("identity", [0x08, 99, 0x10, 0xc1, 0x01, 0x18, 1].as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let msg = open_err(dir.path(), ID);
    assert!(msg.contains("unknown format version 99"), "{msg}");
    assert!(!dir.path().join(LOG_DIR).exists(), "nothing was imported");
}

#[test]
fn a_legacy_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LEGACY_LOG_FILE), vec![0x5a; 64 * 1024]).unwrap();
    open_err(dir.path(), ID);
    // Still there, untouched: nothing is "repaired" away.
    assert_eq!(
        std::fs::read(dir.path().join(LEGACY_LOG_FILE)).unwrap(),
        vec![0x5a; 64 * 1024]
    );
}

#[test]
fn an_empty_legacy_redb_file_is_not_a_log_store() {
    let dir = tempfile::tempdir().unwrap();
    drop(redb::Database::create(dir.path().join(LEGACY_LOG_FILE)).unwrap());
    let msg = open_err(dir.path(), ID);
    assert!(msg.contains("not a raftkv log store"), "{msg}");
}

/// The segment files of the log in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    out
}

#[test]
fn a_segment_that_lost_records_it_had_synced_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), ID).unwrap();
        store.bootstrap(&voters(3)).unwrap();
        let entries: Vec<_> = (1..=2000).map(|i| entry(i, 1)).collect();
        store.persist(None, &entries, None).unwrap();
    }
    // Reopening begins a second segment; the first is now an older one,
    // whose end the second's checkpoint records.
    drop(LogStore::open(dir.path(), ID).unwrap());
    let first = &segments(dir.path())[0];
    let f = std::fs::OpenOptions::new().write(true).open(first).unwrap();
    f.set_len(20_000).unwrap();
    drop(f);
    let msg = open_err(dir.path(), ID);
    assert!(msg.contains("lost records"), "{msg}");
}

#[test]
fn a_torn_record_at_the_end_is_dropped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), ID).unwrap();
        store.bootstrap(&voters(3)).unwrap();
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1)).collect();
        store.persist(None, &entries, None).unwrap();
        // A crash in the middle of the next append: half a record.
        let torn = entry(11, 1);
        store.persist(None, &[torn], None).unwrap();
    }
    let newest = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    use std::os::unix::fs::FileExt;
    // Keep the record's header and first bytes, zero its last one.
    f.write_all_at(&[0], (end - 1) as u64).unwrap();
    drop(f);
    let store = LogStore::open(dir.path(), ID).unwrap();
    assert!(store.recovered_after_crash());
    assert_eq!(store.last_index().unwrap(), LogIndex(10));
    // Writing goes on after the torn record, in a new segment.
    store.persist(None, &[entry(11, 2)], None).unwrap();
    drop(store);
    let store = LogStore::open(dir.path(), ID).unwrap();
    assert!(!store.recovered_after_crash());
    assert_eq!(store.term(LogIndex(11)), Ok(Term(2)));
}

#[test]
fn a_missing_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=3 {
        let store = LogStore::open(dir.path(), ID).unwrap();
        if i == 1 {
            store.bootstrap(&voters(3)).unwrap();
        }
        store.persist(None, &[entry(i, 1)], None).unwrap();
    }
    let all = segments(dir.path());
    std::fs::remove_file(&all[1]).unwrap();
    let msg = open_err(dir.path(), ID);
    assert!(msg.contains("the segment before it is missing"), "{msg}");
    // The oldest segment gone (not by compaction) leaves a gap in the log.
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=3 {
        let store = LogStore::open(dir.path(), ID).unwrap();
        if i == 1 {
            store.bootstrap(&voters(3)).unwrap();
        }
        store.persist(None, &[entry(i, 1)], None).unwrap();
    }
    std::fs::remove_file(&segments(dir.path())[0]).unwrap();
    let msg = open_err(dir.path(), ID);
    assert!(
        msg.contains("invalid value 1 for last index of entries that are missing"),
        "{msg}"
    );
}

#[test]
fn a_new_cluster_starts_its_log_with_its_configuration_committed_at_term_1() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), ID).unwrap();
        store.bootstrap_cluster(&voters(3)).unwrap();
    }
    let store = LogStore::open(dir.path(), ID).unwrap();
    assert!(!store.is_new());
    let hs = store.hard_state();
    assert_eq!((hs.term, hs.vote, hs.commit), (Term(1), None, LogIndex(1)));
    let first = store.entries(LogIndex(1), LogIndex(2), None).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].term, Term(1));
    assert_eq!(first[0].payload, EntryPayload::Membership(voters(3)));
    assert_eq!(store.membership_at(LogIndex(1)).unwrap(), voters(3));
    assert_eq!(store.initial_state().unwrap().membership, voters(3));
}

#[test]
fn force_new_cluster_keeps_the_whole_log_and_commits_a_configuration_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), ID).unwrap();
    store.bootstrap(&voters(3)).unwrap();
    let entries: Vec<_> = (1..=6).map(|i| entry(i, 2)).collect(); // 3: voters(4)
    // Committed to 4 as far as this node knows; 5 and 6 may have been
    // committed by a majority it was part of, their commit index lost.
    let hs = HardState {
        term: Term(5),
        vote: Some(NodeId(2)),
        commit: LogIndex(4),
    };
    store.persist(None, &entries, Some(&hs)).unwrap();
    let at = store.force_new_cluster().unwrap();
    assert_eq!(at, LogIndex(7), "right after the last entry");
    drop(store);
    let store = LogStore::open(dir.path(), ID).unwrap();
    assert_eq!(store.last_index().unwrap(), LogIndex(7));
    let kept = store.entries(LogIndex(5), LogIndex(7), None).unwrap();
    assert_eq!(
        kept,
        entries[4..6].to_vec(),
        "5 and 6 are kept as they were"
    );
    let e = store.entries(LogIndex(7), LogIndex(8), None).unwrap();
    let EntryPayload::Membership(m) = &e[0].payload else {
        panic!("{e:?}")
    };
    assert_eq!(m.voters().collect::<Vec<_>>(), vec![NodeId(1)]);
    assert_eq!(
        m.get(NodeId(1)).unwrap().context,
        voters(4).get(NodeId(1)).unwrap().context,
        "this node's member info is kept"
    );
    assert_eq!(e[0].term, Term(5), "the current term: terms never go down");
    assert_eq!(store.hard_state().commit, LogIndex(7));
    assert_eq!(store.hard_state().term, Term(5));
    assert_eq!(store.membership_at(LogIndex(7)).unwrap(), m.clone());
}

#[test]
fn force_new_cluster_is_refused_for_a_node_its_log_does_not_list() {
    let dir = tempfile::tempdir().unwrap();
    let other = Identity {
        cluster_id: 0xc1,
        node_id: NodeId(9),
    };
    let store = LogStore::open(dir.path(), other).unwrap();
    store.bootstrap_cluster(&voters(3)).unwrap();
    let err = store.force_new_cluster().unwrap_err();
    assert!(matches!(err, StoreError::NotAMember { .. }), "{err}");
    assert_eq!(store.last_index().unwrap(), LogIndex(1), "nothing written");
}

#[test]
fn only_the_commit_index_is_written_without_waiting_for_the_disk() {
    let hs = |term: u64, vote: Option<u64>, commit: u64| HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    };
    for seed in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let disk = FaultyDisk::new(seed);
        let store = LogStore::open_on(&Disk::faulty(disk.clone()), dir.path(), ID).unwrap();
        let synced = store
            .persist(None, &[entry(1, 1), entry(2, 1)], Some(&hs(1, Some(1), 1)))
            .unwrap();
        assert!(synced, "entries wait for the disk");
        assert!(
            !store.persist(None, &[], Some(&hs(1, Some(1), 2))).unwrap(),
            "the commit index alone does not"
        );
        assert!(
            store.persist(None, &[], Some(&hs(2, None, 2))).unwrap(),
            "a new term does"
        );
        assert!(
            store.persist(None, &[], Some(&hs(2, Some(2), 2))).unwrap(),
            "a vote does"
        );
        // The commit index moves alone again, and the power goes off.
        store
            .persist(None, &[entry(3, 2)], Some(&hs(2, Some(2), 2)))
            .unwrap();
        assert!(!store.persist(None, &[], Some(&hs(2, Some(2), 3))).unwrap());
        drop(store);
        disk.power_loss();
        let store = LogStore::open_on(&Disk::faulty(disk.clone()), dir.path(), ID).unwrap();
        let state = store.initial_state().unwrap().hard_state;
        // Everything that waited for the disk is there; the last commit
        // index may or may not be, but never a torn mix.
        assert_eq!((state.term, state.vote), (Term(2), Some(NodeId(2))));
        assert!(
            [LogIndex(2), LogIndex(3)].contains(&state.commit),
            "seed {seed}: {state:?}"
        );
        assert_eq!(store.last_index().unwrap(), LogIndex(3));
        assert_eq!(store.term(LogIndex(3)).unwrap(), Term(2));
    }
}

#[test]
fn a_full_disk_stops_writes_with_a_typed_error_and_loses_nothing_acknowledged() {
    use raftkv::storage::DiskMode;
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyDisk::new(3);
    let store = LogStore::open_on(&Disk::faulty(disk.clone()), dir.path(), ID).unwrap();
    store.bootstrap(&voters(3)).unwrap();
    let big = |i: u64| Entry {
        term: Term(1),
        index: LogIndex(i),
        payload: EntryPayload::Command(Bytes::from(vec![b'v'; 4000])),
    };
    disk.set_mode(DiskMode::Full);
    // Appends go on inside the preallocated segment; the next segment
    // cannot be made.
    let mut acked = 0;
    let error = loop {
        match store.persist(None, &[big(acked + 1)], None) {
            Ok(_) => acked += 1,
            Err(e) => break e.to_string(),
        }
        assert!(acked < 1000, "the full disk never refused a write");
    };
    assert!(acked > 5, "{acked}");
    assert!(
        error.contains(LOG_DIR) && error.contains("No space left"),
        "{error}"
    );
    let then = store.persist(None, &[big(acked + 1)], None).unwrap_err();
    assert!(
        matches!(then, StoreError::Failed { .. })
            && then.to_string().contains("refusing further writes"),
        "{then}"
    );
    drop(store);
    disk.set_mode(DiskMode::Healthy);
    disk.power_loss();
    let store = LogStore::open_on(&Disk::faulty(disk.clone()), dir.path(), ID).unwrap();
    assert_eq!(store.last_index().unwrap(), LogIndex(acked));
    assert_eq!(
        store
            .entries(LogIndex(acked), LogIndex(acked + 1), None)
            .unwrap(),
        vec![big(acked)]
    );
}

#[test]
fn segments_are_begun_as_the_log_grows_and_deleted_once_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::faulty(FaultyDisk::new(5));
    let store = LogStore::open_on(&disk, dir.path(), ID).unwrap();
    store.bootstrap(&voters(3)).unwrap();
    let mut model = MemStorage::new(voters(3));
    // About 400 KiB of entries: several simulated segments of 64 KiB.
    let fat = |i: u64| match entry(i, 1) {
        Entry {
            payload: EntryPayload::Command(_),
            ..
        } => Entry {
            payload: EntryPayload::Command(Bytes::from(vec![b'x'; 200])),
            ..entry(i, 1)
        },
        other => other,
    };
    for chunk in (1..=2000u64).collect::<Vec<_>>().chunks(50) {
        let entries: Vec<_> = chunk.iter().map(|&i| fat(i)).collect();
        model.append(&entries).unwrap();
        store.persist(None, &entries, None).unwrap();
    }
    let grown = store.segment_count();
    assert!(grown >= 3, "{grown} segments");
    let mut hs = model.hard_state();
    hs.commit = LogIndex(2000);
    model.set_hard_state(hs);
    store.persist(None, &[], Some(&hs)).unwrap();
    assert_same(&store, &model);

    let at = LogIndex(1900);
    model
        .compact(at, store.membership_at(at).unwrap(), Bytes::new())
        .unwrap();
    store.compact_to(at).unwrap();
    assert!(
        store.segment_count() < grown,
        "compaction deleted no segment"
    );
    assert_same(&store, &model);
    drop(store);
    let store = LogStore::open_on(&disk, dir.path(), ID).unwrap();
    assert_same(&store, &model);
    assert!(store.segment_count() <= 3, "{}", store.segment_count());
}

#[test]
fn a_reopen_makes_what_it_read_durable_before_a_power_loss() {
    // A killed process leaves its unsynced appends in the page cache; the
    // next open reads them and begins a segment whose checkpoint names
    // where they end. A power loss after that must not make that untrue.
    for seed in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let disk = FaultyDisk::new(seed);
        let open = || LogStore::open_on(&Disk::faulty(disk.clone()), dir.path(), ID).unwrap();
        let store = open();
        store.bootstrap(&voters(3)).unwrap();
        let hs = |commit| HardState {
            term: Term(1),
            vote: None,
            commit: LogIndex(commit),
        };
        store
            .persist(None, &[entry(1, 1), entry(2, 1)], Some(&hs(1)))
            .unwrap();
        assert!(!store.persist(None, &[], Some(&hs(2))).unwrap());
        drop(store);
        drop(open());
        disk.power_loss();
        let store = open();
        assert_eq!(store.hard_state(), hs(2), "seed {seed}");
        assert_eq!(store.last_index().unwrap(), LogIndex(2));
    }
}
