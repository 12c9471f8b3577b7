//! etcd's `KV` service: Range, Put, DeleteRange, Txn and Compact, each
//! translated into one read or one write on the node.

use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::convert::{
    check_revision, delete_command, header, key_value, put_command, range_plan, range_response,
    status_from,
};
use super::proto::etcdserverpb::{self as pb, kv_server::Kv};
use crate::server::Consistency;

/// The KV service over a node.
#[derive(Debug, Clone)]
pub struct KvService<B> {
    backend: B,
}

impl<B: Backend> KvService<B> {
    pub fn new(backend: B) -> Self {
        KvService { backend }
    }

    fn header(&self, revision: u64, raft_term: u64) -> Option<pb::ResponseHeader> {
        Some(header(
            self.backend.cluster_id(),
            self.backend.member_id(),
            revision,
            raft_term,
        ))
    }
}

#[tonic::async_trait]
impl<B: Backend> Kv for KvService<B> {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        let plan = range_plan(&req)?;
        let consistency = if req.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        let read = self
            .backend
            .range(plan.read, consistency)
            .await
            .map_err(status_from)?;
        check_revision(plan.at_revision, read.range.revision)?;
        let revision = read.range.revision;
        let mut resp = range_response(read.range, plan.post.as_ref());
        resp.header = self.header(revision, read.raft_term.0);
        Ok(Response::new(resp))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let cmd = put_command(request.into_inner())?;
        let written = self.backend.write(cmd).await.map_err(status_from)?;
        let outcome = written.outcome;
        Ok(Response::new(pb::PutResponse {
            header: self.header(outcome.revision, written.raft_term.0),
            prev_kv: outcome.prev_kvs.into_iter().next().map(key_value),
        }))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let cmd = delete_command(request.into_inner())?;
        let written = self.backend.write(cmd).await.map_err(status_from)?;
        let outcome = written.outcome;
        Ok(Response::new(pb::DeleteRangeResponse {
            header: self.header(outcome.revision, written.raft_term.0),
            deleted: super::convert::to_i64(outcome.deleted),
            prev_kvs: outcome.prev_kvs.into_iter().map(key_value).collect(),
        }))
    }

    async fn txn(
        &self,
        _request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        // The state machine's transaction command is not merged yet; until
        // it is, a Txn must not half-succeed as a sequence of writes.
        Err(Status::unimplemented(
            "raftkv does not implement Txn yet (waiting for the state machine's transactions)",
        ))
    }

    /// raftkv keeps only the latest version of every key: all history before
    /// the current revision is, in etcd's words, already compacted. So
    /// compacting at or below the current revision is a true no-op; above it
    /// is etcd's "future revision" error.
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let req = request.into_inner();
        let status = self.backend.status().await.map_err(status_from)?;
        if req.revision > super::convert::to_i64(status.revision) {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision is a future revision",
            ));
        }
        Ok(Response::new(pb::CompactionResponse {
            header: self.header(status.revision, status.term),
        }))
    }
}
