//! [`Backend`]: what the gRPC services need from a node. [`NodeHandle`] is
//! the real one; tests put an in-memory store behind the same services to
//! check the wire translation without a cluster.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::NodeId;
use crate::server::{
    ClientError, Consistency, HashKvResult, LeaseQuery, LeaseReply, MemberStatus, NewMember,
    NodeHandle, NodeStatus, ReadResult, WriteResult,
};
use crate::storage::SnapshotReader;

use super::store::{Command, RangeRequest};
use crate::storage::KvStore;
use crate::storage::auth::AuthState;

/// The node calls the etcd services are translated into.
pub trait Backend: Clone + Send + Sync + 'static {
    /// This member's id (response headers).
    fn member_id(&self) -> u64;
    /// The cluster's id (response headers).
    fn cluster_id(&self) -> u64;
    /// Commits a write and returns what applying it did.
    fn write(&self, cmd: Command) -> impl Future<Output = Result<WriteResult, ClientError>> + Send;
    /// Reads a key or a range.
    fn range(
        &self,
        req: RangeRequest,
        consistency: Consistency,
    ) -> impl Future<Output = Result<ReadResult, ClientError>> + Send;
    /// A lease question for the leader (keep-alive, time to live, list).
    fn lease(
        &self,
        query: LeaseQuery,
    ) -> impl Future<Output = Result<LeaseReply, ClientError>> + Send;
    /// This node's view of itself and the cluster.
    fn status(&self) -> impl Future<Output = Result<NodeStatus, ClientError>> + Send;
    /// This member's checksum of its history up to `revision` (0: now).
    fn hash_kv(
        &self,
        revision: i64,
    ) -> impl Future<Output = Result<HashKvResult, ClientError>> + Send;
    /// A consistent image of this member's state machine, for a backup.
    fn snapshot(&self) -> impl Future<Output = Result<SnapshotReader, ClientError>> + Send;
    /// Hands leadership to `to`; returns once `to` leads.
    fn transfer_leader(&self, to: NodeId) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// Adds a learner.
    fn add_learner(
        &self,
        member: NewMember,
    ) -> impl Future<Output = Result<MemberStatus, ClientError>> + Send;
    /// Makes a learner a voter.
    fn promote(&self, id: NodeId)
    -> impl Future<Output = Result<MemberStatus, ClientError>> + Send;
    /// Removes a member.
    fn remove(&self, id: NodeId) -> impl Future<Output = Result<MemberStatus, ClientError>> + Send;
    /// The local state machine watches are served from (its change feed
    /// and history); `None`: this backend serves no watches.
    fn watch_store(&self) -> Option<KvStore>;
    /// How often an idle watch that asked for it gets a progress
    /// notification.
    fn watch_progress_interval(&self) -> Duration;
    /// How long the auth tokens `Authenticate` hands out stay valid.
    fn auth_token_ttl(&self) -> Duration {
        crate::auth::token::DEFAULT_TTL
    }
    /// The auth store as this member applied it (users, roles, the auth
    /// flag); a backend without a state machine has auth disabled.
    fn auth_state(&self) -> Arc<AuthState> {
        self.watch_store().map(|s| s.auth()).unwrap_or_default()
    }
}

impl Backend for NodeHandle {
    fn member_id(&self) -> u64 {
        NodeHandle::member_id(self).0
    }
    fn cluster_id(&self) -> u64 {
        NodeHandle::cluster_id(self)
    }
    async fn write(&self, cmd: Command) -> Result<WriteResult, ClientError> {
        NodeHandle::write(self, cmd).await
    }
    async fn range(
        &self,
        req: RangeRequest,
        consistency: Consistency,
    ) -> Result<ReadResult, ClientError> {
        NodeHandle::range(self, req, consistency).await
    }
    async fn lease(&self, query: LeaseQuery) -> Result<LeaseReply, ClientError> {
        NodeHandle::lease(self, query).await
    }
    async fn status(&self) -> Result<NodeStatus, ClientError> {
        NodeHandle::status(self).await
    }
    async fn hash_kv(&self, revision: i64) -> Result<HashKvResult, ClientError> {
        NodeHandle::hash_kv(self, revision).await
    }
    async fn snapshot(&self) -> Result<SnapshotReader, ClientError> {
        NodeHandle::snapshot(self).await
    }
    async fn transfer_leader(&self, to: NodeId) -> Result<(), ClientError> {
        NodeHandle::transfer_leader(self, to).await
    }
    async fn add_learner(&self, member: NewMember) -> Result<MemberStatus, ClientError> {
        NodeHandle::add_learner(self, member).await
    }
    async fn promote(&self, id: NodeId) -> Result<MemberStatus, ClientError> {
        NodeHandle::promote(self, id).await
    }
    async fn remove(&self, id: NodeId) -> Result<MemberStatus, ClientError> {
        NodeHandle::remove(self, id).await
    }
    fn watch_store(&self) -> Option<KvStore> {
        NodeHandle::store(self).cloned()
    }
    fn watch_progress_interval(&self) -> Duration {
        NodeHandle::watch_progress_interval(self)
    }
    fn auth_token_ttl(&self) -> Duration {
        NodeHandle::auth_token_ttl(self)
    }
}
