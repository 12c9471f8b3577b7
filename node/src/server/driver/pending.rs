//! Client requests the driver has accepted and not yet answered: writes
//! waiting for their log entry to apply, linearizable reads waiting for
//! leadership confirmation and then for the state machine to catch up, a
//! membership change waiting to commit, and leadership transfers. The step
//! loop keeps those that wait on the core (reads awaiting their index,
//! transfers); the applier those that wait on the state machine.
//!
//! A request is answered exactly once; a client that gave up (its timeout
//! fired, dropping the receiver) is forgotten at the next prune.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::oneshot;

use crate::raft::{LogIndex, NodeId, Term};
use crate::server::ClientError;
use crate::server::handle::{DriverReply, MemberStatus, ReadResult, Rejection, WriteResult};
use crate::storage::RangeRequest;

pub(crate) struct PendingWrite {
    pub term: Term,
    pub reply: oneshot::Sender<DriverReply<WriteResult>>,
}

pub(crate) struct PendingRead {
    pub req: RangeRequest,
    pub reply: oneshot::Sender<DriverReply<ReadResult>>,
}

pub(crate) struct PendingChange {
    pub index: LogIndex,
    pub term: Term,
    pub member: MemberStatus,
    pub reply: oneshot::Sender<DriverReply<MemberStatus>>,
}

pub(crate) struct PendingTransfer {
    pub to: NodeId,
    pub reply: oneshot::Sender<DriverReply<()>>,
}

#[derive(Default)]
pub(crate) struct Pending {
    /// Proposed writes by log index.
    pub writes: BTreeMap<LogIndex, PendingWrite>,
    /// Linearizable reads waiting for their ReadIndex round, by context.
    pub reads_awaiting_index: HashMap<u64, Vec<PendingRead>>,
    /// Reads whose read index is known, waiting for `applied >= index`,
    /// with the term their leadership was confirmed in.
    pub reads_awaiting_apply: Vec<(LogIndex, Term, PendingRead)>,
    pub change: Option<PendingChange>,
    pub transfers: Vec<PendingTransfer>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("writes", &self.writes.len())
            .field("reads_awaiting_index", &self.reads_awaiting_index.len())
            .field("reads_awaiting_apply", &self.reads_awaiting_apply.len())
            .field("change", &self.change.as_ref().map(|c| c.index))
            .field("transfers", &self.transfers.len())
            .finish()
    }
}

impl Pending {
    /// Takes the write waiting on `index`, if any, and answers it: it
    /// succeeded iff the applied entry has the term it was proposed in.
    /// Returns whether a write was answered and whether it succeeded.
    pub fn take_write(&mut self, index: LogIndex) -> Option<PendingWrite> {
        self.writes.remove(&index)
    }

    /// Fails every write proposed at or before `index` that is still waiting
    /// (its entry was replaced, e.g. by a snapshot). Returns how many.
    pub fn fail_writes_through(&mut self, index: LogIndex) -> usize {
        let keep = self.writes.split_off(&index.next());
        let failed = std::mem::replace(&mut self.writes, keep);
        let n = failed.len();
        for (_, w) in failed {
            let _ = w.reply.send(Err(Rejection::Failed(overwritten())));
        }
        n
    }

    /// This node stopped being leader: reads waiting for a ReadIndex round
    /// will never get one. Writes stay: their entries may still commit.
    pub fn fail_reads_awaiting_index(&mut self) {
        for (_, reads) in self.reads_awaiting_index.drain() {
            for r in reads {
                let _ = r.reply.send(Err(Rejection::Failed(ClientError::NoLeader)));
            }
        }
    }

    /// Forgets requests whose client gave up waiting.
    pub fn prune_abandoned(&mut self) -> usize {
        let before = self.writes.len();
        self.writes.retain(|_, w| !w.reply.is_closed());
        let dropped = before - self.writes.len();
        self.reads_awaiting_index.retain(|_, reads| {
            reads.retain(|r| !r.reply.is_closed());
            !reads.is_empty()
        });
        self.reads_awaiting_apply
            .retain(|(_, _, r)| !r.reply.is_closed());
        if self.change.as_ref().is_some_and(|c| c.reply.is_closed()) {
            self.change = None;
        }
        self.transfers.retain(|t| !t.reply.is_closed());
        dropped
    }
}

/// The error for a write whose log entry was discarded by a snapshot from a
/// new leader: it may or may not be in that snapshot, so the outcome is
/// unknown and the write must not be retried blindly.
pub(crate) fn overwritten() -> ClientError {
    ClientError::Unavailable(
        "leadership changed before the write was confirmed; its outcome is unknown".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaced_by_a_snapshot_fail_and_later_ones_wait() {
        let mut p = Pending::default();
        let mut rxs = Vec::new();
        for i in 1..=3 {
            let (tx, rx) = oneshot::channel();
            p.writes.insert(
                LogIndex(i),
                PendingWrite {
                    term: Term(1),
                    reply: tx,
                },
            );
            rxs.push(rx);
        }
        assert_eq!(p.fail_writes_through(LogIndex(2)), 2);
        assert_eq!(p.writes.len(), 1);
        let mut rx0 = rxs.remove(0);
        assert!(matches!(rx0.try_recv(), Ok(Err(Rejection::Failed(_)))));
    }

    #[test]
    fn abandoned_requests_are_pruned() {
        let mut p = Pending::default();
        let (tx, rx) = oneshot::channel();
        p.writes.insert(
            LogIndex(1),
            PendingWrite {
                term: Term(1),
                reply: tx,
            },
        );
        drop(rx);
        assert_eq!(p.prune_abandoned(), 1);
        assert!(p.writes.is_empty());
    }
}
