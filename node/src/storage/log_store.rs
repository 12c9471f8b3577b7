//! The durable Raft log: entries, hard state and the base snapshot meta, in
//! one redb file (`raft-log.redb`) in the data directory.
//!
//! Durability: every write ([`LogStore::persist`], [`LogStore::compact`],
//! [`LogStore::bootstrap`]) is ONE redb write transaction committed with
//! `Durability::Immediate` (fsync before `commit` returns). The driver
//! persists everything one `Ready` hands it with a single `persist` call, so
//! a batch of entries costs one fsync (group commit), and nothing the driver
//! acknowledges afterwards can be lost. The one exception is a `persist`
//! that moves only the commit index: it commits without an fsync, and the
//! next durable commit carries it (see `persist`).
//!
//! Opening an existing file: redb repairs its allocator state after an
//! unclean shutdown (walking the file and checking every page checksum).
//! Because every commit here is durable before it is acknowledged, that
//! repair never drops an acknowledged commit: at worst it falls back from a
//! half-written commit slot, whose commit never returned. The repair is
//! reported by [`LogStore::recovered_after_crash`] so the node can log it. A
//! file redb cannot open (truncated, corrupt, not a database) is refused with
//! an error naming the file; nothing is ever discarded to make it open.
//!
//! A write that fails (disk full, I/O error) poisons the store: every later
//! write returns [`StoreError::Failed`], so the node stops accepting writes
//! instead of running on with an unknown on-disk state.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::codec::{self, StoredIdentity};
use super::disk::Disk;
use super::error::{StoreError, corrupt, db_err};
use crate::raft::{
    Entry, EntryPayload, HardState, InitialState, LogIndex, Membership, NodeId, Snapshot,
    SnapshotMeta, Storage, StorageError, Term,
};

/// The file name of the log inside the data directory.
pub const LOG_FILE: &str = "raft-log.redb";

/// The on-disk format this build writes and reads.
pub const LOG_FORMAT_VERSION: u64 = 1;

/// redb's page cache for the log. Only the tail of the log is read (to
/// replicate to followers that are a little behind), so a small cache does;
/// redb's default of 1 GiB would grow with every entry written.
const LOG_CACHE_BYTES: usize = 32 << 20;

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_IDENTITY: &str = "identity";
const KEY_HARD_STATE: &str = "hard_state";
const KEY_SNAPSHOT: &str = "snapshot_meta";
/// Present while the node withholds its votes (see
/// `RaftNode::withhold_votes`); its value is empty.
const KEY_WITHHOLD_VOTES: &str = "withhold_votes";

/// Which cluster and node a data directory belongs to. Checked on every open
/// so that a volume mounted on the wrong pod is refused instead of joining
/// the wrong cluster under the wrong name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub node_id: NodeId,
}

/// Which incarnation of a data directory this is: drawn at random when the
/// log file is created and never changed. A member that comes back under
/// the same id with another storage id lost its data directory (a wiped
/// disk, a replaced volume) and, with it, its log and its vote; the
/// operator reads it from `/v1/status` to replace such a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StorageId(u64);

impl StorageId {
    fn draw() -> StorageId {
        // Never 0: that marks a record written before storage ids existed.
        StorageId(rand::random::<u64>().max(1))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for StorageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The durable Raft log. Cheap to clone; all clones share one database.
#[derive(Clone, Debug)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    identity: Identity,
    storage_id: StorageId,
    db: Database,
    /// What is on disk, kept in memory so that bounds checks and
    /// `initial_state` need no read transaction. Updated only after a commit
    /// returned.
    state: RwLock<Cached>,
    /// Serialises writers so that the cache is updated in commit order.
    write: Mutex<()>,
    /// The first write failure, after which writes are refused.
    failed: Mutex<Option<String>>,
    recovered: bool,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.path)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Default)]
struct Cached {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    last_index: LogIndex,
    /// Whether anything (bootstrap, hard state, entries, snapshot) is stored.
    has_state: bool,
    /// Whether the node withholds its votes.
    withhold_votes: bool,
}

