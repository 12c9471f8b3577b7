//! etcd's `Lease` service. Grant and revoke are commands through the log
//! (the leader picks an id for 0 and raises a short TTL before proposing);
//! keep-alive, time-to-live and the list are questions for the leader,
//! which alone keeps the leases' deadlines (a follower forwards them).

use std::pin::Pin;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::backend::Backend;
use super::convert::{header, rejected, status_from};
use super::gate;
use super::observe::Observer;
use super::proto::etcdserverpb::{self as pb, lease_server::Lease};
use super::store::{ApplyOutcome, Command, Op};
use crate::server::{LeaseAnswer, LeaseQuery, LeaseReply};
use crate::storage::auth::Need;

/// Keep-alive answers queued per stream before the stream stops reading
/// requests (a client that does not read its answers slows down).
const KEEPALIVE_QUEUE: usize = 16;

/// The Lease service over a node.
#[derive(Debug, Clone)]
pub struct LeaseService<B> {
    backend: B,
    observer: Observer,
}

impl<B: Backend> LeaseService<B> {
    pub fn new(backend: B, observer: Observer) -> Self {
        LeaseService { backend, observer }
    }

    fn header(&self, revision: i64, raft_term: u64) -> Option<pb::ResponseHeader> {
        Some(header(
            self.backend.cluster_id(),
            self.backend.member_id(),
            revision,
            raft_term,
        ))
    }

    async fn ask(&self, query: LeaseQuery) -> Result<LeaseReply, Status> {
        self.backend.lease(query).await.map_err(status_from)
    }

    async fn write(&self, op: Op) -> Result<(ApplyOutcome, u64), Status> {
        let w = self
            .backend
            .write(Command {
                request_id: None,
                auth: None,
                op,
            })
            .await
            .map_err(status_from)?;
        match w.outcome {
            ApplyOutcome::Rejected(e) => Err(rejected(&e)),
            outcome => Ok((outcome, w.raft_term.0)),
        }
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Backend> Lease for LeaseService<B> {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let started = Instant::now();
        let result = async {
            // Any authenticated caller may hold leases; what it attaches
            // to them is checked by its puts.
            gate::caller(&self.backend, &request)?;
            gate::caller(&self.backend, &request)?;
            let req = request.into_inner();
            let (outcome, term) = self
                .write(Op::LeaseGrant {
                    id: req.id,
                    ttl: req.ttl,
                })
                .await?;
            match outcome {
                ApplyOutcome::LeaseGranted { revision, id, ttl } => {
                    Ok(Response::new(pb::LeaseGrantResponse {
                        header: self.header(revision, term),
                        id,
                        ttl,
                        error: String::new(),
                    }))
                }
                other => Err(Status::internal(format!(
                    "LeaseGrant was answered with {other:?}"
                ))),
            }
        }
        .await;
        self.observer.record("LeaseGrant", started, &result);
        result
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let checked = gate::caller(&self.backend, &request)?;
            let id = request.into_inner().id;
            // Revoking deletes the lease's keys: etcd asks for write
            // permission on every one of them.
            if let (Some(user), Some(kv)) = (checked.caller.user(), self.backend.watch_store()) {
                if !checked.state.is_root(user) {
                    let keys = kv
                        .lease_keys(id)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    for key in keys {
                        checked.may(Need::Write, &key, &[])?;
                    }
                }
            }
            let (outcome, term) = self.write(Op::LeaseRevoke { id }).await?;
            match outcome {
                ApplyOutcome::LeaseRevoked { revision, .. } => {
                    Ok(Response::new(pb::LeaseRevokeResponse {
                        header: self.header(revision, term),
                    }))
                }
                other => Err(Status::internal(format!(
                    "LeaseRevoke was answered with {other:?}"
                ))),
            }
        }
        .await;
        self.observer.record("LeaseRevoke", started, &result);
        result
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Each request on the stream refreshes its lease on the leader and is
    /// answered in order. A failure (no leader within the request timeout)
    /// ends the stream with that status; the client reopens it, as etcd's
    /// clients do.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        gate::caller(&self.backend, &request)?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE);
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(next) = requests.next().await {
                let started = Instant::now();
                let answer = match next {
                    Ok(req) => service.keep_alive_once(req.id).await,
                    // The client went away or sent garbage: stop.
                    Err(_) => break,
                };
                service.observer.record("LeaseKeepAlive", started, &answer);
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let req = request.into_inner();
            let reply = self
                .ask(LeaseQuery::TimeToLive {
                    id: req.id,
                    keys: req.keys,
                })
                .await?;
            match reply.answer {
                LeaseAnswer::TimeToLive {
                    id,
                    ttl,
                    granted_ttl,
                    keys,
                } => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: self.header(reply.revision, reply.raft_term.0),
                    id,
                    ttl,
                    granted_ttl,
                    keys,
                })),
                other => Err(Status::internal(format!(
                    "LeaseTimeToLive was answered with {other:?}"
                ))),
            }
        }
        .await;
        self.observer.record("LeaseTimeToLive", started, &result);
        result
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let started = Instant::now();
        let result = async {
            gate::caller(&self.backend, &request)?;
            let reply = self.ask(LeaseQuery::Leases).await?;
            match reply.answer {
                LeaseAnswer::Leases(ids) => Ok(Response::new(pb::LeaseLeasesResponse {
                    header: self.header(reply.revision, reply.raft_term.0),
                    leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
                })),
                other => Err(Status::internal(format!(
                    "LeaseLeases was answered with {other:?}"
                ))),
            }
        }
        .await;
        self.observer.record("LeaseLeases", started, &result);
        result
    }
}

impl<B: Backend> LeaseService<B> {
    async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let reply = self.ask(LeaseQuery::KeepAlive(id)).await?;
        match reply.answer {
            LeaseAnswer::KeepAlive { id, ttl } => Ok(pb::LeaseKeepAliveResponse {
                header: self.header(reply.revision, reply.raft_term.0),
                id,
                ttl,
            }),
            other => Err(Status::internal(format!(
                "LeaseKeepAlive was answered with {other:?}"
            ))),
        }
    }
}
