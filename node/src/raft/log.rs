//! The log as the core sees it: what storage holds durably, plus an unstable
//! tail of entries (and possibly a snapshot) not yet persisted.
//!
//! Entries enter the unstable tail when a leader appends a proposal or a
//! follower accepts entries from its leader. [`Ready`](super::Ready) hands
//! each entry of the tail to the driver once (`handed` marks how far); the
//! tail keeps it until the driver says it is durable — at `advance` for a
//! driver that persists before it returns, or by a late acknowledgement
//! "persisted up to (index, term)" for one that persists on another
//! thread — and storage serves it from then on. A conflicting suffix is
//! "truncated" by starting the tail below storage's last index: storage
//! replaces everything from the tail's first index when it persists it,
//! and an acknowledgement for a write the truncation overtook no longer
//! matches the log's (index, term) and is ignored.

use std::collections::VecDeque;

use super::snapshot::Snapshot;
use super::storage::{Storage, StorageError};
use super::types::{Entry, LogIndex, Term};

/// How much of the durable, unapplied log [`RaftLog`] keeps in memory.
const MAX_RECENT_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub struct RaftLog<S> {
    storage: S,
    /// Durable entries kept in memory after they left the unstable tail,
    /// until they are applied: terms of recent entries, appends to
    /// followers that are slightly behind and the entries to apply are then
    /// served without reading storage. Contiguous, and it ends right before
    /// `unstable_offset` (or is empty).
    recent: VecDeque<Entry>,
    /// Approximate size of `recent`, bounded by [`MAX_RECENT_BYTES`].
    recent_bytes: usize,
    /// Not yet persisted; `unstable[0].index == unstable_offset`.
    unstable: Vec<Entry>,
    unstable_offset: LogIndex,
    /// A snapshot received from the leader and not yet installed.
    pending_snapshot: Option<Snapshot>,
    /// The highest index known to be committed.
    pub committed: LogIndex,
    /// The highest index handed to the driver to apply.
    pub applied: LogIndex,
    /// The last index known to be durable. A leader counts itself toward a
    /// quorum only up to here, which is what lets it send appends while
    /// its own write is still in flight (thesis §10.2.1).
    pub persisted: LogIndex,
    /// The last entry handed to the driver to persist; the tail after it
    /// has not been handed out yet.
    handed: LogIndex,
    /// Whether the pending snapshot was handed to the driver.
    snapshot_handed: bool,
    /// Hand out only committed entries that are durable here too (for a
    /// driver that persists asynchronously: the state machine then never
    /// holds an entry the local log could lose in a crash).
    pub apply_only_persisted: bool,
}

impl<S: Storage> RaftLog<S> {
    pub fn new(storage: S, commit: LogIndex, applied: LogIndex) -> Result<Self, StorageError> {
        let first = storage.first_index()?;
        let last = storage.last_index()?;
        let floor = first.prev();
        // Committed entries never go below the snapshot, and never past the
        // end of what is stored.
        // A state machine that applied an entry proves it committed: with
        // asynchronous persistence the hard state recording the commit may
        // have been lost in a crash while the applied entries (durable
        // here before they were applied) were not.
        let committed = commit.max(floor).max(applied).min(last);
        let applied = applied.max(floor).min(committed);
        Ok(RaftLog {
            storage,
            recent: VecDeque::new(),
            recent_bytes: 0,
            unstable: Vec::new(),
            unstable_offset: last.next(),
            pending_snapshot: None,
            committed,
            applied,
            persisted: last,
            handed: last,
            snapshot_handed: false,
            apply_only_persisted: false,
        })
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn first_index(&self) -> Result<LogIndex, StorageError> {
        match &self.pending_snapshot {
            Some(s) => Ok(s.meta.index.next()),
            None => self.storage.first_index(),
        }
    }

    pub fn last_index(&self) -> LogIndex {
        self.unstable_offset.plus(self.unstable.len() as u64).prev()
    }

    /// The term of the entry at `index`.
    pub fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index > self.last_index() {
            return Err(StorageError::Unavailable(index));
        }
        if index >= self.unstable_offset {
            return Ok(self.unstable[(index.0 - self.unstable_offset.0) as usize].term);
        }
        if let Some(e) = self.recent_entry(index) {
            return Ok(e.term);
        }
        if let Some(s) = &self.pending_snapshot {
            return if index == s.meta.index {
                Ok(s.meta.term)
            } else {
                Err(StorageError::Compacted(index))
            };
        }
        self.storage.term(index)
    }

