//! The auth store as replicated state: changed only by applying commands,
//! the same on every store that applies the same entries, durable across a
//! restart, carried by snapshot images (and images of a store that never
//! used auth stay as they were). A write stamped at the gate is checked
//! again when it applies after the auth store changed.

// Test helpers outside #[test] fns may unwrap too (clippy.toml only covers
// the test fns themselves).
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use raftkv::raft::{Entry, EntryPayload, LogIndex, Membership, NodeId, Term};
use raftkv::storage::auth::{AuthError, AuthOp, Need, PermKind, Permission, ROOT};
use raftkv::storage::{ApplyOutcome, AuthStamp, Command, KvError, KvStore, Limits, Op};

fn entry(i: u64, op: Op) -> Entry {
    Entry {
        term: Term(2),
        index: LogIndex(i),
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

/// Root, a role with a prefix permission, a user holding it, auth on.
fn auth_entries() -> Vec<Entry> {
    let ops = [
        AuthOp::UserAdd {
            name: ROOT.into(),
            password_hash: Some("hash-r".into()),
        },
        AuthOp::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        },
        AuthOp::RoleAdd { name: "app".into() },
        AuthOp::RoleGrantPermission {
            role: "app".into(),
            permission: Permission {
                kind: PermKind::ReadWrite,
                key: Bytes::from_static(b"/app/"),
                range_end: Bytes::from_static(b"/app0"),
            },
        },
        AuthOp::UserAdd {
            name: "alice".into(),
            password_hash: Some("hash-a".into()),
        },
        AuthOp::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        },
        AuthOp::Enable {
            signing_key: Bytes::from_static(b"signing key"),
        },
    ];
    let mut entries = vec![Entry {
        term: Term(2),
        index: LogIndex(1),
        payload: EntryPayload::Membership(Membership::with_voters([(NodeId(1), Bytes::new())])),
    }];
    entries.extend(
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| entry(i as u64 + 2, Op::Auth(op))),
    );
    entries
}

fn image(store: &KvStore) -> Vec<u8> {
    let mut reader = store.snapshot().unwrap();
    let mut all = Vec::new();
    while let Some(c) = reader.next_chunk() {
        all.extend_from_slice(&c.unwrap());
    }
    all
}

fn install(store: &KvStore, image: &[u8]) {
    let mut installer = store.begin_install().unwrap();
    installer.write_chunk(image).unwrap();
    installer.finish().unwrap();
}

#[test]
fn two_stores_applying_the_same_auth_commands_agree() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        KvStore::open(a.path(), Limits::default()).unwrap(),
        KvStore::open(b.path(), Limits::default()).unwrap(),
    );
    let entries = auth_entries();
    a.apply(&entries).unwrap();
    // The other member applies in smaller batches.
    for e in entries.chunks(2) {
        b.apply(e).unwrap();
    }
    assert_eq!(a.auth(), b.auth());
    let auth = a.auth();
    assert!(auth.enabled);
    assert!(auth.permitted("alice", Need::Write, b"/app/x", b""));
    assert!(!auth.permitted("alice", Need::Read, b"/other", b""));
}

#[test]
fn a_refused_auth_command_is_an_outcome_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    store.apply(&auth_entries()).unwrap();
    let before = store.auth();
    let next = store.applied_index().get() + 1;
    let outcomes = store
        .apply(&[entry(
            next,
            Op::Auth(AuthOp::UserDelete { name: ROOT.into() }),
        )])
        .unwrap();
    assert_eq!(
        outcomes[0].1,
        ApplyOutcome::Rejected(KvError::Auth(AuthError::InvalidAuthMgmt))
    );
    assert_eq!(store.auth(), before);
    assert_eq!(store.applied_index(), LogIndex(next));
}

#[test]
fn the_auth_store_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = KvStore::open(dir.path(), Limits::default()).unwrap();
        store.apply(&auth_entries()).unwrap();
        store.sync().unwrap();
        store.auth()
    };
    let reopened = KvStore::open(dir.path(), Limits::default()).unwrap();
    assert_eq!(reopened.auth(), before);
    assert!(reopened.auth().enabled);
}