impl LogStore {
    /// Opens (or creates) `raft-log.redb` in `dir`, refusing a file that
    /// belongs to another cluster or node, has an unknown format version, or
    /// cannot be read.
    pub fn open(dir: &Path, identity: Identity) -> Result<LogStore, StoreError> {
        LogStore::open_on(&Disk::default(), dir, identity)
    }

    /// Like [`LogStore::open`], with the database file on `disk`.
    pub fn open_on(disk: &Disk, dir: &Path, identity: Identity) -> Result<LogStore, StoreError> {
        let path = dir.join(LOG_FILE);
        let exists = path.try_exists().map_err(|source| StoreError::Io {
            file: path.clone(),
            op: "stat",
            source,
        })?;
        let recovered = Arc::new(AtomicBool::new(false));
        let db = if exists {
            let flag = recovered.clone();
            let mut builder = super::db_with_cache(LOG_CACHE_BYTES);
            builder.set_repair_callback(move |_| flag.store(true, Ordering::Relaxed));
            disk.open(&builder, &path).map_err(db_err(&path, "open"))?
        } else {
            let db = disk
                .create(&super::db_with_cache(LOG_CACHE_BYTES), &path)
                .map_err(db_err(&path, "create"))?;
            let txn = db.begin_write().map_err(db_err(&path, "begin write"))?;
            {
                let mut meta = txn
                    .open_table(META)
                    .map_err(db_err(&path, "create tables"))?;
                txn.open_table(ENTRIES)
                    .map_err(db_err(&path, "create tables"))?;
                write_identity(&mut meta, &path, identity, StorageId::draw())?;
            }
            txn.commit().map_err(db_err(&path, "commit"))?;
            super::sync_dir(dir)?;
            db
        };
        let (state, stored) = load(&db, &path, identity)?;
        let storage_id = match stored {
            Some(id) => id,
            None => adopt_storage_id(&db, &path, identity)?,
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                path,
                identity,
                storage_id,
                db,
                state: RwLock::new(state),
                write: Mutex::new(()),
                failed: Mutex::new(None),
                recovered: recovered.load(Ordering::Relaxed),
            }),
        })
    }

    /// The cluster and node `dir`'s log belongs to, read without opening
    /// it as any particular node (for offline tools). Fails if a node has
    /// the file open.
    pub fn identity_of(dir: &Path) -> Result<Identity, StoreError> {
        let path = dir.join(LOG_FILE);
        let db = super::db_with_cache(LOG_CACHE_BYTES)
            .open(&path)
            .map_err(db_err(&path, "open"))?;
        let txn = db.begin_read().map_err(db_err(&path, "begin read"))?;
        let id = stored_identity(&open_meta(&txn, &path)?, &path)?;
        Ok(Identity {
            cluster_id: id.cluster_id,
            node_id: NodeId(id.node_id),
        })
    }

    /// The identity this store was opened with.
    pub fn identity(&self) -> Identity {
        self.inner.identity
    }

    /// This data directory's incarnation (see [`StorageId`]).
    pub fn storage_id(&self) -> StorageId {
        self.inner.storage_id
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether redb had to recover the file after an unclean shutdown when it
    /// was opened (no acknowledged data is lost by that; see the module doc).
    pub fn recovered_after_crash(&self) -> bool {
        self.inner.recovered
    }

    /// Whether this node withholds its votes: it joined a cluster with a
    /// new data directory and no committed configuration has shown it as a
    /// learner yet (see `RaftNode::withhold_votes`).
    pub fn withholds_votes(&self) -> bool {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .withhold_votes
    }

    /// Records durably whether this node withholds its votes.
    pub fn set_withhold_votes(&self, on: bool) -> Result<(), StoreError> {
        let path = &self.inner.path;
        let _writer = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(db_err(path, "begin write"))?;
        {
            let mut meta = txn.open_table(META).map_err(db_err(path, "open meta"))?;
            if on {
                meta.insert(KEY_WITHHOLD_VOTES, [].as_slice())
                    .map_err(db_err(path, "write vote withholding"))?;
            } else {
                meta.remove(KEY_WITHHOLD_VOTES)
                    .map_err(db_err(path, "clear vote withholding"))?;
            }
        }
        txn.commit().map_err(db_err(path, "commit"))?;
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .withhold_votes = on;
        Ok(())
    }

    /// Whether nothing at all has been stored yet (a brand-new node).
    pub fn is_new(&self) -> bool {
        !self.cached().has_state
    }

    /// Records the bootstrap configuration as the snapshot meta at index 0,
    /// term 0 (the same starting point as `MemStorage::new`).
    pub fn bootstrap(&self, membership: &Membership) -> Result<(), StoreError> {
        self.bootstrap_with(membership, None)
    }

    /// Bootstraps a member of a new static cluster: the configuration is
    /// the base (index 0) and also the first entry of the log, at term 1,
    /// committed, the same on every initial member. A member added later
    /// that replicates the log from its start then learns the configuration
    /// from entry 1 like any other, and its state machine holds the
    /// configuration in force at every index it applies.
    pub fn bootstrap_cluster(&self, membership: &Membership) -> Result<(), StoreError> {
        let first = Entry {
            term: Term(1),
            index: LogIndex(1),
            payload: EntryPayload::Membership(membership.clone()),
        };
        self.bootstrap_with(membership, Some(&first))
    }

    /// Bootstraps a member of a cluster restored from a backup: the log
    /// starts right after the restored image, at `meta` (the image's
    /// applied index and term, with the new cluster's configuration), as
    /// if that image had been installed; the same on every member.
    pub fn bootstrap_restored(&self, meta: &SnapshotMeta) -> Result<(), StoreError> {
        let hard_state = HardState {
            term: meta.term,
            vote: None,
            commit: meta.index,
        };
        self.bootstrap_at(meta.clone(), None, Some(hard_state))
    }

    fn bootstrap_with(
        &self,
        membership: &Membership,
        first: Option<&Entry>,
    ) -> Result<(), StoreError> {
        let meta = SnapshotMeta {
            index: LogIndex::ZERO,
            term: Term::ZERO,
            membership: membership.clone(),
        };
        let hard_state = first.map(|e| HardState {
            term: e.term,
            vote: None,
            commit: e.index,
        });
        self.bootstrap_at(meta, first, hard_state)
    }

    fn bootstrap_at(
        &self,
        meta: SnapshotMeta,
        first: Option<&Entry>,
        hard_state: Option<HardState>,
    ) -> Result<(), StoreError> {
        let _w = self.lock_writes();
        if !self.is_new() {
            return Err(StoreError::AlreadyBootstrapped {
                file: self.inner.path.clone(),
            });
        }
        let mut next = self.cached();
        self.write("bootstrap", |txn, path| {
            let mut t = txn.open_table(META).map_err(db_err(path, "open meta"))?;
            t.insert(KEY_SNAPSHOT, codec::encode_snapshot_meta(&meta).as_slice())
                .map_err(db_err(path, "write snapshot meta"))?;
            if let Some(hs) = &hard_state {
                t.insert(KEY_HARD_STATE, codec::encode_hard_state(hs).as_slice())
                    .map_err(db_err(path, "write hard state"))?;
            }
            if let Some(e) = first {
                let mut entries = txn
                    .open_table(ENTRIES)
                    .map_err(db_err(path, "open entries"))?;
                entries
                    .insert(e.index.get(), codec::encode_entry(e).as_slice())
                    .map_err(db_err(path, "append entries"))?;
            }
            Ok(())
        })?;
        next.last_index = first.map_or(meta.index, |e| e.index);
        next.snapshot = meta;
        if let Some(hs) = hard_state {
            next.hard_state = hs;
        }
        next.has_state = true;
        self.set_cached(next);
        Ok(())
    }

    /// Persists what one `Ready` hands the driver, in ONE write
    /// transaction: a received snapshot's meta (which discards the whole
    /// log), then `entries` (replacing every stored entry at or after
    /// `entries[0].index`), then the hard state. Returns whether it
    /// waited for the disk, which it does unless the write only moves the
    /// commit index (below).
    pub fn persist(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<bool, StoreError> {
        if snapshot.is_none() && entries.is_empty() && hard_state.is_none() {
            return Ok(false);
        }
        let _w = self.lock_writes();
        let mut next = self.cached();
        // The commit index alone need not be durable, as in etcd (raft's
        // MustSync): a member that restarts with an older one learns it
        // again from the leader, and nothing it holds depends on it being
        // durable (the core starts from the state machine's applied index
        // when that is ahead, see `RaftLog::new`). So a write that moves
        // only the commit index does not wait for the disk; redb makes it
        // durable with the next durable commit, never out of order.
        // Entries, a term, a vote and a snapshot meta are durable before
        // this returns.
        let must_sync = snapshot.is_some()
            || !entries.is_empty()
            || hard_state.is_some_and(|hs| hs.must_sync_after(&next.hard_state));
        let durability = if must_sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Some(meta) = snapshot {
            next.snapshot = meta.clone();
            next.last_index = meta.index;
            next.hard_state.commit = next.hard_state.commit.max(meta.index);
            next.hard_state.term = next.hard_state.term.max(meta.term);
        }
        if let Some(first) = entries.first() {
            self.check_append(&next, entries, first.index)?;
            next.last_index = entries.last().map_or(next.last_index, |e| e.index);
        }
        if let Some(hs) = hard_state {
            next.hard_state = *hs;
        }
        next.has_state = true;
        let hs_changed = snapshot.is_some() || hard_state.is_some();
        self.write_with("persist", durability, |txn, path| {
            if let Some(meta) = snapshot {
                // Dropping the table is cheaper than deleting the entries one
                // by one, and happens in the same transaction.
                txn.delete_table(ENTRIES)
                    .map_err(db_err(path, "discard log"))?;
                let mut t = txn.open_table(META).map_err(db_err(path, "open meta"))?;
                t.insert(KEY_SNAPSHOT, codec::encode_snapshot_meta(meta).as_slice())
                    .map_err(db_err(path, "write snapshot meta"))?;
            }
            let mut t = txn
                .open_table(ENTRIES)
                .map_err(db_err(path, "open entries"))?;
            if let Some(first) = entries.first() {
                // Remove a conflicting suffix. Usually empty or short, so
                // popping from the end is cheapest.
                loop {
                    let last = t
                        .last()
                        .map_err(db_err(path, "read last entry"))?
                        .map(|(k, _)| k.value());
                    if last.is_none_or(|k| k < first.index.get()) {
                        break;
                    }
                    t.pop_last().map_err(db_err(path, "truncate log"))?;
                }
                for e in entries {
                    t.insert(e.index.get(), codec::encode_entry(e).as_slice())
                        .map_err(db_err(path, "append entries"))?;
                }
            }
            if hs_changed {
                let mut m = txn.open_table(META).map_err(db_err(path, "open meta"))?;
                m.insert(
                    KEY_HARD_STATE,
                    codec::encode_hard_state(&next.hard_state).as_slice(),
                )
                .map_err(db_err(path, "write hard state"))?;
            }
            Ok(())
        })?;
        self.set_cached(next);
        Ok(must_sync)
    }

    /// Records a snapshot taken locally at `meta.index` (which must be a
    /// committed entry of the log, with term `meta.term`) and deletes the
    /// entries it covers.
    pub fn compact(&self, meta: SnapshotMeta) -> Result<(), StoreError> {
        let _w = self.lock_writes();
        let mut next = self.cached();
        let invalid = |reason| StoreError::InvalidAppend {
            file: self.inner.path.clone(),
            index: meta.index,
            reason,
        };
        if meta.index <= next.snapshot.index {
            return Err(invalid("compaction index is already compacted"));
        }
        if meta.index > next.last_index {
            return Err(invalid("compaction index is past the end of the log"));
        }
        if meta.index > next.hard_state.commit {
            return Err(invalid("compaction index is not committed"));
        }
        if self.read_term(meta.index)? != meta.term {
            return Err(invalid("compaction term differs from the entry's term"));
        }
        self.write("compact", |txn, path| {
            let mut t = txn
                .open_table(ENTRIES)
                .map_err(db_err(path, "open entries"))?;
            loop {
                let first = t
                    .first()
                    .map_err(db_err(path, "read first entry"))?
                    .map(|(k, _)| k.value());
                if first.is_none_or(|k| k > meta.index.get()) {
                    break;
                }
                t.pop_first().map_err(db_err(path, "compact log"))?;
            }
            let mut m = txn.open_table(META).map_err(db_err(path, "open meta"))?;
            m.insert(KEY_SNAPSHOT, codec::encode_snapshot_meta(&meta).as_slice())
                .map_err(db_err(path, "write snapshot meta"))?;
            Ok(())
        })?;
        next.snapshot = meta;
        self.set_cached(next);
        Ok(())
    }

    /// Compacts the log up to `index`, computing the term and the membership
    /// in force there from the log itself. Used with [`SnapshotPolicy`] to
    /// keep a trailing window of entries behind the state machine snapshot.
    ///
    /// [`SnapshotPolicy`]: super::SnapshotPolicy
    pub fn compact_to(&self, index: LogIndex) -> Result<(), StoreError> {
        let term = self.read_term(index)?;
        let membership = self.membership_at(index)?;
        self.compact(SnapshotMeta {
            index,
            term,
            membership,
        })
    }

    /// The configuration in force at `index`: the last membership entry at or
    /// before it, or the base snapshot's configuration.
    pub fn membership_at(&self, index: LogIndex) -> Result<Membership, StoreError> {
        let cached = self.cached();
        if index <= cached.snapshot.index {
            return Ok(cached.snapshot.membership);
        }
        let path = &self.inner.path;
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        let t = txn
            .open_table(ENTRIES)
            .map_err(db_err(path, "open entries"))?;
        let range = t
            .range(cached.snapshot.index.next().get()..=index.get())
            .map_err(db_err(path, "read entries"))?;
        for item in range.rev() {
            let (_, v) = item.map_err(db_err(path, "read entries"))?;
            let e = codec::decode_entry(v.value()).map_err(corrupt(path, "log entry"))?;
            if let EntryPayload::Membership(m) = e.payload {
                return Ok(m);
            }
        }
        Ok(cached.snapshot.membership)
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.cached().hard_state
    }

    /// Makes this node the only voter of its cluster, to recover from the
    /// permanent loss of a quorum (etcd's `--force-new-cluster`): a
    /// configuration naming only this node is appended after its last
    /// entry, at the current term, and marked committed. The node then
    /// elects itself; the others are added back as learners.
    ///
    /// Unlike etcd, the entries past the stored commit index are kept, as
    /// any newly elected Raft leader keeps its log: this node may have been
    /// part of the majority that committed them, with its leader's next
    /// message (the one carrying the new commit index) lost with the rest
    /// of the cluster. Dropping them would lose writes a client was told
    /// are durable; keeping one that was never committed only settles an
    /// outcome its client was told is unknown.
    ///
    /// Returns the index of the new configuration.
    pub fn force_new_cluster(&self) -> Result<LogIndex, StoreError> {
        let id = self.inner.identity.node_id;
        let path = self.inner.path.clone();
        let _w = self.lock_writes();
        let mut next = self.cached();
        let last = next.last_index;
        // This node's entry comes from the newest configuration that lists
        // it: the last one in the log is in force, but a removal of this
        // node that no quorum committed does not make it a stranger.
        let me = [last, next.hard_state.commit.min(last)]
            .into_iter()
            .map(|at| self.membership_at(at))
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .find_map(|m| m.get(id).cloned())
            .ok_or_else(|| StoreError::NotAMember {
                file: path.clone(),
                id,
            })?;
        let membership = Membership::with_voters([(id, me.context)]);
        let last_term = if last == next.snapshot.index {
            next.snapshot.term
        } else {
            self.read_term(last)?
        };
        let entry = Entry {
            term: next.hard_state.term.max(last_term),
            index: last.next(),
            payload: EntryPayload::Membership(membership),
        };
        let hard_state = HardState {
            term: entry.term,
            vote: next.hard_state.vote,
            commit: entry.index,
        };
        self.write("force a new cluster", |txn, path| {
            let mut t = txn
                .open_table(ENTRIES)
                .map_err(db_err(path, "open entries"))?;
            t.insert(entry.index.get(), codec::encode_entry(&entry).as_slice())
                .map_err(db_err(path, "append configuration"))?;
            let mut m = txn.open_table(META).map_err(db_err(path, "open meta"))?;
            m.insert(
                KEY_HARD_STATE,
                codec::encode_hard_state(&hard_state).as_slice(),
            )
            .map_err(db_err(path, "write hard state"))?;
            Ok(())
        })?;
        next.last_index = entry.index;
        next.hard_state = hard_state;
        self.set_cached(next);
        Ok(entry.index)
    }

    /// The highest index this log both holds and knows to be committed:
    /// how far it can be compacted.
    pub fn stored_commit(&self) -> LogIndex {
        let c = self.cached();
        c.hard_state.commit.min(c.last_index)
    }

    /// The stored base snapshot meta.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.cached().snapshot
    }

    fn cached(&self) -> Cached {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_cached(&self, next: Cached) {
        *self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner) = next;
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check_append(
        &self,
        state: &Cached,
        entries: &[Entry],
        first: LogIndex,
    ) -> Result<(), StoreError> {
        let invalid = |reason| StoreError::InvalidAppend {
            file: self.inner.path.clone(),
            index: first,
            reason,
        };
        if first <= state.snapshot.index {
            return Err(invalid("index is compacted"));
        }
        if first > state.last_index.next() {
            return Err(invalid("would leave a gap after the last entry"));
        }
        if entries.windows(2).any(|w| w[1].index != w[0].index.next()) {
            return Err(invalid("entries are not contiguous"));
        }
        Ok(())
    }

    /// Runs `f` in one durable write transaction; any failure poisons the
    /// store (see the module doc).
    fn write(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction, &Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.write_with(op, Durability::Immediate, f)
    }

    fn write_with(
        &self,
        op: &'static str,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction, &Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let path = &self.inner.path;
        {
            let failed = self
                .inner
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(first) = failed.as_ref() {
                return Err(StoreError::Failed {
                    file: path.clone(),
                    first: first.clone(),
                });
            }
        }
        let result = (|| {
            let mut txn = self.inner.db.begin_write().map_err(db_err(path, op))?;
            txn.set_durability(durability)
                .map_err(|e| db_err(path, op)(redb::Error::from(e)))?;
            f(&txn, path)?;
            txn.commit().map_err(db_err(path, "commit"))
        })();
        if let Err(e) = &result {
            *self
                .inner
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
        }
        result
    }

    fn read_term(&self, index: LogIndex) -> Result<Term, StoreError> {
        let path = &self.inner.path;
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        let t = txn
            .open_table(ENTRIES)
            .map_err(db_err(path, "open entries"))?;
        let v = t.get(index.get()).map_err(db_err(path, "read entry"))?;
        match v {
            Some(v) => Ok(codec::decode_entry(v.value())
                .map_err(corrupt(path, "log entry"))?
                .term),
            None => Err(StoreError::InvalidAppend {
                file: path.clone(),
                index,
                reason: "no such entry",
            }),
        }
    }

    fn read_entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry>, StoreError> {
        let path = &self.inner.path;
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(db_err(path, "begin read"))?;
        let t = txn
            .open_table(ENTRIES)
            .map_err(db_err(path, "open entries"))?;
        let mut out = Vec::new();
        let mut size = 0usize;
        for item in t
            .range(lo.get()..hi.get())
            .map_err(db_err(path, "read entries"))?
        {
            let (_, v) = item.map_err(db_err(path, "read entries"))?;
            let e = codec::decode_entry(v.value()).map_err(corrupt(path, "log entry"))?;
            size += e.approximate_size();
            if let Some(max) = max_bytes {
                if !out.is_empty() && size > max {
                    break;
                }
            }
            out.push(e);
        }
        Ok(out)
    }
}

fn io_err(e: StoreError) -> StorageError {
    StorageError::Io(e.to_string())
}

impl Storage for LogStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let c = self.cached();
        Ok(InitialState {
            hard_state: c.hard_state,
            membership: c.snapshot.membership,
        })
    }

    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry>, StorageError> {
        let c = self.cached();
        if lo <= c.snapshot.index {
            return Err(StorageError::Compacted(lo));
        }
        if hi > c.last_index.next() {
            return Err(StorageError::Unavailable(hi));
        }
        if hi <= lo {
            return Ok(Vec::new());
        }
        let out = self.read_entries(lo, hi, max_bytes).map_err(io_err)?;
        // A concurrent compaction or truncation may have removed entries
        // between the bounds check and the read: answer as if the read had
        // come after it.
        let complete = out.first().is_some_and(|e| e.index == lo)
            && out.windows(2).all(|w| w[1].index == w[0].index.next())
            && (max_bytes.is_some() || out.len() as u64 == hi.get() - lo.get());
        if !complete {
            let c = self.cached();
            if lo <= c.snapshot.index {
                return Err(StorageError::Compacted(lo));
            }
            return Err(StorageError::Unavailable(lo));
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let c = self.cached();
        if index == c.snapshot.index {
            return Ok(c.snapshot.term);
        }
        if index < c.snapshot.index {
            return Err(StorageError::Compacted(index));
        }
        if index > c.last_index {
            return Err(StorageError::Unavailable(index));
        }
        self.read_term(index).map_err(|e| match e {
            StoreError::InvalidAppend { .. } => {
                if index <= self.cached().snapshot.index {
                    StorageError::Compacted(index)
                } else {
                    StorageError::Unavailable(index)
                }
            }
            other => io_err(other),
        })
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.cached().snapshot.index.next())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.cached().last_index)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(Snapshot {
            meta: self.cached().snapshot,
            data: bytes::Bytes::new(),
        })
    }
}

