//! The applier: committed entries into the state machine, off the step
//! loop.
//!
//! The step loop hands it [`ApplyTask`]s in order: a write to answer once
//! its index applies (always handed before the entry can commit), the
//! committed entries themselves, linearizable reads to serve once the
//! state machine reached their read index. It applies each batch in one
//! state machine transaction, answers the clients from here, and reports
//! back to the step loop only what the leader's lessor must know
//! ([`Applied`]). Like the log writer it runs on a thread of its own in a
//! running node and inline in the whole-node simulation.
//!
//! Installing a received snapshot image is the step loop's (below): it
//! waits for the applier to be idle first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;
use tracing::{debug, info};

use super::answer::read_local;
use super::pending::{Pending, PendingChange, PendingRead, PendingWrite};
use super::stage::StageThread;
use super::{Driver, DriverError, kv_error};
use crate::metrics::Metrics;
use crate::raft::{Entry, LogIndex, Term};
use crate::server::ClientError;
use crate::server::handle::{Rejection, WriteResult};
use crate::server::put_path;
use crate::storage::{ApplyOutcome, CHUNK_BYTES, KvStore, LogStore, SnapshotPolicy};

/// What the step loop hands the applier, in the order it must be done.
pub(crate) enum ApplyTask {
    /// A proposed write, answered when its index applies.
    AwaitWrite {
        index: LogIndex,
        write: PendingWrite,
    },
    /// A proposed membership change, answered when it applies.
    AwaitChange(PendingChange),
    /// Committed entries, durable here and on a majority.
    Apply(Vec<Entry>),
    /// Linearizable reads, served once the state machine applied `index`;
    /// `term` is the leader's term they were confirmed in.
    ServeReads {
        index: LogIndex,
        term: Term,
        reads: Vec<PendingRead>,
    },
    /// Writes proposed at or before this index lost their entries to a
    /// snapshot from a new leader.
    FailWritesThrough(LogIndex),
    /// Forget requests whose client gave up (and go on compacting).
    Prune,
    /// Told once everything handed over before it is done.
    Barrier(std_mpsc::Sender<()>),
}

/// What the applier reports back to the step loop.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Lease grants and revokes that applied, for the leader's deadlines.
    pub lease_outcomes: Vec<ApplyOutcome>,
}

/// Applies and answers; see the module docs.
pub(crate) struct Applier {
    kv: KvStore,
    /// The log, to compact behind the state machine.
    log: LogStore,
    policy: SnapshotPolicy,
    /// How far the log is being compacted, a chunk per applied batch.
    compacting: Option<LogIndex>,
    metrics: Arc<Metrics>,
    pending: Pending,
}

/// How many entries one compaction step removes: one short transaction,
/// so that neither the applier nor the log writer (which shares the log's
/// write lock) waits long.
const COMPACT_CHUNK: u64 = 512;

impl Applier {
    pub fn new(kv: KvStore, log: LogStore, policy: SnapshotPolicy, metrics: Arc<Metrics>) -> Self {
        Applier {
            kv,
            log,
            policy,
            compacting: None,
            metrics,
            pending: Pending::default(),
        }
    }

    /// Compacts the log behind the state machine when the policy says so,
    /// one chunk at a time. The state machine is made durable first: the
    /// log must never be compacted past what a restart can recover
    /// without it.
    fn compact_step(&mut self) -> Result<(), DriverError> {
        let log_snapshot = self.log.snapshot_meta().index;
        if self.compacting.is_none_or(|to| to <= log_snapshot) {
            // A crash between installing a snapshot into the state machine
            // and recording it in the log leaves the state machine ahead
            // of the log: only what the log holds and knows committed can
            // go.
            let applied = self.kv.applied_index().min(self.log.stored_commit());
            self.compacting = self.policy.compact_to(applied, log_snapshot);
            if self.compacting.is_none() {
                return Ok(());
            }
            self.kv
                .sync()
                .map_err(|e| DriverError::StateMachine(e.to_string()))?;
        }
        let Some(to) = self.compacting else {
            return Ok(());
        };
        let step = to.min(LogIndex(log_snapshot.get() + COMPACT_CHUNK));
        self.log
            .compact_to(step)
            .map_err(|e| DriverError::Log(e.to_string()))?;
        debug!(index = %step, "compacted the log");
        if step >= to {
            self.compacting = None;
        }
        Ok(())
    }

