//! ReadIndex: linearizable reads without writing to the log (thesis §6.4).
//!
//! A leader answers a read at its current commit index once it has confirmed
//! that it is still the leader: a quorum has acknowledged a heartbeat sent
//! after the read arrived. Reads are grouped into rounds; each heartbeat
//! carries the newest round number, and a follower's acknowledgement of round
//! `r` confirms every round up to `r`.

use std::collections::{BTreeMap, VecDeque};

use super::quorum;
use super::ready::ReadState;
use super::types::{LogIndex, NodeId};

#[derive(Debug, Default)]
pub struct ReadOnly {
    /// The newest round issued.
    round: u64,
    /// Reads waiting for their round to be confirmed, in round order.
    pending: VecDeque<(u64, ReadState)>,
    /// The newest round each peer has acknowledged.
    acks: BTreeMap<NodeId, u64>,
    /// Reads that arrived before the leader committed an entry of its term;
    /// their index is not known yet.
    waiting_for_commit: Vec<u64>,
}

impl ReadOnly {
    /// Starts a new round for a read at `index`; returns the round number to
    /// put in the next heartbeat.
    pub fn add(&mut self, ctx: u64, index: LogIndex) -> u64 {
        self.round += 1;
        self.pending
            .push_back((self.round, ReadState { ctx, index }));
        self.round
    }

    pub fn current_round(&self) -> u64 {
        self.round
    }

    pub fn defer(&mut self, ctx: u64) {
        self.waiting_for_commit.push(ctx);
    }

    pub fn take_deferred(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.waiting_for_commit)
    }

    /// Records `from`'s acknowledgement of `round` and returns the reads
    /// that a quorum of `voters` (with `me` confirming every round) has now
    /// confirmed.
    pub fn ack(
        &mut self,
        from: NodeId,
        round: u64,
        me: NodeId,
        voters: impl Iterator<Item = NodeId>,
    ) -> Vec<ReadState> {
        let entry = self.acks.entry(from).or_insert(0);
        *entry = (*entry).max(round);
        let confirmed = quorum::committed_index(voters.map(|v| {
            LogIndex(if v == me {
                self.round
            } else {
                self.acks.get(&v).copied().unwrap_or(0)
            })
        }))
        .0;
        let mut ready = Vec::new();
        while matches!(self.pending.front(), Some((r, _)) if *r <= confirmed) {
            if let Some((_, rs)) = self.pending.pop_front() {
                ready.push(rs);
            }
        }
        ready
    }

    /// Drops everything: called when leadership changes. Reads still pending
    /// fail by timing out in the driver.
    pub fn reset(&mut self) {
        *self = ReadOnly::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_released_only_when_a_quorum_confirms_its_round() {
        let mut ro = ReadOnly::default();
        let voters = || (1..=5).map(NodeId);
        let r = ro.add(7, LogIndex(10));
        assert!(ro.ack(NodeId(2), r, NodeId(1), voters()).is_empty());
        // An acknowledgement of an older round confirms nothing new.
        assert!(ro.ack(NodeId(3), r - 1, NodeId(1), voters()).is_empty());
        let done = ro.ack(NodeId(4), r, NodeId(1), voters());
        assert_eq!(
            done,
            vec![ReadState {
                ctx: 7,
                index: LogIndex(10)
            }]
        );
    }
}