    pub fn last_term(&self) -> Term {
        // The last index is always either in the unstable tail, the pending
        // snapshot, or storage; a failure here means storage is broken, and
        // an unknown term compares as the oldest.
        self.term(self.last_index()).unwrap_or(Term::ZERO)
    }

    /// Whether the entry at `index` has term `term`.
    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index).map(|t| t == term).unwrap_or(false)
    }

    /// Raft's "at least as up to date" rule (paper §5.4.1).
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Entries from `lo` to the end of the log, at most `max_bytes` (but at
    /// least one entry).
    pub fn entries_from(&self, lo: LogIndex, max_bytes: usize) -> Result<Vec<Entry>, StorageError> {
        let last = self.last_index();
        if lo > last {
            return Ok(Vec::new());
        }
        self.slice(lo, last.next(), max_bytes)
    }

    /// Entries in `[lo, hi)`, at most `max_bytes` (but at least one entry).
    pub fn slice(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let first = self.first_index()?;
        if lo < first {
            return Err(StorageError::Compacted(lo));
        }
        let mut out = Vec::new();
        let mut size = 0usize;
        if lo < self.unstable_offset {
            let stored_hi = hi.min(self.unstable_offset);
            if self.recent_entry(lo).is_some() {
                for i in lo.0..stored_hi.0 {
                    let Some(e) = self.recent_entry(LogIndex(i)) else {
                        break;
                    };
                    size += e.approximate_size();
                    if !out.is_empty() && size > max_bytes {
                        return Ok(out);
                    }
                    out.push(e.clone());
                }
            } else {
                out = self.storage.entries(lo, stored_hi, Some(max_bytes))?;
                size = out.iter().map(Entry::approximate_size).sum();
            }
            if (out.len() as u64) < stored_hi.0 - lo.0 {
                return Ok(out);
            }
        }
        if hi > self.unstable_offset {
            let from = lo.max(self.unstable_offset);
            let start = (from.0 - self.unstable_offset.0) as usize;
            let end = (hi.0 - self.unstable_offset.0) as usize;
            for e in &self.unstable[start..end.min(self.unstable.len())] {
                size += e.approximate_size();
                if !out.is_empty() && size > max_bytes {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    /// Appends entries that follow the last one (a leader's own proposals).
    pub fn append(&mut self, entries: Vec<Entry>) {
        self.unstable.extend(entries);
    }

    /// A follower's AppendEntries consistency check and append (paper §5.3).
    /// Returns the index of the last entry the request covered, or `None` if
    /// the log does not contain `prev_index` with `prev_term`.
    pub fn maybe_append(
        &mut self,
        prev_index: LogIndex,
        prev_term: Term,
        leader_commit: LogIndex,
        entries: Vec<Entry>,
    ) -> Option<LogIndex> {
        if !self.matches(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index.plus(entries.len() as u64);
        // Skip the entries we already have; the first entry whose term
        // differs (or that we lack) starts the part to write.
        let conflict = entries
            .iter()
            .position(|e| !self.matches(e.index, e.term))
            .unwrap_or(entries.len());
        let to_write: Vec<Entry> = entries.into_iter().skip(conflict).collect();
        if let Some(first) = to_write.first() {
            if first.index <= self.committed {
                // A leader never asks us to overwrite committed entries; if
                // one does, refusing keeps committed state intact.
                return None;
            }
            self.truncate_and_append(to_write);
        }
        self.commit_to(leader_commit.min(last_new));
        Some(last_new)
    }

    /// Replaces everything from `entries[0].index` on with `entries`.
    fn truncate_and_append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let after = first.index;
        // Whatever was handed from `after` on is superseded; it is handed
        // again (storage replaces it) with the new entries.
        self.handed = self.handed.min(after.prev());
        if after == self.unstable_offset.plus(self.unstable.len() as u64) {
            self.unstable.extend(entries);
        } else if after <= self.unstable_offset {
            // The suffix to replace starts in storage: the new tail starts
            // there, and storage drops its conflicting entries when it
            // persists the tail.
            self.unstable_offset = after;
            self.unstable = entries;
            self.persisted = self.persisted.min(after.prev());
            while self.recent.back().is_some_and(|e| e.index >= after) {
                if let Some(e) = self.recent.pop_back() {
                    self.recent_bytes -= e.approximate_size();
                }
            }
        } else {
            self.unstable
                .truncate((after.0 - self.unstable_offset.0) as usize);
            self.unstable.extend(entries);
        }
    }

    /// The first index at or before `index` whose term is at most `term`,
    /// used for fast back-tracking: every entry after it up to `index` has a
    /// larger term and cannot match.
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> (LogIndex, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t > term && i > LogIndex::ZERO => i = i.prev(),
                Ok(t) => return (i, t),
                // Compacted entries are committed, hence match the leader.
                Err(_) => return (i, Term::ZERO),
            }
        }
    }

    pub fn commit_to(&mut self, index: LogIndex) {
        if index > self.committed {
            self.committed = index.min(self.last_index());
        }
    }

    /// Installs a snapshot received from the leader: the log now starts after
    /// it (to be persisted with the next `Ready`).
    pub fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.committed = index;
        self.unstable.clear();
        self.unstable_offset = index.next();
        self.persisted = self.persisted.min(index);
        self.handed = self.handed.min(index);
        self.snapshot_handed = false;
        self.recent.clear();
        self.recent_bytes = 0;
        self.pending_snapshot = Some(snapshot);
    }

    /// Whether there is a snapshot or are entries not yet handed out.
    pub fn has_unhanded(&self) -> bool {
        (self.pending_snapshot.is_some() && !self.snapshot_handed)
            || self.last_index() > self.handed
    }

    #[cfg(test)]
    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable
    }

    /// Hands out what is not yet handed: the pending snapshot (once) and the
    /// entries after `handed`.
    pub fn take_unhanded(&mut self) -> (Option<Snapshot>, Vec<Entry>) {
        let snapshot = match &self.pending_snapshot {
            Some(s) if !self.snapshot_handed => Some(s.clone()),
            _ => None,
        };
        let from = self.handed.next().max(self.unstable_offset);
        let start = (from.0 - self.unstable_offset.0) as usize;
        let entries = self.unstable.get(start..).unwrap_or_default().to_vec();
        self.handed = self.last_index();
        self.snapshot_handed = self.pending_snapshot.is_some();
        (snapshot, entries)
    }

    /// The driver reports that everything it was handed up to the entry
    /// `(index, term)` (or the snapshot at it) is durable. An acknowledgement
    /// that no longer matches the log (a truncation overtook the write it
    /// stands for) says nothing about the current log and is ignored; the
    /// write that replaced the suffix will be acknowledged in its turn.
    pub fn stable_to(&mut self, index: LogIndex, term: Term) {
        if index > self.handed || !self.matches(index, term) {
            return;
        }
        if let Some(s) = &self.pending_snapshot {
            if !self.snapshot_handed || index < s.meta.index {
                return;
            }
            // Writes are durable in the order they were handed, so the
            // snapshot's write (handed before anything after it) is done.
            let index = s.meta.index;
            self.pending_snapshot = None;
            self.snapshot_handed = false;
            self.applied = self.applied.max(index);
        }
        if index >= self.unstable_offset {
            let n = (index.0 - self.unstable_offset.0 + 1) as usize;
            let durable: Vec<Entry> = self.unstable.drain(..n.min(self.unstable.len())).collect();
            self.keep_recent(durable);
            self.unstable_offset = index.next();
        }
        self.persisted = self.persisted.max(index);
    }

    /// The entry at `index` if it is among the recent durable ones.
    fn recent_entry(&self, index: LogIndex) -> Option<&Entry> {
        let first = self.recent.front()?.index;
        if index < first {
            return None;
        }
        self.recent.get((index.0 - first.0) as usize)
    }

    /// Keeps entries that just became durable (they directly follow
    /// `recent`) in memory until they are applied.
    fn keep_recent(&mut self, durable: Vec<Entry>) {
        if let (Some(last), Some(first)) = (self.recent.back(), durable.first())
            && last.index.next() != first.index
        {
            self.recent.clear();
            self.recent_bytes = 0;
        }
        for e in durable {
            self.recent_bytes += e.approximate_size();
            self.recent.push_back(e);
        }
        self.trim_recent();
    }

    /// Forgets recent entries that are applied, and the oldest ones beyond
    /// the memory bound (storage still has them).
    pub fn trim_recent(&mut self) {
        while let Some(e) = self.recent.front() {
            if e.index > self.applied && self.recent_bytes <= MAX_RECENT_BYTES {
                break;
            }
            self.recent_bytes -= e.approximate_size();
            self.recent.pop_front();
        }
    }

    /// The driver persisted the unstable tail and snapshot.
    pub fn stable(&mut self) {
        if let Some(s) = self.pending_snapshot.take() {
            if self.applied < s.meta.index {
                self.applied = s.meta.index;
            }
        }
        self.unstable_offset = self.unstable_offset.plus(self.unstable.len() as u64);
        let durable = std::mem::take(&mut self.unstable);
        self.keep_recent(durable);
        self.persisted = self.last_index();
        self.handed = self.persisted;
        self.snapshot_handed = false;
    }

    /// The last index that may be handed out to apply.
    fn apply_limit(&self) -> LogIndex {
        if self.apply_only_persisted {
            self.committed.min(self.persisted)
        } else {
            self.committed
        }
    }

    pub fn has_committed_to_apply(&self) -> bool {
        self.apply_limit() > self.applied && self.pending_snapshot.is_none()
    }

    /// Committed entries not yet applied, up to `max_bytes`.
    pub fn committed_to_apply(&self, max_bytes: usize) -> Result<Vec<Entry>, StorageError> {
        if !self.has_committed_to_apply() {
            return Ok(Vec::new());
        }
        self.slice(self.applied.next(), self.apply_limit().next(), max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::membership::Membership;
    use crate::raft::storage::MemStorage;
    use crate::raft::types::EntryPayload;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Noop,
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog<MemStorage> {
        let mut s = MemStorage::new(Membership::default());
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, t)| e(i as u64 + 1, *t))
            .collect();
        s.append(&entries).unwrap();
        RaftLog::new(s, LogIndex::ZERO, LogIndex::ZERO).unwrap()
    }

    #[test]
    fn append_entries_is_refused_when_the_previous_entry_does_not_match() {
        let mut log = log_with(&[1, 1, 2]);
        assert_eq!(
            log.maybe_append(LogIndex(3), Term(3), LogIndex(0), vec![e(4, 3)]),
            None
        );
        assert_eq!(
            log.maybe_append(LogIndex(4), Term(2), LogIndex(0), vec![e(5, 3)]),
            None
        );
    }

    #[test]
    fn a_conflicting_suffix_is_replaced_and_matching_entries_kept() {
        let mut log = log_with(&[1, 1, 2, 2]);
        let last = log.maybe_append(
            LogIndex(2),
            Term(1),
            LogIndex(3),
            vec![e(3, 2), e(4, 3), e(5, 3)],
        );
        assert_eq!(last, Some(LogIndex(5)));
        assert_eq!(log.term(LogIndex(3)).unwrap(), Term(2));
        assert_eq!(log.term(LogIndex(4)).unwrap(), Term(3));
        assert_eq!(log.last_index(), LogIndex(5));
        // Entry 3 matched and is not rewritten; the tail starts at 4.
        assert_eq!(log.unstable_entries()[0].index, LogIndex(4));
        assert_eq!(log.committed, LogIndex(3));
    }

    #[test]
    fn a_stale_append_does_not_truncate_newer_entries() {
        let mut log = log_with(&[1, 1, 2, 2]);
        assert_eq!(
            log.maybe_append(LogIndex(1), Term(1), LogIndex(0), vec![e(2, 1)]),
            Some(LogIndex(2))
        );
        assert_eq!(log.last_index(), LogIndex(4));
    }

    #[test]
    fn conflict_hints_skip_a_whole_term() {
        let log = log_with(&[1, 1, 4, 4, 4, 4]);
        assert_eq!(
            log.find_conflict_by_term(LogIndex(6), Term(2)),
            (LogIndex(2), Term(1))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(9), Term(5)),
            (LogIndex(6), Term(4))
        );
    }

    #[test]
    fn the_up_to_date_check_compares_last_term_then_length() {
        let log = log_with(&[1, 2, 2]);
        assert!(log.is_up_to_date(LogIndex(1), Term(3)));
        assert!(log.is_up_to_date(LogIndex(3), Term(2)));
        assert!(!log.is_up_to_date(LogIndex(2), Term(2)));
        assert!(!log.is_up_to_date(LogIndex(9), Term(1)));
    }

    #[test]
    fn entries_are_handed_out_once_and_served_from_memory_until_acknowledged() {
        let mut log = log_with(&[1, 1]);
        log.append(vec![e(3, 2), e(4, 2)]);
        let (_, handed) = log.take_unhanded();
        assert_eq!(handed.len(), 2);
        assert!(!log.has_unhanded(), "nothing is handed twice");
        log.append(vec![e(5, 2)]);
        let (_, handed) = log.take_unhanded();
        assert_eq!(handed.iter().map(|e| e.index.0).collect::<Vec<_>>(), [5]);
        // Not acknowledged yet: still in memory, not counted as durable.
        assert_eq!(log.persisted, LogIndex(2));
        assert_eq!(log.term(LogIndex(4)).unwrap(), Term(2));
        log.storage_mut().append(&[e(3, 2), e(4, 2)]).unwrap();
        log.stable_to(LogIndex(4), Term(2));
        assert_eq!(log.persisted, LogIndex(4));
        assert_eq!(log.unstable_entries()[0].index, LogIndex(5));
    }

    #[test]
    fn an_acknowledgement_overtaken_by_a_truncation_is_ignored() {
        let mut log = log_with(&[1, 1]);
        log.append(vec![e(3, 1), e(4, 1)]);
        let _ = log.take_unhanded();
        // A new leader replaces entry 4 before the first write is durable.
        assert_eq!(
            log.maybe_append(LogIndex(3), Term(1), LogIndex(0), vec![e(4, 3)]),
            Some(LogIndex(4))
        );
        let (_, handed) = log.take_unhanded();
        assert_eq!(handed, vec![e(4, 3)], "the replacement is handed out");
        // The first write completes: it says nothing about entry (4, 3).
        log.storage_mut().append(&[e(3, 1), e(4, 1)]).unwrap();
        log.stable_to(LogIndex(4), Term(1));
        assert_eq!(log.persisted, LogIndex(2));
        assert_eq!(log.term(LogIndex(4)).unwrap(), Term(3));
        log.storage_mut().append(&[e(4, 3)]).unwrap();
        log.stable_to(LogIndex(4), Term(3));
        assert_eq!(log.persisted, LogIndex(4));
        assert!(log.unstable_entries().is_empty());
    }

    #[test]
    fn only_durable_entries_are_applied_when_persistence_is_asynchronous() {
        let mut log = log_with(&[1]);
        log.apply_only_persisted = true;
        log.append(vec![e(2, 1)]);
        let _ = log.take_unhanded();
        log.commit_to(LogIndex(2));
        let to_apply = log.committed_to_apply(usize::MAX).unwrap();
        assert_eq!(to_apply.iter().map(|e| e.index.0).collect::<Vec<_>>(), [1]);
        log.applied = LogIndex(1);
        assert!(!log.has_committed_to_apply());
        log.storage_mut().append(&[e(2, 1)]).unwrap();
        log.stable_to(LogIndex(2), Term(1));
        assert!(log.has_committed_to_apply());
    }
}
