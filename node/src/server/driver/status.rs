//! What the driver publishes about itself: the metrics gauges and the
//! health view after every loop, database sizes now and then, and the
//! [`NodeStatus`] behind `/v1/status`, member lists and `Maintenance.Status`.

use std::collections::HashMap;
use std::time::Instant;

use tracing::{info, warn};

use super::{Driver, Health};
use crate::raft::{LogIndex, NodeId, RoleState};
use crate::server::handle::{MemberStatus, NodeStatus};
use crate::server::member_info::MemberInfo;

impl Driver {
    /// Records durably that the core stopped withholding its votes (a
    /// committed configuration showed this node as a learner). Until that
    /// write succeeds a restart withholds them again, which is safe; it is
    /// retried on the next loop.
    pub(super) fn persist_vote_withholding(&mut self) {
        if !self.withholding_recorded || self.node.withholding_votes() {
            return;
        }
        match self.node.storage().set_withhold_votes(false) {
            Ok(()) => {
                self.withholding_recorded = false;
                info!("added as a learner: this member votes from now on");
            }
            Err(e) => warn!(error = %e, "cannot record that this member votes again"),
        }
    }

    pub(super) fn publish_status(&mut self, s: &crate::raft::Status) {
        let m = &self.metrics;
        m.raft_term.set(s.term.get() as i64);
        m.raft_commit_index.set(s.commit_index.get() as i64);
        m.raft_applied_index
            .set(self.kv.applied_index().get() as i64);
        m.raft_last_log_index.set(s.last_log_index.get() as i64);
        m.raft_is_leader.set(i64::from(s.role == RoleState::Leader));
        m.raft_has_leader.set(i64::from(s.leader.is_some()));
        if s.role == RoleState::Leader {
            for (id, p) in self.node.progress() {
                m.raft_peer_match_index
                    .with_label_values(&[&id.to_string()])
                    .set(p.match_index.get() as i64);
            }
        }
        let membership = self.node.membership();
        m.raft_members
            .with_label_values(&["voter"])
            .set(membership.voter_count() as i64);
        m.raft_members
            .with_label_values(&["learner"])
            .set(membership.learners().count() as i64);
        self.health.send_replace(Health {
            last_loop: Instant::now(),
            leader: s.leader,
            commit_index: s.commit_index,
            leader_commit: s.leader_commit,
            // What the state machine holds, not what the core handed out.
            applied_index: self.kv.applied_index(),
            role: s.role,
            term: s.term,
        });
    }

    pub(super) fn publish_sizes(&mut self) {
        self.kv_file_bytes = file_size(self.kv.path());
        self.metrics
            .db_size_bytes
            .with_label_values(&["log"])
            .set(self.node.storage().disk_bytes() as i64);
        self.metrics
            .db_size_bytes
            .with_label_values(&["kv"])
            .set(self.kv_file_bytes as i64);
    }

    pub(super) fn status(&self) -> NodeStatus {
        let s = self.node.status();
        let membership = self.node.membership();
        let progress: HashMap<NodeId, LogIndex> = self
            .node
            .progress()
            .into_iter()
            .map(|(id, p)| (id, p.match_index))
            .collect();
        let members = membership
            .members()
            .map(|(id, m)| {
                let mut info = MemberInfo::from_context(&m.context);
                if info.client_url.is_empty() {
                    info.client_url = if id == self.cfg.id {
                        self.cfg.advertise_client.clone()
                    } else {
                        self.client_urls.get(&id).cloned().unwrap_or_default()
                    };
                }
                let role = if membership.is_learner(id) {
                    "learner"
                } else {
                    "voter"
                };
                let match_index = if id == self.cfg.id && s.role == RoleState::Leader {
                    Some(s.last_log_index.get())
                } else {
                    progress.get(&id).map(|i| i.get())
                };
                member_status(id, &info, role, match_index)
            })
            .collect();
        let role = if membership.is_learner(self.cfg.id) {
            "learner"
        } else {
            s.role.as_str()
        };
        NodeStatus {
            id: self.cfg.id.get(),
            name: self.cfg.name.clone(),
            cluster_id: self.cfg.cluster_id,
            role: role.to_string(),
            term: s.term.get(),
            leader_id: s.leader.map(|l| l.get()),
            commit_index: s.commit_index.get(),
            applied_index: self.kv.applied_index().get(),
            last_log_index: s.last_log_index.get(),
            first_log_index: s.first_log_index.get(),
            revision: self.kv.revision().max(0) as u64,
            members,
            log_db_size_bytes: self.node.storage().disk_bytes(),
            kv_db_size_bytes: file_size(self.kv.path()),
            alarms: self.kv.alarms().iter().map(ToString::to_string).collect(),
            storage_id: self.node.storage().storage_id().to_string(),
            withholding_votes: self.node.withholding_votes(),
            quota_backend_bytes: self.kv.limits().quota_backend_bytes,
        }
    }
}

pub(super) fn member_status(
    id: NodeId,
    info: &MemberInfo,
    role: &str,
    match_index: Option<u64>,
) -> MemberStatus {
    MemberStatus {
        id: id.get(),
        name: info.name.clone(),
        peer_url: info.peer_url.clone(),
        client_url: info.client_url.clone(),
        role: role.to_string(),
        match_index,
    }
}

fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
