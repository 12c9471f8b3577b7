//! The applier: committed entries into the state machine, off the step
//! loop.
//!
//! The step loop hands it [`ApplyTask`]s in order: a write to answer once
//! its index applies (always handed before the entry can commit), the
//! committed entries themselves, linearizable reads to serve once the
//! state machine reached their read index. It answers the clients from
//! here, and reports back to the step loop only what the leader's lessor
//! must know ([`Applied`]). Like the log writer it runs on a thread of its
//! own in a running node and inline in the whole-node simulation.
//!
//! Commits are coalesced: batches are applied into one open state machine
//! transaction ([`KvStore::apply_open`]), which commits only when someone
//! needs to see it (see [`Applier::must_commit`]): a client to answer (an
//! answer is sent only once the transaction holding its write committed,
//! so that its reads on this node see it), a read waiting for an index the
//! transaction holds, a barrier, a compaction, the channel closing; or
//! when it holds [`CommitPolicy::max_entries`] entries, or, on the thread,
//! once it has been open [`CommitPolicy::max_delay`]. A redb commit costs
//! far more than applying one put, even without fsync, and a follower,
//! which answers no writer, commits a few times per max delay instead of
//! once per batch. Inline (the simulation, which has no clock) the tick's
//! prune stands in for the time bound.
//!
//! Installing a received snapshot image is the step loop's (below): it
//! waits for the applier to be idle first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::answer::read_local;
use super::pending::{Pending, PendingChange, PendingRead, PendingWrite};
use super::stage::StageThread;
use super::{Driver, DriverError, kv_error};
use crate::metrics::Metrics;
use crate::raft::{Entry, LogIndex, Term};
use crate::server::ClientError;
use crate::server::handle::{DriverReply, MemberStatus, Rejection, WriteResult};
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

