//! What a leader knows about one follower's log, and how it replicates to it.
//!
//! A follower is in one of three states (as in etcd's raft):
//! - `Probe`: the leader does not know where the follower's log matches its
//!   own. It sends one append at a time and waits for the answer, backing
//!   off `next` with the follower's conflict hint.
//! - `Replicate`: the logs match up to `match_index`; the leader streams
//!   appends optimistically, bounded by the in-flight window.
//! - `Snapshot`: the follower needs entries that were compacted; the leader
//!   has asked for a snapshot to be sent and waits for it to land.

use super::inflights::Inflights;
use super::types::LogIndex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot { pending: LogIndex },
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to match the leader's log.
    pub match_index: LogIndex,
    /// The next index to send.
    pub next_index: LogIndex,
    pub state: ProgressState,
    /// In probe state, whether a probe is outstanding (so no other is sent
    /// until it is answered or a heartbeat interval passes).
    pub probe_sent: bool,
    pub inflights: Inflights,
    /// Whether the follower was heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Snapshot transfers to this follower that failed in a row.
    pub snapshot_failures: u32,
    /// Ticks to wait before the next snapshot transfer may start: a
    /// follower that cannot take one (a full disk, a crash loop) is not
    /// sent a multi-megabyte image ten times a second.
    pub snapshot_backoff: u32,
}

impl Progress {
    pub fn new(next_index: LogIndex, max_inflight: usize) -> Self {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_inflight),
            recent_active: false,
            snapshot_failures: 0,
            snapshot_backoff: 0,
        }
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, the follower holds at least the snapshot.
        let floor = match self.state {
            ProgressState::Snapshot { pending } => pending.max(self.match_index),
            _ => self.match_index,
        };
        self.state = ProgressState::Probe;
        self.next_index = floor.next();
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_snapshot(&mut self, pending: LogIndex) {
        self.state = ProgressState::Snapshot { pending };
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Whether the leader should hold back new appends to this follower.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records that an append ending at `last` was sent.
    pub fn sent_entries(&mut self, last: Option<LogIndex>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next_index = last.next();
                    self.inflights.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// The follower acknowledged `index`. Returns whether that was news.
    pub fn acknowledge(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        self.inflights.free_to(index);
        updated
    }

    /// The follower rejected an append at `rejected` and suggests `next`.
    /// Returns false if the rejection is stale (answers an older message).
    pub fn reject(&mut self, rejected: LogIndex, next: LogIndex) -> bool {
        match self.state {
            ProgressState::Replicate => {
                // Anything at or below the match index was accepted before:
                // this rejection answers an old, reordered message.
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                self.next_index = next.max(self.match_index.next());
                true
            }
            _ => {
                // In probe, only the answer to the last probe counts.
                if self.next_index.prev() != rejected {
                    return false;
                }
                self.next_index = next.max(self.match_index.next()).min(rejected);
                if self.next_index == LogIndex::ZERO {
                    self.next_index = LogIndex(1);
                }
                self.probe_sent = false;
                true
            }
        }
    }

    /// Records how a snapshot transfer ended. A failure doubles the wait
    /// before the next one, from `base` ticks up to `max`; a success clears
    /// it.
    pub fn snapshot_finished(&mut self, ok: bool, base: u32, max: u32) {
        if ok {
            self.snapshot_failures = 0;
            self.snapshot_backoff = 0;
        } else {
            self.snapshot_failures = self.snapshot_failures.saturating_add(1);
            let shift = self.snapshot_failures.saturating_sub(1).min(16);
            self.snapshot_backoff = base.saturating_mul(1 << shift).min(max);
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            ProgressState::Probe => "probe",
            ProgressState::Replicate => "replicate",
            ProgressState::Snapshot { .. } => "snapshot",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_snapshots_back_off_exponentially_up_to_a_bound() {
        let mut p = Progress::new(LogIndex(1), 4);
        let waits: Vec<u32> = (0..6)
            .map(|_| {
                p.snapshot_finished(false, 10, 50);
                p.snapshot_backoff
            })
            .collect();
        assert_eq!(waits, [10, 20, 40, 50, 50, 50]);
        p.snapshot_finished(true, 10, 50);
        assert_eq!((p.snapshot_failures, p.snapshot_backoff), (0, 0));
    }

    #[test]
    fn a_probing_follower_gets_one_message_at_a_time() {
        let mut p = Progress::new(LogIndex(10), 4);
        assert!(!p.is_paused());
        p.sent_entries(Some(LogIndex(12)));
        assert!(p.is_paused());
        assert!(p.acknowledge(LogIndex(12)));
        assert!(!p.is_paused());
    }

    #[test]
    fn a_replicating_follower_is_paused_when_the_window_is_full() {
        let mut p = Progress::new(LogIndex(1), 2);
        p.become_replicate();
        p.sent_entries(Some(LogIndex(3)));
        p.sent_entries(Some(LogIndex(6)));
        assert!(p.is_paused());
        assert_eq!(p.next_index, LogIndex(7));
        p.acknowledge(LogIndex(3));
        assert!(!p.is_paused());
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(LogIndex(1), 2);
        p.acknowledge(LogIndex(5));
        p.become_replicate();
        assert!(!p.reject(LogIndex(4), LogIndex(2)));
        assert_eq!(p.state, ProgressState::Replicate);
        assert!(p.reject(LogIndex(8), LogIndex(7)));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next_index, LogIndex(7));
    }
}
