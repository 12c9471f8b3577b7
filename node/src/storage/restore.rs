//! A member's data directory for a new cluster, from a backup file
//! (`raftkv snapshot restore`, like `etcdutl snapshot restore`).
//!
//! Every member of the new cluster is prepared from the same file with the
//! same configuration, so they all start alike: a state machine holding
//! the backup's keys, history and revisions, at the backup's applied index
//! and term, under the new configuration; and a log whose base is that
//! position (as if the image had just been installed), with no entries.
//! The first leader's term is above the backup's, its log continues at the
//! next index, and a member added later gets the image by InstallSnapshot.
//!
//! The image is installed through the state machine's own installer, which
//! swaps it in only once complete; the backup's SHA-256 is checked before
//! [`restore_backup`] lets the installer finish, so a damaged file leaves
//! nothing behind but an empty directory.

use std::path::{Path, PathBuf};

use super::backup::{BackupError, BackupSummary, read_backup};
use super::error::StoreError;
use super::kv_store::{KV_FILE, KvStore, Limits};
use super::log_store::{Identity, LEGACY_LOG_FILE, LOG_DIR, LogStore};
use crate::raft::{Membership, SnapshotMeta};

/// Why a data directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{file} already exists: restore into a new data directory")]
    NotEmpty { file: PathBuf },
    #[error("{dir}: cannot create the data directory: {source}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the new configuration does not list this member ({0})")]
    NotListed(crate::raft::NodeId),
}

