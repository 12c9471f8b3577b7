//! etcd's `Cluster` service: list members, add one (as a learner), promote,
//! remove. raftkv changes membership one member at a time and always adds a
//! member as a learner first, so a MemberAdd of a voter is refused with the
//! reason rather than silently turned into something else.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::convert::{header, member, status_from, to_i64};
use super::gate;
use super::observe::Observer;
use super::proto::etcdserverpb::{self as pb, cluster_server::Cluster};
use crate::raft::NodeId;
use crate::server::{NewMember, validate_member_url};

/// The Cluster service over a node.
#[derive(Debug, Clone)]
pub struct ClusterService<B> {
    backend: B,
    observer: Observer,
}

impl<B: Backend> ClusterService<B> {
    pub fn new(backend: B, observer: Observer) -> Self {
        ClusterService { backend, observer }
    }

    /// The header and member list after a change, from this node's view.
    async fn members(&self) -> Result<(Option<pb::ResponseHeader>, Vec<pb::Member>), Status> {
        let s = self.backend.status().await.map_err(status_from)?;
        Ok((
            Some(header(
                self.backend.cluster_id(),
                self.backend.member_id(),
                to_i64(s.revision),
                s.term,
            )),
            s.members.iter().map(member).collect(),
        ))
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::MemberAddResponse>, Status> = async {
            // Membership is an administrator's (etcd: root when auth is on).
            gate::caller(&self.backend, &request)?.root()?;
            let req = request.into_inner();
            if !req.is_learner {
                return Err(Status::failed_precondition(
                    "raftkv adds members as learners only: add it with --learner, let it catch up, then promote it",
                ));
            }
            let peer_url = match req.peer_ur_ls.as_slice() {
                [one] => validate_member_url(one).map_err(|e| {
                    Status::invalid_argument(format!("etcdserver: invalid peer URL: {e}"))
                })?,
                [] => return Err(Status::invalid_argument("etcdserver: no peer URL given")),
                _ => {
                    return Err(Status::invalid_argument(
                        "raftkv members have exactly one peer URL",
                    ));
                }
            };
            let added = self
                .backend
                .add_learner(NewMember {
                    id: None,
                    name: String::new(),
                    peer_url,
                    client_url: String::new(),
                })
                .await
                .map_err(status_from)?;
            let (header, members) = self.members().await?;
            Ok(Response::new(pb::MemberAddResponse {
                header,
                member: Some(member(&added)),
                members,
            }))
        }
        .await;
        self.observer.record("MemberAdd", started, &result);
        result
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::MemberRemoveResponse>, Status> = async {
            gate::caller(&self.backend, &request)?.root()?;
            let id = NodeId(request.into_inner().id);
            self.backend.remove(id).await.map_err(status_from)?;
            let (header, members) = self.members().await?;
            Ok(Response::new(pb::MemberRemoveResponse { header, members }))
        }
        .await;
        self.observer.record("MemberRemove", started, &result);
        result
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::MemberUpdateResponse>, Status> = async {
            Err(Status::unimplemented(
                "raftkv does not update a member's peer URLs in place: remove the member and add it again",
            ))
        }
        .await;
        self.observer.record("MemberUpdate", started, &result);
        result
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::MemberListResponse>, Status> = async {
            let (header, members) = self.members().await?;
            Ok(Response::new(pb::MemberListResponse { header, members }))
        }
        .await;
        self.observer.record("MemberList", started, &result);
        result
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::MemberPromoteResponse>, Status> = async {
            gate::caller(&self.backend, &request)?.root()?;
            let id = NodeId(request.into_inner().id);
            self.backend.promote(id).await.map_err(status_from)?;
            let (header, members) = self.members().await?;
            Ok(Response::new(pb::MemberPromoteResponse { header, members }))
        }
        .await;
        self.observer.record("MemberPromote", started, &result);
        result
    }
}
