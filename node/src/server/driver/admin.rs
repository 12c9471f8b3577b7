//! Administrative requests: membership changes, leadership transfer and
//! graceful shutdown.

use tokio::sync::oneshot;
use tracing::info;

use super::applier::ApplyTask;
use super::status::member_status;
use super::{Driver, DriverError};
use crate::raft::{ConfChange, NodeId, RoleState};
use crate::server::ClientError;
use crate::server::driver::pending::{PendingChange, PendingTransfer};
use crate::server::handle::{DriverReply, MemberChange, MemberStatus};
use crate::server::member_info::MemberInfo;

impl Driver {
    pub(super) fn change_membership(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<DriverReply<MemberStatus>>,
    ) -> Result<(), DriverError> {
        // One change at a time, until the last one applied (the applier
        // answers it then).
        if self
            .change_index
            .is_some_and(|i| self.kv.applied_index() < i)
        {
            let _ = reply.send(Err(ClientError::MembershipChangeInProgress.into()));
            return Ok(());
        }
        let membership = self.node.membership().clone();
        let (conf, member) = match change {
            MemberChange::AddLearner(m) => {
                if m.peer_url.is_empty() {
                    let _ = reply.send(Err(ClientError::InvalidArgument(
                        "a new member needs a peer_url".into(),
                    )
                    .into()));
                    return Ok(());
                }
                if let Some((other, _)) = membership.members().find(|(_, existing)| {
                    MemberInfo::from_context(&existing.context).peer_url == m.peer_url
                }) {
                    let _ = reply.send(Err(ClientError::InvalidArgument(format!(
                        "peer URL {} is already member {other}'s",
                        m.peer_url
                    ))
                    .into()));
                    return Ok(());
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
                    return Ok(());
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
                self.change_index = Some(p.index);
                self.hand_applier(ApplyTask::AwaitChange(PendingChange {
                    index: p.index,
                    term: p.term,
                    member,
                    reply,
                }))?;
            }
            Err(e) => {
                let _ = reply.send(Err(self.rejection(e)));
            }
        }
        Ok(())
    }

    pub(super) fn transfer_leader(&mut self, to: NodeId, reply: oneshot::Sender<DriverReply<()>>) {
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
    pub(super) fn start_shutdown(&mut self, reply: oneshot::Sender<DriverReply<()>>) {
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

    pub(super) fn shutdown_done(&mut self) -> bool {
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
}
