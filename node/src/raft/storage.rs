//! What the core reads from durable storage, and an in-memory implementation.
//!
//! The core only *reads* storage, through [`Storage`]. Writing is the
//! driver's job: it persists what [`Ready`](super::Ready) hands it and then
//! calls [`advance`](super::RaftNode::advance). Entries the core holds that
//! are not yet persisted live in its unstable tail (see `log.rs`).
//!
//! Storage contract, for every implementation:
//! - the log is contiguous from `first_index()` to `last_index()`; entries
//!   before `first_index()` have been compacted into the snapshot, whose
//!   index is `first_index() - 1`;
//! - `append(entries)` removes every stored entry with an index at or after
//!   `entries[0].index` before writing (a conflicting suffix is replaced);
//! - installing a snapshot discards the whole log.

use bytes::Bytes;

use super::membership::Membership;
use super::snapshot::{Snapshot, SnapshotMeta};
use super::types::{Entry, HardState, LogIndex, Term};

/// Why storage could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The requested index was compacted into a snapshot.
    #[error("log index {0} has been compacted")]
    Compacted(LogIndex),
    /// The requested index is past the end of the log.
    #[error("log index {0} is not available")]
    Unavailable(LogIndex),
    /// The underlying store failed; the node cannot go on safely.
    #[error("storage failure: {0}")]
    Io(String),
}

/// What a node starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    pub hard_state: HardState,
    /// The configuration as of the snapshot (or the bootstrap configuration).
    /// Membership entries in the stored log are applied on top of it.
    pub membership: Membership,
}

/// Read access to the durable log, as the core needs it.
pub trait Storage {
    /// The hard state and base configuration to start from.
    fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// Entries in `[lo, hi)`. If `max_bytes` is given, stops once the total
    /// size would exceed it, but always returns at least one entry.
    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`. For `first_index() - 1` this is the
    /// snapshot's term.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;

    /// The index of the first entry still in the log.
    fn first_index(&self) -> Result<LogIndex, StorageError>;

    /// The index of the last entry (the snapshot's index if the log is empty).
    fn last_index(&self) -> Result<LogIndex, StorageError>;

    /// The most recent snapshot, to send to a follower that fell behind
    /// compaction. Its `data` may be empty if the driver streams images out
    /// of band.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// An in-memory [`Storage`] with the write operations a driver needs. Used by
/// the simulator and by unit tests; it loses nothing that was written to it,
/// so a simulated crash that keeps the `MemStorage` keeps exactly what was
/// "persisted".
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot.meta.index + 1`.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// Storage for a brand-new node with the given bootstrap configuration.
    /// Every node of a statically bootstrapped cluster must start from the
    /// same configuration; a node that joins later starts empty.
    pub fn new(membership: Membership) -> Self {
        MemStorage {
            hard_state: HardState::default(),
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: LogIndex::ZERO,
                    term: Term::ZERO,
                    membership,
                },
                data: Bytes::new(),
            },
            entries: Vec::new(),
        }
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Appends entries, replacing any stored entries from `entries[0].index` on.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let base = self.snapshot.meta.index;
        if first.index <= base {
            return Err(StorageError::Compacted(first.index));
        }
        let last = self.last_index_inner();
        if first.index > last.next() {
            return Err(StorageError::Unavailable(first.index));
        }
        let keep = (first.index.0 - base.0 - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Replaces the whole log with a snapshot.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        if self.hard_state.commit < snapshot.meta.index {
            self.hard_state.commit = snapshot.meta.index;
        }
        if self.hard_state.term < snapshot.meta.term {
            self.hard_state.term = snapshot.meta.term;
        }
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// Records a snapshot taken locally at `index` (which must be in the log)
    /// and discards the entries it covers.
    pub fn compact(
        &mut self,
        index: LogIndex,
        membership: Membership,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let base = self.snapshot.meta.index;
        if index <= base {
            return Err(StorageError::Compacted(index));
        }
        if index > self.last_index_inner() {
            return Err(StorageError::Unavailable(index));
        }
        let term = self.term(index)?;
        let drop = (index.0 - base.0) as usize;
        self.entries.drain(..drop);
        self.snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership,
            },
            data,
        };
        Ok(())
    }

    fn last_index_inner(&self) -> LogIndex {
        self.snapshot.meta.index.plus(self.entries.len() as u64)
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            membership: self.snapshot.meta.membership.clone(),
        })
    }

    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry>, StorageError> {
        let base = self.snapshot.meta.index;
        if lo <= base {
            return Err(StorageError::Compacted(lo));
        }
        if hi > self.last_index_inner().next() {
            return Err(StorageError::Unavailable(hi));
        }
        let from = (lo.0 - base.0 - 1) as usize;
        let to = (hi.0.saturating_sub(base.0 + 1)) as usize;
        let mut out = Vec::new();
        let mut size = 0usize;
        for e in self.entries.get(from..to).unwrap_or(&[]) {
            size += e.approximate_size();
            if let Some(max) = max_bytes {
                if !out.is_empty() && size > max {
                    break;
                }
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let base = self.snapshot.meta.index;
        if index == base {
            return Ok(self.snapshot.meta.term);
        }
        if index < base {
            return Err(StorageError::Compacted(index));
        }
        self.entries
            .get((index.0 - base.0 - 1) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.snapshot.meta.index.next())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryPayload;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Noop,
        }
    }

    #[test]
    fn append_replaces_a_conflicting_suffix() {
        let mut s = MemStorage::default();
        s.append(&[e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        s.append(&[e(2, 2)]).unwrap();
        assert_eq!(s.last_index().unwrap(), LogIndex(2));
        assert_eq!(s.term(LogIndex(2)).unwrap(), Term(2));
        assert_eq!(
            s.append(&[e(5, 2)]),
            Err(StorageError::Unavailable(LogIndex(5)))
        );
    }

    #[test]
    fn compaction_keeps_the_snapshot_term_and_drops_covered_entries() {
        let mut s = MemStorage::default();
        s.append(&[e(1, 1), e(2, 1), e(3, 2)]).unwrap();
        s.compact(LogIndex(2), Membership::default(), Bytes::new())
            .unwrap();
        assert_eq!(s.first_index().unwrap(), LogIndex(3));
        assert_eq!(s.term(LogIndex(2)).unwrap(), Term(1));
        assert_eq!(
            s.term(LogIndex(1)),
            Err(StorageError::Compacted(LogIndex(1)))
        );
        assert_eq!(
            s.entries(LogIndex(3), LogIndex(4), None).unwrap(),
            vec![e(3, 2)]
        );
    }
}
