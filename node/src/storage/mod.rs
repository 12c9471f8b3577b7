//! Durable storage: the Raft log in segment files of our own, and the
//! key-value state machine on redb.
//!
//! What lives in a node's data directory:
//!
//! - `raft-log/` ([`LogStore`]): entries, hard state and the base snapshot
//!   meta, appended as checksummed records to preallocated segments. Every
//!   write is durable (fsync) before it returns, and one `Ready` is one
//!   append (group commit).
//! - `kv.redb` ([`KvStore`]): the key-value state machine with etcd-style
//!   revisions, the applied index and the membership as of that index, and
//!   the last outcome per client for idempotent retries. Applying commits
//!   without fsync; see [`kv_store`] for why that is safe and what the node
//!   must do on restart.
//!
//! What the node must do with them:
//! - on start: `LogStore::open`, `bootstrap` if `is_new` (static clusters),
//!   `KvStore::open`, then re-apply the committed entries
//!   `(kv.applied_index(), log.hard_state().commit]` before serving;
//! - per `Ready`: `log.persist(snapshot meta, entries, hard state)` before
//!   sending messages or acknowledging anything, then `kv.apply(committed)`;
//! - to send a snapshot: `kv.snapshot()`, stream `next_chunk()`s, and use
//!   `reader.meta()` (not the log's base meta) as the snapshot's position;
//! - to receive one: `begin_install`, `write_chunk`s, `finish()`, and only
//!   then `log.persist(Some(&meta), ..)`. A crash between the two leaves the
//!   state machine ahead of the log, which is safe: `apply` skips entries at
//!   or below its applied index;
//! - compaction: after `kv.snapshot()` (which makes the state machine
//!   durable), `SnapshotPolicy::compact_to(meta.index, log base)` and
//!   `log.compact_to(index)`;
//! - any `StoreError` from a write: stop accepting writes (the store has
//!   poisoned itself and returns `StoreError::Failed` from then on).
//!
//! Where to find what:
//! - `codec.rs`: the stored form of the core's values (prost);
//! - `disk.rs`: where the files live: the system's, or a disk a
//!   simulation can fill up, make fail or switch off;
//! - `log_store/`: the log ([`raft::Storage`](crate::raft::Storage)): its
//!   segments and records (`wal.rs`), and moving a log of earlier builds
//!   into them (`legacy.rs`);
//! - `command.rs`: the commands clients propose and their encoding;
//! - `outcome.rs`: what applying a command produces;
//! - `kv_store.rs`: the state machine (apply, reads);
//! - `lease.rs`: leases as replicated state (which exist, their keys);
//! - `auth.rs`: users, roles, permissions and the auth flag as replicated
//!   state, and the permission check;
//! - `access.rs`: what each command needs of the auth store (the rule the
//!   client gates and the re-check at apply share);
//! - `mvcc/`: the history of every key, reads at past revisions, compaction;
//! - `feed.rs`: the change feed, what each apply did, for watchers;
//! - `txn_keys.rs`: etcd's "duplicate key" rule for transactions;
//! - `image.rs`: the snapshot image format, and checking an image as it arrives;
//! - `snapshot.rs`: streaming a state machine image out and installing one;
//! - `backup.rs`: the backup file (an image made to be kept: `etcdctl
//!   snapshot save`'s shape, a SHA-256, a versioned footer);
//! - `restore.rs`: a new member's data directory from a backup file;
//! - `policy.rs`: when to snapshot and how far to compact;
//! - `error.rs`: the errors, each naming its file.

pub mod access;
pub mod auth;
mod backup;
mod codec;
mod command;
mod disk;
mod error;
mod feed;
mod image;
pub mod kv_store;
mod lease;
mod log_store;
mod mvcc;
mod outcome;
mod policy;
mod restore;
mod snapshot;
mod txn_keys;

pub use backup::{
    BACKUP_BLOCK, BACKUP_FORMAT_VERSION, BackupError, BackupOrigin, BackupStream, BackupSummary,
    SHA256_BYTES, read_backup,
};
pub use codec::{
    decode_entry, decode_hard_state, decode_membership, decode_snapshot_meta, encode_entry,
    encode_hard_state, encode_membership, encode_snapshot_meta,
};
pub use command::{
    AlarmAction, AuthStamp, Command, Compare, CompareResult, CompareTarget, Op, RangeRequest,
    RequestId, SortOrder, SortTarget, TxnOp,
};
pub use disk::{Disk, DiskMode, DiskStats, FaultyDisk};
pub use error::{DecodeError, StoreError};
pub use feed::{Applied, Change, ChangeKind, FEED_CAPACITY, Subscription, in_range};
pub use image::{CHUNK_BYTES, ImageCheck, SnapshotError};
pub use kv_store::{
    DEFAULT_KV_CACHE_BYTES, DEFAULT_QUOTA_BACKEND_BYTES, DURABLE_EVERY_ENTRIES, HistoryHash,
    KV_FILE, KV_FORMAT_VERSION, KvStore, Limits,
};
pub use lease::{LeaseInfo, MAX_LEASE_TTL};
pub use log_store::{
    Identity, LEGACY_LOG_FILE, LOG_DIR, LOG_FORMAT_VERSION, LogStore, SEGMENT_BYTES,
};
pub use mvcc::replay::{Replay, ReplayRequest};
pub use outcome::{Alarm, AlarmKind, ApplyOutcome, KeyValue, KvError, RangeResult, TxnOpResult};
pub use policy::SnapshotPolicy;
pub use restore::{RestoreError, restore_backup};
pub use snapshot::{SnapshotInstaller, SnapshotReader};

/// How every database of a node is opened or created: with redb's page
/// cache bounded to `cache_bytes` (its default is 1 GiB per database, held
/// as anonymous memory once the data outgrows it).
fn db_with_cache(cache_bytes: usize) -> redb::Builder {
    let mut builder = redb::Database::builder();
    builder.set_cache_size(cache_bytes);
    builder
}

/// Makes a directory entry (a created or renamed file) durable.
fn sync_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            file: dir.to_path_buf(),
            op: "sync directory",
            source,
        })
}