/// Reads and checks what an opened file holds.
fn not_a_store(path: &Path, missing: &'static str) -> StoreError {
    StoreError::NotAStore {
        file: path.to_path_buf(),
        kind: "log",
        missing,
    }
}

type MetaTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;

fn open_meta(txn: &redb::ReadTransaction, path: &Path) -> Result<MetaTable, StoreError> {
    match txn.open_table(META) {
        Ok(t) => Ok(t),
        Err(redb::TableError::TableDoesNotExist(_)) => Err(not_a_store(path, "meta table")),
        Err(e) => Err(db_err(path, "open meta")(e)),
    }
}

/// The identity record every log store has from its creation on.
fn stored_identity(meta: &MetaTable, path: &Path) -> Result<StoredIdentity, StoreError> {
    let id = meta
        .get(KEY_IDENTITY)
        .map_err(db_err(path, "read identity"))?
        .ok_or_else(|| not_a_store(path, "identity record"))?;
    codec::decode_identity(id.value()).map_err(corrupt(path, "identity"))
}

fn write_identity(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    path: &Path,
    identity: Identity,
    storage_id: StorageId,
) -> Result<(), StoreError> {
    let id = codec::encode_identity(&StoredIdentity {
        format_version: LOG_FORMAT_VERSION,
        cluster_id: identity.cluster_id,
        node_id: identity.node_id.get(),
        storage_id: storage_id.get(),
    });
    meta.insert(KEY_IDENTITY, id.as_slice())
        .map_err(db_err(path, "write identity"))?;
    Ok(())
}

