//! [`NodeHandle`]: the one way the client APIs (HTTP, gRPC) talk to a node.
//!
//! A handle is a cheap clone of the sending ends of the driver's bounded
//! request channel. Each call sends one request and waits for its answer with
//! the request timeout, so a call never hangs: with no leader or no quorum it
//! fails with [`ClientError::Timeout`] or [`ClientError::NoLeader`] (both 503).
//! When the local node is not the leader, writes, linearizable reads and
//! membership changes are forwarded to the leader over the peer transport.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};

use crate::raft::{LogIndex, NodeId, Term};
use crate::server::put_path;
use crate::storage::{
    ApplyOutcome, Command, HistoryHash, KvStore, RangeRequest, RangeResult, SnapshotReader,
};

/// How often a watch that asked for progress notifications gets one while
/// nothing happens, unless configured otherwise: etcd's default.
pub const DEFAULT_WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// What a client may see go wrong. Each variant maps to one HTTP status and
/// one gRPC code (see [`ClientError::http_status`] and the gRPC layer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No leader is known, or the leader cannot be reached (503).
    #[error("no leader: the cluster has no leader or no quorum right now")]
    NoLeader,
    /// The request did not complete within the request timeout (503).
    #[error("request timed out")]
    Timeout,
    /// The request is malformed (400).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A key, value or request exceeds a configured limit (413).
    #[error("too large: {0}")]
    TooLarge(String),
    /// The answer is larger than the peer protocol can carry back from the
    /// leader; narrow the request (a limit, a smaller range) (413).
    #[error("response too large: {0}")]
    ResponseTooLarge(String),
    /// The named key or member does not exist (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// Another membership change is still being committed (409).
    #[error("another membership change is in progress")]
    MembershipChangeInProgress,
    /// The request conflicts with the cluster's state, e.g. removing the last
    /// voter or promoting a voter (409).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A read or compaction at a revision that is compacted or not reached
    /// yet (etcd's OutOfRange; 400).
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The node is shutting down or overloaded (503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A write while the NOSPACE alarm is raised: the backend quota was
    /// exceeded; free space (delete, compact, defragment) and disarm (507).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The caller lacks a permission the request needs; raised when a
    /// write applies after the auth store changed under it (403). The
    /// message is etcd's, which clients match on.
    #[error("{0}")]
    PermissionDenied(String),
    /// A bug or a storage failure (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// The HTTP status code for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ClientError::InvalidArgument(_) | ClientError::OutOfRange(_) => 400,
            ClientError::PermissionDenied(_) => 403,
            ClientError::NotFound(_) => 404,
            ClientError::MembershipChangeInProgress | ClientError::FailedPrecondition(_) => 409,
            ClientError::TooLarge(_) | ClientError::ResponseTooLarge(_) => 413,
            ClientError::NoLeader | ClientError::Timeout | ClientError::Unavailable(_) => 503,
            ClientError::Internal(_) => 500,
            ClientError::NoSpace => 507,
        }
    }

    /// The message a variant carries (etcd's own, for errors that came
    /// from the state machine), without the prefix `Display` adds: what a
    /// forwarded error must carry so that the variant is rebuilt as it was.
    pub fn detail(&self) -> String {
        match self {
            ClientError::InvalidArgument(m)
            | ClientError::TooLarge(m)
            | ClientError::ResponseTooLarge(m)
            | ClientError::NotFound(m)
            | ClientError::FailedPrecondition(m)
            | ClientError::OutOfRange(m)
            | ClientError::Unavailable(m)
            | ClientError::PermissionDenied(m)
            | ClientError::Internal(m) => m.clone(),
            other => other.to_string(),
        }
    }

    /// A short, stable machine-readable code, used in JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::NoLeader => "no_leader",
            ClientError::Timeout => "timeout",
            ClientError::InvalidArgument(_) => "invalid_argument",
            ClientError::OutOfRange(_) => "out_of_range",
            ClientError::TooLarge(_) => "too_large",
            ClientError::ResponseTooLarge(_) => "response_too_large",
            ClientError::NotFound(_) => "not_found",
            ClientError::MembershipChangeInProgress => "membership_change_in_progress",
            ClientError::FailedPrecondition(_) => "failed_precondition",
            ClientError::Unavailable(_) => "unavailable",
            ClientError::PermissionDenied(_) => "permission_denied",
            ClientError::Internal(_) => "internal",
            ClientError::NoSpace => "no_space",
        }
    }
}

