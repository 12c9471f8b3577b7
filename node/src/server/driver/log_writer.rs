//! The log writer: makes the Raft log durable off the step loop.
//!
//! The step loop hands it one [`LogWrite`] per `Ready` (entries, hard state,
//! and the messages that promise them durable: a follower's append
//! acknowledgements, a granted vote) and goes on stepping. The writer takes
//! everything queued, writes it in ONE durable transaction (group commit:
//! the slower the disk, the more each fsync covers), and answers with
//! [`Persisted`]: "durable up to this (index, term)", with the messages that
//! may now leave. Writes are durable in the order they were handed over,
//! which is what the core's late acknowledgement needs.
//!
//! In a running node the writer is a thread of its own; the whole-node
//! simulation runs the very same [`LogWriter::write`] inline, so that its
//! runs stay deterministic. A received snapshot is not written here: the
//! step loop installs it while the writer and the applier are idle (see
//! `step.rs`), since the state machine must take it before the log does.
//! Compaction of the log behind the state machine is the applier's, which
//! knows when the state machine is durable far enough.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::DriverError;
use super::stage::StageThread;
use crate::metrics::Metrics;
use crate::raft::{Entry, HardState, LogIndex, Message, Term};
use crate::server::put_path;
use crate::storage::LogStore;

/// What the step loop hands the log writer: one `Ready`'s share of the log.
#[derive(Debug, Default)]
pub(crate) struct LogWrite {
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Messages that promise this write is durable; they leave only once
    /// it is.
    pub then_send: Vec<Message>,
    /// Told once this write (and so every earlier one) is durable: how the
    /// step loop waits for the writer to be idle.
    pub barrier: Option<std_mpsc::Sender<()>>,
}

impl LogWrite {
    /// Whether there is anything to write (as opposed to messages to hold
    /// back, or a barrier).
    pub fn writes_anything(&self) -> bool {
        !self.entries.is_empty() || self.hard_state.is_some()
    }
}

/// What the log writer reports back: a group of writes is durable.
#[derive(Debug)]
pub(crate) struct Persisted {
    /// How many [`LogWrite`]s the group held (barriers aside).
    pub writes: usize,
    /// The last entry written, to acknowledge to the core.
    pub last: Option<(LogIndex, Term)>,
    /// The messages those writes held back.
    pub then_send: Vec<Message>,
}

/// Which hard state goes with each write of the log. One that moved only
/// the commit index is held back: a commit index needs no fsync (a
/// restarted member learns it again from the leader, and starts from what
/// its state machine applied), and writing it alone would cost every member
/// a transaction, and a turn of the writer, per commit. It rides with the
/// next write of entries instead, or goes at the next tick, so the stored
/// commit index trails by at most one write or one tick. A new term or
/// vote is never held back.
#[derive(Debug)]
pub(crate) struct HeldCommit {
    /// The hard state last handed to the writer or held back here.
    newest: HardState,
    held: Option<HardState>,
}

impl HeldCommit {
    /// Starts from the hard state the log holds.
    pub fn new(stored: HardState) -> Self {
        HeldCommit {
            newest: stored,
            held: None,
        }
    }

    /// The hard state to write with a `Ready`'s write, given the one the
    /// core handed out (if it changed) and whether entries go with it.
    pub fn route(
        &mut self,
        hard_state: Option<HardState>,
        with_entries: bool,
    ) -> Option<HardState> {
        let Some(hs) = hard_state else {
            return if with_entries { self.held.take() } else { None };
        };
        let only_commit = !hs.must_sync_after(&self.newest);
        self.newest = hs;
        if only_commit && !with_entries {
            self.held = Some(hs);
            None
        } else {
            // It supersedes anything held back.
            self.held = None;
            Some(hs)
        }
    }

    /// The hard state held back, to write on its own (at a tick).
    pub fn take(&mut self) -> Option<HardState> {
        self.held.take()
    }

    /// A received snapshot was written, with the core's hard state if it
    /// changed: a commit index held back from before may lie below the
    /// snapshot, and is dropped.
    pub fn written_with_snapshot(&mut self, hard_state: Option<HardState>) {
        self.held = None;
        if let Some(hs) = hard_state {
            self.newest = hs;
        }
    }
}

/// Does the writing; see the module docs.
pub(crate) struct LogWriter {
    log: LogStore,
    metrics: Arc<Metrics>,
}

impl LogWriter {
    pub fn new(log: LogStore, metrics: Arc<Metrics>) -> Self {
        LogWriter { log, metrics }
    }

