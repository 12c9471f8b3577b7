//! Tunables of the consensus core. Time is counted in ticks: the driver
//! decides how long a tick is.

use super::types::NodeId;

/// Configuration of one [`RaftNode`](super::RaftNode).
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// A follower that hears nothing from a leader for a random number of
    /// ticks in `[election_ticks, 2 * election_ticks)` starts an election.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks`. Must be well below
    /// `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Rehearse elections before disrupting the cluster (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down if it has not heard from a quorum within an
    /// election timeout, and voters ignore vote requests while they hear from
    /// a leader (thesis §6.2, §9.6).
    pub check_quorum: bool,
    /// At most this many append messages in flight to one follower.
    pub max_inflight: usize,
    /// At most this many bytes of entries in one append message.
    pub max_message_bytes: usize,
    /// At most this many bytes of committed entries in one `Ready`.
    pub max_apply_bytes: usize,
    /// Seed of the random generator that jitters election timeouts. Give
    /// every node a different seed.
    pub seed: u64,
    /// The driver persists on another thread and acknowledges writes late
    /// with [`RaftNode::on_persisted`](super::RaftNode::on_persisted)
    /// (after [`RaftNode::advance_handed`](super::RaftNode::advance_handed)).
    /// Committed entries are then handed out to apply only once they are
    /// durable locally as well.
    pub async_persistence: bool,
}

impl Config {
    /// Defaults that suit a 10 ms tick: elections after 1–2 s of silence,
    /// heartbeats every 100 ms.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_ticks: 100,
            heartbeat_ticks: 10,
            pre_vote: true,
            check_quorum: true,
            max_inflight: 256,
            max_message_bytes: 1 << 20,
            max_apply_bytes: 4 << 20,
            seed: id.0,
            async_persistence: false,
        }
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.0 == 0 {
            return Err(ConfigError::Invalid("node id must not be 0"));
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError::Invalid("heartbeat_ticks must be at least 1"));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::Invalid(
                "election_ticks must be greater than heartbeat_ticks",
            ));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::Invalid("max_inflight must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid raft configuration: {0}")]
    Invalid(&'static str),
}
