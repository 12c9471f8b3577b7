//! The key-value state machine: etcd-style revisions over redb (`kv.redb`).
//!
//! Every key carries `create_revision`, `mod_revision` and `version`; the
//! store has one global `revision`, bumped once per command that writes
//! (a put always writes; a delete or a transaction only if it changed a
//! key). Alongside the keys, the same file holds the applied index and term,
//! the membership as of the applied index, the revision, the leases
//! (`lease.rs`) and the last outcome per client (idempotent retries). All of it changes in ONE write
//! transaction per [`KvStore::apply`] batch, so the applied index always
//! describes exactly the state stored with it.
//!
//! Durability choice: apply commits with `Durability::None` (no fsync);
//! [`KvStore::sync`] (which the applier calls once [`KvStore::sync_due`]
//! says [`DURABLE_EVERY_ENTRIES`] entries are held by such commits, after it
//! answered their clients) and every [`KvStore::snapshot`] commit with
//! `Durability::Immediate`. After a crash the file comes back at its last
//! durable commit: a consistent but older state whose `applied_index` is
//! reliable. The node must then re-apply the committed log entries
//! `(applied_index, commit]`; [`KvStore::apply`] skips entries it has already
//! applied, so replaying a little too much is harmless. The log must never
//! be compacted past the state machine's durable applied index, which is why
//! `snapshot` (whose meta the node compacts up to) makes the state durable
//! first.
//!
//! Idempotent retries: per `client_id` the store keeps only the last applied
//! `(seq, outcome)`. A retry of that `seq` gets the stored outcome; an older
//! `seq` is rejected as stale. The table grows by one small record per
//! distinct client id and is never pruned (clients are expected to reuse a
//! stable id; pruning idle clients is future work).
//!
//! Permissions at apply: a command stamped by a client gate (caller and
//! auth revision, see [`AuthStamp`](super::command::AuthStamp)) is checked
//! again when the auth store changed between the gate and its entry
//! ([`access`](super::access)); a command that no longer passes applies as
//! a no-op answered "permission denied", on every member alike.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use prost::Message;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};

use super::access;
use super::auth::{AuthError, AuthState};
use super::codec;
use super::command::{
    AlarmAction, Command, Compare, CompareResult, CompareTarget, Op, RangeRequest, TxnOp,
};
use super::disk::Disk;
use super::error::{DecodeError, StoreError, corrupt, db_err};
use super::feed::{Applied, Change, ChangeKind, Feed, Subscription};
use super::lease::{self, LEASE_KEYS, LEASES, LeaseInfo, MAX_LEASE_TTL};
use super::mvcc::key_index::{KeyIndex, Rev};
use super::mvcc::replay::{Replay, ReplayRequest};
use super::mvcc::{VERSIONS, VersionsTable, compaction, range, replay, upgrade};
use super::outcome::{
    Alarm, AlarmKind, ApplyOutcome, KeyValue, KvError, RangeResult, TxnOpResult,
    decode_client_record, encode_client_record,
};
use crate::raft::{Entry, EntryPayload, LogIndex, Membership, SnapshotMeta, Term};

/// The file name of the state machine inside the data directory.
pub const KV_FILE: &str = "kv.redb";
/// Where a snapshot being installed is built before it replaces `kv.redb`.
pub const KV_STAGING_FILE: &str = "kv.redb.staging";
/// The on-disk format this build writes and reads.
/// Version 2 added history (`mvcc/`), version 3 stored it by revision; a
/// file of version 1 or 2 is upgraded when opened (`mvcc/upgrade.rs`).
pub const KV_FORMAT_VERSION: u64 = 3;
/// The state format snapshot images carry. Images did not change with file
/// format 3, so they still say 2, and builds on either format install each
/// other's images during a rolling upgrade.
pub(crate) const IMAGE_STATE_FORMAT: u64 = 2;
/// How many applied entries may be held by non-durable commits at most.
pub const DURABLE_EVERY_ENTRIES: u64 = 1024;
/// The backend quota unless configured otherwise: etcd's default, 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;

pub(crate) const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
pub(crate) const CLIENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("clients");
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
pub(crate) const KEY_STATE: &str = "state";
/// The auth store's record in `meta` (absent: auth never used).
pub(crate) const KEY_AUTH: &str = "auth";

/// Size limits of one node, checked once, when a command is proposed, by
/// the leader that puts it in the log (and for reads by the node serving
/// them). Never at apply: members started with different limits would
/// otherwise apply different commands and their state machines diverge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_txn_ops: usize,
    /// The backend quota (etcd's `--quota-backend-bytes`): a write that
    /// arrives while the state machine's file is larger raises the NOSPACE
    /// alarm and is refused. 0: no quota.
    pub quota_backend_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1536,
            max_value_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
        }
    }
}

