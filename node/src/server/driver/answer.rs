//! Answering clients from the state machine: local reads (the applier
//! serves linearizable ones with them once their read index applied),
//! off-loop hashes and backups, and what a client sees when the core
//! refuses a request.

use tokio::sync::oneshot;

use super::{Driver, kv_error};
use crate::raft::{ConfChangeError, ProposeError, Term};
use crate::server::ClientError;
use crate::server::handle::{DriverReply, HashKvResult, LeaderHint, ReadResult, Rejection};
use crate::server::member_info::MemberInfo;
use crate::storage::{KvStore, RangeRequest, StoreError};

impl Driver {
    /// Maps a refusal of the core to what the client sees.
    pub(super) fn rejection(&self, e: ProposeError) -> Rejection {
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

    /// Hashes the local history off the loop (it reads every version).
    pub(super) fn hash_kv(&self, revision: i64, reply: oneshot::Sender<DriverReply<HashKvResult>>) {
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
    pub(super) fn backup_image(
        &self,
        reply: oneshot::Sender<DriverReply<crate::storage::SnapshotReader>>,
    ) {
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || {
            let result = kv
                .snapshot()
                .map_err(|e| Rejection::Failed(ClientError::Internal(e.to_string())));
            let _ = reply.send(result);
        });
    }
}

/// Reads from the local state machine, answering with `raft_term`.
pub(super) fn read_local(
    kv: &KvStore,
    req: &RangeRequest,
    raft_term: Term,
) -> Result<ReadResult, ClientError> {
    kv.limits().check_range(req).map_err(kv_error)?;
    let range = kv.range(req).map_err(|e| match e {
        StoreError::InvalidRequest(e) => kv_error(e),
        e => ClientError::Internal(e.to_string()),
    })?;
    Ok(ReadResult { range, raft_term })
}
