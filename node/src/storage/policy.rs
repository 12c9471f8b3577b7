//! When to snapshot the state machine and how far to compact the log.

use crate::raft::LogIndex;

/// Snapshot every `every_entries` applied entries; keep the last
/// `keep_trailing` entries of the log for slow followers (so a follower a
/// little behind is caught up from the log, not with a whole image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub every_entries: u64,
    pub keep_trailing: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_entries: 10_000,
            keep_trailing: 5_000,
        }
    }
}

impl SnapshotPolicy {
    /// Given the durable applied index of the state machine (the index of a
    /// snapshot just taken, see `KvStore::snapshot`) and the log's current
    /// snapshot index (`first_index - 1`), the index to compact the log up
    /// to, or `None` if it is not time yet.
    pub fn compact_to(&self, applied: LogIndex, log_snapshot: LogIndex) -> Option<LogIndex> {
        if applied.get() < log_snapshot.get() + self.every_entries.max(1) + self.keep_trailing {
            return None;
        }
        let to = applied.get() - self.keep_trailing;
        (to > log_snapshot.get()).then_some(LogIndex(to))
    }

    /// Whether enough entries were applied since the last snapshot to take a
    /// new one.
    pub fn should_snapshot(&self, applied: LogIndex, last_snapshot: LogIndex) -> bool {
        applied.get() >= last_snapshot.get() + self.every_entries.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_waits_for_a_full_interval_beyond_the_trailing_window() {
        let p = SnapshotPolicy {
            every_entries: 100,
            keep_trailing: 50,
        };
        assert_eq!(p.compact_to(LogIndex(149), LogIndex(0)), None);
        assert_eq!(
            p.compact_to(LogIndex(150), LogIndex(0)),
            Some(LogIndex(100))
        );
        assert_eq!(p.compact_to(LogIndex(249), LogIndex(100)), None);
        assert_eq!(
            p.compact_to(LogIndex(260), LogIndex(100)),
            Some(LogIndex(210))
        );
        assert!(!p.should_snapshot(LogIndex(199), LogIndex(100)));
        assert!(p.should_snapshot(LogIndex(200), LogIndex(100)));
    }

    #[test]
    fn a_zero_interval_still_makes_progress() {
        let p = SnapshotPolicy {
            every_entries: 0,
            keep_trailing: 0,
        };
        assert_eq!(p.compact_to(LogIndex(1), LogIndex(0)), Some(LogIndex(1)));
        assert_eq!(p.compact_to(LogIndex(1), LogIndex(1)), None);
    }
}