/// Draws and records a storage id for a file written before they existed.
fn adopt_storage_id(
    db: &Database,
    path: &Path,
    identity: Identity,
) -> Result<StorageId, StoreError> {
    let storage_id = StorageId::draw();
    let txn = db.begin_write().map_err(db_err(path, "begin write"))?;
    {
        let mut meta = txn.open_table(META).map_err(db_err(path, "open meta"))?;
        write_identity(&mut meta, path, identity, storage_id)?;
    }
    txn.commit().map_err(db_err(path, "commit"))?;
    Ok(storage_id)
}

/// The cached state, and the file's storage id (`None` for a file written
/// before storage ids existed).
fn load(
    db: &Database,
    path: &Path,
    identity: Identity,
) -> Result<(Cached, Option<StorageId>), StoreError> {
    let txn = db.begin_read().map_err(db_err(path, "begin read"))?;
    let meta = open_meta(&txn, path)?;
    let id = stored_identity(&meta, path)?;
    if id.format_version != LOG_FORMAT_VERSION {
        return Err(StoreError::UnknownFormat {
            file: path.to_path_buf(),
            found: id.format_version,
            supported: LOG_FORMAT_VERSION,
        });
    }
    if id.cluster_id != identity.cluster_id {
        return Err(StoreError::WrongCluster {
            file: path.to_path_buf(),
            expected: identity.cluster_id,
            found: id.cluster_id,
        });
    }
    if id.node_id != identity.node_id.get() {
        return Err(StoreError::WrongNode {
            file: path.to_path_buf(),
            expected: identity.node_id,
            found: NodeId(id.node_id),
        });
    }
    let mut state = Cached::default();
    if let Some(v) = meta
        .get(KEY_HARD_STATE)
        .map_err(db_err(path, "read hard state"))?
    {
        state.hard_state =
            codec::decode_hard_state(v.value()).map_err(corrupt(path, "hard state"))?;
        state.has_state = true;
    }
    if let Some(v) = meta
        .get(KEY_SNAPSHOT)
        .map_err(db_err(path, "read snapshot meta"))?
    {
        state.snapshot =
            codec::decode_snapshot_meta(v.value()).map_err(corrupt(path, "snapshot meta"))?;
        state.has_state = true;
    }
    state.withhold_votes = meta
        .get(KEY_WITHHOLD_VOTES)
        .map_err(db_err(path, "read vote withholding"))?
        .is_some();
    state.last_index = state.snapshot.index;
    let entries = match txn.open_table(ENTRIES) {
        Ok(t) => Some(t),
        // A received snapshot drops the table; the next append recreates it.
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(db_err(path, "open entries")(e)),
    };
    if let Some(t) = entries {
        let first = t.first().map_err(db_err(path, "read first entry"))?;
        let last = t.last().map_err(db_err(path, "read last entry"))?;
        if let (Some((first, _)), Some((last, _))) = (first, last) {
            let (first, last) = (first.value(), last.value());
            let len = t.len().map_err(db_err(path, "count entries"))?;
            // The log must continue its base snapshot without a gap.
            if first != state.snapshot.index.get() + 1 || last - first + 1 != len {
                return Err(StoreError::Corrupt {
                    file: path.to_path_buf(),
                    what: "log",
                    source: super::error::DecodeError::Invalid {
                        what: "log",
                        field: "first entry index (not contiguous with the snapshot)",
                        value: first as i64,
                    },
                });
            }
            state.last_index = LogIndex(last);
            state.has_state = true;
        }
    }
    let storage_id = (id.storage_id != 0).then_some(StorageId(id.storage_id));
    Ok((state, storage_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Identity = Identity {
        cluster_id: 7,
        node_id: NodeId(1),
    };

    #[test]
    fn a_data_directory_keeps_its_storage_id_and_a_new_one_gets_another() {
        let dir = tempfile::tempdir().unwrap();
        let first = LogStore::open(dir.path(), ID).unwrap().storage_id();
        assert_eq!(LogStore::open(dir.path(), ID).unwrap().storage_id(), first);

        std::fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
        let wiped = LogStore::open(dir.path(), ID).unwrap().storage_id();
        assert_ne!(wiped, first);
    }

    #[test]
    fn a_file_from_before_storage_ids_gets_one_that_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), ID).unwrap();
        // Rewrite the identity record as older builds wrote it.
        let txn = store.inner.db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            let old = codec::encode_identity(&StoredIdentity {
                format_version: LOG_FORMAT_VERSION,
                cluster_id: ID.cluster_id,
                node_id: ID.node_id.get(),
                storage_id: 0,
            });
            meta.insert(KEY_IDENTITY, old.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        drop(store);

        let adopted = LogStore::open(dir.path(), ID).unwrap().storage_id();
        assert_ne!(adopted.get(), 0);
        assert_eq!(
            LogStore::open(dir.path(), ID).unwrap().storage_id(),
            adopted
        );
    }

    #[test]
    fn vote_withholding_survives_a_restart_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), ID).unwrap();
        assert!(!store.withholds_votes());
        store.set_withhold_votes(true).unwrap();
        drop(store);
        let store = LogStore::open(dir.path(), ID).unwrap();
        assert!(store.withholds_votes());
        store.set_withhold_votes(false).unwrap();
        drop(store);
        assert!(!LogStore::open(dir.path(), ID).unwrap().withholds_votes());
    }
}
