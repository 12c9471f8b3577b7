//! The backend quota (etcd's `--quota-backend-bytes`): a write that would
//! grow a state machine already at its quota is refused, and the NOSPACE
//! alarm is raised through the log, so that every member refuses writes
//! alike until an operator frees space and disarms it.
//!
//! The size check is the leader's, on its own file (each member's file
//! differs), which is why it only ever *proposes* the alarm: whether writes
//! are refused is decided at apply, from the replicated alarm list, and is
//! the same on every member.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Batch, Driver};
use crate::raft::RoleState;
use crate::server::ClientError;
use crate::storage::{AlarmAction, AlarmKind, Command, Op};

impl Driver {
    /// Checks a write against the quota; over it, queues the NOSPACE alarm
    /// for this member (once) and answers `NoSpace`.
    pub(super) fn check_quota(&self, cmd: &Command, batch: &mut Batch) -> Result<(), ClientError> {
        let quota = self.kv.limits().quota_backend_bytes;
        // Only the leader checks: a follower hands the write on, and the
        // member that proposes it is the one that can raise the alarm.
        if quota == 0 || !cmd.op.adds_data() || self.node.status().role != RoleState::Leader {
            return Ok(());
        }
        let cost = cmd.encode().len() as u64;
        if self.kv_file_bytes.saturating_add(cost) <= quota {
            return Ok(());
        }
        let me = self.cfg.id.get();
        let raised = self
            .kv
            .alarms()
            .iter()
            .any(|a| a.member_id == me && a.kind == AlarmKind::NoSpace);
        let queued = batch.writes.iter().any(|(data, _)| *data == no_space(me));
        if !raised && !queued {
            // Nobody waits for the answer: the alarm list shows it.
            let (reply, _) = oneshot::channel();
            batch.writes.push((no_space(me), reply));
        }
        Err(ClientError::NoSpace)
    }
}

/// The command that raises NOSPACE for a member.
fn no_space(member_id: u64) -> Bytes {
    Command {
        request_id: None,
        auth: None,
        op: Op::Alarm {
            action: AlarmAction::Activate,
            member_id,
            kind: AlarmKind::NoSpace,
        },
    }
    .encode()
}