/// When the open state machine transaction commits without anyone
/// waiting for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CommitPolicy {
    /// At most this many entries wait in it: well under the applied-index
    /// gap readiness allows, and a bound on what a commit writes at once.
    pub max_entries: u64,
    /// At most this long (on the thread): followers' reads and watchers
    /// see an entry that much later than they could at most.
    pub max_delay: Duration,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        CommitPolicy {
            max_entries: 64,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// An answer decided by applying its entry, sent once the transaction
/// that holds the entry committed.
enum Answer {
    Write(
        oneshot::Sender<DriverReply<WriteResult>>,
        DriverReply<WriteResult>,
    ),
    Change(
        oneshot::Sender<DriverReply<MemberStatus>>,
        DriverReply<MemberStatus>,
    ),
}

/// Applies and answers; see the module docs.
pub(crate) struct Applier {
    kv: KvStore,
    /// The log, to compact behind the state machine.
    log: LogStore,
    policy: SnapshotPolicy,
    commit_policy: CommitPolicy,
    /// How far the log is being compacted, a chunk per applied batch.
    compacting: Option<LogIndex>,
    metrics: Arc<Metrics>,
    pending: Pending,
    /// Answers waiting for the open transaction to commit.
    answers: Vec<Answer>,
    /// Lease outcomes of the open transaction, for the lessor once it
    /// committed.
    lease_outcomes: Vec<ApplyOutcome>,
    /// When the open transaction applied its first batch.
    opened: Option<Instant>,
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
            commit_policy: CommitPolicy::default(),
            compacting: None,
            metrics,
            pending: Pending::default(),
            answers: Vec::new(),
            lease_outcomes: Vec::new(),
            opened: None,
        }
    }

    /// Whether the open transaction must commit now: someone waits for
    /// what it holds, or it is full.
    pub fn must_commit(&self) -> bool {
        if self.opened.is_none() {
            return false;
        }
        if !self.answers.is_empty() || !self.lease_outcomes.is_empty() {
            return true;
        }
        let open = self.kv.applied_open_index();
        self.pending
            .reads_awaiting_apply
            .iter()
            .any(|(index, _, _)| *index <= open)
            || self.kv.open_entries() >= self.commit_policy.max_entries
    }

    /// When the open transaction must commit even if nobody waits for it
    /// (`None`: nothing is open).
    pub fn commit_deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.commit_policy.max_delay)
    }

    /// Commits the open transaction, then answers what waited for it,
    /// serves the reads it lets through, and goes on compacting. Returns
    /// what the lessor must hear.
    pub fn commit(&mut self) -> Result<Option<Applied>, DriverError> {
        if self.opened.take().is_none() {
            return Ok(None);
        }
        self.kv
            .commit_open()
            .map_err(|e| DriverError::StateMachine(e.to_string()))?;
        for answer in self.answers.drain(..) {
            match answer {
                Answer::Write(reply, result) => {
                    let _ = reply.send(result);
                }
                Answer::Change(reply, result) => {
                    let _ = reply.send(result);
                }
            }
        }
        self.serve_applied_reads();
        self.compact_step()?;
        let lease_outcomes = std::mem::take(&mut self.lease_outcomes);
        Ok((!lease_outcomes.is_empty()).then_some(Applied { lease_outcomes }))
    }

    /// Commits if [`Applier::must_commit`] says so.
    pub fn commit_if_needed(&mut self) -> Result<Option<Applied>, DriverError> {
        if self.must_commit() {
            self.commit()
        } else {
            Ok(None)
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
                self.apply(&entries)?;
                self.metrics
                    .raft_proposals_pending
                    .set(self.pending.writes.len() as i64);
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
                // Time passed (a hundred ticks): nothing waits longer for
                // a commit. It also lets a compaction go on when nothing
                // applies.
                let report = self.commit()?;
                self.compact_step()?;
                let dropped = self.pending.prune_abandoned();
                if dropped > 0 {
                    self.metrics
                        .raft_proposals_failed_total
                        .inc_by(dropped as u64);
                }
                return Ok(report);
            }
            ApplyTask::Barrier(done) => {
                let report = self.commit()?;
                let _ = done.send(());
                return Ok(report);
            }
        }
        Ok(None)
    }

    /// Applies `entries` into the open transaction and decides their
    /// answers, which wait for it to commit.
    fn apply(&mut self, entries: &[Entry]) -> Result<(), DriverError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut outcomes: HashMap<LogIndex, ApplyOutcome> = self
            .kv
            .apply_open(entries)
            .map_err(|e| DriverError::StateMachine(e.to_string()))?
            .into_iter()
            .collect();
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        self.lease_outcomes.extend(
            outcomes
                .values()
                .filter(|o| {
                    matches!(
                        o,
                        ApplyOutcome::LeaseGranted { .. } | ApplyOutcome::LeaseRevoked { .. }
                    )
                })
                .cloned(),
        );
        for e in entries {
            let (index, term) = (e.index, e.term);
            if let Some(w) = self.pending.take_write(index) {
                let result = match outcomes.remove(&index) {
                    Some(ApplyOutcome::Rejected(err)) if w.term == term => {
                        self.metrics.raft_proposals_failed_total.inc();
                        Err(Rejection::Failed(kv_error(err)))
                    }
                    Some(outcome) if w.term == term => {
                        self.metrics.raft_proposals_committed_total.inc();
                        Ok(WriteResult {
                            outcome,
                            raft_term: term,
                        })
                    }
                    _ => {
                        self.metrics.raft_proposals_failed_total.inc();
                        // Another leader's entry holds this index: ours can
                        // never commit, so retrying cannot apply it twice.
                        Err(Rejection::Failed(ClientError::NoLeader))
                    }
                };
                self.answers.push(Answer::Write(w.reply, result));
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
                    self.answers.push(Answer::Change(c.reply, result));
                }
            }
        }
        Ok(())
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
            let report = |r: Result<Option<Applied>, DriverError>| match r {
                Ok(None) => true,
                Ok(Some(report)) => applied.send(Ok(report)).is_ok(),
                Err(e) => {
                    let _ = applied.send(Err(e));
                    false
                }
            };
            loop {
                // Nothing to do until a task comes, or until the open
                // transaction has waited long enough.
                let first = match applier.commit_deadline() {
                    None => match incoming.recv() {
                        Ok(task) => task,
                        Err(_) => break,
                    },
                    Some(deadline) => {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        match incoming.recv_timeout(wait) {
                            Ok(task) => task,
                            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                                if !report(applier.commit()) {
                                    return;
                                }
                                continue;
                            }
                            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                };
                // Everything queued behind it too, with runs of
                // committed entries merged: one state machine
                // transaction for all of them.
                let mut tasks: Vec<ApplyTask> = Vec::new();
                for task in std::iter::once(first).chain(incoming.try_iter()) {
                    match (tasks.last_mut(), task) {
                        (Some(ApplyTask::Apply(run)), ApplyTask::Apply(more)) => run.extend(more),
                        (_, task) => tasks.push(task),
                    }
                }
                for task in tasks {
                    if !report(applier.handle(task)) {
                        return;
                    }
                }
                if !report(applier.commit_if_needed()) {
                    return;
                }
            }
            // The step loop is gone: what applied is committed for
            // whoever opens the store next in this process.
            let _ = applier.commit();
        })?;
        Ok(ApplierStage::Thread(thread))
    }

    /// Hands a task over. Inline it is done when this returns, and its
    /// report returned; on a thread the report comes back later.
    pub fn submit(&mut self, task: ApplyTask) -> Result<Option<Applied>, DriverError> {
        match self {
            ApplierStage::Inline(a) => {
                let report = a.handle(task)?;
                let more = a.commit_if_needed()?;
                Ok(match (report, more) {
                    (Some(mut r), Some(m)) => {
                        r.lease_outcomes.extend(m.lease_outcomes);
                        Some(r)
                    }
                    (r, m) => r.or(m),
                })
            }
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

    fn put_entry(index: u64, key: &str, value: &str) -> Entry {
        let cmd = crate::storage::Command {
            request_id: None,
            op: crate::storage::Op::Put {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                value: bytes::Bytes::copy_from_slice(value.as_bytes()),
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
                lease: 0,
            },
        };
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Command(cmd.encode()),
        }
    }

    /// An applier over a fresh single-member store.
    fn applier(dir: &std::path::Path) -> (Applier, KvStore) {
        let identity = Identity {
            cluster_id: 1,
            node_id: NodeId(1),
        };
        let log = LogStore::open(dir, identity).unwrap();
        log.bootstrap(&Membership::with_voters([(NodeId(1), bytes::Bytes::new())]))
            .unwrap();
        let kv = KvStore::open(dir, Limits::default()).unwrap();
        let applier = Applier::new(
            kv.clone(),
            log,
            SnapshotPolicy {
                every_entries: 1_000_000,
                keep_trailing: 100,
            },
            Arc::new(Metrics::new().unwrap()),
        );
        (applier, kv)
    }

    #[test]
    fn a_writer_is_answered_only_once_its_write_is_visible_to_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut applier, kv) = applier(tmp.path());
        let (tx, mut rx) = oneshot::channel();
        applier
            .handle(ApplyTask::AwaitWrite {
                index: LogIndex(1),
                write: PendingWrite {
                    term: Term(1),
                    reply: tx,
                },
            })
            .unwrap();
        applier
            .handle(ApplyTask::Apply(vec![put_entry(1, "a", "1")]))
            .unwrap();
        // Applied, not committed: no answer yet, and nothing to read.
        assert!(rx.try_recv().is_err());
        assert!(kv.get(b"a").unwrap().is_none());
        // Someone waits: the transaction commits, then the answer goes.
        assert!(applier.must_commit());
        applier.commit_if_needed().unwrap();
        assert!(matches!(rx.try_recv(), Ok(Ok(_))));
        assert!(kv.get(b"a").unwrap().is_some());
    }

    #[test]
    fn entries_nobody_waits_for_share_one_commit_until_a_read_needs_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut applier, kv) = applier(tmp.path());
        for i in 1..=3 {
            applier
                .handle(ApplyTask::Apply(vec![put_entry(i, "a", &i.to_string())]))
                .unwrap();
            assert!(!applier.must_commit(), "nobody waits for entry {i}");
        }
        assert_eq!(kv.applied_index(), LogIndex(0));
        assert_eq!(kv.open_entries(), 3);
        // A linearizable read at index 3 must see all three.
        let (tx, mut rx) = oneshot::channel();
        applier
            .handle(ApplyTask::ServeReads {
                index: LogIndex(3),
                term: Term(1),
                reads: vec![PendingRead {
                    req: crate::storage::RangeRequest::key("a"),
                    reply: tx,
                }],
            })
            .unwrap();
        assert!(rx.try_recv().is_err(), "not served from the old commit");
        assert!(applier.must_commit());
        applier.commit_if_needed().unwrap();
        let read = rx.try_recv().unwrap().unwrap();
        assert_eq!(read.range.kvs[0].value.as_ref(), b"3");
        assert_eq!(kv.applied_index(), LogIndex(3));
    }

    #[test]
    fn a_full_open_transaction_commits_without_anyone_waiting() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut applier, kv) = applier(tmp.path());
        let max = CommitPolicy::default().max_entries;
        applier.handle(ApplyTask::Apply(noops(1, max - 1))).unwrap();
        assert!(!applier.must_commit());
        applier.handle(ApplyTask::Apply(noops(max, max))).unwrap();
        assert!(applier.must_commit());
        applier.commit_if_needed().unwrap();
        assert_eq!(kv.applied_index(), LogIndex(max));
    }

    #[test]
    fn a_barrier_commits_what_applied_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut applier, kv) = applier(tmp.path());
        applier
            .handle(ApplyTask::Apply(vec![put_entry(1, "a", "1")]))
            .unwrap();
        let (tx, rx) = std_mpsc::channel();
        applier.handle(ApplyTask::Barrier(tx)).unwrap();
        assert!(rx.try_recv().is_ok());
        assert_eq!(kv.applied_index(), LogIndex(1));
    }

    #[test]
    fn the_thread_commits_an_idle_open_transaction_after_the_max_delay() {
        let tmp = tempfile::tempdir().unwrap();
        let (applier, kv) = applier(tmp.path());
        let (applied_tx, _applied_rx) = mpsc::unbounded_channel();
        let mut stage = ApplierStage::Inline(Box::new(applier))
            .spawn(applied_tx)
            .unwrap();
        let mut feed = kv.subscribe();
        stage
            .submit(ApplyTask::Apply(vec![put_entry(1, "a", "1")]))
            .unwrap();
        // Nothing else arrives: the commit is announced on its own, by
        // the time bound (the test waits for the announcement, not a
        // duration).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), feed.recv())
                .await
                .expect("committed within the time bound")
                .unwrap();
        });
        assert_eq!(kv.applied_index(), LogIndex(1));
        drop(stage);
    }

    fn noops(from: u64, to: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                term: Term(1),
                index: LogIndex(i),
                payload: EntryPayload::Noop,
            })
            .collect()
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
        applier.commit_if_needed().unwrap();
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