impl Limits {
    fn key(&self, key: &[u8]) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(KvError::KeyTooLarge {
                size: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    fn range(&self, key: &[u8], range_end: &[u8]) -> Result<(), KvError> {
        self.key(key)?;
        if range_end.len() > self.max_key_bytes {
            return Err(KvError::KeyTooLarge {
                size: range_end.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    fn value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                size: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Checks a range read.
    pub fn check_range(&self, req: &RangeRequest) -> Result<(), KvError> {
        self.range(&req.key, &req.range_end)
    }

    /// What every replica checks at apply, whatever its flags: only what
    /// does not depend on configuration (a key must not be empty).
    pub fn check_well_formed(op: &Op) -> Result<(), KvError> {
        let key = |k: &[u8]| {
            if k.is_empty() {
                Err(KvError::EmptyKey)
            } else {
                Ok(())
            }
        };
        match op {
            Op::Put { key: k, .. } | Op::DeleteRange { key: k, .. } => key(k),
            Op::Txn {
                compares,
                success,
                failure,
            } => txn_keys_present(compares, success, failure),
            Op::Compact { .. }
            | Op::Alarm { .. }
            | Op::LeaseGrant { .. }
            | Op::LeaseRevoke { .. }
            | Op::LeaseCheckpoint { .. }
            | Op::Auth(_) => Ok(()),
        }
    }

    /// Checks every key, value and the size of a command.
    pub fn check_op(&self, op: &Op) -> Result<(), KvError> {
        match op {
            Op::Put {
                key,
                value,
                ignore_value,
                ignore_lease,
                lease,
                ..
            } => self.put(key, value, *ignore_value, *ignore_lease, *lease),
            Op::DeleteRange { key, range_end, .. } => self.range(key, range_end),
            Op::Txn {
                compares,
                success,
                failure,
            } => self.txn(compares, success, failure),
            Op::LeaseGrant { ttl, .. } if *ttl > MAX_LEASE_TTL => Err(KvError::LeaseTtlTooLarge),
            Op::Compact { .. }
            | Op::Alarm { .. }
            | Op::LeaseGrant { .. }
            | Op::LeaseRevoke { .. }
            | Op::LeaseCheckpoint { .. }
            | Op::Auth(_) => Ok(()),
        }
    }

    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ignore_value: bool,
        ignore_lease: bool,
        lease: i64,
    ) -> Result<(), KvError> {
        self.key(key)?;
        if ignore_value && !value.is_empty() {
            return Err(KvError::ValueProvided);
        }
        if ignore_lease && lease != 0 {
            return Err(KvError::LeaseProvided);
        }
        self.value(value)
    }

    fn txn(
        &self,
        compares: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> Result<(), KvError> {
        self.txn_within(compares, success, failure, self.max_txn_ops)?;
        super::txn_keys::check(success, failure)
    }

    /// etcd's rule for the size of a transaction: the longest of its
    /// compare, success and failure lists is at most `budget`, and a nested
    /// transaction gets what its parent's longest list left over.
    fn txn_within(
        &self,
        compares: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
        budget: usize,
    ) -> Result<(), KvError> {
        let count = compares.len().max(success.len()).max(failure.len());
        if count > budget {
            return Err(KvError::TooManyTxnOps {
                count,
                max: self.max_txn_ops,
            });
        }
        for c in compares {
            self.range(&c.key, &c.range_end)?;
            if let CompareTarget::Value(v) = &c.target {
                self.value(v)?;
            }
        }
        for op in success.iter().chain(failure) {
            match op {
                TxnOp::Range(r) => self.check_range(r)?,
                TxnOp::Put {
                    key,
                    value,
                    ignore_value,
                    ignore_lease,
                    lease,
                    ..
                } => self.put(key, value, *ignore_value, *ignore_lease, *lease)?,
                TxnOp::DeleteRange { key, range_end, .. } => self.range(key, range_end)?,
                TxnOp::Txn {
                    compares,
                    success,
                    failure,
                } => self.txn_within(compares, success, failure, budget - count)?,
            }
        }
        Ok(())
    }
}

/// Every key of a transaction (nested ones included) is present.
fn txn_keys_present(
    compares: &[Compare],
    success: &[TxnOp],
    failure: &[TxnOp],
) -> Result<(), KvError> {
    let present = |k: &[u8]| {
        if k.is_empty() {
            Err(KvError::EmptyKey)
        } else {
            Ok(())
        }
    };
    for c in compares {
        present(&c.key)?;
    }
    for op in success.iter().chain(failure) {
        match op {
            TxnOp::Range(r) => present(&r.key)?,
            TxnOp::Put { key: k, .. } | TxnOp::DeleteRange { key: k, .. } => present(k)?,
            TxnOp::Txn {
                compares,
                success,
                failure,
            } => txn_keys_present(compares, success, failure)?,
        }
    }
    Ok(())
}

/// A version of a key as stored: the latest live one in the `kv` table
/// (keyed by the key), every one in `versions` (keyed by revision).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub value: Bytes,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    /// In history: this version is a delete.
    #[prost(bool, tag = "5")]
    pub tombstone: bool,
    /// In history: the position of this write inside its revision.
    #[prost(uint32, tag = "6")]
    pub sub: u32,
    /// The lease this version is attached to (0: none).
    #[prost(int64, tag = "7")]
    pub lease: i64,
}

/// The state record, stored under [`KEY_STATE`] and at the head of a
/// snapshot image.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredState {
    #[prost(uint64, tag = "1")]
    pub format_version: u64,
    #[prost(uint64, tag = "2")]
    pub applied_index: u64,
    #[prost(uint64, tag = "3")]
    pub applied_term: u64,
    #[prost(int64, tag = "4")]
    pub revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub membership: Vec<u8>,
    /// Reads below this revision fail as compacted.
    #[prost(int64, tag = "6")]
    pub compacted: i64,
    /// Where the physical deletion of compacted history stands.
    #[prost(int64, tag = "7")]
    pub purge_revision: i64,
    #[prost(uint32, tag = "8")]
    pub purge_sub: u32,
    #[prost(bool, tag = "9")]
    pub purge_done: bool,
    /// The raised alarms, in order (absent in files written before alarms
    /// existed: none raised).
    #[prost(message, repeated, tag = "10")]
    pub alarms: Vec<StoredAlarm>,
}

/// One raised alarm in the state record.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredAlarm {
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    /// etcd's alarm type number.
    #[prost(int32, tag = "2")]
    pub kind: i32,
}

/// What the state machine is at, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KvState {
    pub applied_index: LogIndex,
    pub applied_term: Term,
    pub revision: i64,
    pub membership: Membership,
    pub compaction: compaction::Progress,
    /// The raised alarms, sorted and without duplicates.
    pub alarms: Vec<Alarm>,
}

impl KvState {
    /// A new, empty state machine. Its revision is 1, as a fresh etcd's:
    /// the first write makes revision 2 (clients such as Kubernetes read a
    /// revision of 0 as "any").
    pub(crate) fn fresh() -> Self {
        KvState {
            revision: 1,
            compaction: compaction::Progress {
                done: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        self.encode_as(KV_FORMAT_VERSION)
    }

    /// The state record, saying format `format_version`.
    pub(crate) fn encode_as(&self, format_version: u64) -> Vec<u8> {
        StoredState {
            format_version,
            applied_index: self.applied_index.get(),
            applied_term: self.applied_term.get(),
            revision: self.revision,
            membership: codec::encode_membership(&self.membership),
            compacted: self.compaction.compacted,
            purge_revision: self.compaction.cursor.0,
            purge_sub: self.compaction.cursor.1,
            purge_done: self.compaction.done,
            alarms: self
                .alarms
                .iter()
                .map(|a| StoredAlarm {
                    member_id: a.member_id,
                    kind: a.kind.number(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Decodes a file's state record; `Ok(Err(version))` for a format
    /// other than this build's.
    pub(crate) fn decode(buf: &[u8]) -> Result<Result<KvState, u64>, DecodeError> {
        Self::decode_any(buf, &[KV_FORMAT_VERSION])
    }

    /// Decodes an image's state record, of either format whose images this
    /// build installs.
    pub(crate) fn decode_image(buf: &[u8]) -> Result<Result<KvState, u64>, DecodeError> {
        Self::decode_any(buf, &[IMAGE_STATE_FORMAT, KV_FORMAT_VERSION])
    }

    fn decode_any(buf: &[u8], formats: &[u64]) -> Result<Result<KvState, u64>, DecodeError> {
        let s = StoredState::decode(buf).map_err(|source| DecodeError::Prost {
            what: "state machine state",
            source,
        })?;
        if !formats.contains(&s.format_version) {
            return Ok(Err(s.format_version));
        }
        let mut alarms = Vec::with_capacity(s.alarms.len());
        for a in &s.alarms {
            let kind = AlarmKind::from_number(a.kind).ok_or(DecodeError::Missing {
                what: "state machine state",
                field: "alarm type",
            })?;
            alarms.push(Alarm {
                member_id: a.member_id,
                kind,
            });
        }
        alarms.sort_unstable();
        alarms.dedup();
        Ok(Ok(KvState {
            alarms,
            applied_index: LogIndex(s.applied_index),
            applied_term: Term(s.applied_term),
            revision: s.revision,
            membership: codec::decode_membership(&s.membership)?,
            compaction: compaction::Progress {
                compacted: s.compacted,
                cursor: (s.purge_revision, s.purge_sub),
                done: s.purge_done,
            },
        }))
    }

    /// Whether writes are refused: some member raised NOSPACE.
    pub(crate) fn no_space(&self) -> bool {
        self.alarms.iter().any(|a| a.kind == AlarmKind::NoSpace)
    }

    pub(crate) fn meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.applied_index,
            term: self.applied_term,
            membership: self.membership.clone(),
        }
    }
}

/// A checksum of the history up to a revision, from one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryHash {
    pub hash: u32,
    /// The revision the hash covers.
    pub hash_revision: i64,
    /// The compacted revision (covered by the hash too).
    pub compact_revision: i64,
    /// The store's revision at the time of the read.
    pub revision: i64,
}

/// The state machine's page cache unless configured otherwise: enough to
/// keep the hot part of a few hundred thousand keys in memory, and a bound
/// a container's memory limit can plan for.
pub const DEFAULT_KV_CACHE_BYTES: usize = 256 << 20;

/// The key-value state machine. Cheap to clone; clones share one database.
#[derive(Clone, Debug)]
pub struct KvStore {
    pub(crate) inner: Arc<KvInner>,
}

pub(crate) struct KvInner {
    pub dir: PathBuf,
    pub path: PathBuf,
    pub limits: Limits,
    /// redb's page cache size for this database (and its replacements).
    pub cache_bytes: usize,
    /// Where this database and its replacements live.
    pub disk: Disk,
    /// The file and its key index, replaced as a whole when a snapshot is
    /// installed.
    pub backend: RwLock<Arc<Backend>>,
    pub state: RwLock<KvState>,
    /// The auth store as of the applied index, decoded: every client
    /// request reads it. Replaced as a whole by a change or an install.
    pub auth: RwLock<Arc<AuthState>>,
    /// Serialises writers (apply, sync, install). Holds the applied index
    /// of the last durable commit.
    pub writer: Mutex<LogIndex>,
    pub failed: Mutex<Option<String>>,
    /// Announces what each apply changed (see `feed.rs`).
    pub feed: Feed,
}

/// The state machine's file and the key index built from it, replaced
/// together when a snapshot is installed: a reader that opened one
/// database never sees the other's index.
pub(crate) struct Backend {
    pub db: Database,
    pub index: RwLock<KeyIndex>,
}

impl Backend {
    /// Builds the key index of `db`.
    pub(crate) fn load(db: Database, path: &Path, state: &KvState) -> Result<Backend, StoreError> {
        let index = {
            let txn = db.begin_read().map_err(db_err(path, "begin read"))?;
            let versions = txn
                .open_table(VERSIONS)
                .map_err(db_err(path, "open versions"))?;
            KeyIndex::load(&versions, path, state.compaction.compacted)?
        };
        Ok(Backend {
            db,
            index: RwLock::new(index),
        })
    }
}

impl fmt::Debug for KvInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStore")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl KvStore {
    /// Opens (or creates) `kv.redb` in `dir`. A snapshot install that did
    /// not finish (a leftover staging file) is discarded: it never replaced
    /// the state machine.
    pub fn open(dir: &Path, limits: Limits) -> Result<KvStore, StoreError> {
        Self::open_with_cache(dir, limits, DEFAULT_KV_CACHE_BYTES)
    }

    /// Like [`KvStore::open`], with redb's page cache bounded to
    /// `cache_bytes` (redb's own default is 1 GiB per database, which a
    /// node with a large state machine then holds in anonymous memory).
    pub fn open_with_cache(
        dir: &Path,
        limits: Limits,
        cache_bytes: usize,
    ) -> Result<KvStore, StoreError> {
        KvStore::open_on(&Disk::default(), dir, limits, cache_bytes)
    }

    /// Like [`KvStore::open_with_cache`], with the database files (this one
    /// and every snapshot installed into it) on `disk`.
    pub fn open_on(
        disk: &Disk,
        dir: &Path,
        limits: Limits,
        cache_bytes: usize,
    ) -> Result<KvStore, StoreError> {
        let staging = dir.join(KV_STAGING_FILE);
        if staging.exists() {
            std::fs::remove_file(&staging).map_err(|source| StoreError::Io {
                file: staging.clone(),
                op: "remove unfinished snapshot install",
                source,
            })?;
        }
        let path = dir.join(KV_FILE);
        let db = if path.exists() {
            disk.open(&super::db_with_cache(cache_bytes), &path)
                .map_err(db_err(&path, "open"))?
        } else {
            let db = disk
                .create(&super::db_with_cache(cache_bytes), &path)
                .map_err(db_err(&path, "create"))?;
            init_tables(&db, &path, &KvState::fresh())?;
            super::sync_dir(dir)?;
            db
        };
        upgrade::upgrade(&db, &path)?;
        let state = load_state(&db, &path)?;
        let auth = load_auth(&db, &path)?;
        let durable = state.applied_index;
        let backend = Backend::load(db, &path, &state)?;
        Ok(KvStore {
            inner: Arc::new(KvInner {
                dir: dir.to_path_buf(),
                path,
                limits,
                cache_bytes,
                disk: disk.clone(),
                backend: RwLock::new(Arc::new(backend)),
                state: RwLock::new(state),
                auth: RwLock::new(Arc::new(auth)),
                writer: Mutex::new(durable),
                failed: Mutex::new(None),
                feed: Feed::default(),
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The limits commands are checked against.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> LogIndex {
        self.with_state(|s| s.applied_index)
    }

    /// The term of the last applied entry.
    pub fn applied_term(&self) -> Term {
        self.with_state(|s| s.applied_term)
    }

    /// The current global revision.
    pub fn revision(&self) -> i64 {
        self.with_state(|s| s.revision)
    }

    /// The membership as of the applied index.
    pub fn membership(&self) -> Membership {
        self.state().membership
    }

    /// Reads one field of the state without cloning the rest (the
    /// configuration): the driver asks for the applied index every turn.
    fn with_state<T>(&self, f: impl FnOnce(&KvState) -> T) -> T {
        f(&self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// The users, roles, permissions and auth flag as of the applied index.
    pub fn auth(&self) -> Arc<AuthState> {
        self.inner
            .auth
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn state(&self) -> KvState {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn backend(&self) -> Arc<Backend> {
        self.inner
            .backend
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn lock_writer(&self) -> std::sync::MutexGuard<'_, LogIndex> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn check_failed(&self) -> Result<(), StoreError> {
        let failed = self
            .inner
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match failed.as_ref() {
            Some(first) => Err(StoreError::Failed {
                file: self.inner.path.clone(),
                first: first.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn poison(&self, e: &StoreError) {
        let mut failed = self
            .inner
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if failed.is_none() {
            *failed = Some(e.to_string());
        }
    }

    /// Applies a batch of committed entries in ONE write transaction and
    /// returns the outcome of each command entry. Entries at or below the
    /// applied index are skipped (a replay after restart); a gap is an error.
    pub fn apply(&self, entries: &[Entry]) -> Result<Vec<(LogIndex, ApplyOutcome)>, StoreError> {
        self.check_failed()?;
        let _writer = self.lock_writer();
        let mut state = self.state();
        let entries: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.index > state.applied_index)
            .collect();
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        if first.index != state.applied_index.next()
            || entries.windows(2).any(|w| w[1].index != w[0].index.next())
        {
            return Err(StoreError::ApplyGap {
                file: self.inner.path.clone(),
                applied: state.applied_index,
                got: first.index,
            });
        }
        let path = self.inner.path.as_path();
        let backend = self.backend();
        let before = state.revision;
        // Changes are listed only for someone who listens; a subscriber
        // that arrives meanwhile is told to read history instead.
        let mut listed = self.inner.feed.has_subscribers().then(Vec::new);
        let mut changed_auth = None;
        let result = (|| {
            let mut txn = backend
                .db
                .begin_write()
                .map_err(db_err(path, "begin write"))?;
            txn.set_durability(Durability::None)
                .map_err(|e| db_err(path, "set durability")(redb::Error::from(e)))?;
            let mut outcomes = Vec::new();
            {
                let mut exec = Exec::open(&txn, &backend.index, path)?;
                exec.auth_base = self.auth();
                exec.listed = listed.take();
                for e in &entries {
                    match &e.payload {
                        EntryPayload::Noop => {}
                        EntryPayload::Membership(m) => state.membership = m.clone(),
                        EntryPayload::Command(data) => {
                            let outcome = exec.apply_command(data, &mut state)?;
                            outcomes.push((e.index, outcome));
                        }
                    }
                    exec.compact_step(&mut state)?;
                    state.applied_index = e.index;
                    state.applied_term = e.term;
                }
                exec.meta
                    .insert(KEY_STATE, state.encode().as_slice())
                    .map_err(db_err(path, "write state"))?;
                if let Some(auth) = &exec.auth {
                    exec.meta
                        .insert(KEY_AUTH, auth.encode().as_slice())
                        .map_err(db_err(path, "write auth"))?;
                }
                listed = exec.listed.take();
                changed_auth = exec.auth.take();
            }
            txn.commit().map_err(db_err(path, "commit"))?;
            Ok(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                if let Some(auth) = changed_auth {
                    *self
                        .inner
                        .auth
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Arc::new(auth);
                }
                let revision = state.revision;
                *self
                    .inner
                    .state
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = state;
                if revision != before {
                    self.inner.feed.announce(match listed {
                        Some(changes) => Applied::Changes {
                            after: before,
                            revision,
                            changes,
                        },
                        None => Applied::Jumped { revision },
                    });
                }
                Ok(outcomes)
            }
            Err(e) => {
                self.poison(&e);
                Err(e)
            }
        }
    }

    /// Whether [`DURABLE_EVERY_ENTRIES`] or more applied entries are held
    /// by non-durable commits only: time for [`KvStore::sync`].
    pub fn sync_due(&self) -> bool {
        let durable = self.lock_writer();
        self.applied_index().get().saturating_sub(durable.get()) >= DURABLE_EVERY_ENTRIES
    }

    /// Makes everything applied so far durable (one fsync).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.check_failed()?;
        let mut durable = self.lock_writer();
        self.sync_locked(&mut durable)
    }

    pub(crate) fn sync_locked(&self, durable: &mut LogIndex) -> Result<(), StoreError> {
        let applied = self.applied_index();
        if *durable == applied {
            return Ok(());
        }
        let path = self.inner.path.as_path();
        let result = (|| {
            let txn = self
                .backend()
                .db
                .begin_write()
                .map_err(db_err(path, "begin write"))?;
            txn.commit().map_err(db_err(path, "commit"))
        })();
        match result {
            Ok(()) => {
                *durable = applied;
                Ok(())
            }
            Err(e) => {
                self.poison(&e);
                Err(e)
            }
        }
    }

    /// Records `membership` as the configuration in force at the applied
    /// index when the state machine has none yet, durably. The bootstrap
    /// configuration of a cluster lives only in the log store (as the meta of
    /// its base "snapshot" at index 0); without this, every snapshot image
    /// this state machine produces would carry an empty configuration, and a
    /// follower that installs one would know no members at all. Returns
    /// whether it changed anything.
    pub fn adopt_membership(&self, membership: &Membership) -> Result<bool, StoreError> {
        self.check_failed()?;
        let mut durable = self.lock_writer();
        let mut state = self.state();
        if !state.membership.is_empty() || membership.is_empty() {
            return Ok(false);
        }
        state.membership = membership.clone();
        self.store_state(&mut durable, state)?;
        Ok(true)
    }

    /// Makes a state machine restored from a backup the start of a new
    /// cluster: its configuration becomes `membership`, and the alarms
    /// raised in the old cluster (which name the old cluster's members)
    /// are dropped; keys, history, revisions and the applied index stay.
    /// Durable. Returns the position the new cluster's logs start at.
    pub fn restart_as_new_cluster(
        &self,
        membership: &Membership,
    ) -> Result<SnapshotMeta, StoreError> {
        self.check_failed()?;
        let mut durable = self.lock_writer();
        let mut state = self.state();
        state.membership = membership.clone();
        state.alarms.clear();
        let meta = state.meta();
        self.store_state(&mut durable, state)?;
        Ok(meta)
    }

    /// Writes `state` as the state record, durably, and makes it current.
    fn store_state(&self, durable: &mut LogIndex, state: KvState) -> Result<(), StoreError> {
        let path = self.inner.path.as_path();
        let result = (|| {
            let txn = self
                .backend()
                .db
                .begin_write()
                .map_err(db_err(path, "begin write"))?;
            {
                let mut meta = txn.open_table(META).map_err(db_err(path, "open meta"))?;
                meta.insert(KEY_STATE, state.encode().as_slice())
                    .map_err(db_err(path, "write state"))?;
            }
            txn.commit().map_err(db_err(path, "commit"))
        })();
        if let Err(e) = result {
            self.poison(&e);
            return Err(e);
        }
        *durable = state.applied_index;
        *self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner) = state;
        Ok(())
    }

    /// The value of one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let path = self.inner.path.as_path();
        let txn = self
            .backend()
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        let t = txn.open_table(KV).map_err(db_err(path, "open kv"))?;
        let v = t.get(key).map_err(db_err(path, "read key"))?;
        v.map(|v| decode_kv(path, key, v.value())).transpose()
    }

    /// A range read at the current revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult, StoreError> {
        self.inner
            .limits
            .check_range(req)
            .map_err(StoreError::InvalidRequest)?;
        self.read(req)
    }

    /// A range read without this member's size limits (the node checks
    /// those where a request comes in; the simulation's checks read keys
    /// larger than a small member's limits).
    pub(crate) fn read(&self, req: &RangeRequest) -> Result<RangeResult, StoreError> {
        let path = self.inner.path.as_path();
        let backend = self.backend();
        let txn = backend
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        let t = txn.open_table(KV).map_err(db_err(path, "open kv"))?;
        let versions = txn
            .open_table(VERSIONS)
            .map_err(db_err(path, "open versions"))?;
        // The revision from the same read transaction as the keys.
        let state = state_in(&txn, path)?;
        range::Source {
            kv: &t,
            versions: &versions,
            index: &backend.index,
            path,
            current: state.revision,
            kv_revision: Some(state.revision),
            compacted: state.compaction.compacted,
        }
        .range(req)
    }

    /// A checksum of every stored version at or below `revision` (0: the
    /// current one) and of the compacted revision, read in one transaction;
    /// returns it with the revision it covers. Members that applied the
    /// same entries agree on it.
    pub fn hash_history(&self, revision: i64) -> Result<(u32, i64), StoreError> {
        self.hash_at(revision).map(|h| (h.hash, h.hash_revision))
    }

    /// [`KvStore::hash_history`] with the compacted and current revisions
    /// of the same read (what etcd's HashKV answers): two members' hashes
    /// are comparable when their compacted revisions agree.
    pub fn hash_at(&self, revision: i64) -> Result<HistoryHash, StoreError> {
        let path = self.inner.path.as_path();
        let txn = self
            .backend()
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        let versions = txn
            .open_table(VERSIONS)
            .map_err(db_err(path, "open versions"))?;
        let state = state_in(&txn, path)?;
        range::check_revision(revision, state.revision, state.compaction.compacted)
            .map_err(StoreError::InvalidRequest)?;
        let at = if revision == 0 {
            state.revision
        } else {
            revision
        };
        let hash =
            super::mvcc::hash::hash_history(&versions, path, at, state.compaction.compacted)?;
        Ok(HistoryHash {
            hash,
            hash_revision: at,
            compact_revision: state.compaction.compacted,
            revision: state.revision,
        })
    }

    /// The raised alarms, as last applied.
    pub fn alarms(&self) -> Vec<Alarm> {
        self.with_state(|s| s.alarms.clone())
    }

    /// The compacted revision: reads below it fail.
    pub fn compacted_revision(&self) -> i64 {
        self.with_state(|s| s.compaction.compacted)
    }

    /// Lease `id`, if it exists (as last applied).
    pub fn lease(&self, id: i64) -> Result<Option<LeaseInfo>, StoreError> {
        let path = self.inner.path.as_path();
        let txn = self
            .backend()
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        match txn.open_table(LEASES) {
            Ok(t) => lease::get(&t, path, id),
            // A file written before leases existed has none.
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(db_err(path, "open leases")(e)),
        }
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        let path = self.inner.path.as_path();
        let txn = self
            .backend()
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        match txn.open_table(LEASES) {
            Ok(t) => lease::all(&t, path),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(db_err(path, "open leases")(e)),
        }
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Bytes>, StoreError> {
        let path = self.inner.path.as_path();
        let txn = self
            .backend()
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        match txn.open_table(LEASE_KEYS) {
            Ok(t) => lease::keys(&t, path, id),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(db_err(path, "open lease keys")(e)),
        }
    }

    /// Subscribes to the change feed: every later apply that changes the
    /// revision is announced (see `feed.rs`).
    pub fn subscribe(&self) -> Subscription {
        self.inner.feed.subscribe()
    }

    /// Reads history back as changes in revision order, from one read
    /// transaction (see `mvcc/replay.rs`).
    pub fn replay(&self, req: &ReplayRequest) -> Result<Replay, StoreError> {
        let path = self.inner.path.as_path();
        let backend = self.backend();
        let txn = backend
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        let versions = txn
            .open_table(VERSIONS)
            .map_err(db_err(path, "open versions"))?;
        let state = state_in(&txn, path)?;
        replay::replay(
            &versions,
            &backend.index,
            path,
            req,
            state.revision,
            state.compaction.compacted,
        )
    }

    /// Tells subscribers that the store moved to `revision` without
    /// listing the changes (a snapshot was installed).
    pub(crate) fn announce_jump(&self, revision: i64) {
        self.inner.feed.announce(Applied::Jumped { revision });
    }
}

fn init_tables(db: &Database, path: &Path, state: &KvState) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err(path, "begin write"))?;
    {
        txn.open_table(KV).map_err(db_err(path, "create tables"))?;
        txn.open_table(VERSIONS)
            .map_err(db_err(path, "create tables"))?;
        txn.open_table(CLIENTS)
            .map_err(db_err(path, "create tables"))?;
        txn.open_table(LEASES)
            .map_err(db_err(path, "create tables"))?;
        txn.open_table(LEASE_KEYS)
            .map_err(db_err(path, "create tables"))?;
        let mut meta = txn
            .open_table(META)
            .map_err(db_err(path, "create tables"))?;
        meta.insert(KEY_STATE, state.encode().as_slice())
            .map_err(db_err(path, "write state"))?;
    }
    txn.commit().map_err(db_err(path, "commit"))
}

/// Reads the auth store (the default, empty one if it was never used).
pub(crate) fn load_auth(db: &Database, path: &Path) -> Result<AuthState, StoreError> {
    let txn = db.begin_read().map_err(db_err(path, "begin read"))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(AuthState::default()),
        Err(e) => return Err(db_err(path, "open meta")(e)),
    };
    match meta.get(KEY_AUTH).map_err(db_err(path, "read auth"))? {
        Some(v) => AuthState::decode(v.value()).map_err(corrupt(path, "auth store")),
        None => Ok(AuthState::default()),
    }
}

pub(crate) fn load_state(db: &Database, path: &Path) -> Result<KvState, StoreError> {
    let not_a_store = || StoreError::NotAStore {
        file: path.to_path_buf(),
        kind: "key-value",
        missing: "state record",
    };
    let txn = db.begin_read().map_err(db_err(path, "begin read"))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(not_a_store()),
        Err(e) => return Err(db_err(path, "open meta")(e)),
    };
    let v = meta
        .get(KEY_STATE)
        .map_err(db_err(path, "read state"))?
        .ok_or_else(not_a_store)?;
    match KvState::decode(v.value()).map_err(corrupt(path, "state"))? {
        Ok(state) => Ok(state),
        Err(found) => Err(StoreError::UnknownFormat {
            file: path.to_path_buf(),
            found,
            supported: KV_FORMAT_VERSION,
        }),
    }
}

pub(crate) fn decode_kv(path: &Path, key: &[u8], buf: &[u8]) -> Result<KeyValue, StoreError> {
    let v = StoredValue::decode(buf)
        .map_err(|source| DecodeError::Prost {
            what: "key value",
            source,
        })
        .map_err(corrupt(path, "key value"))?;
    Ok(KeyValue {
        key: Bytes::copy_from_slice(key),
        value: v.value,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        lease: v.lease,
    })
}

/// Calls `f` for every stored pair in the etcd range `[key, range_end)`.
pub(crate) fn for_each_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    path: &Path,
    key: &[u8],
    range_end: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if range_end.is_empty() {
        if let Some(v) = t.get(key).map_err(db_err(path, "read key"))? {
            f(key, v.value())?;
        }
        return Ok(());
    }
    let iter = if range_end == [0] {
        t.range::<&[u8]>(key..)
    } else if range_end <= key {
        return Ok(());
    } else {
        t.range::<&[u8]>(key..range_end)
    }
    .map_err(db_err(path, "read range"))?;
    for item in iter {
        let (k, v) = item.map_err(db_err(path, "read range"))?;
        f(k.value(), v.value())?;
    }
    Ok(())
}

fn compare_holds(kv: Option<&KeyValue>, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::Value(v) => match kv {
            Some(kv) => kv.value.as_ref().cmp(v.as_ref()),
            None => return false,
        },
        CompareTarget::Version(n) => kv.map_or(0, |kv| kv.version).cmp(n),
        CompareTarget::CreateRevision(n) => kv.map_or(0, |kv| kv.create_revision).cmp(n),
        CompareTarget::ModRevision(n) => kv.map_or(0, |kv| kv.mod_revision).cmp(n),
        CompareTarget::Lease(n) => kv.map_or(0, |kv| kv.lease).cmp(n),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

/// The tables of one apply transaction and the operations on them.
struct Exec<'t> {
    kv: Table<'t, &'static [u8], &'static [u8]>,
    versions: VersionsTable<'t>,
    /// Changed along with `versions`, write by write, so that reads of
    /// history later in the batch find them.
    index: &'t RwLock<KeyIndex>,
    clients: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
    leases: Table<'t, i64, &'static [u8]>,
    lease_keys: Table<'t, (i64, &'static [u8]), ()>,
    path: &'t Path,
    /// The position of the next write inside the revision being written.
    sub: u32,
    /// The changes made, when someone subscribed to the feed.
    listed: Option<Vec<Change>>,
    /// The auth store before this batch.
    auth_base: Arc<AuthState>,
    /// The auth store as this batch changed it; `None` while unchanged.
    auth: Option<AuthState>,
}

/// One transaction's branches, borrowed.
struct TxnRef<'a> {
    compares: &'a [Compare],
    success: &'a [TxnOp],
    failure: &'a [TxnOp],
}

impl<'t> Exec<'t> {
    fn open(
        txn: &'t WriteTransaction,
        index: &'t RwLock<KeyIndex>,
        path: &'t Path,
    ) -> Result<Self, StoreError> {
        Ok(Exec {
            kv: txn.open_table(KV).map_err(db_err(path, "open kv"))?,
            versions: txn
                .open_table(VERSIONS)
                .map_err(db_err(path, "open versions"))?,
            index,
            clients: txn
                .open_table(CLIENTS)
                .map_err(db_err(path, "open clients"))?,
            meta: txn.open_table(META).map_err(db_err(path, "open meta"))?,
            leases: txn
                .open_table(LEASES)
                .map_err(db_err(path, "open leases"))?,
            lease_keys: txn
                .open_table(LEASE_KEYS)
                .map_err(db_err(path, "open lease keys"))?,
            path,
            sub: 0,
            listed: None,
            auth_base: Arc::default(),
            auth: None,
        })
    }

    /// Deletes some of the garbage the last compaction left; called once
    /// per applied entry, so the work is the same on every member.
    fn compact_step(&mut self, state: &mut KvState) -> Result<(), StoreError> {
        compaction::step(
            &mut self.versions,
            self.index,
            self.path,
            &mut state.compaction,
            compaction::STEP_BUDGET,
        )
    }

    fn apply_command(
        &mut self,
        data: &[u8],
        state: &mut KvState,
    ) -> Result<ApplyOutcome, StoreError> {
        let cmd = match Command::decode(data) {
            Ok(c) => c,
            Err(e) => return Ok(ApplyOutcome::Rejected(KvError::Undecodable(e.to_string()))),
        };
        if let Some(rid) = cmd.request_id {
            let last = self
                .clients
                .get(rid.client_id)
                .map_err(db_err(self.path, "read client"))?
                .map(|v| decode_client_record(v.value()))
                .transpose()
                .map_err(corrupt(self.path, "client outcome"))?;
            if let Some(last) = last {
                if rid.seq == last.seq {
                    if last.fingerprint != 0 && last.fingerprint != cmd.op.fingerprint() {
                        return Ok(ApplyOutcome::Rejected(KvError::IdempotencyConflict {
                            client_id: rid.client_id,
                            seq: rid.seq,
                        }));
                    }
                    return Ok(last.outcome);
                }
                if rid.seq < last.seq {
                    return Ok(ApplyOutcome::Rejected(KvError::StaleRequest {
                        client_id: rid.client_id,
                        seq: rid.seq,
                        last_seq: last.seq,
                    }));
                }
            }
        }
        if let Err(e) = Limits::check_well_formed(&cmd.op) {
            return Ok(ApplyOutcome::Rejected(e));
        }
        if let Some(stamp) = &cmd.auth {
            // The auth store as of this entry: this batch's changes so far,
            // else the one applied before the batch.
            let auth = self.auth.as_ref().unwrap_or(self.auth_base.as_ref());
            if access::denied_at_apply(auth, stamp, &cmd.op) {
                // Refused before anything is written: the revision does not
                // move, and no client record is kept (a retry is checked
                // again).
                return Ok(ApplyOutcome::Rejected(KvError::Auth(
                    AuthError::PermissionDenied,
                )));
            }
        }
        let fingerprint = if cmd.request_id.is_some() {
            cmd.op.fingerprint()
        } else {
            0
        };
        self.sub = 0;
        let outcome = match self.execute(cmd.op, state)? {
            Ok(outcome) => outcome,
            Err(e) => ApplyOutcome::Rejected(e),
        };
        if let Some(rid) = cmd.request_id {
            if let Some(record) = encode_client_record(rid.seq, fingerprint, &outcome) {
                self.clients
                    .insert(rid.client_id, record.as_slice())
                    .map_err(db_err(self.path, "write client"))?;
            }
        }
        Ok(outcome)
    }

    /// Applies one operation. The inner error is a deterministic rejection,
    /// decided before anything is written.
    fn execute(
        &mut self,
        op: Op,
        state: &mut KvState,
    ) -> Result<Result<ApplyOutcome, KvError>, StoreError> {
        let next = state.revision + 1;
        // Like etcd's capped applier: while NOSPACE is raised, nothing that
        // adds data applies; reads, deletes and compaction still do, so
        // that space can be freed.
        if state.no_space() && op.adds_data() {
            return Ok(Err(KvError::NoSpace));
        }
        Ok(Ok(match op {
            Op::Put {
                key,
                value,
                prev_kv,
                ignore_value,
                ignore_lease,
                lease,
            } => {
                let prev = self.get(&key)?;
                if (ignore_value || ignore_lease) && prev.is_none() {
                    return Ok(Err(KvError::KeyNotFound));
                }
                if !ignore_lease && lease != 0 && !self.lease_exists(lease)? {
                    return Ok(Err(KvError::LeaseNotFound));
                }
                let value = match (&prev, ignore_value) {
                    (Some(p), true) => p.value.clone(),
                    _ => value,
                };
                let lease = match (&prev, ignore_lease) {
                    (Some(p), true) => p.lease,
                    _ => lease,
                };
                let prev = self.put(&key, value, lease, next)?;
                state.revision = next;
                ApplyOutcome::Put {
                    revision: next,
                    prev_kv: prev.filter(|_| prev_kv),
                }
            }
            Op::DeleteRange {
                key,
                range_end,
                prev_kv,
            } => {
                let prev = self.delete_range(&key, &range_end, next)?;
                if !prev.is_empty() {
                    state.revision = next;
                }
                ApplyOutcome::Delete {
                    revision: state.revision,
                    deleted: prev.len() as u64,
                    prev_kvs: if prev_kv { prev } else { Vec::new() },
                }
            }
            Op::Txn {
                compares,
                success,
                failure,
            } => {
                let txn = TxnRef {
                    compares: &compares,
                    success: &success,
                    failure: &failure,
                };
                // Like etcd, every compare (nested ones too) is evaluated
                // against the state before the transaction, and the path
                // chosen is checked before anything is written.
                let mut path = Vec::new();
                self.txn_path(&txn, &mut path)?;
                if let Err(e) = self.check_path(&txn, &mut path.iter().copied(), state)? {
                    return Ok(Err(e));
                }
                let mut wrote = false;
                let (succeeded, mut responses) =
                    self.run_txn(&txn, &mut path.iter().copied(), state, &mut wrote)?;
                if wrote {
                    state.revision = next;
                }
                // Reads inside the transaction report the revision the
                // transaction as a whole produced.
                set_range_revisions(&mut responses, state.revision);
                ApplyOutcome::Txn {
                    revision: state.revision,
                    succeeded,
                    responses,
                }
            }
            Op::Compact { revision } => {
                if revision <= state.compaction.compacted {
                    return Ok(Err(KvError::Compacted));
                }
                if revision > state.revision {
                    return Ok(Err(KvError::FutureRevision));
                }
                state.compaction = compaction::Progress::start(revision);
                // Before any version goes: reads below it fail from now on.
                self.index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .raise_floor(revision);
                ApplyOutcome::Compact {
                    revision: state.revision,
                }
            }
            Op::Alarm {
                action,
                member_id,
                kind,
            } => {
                // As etcd answers: a list gives every alarm, a raise the
                // alarm raised, a disarm the alarm it cleared (if any).
                let alarm = Alarm { member_id, kind };
                let alarms = match action {
                    AlarmAction::Get => state.alarms.clone(),
                    AlarmAction::Activate => {
                        if let Err(at) = state.alarms.binary_search(&alarm) {
                            state.alarms.insert(at, alarm);
                        }
                        vec![alarm]
                    }
                    AlarmAction::Deactivate => match state.alarms.binary_search(&alarm) {
                        Ok(at) => vec![state.alarms.remove(at)],
                        Err(_) => Vec::new(),
                    },
                };
                ApplyOutcome::Alarms {
                    revision: state.revision,
                    alarms,
                }
            }
            Op::LeaseGrant { id, ttl } => {
                // Like etcd's lessor: 0 is "no lease", never an id.
                if id == 0 {
                    return Ok(Err(KvError::LeaseNotFound));
                }
                if self.lease_exists(id)? {
                    return Ok(Err(KvError::LeaseExists));
                }
                if ttl > MAX_LEASE_TTL {
                    return Ok(Err(KvError::LeaseTtlTooLarge));
                }
                self.leases
                    .insert(id, lease::encode_lease(ttl).as_slice())
                    .map_err(db_err(self.path, "write lease"))?;
                ApplyOutcome::LeaseGranted {
                    revision: state.revision,
                    id,
                    ttl,
                }
            }
            Op::LeaseRevoke { id } => {
                if !self.lease_exists(id)? {
                    return Ok(Err(KvError::LeaseNotFound));
                }
                // Every attached key goes at one revision, as one delete
                // of several keys would.
                let keys = lease::keys(&self.lease_keys, self.path, id)?;
                let mut deleted = 0;
                for key in &keys {
                    deleted += self.delete_range(key, &[], next)?.len();
                }
                if deleted > 0 {
                    state.revision = next;
                }
                self.leases
                    .remove(id)
                    .map_err(db_err(self.path, "delete lease"))?;
                ApplyOutcome::LeaseRevoked {
                    revision: state.revision,
                    id,
                }
            }
            Op::LeaseCheckpoint { checkpoints } => {
                // A lease revoked since the leader read it is skipped.
                for (id, remaining_ttl) in checkpoints {
                    let Some(stored) = self
                        .leases
                        .get(id)
                        .map_err(db_err(self.path, "read lease"))?
                        .map(|v| lease::decode_lease(self.path, v.value()))
                        .transpose()?
                    else {
                        continue;
                    };
                    let record = lease::encode_checkpointed(stored.ttl, remaining_ttl);
                    self.leases
                        .insert(id, record.as_slice())
                        .map_err(db_err(self.path, "write lease"))?;
                }
                ApplyOutcome::LeasesCheckpointed {
                    revision: state.revision,
                }
            }
            Op::Auth(op) => {
                let auth = self
                    .auth
                    .get_or_insert_with(|| self.auth_base.as_ref().clone());
                // A refused change leaves the store as it was (`apply`
                // checks before it changes anything).
                if let Err(e) = auth.apply(op) {
                    return Ok(Err(KvError::Auth(e)));
                }
                ApplyOutcome::AuthChanged {
                    revision: state.revision,
                    auth_revision: auth.revision,
                }
            }
        }))
    }

    fn lease_exists(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self
            .leases
            .get(id)
            .map_err(db_err(self.path, "read lease"))?
            .is_some())
    }

    /// Which branch every (nested) transaction takes, in the order they
    /// run, decided on the state before any of them writes.
    fn txn_path(&self, txn: &TxnRef<'_>, path: &mut Vec<bool>) -> Result<(), StoreError> {
        let mut succeeded = true;
        for c in txn.compares {
            if !self.compare(c)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        let ops = if succeeded { txn.success } else { txn.failure };
        for op in ops {
            if let TxnOp::Txn {
                compares,
                success,
                failure,
            } = op
            {
                let nested = TxnRef {
                    compares,
                    success,
                    failure,
                };
                self.txn_path(&nested, path)?;
            }
        }
        Ok(())
    }

    /// etcd's checks of the operations on the chosen path: reads at a
    /// readable revision, puts that ignore the value or lease on a key that
    /// exists.
    fn check_path(
        &self,
        txn: &TxnRef<'_>,
        path: &mut impl Iterator<Item = bool>,
        state: &KvState,
    ) -> Result<Result<(), KvError>, StoreError> {
        let ops = if path.next().unwrap_or(false) {
            txn.success
        } else {
            txn.failure
        };
        for op in ops {
            match op {
                TxnOp::Range(r) => {
                    if let Err(e) = range::check_revision(
                        r.revision,
                        state.revision,
                        state.compaction.compacted,
                    ) {
                        return Ok(Err(e));
                    }
                }
                TxnOp::Put {
                    key,
                    ignore_value,
                    ignore_lease,
                    lease,
                    ..
                } => {
                    if (*ignore_value || *ignore_lease) && self.get(key)?.is_none() {
                        return Ok(Err(KvError::KeyNotFound));
                    }
                    if !*ignore_lease && *lease != 0 && !self.lease_exists(*lease)? {
                        return Ok(Err(KvError::LeaseNotFound));
                    }
                }
                TxnOp::DeleteRange { .. } => {}
                TxnOp::Txn {
                    compares,
                    success,
                    failure,
                } => {
                    let nested = TxnRef {
                        compares,
                        success,
                        failure,
                    };
                    if let Err(e) = self.check_path(&nested, path, state)? {
                        return Ok(Err(e));
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    fn run_txn(
        &mut self,
        txn: &TxnRef<'_>,
        path: &mut impl Iterator<Item = bool>,
        state: &KvState,
        wrote: &mut bool,
    ) -> Result<(bool, Vec<TxnOpResult>), StoreError> {
        let succeeded = path.next().unwrap_or(false);
        let ops = if succeeded { txn.success } else { txn.failure };
        let next = state.revision + 1;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Range(r) => {
                    let source = range::Source {
                        kv: &self.kv,
                        versions: &self.versions,
                        index: self.index,
                        path: self.path,
                        current: state.revision,
                        kv_revision: (!*wrote).then_some(state.revision),
                        compacted: state.compaction.compacted,
                    };
                    TxnOpResult::Range(source.range(r)?)
                }
                TxnOp::Put {
                    key,
                    value,
                    prev_kv,
                    ignore_value,
                    ignore_lease,
                    lease,
                } => {
                    let (value, lease) = match self.get(key)? {
                        Some(p) => (
                            if *ignore_value {
                                p.value
                            } else {
                                value.clone()
                            },
                            if *ignore_lease { p.lease } else { *lease },
                        ),
                        None => (value.clone(), *lease),
                    };
                    let prev = self.put(key, value, lease, next)?;
                    *wrote = true;
                    TxnOpResult::Put {
                        prev_kv: prev.filter(|_| *prev_kv),
                    }
                }
                TxnOp::DeleteRange {
                    key,
                    range_end,
                    prev_kv,
                } => {
                    let prev = self.delete_range(key, range_end, next)?;
                    *wrote |= !prev.is_empty();
                    TxnOpResult::DeleteRange {
                        deleted: prev.len() as u64,
                        prev_kvs: if *prev_kv { prev } else { Vec::new() },
                    }
                }
                TxnOp::Txn {
                    compares,
                    success,
                    failure,
                } => {
                    let nested = TxnRef {
                        compares,
                        success,
                        failure,
                    };
                    let (succeeded, responses) = self.run_txn(&nested, path, state, wrote)?;
                    TxnOpResult::Txn {
                        succeeded,
                        responses,
                    }
                }
            });
        }
        Ok((succeeded, responses))
    }

    fn compare(&self, c: &Compare) -> Result<bool, StoreError> {
        let mut any = false;
        let mut all = true;
        for_each_in(&self.kv, self.path, &c.key, &c.range_end, |k, v| {
            any = true;
            if all {
                all = compare_holds(Some(&decode_kv(self.path, k, v)?), c);
            }
            Ok(())
        })?;
        Ok(if any { all } else { compare_holds(None, c) })
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.kv
            .get(key)
            .map_err(db_err(self.path, "read key"))?
            .map(|v| decode_kv(self.path, key, v.value()))
            .transpose()
    }

    /// Records a new version of `key` at `rev` in history.
    fn record(&mut self, key: &[u8], rev: i64, stored: &StoredValue) -> Result<(), StoreError> {
        self.versions
            .insert((rev, stored.sub), (key, stored.encode_to_vec().as_slice()))
            .map_err(db_err(self.path, "write history"))?;
        self.index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .record(
                key,
                Rev {
                    revision: rev,
                    sub: stored.sub,
                },
                stored.tombstone,
            );
        self.sub = self.sub.saturating_add(1);
        Ok(())
    }

    /// Writes a new version of `key` attached to `lease` (0: none), and
    /// moves the key in the lease index if its lease changed.
    fn put(
        &mut self,
        key: &[u8],
        value: Bytes,
        lease: i64,
        rev: i64,
    ) -> Result<Option<KeyValue>, StoreError> {
        let prev = self.get(key)?;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            self.detach(old_lease, key)?;
            if lease != 0 {
                self.lease_keys
                    .insert((lease, key), ())
                    .map_err(db_err(self.path, "write lease keys"))?;
            }
        }
        let stored = StoredValue {
            value,
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            tombstone: false,
            sub: self.sub,
            lease,
        };
        self.record(key, rev, &stored)?;
        let latest = StoredValue { sub: 0, ..stored };
        self.kv
            .insert(key, latest.encode_to_vec().as_slice())
            .map_err(db_err(self.path, "write key"))?;
        if let Some(listed) = &mut self.listed {
            listed.push(Change {
                kind: ChangeKind::Put,
                kv: KeyValue {
                    key: Bytes::copy_from_slice(key),
                    value: latest.value,
                    create_revision: latest.create_revision,
                    mod_revision: latest.mod_revision,
                    version: latest.version,
                    lease: latest.lease,
                },
                prev: prev.clone(),
            });
        }
        Ok(prev)
    }

    fn delete_range(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut prev = Vec::new();
        for_each_in(&self.kv, self.path, key, range_end, |k, v| {
            prev.push(decode_kv(self.path, k, v)?);
            Ok(())
        })?;
        for kv in &prev {
            self.kv
                .remove(kv.key.as_ref())
                .map_err(db_err(self.path, "delete key"))?;
            self.detach(kv.lease, &kv.key)?;
            let tombstone = StoredValue {
                mod_revision: rev,
                tombstone: true,
                sub: self.sub,
                ..Default::default()
            };
            self.record(&kv.key, rev, &tombstone)?;
            if let Some(listed) = &mut self.listed {
                listed.push(Change {
                    kind: ChangeKind::Delete,
                    kv: KeyValue {
                        key: kv.key.clone(),
                        mod_revision: rev,
                        ..Default::default()
                    },
                    prev: Some(kv.clone()),
                });
            }
        }
        Ok(prev)
    }
}

impl Exec<'_> {
    /// Removes `key` from lease `lease`'s keys (nothing for lease 0).
    fn detach(&mut self, lease: i64, key: &[u8]) -> Result<(), StoreError> {
        if lease != 0 {
            self.lease_keys
                .remove((lease, key))
                .map_err(db_err(self.path, "delete lease keys"))?;
        }
        Ok(())
    }
}

/// The state record as of read transaction `txn` (the default state in a
/// file that has none, or one of another format version).
fn state_in(txn: &redb::ReadTransaction, path: &Path) -> Result<KvState, StoreError> {
    let meta = txn.open_table(META).map_err(db_err(path, "open meta"))?;
    Ok(meta
        .get(KEY_STATE)
        .map_err(db_err(path, "read state"))?
        .map(|v| KvState::decode(v.value()))
        .transpose()
        .map_err(corrupt(path, "state"))?
        .and_then(Result::ok)
        .unwrap_or_default())
}

fn set_range_revisions(responses: &mut [TxnOpResult], revision: i64) {
    for r in responses {
        match r {
            TxnOpResult::Range(r) => r.revision = revision,
            TxnOpResult::Txn { responses, .. } => set_range_revisions(responses, revision),
            _ => {}
        }
    }
}