    /// Carries out one task; returns what the step loop must hear, if
    /// anything.
    pub fn handle(&mut self, task: ApplyTask) -> Result<Option<Applied>, DriverError> {
        match task {
            ApplyTask::AwaitWrite { index, write } => {
                self.pending.writes.insert(index, write);
                self.metrics
                    .raft_proposals_pending
                    .set(self.pending.writes.len() as i64);
            }
            ApplyTask::AwaitChange(c) => self.pending.change = Some(c),
            ApplyTask::Apply(entries) => {
                let applied = self.apply(&entries)?;
                self.serve_applied_reads();
                // After answering: the durable point writes every page the
                // commits since the last one changed, and the clients of
                // this batch need not wait for it.
                if self.kv.sync_due() {
                    self.kv
                        .sync()
                        .map_err(|e| DriverError::StateMachine(e.to_string()))?;
                }
                self.compact_step()?;
                self.metrics
                    .raft_proposals_pending
                    .set(self.pending.writes.len() as i64);
                return Ok((!applied.lease_outcomes.is_empty()).then_some(applied));
            }
            ApplyTask::ServeReads { index, term, reads } => {
                self.pending
                    .reads_awaiting_apply
                    .extend(reads.into_iter().map(|r| (index, term, r)));
                self.serve_applied_reads();
            }
            ApplyTask::FailWritesThrough(index) => {
                let failed = self.pending.fail_writes_through(index);
                self.metrics
                    .raft_proposals_failed_total
                    .inc_by(failed as u64);
            }
            ApplyTask::Prune => {
                // Also lets a compaction go on when nothing applies.
                self.compact_step()?;
                let dropped = self.pending.prune_abandoned();
                if dropped > 0 {
                    self.metrics
                        .raft_proposals_failed_total
                        .inc_by(dropped as u64);
                }
            }
            ApplyTask::Barrier(done) => {
                let _ = done.send(());
            }
        }
        Ok(None)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Applied, DriverError> {
        let mut applied = Applied::default();
        if entries.is_empty() {
            return Ok(applied);
        }
        let last = put_path::last_index(entries, |e| e.index);
        put_path::stage("apply started", last);
        let mut outcomes: HashMap<LogIndex, ApplyOutcome> = self
            .kv
            .apply(entries)
            .map_err(|e| DriverError::StateMachine(e.to_string()))?
            .into_iter()
            .collect();
        put_path::stage("applied", last);
        applied.lease_outcomes = outcomes
            .values()
            .filter(|o| {
                matches!(
                    o,
                    ApplyOutcome::LeaseGranted { .. } | ApplyOutcome::LeaseRevoked { .. }
                )
            })
            .cloned()
            .collect();
        for e in entries {
            let (index, term) = (e.index, e.term);
            if let Some(w) = self.pending.take_write(index) {
                match outcomes.remove(&index) {
                    Some(ApplyOutcome::Rejected(err)) if w.term == term => {
                        self.metrics.raft_proposals_failed_total.inc();
                        let _ = w.reply.send(Err(Rejection::Failed(kv_error(err))));
                    }
                    Some(outcome) if w.term == term => {
                        self.metrics.raft_proposals_committed_total.inc();
                        let _ = w.reply.send(Ok(WriteResult {
                            outcome,
                            raft_term: term,
                        }));
                        put_path::stage("answered", index);
                    }
                    _ => {
                        self.metrics.raft_proposals_failed_total.inc();
                        // Another leader's entry holds this index: ours can
                        // never commit, so retrying cannot apply it twice.
                        let _ = w.reply.send(Err(Rejection::Failed(ClientError::NoLeader)));
                    }
                }
            }
            if self
                .pending
                .change
                .as_ref()
                .is_some_and(|c| c.index == index)
            {
                if let Some(c) = self.pending.change.take() {
                    let result = if c.term == term {
                        Ok(c.member)
                    } else {
                        Err(Rejection::Failed(ClientError::NoLeader))
                    };
                    let _ = c.reply.send(result);
                }
            }
        }
        Ok(applied)
    }

    fn serve_applied_reads(&mut self) {
        if self.pending.reads_awaiting_apply.is_empty() {
            return;
        }
        let applied = self.kv.applied_index();
        let waiting = std::mem::take(&mut self.pending.reads_awaiting_apply);
        for (index, term, r) in waiting {
            if index <= applied {
                let result = read_local(&self.kv, &r.req, term);
                let _ = r.reply.send(result.map_err(Rejection::Failed));
            } else {
                self.pending.reads_awaiting_apply.push((index, term, r));
            }
        }
    }
}

/// Adds `task` to the tasks taken off the queue at once, merging runs of
/// committed entries so that they apply in one state machine transaction.
///
/// A write registered behind a run goes in front of it, so that the runs on
/// either side of it merge (on a busy leader every proposal falls between
/// two runs). That is safe because a leader proposes after its last entry,
/// which is at or beyond everything it committed: a run handed before the
/// registration never holds the write's index. Everything else keeps its
/// place.
fn queue(tasks: &mut Vec<ApplyTask>, task: ApplyTask) {
    match (tasks.last_mut(), task) {
        (Some(ApplyTask::Apply(run)), ApplyTask::Apply(more)) => run.extend(more),
        (Some(ApplyTask::Apply(_)), task @ ApplyTask::AwaitWrite { .. }) => {
            let run = tasks.len() - 1;
            tasks.insert(run, task);
        }
        (_, task) => tasks.push(task),
    }
}

/// The applier as the step loop holds it: inline (the simulation) or a
/// thread of its own.
pub(crate) enum ApplierStage {
    Inline(Box<Applier>),
    Thread(StageThread<ApplyTask>),
    /// Between the two, while the loop starts.
    Stopped,
}

impl ApplierStage {
    /// Moves the applier onto its own thread; what it must report goes to
    /// `applied`.
    pub fn spawn(
        self,
        applied: mpsc::UnboundedSender<Result<Applied, DriverError>>,
    ) -> std::io::Result<Self> {
        let mut applier = match self {
            ApplierStage::Inline(a) => a,
            other => return Ok(other),
        };
        let thread = StageThread::spawn("raft-applier", move |incoming| {
            while let Ok(first) = incoming.recv() {
                // Everything queued behind it too, with runs of
                // committed entries merged: one state machine
                // transaction for all of them.
                let mut tasks: Vec<ApplyTask> = Vec::new();
                for task in std::iter::once(first).chain(incoming.try_iter()) {
                    queue(&mut tasks, task);
                }
                for task in tasks {
                    match applier.handle(task) {
                        Ok(None) => {}
                        Ok(Some(report)) => {
                            if applied.send(Ok(report)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = applied.send(Err(e));
                            return;
                        }
                    }
                }
            }
        })?;
        Ok(ApplierStage::Thread(thread))
    }

    /// Hands a task over. Inline it is done when this returns, and its
    /// report returned; on a thread the report comes back later.
    pub fn submit(&mut self, task: ApplyTask) -> Result<Option<Applied>, DriverError> {
        match self {
            ApplierStage::Inline(a) => a.handle(task),
            ApplierStage::Thread(thread) => {
                if thread.send(task) {
                    Ok(None)
                } else {
                    Err(DriverError::StateMachine("the applier stopped".into()))
                }
            }
            ApplierStage::Stopped => Err(DriverError::StateMachine("the applier stopped".into())),
        }
    }

    /// Waits until everything handed over so far is applied.
    pub fn wait_idle(&mut self) -> Result<Option<Applied>, DriverError> {
        let (tx, rx) = std_mpsc::channel();
        let report = self.submit(ApplyTask::Barrier(tx))?;
        if let ApplierStage::Thread(_) = self {
            tokio::task::block_in_place(|| rx.recv())
                .map_err(|_| DriverError::StateMachine("the applier stopped".into()))?;
        }
        Ok(report)
    }
}

impl Driver {
    /// Installs the staged image the core has accepted: fed chunk by chunk
    /// into the state machine's installer, which swaps it in only once the
    /// whole image verified.
    pub(super) fn install_snapshot(
        &mut self,
        meta: &crate::raft::SnapshotMeta,
    ) -> Result<(), DriverError> {
        let Some(path) = self.staged_snapshots.remove(&meta.index) else {
            return Err(DriverError::Snapshot(format!(
                "the core installs a snapshot at index {} that was never staged",
                meta.index
            )));
        };
        let kv = &self.kv;
        let installed = tokio::task::block_in_place(|| {
            use std::io::Read;
            let mut file = std::fs::File::open(&path)
                .map_err(|e| DriverError::Snapshot(format!("{}: {e}", path.display())))?;
            let mut installer = kv
                .begin_install()
                .map_err(|e| DriverError::Snapshot(e.to_string()))?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| DriverError::Snapshot(format!("{}: {e}", path.display())))?;
                if n == 0 {
                    break;
                }
                installer
                    .write_chunk(&buf[..n])
                    .map_err(|e| DriverError::Snapshot(e.to_string()))?;
            }
            installer
                .finish()
                .map_err(|e| DriverError::Snapshot(e.to_string()))
        })?;
        if installed.index != meta.index || installed.term != meta.term {
            return Err(DriverError::Snapshot(format!(
                "the staged image is at {}/{}, the core expected {}/{}",
                installed.index, installed.term, meta.index, meta.term
            )));
        }
        let _ = std::fs::remove_file(&path);
        // Older staged images are useless now.
        let stale: Vec<_> = self
            .staged_snapshots
            .range(..=meta.index)
            .map(|(i, _)| *i)
            .collect();
        for i in stale {
            if let Some(p) = self.staged_snapshots.remove(&i) {
                let _ = std::fs::remove_file(p);
            }
        }
        info!(index = %meta.index, term = %meta.term, "installed snapshot");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{EntryPayload, HardState, Membership, NodeId, Storage};
    use crate::storage::{Identity, Limits};

