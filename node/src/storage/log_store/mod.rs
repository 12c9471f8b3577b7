//! The durable Raft log: entries, hard state and the base snapshot meta, in
//! segment files under `raft-log/` in the data directory ([`wal`] holds
//! their format and why it is ours rather than a database's).
//!
//! Durability: every write ([`LogStore::persist`], [`LogStore::compact`],
//! [`LogStore::bootstrap`], ...) appends its records to the active segment
//! with one write and then waits for one `fdatasync`. The driver persists
//! everything one `Ready` hands it with a single `persist` call, so a batch
//! of entries costs one fsync (group commit), and nothing the driver
//! acknowledges afterwards can be lost. The one exception is a `persist`
//! that moves only the commit index: it is appended without an fsync, and
//! the next synced write carries it (records reach the disk in order, and a
//! record torn by a crash ends the log there).
//!
//! What is kept in memory: the base snapshot meta, the hard state, and for
//! every entry after the base its term and where its record lies. So the
//! core's `term()` and every bounds check touch no disk; entries are read
//! back from their segments (from the page cache, usually) only to be sent
//! or applied.
//!
//! Opening: the segments are read oldest first and their records replayed
//! (an entry replaces every entry at or after its index, a compaction or a
//! received snapshot moves the base). A record torn by a crash in the newest
//! segment ends the log there; that write never returned, so nothing
//! acknowledged is lost, and [`LogStore::recovered_after_crash`] reports it.
//! Then a new segment is begun, so writes never continue after a torn
//! record. Anything else that does not check out (an older segment that
//! ends early, a missing segment, a gap in the entries) is refused with an
//! error naming the file; nothing is discarded to make it open.
//!
//! Segments are deleted, oldest first, once a durable compaction covers
//! every entry they hold. A log written by earlier builds (one redb file,
//! `raft-log.redb`) is moved into segments the first time it is opened.
//!
//! A write that fails (disk full, I/O error) poisons the store: every later
//! write returns [`StoreError::Failed`], so the node stops accepting writes
//! instead of running on with an unknown on-disk state.
//!
//! The parts: `wal.rs` (segment files and their records), `index.rs` (what
//! is kept in memory), `replay.rs` (opening: from segments to memory),
//! `legacy.rs` (the move from `raft-log.redb`); this file ties them into
//! the store the driver and the core use.

mod index;
mod legacy;
mod replay;
mod wal;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use nix::fcntl::{Flock, FlockArg};

use self::index::{Cached, Held, State};
use self::wal::{Batch, Checkpoint, Kind, Scanned, SegmentFile};
use super::codec;
use super::disk::Disk;
use super::error::{StoreError, corrupt};
use crate::raft::{
    Entry, EntryPayload, HardState, InitialState, LogIndex, Membership, NodeId, Snapshot,
    SnapshotMeta, Storage, StorageError, Term,
};

pub use self::legacy::LEGACY_LOG_FILE;

/// The directory of the log inside the data directory.
pub const LOG_DIR: &str = "raft-log";

/// The on-disk format this build writes and reads (the legacy redb file
/// was version 1).
pub const LOG_FORMAT_VERSION: u64 = 2;

/// How long a segment is when it is created. Appends within it never
/// change the file's size, so their fsync flushes only the data.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Segments on a simulated disk are small, so that simulations begin and
/// delete many of them.
const SIMULATED_SEGMENT_BYTES: u64 = 64 << 10;

/// Which cluster and node a data directory belongs to. Checked on every open
/// so that a volume mounted on the wrong pod is refused instead of joining
/// the wrong cluster under the wrong name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub node_id: NodeId,
}

/// Which incarnation of a data directory this is: drawn at random when the
/// log is created and never changed. A member that comes back under the
/// same id with another storage id lost its data directory (a wiped disk, a
/// replaced volume) and, with it, its log and its vote; the operator reads
/// it from `/v1/status` to replace such a member.
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

/// The durable Raft log. Cheap to clone; all clones share one log.
#[derive(Clone, Debug)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    disk: Disk,
    identity: Identity,
    storage_id: StorageId,
    segment_bytes: u64,
    /// What is on disk, as far as readers may see it: updated only after
    /// a write returned.
    state: RwLock<State>,
    /// The active segment; its lock serialises writers.
    writer: Mutex<Writer>,
    /// The first write failure, after which writes are refused.
    failed: Mutex<Option<String>>,
    recovered: bool,
    /// Held for as long as the store is open, so that a second process on
    /// the same data directory is refused (on the system's disk only).
    _lock: Option<Flock<std::fs::File>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The active segment.
