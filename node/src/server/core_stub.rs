//! PLACEHOLDER: the consensus core's `RaftNode` API as documented for the
//! driver, so that the node compiles before the core lands on main. Every
//! call here does nothing or refuses; the module is deleted, and the driver's
//! imports point at `crate::raft`, once main is merged.

use bytes::Bytes;

use crate::raft::{
    ConfChange, ConfChangeError, ConfigError, LogIndex, Membership, Message, NodeId, Ready,
    RoleState, Status, Storage, StorageError, Term,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub index: LogIndex,
    pub term: Term,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("a membership change is already in progress")]
    MembershipChangePending,
    #[error(transparent)]
    ConfChange(#[from] ConfChangeError),
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub state: &'static str,
}

#[derive(Debug)]
pub struct RaftNode<S: Storage> {
    id: NodeId,
    storage: S,
    membership: Membership,
}

impl<S: Storage> RaftNode<S> {
    pub fn with_applied(
        config: crate::raft::Config,
        storage: S,
        _applied: LogIndex,
    ) -> Result<Self, RaftError> {
        let membership = storage.initial_state()?.membership;
        Ok(RaftNode {
            id: config.id,
            storage,
            membership,
        })
    }
    pub fn tick(&mut self) {}
    pub fn step(&mut self, _m: Message) -> Result<(), RaftError> {
        Ok(())
    }
    pub fn propose_batch(&mut self, _data: Vec<Bytes>) -> Result<Vec<Proposal>, ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }
    pub fn read_index(&mut self, _ctx: u64) -> Result<(), ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }
    pub fn change_membership(&mut self, _c: ConfChange) -> Result<Proposal, ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }
    pub fn transfer_leader(&mut self, _to: NodeId) -> Result<(), ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }
    pub fn report_unreachable(&mut self, _to: NodeId) {}
    pub fn report_snapshot(&mut self, _to: NodeId, _ok: bool) {}
    pub fn has_ready(&self) -> bool {
        false
    }
    pub fn ready(&mut self) -> Ready {
        Ready::default()
    }
    pub fn advance(&mut self) {}
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: RoleState::Follower,
            term: Term::ZERO,
            leader: None,
            commit_index: LogIndex::ZERO,
            applied_index: LogIndex::ZERO,
            last_log_index: LogIndex::ZERO,
            first_log_index: LogIndex(1),
        }
    }
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    pub fn progress(&self) -> Vec<(NodeId, PeerProgress)> {
        Vec::new()
    }
    pub fn storage(&self) -> &S {
        &self.storage
    }
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }
}