    /// Makes `writes` durable in one transaction. A later write that starts
    /// inside the entries of an earlier one (a follower's conflicting
    /// suffix) replaces them from there, as it would have on disk.
    pub fn write(&self, writes: Vec<LogWrite>) -> Result<Persisted, DriverError> {
        // Barriers are not counted: the step loop counts what it submits.
        let count = writes.iter().filter(|w| w.barrier.is_none()).count();
        let mut entries: Vec<Entry> = Vec::new();
        let mut hard_state = None;
        let mut then_send = Vec::new();
        let mut barriers = Vec::new();
        for w in writes {
            if let Some(first) = w.entries.first() {
                let keep = entries
                    .iter()
                    .position(|e| e.index >= first.index)
                    .unwrap_or(entries.len());
                entries.truncate(keep);
                entries.extend(w.entries);
            }
            if w.hard_state.is_some() {
                hard_state = w.hard_state;
            }
            then_send.extend(w.then_send);
            barriers.extend(w.barrier);
        }
        if !entries.is_empty() || hard_state.is_some() {
            let last = put_path::last_index(&entries, |e| e.index);
            put_path::stage("log write started", last);
            let started = Instant::now();
            let synced = self
                .log
                .persist(None, &entries, hard_state.as_ref())
                .map_err(|e| DriverError::Log(e.to_string()))?;
            put_path::stage("log written", last);
            if synced {
                self.metrics
                    .disk_log_fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
        Ok(Persisted {
            writes: count,
            last: entries.last().map(|e| (e.index, e.term)),
            then_send,
        })
    }
}

/// The log writer as the step loop holds it: inline (the simulation) or a
/// thread of its own.
pub(crate) enum LogWriterStage {
    Inline(LogWriter),
    Thread(StageThread<LogWrite>),
    /// Between the two, while the loop starts.
    Stopped,
}

impl LogWriterStage {
    /// Moves the writer onto its own thread; groups it made durable are
    /// reported on `persisted`.
    pub fn spawn(
        self,
        persisted: mpsc::UnboundedSender<Result<Persisted, DriverError>>,
    ) -> std::io::Result<Self> {
        let writer = match self {
            LogWriterStage::Inline(w) => w,
            other => return Ok(other),
        };
        let thread = StageThread::spawn("raft-log-writer", move |incoming| {
            // Take one write, then everything queued behind it: one
            // fsync for all of it.
            while let Ok(first) = incoming.recv() {
                let mut group = vec![first];
                group.extend(incoming.try_iter());
                let result = writer.write(group);
                let failed = result.is_err();
                if persisted.send(result).is_err() || failed {
                    break;
                }
            }
        })?;
        Ok(LogWriterStage::Thread(thread))
    }

    /// Hands a write over. Inline, it is durable when this returns, and
    /// the acknowledgement is returned; on a thread it comes back later.
    pub fn submit(&mut self, w: LogWrite) -> Result<Option<Persisted>, DriverError> {
        match self {
            LogWriterStage::Inline(writer) => writer.write(vec![w]).map(Some),
            LogWriterStage::Thread(thread) => {
                let sent = thread.send(w);
                if sent {
                    Ok(None)
                } else {
                    Err(DriverError::Log("the log writer stopped".into()))
                }
            }
            LogWriterStage::Stopped => Err(DriverError::Log("the log writer stopped".into())),
        }
    }

    /// Waits until every write handed over so far is durable.
    pub fn wait_idle(&mut self) -> Result<Option<Persisted>, DriverError> {
        let (tx, rx) = std_mpsc::channel();
        let ack = self.submit(LogWrite {
            barrier: Some(tx),
            ..LogWrite::default()
        })?;
        if ack.is_none() {
            tokio::task::block_in_place(|| rx.recv())
                .map_err(|_| DriverError::Log("the log writer stopped".into()))?;
        }
        Ok(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::NodeId;

    fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
        HardState {
            term: Term(term),
            vote: vote.map(NodeId),
            commit: LogIndex(commit),
        }
    }

    #[test]
    fn a_commit_index_alone_waits_for_the_next_entries_or_the_next_tick() {
        let mut held = HeldCommit::new(hs(2, Some(1), 10));
        // Alone: held back.
        assert_eq!(held.route(Some(hs(2, Some(1), 11)), false), None);
        assert_eq!(held.route(Some(hs(2, Some(1), 12)), false), None);
        // Entries carry the newest one held back.
        assert_eq!(held.route(None, true), Some(hs(2, Some(1), 12)));
        assert_eq!(held.route(None, true), None, "handed once");
        // With entries of its own it goes at once.
        assert_eq!(
            held.route(Some(hs(2, Some(1), 13)), true),
            Some(hs(2, Some(1), 13))
        );
        // A tick writes what no write took.
        assert_eq!(held.route(Some(hs(2, Some(1), 14)), false), None);
        assert_eq!(held.route(None, false), None, "nothing to ride with");
        assert_eq!(held.take(), Some(hs(2, Some(1), 14)));
        assert_eq!(held.take(), None);
    }

    #[test]
    fn a_new_term_or_vote_is_never_held_back_and_supersedes_a_held_commit() {
        let mut held = HeldCommit::new(hs(2, Some(1), 10));
        assert_eq!(held.route(Some(hs(2, Some(1), 11)), false), None);
        assert_eq!(
            held.route(Some(hs(3, None, 11)), false),
            Some(hs(3, None, 11))
        );
        assert_eq!(
            held.take(),
            None,
            "the older commit is not written after it"
        );
        assert_eq!(
            held.route(Some(hs(3, Some(2), 11)), false),
            Some(hs(3, Some(2), 11))
        );
        // Once the term and vote are written, a commit alone waits again.
        assert_eq!(held.route(Some(hs(3, Some(2), 12)), false), None);
    }

    #[test]
    fn a_snapshot_drops_a_held_commit_that_may_lie_below_it() {
        let mut held = HeldCommit::new(hs(2, Some(1), 10));
        assert_eq!(held.route(Some(hs(2, Some(1), 11)), false), None);
        held.written_with_snapshot(None);
        assert_eq!(held.take(), None);
        assert_eq!(held.route(None, true), None);
        held.written_with_snapshot(Some(hs(4, None, 50)));
        assert_eq!(held.route(Some(hs(4, None, 51)), false), None);
        assert_eq!(held.take(), Some(hs(4, None, 51)));
    }
}
