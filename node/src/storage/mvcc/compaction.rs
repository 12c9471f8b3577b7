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
//! The walk follows `versions` in revision order from a cursor kept in the
//! state record, up to `c`; for each key it meets, it deletes that key's
//! superseded versions. Versions it keeps are walked again by the next
//! compaction.

use std::path::Path;
use std::sync::{PoisonError, RwLock};

use redb::ReadableTable;

use super::super::error::{StoreError, db_err};
use super::VersionsTable;
use super::key_index::{KeyIndex, Rev};

/// How many versions one applied entry may delete at most.
pub(crate) const STEP_BUDGET: usize = 256;

/// Where the physical part of the last compaction stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The compacted revision: reads below it fail.
    pub compacted: i64,
    /// The next `(revision, sub)` of `versions` to look at.
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
    versions: &mut VersionsTable<'_>,
    index: &RwLock<KeyIndex>,
    path: &Path,
    progress: &mut Progress,
    mut budget: usize,
) -> Result<(), StoreError> {
    let c = progress.compacted;
    while !progress.done && budget > 0 {
        let next = {
            let mut iter = versions
                .range::<(i64, u32)>(progress.cursor..=(c, u32::MAX))
                .map_err(db_err(path, "read versions"))?;
            match iter.next() {
                Some(item) => {
                    let (at, v) = item.map_err(db_err(path, "read versions"))?;
                    let (revision, sub) = at.value();
                    Some((Rev { revision, sub }, v.value().0.to_vec()))
                }
                None => None,
            }
        };
        let Some((at, key)) = next else {
            progress.done = true;
            break;
        };
        let mut index = index.write().unwrap_or_else(PoisonError::into_inner);
        let Some(last) = index.last_at(&key, c) else {
            progress.cursor = at.after();
            continue;
        };
        // The versions before the one a read at `c` sees.
        let older = index.older_than(&key, last.rev.revision, budget);
        for e in &older {
            versions
                .remove(e.rev.at())
                .map_err(db_err(path, "compact history"))?;
        }
        index.remove_oldest(&key, older.len());
        budget -= older.len();
        if budget == 0 {
            // More may be left of this key: the next step resumes here.
            break;
        }
        if last.tombstone {
            versions
                .remove(last.rev.at())
                .map_err(db_err(path, "compact history"))?;
            index.remove(&key, last.rev);
            budget -= 1;
        }
        progress.cursor = at.after();
    }
    Ok(())
}
