//! Compaction: dropping the versions no read can reach any more.
//!
//! `Compact(c)` takes effect logically the moment it applies: reads below
//! `c` fail as compacted, and a read at or above `c` only ever needs, per
//! key, its last version at or below `c` (unless that is a tombstone) and
//! the versions after it. Everything else is garbage, deleted physically by
//! [`step`], which the state machine calls once per applied log entry with
//! a fixed budget of deletions. So the apply path never stalls on a large
//! compaction, and since the work done depends only on the log, every
//! member's files hold the same versions at the same applied index.
//!
//! The walk follows the `changes` table (history in revision order) from a
//! cursor kept in the state record, up to `c`; for each key it meets, it
//! deletes that key's superseded versions. Versions it keeps stay in
//! `changes` and are walked again by the next compaction.

use std::path::Path;

use redb::{ReadableTable, Table};

use super::super::error::{StoreError, db_err};
use super::key_index::last_version;

/// How many versions one applied entry may delete at most.
pub(crate) const STEP_BUDGET: usize = 256;

/// Where the physical part of the last compaction stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The compacted revision: reads below it fail.
    pub compacted: i64,
    /// The next `(revision, sub)` of `changes` to look at.
    pub cursor: (i64, u32),
    /// Whether every version below `compacted` that can go is gone.
    pub done: bool,
}

impl Progress {
    /// A new compaction at `revision`: the walk starts over.
    pub(crate) fn start(revision: i64) -> Self {
        Progress {
            compacted: revision,
            cursor: (0, 0),
            done: false,
        }
    }
}

/// Deletes at most `budget` garbage versions, advancing `progress`.
pub(crate) fn step(
    history: &mut Table<'_, (&'static [u8], i64), &'static [u8]>,
    changes: &mut Table<'_, (i64, u32), &'static [u8]>,
    path: &Path,
    progress: &mut Progress,
    mut budget: usize,
) -> Result<(), StoreError> {
    let c = progress.compacted;
    while !progress.done && budget > 0 {
        let next = {
            let mut iter = changes
                .range::<(i64, u32)>(progress.cursor..=(c, u32::MAX))
                .map_err(db_err(path, "read changes"))?;
            match iter.next() {
                Some(item) => {
                    let (k, v) = item.map_err(db_err(path, "read changes"))?;
                    Some((k.value(), v.value().to_vec()))
                }
                None => None,
            }
        };
        let Some((at, key)) = next else {
            progress.done = true;
            break;
        };
        let Some(last) = last_version(&*history, path, &key, c)? else {
            progress.cursor = after(at);
            continue;
        };
        // The versions before the one a read at `c` sees.
        let older: Vec<(i64, u32)> = {
            let iter = history
                .range::<(&[u8], i64)>((key.as_slice(), i64::MIN)..(key.as_slice(), last.revision))
                .map_err(db_err(path, "read history"))?;
            let mut older = Vec::new();
            for item in iter.take(budget) {
                let (k, v) = item.map_err(db_err(path, "read history"))?;
                let stored = super::key_index::decode_version(path, v.value())?;
                older.push((k.value().1, stored.sub));
            }
            older
        };
        for &(rev, sub) in &older {
            history
                .remove((key.as_slice(), rev))
                .map_err(db_err(path, "compact history"))?;
            changes
                .remove((rev, sub))
                .map_err(db_err(path, "compact history"))?;
        }
        budget -= older.len();
        if budget == 0 {
            // More may be left of this key: the next step resumes here.
            break;
        }
        if last.stored.tombstone {
            history
                .remove((key.as_slice(), last.revision))
                .map_err(db_err(path, "compact history"))?;
            changes
                .remove((last.revision, last.stored.sub))
                .map_err(db_err(path, "compact history"))?;
            budget -= 1;
        }
        progress.cursor = after(at);
    }
    Ok(())
}

fn after((rev, sub): (i64, u32)) -> (i64, u32) {
    match sub.checked_add(1) {
        Some(sub) => (rev, sub),
        None => (rev.saturating_add(1), 0),
    }
}