#[test]
fn an_installed_image_brings_the_auth_store_and_an_image_without_one_clears_it() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = KvStore::open(src_dir.path(), Limits::default()).unwrap();
    src.apply(&auth_entries()).unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = KvStore::open(dst_dir.path(), Limits::default()).unwrap();
    install(&dst, &image(&src));
    assert_eq!(dst.auth(), src.auth());
    // And durably so.
    drop(dst);
    let dst = KvStore::open(dst_dir.path(), Limits::default()).unwrap();
    assert_eq!(dst.auth(), src.auth());

    // An image of a store that never used auth (as older builds wrote
    // them: no auth frame) installs an empty, disabled auth store.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = KvStore::open(plain_dir.path(), Limits::default()).unwrap();
    plain
        .apply(&[Entry {
            term: Term(2),
            index: LogIndex(1),
            payload: EntryPayload::Membership(Membership::with_voters([(NodeId(1), Bytes::new())])),
        }])
        .unwrap();
    let plain_image = image(&plain);
    install(&dst, &plain_image);
    assert!(dst.auth().is_empty());
    assert!(!dst.auth().enabled);
    // An image with auth passes the check a receiving member runs.
    let mut check = raftkv::storage::ImageCheck::new(u64::MAX);
    check.feed(&image(&src)).unwrap();
    check.finish().unwrap();
}

#[test]
fn a_backup_of_a_store_with_auth_reads_back_and_restores_its_auth_store() {
    use raftkv::storage::{BackupOrigin, BackupStream, read_backup};
    let src_dir = tempfile::tempdir().unwrap();
    let src = KvStore::open(src_dir.path(), Limits::default()).unwrap();
    src.apply(&auth_entries()).unwrap();
    let mut stream = BackupStream::new(
        src.snapshot().unwrap(),
        BackupOrigin {
            cluster_id: 7,
            member_id: 1,
        },
    );
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next_chunk() {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let file = src_dir.path().join("backup");
    std::fs::write(&file, bytes).unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = KvStore::open(dst_dir.path(), Limits::default()).unwrap();
    let mut installer = dst.begin_install().unwrap();
    let summary = read_backup(&file, |chunk| installer.write_chunk(chunk)).unwrap();
    installer.finish().unwrap();
    assert_eq!(summary.applied_index, src.applied_index().get());
    assert_eq!(dst.auth(), src.auth());
}

/// A command as a gate admits it: stamped with its caller and the auth
/// revision the gate checked it at.
fn stamped(i: u64, op: Op, user: Option<&str>, revision: u64) -> Entry {
    Entry {
        term: Term(2),
        index: LogIndex(i),
        payload: EntryPayload::Command(
            Command {
                request_id: None,
                op,
                auth: Some(AuthStamp {
                    user: user.map(str::to_string),
                    revision,
                }),
            }
            .encode(),
        ),
    }
}

fn put(key: &str) -> Op {
    Op::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
        lease: 0,
    }
}

fn revoke_alice() -> Op {
    Op::Auth(AuthOp::UserRevokeRole {
        user: "alice".into(),
        role: "app".into(),
    })
}

fn denied() -> ApplyOutcome {
    ApplyOutcome::Rejected(KvError::Auth(AuthError::PermissionDenied))
}

#[test]
fn a_write_checked_before_a_revoke_is_refused_when_it_applies_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    store.apply(&auth_entries()).unwrap();
    let checked_at = store.auth().revision;
    let next = store.applied_index().get() + 1;
    // The revoke commits between the gate and the write's entry.
    store.apply(&[entry(next, revoke_alice())]).unwrap();
    assert_eq!(store.auth().revision, checked_at + 1);
    let revision = store.revision();
    let outcomes = store
        .apply(&[stamped(next + 1, put("/app/x"), Some("alice"), checked_at)])
        .unwrap();
    assert_eq!(outcomes, vec![(LogIndex(next + 1), denied())]);
    // A no-op: no key, no new revision; the entry is applied all the same.
    assert_eq!(store.get(b"/app/x").unwrap(), None);
    assert_eq!(store.revision(), revision);
    assert_eq!(store.applied_index(), LogIndex(next + 1));
}

