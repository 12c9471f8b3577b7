//! Snapshot round trip and safe installs.

// Test helpers outside #[test] fns may unwrap too (clippy.toml only covers
// the test fns themselves).
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use raftkv::raft::{Entry, EntryPayload, LogIndex, Membership, NodeId, Term};
use raftkv::storage::{
    ApplyOutcome, Command, ImageCheck, KvStore, Limits, Op, RangeRequest, RangeResult, RequestId,
    StoreError,
};

fn put(i: u64, key: &str, value_len: usize) -> Entry {
    Entry {
        term: Term(3),
        index: LogIndex(i),
        payload: EntryPayload::Command(
            Command {
                request_id: Some(RequestId {
                    client_id: i % 5,
                    seq: i,
                }),
                auth: None,
                op: Op::Put {
                    key: Bytes::from(key.to_string()),
                    value: Bytes::from(vec![(i % 251) as u8; value_len]),
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                    lease: 0,
                },
            }
            .encode(),
        ),
    }
}

fn everything(store: &KvStore) -> RangeResult {
    store
        .range(&RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        })
        .unwrap()
}

/// A store with ~3 MiB of data, so the image spans several chunks.
fn filled(dir: &std::path::Path) -> KvStore {
    let store = KvStore::open(dir, Limits::default()).unwrap();
    let mut entries: Vec<_> = (1..=600)
        .map(|i| put(i, &format!("key{:04}", i % 400), 5000))
        .collect();
    entries.push(Entry {
        term: Term(3),
        index: LogIndex(601),
        payload: EntryPayload::Membership(Membership::with_voters([(NodeId(4), Bytes::new())])),
    });
    store.apply(&entries).unwrap();
    store
}

fn image(store: &KvStore) -> (raftkv::raft::SnapshotMeta, Vec<Bytes>) {
    let mut reader = store.snapshot().unwrap();
    let mut chunks = vec![];
    while let Some(c) = reader.next_chunk() {
        let c = c.unwrap();
        assert!(c.len() <= raftkv::storage::CHUNK_BYTES + 16 * 1024);
        chunks.push(c);
    }
    (reader.meta(), chunks)
}

#[test]
fn an_image_streamed_and_installed_on_a_fresh_store_is_identical() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = filled(src_dir.path());
    let (meta, chunks) = image(&src);
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    assert_eq!(meta.index, LogIndex(601));
    assert_eq!(meta.term, Term(3));

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = KvStore::open(dst_dir.path(), Limits::default()).unwrap();
    let mut installer = dst.begin_install().unwrap();
    // Feed in odd-sized pieces so frames straddle chunk boundaries.
    let all: Vec<u8> = chunks.concat();
    for piece in all.chunks(77_777) {
        installer.write_chunk(piece).unwrap();
    }
    assert_eq!(installer.finish().unwrap(), meta);
    assert_eq!(everything(&dst), everything(&src));
    assert_eq!(dst.revision(), src.revision());
    assert_eq!(dst.applied_index(), LogIndex(601));
    assert_eq!(dst.membership(), src.membership());
    // History came along, and the installed store finds it by key at once,
    // before any reopen: keys 0-199 were rewritten at revisions 402-601.
    assert_eq!(dst.hash_history(0).unwrap(), src.hash_history(0).unwrap());
    let past = |store: &KvStore| {
        store
            .range(&RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                revision: 300,
                ..Default::default()
            })
            .unwrap()
    };
    assert_eq!(past(&dst), past(&src));
    assert_eq!(past(&dst).count, 299);
    // The per-client outcomes came along: a retry is answered, not re-applied.
    let retry = dst
        .apply(&[Entry {
            index: LogIndex(602),
            ..put(600, "key0200", 5000)
        }])
        .unwrap();
    assert!(
        matches!(retry[0].1, ApplyOutcome::Put { revision: 601, .. }),
        "{:?}",
        retry[0].1
    );
    assert_eq!(dst.revision(), src.revision());
    // And it survives a reopen.
    drop(dst);
    let dst = KvStore::open(dst_dir.path(), Limits::default()).unwrap();
    assert_eq!(everything(&dst).kvs, everything(&src).kvs);
}

#[test]
fn writes_continue_while_an_image_is_read_and_do_not_leak_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(dir.path());
    let before = everything(&store);
    let mut reader = store.snapshot().unwrap();
    let first = reader.next_chunk().unwrap().unwrap();
    store.apply(&[put(602, "zzz-late", 10)]).unwrap();
    let mut chunks = vec![first];
    while let Some(c) = reader.next_chunk() {
        chunks.push(c.unwrap());
    }
    let other = tempfile::tempdir().unwrap();
    let dst = KvStore::open(other.path(), Limits::default()).unwrap();
    let mut inst = dst.begin_install().unwrap();
    for c in &chunks {
        inst.write_chunk(c).unwrap();
    }
    inst.finish().unwrap();
    assert_eq!(everything(&dst).kvs, before.kvs);
    assert!(store.get(b"zzz-late").unwrap().is_some());
}

fn assert_untouched(store: &KvStore, before: &RangeResult) {
    assert_eq!(&everything(store), before);
    assert_eq!(store.applied_index(), LogIndex(2));
}