struct Writer {
    file: Arc<SegmentFile>,
    /// Where the next record goes.
    end: u64,
    /// Where the checkpoint ends: a segment holding more is worth rotating.
    start: u64,
    /// The checksum the next record continues.
    crc: u32,
    /// Whether something was appended since the last sync.
    unsynced: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, refusing one that belongs to
    /// another cluster or node, has an unknown format version, or cannot be
    /// read.
    pub fn open(dir: &Path, identity: Identity) -> Result<LogStore, StoreError> {
        LogStore::open_on(&Disk::default(), dir, identity)
    }

    /// Like [`LogStore::open`], with the files on `disk`.
    pub fn open_on(disk: &Disk, dir: &Path, identity: Identity) -> Result<LogStore, StoreError> {
        let log_dir = dir.join(LOG_DIR);
        let legacy = dir.join(LEGACY_LOG_FILE);
        if !exists(&log_dir)? && exists(&legacy)? {
            legacy::import(disk, dir, identity)?;
        }
        let store = LogStore::open_dir(disk, &log_dir, identity, None)?;
        if exists(&legacy)? {
            // Left by a move into segments that a crash interrupted after
            // the segments were in place.
            std::fs::remove_file(&legacy).map_err(|source| StoreError::Io {
                file: legacy.clone(),
                op: "remove after moving it into segments",
                source,
            })?;
        }
        Ok(store)
    }

    /// The cluster and node `dir`'s log belongs to, read without opening
    /// it as any particular node (for offline tools). Fails if a node has
    /// the log open.
    pub fn identity_of(dir: &Path) -> Result<Identity, StoreError> {
        let disk = Disk::default();
        let log_dir = dir.join(LOG_DIR);
        let (cluster_id, node_id) = if exists(&log_dir)? {
            let _lock = take_lock(&log_dir)?;
            let first = wal::list(&log_dir)?
                .first()
                .copied()
                .ok_or_else(|| not_a_store(&log_dir, "segment"))?;
            let c = Scanned::read(&disk, &log_dir, first)?.checkpoint;
            replay::check_format(&log_dir, &c)?;
            (c.cluster_id, c.node_id)
        } else {
            let id = legacy::identity_record(&disk, &dir.join(LEGACY_LOG_FILE))?;
            (id.cluster_id, id.node_id)
        };
        Ok(Identity {
            cluster_id,
            node_id: NodeId(node_id),
        })
    }

    /// Opens the segments in `log_dir` (creating the first if there is
    /// none, with `storage_id` or a new one).
    fn open_dir(
        disk: &Disk,
        log_dir: &Path,
        identity: Identity,
        storage_id: Option<StorageId>,
    ) -> Result<LogStore, StoreError> {
        std::fs::create_dir_all(log_dir).map_err(|source| StoreError::Io {
            file: log_dir.to_path_buf(),
            op: "create",
            source,
        })?;
        let lock_file = if disk.is_simulated() {
            None
        } else {
            Some(take_lock(log_dir)?)
        };
        let segment_bytes = if disk.is_simulated() {
            SIMULATED_SEGMENT_BYTES
        } else {
            SEGMENT_BYTES
        };
        let seqs = wal::list(log_dir)?;
        let (state, storage_id, next_seq, prev_end, recovered) = if seqs.is_empty() {
            let state = State::empty();
            (
                state,
                storage_id.unwrap_or_else(StorageId::draw),
                1,
                0,
                false,
            )
        } else {
            let replayed = replay::replay(disk, log_dir, &seqs, identity)?;
            // What was read may still sit unsynced in the page cache (a
            // killed process's last appends); the new segment's checkpoint
            // is about to name where it ends, so it must be on disk first.
            if let Some(last) = replayed.state.segments.get(&replayed.last_seq) {
                last.file.sync()?;
            }
            (
                replayed.state,
                replayed.storage_id,
                replayed.last_seq + 1,
                replayed.last_end,
                replayed.torn,
            )
        };
        let checkpoint = checkpoint(identity, storage_id, next_seq, prev_end, &state.cached);
        let (file, end, crc) =
            SegmentFile::create(disk, log_dir, next_seq, segment_bytes, &checkpoint)?;
        let file = Arc::new(file);
        let mut state = state;
        state.segments.insert(
            next_seq,
            Held {
                file: file.clone(),
                max_index: LogIndex::ZERO,
            },
        );
        let gone = state.take_deletable(next_seq);
        let store = LogStore {
            inner: Arc::new(Inner {
                dir: log_dir.to_path_buf(),
                disk: disk.clone(),
                identity,
                storage_id,
                segment_bytes,
                state: RwLock::new(state),
                writer: Mutex::new(Writer {
                    file,
                    end,
                    start: end,
                    crc,
                    unsynced: false,
                }),
                failed: Mutex::new(None),
                recovered,
                _lock: lock_file,
            }),
        };
        store.delete(gone)?;
        Ok(store)
    }

