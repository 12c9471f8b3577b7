//! The driver: the one task that owns the consensus core and the state
//! machine, and runs the loop
//!
//! receive (ticks, peer messages, client requests, stage reports) → step →
//! `ready()` → hand the write to the log writer and the committed entries
//! to the applier → `advance_handed()`; later, "persisted" → send what
//! waited for it → `on_persisted()`.
//!
//! Nothing else touches the core; other tasks talk to the driver over
//! bounded channels, so a flood of requests slows clients down instead of
//! growing memory. The loop itself never waits for a disk: the log writer
//! and the applier run on threads of their own (inline in the whole-node
//! simulation, which keeps it deterministic), fed in order over channels
//! and reporting back "persisted up to (index, term)" and what applied.
//!
//! One file per stage of that loop:
//! - `step.rs`: the step loop — inbound messages, client requests, carrying
//!   out a `Ready`, sending;
//! - `log_writer.rs`: making the log durable, and compacting it;
//! - `applier.rs`: applying committed entries to the state machine;
//! - `answer.rs`: answering clients (reads once applied, refusals);
//!   `pending.rs` holds the requests that wait for an answer;
//! - `admin.rs`: membership changes, leadership transfer, shutdown;
//! - `stage.rs`: running a stage on a thread of its own.
//!
//! `status.rs` holds what the driver publishes about itself: metrics, the
//! health view and `/v1/status`; `lessor.rs` the leader's lease deadlines
//! and expiry; `quota.rs` the backend quota.

mod admin;
mod answer;
mod applier;
mod lessor;
mod log_writer;
pub(crate) mod pending;
mod quota;
mod stage;
mod status;
mod step;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::metrics::Metrics;
use crate::raft::{LogIndex, NodeId, RaftNode, RoleState, Term};
use crate::server::ClientError;
use crate::server::handle::{DriverReply, Request, WriteResult};
use crate::server::inbound::Inbound;
use crate::server::outbox::Outbox;
use crate::storage::auth::AuthError;
use crate::storage::{KvError, KvStore, LogStore, SnapshotPolicy};
use applier::{Applied, Applier, ApplierStage};
use log_writer::{HeldCommit, LogWriter, LogWriterStage, Persisted};
use pending::{Pending, PendingRead};

/// How many requests or messages the driver takes per wake-up before it
/// runs a Ready: large enough to batch, small enough to keep latency low.
const MAX_BATCH: usize = 512;

/// How many `Ready`s one turn carries out at most (with inline stages, each
/// acknowledgement readies the next step: commit, then apply).
const MAX_READY_ROUNDS: usize = 8;

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
    /// Where the log is made durable (a thread of its own once running).
    log_writer: LogWriterStage,
    /// Writes handed to the log writer and not yet reported durable.
    writes_in_flight: usize,
    /// A commit index not yet handed to the log writer.
    held_commit: HeldCommit,
    /// Where committed entries are applied and clients answered.
    applier: ApplierStage,
    /// The index of the last membership change proposed here: another
    /// waits until it applied.
    change_index: Option<LogIndex>,
    /// Whether the log store still records that this node withholds its
    /// votes: until it no longer does, each loop checks whether the core
    /// lifted it (see `persist_vote_withholding`).
    withholding_recorded: bool,
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
        let log_writer =
            LogWriterStage::Inline(LogWriter::new(node.storage().clone(), metrics.clone()));
        let applier = ApplierStage::Inline(Box::new(Applier::new(
            kv.clone(),
            node.storage().clone(),
            cfg.snapshot_policy,
            metrics.clone(),
        )));
        let withholding_recorded = node.storage().withholds_votes();
        let held_commit = HeldCommit::new(node.storage().hard_state());
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
            log_writer,
            writes_in_flight: 0,
            held_commit,
            applier,
            change_index: None,
            withholding_recorded,
        }
    }

    /// Runs until shutdown is requested (and done) or storage fails.
    pub(crate) async fn run(mut self) -> Result<(), DriverError> {
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The log writer and the applier leave the loop for threads of
        // their own; their reports come back on these.
        let (persisted_tx, mut persisted) = mpsc::unbounded_channel();
        let (applied_tx, mut applied) = mpsc::unbounded_channel();
        let spawn_failed =
            |e: std::io::Error| DriverError::Core(format!("cannot start a thread: {e}"));
        let log_writer = std::mem::replace(&mut self.log_writer, LogWriterStage::Stopped);
        self.log_writer = log_writer.spawn(persisted_tx).map_err(spawn_failed)?;
        let applier = std::mem::replace(&mut self.applier, ApplierStage::Stopped);
        self.applier = applier.spawn(applied_tx).map_err(spawn_failed)?;
        self.begin();
        loop {
            let event = tokio::select! {
                Some(p) = persisted.recv() => Event::Persisted(p),
                Some(a) = applied.recv() => Event::Applied(a),
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
            Event::Tick => self.on_tick()?,
            Event::Inbound(m) => self.on_inbound(m)?,
            Event::Request(r) => self.on_request(r, &mut batch)?,
            Event::Persisted(p) => self.on_persisted(p?),
            Event::Applied(a) => self.on_applied(a?),
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
                Ok(r) => self.on_request(r, &mut batch)?,
                Err(_) => break,
            }
        }
        self.flush_batch(batch)?;
        // Inline stages acknowledge at once, which readies more (the
        // entries just made durable commit and apply); threads report
        // later, and the loop comes round again then.
        for _ in 0..MAX_READY_ROUNDS {
            if !self.handle_ready()? {
                break;
            }
        }
        self.report_unreachable();
        self.after_loop();
        Ok(if self.shutdown_done() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

/// What starts a turn of the loop.
#[derive(Debug)]
pub(crate) enum Event {
    Tick,
    Inbound(Inbound),
    Request(Request),
    /// The log writer made writes durable (or failed).
    Persisted(Result<Persisted, DriverError>),
    /// The applier has something for the lessor (or failed).
    Applied(Result<Applied, DriverError>),
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
        // etcd's code for each: the message is what clients match on.
        KvError::Auth(a @ AuthError::PermissionDenied) => {
            ClientError::PermissionDenied(a.to_string())
        }
        KvError::Auth(a) if a.is_invalid_argument() => ClientError::InvalidArgument(a.to_string()),
        KvError::Auth(a) => ClientError::FailedPrecondition(a.to_string()),
    }
}