/// The result of a committed and applied write. `outcome` is never
/// `ApplyOutcome::Rejected`: a rejected command is answered as an error
/// (`InvalidArgument` or `TooLarge`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult {
    pub outcome: ApplyOutcome,
    /// The leader's term when the write committed.
    pub raft_term: Term,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (ReadIndex).
    #[default]
    Linearizable,
    /// Served from the local state machine; may be stale.
    Serializable,
}

/// The result of a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    pub range: RangeResult,
    pub raft_term: Term,
}

/// A question about leases that only the leader can answer: it alone
/// keeps the leases' deadlines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseQuery {
    /// Refreshes lease `id` (its deadline becomes now + its TTL).
    KeepAlive(i64),
    /// How long lease `id` has left, and with `keys` the keys attached.
    TimeToLive { id: i64, keys: bool },
    /// Every lease's id.
    Leases,
}

/// The leader's answer to a [`LeaseQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// The granted TTL in seconds, 0 if the lease does not exist (or just
    /// expired), as etcd answers.
    KeepAlive {
        id: i64,
        ttl: i64,
    },
    /// `ttl`: the seconds left, -1 if the lease does not exist;
    /// `granted_ttl`: the TTL it was granted with.
    TimeToLive {
        id: i64,
        ttl: i64,
        granted_ttl: i64,
        keys: Vec<bytes::Bytes>,
    },
    Leases(Vec<i64>),
}

/// A [`LeaseAnswer`] with what response headers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseReply {
    pub answer: LeaseAnswer,
    /// The leader's store revision when it answered.
    pub revision: i64,
    pub raft_term: Term,
}

/// One member as the node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
    /// "voter" or "learner".
    pub role: String,
    /// How much of the log the leader knows this member holds; only known on
    /// the leader.
    pub match_index: Option<u64>,
}

/// A summary of one node, for `/v1/status`, metrics and `Maintenance.Status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub name: String,
    pub cluster_id: u64,
    /// "leader", "follower", "candidate", "pre-candidate" or "learner".
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub first_log_index: u64,
    /// The state machine's current revision.
    pub revision: u64,
    pub members: Vec<MemberStatus>,
    /// Bytes the Raft log's segment files take on disk.
    pub log_db_size_bytes: u64,
    /// Size in bytes of the key-value database.
    pub kv_db_size_bytes: u64,
    /// The raised alarms (replicated state), as etcd names them:
    /// `memberID:<id> alarm:NOSPACE`.
    #[serde(default)]
    pub alarms: Vec<String>,
    /// This data directory's incarnation, 16 hex digits: it changes only
    /// when the directory is created anew (see `StorageId`).
    #[serde(default)]
    pub storage_id: String,
    /// The node joined with a new data directory and has not been added as
    /// a learner yet: it neither votes nor campaigns (it may be a member
    /// whose data was lost).
    #[serde(default)]
    pub withholding_votes: bool,
    /// The backend quota (`--quota-backend-bytes`) the NOSPACE alarm
    /// guards.
    #[serde(default)]
    pub quota_backend_bytes: u64,
}

/// A member's checksum of its history (etcd's HashKV), with the term it
/// was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKvResult {
    pub hash: HistoryHash,
    pub raft_term: Term,
}

/// A member to add (always as a learner first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMember {
    /// `None`: the leader picks an unused id.
    pub id: Option<NodeId>,
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
}

/// A membership change, as a request to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    AddLearner(NewMember),
    Promote(NodeId),
    Remove(NodeId),
}

/// Where a request that the local node cannot serve should go instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaderHint {
    pub id: NodeId,
    pub peer_url: String,
}

/// What the driver answers: either a result, or "I am not the leader, ask
/// this one" (the handle then forwards, once).
pub(crate) type DriverReply<T> = Result<T, Rejection>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    NotLeader(Option<LeaderHint>),
    Failed(ClientError),
}

impl From<ClientError> for Rejection {
    fn from(e: ClientError) -> Self {
        Rejection::Failed(e)
    }
}