    /// The identity this store was opened with.
    pub fn identity(&self) -> Identity {
        self.inner.identity
    }

    /// This data directory's incarnation (see [`StorageId`]).
    pub fn storage_id(&self) -> StorageId {
        self.inner.storage_id
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether the log ended in a record torn by a crash when it was opened
    /// (no acknowledged data is lost by that; see the module doc).
    pub fn recovered_after_crash(&self) -> bool {
        self.inner.recovered
    }

    /// Whether this node withholds its votes: it joined a cluster with a
    /// new data directory and no committed configuration has shown it as a
    /// learner yet (see `RaftNode::withhold_votes`).
    pub fn withholds_votes(&self) -> bool {
        self.read().cached.withhold_votes
    }

    /// Records durably whether this node withholds its votes.
    pub fn set_withhold_votes(&self, on: bool) -> Result<(), StoreError> {
        let mut w = lock(&self.inner.writer);
        self.append(&mut w, &[(Kind::Withhold, &[u8::from(on)])], true)?;
        self.write_state().cached.withhold_votes = on;
        Ok(())
    }

    /// Whether nothing at all has been stored yet (a brand-new node).
    pub fn is_new(&self) -> bool {
        !self.read().cached.has_state
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
        self.bootstrap_with(membership, Some(first))
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
        self.bootstrap_at(meta.clone(), None, hard_state)
    }

    fn bootstrap_with(
        &self,
        membership: &Membership,
        first: Option<Entry>,
    ) -> Result<(), StoreError> {
        let meta = SnapshotMeta {
            index: LogIndex::ZERO,
            term: Term::ZERO,
            membership: membership.clone(),
        };
        let hard_state = first
            .as_ref()
            .map_or_else(HardState::default, |e| HardState {
                term: e.term,
                vote: None,
                commit: e.index,
            });
        self.bootstrap_at(meta, first, hard_state)
    }

    fn bootstrap_at(
        &self,
        meta: SnapshotMeta,
        first: Option<Entry>,
        hard_state: HardState,
    ) -> Result<(), StoreError> {
        if !self.is_new() {
            return Err(StoreError::AlreadyBootstrapped {
                file: self.inner.dir.clone(),
            });
        }
        let entries: Vec<Entry> = first.into_iter().collect();
        self.persist(Some(&meta), &entries, Some(&hard_state))?;
        Ok(())
    }

    /// Persists what one `Ready` hands the driver, in ONE append: a
    /// received snapshot's meta (which discards the whole log), then
    /// `entries` (replacing every stored entry at or after
    /// `entries[0].index`), then the hard state. Returns whether it waited
    /// for the disk, which it does unless the write only moves the commit
    /// index (below).
    pub fn persist(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<bool, StoreError> {
        if snapshot.is_none() && entries.is_empty() && hard_state.is_none() {
            return Ok(false);
        }
        let mut w = lock(&self.inner.writer);
        let mut next = self.read().cached.clone();
        // The commit index alone need not be durable, as in etcd (raft's
        // MustSync): a member that restarts with an older one learns it
        // again from the leader, and nothing it holds depends on it being
        // durable (the core starts from the state machine's applied index
        // when that is ahead, see `RaftLog::new`). So a write that moves
        // only the commit index does not wait for the disk; the next synced
        // append makes it durable, never out of order. Entries, a term, a
        // vote and a snapshot meta are durable before this returns.
        let must_sync = snapshot.is_some()
            || !entries.is_empty()
            || hard_state.is_some_and(|hs| hs.must_sync_after(&next.hard_state));
        if let Some(meta) = snapshot {
            next.snapshot = meta.clone();
            next.last_index = meta.index;
        }
        if let Some(first) = entries.first() {
            self.check_append(&next, entries, first.index)?;
        }
        let mut records: Vec<(Kind, Vec<u8>)> = Vec::with_capacity(entries.len() + 2);
        if let Some(meta) = snapshot {
            records.push((Kind::Install, codec::encode_snapshot_meta(meta)));
        }
        for e in entries {
            records.push((Kind::Entry, codec::encode_entry(e)));
        }
        // The hard state after a snapshot is at least the snapshot's.
        let mut hs_after = hard_state.copied();
        if let Some(meta) = snapshot {
            let mut hs = hs_after.unwrap_or(next.hard_state);
            hs.commit = hs.commit.max(meta.index);
            hs.term = hs.term.max(meta.term);
            hs_after = Some(hs);
        }
        if let Some(hs) = &hs_after {
            records.push((Kind::HardState, codec::encode_hard_state(hs)));
        }
        let refs: Vec<(Kind, &[u8])> = records.iter().map(|(k, p)| (*k, p.as_slice())).collect();
        let at = self.append(&mut w, &refs, must_sync)?;
        let mut state = self.write_state();
        if let Some(meta) = snapshot {
            state.install(meta.clone());
        }
        let skip = usize::from(snapshot.is_some());
        state.place(entries, &at[skip..skip + entries.len()]);
        if let Some(hs) = hs_after {
            state.cached.hard_state = hs;
        }
        state.cached.has_state = true;
        Ok(must_sync)
    }

    /// Records a snapshot taken locally at `meta.index` (which must be a
    /// committed entry of the log, with term `meta.term`) and deletes the
    /// entries it covers.
    pub fn compact(&self, meta: SnapshotMeta) -> Result<(), StoreError> {
        let mut w = lock(&self.inner.writer);
        {
            let state = self.read();
            let next = &state.cached;
            let invalid = |reason| StoreError::InvalidAppend {
                file: self.inner.dir.clone(),
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
            if state.slot(meta.index).map(|s| s.term) != Some(meta.term) {
                return Err(invalid("compaction term differs from the entry's term"));
            }
        }
        let record = codec::encode_snapshot_meta(&meta);
        self.append(&mut w, &[(Kind::Compact, &record)], true)?;
        let active = w.file.seq;
        let gone = {
            let mut state = self.write_state();
            state.compact(meta);
            state.take_deletable(active)
        };
        drop(w);
        self.delete(gone)
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
        let found = {
            let state = self.read();
            let base = state.cached.snapshot.index;
            if index <= base {
                return Ok(state.cached.snapshot.membership.clone());
            }
            let upto = (index.get() - base.get()).min(state.slots.len() as u64) as usize;
            match state.slots.range(..upto).rposition(|s| s.membership) {
                Some(i) => LogIndex(base.get() + 1 + i as u64),
                None => return Ok(state.cached.snapshot.membership.clone()),
            }
        };
        let entry = self
            .read_entries(found, found.next(), None)?
            .into_iter()
            .next();
        match entry.map(|e| e.payload) {
            Some(EntryPayload::Membership(m)) => Ok(m),
            // Compacted or replaced between the two looks: look again.
            _ => self.membership_at(index),
        }
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.read().cached.hard_state
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
        let next = self.read().cached.clone();
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
                file: self.inner.dir.clone(),
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
        self.persist(None, std::slice::from_ref(&entry), Some(&hard_state))?;
        Ok(entry.index)
    }

    /// The highest index this log both holds and knows to be committed:
    /// how far it can be compacted.
    pub fn stored_commit(&self) -> LogIndex {
        let c = &self.read().cached;
        c.hard_state.commit.min(c.last_index)
    }

    /// The stored base snapshot meta.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.read().cached.snapshot.clone()
    }

    /// How many segment files the log has: for tests and the curious.
    pub fn segment_count(&self) -> usize {
        self.read().segments.len()
    }

    /// The bytes the log's segments take on disk: what the file system
    /// allocated, so that the unwritten rest of a segment created at its
    /// full length does not count.
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        let paths: Vec<PathBuf> = self
            .read()
            .segments
            .values()
            .map(|held| held.file.path.clone())
            .collect();
        paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check_append(
        &self,
        state: &Cached,
        entries: &[Entry],
        first: LogIndex,
    ) -> Result<(), StoreError> {
        let invalid = |reason| StoreError::InvalidAppend {
            file: self.inner.dir.clone(),
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

    /// Appends `records` to the active segment with one write (beginning a
    /// new segment first if they do not fit), and syncs if `sync`. Returns
    /// where each record's payload lies: (segment, offset, length). Any
    /// failure poisons the store (see the module doc).
    fn append(
        &self,
        w: &mut Writer,
        records: &[(Kind, &[u8])],
        sync: bool,
    ) -> Result<Vec<(u64, u64, u32)>, StoreError> {
        if let Some(first) = lock(&self.inner.failed).as_ref() {
            return Err(StoreError::Failed {
                file: self.inner.dir.clone(),
                first: first.clone(),
            });
        }
        let result = (|| -> Result<Vec<(u64, u64, u32)>, StoreError> {
            let size: u64 = records.iter().map(|(_, p)| wal::record_size(p.len())).sum();
            if w.end + size > self.inner.segment_bytes && w.end > w.start {
                self.rotate(w)?;
            }
            let mut batch = Batch::new(w.crc);
            for (kind, payload) in records {
                batch.push(*kind, payload);
            }
            w.file.write(w.end, batch.bytes())?;
            if sync {
                w.file.sync()?;
            }
            w.unsynced = !sync;
            let seq = w.file.seq;
            let at = batch
                .payloads()
                .iter()
                .map(|&(offset, len)| (seq, w.end + offset, len))
                .collect();
            w.end += batch.len();
            w.crc = batch.crc();
            Ok(at)
        })();
        if let Err(e) = &result {
            *lock(&self.inner.failed) = Some(e.to_string());
        }
        result
    }

    /// Begins the next segment, with a checkpoint of the state as written
    /// so far.
    fn rotate(&self, w: &mut Writer) -> Result<(), StoreError> {
        // The checkpoint names where this segment's records end; they must
        // all be on disk for that to hold after a crash.
        if w.unsynced {
            w.file.sync()?;
            w.unsynced = false;
        }
        let seq = w.file.seq + 1;
        let checkpoint = {
            let state = self.read();
            checkpoint(
                self.inner.identity,
                self.inner.storage_id,
                seq,
                w.end,
                &state.cached,
            )
        };
        let (file, end, crc) = SegmentFile::create(
            &self.inner.disk,
            &self.inner.dir,
            seq,
            self.inner.segment_bytes,
            &checkpoint,
        )?;
        let file = Arc::new(file);
        self.write_state().segments.insert(
            seq,
            Held {
                file: file.clone(),
                max_index: LogIndex::ZERO,
            },
        );
        *w = Writer {
            file,
            end,
            start: end,
            crc,
            unsynced: false,
        };
        Ok(())
    }

    /// Removes segment files no longer needed. Their deletion need not be
    /// durable: a segment that comes back after a crash is replayed, and
    /// the compaction after it drops its entries again.
    fn delete(&self, gone: Vec<Arc<SegmentFile>>) -> Result<(), StoreError> {
        for file in gone {
            std::fs::remove_file(&file.path).map_err(|source| StoreError::Io {
                file: file.path.clone(),
                op: "remove compacted segment",
                source,
            })?;
        }
        Ok(())
    }

    fn read_term(&self, index: LogIndex) -> Result<Term, StoreError> {
        let state = self.read();
        if index == state.cached.snapshot.index {
            return Ok(state.cached.snapshot.term);
        }
        state
            .slot(index)
            .map(|s| s.term)
            .ok_or_else(|| StoreError::InvalidAppend {
                file: self.inner.dir.clone(),
                index,
                reason: "no such entry",
            })
    }

    /// Entries `[lo, hi)` (all of them held), at least one and then up to
    /// about `max_bytes`. Records that lie next to each other are read
    /// with one read.
    fn read_entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut runs: Vec<Run> = Vec::new();
        {
            let state = self.read();
            let mut size = 0usize;
            let mut index = lo;
            while index < hi {
                let Some(slot) = state.slot(index) else { break };
                size += slot.size as usize;
                if index > lo && max_bytes.is_some_and(|max| size > max) {
                    break;
                }
                let record_start = slot.offset - wal::HEADER;
                match runs.last_mut() {
                    Some((file, _, end, records))
                        if file.seq == slot.seq && *end == record_start =>
                    {
                        *end = slot.offset + u64::from(slot.len);
                        records.push((slot.offset, slot.len));
                    }
                    _ => {
                        let Some(held) = state.segments.get(&slot.seq) else {
                            break;
                        };
                        runs.push((
                            held.file.clone(),
                            slot.offset,
                            slot.offset + u64::from(slot.len),
                            vec![(slot.offset, slot.len)],
                        ));
                    }
                }
                index = index.next();
            }
        }
        let mut out = Vec::new();
        for (file, start, end, records) in runs {
            let bytes = file.read(start, end - start)?;
            for (offset, len) in records {
                let from = (offset - start) as usize;
                let payload = &bytes[from..from + len as usize];
                out.push(codec::decode_entry(payload).map_err(corrupt(&file.path, "log entry"))?);
            }
        }
        Ok(out)
    }
}

/// Records that lie next to each other in one segment, read with one
/// read: the segment, where the first payload starts, where the last ends,
/// and each payload's (offset, length).
type Run = (Arc<SegmentFile>, u64, u64, Vec<(u64, u32)>);

fn exists(path: &Path) -> Result<bool, StoreError> {
    path.try_exists().map_err(|source| StoreError::Io {
        file: path.to_path_buf(),
        op: "stat",
        source,
    })
}

/// Takes the log directory's lock, which a running node holds.
fn take_lock(log_dir: &Path) -> Result<Flock<std::fs::File>, StoreError> {
    let path = log_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io {
            file: path.clone(),
            op: "open lock",
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| StoreError::Io {
        file: path.clone(),
        op: "lock (is a node running on this data directory?)",
        source: errno.into(),
    })
}

/// Refuses a log that belongs to another cluster or node.
fn check_owner(
    file: &Path,
    cluster_id: u64,
    node_id: u64,
    identity: Identity,
) -> Result<(), StoreError> {
    if cluster_id != identity.cluster_id {
        return Err(StoreError::WrongCluster {
            file: file.to_path_buf(),
            expected: identity.cluster_id,
            found: cluster_id,
        });
    }
    if node_id != identity.node_id.get() {
        return Err(StoreError::WrongNode {
            file: file.to_path_buf(),
            expected: identity.node_id,
            found: NodeId(node_id),
        });
    }
    Ok(())
}

fn not_a_store(path: &Path, missing: &'static str) -> StoreError {
    StoreError::NotAStore {
        file: path.to_path_buf(),
        kind: "log",
        missing,
    }
}

fn checkpoint(
    identity: Identity,
    storage_id: StorageId,
    seq: u64,
    prev_end: u64,
    c: &Cached,
) -> Checkpoint {
    Checkpoint {
        format_version: LOG_FORMAT_VERSION,
        cluster_id: identity.cluster_id,
        node_id: identity.node_id.get(),
        storage_id: storage_id.get(),
        seq,
        prev_end,
        snapshot_meta: codec::encode_snapshot_meta(&c.snapshot),
        hard_state: codec::encode_hard_state(&c.hard_state),
        has_state: c.has_state,
        withhold_votes: c.withhold_votes,
    }
}

fn io_err(e: StoreError) -> StorageError {
    StorageError::Io(e.to_string())
}

impl Storage for LogStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let c = &self.read().cached;
        Ok(InitialState {
            hard_state: c.hard_state,
            membership: c.snapshot.membership.clone(),
        })
    }

    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry>, StorageError> {
        {
            let c = &self.read().cached;
            if lo <= c.snapshot.index {
                return Err(StorageError::Compacted(lo));
            }
            if hi > c.last_index.next() {
                return Err(StorageError::Unavailable(hi));
            }
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
            if lo <= self.read().cached.snapshot.index {
                return Err(StorageError::Compacted(lo));
            }
            return Err(StorageError::Unavailable(lo));
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let state = self.read();
        let c = &state.cached;
        if index == c.snapshot.index {
            return Ok(c.snapshot.term);
        }
        if index < c.snapshot.index {
            return Err(StorageError::Compacted(index));
        }
        state
            .slot(index)
            .map(|s| s.term)
            .ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.read().cached.snapshot.index.next())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.read().cached.last_index)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(Snapshot {
            meta: self.read().cached.snapshot.clone(),
            data: bytes::Bytes::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec::StoredIdentity;

    const ID: Identity = Identity {
        cluster_id: 7,
        node_id: NodeId(1),
    };

    fn entry(i: u64) -> Entry {
        Entry {
            term: Term(2),
            index: LogIndex(i),
            payload: EntryPayload::Command(bytes::Bytes::from(format!("e{i}"))),
        }
    }

    #[test]
    fn a_data_directory_keeps_its_storage_id_and_a_new_one_gets_another() {
        let dir = tempfile::tempdir().unwrap();
        let first = LogStore::open(dir.path(), ID).unwrap().storage_id();
        assert_eq!(LogStore::open(dir.path(), ID).unwrap().storage_id(), first);

        std::fs::remove_dir_all(dir.path().join(LOG_DIR)).unwrap();
        let wiped = LogStore::open(dir.path(), ID).unwrap().storage_id();
        assert_ne!(wiped, first);
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

    #[test]
    fn the_size_on_disk_counts_what_was_written_not_the_preallocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), ID).unwrap();
        let empty = store.disk_bytes();
        assert!(empty < SEGMENT_BYTES / 4, "{empty}");
        let big: Vec<Entry> = (1..=200)
            .map(|i| Entry {
                payload: EntryPayload::Command(bytes::Bytes::from(vec![7u8; 10_000])),
                ..entry(i)
            })
            .collect();
        store.persist(None, &big, None).unwrap();
        let written = store.disk_bytes() - empty;
        assert!(
            (2_000_000..SEGMENT_BYTES / 4).contains(&written),
            "{written}"
        );
    }

    #[test]
    fn a_second_open_of_a_running_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _running = LogStore::open(dir.path(), ID).unwrap();
        let err = LogStore::open(dir.path(), ID).unwrap_err().to_string();
        assert!(err.contains("is a node running"), "{err}");
        let err = LogStore::identity_of(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a node running"), "{err}");
    }

    #[test]
    fn a_legacy_log_is_moved_into_segments_whole() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = SnapshotMeta {
            index: LogIndex(10),
            term: Term(1),
            membership: Membership::with_voters([(NodeId(1), bytes::Bytes::new())]),
        };
        let hard_state = HardState {
            term: Term(2),
            vote: Some(NodeId(1)),
            commit: LogIndex(12),
        };
        let entries: Vec<Entry> = (11..=3000).map(entry).collect();
        legacy::write_for_test(
            &dir.path().join(LEGACY_LOG_FILE),
            StoredIdentity {
                format_version: 1,
                cluster_id: ID.cluster_id,
                node_id: ID.node_id.get(),
                storage_id: 0xfeed,
            },
            &hard_state,
            &snapshot,
            &entries,
        );
        assert_eq!(
            LogStore::identity_of(dir.path()).unwrap(),
            ID,
            "read from the legacy file"
        );
        let store = LogStore::open(dir.path(), ID).unwrap();
        assert!(!dir.path().join(LEGACY_LOG_FILE).exists());
        assert_eq!(store.storage_id().get(), 0xfeed);
        assert_eq!(store.hard_state(), hard_state);
        assert_eq!(store.snapshot_meta(), snapshot);
        assert_eq!(
            store.entries(LogIndex(11), LogIndex(3001), None).unwrap(),
            entries
        );
        drop(store);
        let store = LogStore::open(dir.path(), ID).unwrap();
        assert_eq!(store.last_index().unwrap(), LogIndex(3000));
        assert_eq!(store.term(LogIndex(3000)).unwrap(), Term(2));
    }

    #[test]
    fn an_interrupted_move_into_segments_is_done_again() {
        let dir = tempfile::tempdir().unwrap();
        legacy::write_for_test(
            &dir.path().join(LEGACY_LOG_FILE),
            StoredIdentity {
                format_version: 1,
                cluster_id: ID.cluster_id,
                node_id: ID.node_id.get(),
                storage_id: 3,
            },
            &HardState::default(),
            &SnapshotMeta::default(),
            &[entry(1)],
        );
        // What a crash in the middle of the move leaves behind.
        let staging = dir.path().join(format!("{LOG_DIR}.importing"));
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join(wal::segment_name(1)), b"half").unwrap();
        let store = LogStore::open(dir.path(), ID).unwrap();
        assert_eq!(
            store.entries(LogIndex(1), LogIndex(2), None).unwrap(),
            vec![entry(1)]
        );
        assert!(!staging.exists());
    }
}