fn small(dir: &std::path::Path) -> (KvStore, RangeResult) {
    let store = KvStore::open(dir, Limits::default()).unwrap();
    store
        .apply(&[put(1, "mine", 3), put(2, "mine2", 3)])
        .unwrap();
    let before = everything(&store);
    (store, before)
}

#[test]
fn a_half_received_or_corrupt_image_never_replaces_good_data() {
    let src_dir = tempfile::tempdir().unwrap();
    let (_meta, chunks) = image(&filled(src_dir.path()));
    let all: Vec<u8> = chunks.concat();

    let dir = tempfile::tempdir().unwrap();
    let (store, before) = small(dir.path());

    // Half an image, then finish: refused.
    let mut inst = store.begin_install().unwrap();
    inst.write_chunk(&all[..all.len() / 2]).unwrap();
    let err = inst.finish().unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");
    assert_untouched(&store, &before);

    // One flipped byte: the checksum catches it.
    let mut bad = all.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    let mut inst = store.begin_install().unwrap();
    let err = inst
        .write_chunk(&bad)
        .and_then(|()| inst.finish().map(|_| ()))
        .unwrap_err();
    assert!(matches!(err, StoreError::Snapshot(_)), "{err}");
    assert_untouched(&store, &before);

    // Not an image at all.
    let mut inst = store.begin_install().unwrap();
    assert!(inst.write_chunk(b"definitely not").is_err());
    drop(inst);
    assert_untouched(&store, &before);
    assert!(!dir.path().join("kv.redb.staging").exists());
}

#[test]
fn a_crash_during_install_leaves_the_old_data_and_the_next_open_cleans_up() {
    let src_dir = tempfile::tempdir().unwrap();
    let (_meta, chunks) = image(&filled(src_dir.path()));
    let dir = tempfile::tempdir().unwrap();
    let (store, before) = small(dir.path());
    drop(store);
    // What a crash mid-install leaves behind: a partial staging database
    // next to the untouched kv.redb.
    let staging = dir.path().join("kv.redb.staging");
    {
        let store = KvStore::open(dir.path(), Limits::default()).unwrap();
        let mut inst = store.begin_install().unwrap();
        inst.write_chunk(&chunks[0]).unwrap();
        std::fs::copy(&staging, dir.path().join("partial")).unwrap();
    }
    std::fs::rename(dir.path().join("partial"), &staging).unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    assert!(!staging.exists());
    assert_untouched(&store, &before);
}

/// A node checks an image while it arrives, before the consensus core
/// hears of it: garbage at the first bytes, a truncated or corrupted image
/// at the end, an oversized one as soon as it grows past the bound.
#[test]
fn an_image_is_checked_as_it_arrives_without_storing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(dir.path());
    let (meta, chunks) = image(&store);
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();

    let mut check = ImageCheck::new(total);
    for c in &chunks {
        check.feed(c).unwrap();
    }
    assert_eq!(check.finish().unwrap(), meta);

    let mut garbage = ImageCheck::new(total);
    let err = garbage.feed(b"GARBAGE!plus more bytes").unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");
    // A wrong first byte is enough: no need to wait for eight.
    assert!(ImageCheck::new(total).feed(b"X").is_err());

    let mut truncated = ImageCheck::new(total);
    for c in &chunks[..chunks.len() - 1] {
        truncated.feed(c).unwrap();
    }
    assert!(
        truncated
            .finish()
            .unwrap_err()
            .to_string()
            .contains("incomplete")
    );

    let mut corrupt = ImageCheck::new(total);
    let mut last = chunks.last().unwrap().to_vec();
    let n = last.len();
    last[n / 2] ^= 0x40;
    let fed: Result<(), StoreError> = chunks[..chunks.len() - 1]
        .iter()
        .chain(std::iter::once(&Bytes::from(last)))
        .try_for_each(|c| corrupt.feed(c));
    assert!(fed.is_err() || corrupt.finish().is_err());

    let mut too_large = ImageCheck::new(total - 1);
    let fed: Result<(), StoreError> = chunks.iter().try_for_each(|c| too_large.feed(c));
    assert!(fed.unwrap_err().to_string().contains("larger than"));
}

/// A store bootstrapped with a configuration cuts snapshots that carry it;
/// one never touched by a membership entry must not hand out an empty one.
#[test]
fn snapshots_carry_the_bootstrap_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let bootstrap = Membership::with_voters((1..=3).map(|i| (NodeId(i), Bytes::new())));
    assert!(store.adopt_membership(&bootstrap).unwrap());
    store.apply(&[put(1, "k", 10)]).unwrap();
    let (meta, chunks) = image(&store);
    assert_eq!(meta.membership, bootstrap);
    let mut check = ImageCheck::new(u64::MAX);
    for c in &chunks {
        check.feed(c).unwrap();
    }
    assert_eq!(check.finish().unwrap().membership, bootstrap);
    // Adopting is for an empty configuration only, and it is durable.
    let other = Membership::with_voters([(NodeId(9), Bytes::new())]);
    assert!(!store.adopt_membership(&other).unwrap());
    drop(store);
    let reopened = KvStore::open(dir.path(), Limits::default()).unwrap();
    assert_eq!(reopened.membership(), bootstrap);
}
