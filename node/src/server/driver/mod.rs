//! The driver: the one task that owns the consensus core and the state
//! machine, and runs the loop
//!
//! receive (ticks, peer messages, client requests) → step → `ready()` →
//! persist (one durable write per Ready: group commit) → send → apply →
//! answer clients → `advance()`.
//!
//! Nothing else touches the core; other tasks talk to the driver over
//! bounded channels, so a flood of requests slows clients down instead of
//! growing memory. Disk work runs in `block_in_place`: the loop stays
//! strictly sequential (the core's contract) while other tasks keep running.
//!
//! `status.rs` holds what the driver publishes about itself: metrics, the
//! health view and `/v1/status`; `lessor.rs` the leader's lease deadlines
//! and expiry; `quota.rs` the backend quota.

mod lessor;
mod quota;
mod status;

use status::member_status;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::raft::{
    ConfChange, ConfChangeError, Entry, LogIndex, Message, MessageBody, NodeId, Ready, RoleState,
    Term,
};
use crate::raft::{ProposeError, RaftError, RaftNode};
use crate::server::handle::{
    DriverReply, HashKvResult, LeaderHint, MemberChange, MemberStatus, ReadResult, Rejection,
    Request, WriteResult,
};
use crate::server::member_info::MemberInfo;
use crate::server::outbox::Outbox;
use crate::server::pending::{Pending, PendingChange, PendingRead, PendingTransfer, PendingWrite};
use crate::server::{ClientError, Consistency};
use crate::storage::{
    ApplyOutcome, CHUNK_BYTES, Command, KvError, KvStore, LogStore, RangeRequest, SnapshotPolicy,
    StoreError,
};

/// How many requests or messages the driver takes per wake-up before it
/// runs a Ready: large enough to batch, small enough to keep latency low.
const MAX_BATCH: usize = 512;

/// Tunables of the driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub id: NodeId,
    pub name: String,
    pub cluster_id: u64,
    /// Our client URL, for member lists.
    pub advertise_client: String,
    pub tick: Duration,
    /// When to compact the log behind the state machine.
    pub snapshot_policy: SnapshotPolicy,
    /// Where received snapshot images are staged until they are installed.
    pub snapshot_dir: PathBuf,
    /// Published here: the members' peer URLs, which peer authentication
    /// checks certificates against.
    pub members: crate::server::MemberDirectory,
    /// The shortest lease TTL granted, in seconds (etcd's: 1.5 election
    /// timeouts, rounded up): a lease must outlive a leader change.
    pub min_lease_ttl: i64,
    /// How often the leader commits leases' remaining TTLs (zero: never).
    pub lease_checkpoint_interval: Duration,
}

/// What the network side hands the driver.
#[derive(Debug)]
pub(crate) enum Inbound {
    Message(Message),
    /// A snapshot image arrived completely and is staged at `staged`;
    /// `message` is the InstallSnapshot (meta only) to step.
    SnapshotReceived {
        message: Message,
        staged: PathBuf,
    },
    /// An outbound snapshot stream finished.
    SnapshotSent {
        to: NodeId,
        ok: bool,
    },
    /// A peer could not be reached (stream broken or queue full).
    Unreachable(NodeId),
    /// A peer opened a message stream and said where it can be reached.
    PeerUrl {
        id: NodeId,
        url: String,
        client_url: Option<String>,
    },
}

/// A cheap view of the driver for health checks and readiness.
#[derive(Clone, Debug)]
pub struct Health {
    /// When the loop last went round; a stale value means it is stuck.
    pub last_loop: Instant,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    /// The leader's commit index as last heard: readiness is measured
    /// against it, since a follower that waits for a snapshot cannot commit.
    pub leader_commit: LogIndex,
    pub applied_index: LogIndex,
    pub role: RoleState,
    pub term: Term,
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("raft log storage failed: {0}")]
    Log(String),
    #[error("state machine failed: {0}")]
    StateMachine(String),
    #[error("consensus core failed: {0}")]
    Core(String),
    #[error("snapshot install failed: {0}")]
    Snapshot(String),
}