#[test]
fn a_revoke_earlier_in_the_same_batch_refuses_the_write() {
    // Two members, one applying the revoke and the write in one batch and
    // one in two: both refuse (the decision depends on the log alone).
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        KvStore::open(a.path(), Limits::default()).unwrap(),
        KvStore::open(b.path(), Limits::default()).unwrap(),
    );
    a.apply(&auth_entries()).unwrap();
    b.apply(&auth_entries()).unwrap();
    let checked_at = a.auth().revision;
    let next = a.applied_index().get() + 1;
    let tail = [
        entry(next, revoke_alice()),
        stamped(next + 1, put("/app/x"), Some("alice"), checked_at),
    ];
    let in_one = a.apply(&tail).unwrap();
    let mut in_two = b.apply(&tail[..1]).unwrap();
    in_two.extend(b.apply(&tail[1..]).unwrap());
    assert_eq!(in_one[1], (LogIndex(next + 1), denied()));
    assert_eq!(in_one, in_two);
    assert_eq!(a.revision(), b.revision());
    assert_eq!(a.get(b"/app/x").unwrap(), None);
}

#[test]
fn a_write_stamped_at_the_current_auth_revision_is_not_checked_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    store.apply(&auth_entries()).unwrap();
    let rev = store.auth().revision;
    let next = store.applied_index().get() + 1;
    // Outside alice's permissions: only a re-check would refuse it, and
    // none runs when the gate saw this very auth store.
    let outcomes = store
        .apply(&[stamped(next, put("/other"), Some("alice"), rev)])
        .unwrap();
    assert!(
        matches!(outcomes[0].1, ApplyOutcome::Put { .. }),
        "{outcomes:?}"
    );
    assert!(store.get(b"/other").unwrap().is_some());
}

#[test]
fn an_auth_change_that_leaves_the_permission_in_place_lets_the_write_apply() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    store.apply(&auth_entries()).unwrap();
    let checked_at = store.auth().revision;
    let next = store.applied_index().get() + 1;
    let outcomes = store
        .apply(&[
            entry(next, Op::Auth(AuthOp::RoleAdd { name: "ops".into() })),
            stamped(next + 1, put("/app/x"), Some("alice"), checked_at),
            // The same user's write outside its permissions is refused.
            stamped(next + 2, put("/other"), Some("alice"), checked_at),
        ])
        .unwrap();
    assert!(
        matches!(outcomes[1].1, ApplyOutcome::Put { .. }),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2].1, denied());
}

#[test]
fn a_write_admitted_while_auth_was_off_is_refused_once_auth_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    let mut entries = auth_entries();
    // Everything but the final enable.
    let enable = entries.pop().unwrap();
    store.apply(&entries).unwrap();
    let checked_at = store.auth().revision;
    assert!(!store.auth().enabled);
    let next = enable.index.get() + 1;
    let outcomes = store
        .apply(&[
            enable,
            stamped(next, put("/app/x"), None, checked_at),
            // An entry from before stamps existed applies as it always did.
            entry(next + 1, put("/app/y")),
        ])
        .unwrap();
    assert_eq!(outcomes[1].1, denied());
    assert!(
        matches!(outcomes[2].1, ApplyOutcome::Put { .. }),
        "{outcomes:?}"
    );
    assert_eq!(store.get(b"/app/x").unwrap(), None);
}

#[test]
fn a_refused_write_leaves_no_idempotency_record_behind() {
    use raftkv::storage::RequestId;
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(dir.path(), Limits::default()).unwrap();
    store.apply(&auth_entries()).unwrap();
    let checked_at = store.auth().revision;
    let next = store.applied_index().get() + 1;
    let with_id = |i: u64, revision: u64| Entry {
        term: Term(2),
        index: LogIndex(i),
        payload: EntryPayload::Command(
            Command {
                request_id: Some(RequestId {
                    client_id: 9,
                    seq: 1,
                }),
                op: put("/app/x"),
                auth: Some(AuthStamp {
                    user: Some("alice".into()),
                    revision,
                }),
            }
            .encode(),
        ),
    };
    let grant_back = Op::Auth(AuthOp::UserGrantRole {
        user: "alice".into(),
        role: "app".into(),
    });
    let outcomes = store
        .apply(&[
            entry(next, revoke_alice()),
            with_id(next + 1, checked_at),
            entry(next + 2, grant_back),
            // The client retries after authenticating again: checked at
            // the current revision, and not answered with the refusal.
            with_id(next + 3, checked_at + 2),
        ])
        .unwrap();
    assert_eq!(outcomes[1].1, denied());
    assert!(
        matches!(outcomes[3].1, ApplyOutcome::Put { .. }),
        "{outcomes:?}"
    );
}
