//! Opening the log: reading its segments oldest first and replaying their
//! records into the state kept in memory.
//!
//! The rules: the oldest segment's checkpoint gives the starting state; an
//! entry replaces every entry at or after its index; a compaction or a
//! received snapshot moves the base. Segments must follow each other
//! without a missing number, and each checkpoint must name where its
//! predecessor's records end (else that segment lost records it had
//! synced). The oldest segment may begin after entries whose segments were
//! deleted; that is allowed only if a compaction later in the log covers
//! them, which the deletion waited for. Anything else that does not add up
//! is refused, naming the file.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use super::index::{Held, Slot, State};
use super::wal::{self, Checkpoint, Kind, Scanned};
use super::{Identity, LOG_FORMAT_VERSION, StorageId, check_owner, not_a_store};
use crate::raft::LogIndex;
use crate::storage::codec;
use crate::storage::disk::Disk;
use crate::storage::error::{DecodeError, StoreError, corrupt};

pub(super) fn check_format(dir: &Path, c: &Checkpoint) -> Result<(), StoreError> {
    if c.format_version != LOG_FORMAT_VERSION {
        return Err(StoreError::UnknownFormat {
            file: dir.to_path_buf(),
            found: c.format_version,
            supported: LOG_FORMAT_VERSION,
        });
    }
    Ok(())
}

fn check_identity(dir: &Path, c: &Checkpoint, identity: Identity) -> Result<(), StoreError> {
    check_format(dir, c)?;
    check_owner(dir, c.cluster_id, c.node_id, identity)
}

/// What the segments on disk add up to.
pub(super) struct Replayed {
    pub state: State,
    pub storage_id: StorageId,
    pub last_seq: u64,
    /// Where the newest segment's valid records end.
    pub last_end: u64,
    /// Whether the newest segment ends in a torn record.
    pub torn: bool,
}

fn invalid(path: &Path, what: &'static str, field: &'static str, value: u64) -> StoreError {
    StoreError::Corrupt {
        file: path.to_path_buf(),
        what,
        source: DecodeError::Invalid {
            what,
            field,
            value: value as i64,
        },
    }
}

/// The entries replayed so far: `slots[i]` is entry `first + i`. Unlike
/// the store's, they may begin past the base: the oldest segment may begin
/// after entries whose segments were deleted, which a compaction later in
/// the log covers, and a conflicting append may then go back below where
/// they began (but never to or below the base).
#[derive(Default)]
struct Entries {
    first: u64,
    slots: VecDeque<Slot>,
    /// Whether an entry was replayed since the start or the last received
    /// snapshot: only the very first may leave a gap behind it.
    seen: bool,
}

impl Entries {
    fn after(base: LogIndex) -> Entries {
        Entries {
            first: base.get() + 1,
            slots: VecDeque::new(),
            seen: false,
        }
    }

    /// Replays an entry record; false if it cannot follow what came before.
    fn push(&mut self, index: LogIndex, slot: Slot, base: LogIndex) -> bool {
        let i = index.get();
        let next = self.first + self.slots.len() as u64;
        let fits = (self.first..=next).contains(&i)
            || (!self.seen && i > next)
            || (i < self.first && i > base.get() && self.first > base.get() + 1);
        if !fits {
            return false;
        }
        if (self.first..=next).contains(&i) {
            self.slots.truncate((i - self.first) as usize);
        } else {
            self.slots.clear();
            self.first = i;
        }
        self.slots.push_back(slot);
        self.seen = true;
        true
    }

    /// Drops the entries a compaction at `index` covers.
    fn drop_through(&mut self, index: LogIndex) {
        let k = index.get();
        if self.first <= k {
            let n = ((k + 1 - self.first) as usize).min(self.slots.len());
            self.slots.drain(..n);
            self.first = k + 1;
        }
    }
}

