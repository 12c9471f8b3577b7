//! What the log keeps in memory: its state as on disk (base snapshot meta,
//! hard state, flags), and for every entry after the base its term and
//! where its record lies, so that the core's questions and every bounds
//! check need no disk, and the segments a compaction frees are known.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::wal::SegmentFile;
use crate::raft::{Entry, EntryPayload, HardState, LogIndex, SnapshotMeta, Term};

#[derive(Clone, Debug, Default)]
pub(super) struct Cached {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    pub last_index: LogIndex,
    /// Whether anything (bootstrap, hard state, entries, snapshot) is stored.
    pub has_state: bool,
    /// Whether the node withholds its votes.
    pub withhold_votes: bool,
}

/// Where one entry's record lies, and what the core asks of it without
/// reading it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    pub term: Term,
    pub seq: u64,
    /// Where the record's payload starts in its segment.
    pub offset: u64,
    pub len: u32,
    /// `Entry::approximate_size`, what `max_bytes` limits count.
    pub size: u32,
    pub membership: bool,
}

impl Slot {
    pub(super) fn new(e: &Entry, seq: u64, offset: u64, len: u32) -> Slot {
        Slot {
            term: e.term,
            seq,
            offset,
            len,
            size: u32::try_from(e.approximate_size()).unwrap_or(u32::MAX),
            membership: matches!(e.payload, EntryPayload::Membership(_)),
        }
    }
}

/// A live segment.
pub(super) struct Held {
    pub file: Arc<SegmentFile>,
    /// The highest index of an entry written into it (0 if none): it can be
    /// deleted once the base is past this, and every older one is gone.
    pub max_index: LogIndex,
}

pub(super) struct State {
    pub cached: Cached,
    /// `slots[i]` is entry `base + 1 + i`.
    pub slots: VecDeque<Slot>,
    pub segments: BTreeMap<u64, Held>,
}

impl State {
    pub(super) fn empty() -> State {
        State {
            cached: Cached::default(),
            slots: VecDeque::new(),
            segments: BTreeMap::new(),
        }
    }

    pub(super) fn slot(&self, index: LogIndex) -> Option<&Slot> {
        let base = self.cached.snapshot.index.get();
        let i = index.get().checked_sub(base + 1)?;
        self.slots.get(usize::try_from(i).ok()?)
    }

    /// Records where `entries` (which follow the base, contiguously) were
    /// written, replacing what was at or after the first.
    pub(super) fn place(&mut self, entries: &[Entry], at: &[(u64, u64, u32)]) {
        let Some(first) = entries.first() else { return };
        let keep = first.index.get() - self.cached.snapshot.index.get() - 1;
        self.slots.truncate(keep as usize);
        for (e, &(seq, offset, len)) in entries.iter().zip(at) {
            self.slots.push_back(Slot::new(e, seq, offset, len));
            if let Some(held) = self.segments.get_mut(&seq) {
                held.max_index = held.max_index.max(e.index);
            }
        }
        self.cached.last_index =
            LogIndex(self.cached.snapshot.index.get() + self.slots.len() as u64);
    }

    /// Moves the base forward to `meta`, dropping the entries it covers.
    pub(super) fn compact(&mut self, meta: SnapshotMeta) {
        let drop = meta
            .index
            .get()
            .saturating_sub(self.cached.snapshot.index.get());
        if drop as usize >= self.slots.len() {
            self.slots.clear();
        } else {
            self.slots.drain(..drop as usize);
        }
        self.cached.last_index = LogIndex(meta.index.get() + self.slots.len() as u64);
        self.cached.snapshot = meta;
    }

    /// Takes a received snapshot's meta as the base, dropping the whole log.
    pub(super) fn install(&mut self, meta: SnapshotMeta) {
        self.slots.clear();
        self.cached.last_index = meta.index;
        self.cached.hard_state.commit = self.cached.hard_state.commit.max(meta.index);
        self.cached.hard_state.term = self.cached.hard_state.term.max(meta.term);
        self.cached.snapshot = meta;
    }

    /// The segments that can go: oldest first, none of them `active`, each
    /// holding only entries the base covers.
    pub(super) fn take_deletable(&mut self, active: u64) -> Vec<Arc<SegmentFile>> {
        let base = self.cached.snapshot.index;
        let mut gone = Vec::new();
        while let Some(entry) = self.segments.first_entry() {
            if *entry.key() == active || entry.get().max_index > base {
                break;
            }
            gone.push(entry.remove().file);
        }
        gone
    }
}
