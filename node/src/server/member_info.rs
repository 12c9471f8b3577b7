//! What the node keeps in a member's opaque `context` in the Raft
//! configuration: its name and addresses, as JSON. Because every membership
//! entry carries the whole configuration, any node can reach any member from
//! the log alone.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A member's name and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub peer_url: String,
    #[serde(default)]
    pub client_url: String,
}

impl MemberInfo {
    pub fn to_context(&self) -> Bytes {
        // Serializing three strings cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes a context. A context that is not ours (empty, or written by
    /// a tool) decodes to empty fields rather than failing: the member still
    /// exists, we just do not know how to reach it.
    pub fn from_context(context: &[u8]) -> MemberInfo {
        serde_json::from_slice(context).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_garbage_decodes_to_empty() {
        let info = MemberInfo {
            name: "n1".into(),
            peer_url: "http://127.0.0.1:2380".into(),
            client_url: "http://127.0.0.1:2379".into(),
        };
        assert_eq!(MemberInfo::from_context(&info.to_context()), info);
        assert_eq!(MemberInfo::from_context(b"\xff"), MemberInfo::default());
    }
}