/// Prepares `dir` as the data directory of `identity`'s member of a new
/// cluster whose voters are `membership`, holding what `file` holds.
/// Returns what the backup held and the position the log starts at.
pub fn restore_backup(
    file: &Path,
    dir: &Path,
    identity: Identity,
    membership: &Membership,
) -> Result<(BackupSummary, SnapshotMeta), RestoreError> {
    if !membership.is_voter(identity.node_id) {
        return Err(RestoreError::NotListed(identity.node_id));
    }
    for name in [KV_FILE, LOG_DIR, LEGACY_LOG_FILE] {
        let f = dir.join(name);
        if f.exists() {
            return Err(RestoreError::NotEmpty { file: f });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| RestoreError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let result = install(file, dir, identity, membership);
    if result.is_err() {
        // Nothing half-made stays behind to be started by mistake.
        let _ = std::fs::remove_file(dir.join(KV_FILE));
        let _ = std::fs::remove_dir_all(dir.join(LOG_DIR));
    }
    result
}

fn install(
    file: &Path,
    dir: &Path,
    identity: Identity,
    membership: &Membership,
) -> Result<(BackupSummary, SnapshotMeta), RestoreError> {
    let kv = KvStore::open(dir, Limits::default())?;
    let mut installer = kv.begin_install()?;
    let summary = read_backup(file, |chunk| installer.write_chunk(chunk))?;
    installer.finish()?;
    let meta = kv.restart_as_new_cluster(membership)?;
    let log = LogStore::open(dir, identity)?;
    log.bootstrap_restored(&meta)?;
    Ok((summary, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryPayload, LogIndex, NodeId, Storage, Term};
    use crate::storage::{BackupOrigin, BackupStream, Command, Op, RangeRequest};
    use bytes::Bytes;

    fn put(index: u64, key: &str, value: &str) -> Entry {
        Entry {
            term: Term(2),
            index: LogIndex(index),
            payload: EntryPayload::Command(
                Command {
                    request_id: None,
                    auth: None,
                    op: Op::Put {
                        key: Bytes::copy_from_slice(key.as_bytes()),
                        value: Bytes::copy_from_slice(value.as_bytes()),
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

    fn membership(ids: &[u64]) -> Membership {
        Membership::with_voters(ids.iter().map(|id| (NodeId(*id), Bytes::new())))
    }

    fn backup(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let kv = KvStore::open(&dir.join("src"), Limits::default()).unwrap();
        kv.apply(&[put(1, "k", "1"), put(2, "k", "2"), put(3, "j", "3")])
            .unwrap();
        let mut s = BackupStream::new(kv.snapshot().unwrap(), BackupOrigin::default());
        let mut bytes = Vec::new();
        while let Some(c) = s.next_chunk() {
            bytes.extend_from_slice(&c.unwrap());
        }
        let file = dir.join("backup");
        std::fs::write(&file, bytes).unwrap();
        file
    }

    #[test]
    fn a_restored_member_holds_the_keys_at_their_revisions_under_the_new_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        let file = backup(tmp.path());
        let dir = tmp.path().join("new");
        let identity = Identity {
            cluster_id: 99,
            node_id: NodeId(2),
        };
        let (summary, meta) =
            restore_backup(&file, &dir, identity, &membership(&[1, 2, 3])).unwrap();
        assert_eq!(summary.total_keys, 2);
        assert_eq!((meta.index, meta.term), (LogIndex(3), Term(2)));

        let kv = KvStore::open(&dir, Limits::default()).unwrap();
        let r = kv
            .range(&RangeRequest {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            })
            .unwrap();
        let k = &r.kvs[0];
        assert_eq!(
            (k.create_revision, k.mod_revision, k.version),
            (2, 3, 2),
            "revisions as in the source"
        );
        assert_eq!(kv.revision(), 4);
        assert_eq!(kv.membership(), membership(&[1, 2, 3]));

        let log = LogStore::open(&dir, identity).unwrap();
        assert_eq!(log.snapshot_meta(), meta);
        assert_eq!(log.last_index().unwrap(), LogIndex(3));
        assert_eq!(log.hard_state().commit, LogIndex(3));
    }

    #[test]
    fn a_restored_member_keeps_the_leases_and_the_keys_attached_to_them() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("src")).unwrap();
        let kv = KvStore::open(&tmp.path().join("src"), Limits::default()).unwrap();
        let entry = |index: u64, op: Op| Entry {
            term: Term(2),
            index: LogIndex(index),
            payload: EntryPayload::Command(
                Command {
                    request_id: None,
                    auth: None,
                    op,
                }
                .encode(),
            ),
        };
        let leased = |key: &str| Op::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
            lease: 7,
        };
        kv.apply(&[
            entry(1, Op::LeaseGrant { id: 7, ttl: 30 }),
            entry(2, leased("a")),
            entry(3, leased("b")),
            put(4, "plain", "1"),
        ])
        .unwrap();
        let mut s = BackupStream::new(kv.snapshot().unwrap(), BackupOrigin::default());
        let mut bytes = Vec::new();
        while let Some(c) = s.next_chunk() {
            bytes.extend_from_slice(&c.unwrap());
        }
        let file = tmp.path().join("backup");
        std::fs::write(&file, bytes).unwrap();

        let dir = tmp.path().join("new");
        let identity = Identity {
            cluster_id: 99,
            node_id: NodeId(1),
        };
        let (summary, _) = restore_backup(&file, &dir, identity, &membership(&[1])).unwrap();
        assert_eq!((summary.total_keys, summary.total_leases), (3, 1));
        let restored = KvStore::open(&dir, Limits::default()).unwrap();
        let lease = restored.lease(7).unwrap().expect("the lease was restored");
        assert_eq!(lease.ttl, 30);
        assert_eq!(
            restored.lease_keys(7).unwrap(),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            "a revoke after the restore deletes the same keys"
        );
    }

    #[test]
    fn a_damaged_backup_leaves_no_data_directory_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let file = backup(tmp.path());
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let dir = tmp.path().join("new");
        let identity = Identity {
            cluster_id: 99,
            node_id: NodeId(1),
        };
        let e = restore_backup(&file, &dir, identity, &membership(&[1])).unwrap_err();
        assert!(
            matches!(e, RestoreError::Backup(BackupError::Checksum { .. })),
            "{e}"
        );
        assert!(!dir.join(KV_FILE).exists());
        assert!(!dir.join(LOG_DIR).exists());
    }

    #[test]
    fn an_existing_data_directory_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let file = backup(tmp.path());
        let dir = tmp.path().join("src");
        let identity = Identity {
            cluster_id: 99,
            node_id: NodeId(1),
        };
        let e = restore_backup(&file, &dir, identity, &membership(&[1])).unwrap_err();
        assert!(matches!(e, RestoreError::NotEmpty { .. }), "{e}");
    }
}
