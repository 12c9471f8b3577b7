//! etcd's `KV` service: Range, Put, DeleteRange, Txn and Compact, each
//! translated into one read or one write on the node.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::convert::{
    compact_command, delete_command, header, key_value, put_command, range_request, range_response,
    rejected, status_from, to_i64, txn_command, txn_responses,
};
use super::gate;
use super::observe::Observer;
use super::proto::etcdserverpb::{self as pb, kv_server::Kv};
use super::store::ApplyOutcome;
use crate::server::Consistency;
use crate::storage::auth::Need;

/// The KV service over a node.
#[derive(Debug, Clone)]
pub struct KvService<B> {
    backend: B,
    observer: Observer,
}

impl<B: Backend> KvService<B> {
    pub fn new(backend: B, observer: Observer) -> Self {
        KvService { backend, observer }
    }

    fn header(&self, revision: i64, raft_term: u64) -> Option<pb::ResponseHeader> {
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
        let started = Instant::now();
        let result: Result<Response<pb::RangeResponse>, Status> = async {
            let checked = gate::caller(&self.backend, &request)?;
            let req = request.into_inner();
            checked.may(Need::Read, &req.key, &req.range_end)?;
            let read = range_request(&req)?;
            let consistency = if req.serializable {
                Consistency::Serializable
            } else {
                Consistency::Linearizable
            };
            let read = self
                .backend
                .range(read, consistency)
                .await
                .map_err(status_from)?;
            // etcd's header carries the store's revision, also for a read
            // at a past one.
            let revision = read.range.revision;
            let mut resp = range_response(read.range);
            resp.header = self.header(revision, read.raft_term.0);
            Ok(Response::new(resp))
        }
        .await;
        self.observer.record("Range", started, &result);
        result
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::PutResponse>, Status> = async {
            let checked = gate::caller(&self.backend, &request)?;
            let cmd = checked.admit(put_command(request.into_inner())?)?;
            let written = self.backend.write(cmd).await.map_err(status_from)?;
            match written.outcome {
                ApplyOutcome::Put { revision, prev_kv } => Ok(Response::new(pb::PutResponse {
                    header: self.header(revision, written.raft_term.0),
                    prev_kv: prev_kv.map(key_value),
                })),
                other => Err(unexpected("Put", &other)),
            }
        }
        .await;
        self.observer.record("Put", started, &result);
        result
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::DeleteRangeResponse>, Status> = async {
            let checked = gate::caller(&self.backend, &request)?;
            let cmd = checked.admit(delete_command(request.into_inner())?)?;
            let written = self.backend.write(cmd).await.map_err(status_from)?;
            match written.outcome {
                ApplyOutcome::Delete {
                    revision,
                    deleted,
                    prev_kvs,
                } => Ok(Response::new(pb::DeleteRangeResponse {
                    header: self.header(revision, written.raft_term.0),
                    deleted: to_i64(deleted),
                    prev_kvs: prev_kvs.into_iter().map(key_value).collect(),
                })),
                other => Err(unexpected("DeleteRange", &other)),
            }
        }
        .await;
        self.observer.record("DeleteRange", started, &result);
        result
    }

    /// A Txn is one command through the log, even when it only reads, so
    /// its compares and reads are linearizable like etcd's.
    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::TxnResponse>, Status> = async {
            let checked = gate::caller(&self.backend, &request)?;
            let cmd = checked.admit(txn_command(request.into_inner())?)?;
            let written = self.backend.write(cmd).await.map_err(status_from)?;
            match written.outcome {
                ApplyOutcome::Txn {
                    revision,
                    succeeded,
                    responses,
                } => {
                    let header = header(
                        self.backend.cluster_id(),
                        self.backend.member_id(),
                        revision,
                        written.raft_term.0,
                    );
                    Ok(Response::new(pb::TxnResponse {
                        header: Some(header),
                        succeeded,
                        responses: txn_responses(responses, revision),
                    }))
                }
                other => Err(unexpected("Txn", &other)),
            }
        }
        .await;
        self.observer.record("Txn", started, &result);
        result
    }

    /// Compaction goes through the log: reads below the revision fail from
    /// the entry on, on every member, and the history it frees is deleted in
    /// bounded steps as the following entries apply. The header's revision
    /// is the store's when the compaction applied, so it never lags a write
    /// acknowledged before. `physical` is accepted but not waited for.
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::CompactionResponse>, Status> = async {
            // etcd: compaction is an administrator's call.
            gate::caller(&self.backend, &request)?.root()?;
            let req = request.into_inner();
            let written = self
                .backend
                .write(compact_command(&req))
                .await
                .map_err(status_from)?;
            match written.outcome {
                ApplyOutcome::Compact { revision } => Ok(Response::new(pb::CompactionResponse {
                    header: self.header(revision, written.raft_term.0),
                })),
                other => Err(unexpected("Compact", &other)),
            }
        }
        .await;
        self.observer.record("Compact", started, &result);
        result
    }
}

/// The node answers a rejected command with an error, so a rejection here
/// is still answered correctly; any other mismatch is a bug.
fn unexpected(call: &str, outcome: &ApplyOutcome) -> Status {
    match outcome {
        ApplyOutcome::Rejected(err) => rejected(err),
        other => Status::internal(format!("{call} was answered with {other:?}")),
    }
}