pub(crate) struct Driver {
    cfg: DriverConfig,
    node: RaftNode<LogStore>,
    kv: KvStore,
    transport: Box<dyn Outbox>,
    metrics: Arc<Metrics>,
    requests: mpsc::Receiver<Request>,
    inbound: mpsc::Receiver<Inbound>,
    health: watch::Sender<Health>,
    pending: Pending,
    next_read_ctx: u64,
    /// Snapshot images received and staged, by the index they cover.
    staged_snapshots: BTreeMap<LogIndex, PathBuf>,
    /// Heartbeats sent and not yet answered, for the RTT histogram.
    heartbeat_sent: HashMap<NodeId, Instant>,
    last_leader: Option<NodeId>,
    peers_of: Option<Vec<(NodeId, String)>>,
    shutdown: Option<oneshot::Sender<DriverReply<()>>>,
    loops: u64,
    /// Peers a message to which was dropped during the current Ready.
    unreachable: Vec<NodeId>,
    /// Where peers that are not (yet) in our configuration said they are:
    /// a joining node answers the leader before it knows the configuration.
    peer_hints: HashMap<NodeId, String>,
    /// Client URLs members told us (the configuration may lack them).
    client_urls: HashMap<NodeId, String>,
    /// The state machine's file size when last looked at (for the quota).
    kv_file_bytes: u64,
    /// Lease deadlines, kept while leading.
    lessor: lessor::Lessor,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("id", &self.cfg.id)
            .field("pending", &self.pending)
            .finish()
    }
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: DriverConfig,
        node: RaftNode<LogStore>,
        kv: KvStore,
        transport: Box<dyn Outbox>,
        metrics: Arc<Metrics>,
        requests: mpsc::Receiver<Request>,
        inbound: mpsc::Receiver<Inbound>,
        health: watch::Sender<Health>,
    ) -> Self {
        Driver {
            cfg,
            node,
            kv,
            transport,
            metrics,
            requests,
            inbound,
            health,
            pending: Pending::default(),
            next_read_ctx: 1,
            staged_snapshots: BTreeMap::new(),
            heartbeat_sent: HashMap::new(),
            last_leader: None,
            peers_of: None,
            shutdown: None,
            loops: 0,
            unreachable: Vec::new(),
            peer_hints: HashMap::new(),
            client_urls: HashMap::new(),
            kv_file_bytes: 0,
            lessor: lessor::Lessor::default(),
        }
    }

    /// Runs until shutdown is requested (and done) or storage fails.
    pub(crate) async fn run(mut self) -> Result<(), DriverError> {
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.begin();
        loop {
            let event = tokio::select! {
                _ = tick.tick() => Event::Tick,
                Some(m) = self.inbound.recv() => Event::Inbound(m),
                Some(r) = self.requests.recv() => Event::Request(r),
                else => break,
            };
            if self.turn(event)? == Flow::Stop {
                break;
            }
        }
        info!(id = %self.cfg.id, "driver stopped");
        Ok(())
    }

    /// The state machine (for the whole-node simulation's checks).
    pub(crate) fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// The consensus core (likewise).
    pub(crate) fn core(&self) -> &RaftNode<LogStore> {
        &self.node
    }

    /// What the driver does once before its first turn.
    pub(crate) fn begin(&mut self) {
        self.update_peers();
        self.publish_sizes();
    }

    /// One go round the loop, started by `first`: take whatever else is
    /// already waiting, step it all, carry out one Ready. Synchronous, so
    /// that the whole-node simulation runs the very same loop body.
    pub(crate) fn turn(&mut self, first: Event) -> Result<Flow, DriverError> {
        let mut batch = Batch::default();
        match first {
            Event::Tick => self.on_tick(),
            Event::Inbound(m) => self.on_inbound(m)?,
            Event::Request(r) => self.on_request(r, &mut batch),
        }
        // Take whatever else is already waiting on either side, so that
        // one Ready (one fsync, one apply transaction) covers it all:
        // the slower the disk, the larger the batch.
        for _ in 0..MAX_BATCH {
            match self.inbound.try_recv() {
                Ok(m) => self.on_inbound(m)?,
                Err(_) => break,
            }
        }
        for _ in 0..MAX_BATCH {
            match self.requests.try_recv() {
                Ok(r) => self.on_request(r, &mut batch),
                Err(_) => break,
            }
        }
        self.flush_batch(batch);
        self.handle_ready()?;
        self.after_loop();
        Ok(if self.shutdown_done() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    fn on_tick(&mut self) {
        self.node.tick();
        self.loops += 1;
        if self.loops % 100 == 0 {
            let dropped = self.pending.prune_abandoned();
            if dropped > 0 {
                self.metrics
                    .raft_proposals_failed_total
                    .inc_by(dropped as u64);
            }
            self.publish_sizes();
        }
    }

    // ------------------------------------------------------------ inbound

    fn on_inbound(&mut self, inbound: Inbound) -> Result<(), DriverError> {
        match inbound {
            Inbound::Message(m) => {
                if let MessageBody::HeartbeatResponse(_) = m.body {
                    if let Some(sent) = self.heartbeat_sent.remove(&m.from) {
                        self.metrics
                            .network_peer_rtt_seconds
                            .with_label_values(&[&m.from.to_string()])
                            .observe(sent.elapsed().as_secs_f64());
                    }
                }
                self.step(m)?;
            }
            Inbound::SnapshotReceived { message, staged } => {
                if let MessageBody::InstallSnapshot(s) = &message.body {
                    // Keep only the newest staged image per index (the
                    // same image may arrive again, and be staged again
                    // under the same name: that one must stay).
                    if let Some(old) = self.staged_snapshots.insert(s.meta.index, staged.clone())
                        && old != staged
                    {
                        let _ = std::fs::remove_file(old);
                    }
                }
                self.step(message)?;
            }
            Inbound::SnapshotSent { to, ok } => self.node.report_snapshot(to, ok),
            Inbound::Unreachable(to) => self.node.report_unreachable(to),
            Inbound::PeerUrl {
                id,
                url,
                client_url,
            } => {
                self.peer_hints.insert(id, url);
                if let Some(c) = client_url {
                    self.client_urls.insert(id, c);
                }
            }
        }
        Ok(())
    }

    /// Steps a peer's message. One the core refuses is counted and
    /// dropped: input from the network never stops the node.
    fn step(&mut self, m: Message) -> Result<(), DriverError> {
        match self.node.step(m) {
            Ok(()) => Ok(()),
            Err(RaftError::Refused { from, reason }) => {
                self.metrics
                    .peer_messages_refused_total
                    .with_label_values(&[reason.label()])
                    .inc();
                debug!(from = %from, reason = %reason, "refused a peer message");
                Ok(())
            }
            Err(e) => Err(DriverError::Core(e.to_string())),
        }
    }

    // ----------------------------------------------------------- requests

    fn on_request(&mut self, req: Request, batch: &mut Batch) {
        match req {
            Request::Write { mut cmd, reply } => {
                if let Err(e) = self
                    .prepare_grant(&mut cmd)
                    .and_then(|()| self.check_command(&cmd))
                    .and_then(|()| self.check_quota(&cmd, batch))
                {
                    let _ = reply.send(Err(e.into()));
                    return;
                }
                batch.writes.push((cmd.encode(), reply));
            }
            Request::Read {
                req,
                consistency: Consistency::Serializable,
                reply,
            } => {
                let result = self.read_local(&req);
                let _ = reply.send(result.map_err(Rejection::Failed));
            }
            Request::Read {
                req,
                consistency: Consistency::Linearizable,
                reply,
            } => match self.kv.limits().check_range(&req) {
                Ok(()) => batch.reads.push(PendingRead { req, reply }),
                Err(e) => {
                    let _ = reply.send(Err(kv_error(e).into()));
                }
            },
            Request::Status { reply } => {
                let _ = reply.send(Ok(self.status()));
            }
            Request::ChangeMembership { change, reply } => self.change_membership(change, reply),
            Request::TransferLeader { to, reply } => self.transfer_leader(to, reply),
            Request::HashKv { revision, reply } => self.hash_kv(revision, reply),
            Request::Snapshot { reply } => self.backup_image(reply),
            Request::Lease { query, reply } => self.answer_lease(query, reply),
            Request::Shutdown { reply } => self.start_shutdown(reply),
        }
    }

    fn check_command(&self, cmd: &Command) -> Result<(), ClientError> {
        self.kv.limits().check_op(&cmd.op).map_err(kv_error)
    }

    /// Proposes every write of the batch in one append, and starts one
    /// ReadIndex round for every linearizable read of the batch.
    fn flush_batch(&mut self, batch: Batch) {
        if !batch.writes.is_empty() {
            let (data, replies): (Vec<Bytes>, Vec<_>) = batch.writes.into_iter().unzip();
            match self.node.propose_batch(data) {
                Ok(proposals) => {
                    for (p, reply) in proposals.into_iter().zip(replies) {
                        self.pending.writes.insert(
                            p.index,
                            PendingWrite {
                                term: p.term,
                                reply,
                            },
                        );
                    }
                }
                Err(e) => {
                    // A follower's NotLeader is a redirect (the request is
                    // forwarded to the leader), not a failed proposal.
                    if !matches!(e, ProposeError::NotLeader { .. }) {
                        self.metrics
                            .raft_proposals_failed_total
                            .inc_by(replies.len() as u64);
                    }
                    let rejection = self.rejection(e);
                    for reply in replies {
                        let _ = reply.send(Err(rejection.clone()));
                    }
                }
            }
        }
        if !batch.reads.is_empty() {
            let ctx = self.next_read_ctx;
            self.next_read_ctx += 1;
            match self.node.read_index(ctx) {
                Ok(()) => {
                    self.pending.reads_awaiting_index.insert(ctx, batch.reads);
                }
                Err(e) => {
                    let rejection = self.rejection(e);
                    for r in batch.reads {
                        let _ = r.reply.send(Err(rejection.clone()));
                    }
                }
            }
        }
    }

    /// Hashes the local history off the loop (it reads every version).
    fn hash_kv(&self, revision: i64, reply: oneshot::Sender<DriverReply<HashKvResult>>) {
        let kv = self.kv.clone();
        let raft_term = self.node.status().term;
        tokio::task::spawn_blocking(move || {
            let result = kv
                .hash_at(revision)
                .map(|hash| HashKvResult { hash, raft_term })
                .map_err(|e| match e {
                    StoreError::InvalidRequest(e) => kv_error(e),
                    e => ClientError::Internal(e.to_string()),
                });
            let _ = reply.send(result.map_err(Rejection::Failed));
        });
    }

    /// Opens an image for a backup off the loop (it makes the state
    /// machine durable first, an fsync).
    fn backup_image(&self, reply: oneshot::Sender<DriverReply<crate::storage::SnapshotReader>>) {
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || {
            let result = kv
                .snapshot()
                .map_err(|e| Rejection::Failed(ClientError::Internal(e.to_string())));
            let _ = reply.send(result);
        });
    }

    fn read_local(&self, req: &RangeRequest) -> Result<ReadResult, ClientError> {
        self.kv.limits().check_range(req).map_err(kv_error)?;
        let range = self.kv.range(req).map_err(|e| match e {
            StoreError::InvalidRequest(e) => kv_error(e),
            e => ClientError::Internal(e.to_string()),
        })?;
        Ok(ReadResult {
            range,
            raft_term: self.node.status().term,
        })
    }

    fn change_membership(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<DriverReply<MemberStatus>>,
    ) {
        if self.pending.change.is_some() {
            let _ = reply.send(Err(ClientError::MembershipChangeInProgress.into()));
            return;
        }
        let membership = self.node.membership().clone();
        let (conf, member) = match change {
            MemberChange::AddLearner(m) => {
                if m.peer_url.is_empty() {
                    let _ = reply.send(Err(ClientError::InvalidArgument(
                        "a new member needs a peer_url".into(),
                    )
                    .into()));
                    return;
                }
                if let Some((other, _)) = membership.members().find(|(_, existing)| {
                    MemberInfo::from_context(&existing.context).peer_url == m.peer_url
                }) {
                    let _ = reply.send(Err(ClientError::InvalidArgument(format!(
                        "peer URL {} is already member {other}'s",
                        m.peer_url
                    ))
                    .into()));
                    return;
                }
                let id = m.id.unwrap_or_else(|| {
                    NodeId(membership.ids().map(|i| i.get()).max().unwrap_or(0) + 1)
                });
                let info = MemberInfo {
                    name: if m.name.is_empty() {
                        format!("node-{id}")
                    } else {
                        m.name
                    },
                    peer_url: m.peer_url,
                    client_url: m.client_url,
                };
                let member = member_status(id, &info, "learner", None);
                (
                    ConfChange::AddLearner {
                        id,
                        context: info.to_context(),
                    },
                    member,
                )
            }
            MemberChange::Promote(id) | MemberChange::Remove(id) => {
                let Some(m) = membership.get(id) else {
                    let _ = reply.send(Err(ClientError::NotFound(format!(
                        "member {id} does not exist"
                    ))
                    .into()));
                    return;
                };
                let info = MemberInfo::from_context(&m.context);
                if matches!(change, MemberChange::Promote(_)) {
                    (
                        ConfChange::Promote { id },
                        member_status(id, &info, "voter", None),
                    )
                } else {
                    let role = if membership.is_learner(id) {
                        "learner"
                    } else {
                        "voter"
                    };
                    (
                        ConfChange::Remove { id },
                        member_status(id, &info, role, None),
                    )
                }
            }
        };
        match self.node.change_membership(conf) {
            Ok(p) => {
                self.pending.change = Some(PendingChange {
                    index: p.index,
                    term: p.term,
                    member,
                    reply,
                })
            }
            Err(e) => {
                let _ = reply.send(Err(self.rejection(e)));
            }
        }
    }

    fn transfer_leader(&mut self, to: NodeId, reply: oneshot::Sender<DriverReply<()>>) {
        if !self.node.membership().contains(to) {
            let _ = reply.send(Err(ClientError::NotFound(format!(
                "member {to} does not exist"
            ))
            .into()));
            return;
        }
        match self.node.transfer_leader(to) {
            Ok(()) if to == self.cfg.id => {
                let _ = reply.send(Ok(()));
            }
            Ok(()) => self.pending.transfers.push(PendingTransfer { to, reply }),
            Err(e) => {
                let _ = reply.send(Err(self.rejection(e)));
            }
        }
    }

    /// Graceful shutdown: if leader, hand leadership to the most up-to-date
    /// voter first, so the cluster does not wait an election timeout.
    fn start_shutdown(&mut self, reply: oneshot::Sender<DriverReply<()>>) {
        let status = self.node.status();
        if status.role == RoleState::Leader {
            let membership = self.node.membership().clone();
            let target = self
                .node
                .progress()
                .into_iter()
                .filter(|(id, _)| *id != self.cfg.id && membership.is_voter(*id))
                .max_by_key(|(_, p)| p.match_index)
                .map(|(id, _)| id);
            if let Some(to) = target {
                info!(to = %to, "shutting down: transferring leadership");
                if self.node.transfer_leader(to).is_ok() {
                    self.shutdown = Some(reply);
                    return;
                }
            }
        }
        self.shutdown = Some(reply);
    }

    fn shutdown_done(&mut self) -> bool {
        if self.shutdown.is_none() {
            return false;
        }
        let status = self.node.status();
        // Done once we no longer lead (the transfer happened), or at once
        // if there was no one to hand over to. The caller bounds the wait.
        let single = self.node.membership().voter_count() <= 1;
        if status.role != RoleState::Leader || single {
            if let Some(reply) = self.shutdown.take() {
                let _ = reply.send(Ok(()));
            }
            return true;
        }
        false
    }

    /// Maps a refusal of the core to what the client sees.
    fn rejection(&self, e: ProposeError) -> Rejection {
        match e {
            ProposeError::NotLeader { leader } => Rejection::NotLeader(leader.and_then(|id| {
                let m = self.node.membership().get(id)?;
                let info = MemberInfo::from_context(&m.context);
                (!info.peer_url.is_empty()).then_some(LeaderHint {
                    id,
                    peer_url: info.peer_url,
                })
            })),
            ProposeError::TransferInProgress => Rejection::Failed(ClientError::Unavailable(
                "a leadership transfer is in progress; retry".into(),
            )),
            ProposeError::MembershipChangePending => {
                Rejection::Failed(ClientError::MembershipChangeInProgress)
            }
            ProposeError::ConfChange(ConfChangeError::NotMember(id)) => {
                Rejection::Failed(ClientError::NotFound(format!("member {id} does not exist")))
            }
            ProposeError::ConfChange(e) => {
                Rejection::Failed(ClientError::FailedPrecondition(e.to_string()))
            }
            ProposeError::NotVoter(id) => Rejection::Failed(ClientError::FailedPrecondition(
                format!("member {id} is not a voter"),
            )),
            e @ ProposeError::LearnerNotCaughtUp { .. } => {
                Rejection::Failed(ClientError::FailedPrecondition(e.to_string()))
            }
            ProposeError::Storage(e) => Rejection::Failed(ClientError::Internal(e.to_string())),
        }
    }

    // -------------------------------------------------------------- ready

    fn handle_ready(&mut self) -> Result<(), DriverError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd: Ready = self.node.ready();

        // 0. A leader's appends go out before its own write: followers then
        //    write in parallel with us, and a round costs one fsync, not two.
        //    (The core counts the leader toward commit only for what it has
        //    persisted, so this cannot commit anything early.)
        let (early, later): (Vec<Message>, Vec<Message>) = std::mem::take(&mut rd.messages)
            .into_iter()
            .partition(Message::can_send_before_persist);
        for m in early {
            self.send(m);
        }

        // 1. Persist: the snapshot image first (the state machine must never
        //    be behind a compacted log), then log + hard state in one write.
        if let Some(snapshot) = &rd.snapshot {
            self.install_snapshot(&snapshot.meta)?;
        }
        if rd.snapshot.is_some() || !rd.entries.is_empty() || rd.hard_state.is_some() {
            let started = Instant::now();
            let store = self.node.storage_mut();
            tokio::task::block_in_place(|| {
                store.persist(
                    rd.snapshot.as_ref().map(|s| &s.meta),
                    &rd.entries,
                    rd.hard_state.as_ref(),
                )
            })
            .map_err(|e| DriverError::Log(e.to_string()))?;
            self.metrics
                .disk_log_fsync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if let Some(snapshot) = &rd.snapshot {
            let failed = self.pending.fail_writes_through(snapshot.meta.index);
            self.metrics
                .raft_proposals_failed_total
                .inc_by(failed as u64);
        }

        // 2. Send the rest, now that everything they promise is durable.
        for m in later {
            self.send(m);
        }

        // 3. Apply.
        self.apply(&rd.committed_entries)?;

        // 4. Reads whose index is known, then any that are now applied.
        for rs in rd.read_states {
            if let Some(reads) = self.pending.reads_awaiting_index.remove(&rs.ctx) {
                for r in reads {
                    self.pending.reads_awaiting_apply.push((rs.index, r));
                }
            }
        }
        self.serve_applied_reads();

        // 5. Done. Only now may the core hear about dropped messages.
        self.node.advance();
        for to in std::mem::take(&mut self.unreachable) {
            self.node.report_unreachable(to);
        }
        self.maybe_compact()?;
        Ok(())
    }

    fn send(&mut self, m: Message) {
        let to = m.to;
        let queued = match &m.body {
            MessageBody::InstallSnapshot(_) => {
                self.send_snapshot(m);
                true
            }
            MessageBody::Heartbeat(_) => {
                self.heartbeat_sent.entry(to).or_insert_with(Instant::now);
                self.transport.send(m)
            }
            _ => self.transport.send(m),
        };
        if !queued && !self.unreachable.contains(&to) {
            self.unreachable.push(to);
        }
    }

    /// Streams a consistent image of the state machine to a follower. The
    /// core asked for "a snapshot"; we send the image we actually have, with
    /// its own meta.
    fn send_snapshot(&mut self, m: Message) {
        let reader = match tokio::task::block_in_place(|| self.kv.snapshot()) {
            Ok(r) => r,
            Err(e) => {
                warn!(to = %m.to, error = %e, "cannot open a snapshot to send");
                self.node.report_snapshot(m.to, false);
                return;
            }
        };
        let meta = reader.meta();
        let message = Message {
            body: MessageBody::InstallSnapshot(crate::raft::Snapshot {
                meta,
                data: Bytes::new(),
            }),
            ..m
        };
        self.transport.send_snapshot(message, reader);
    }

    /// Installs the staged image the core has accepted: fed chunk by chunk
    /// into the state machine's installer, which swaps it in only once the
    /// whole image verified.
    fn install_snapshot(&mut self, meta: &crate::raft::SnapshotMeta) -> Result<(), DriverError> {
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

    fn apply(&mut self, entries: &[Entry]) -> Result<(), DriverError> {
        if entries.is_empty() {
            return Ok(());
        }
        let kv = &self.kv;
        let outcomes: HashMap<LogIndex, ApplyOutcome> =
            tokio::task::block_in_place(|| kv.apply(entries))
                .map_err(|e| DriverError::StateMachine(e.to_string()))?
                .into_iter()
                .collect();
        let mut outcomes = outcomes;
        for outcome in outcomes.values() {
            self.lessor_applied(outcome);
        }
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
        Ok(())
    }

    fn serve_applied_reads(&mut self) {
        if self.pending.reads_awaiting_apply.is_empty() {
            return;
        }
        let applied = self.kv.applied_index();
        let waiting = std::mem::take(&mut self.pending.reads_awaiting_apply);
        for (index, r) in waiting {
            if index <= applied {
                let result = self.read_local(&r.req);
                let _ = r.reply.send(result.map_err(Rejection::Failed));
            } else {
                self.pending.reads_awaiting_apply.push((index, r));
            }
        }
    }

    /// Compacts the log behind the state machine when the policy says so.
    /// The state machine is made durable first: the log must never be
    /// compacted past what a restart can recover without it.
    fn maybe_compact(&mut self) -> Result<(), DriverError> {
        // A crash between installing a snapshot into the state machine and
        // recording it in the log leaves the state machine ahead of the
        // log: only what the log holds and knows committed can go.
        let applied = self
            .kv
            .applied_index()
            .min(self.node.storage().stored_commit());
        let log_snapshot = self.node.storage().snapshot_meta().index;
        let Some(to) = self.cfg.snapshot_policy.compact_to(applied, log_snapshot) else {
            return Ok(());
        };
        let kv = &self.kv;
        let log = self.node.storage();
        tokio::task::block_in_place(|| {
            kv.sync()
                .map_err(|e| DriverError::StateMachine(e.to_string()))?;
            log.compact_to(to)
                .map_err(|e| DriverError::Log(e.to_string()))
        })?;
        debug!(index = %to, "compacted the log");
        Ok(())
    }

    // --------------------------------------------------------- after loop

    fn after_loop(&mut self) {
        let status = self.node.status();
        if status.leader != self.last_leader {
            if status.leader.is_some() {
                self.metrics.raft_leader_changes_total.inc();
            }
            info!(leader = ?status.leader, term = %status.term, "leader changed");
            self.last_leader = status.leader;
        }
        if status.role != RoleState::Leader {
            self.pending.fail_reads_awaiting_index();
            self.heartbeat_sent.clear();
        }
        // Transfers finish when the target leads.
        if !self.pending.transfers.is_empty() {
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending.transfers)
                .into_iter()
                .partition(|t| status.leader == Some(t.to));
            for t in done {
                let _ = t.reply.send(Ok(()));
            }
            self.pending.transfers = waiting;
        }
        self.lessor_turn();
        self.update_peers();
        self.persist_vote_withholding();
        self.publish_status(&status);
    }

    /// "Ask the leader instead", with where the leader is, if known.
    fn not_leader(&self) -> Rejection {
        self.rejection(ProposeError::NotLeader {
            leader: self.node.status().leader,
        })
    }

    /// Keeps one outbound stream per member (other than us) of the
    /// configuration in force.
    fn update_peers(&mut self) {
        let membership = self.node.membership();
        let members: Vec<(NodeId, String)> = membership
            .members()
            .map(|(id, m)| (id, MemberInfo::from_context(&m.context).peer_url))
            .collect();
        // Published whole (us included) so that an empty directory means
        // "no configuration yet", not "a cluster of one".
        if !self.cfg.members.holds(&members) {
            self.cfg.members.set(members.iter().cloned());
        }
        let mut peers: Vec<(NodeId, String)> = members
            .into_iter()
            .filter(|(id, _)| *id != self.cfg.id)
            .collect();
        for (id, url) in &self.peer_hints {
            if *id != self.cfg.id && !membership.contains(*id) {
                peers.push((*id, url.clone()));
            }
        }
        peers.sort();
        if self.peers_of.as_ref() != Some(&peers) {
            self.transport.set_peers(&peers);
            self.peers_of = Some(peers);
        }
    }
}

