//! Wire types of the raftkv node's HTTP admin API (`/v1/status`,
//! `/v1/members`, `/v1/leader/transfer`) as the operator consumes them.

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// Raft role a node reports for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    Leader,
    Follower,
    Candidate,
    PreCandidate,
    Learner,
    /// A role this operator version does not know; treated as "not leader".
    #[serde(other)]
    Unknown,
}

/// Role of a member in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    Voter,
    Learner,
}

/// One entry of `members` in `/v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub name: String,
    pub peer_url: String,
    #[serde(default)]
    pub client_url: String,
    pub role: MemberKind,
    /// Only known on the leader.
    #[serde(default)]
    pub match_index: Option<u64>,
}

/// Body of `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub name: String,
    pub role: NodeRole,
    pub term: u64,
    #[serde(default)]
    pub leader_id: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    #[serde(default)]
    pub members: Vec<MemberInfo>,
    /// The data directory's incarnation; a new one means the directory was
    /// created anew. Absent from nodes older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
}

/// Body of `POST /v1/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMemberRequest {
    pub id: NodeId,
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
    pub learner: bool,
}

/// Body of `POST /v1/leader/transfer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderRequest {
    pub to: NodeId,
}

/// Error body the node returns with a non-2xx status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
    #[serde(default)]
    pub code: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_the_documented_shape() {
        let s: NodeStatus = serde_json::from_str(
            r#"{"id":2,"name":"kv-1","role":"pre-candidate","term":7,"leader_id":null,
                "commit_index":10,"applied_index":9,"last_log_index":12,
                "members":[{"id":1,"name":"kv-0","peer_url":"http://a:2380","client_url":"http://a:2379","role":"voter","match_index":null},
                           {"id":2,"name":"kv-1","peer_url":"http://b:2380","client_url":"http://b:2379","role":"learner","match_index":8}]}"#,
        )
        .unwrap();
        assert_eq!(s.role, NodeRole::PreCandidate);
        assert_eq!(s.leader_id, None);
        assert_eq!(s.members[1].role, MemberKind::Learner);
        assert_eq!(s.members[1].match_index, Some(8));
    }

    #[test]
    fn unknown_role_does_not_fail_parsing() {
        let s: NodeStatus = serde_json::from_str(
            r#"{"id":1,"name":"kv-0","role":"witness","term":1,"leader_id":1,"commit_index":1,"applied_index":1,"last_log_index":1,"members":[]}"#,
        )
        .unwrap();
        assert_eq!(s.role, NodeRole::Unknown);
    }
}
