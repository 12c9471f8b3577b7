//! Answering clients from the state machine: linearizable reads once the
//! state machine reached their read index, local reads, off-loop hashes and
//! backups, and what a client sees when the core refuses a request.

use tokio::sync::oneshot;

use super::{Driver, kv_error};
use crate::raft::{ConfChangeError, ProposeError};
use crate::server::ClientError;
use crate::server::handle::{DriverReply, HashKvResult, LeaderHint, ReadResult, Rejection};
use crate::server::member_info::MemberInfo;
use crate::storage::{RangeRequest, StoreError};

impl Driver {
    pub(super) fn serve_applied_reads(&mut self) {
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

    pub(super) fn read_local(&self, req: &RangeRequest) -> Result<ReadResult, ClientError> {
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