/// A request to the driver task, with the channel its answer goes back on.
#[derive(Debug)]
pub(crate) enum Request {
    Write {
        cmd: Command,
        reply: oneshot::Sender<DriverReply<WriteResult>>,
    },
    Read {
        req: RangeRequest,
        consistency: Consistency,
        reply: oneshot::Sender<DriverReply<ReadResult>>,
    },
    Status {
        reply: oneshot::Sender<DriverReply<NodeStatus>>,
    },
    ChangeMembership {
        change: MemberChange,
        reply: oneshot::Sender<DriverReply<MemberStatus>>,
    },
    TransferLeader {
        to: NodeId,
        reply: oneshot::Sender<DriverReply<()>>,
    },
    /// A lease question for the leader.
    Lease {
        query: LeaseQuery,
        reply: oneshot::Sender<DriverReply<LeaseReply>>,
    },
    /// A checksum of the local history up to `revision` (0: current).
    HashKv {
        revision: i64,
        reply: oneshot::Sender<DriverReply<HashKvResult>>,
    },
    /// A consistent image of the local state machine, for a backup.
    Snapshot {
        reply: oneshot::Sender<DriverReply<SnapshotReader>>,
    },
    /// Stop: hand over leadership if we lead, then end the driver loop.
    Shutdown {
        reply: oneshot::Sender<DriverReply<()>>,
    },
}

/// Sends requests that the local node cannot serve to the leader. The peer
/// transport implements it; `None` in tests that run a single node.
pub(crate) trait Forwarder: Send + Sync + std::fmt::Debug {
    fn forward(
        &self,
        leader: LeaderHint,
        request: Forwarded,
    ) -> futures::future::BoxFuture<'static, Result<ForwardedReply, ClientError>>;
}

/// A request forwarded to the leader.
#[derive(Clone, Debug)]
pub(crate) enum Forwarded {
    Write(Command),
    Read(RangeRequest),
    ChangeMembership(MemberChange),
    TransferLeader(NodeId),
    Lease(LeaseQuery),
}

/// The leader's answer to a [`Forwarded`] request.
#[derive(Clone, Debug)]
pub(crate) enum ForwardedReply {
    Write(WriteResult),
    Read(ReadResult),
    Member(MemberStatus),
    Lease(LeaseReply),
    Done,
}

/// A cloneable handle to a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    member_id: NodeId,
    cluster_id: u64,
    timeout: Duration,
    requests: mpsc::Sender<Request>,
    forwarder: Option<Arc<dyn Forwarder>>,
    /// Whether "no leader" is retried until the timeout (see `call`). Off
    /// when serving a forwarded request: the forwarding node retries.
    retry: bool,
    /// This node's state machine, which watches read (its change feed and
    /// history): every member serves watches from what it applied itself.
    store: Option<KvStore>,
    watch_progress_interval: Duration,
    /// How long the auth tokens this member issues stay valid.
    auth_token_ttl: Duration,
}

impl NodeHandle {
    pub(crate) fn new(
        member_id: NodeId,
        cluster_id: u64,
        timeout: Duration,
        requests: mpsc::Sender<Request>,
        forwarder: Option<Arc<dyn Forwarder>>,
    ) -> Self {
        NodeHandle {
            member_id,
            cluster_id,
            timeout,
            requests,
            forwarder,
            retry: true,
            store: None,
            watch_progress_interval: DEFAULT_WATCH_PROGRESS_INTERVAL,
            auth_token_ttl: crate::auth::token::DEFAULT_TTL,
        }
    }

    /// The handle with watches served from `store`, this node's state
    /// machine.
    pub(crate) fn with_store(self, store: KvStore) -> Self {
        NodeHandle {
            store: Some(store),
            ..self
        }
    }

    /// The handle with watches' progress notifications every `interval`.
    pub fn with_watch_progress_interval(self, interval: Duration) -> Self {
        NodeHandle {
            watch_progress_interval: interval,
            ..self
        }
    }

    /// The handle with auth tokens issued for `ttl` (`--auth-token-ttl`).
    pub fn with_auth_token_ttl(self, ttl: Duration) -> Self {
        NodeHandle {
            auth_token_ttl: ttl,
            ..self
        }
    }

    /// How long the auth tokens this member issues stay valid.
    pub fn auth_token_ttl(&self) -> Duration {
        self.auth_token_ttl
    }

    /// The state machine watches read, if this handle serves watches.
    pub fn store(&self) -> Option<&KvStore> {
        self.store.as_ref()
    }

    /// How often an idle watch that asked for it gets a progress
    /// notification.
    pub fn watch_progress_interval(&self) -> Duration {
        self.watch_progress_interval
    }

    /// This node's id.
    pub fn member_id(&self) -> NodeId {
        self.member_id
    }