/// What starts a turn of the loop.
#[derive(Debug)]
pub(crate) enum Event {
    Tick,
    Inbound(Inbound),
    Request(Request),
}

/// Whether the loop goes on after a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

#[derive(Default)]
struct Batch {
    writes: Vec<(Bytes, oneshot::Sender<DriverReply<WriteResult>>)>,
    reads: Vec<PendingRead>,
}

/// What a client sees when the state machine refuses a command or read.
pub(crate) fn kv_error(e: KvError) -> ClientError {
    match e {
        KvError::KeyTooLarge { .. } | KvError::ValueTooLarge { .. } => {
            ClientError::TooLarge(e.to_string())
        }
        // etcd: InvalidArgument with its own message, not "too large".
        KvError::TooManyTxnOps { .. }
        | KvError::EmptyKey
        | KvError::Undecodable(_)
        | KvError::StaleRequest { .. }
        | KvError::DuplicateKey
        | KvError::KeyNotFound
        | KvError::ValueProvided => ClientError::InvalidArgument(e.to_string()),
        KvError::Compacted | KvError::FutureRevision => ClientError::OutOfRange(e.to_string()),
        KvError::NoSpace => ClientError::NoSpace,
        KvError::LeaseNotFound => ClientError::NotFound(e.to_string()),
        KvError::LeaseExists => ClientError::FailedPrecondition(e.to_string()),
        KvError::LeaseTtlTooLarge => ClientError::OutOfRange(e.to_string()),
        KvError::LeaseProvided => ClientError::InvalidArgument(e.to_string()),
        KvError::IdempotencyConflict { .. } => ClientError::FailedPrecondition(e.to_string()),
    }
}