    fn noops(from: u64, to: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                term: Term(1),
                index: LogIndex(i),
                payload: EntryPayload::Noop,
            })
            .collect()
    }

    type WriteReply = crate::server::handle::DriverReply<WriteResult>;

    fn await_write(index: u64) -> (ApplyTask, tokio::sync::oneshot::Receiver<WriteReply>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let write = PendingWrite {
            term: Term(1),
            reply,
        };
        (
            ApplyTask::AwaitWrite {
                index: LogIndex(index),
                write,
            },
            rx,
        )
    }

    /// The shape of a queue, in order: `A(first..=last)` for a run of
    /// entries, `W(index)` for a registered write, `B` for a barrier.
    fn shape(tasks: &[ApplyTask]) -> String {
        tasks
            .iter()
            .map(|t| match t {
                ApplyTask::Apply(run) => format!(
                    "A({}..={})",
                    run.first().map_or(0, |e| e.index.get()),
                    run.last().map_or(0, |e| e.index.get())
                ),
                ApplyTask::AwaitWrite { index, .. } => format!("W({index})"),
                ApplyTask::Barrier(_) => "B".into(),
                _ => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn runs_split_by_registered_writes_merge_and_the_writes_go_first() {
        let mut tasks = Vec::new();
        let (w4, _r4) = await_write(4);
        let (w5, _r5) = await_write(5);
        let (w7, _r7) = await_write(7);
        let (barrier, _done) = std_mpsc::channel();
        for task in [
            w4,
            ApplyTask::Apply(noops(1, 3)),
            w5,
            ApplyTask::Apply(noops(4, 4)),
            ApplyTask::Apply(noops(5, 6)),
            ApplyTask::Barrier(barrier),
            w7,
            ApplyTask::Apply(noops(7, 7)),
        ] {
            queue(&mut tasks, task);
        }
        assert_eq!(shape(&tasks), "W(4) W(5) A(1..=6) B W(7) A(7..=7)");
    }

    #[test]
    fn a_write_registered_between_two_runs_is_answered_by_the_merged_run() {
        let tmp = tempfile::tempdir().unwrap();
        let identity = Identity {
            cluster_id: 1,
            node_id: NodeId(1),
        };
        let log = LogStore::open(tmp.path(), identity).unwrap();
        let kv = KvStore::open(tmp.path(), Limits::default()).unwrap();
        let mut applier = Applier::new(
            kv.clone(),
            log,
            SnapshotPolicy::default(),
            Arc::new(Metrics::new().unwrap()),
        );
        let put = |i: u64| Entry {
            term: Term(1),
            index: LogIndex(i),
            payload: EntryPayload::Command(
                crate::storage::Command::new(crate::storage::Op::Put {
                    key: bytes::Bytes::from(format!("k{i}")),
                    value: bytes::Bytes::from_static(b"v"),
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                    lease: 0,
                })
                .encode(),
            ),
        };
        let (w2, mut r2) = await_write(2);
        let mut tasks = Vec::new();
        for task in [
            ApplyTask::Apply(vec![put(1)]),
            w2,
            ApplyTask::Apply(vec![put(2)]),
        ] {
            queue(&mut tasks, task);
        }
        for task in tasks {
            applier.handle(task).unwrap();
        }
        let answer = r2.try_recv().expect("answered when its entry applied");
        assert!(
            matches!(
                answer,
                Ok(WriteResult {
                    outcome: ApplyOutcome::Put { revision: 3, .. },
                    ..
                })
            ),
            "{answer:?}"
        );
        assert_eq!(kv.applied_index(), LogIndex(2));
    }

    #[test]
    fn the_state_machine_is_made_durable_every_so_many_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let identity = Identity {
            cluster_id: 1,
            node_id: NodeId(1),
        };
        let log = LogStore::open(tmp.path(), identity).unwrap();
        let kv = KvStore::open(tmp.path(), Limits::default()).unwrap();
        let mut applier = Applier::new(
            kv.clone(),
            log,
            SnapshotPolicy::default(),
            Arc::new(Metrics::new().unwrap()),
        );
        let every = crate::storage::DURABLE_EVERY_ENTRIES;
        applier
            .handle(ApplyTask::Apply(noops(1, every - 1)))
            .unwrap();
        assert!(!kv.sync_due(), "not yet");
        applier
            .handle(ApplyTask::Apply(noops(every, every)))
            .unwrap();
        assert!(!kv.sync_due(), "the applier made the state machine durable");
        applier
            .handle(ApplyTask::Apply(noops(every + 1, 2 * every)))
            .unwrap();
        assert!(!kv.sync_due(), "and does again");
    }

    #[test]
    fn the_log_is_compacted_behind_the_state_machine_a_chunk_per_step() {
        let tmp = tempfile::tempdir().unwrap();
        let identity = Identity {
            cluster_id: 1,
            node_id: NodeId(1),
        };
        let log = LogStore::open(tmp.path(), identity).unwrap();
        log.bootstrap(&Membership::with_voters([(NodeId(1), bytes::Bytes::new())]))
            .unwrap();
        let kv = KvStore::open(tmp.path(), Limits::default()).unwrap();
        let policy = SnapshotPolicy {
            every_entries: 1000,
            keep_trailing: 100,
        };
        let mut applier = Applier::new(
            kv.clone(),
            log.clone(),
            policy,
            Arc::new(Metrics::new().unwrap()),
        );
        let last = 3 * COMPACT_CHUNK + 1100;
        log.persist(
            None,
            &noops(1, last),
            Some(&HardState {
                term: Term(1),
                vote: Some(NodeId(1)),
                commit: LogIndex(last),
            }),
        )
        .unwrap();
        applier.handle(ApplyTask::Apply(noops(1, last))).unwrap();
        // One step: the state machine made durable, one chunk compacted.
        let target = last - policy.keep_trailing;
        assert_eq!(log.snapshot_meta().index, LogIndex(COMPACT_CHUNK));
        let mut steps = 1;
        while log.snapshot_meta().index < LogIndex(target) {
            let before = log.snapshot_meta().index;
            applier.handle(ApplyTask::Prune).unwrap();
            let after = log.snapshot_meta().index;
            assert!(after > before && after.get() - before.get() <= COMPACT_CHUNK);
            steps += 1;
            assert!(steps < 100, "compaction makes progress");
        }
        assert_eq!(log.snapshot_meta().index, LogIndex(target));
        assert_eq!(log.first_index().unwrap(), LogIndex(target + 1));
        assert!(steps > 1, "in several short steps");
    }
}