    /// The cluster's id (the same on every member).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The request timeout every call is bounded by.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Commits a write through the leader and returns what applying it did.
    pub async fn write(&self, cmd: Command) -> Result<WriteResult, ClientError> {
        put_path::stage("write received", LogIndex::ZERO);
        let forward = Forwarded::Write(cmd.clone());
        let reply = self
            .call(
                |reply| Request::Write {
                    cmd: cmd.clone(),
                    reply,
                },
                Some(forward),
            )
            .await?;
        put_path::stage("write returned", LogIndex::ZERO);
        match reply {
            Answer::Local(r) => Ok(r),
            Answer::Forwarded(ForwardedReply::Write(r)) => Ok(r),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    /// Reads a key or a range.
    pub async fn range(
        &self,
        req: RangeRequest,
        consistency: Consistency,
    ) -> Result<ReadResult, ClientError> {
        let forward = Forwarded::Read(req.clone());
        let reply = self
            .call(
                |reply| Request::Read {
                    req: req.clone(),
                    consistency,
                    reply,
                },
                Some(forward),
            )
            .await?;
        match reply {
            Answer::Local(r) => Ok(r),
            Answer::Forwarded(ForwardedReply::Read(r)) => Ok(r),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    /// Asks the leader about leases (keep-alive, time to live, list); a
    /// follower forwards the question.
    pub async fn lease(&self, query: LeaseQuery) -> Result<LeaseReply, ClientError> {
        let reply = self
            .call(
                |reply| Request::Lease {
                    query: query.clone(),
                    reply,
                },
                Some(Forwarded::Lease(query.clone())),
            )
            .await?;
        match reply {
            Answer::Local(r) => Ok(r),
            Answer::Forwarded(ForwardedReply::Lease(r)) => Ok(r),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    /// This node's view of itself and the cluster (never forwarded).
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        let reply = self.call(|reply| Request::Status { reply }, None).await?;
        match reply {
            Answer::Local(r) => Ok(r),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    /// Adds a member as a learner. Returns the member as added (with its id).
    pub async fn add_learner(&self, m: NewMember) -> Result<MemberStatus, ClientError> {
        self.change_membership(MemberChange::AddLearner(m)).await
    }

    /// This member's checksum of its history up to `revision` (0: its
    /// current revision); never forwarded: comparing members' answers is
    /// the point.
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResult, ClientError> {
        let reply = self
            .call(|reply| Request::HashKv { revision, reply }, None)
            .await?;
        match reply {
            Answer::Local(r) => Ok(r),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    /// A consistent image of this member's state machine as of now (its
    /// applied state, served locally like etcd's Snapshot), read while
    /// writes continue.
    pub async fn snapshot(&self) -> Result<SnapshotReader, ClientError> {
        let reply = self.call(|reply| Request::Snapshot { reply }, None).await?;
        match reply {
            Answer::Local(r) => Ok(r),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: NodeId) -> Result<MemberStatus, ClientError> {
        self.change_membership(MemberChange::Promote(id)).await
    }

    /// Removes a member (voter or learner).
    pub async fn remove(&self, id: NodeId) -> Result<MemberStatus, ClientError> {
        self.change_membership(MemberChange::Remove(id)).await
    }

    /// Asks the leader to hand leadership to `to`; returns once `to` leads.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ClientError> {
        let reply = self
            .call(
                |reply| Request::TransferLeader { to, reply },
                Some(Forwarded::TransferLeader(to)),
            )
            .await?;
        match reply {
            Answer::Local(()) | Answer::Forwarded(ForwardedReply::Done) => Ok(()),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    /// Stops the driver: a leader first hands leadership to the most
    /// up-to-date voter. Bounded by the request timeout.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        match self.call(|reply| Request::Shutdown { reply }, None).await? {
            Answer::Local(()) => Ok(()),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    async fn change_membership(&self, change: MemberChange) -> Result<MemberStatus, ClientError> {
        let forward = Forwarded::ChangeMembership(change.clone());
        let reply = self
            .call(
                |reply| Request::ChangeMembership {
                    change: change.clone(),
                    reply,
                },
                Some(forward),
            )
            .await?;
        match reply {
            Answer::Local(r) => Ok(r),
            Answer::Forwarded(ForwardedReply::Member(r)) => Ok(r),
            Answer::Forwarded(other) => Err(unexpected(&other)),
        }
    }

    /// Serves a request that arrived from another node's forwarder: it runs
    /// locally and is never forwarded again (no forwarding loops).
    pub(crate) async fn serve_forwarded(
        &self,
        request: Forwarded,
    ) -> Result<ForwardedReply, ClientError> {
        let local = NodeHandle {
            forwarder: None,
            retry: false,
            ..self.clone()
        };
        match request {
            Forwarded::Write(cmd) => local.write(cmd).await.map(ForwardedReply::Write),
            Forwarded::Read(req) => local
                .range(req, Consistency::Linearizable)
                .await
                .map(ForwardedReply::Read),
            Forwarded::ChangeMembership(change) => local
                .change_membership(change)
                .await
                .map(ForwardedReply::Member),
            Forwarded::TransferLeader(to) => local
                .transfer_leader(to)
                .await
                .map(|()| ForwardedReply::Done),
            Forwarded::Lease(query) => local.lease(query).await.map(ForwardedReply::Lease),
        }
    }

    /// Sends one request to the driver and, if it is not the leader and
    /// `forward` is given, forwards it to the leader; all within the timeout.
    ///
    /// While there is no leader, or the leader cannot be reached, the
    /// request is retried until a leader answers or the timeout passes: a
    /// failover then costs clients latency, not errors. Only failures that
    /// prove the request was not carried out ([`ClientError::NoLeader`]) are
    /// retried, so a write is never applied twice.
    async fn call<T>(
        &self,
        make: impl Fn(oneshot::Sender<DriverReply<T>>) -> Request,
        forward: Option<Forwarded>,
    ) -> Result<Answer<T>, ClientError> {
        let mut last = ClientError::Timeout;
        let work = async {
            loop {
                match self.call_once(&make, forward.clone()).await {
                    Err(ClientError::NoLeader) if self.retry => {
                        last = ClientError::NoLeader;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(last),
        }
    }

    async fn call_once<T>(
        &self,
        make: &impl Fn(oneshot::Sender<DriverReply<T>>) -> Request,
        forward: Option<Forwarded>,
    ) -> Result<Answer<T>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| ClientError::Unavailable("the node is shutting down".into()))?;
        let answer = rx
            .await
            .map_err(|_| ClientError::Unavailable("the node is shutting down".into()))?;
        match answer {
            Ok(v) => Ok(Answer::Local(v)),
            Err(Rejection::Failed(e)) => Err(e),
            Err(Rejection::NotLeader(None)) => Err(ClientError::NoLeader),
            Err(Rejection::NotLeader(Some(hint))) => match (&self.forwarder, forward) {
                (Some(f), Some(forward)) if hint.id != self.member_id => {
                    let reply = f.forward(hint, forward).await?;
                    self.catch_up_to(&reply).await;
                    Ok(Answer::Forwarded(reply))
                }
                _ => Err(ClientError::NoLeader),
            },
        }
    }

    /// Waits until this member's own state machine holds the revision the
    /// leader answered a forwarded read or write at. etcd answers both on
    /// the member the client asked only once that member applied them, so
    /// a client may go on with serializable reads, watches or HashKV there
    /// and see what it wrote or read; answering as soon as the leader did
    /// would let this member run behind its own answer. The leader sends
    /// the new commit index as soon as it has it, so this is usually over
    /// by the time the leader's answer arrives; the request's own timeout
    /// bounds it otherwise.
    async fn catch_up_to(&self, reply: &ForwardedReply) {
        let revision = match reply {
            ForwardedReply::Read(r) => Some(r.range.revision),
            ForwardedReply::Write(w) => w.outcome.revision(),
            _ => None,
        };
        let (Some(store), Some(revision)) = (&self.store, revision) else {
            return;
        };
        // Subscribed before looking, so no batch applied in between goes
        // unnoticed; the re-check on a timer covers what the feed does not
        // carry (a snapshot installed) and a lagging receiver.
        let mut feed = store.subscribe();
        while store.revision() < revision {
            let told = tokio::time::timeout(CATCH_UP_RECHECK, feed.recv()).await;
            if let Ok(Err(RecvError::Closed)) = told {
                tokio::time::sleep(CATCH_UP_RECHECK).await;
            }
        }
    }
}

/// How often a member waiting to catch up with a forwarded answer looks
/// at its revision without being told it applied something.
const CATCH_UP_RECHECK: Duration = Duration::from_millis(20);

/// How long to wait before asking again for a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

enum Answer<T> {
    Local(T),
    Forwarded(ForwardedReply),
}

fn unexpected(reply: &ForwardedReply) -> ClientError {
    ClientError::Internal(format!(
        "the leader answered a forwarded request with {reply:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_nobody_answers_times_out_instead_of_hanging() {
        let (tx, _rx) = mpsc::channel(4);
        let h = NodeHandle::new(NodeId(1), 7, Duration::from_millis(50), tx, None);
        let err = h.status().await.unwrap_err();
        assert_eq!(err, ClientError::Timeout);
        assert_eq!(err.http_status(), 503);
    }

    #[tokio::test]
    async fn a_follower_without_a_known_leader_answers_no_leader() {
        let (tx, mut rx) = mpsc::channel(4);
        let h = NodeHandle::new(NodeId(1), 7, Duration::from_millis(200), tx, None);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                if let Request::TransferLeader { reply, .. } = req {
                    let _ = reply.send(Err(Rejection::NotLeader(None)));
                }
            }
        });
        assert_eq!(
            h.transfer_leader(NodeId(2)).await,
            Err(ClientError::NoLeader)
        );
    }

    #[tokio::test]
    async fn a_stopped_driver_answers_unavailable() {
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        let h = NodeHandle::new(NodeId(1), 7, Duration::from_secs(5), tx, None);
        assert!(matches!(h.status().await, Err(ClientError::Unavailable(_))));
    }

    /// The leader, as a forwarder that answers every read at `0`.
    #[derive(Debug)]
    struct LeaderAtRevision(i64);

    impl Forwarder for LeaderAtRevision {
        fn forward(
            &self,
            _: LeaderHint,
            _: Forwarded,
        ) -> futures::future::BoxFuture<'static, Result<ForwardedReply, ClientError>> {
            let revision = self.0;
            Box::pin(async move {
                Ok(ForwardedReply::Read(ReadResult {
                    range: crate::storage::RangeResult {
                        revision,
                        ..Default::default()
                    },
                    raft_term: Term(1),
                }))
            })
        }
    }

    fn put_entry(index: u64, key: &str) -> crate::raft::Entry {
        let op = crate::storage::Op::Put {
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            value: bytes::Bytes::from_static(b"v"),
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
            lease: 0,
        };
        crate::raft::Entry {
            term: Term(1),
            index: crate::raft::LogIndex(index),
            payload: crate::raft::EntryPayload::Command(
                Command {
                    request_id: None,
                    auth: None,
                    op,
                }
                .encode(),
            ),
        }
    }

    #[tokio::test]
    async fn a_forwarded_answer_waits_until_this_member_applied_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(dir.path(), crate::storage::Limits::default()).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                if let Request::Read { reply, .. } = req {
                    let hint = LeaderHint {
                        id: NodeId(2),
                        peer_url: "http://127.0.0.1:1".into(),
                    };
                    let _ = reply.send(Err(Rejection::NotLeader(Some(hint))));
                }
            }
        });
        let leader: Arc<dyn Forwarder> = Arc::new(LeaderAtRevision(3));
        let h = NodeHandle::new(NodeId(1), 7, Duration::from_secs(10), tx, Some(leader))
            .with_store(store.clone());
        let read = tokio::spawn(async move {
            h.range(
                RangeRequest {
                    key: bytes::Bytes::from_static(b"a"),
                    ..Default::default()
                },
                Consistency::Linearizable,
            )
            .await
        });
        // This member is at revision 1, the leader answered at 3.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !read.is_finished(),
            "answered before this member applied what the leader had"
        );
        store
            .apply(&[put_entry(1, "a"), put_entry(2, "b")])
            .unwrap();
        assert_eq!(store.revision(), 3);
        let answer = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("answered once this member caught up")
            .unwrap()
            .unwrap();
        assert_eq!(answer.range.revision, 3);
    }

    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(ClientError::InvalidArgument("x".into()).http_status(), 400);
        assert_eq!(ClientError::NotFound("x".into()).http_status(), 404);
        assert_eq!(ClientError::MembershipChangeInProgress.http_status(), 409);
        assert_eq!(ClientError::TooLarge("x".into()).http_status(), 413);
        assert_eq!(ClientError::NoLeader.http_status(), 503);
        assert_eq!(ClientError::Internal("x".into()).http_status(), 500);
        let denied = ClientError::PermissionDenied("etcdserver: permission denied".into());
        assert_eq!(
            (denied.http_status(), denied.code()),
            (403, "permission_denied")
        );
        // etcd's message alone, as clients match on it.
        assert_eq!(denied.to_string(), "etcdserver: permission denied");
    }
}