/// Reads segments `seqs` (oldest first) and replays their records.
pub(super) fn replay(
    disk: &Disk,
    dir: &Path,
    seqs: &[u64],
    identity: Identity,
) -> Result<Replayed, StoreError> {
    let mut state: Option<State> = None;
    let mut log = Entries::default();
    let mut storage_id = StorageId(0);
    let mut prev: Option<(u64, u64)> = None;
    let mut torn = false;
    for &seq in seqs {
        let seg = Scanned::read(disk, dir, seq)?;
        let path = seg.file.path.clone();
        let c = &seg.checkpoint;
        check_identity(&path, c, identity)?;
        if let Some((prev_seq, prev_end)) = prev {
            if seq != prev_seq + 1 {
                return Err(invalid(
                    &path,
                    "log",
                    "sequence number (the segment before it is missing)",
                    seq,
                ));
            }
            if c.prev_end != prev_end {
                return Err(invalid(
                    &path,
                    "log",
                    "end of the previous segment (it lost records it had synced)",
                    prev_end,
                ));
            }
        }
        let state = match &mut state {
            Some(state) => state,
            None => {
                storage_id = StorageId(c.storage_id);
                let mut first = State::empty();
                let cached = &mut first.cached;
                cached.snapshot = codec::decode_snapshot_meta(&c.snapshot_meta)
                    .map_err(corrupt(&path, "checkpoint snapshot meta"))?;
                cached.hard_state = codec::decode_hard_state(&c.hard_state)
                    .map_err(corrupt(&path, "checkpoint hard state"))?;
                cached.has_state = c.has_state;
                cached.withhold_votes = c.withhold_votes;
                log = Entries::after(cached.snapshot.index);
                state.insert(first)
            }
        };
        let Scanned {
            file,
            bytes,
            end,
            torn: seg_torn,
            ..
        } = seg;
        let mut max_index = LogIndex::ZERO;
        wal::records(&bytes, seq, |r| {
            match r.kind {
                Kind::Checkpoint => {
                    return Err(invalid(
                        &path,
                        "log",
                        "offset of a second checkpoint",
                        r.offset,
                    ));
                }
                Kind::Entry => {
                    let e = codec::decode_entry(r.payload).map_err(corrupt(&path, "log entry"))?;
                    let slot = Slot::new(&e, seq, r.offset, r.payload.len() as u32);
                    if !log.push(e.index, slot, state.cached.snapshot.index) {
                        return Err(invalid(
                            &path,
                            "log",
                            "index of an entry after a gap",
                            e.index.get(),
                        ));
                    }
                    max_index = max_index.max(e.index);
                    state.cached.has_state = true;
                }
                Kind::HardState => {
                    state.cached.hard_state = codec::decode_hard_state(r.payload)
                        .map_err(corrupt(&path, "hard state"))?;
                    state.cached.has_state = true;
                }
                Kind::Install => {
                    let meta = codec::decode_snapshot_meta(r.payload)
                        .map_err(corrupt(&path, "snapshot meta"))?;
                    log = Entries::after(meta.index);
                    log.seen = true;
                    state.install(meta);
                    state.cached.has_state = true;
                }
                Kind::Compact => {
                    let meta = codec::decode_snapshot_meta(r.payload)
                        .map_err(corrupt(&path, "compaction meta"))?;
                    if meta.index > state.cached.snapshot.index {
                        log.drop_through(meta.index);
                        state.cached.snapshot = meta;
                    }
                }
                Kind::Withhold => {
                    state.cached.withhold_votes = r.payload.first() == Some(&1);
                }
            }
            Ok(())
        })?;
        state.segments.insert(
            seq,
            Held {
                file: Arc::new(file),
                max_index,
            },
        );
        prev = Some((seq, end));
        torn = seg_torn;
    }
    let (Some(mut state), Some((last_seq, last_end))) = (state, prev) else {
        return Err(not_a_store(dir, "segment"));
    };
    let base = state.cached.snapshot.index;
    if log.first > base.next().get() {
        return Err(invalid(
            dir,
            "log",
            "last index of entries that are missing (no compaction covers them)",
            log.first - 1,
        ));
    }
    state.cached.last_index = LogIndex(base.get() + log.slots.len() as u64);
    state.slots = log.slots;
    Ok(Replayed {
        state,
        storage_id,
        last_seq,
        last_end,
        torn,
    })
}
