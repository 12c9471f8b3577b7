//! How the consensus core's values are stored on disk: protobuf encodings
//! (prost derive) of entries, hard state, membership and snapshot meta.
//!
//! Protobuf rather than a hand-rolled layout because it is self-delimiting
//! per field, tolerates added fields, and is already the wire format of the
//! node. The Rust types of the core stay free of encoding concerns; this
//! module converts between them and their stored form.

use bytes::Bytes;
use prost::Message;

use super::error::DecodeError;
use crate::raft::{
    Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term,
};

#[derive(Clone, PartialEq, prost::Message)]
struct StoredMember {
    #[prost(uint64, tag = "1")]
    id: u64,
    /// 0 = voter, 1 = learner.
    #[prost(uint32, tag = "2")]
    role: u32,
    #[prost(bytes = "bytes", tag = "3")]
    context: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredMembership {
    #[prost(message, repeated, tag = "1")]
    members: Vec<StoredMember>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredEntry {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    index: u64,
    #[prost(oneof = "StoredPayload", tags = "3, 4, 5")]
    payload: Option<StoredPayload>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum StoredPayload {
    #[prost(bool, tag = "3")]
    Noop(bool),
    #[prost(bytes = "bytes", tag = "4")]
    Command(Bytes),
    #[prost(message, tag = "5")]
    Membership(StoredMembership),
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredHardState {
    #[prost(uint64, tag = "1")]
    term: u64,
    /// 0 = no vote (node id 0 is reserved).
    #[prost(uint64, tag = "2")]
    vote: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredSnapshotMeta {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(message, optional, tag = "3")]
    membership: Option<StoredMembership>,
}

/// What a store file says about itself, written once at creation.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredIdentity {
    #[prost(uint64, tag = "1")]
    pub format_version: u64,
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "3")]
    pub node_id: u64,
    /// Random, drawn when the file is created; 0 in files written before
    /// it existed (the store draws one on their next open).
    #[prost(uint64, tag = "4")]
    pub storage_id: u64,
}

fn prost_err(what: &'static str) -> impl FnOnce(prost::DecodeError) -> DecodeError {
    move |source| DecodeError::Prost { what, source }
}

fn membership_to_stored(m: &Membership) -> StoredMembership {
    StoredMembership {
        members: m
            .members()
            .map(|(id, member)| StoredMember {
                id: id.get(),
                role: match member.role {
                    Role::Voter => 0,
                    Role::Learner => 1,
                },
                context: member.context.clone(),
            })
            .collect(),
    }
}

fn membership_from_stored(s: StoredMembership) -> Result<Membership, DecodeError> {
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for m in s.members {
        match m.role {
            0 => voters.push((NodeId(m.id), m.context)),
            1 => learners.push((NodeId(m.id), m.context)),
            other => {
                return Err(DecodeError::Invalid {
                    what: "membership",
                    field: "role",
                    value: i64::from(other),
                });
            }
        }
    }
    // Membership has no public constructor for learners; build the voters and
    // add each learner as the one-step change that created it.
    let mut membership = Membership::with_voters(voters);
    for (id, context) in learners {
        membership = membership
            .apply(&crate::raft::ConfChange::AddLearner { id, context })
            .map_err(|_| DecodeError::Invalid {
                what: "membership",
                field: "learner id",
                value: id.get() as i64,
            })?;
    }
    Ok(membership)
}

/// Encodes a membership configuration.
pub fn encode_membership(m: &Membership) -> Vec<u8> {
    membership_to_stored(m).encode_to_vec()
}

/// Decodes a membership configuration.
pub fn decode_membership(buf: &[u8]) -> Result<Membership, DecodeError> {
    membership_from_stored(StoredMembership::decode(buf).map_err(prost_err("membership"))?)
}

/// Encodes a log entry.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let payload = match &e.payload {
        EntryPayload::Noop => StoredPayload::Noop(true),
        EntryPayload::Command(data) => StoredPayload::Command(data.clone()),
        EntryPayload::Membership(m) => StoredPayload::Membership(membership_to_stored(m)),
    };
    StoredEntry {
        term: e.term.get(),
        index: e.index.get(),
        payload: Some(payload),
    }
    .encode_to_vec()
}

/// Decodes a log entry.
pub fn decode_entry(buf: &[u8]) -> Result<Entry, DecodeError> {
    let s = StoredEntry::decode(buf).map_err(prost_err("log entry"))?;
    let payload = match s.payload {
        Some(StoredPayload::Noop(_)) => EntryPayload::Noop,
        Some(StoredPayload::Command(data)) => EntryPayload::Command(data),
        Some(StoredPayload::Membership(m)) => EntryPayload::Membership(membership_from_stored(m)?),
        None => {
            return Err(DecodeError::Missing {
                what: "log entry",
                field: "payload",
            });
        }
    };
    Ok(Entry {
        term: Term(s.term),
        index: LogIndex(s.index),
        payload,
    })
}

/// Encodes a hard state.
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    StoredHardState {
        term: hs.term.get(),
        vote: hs.vote.map_or(0, NodeId::get),
        commit: hs.commit.get(),
    }
    .encode_to_vec()
}

/// Decodes a hard state.
pub fn decode_hard_state(buf: &[u8]) -> Result<HardState, DecodeError> {
    let s = StoredHardState::decode(buf).map_err(prost_err("hard state"))?;
    Ok(HardState {
        term: Term(s.term),
        vote: (s.vote != 0).then_some(NodeId(s.vote)),
        commit: LogIndex(s.commit),
    })
}

/// Encodes snapshot meta.
pub fn encode_snapshot_meta(m: &SnapshotMeta) -> Vec<u8> {
    StoredSnapshotMeta {
        index: m.index.get(),
        term: m.term.get(),
        membership: Some(membership_to_stored(&m.membership)),
    }
    .encode_to_vec()
}

/// Decodes snapshot meta.
pub fn decode_snapshot_meta(buf: &[u8]) -> Result<SnapshotMeta, DecodeError> {
    let s = StoredSnapshotMeta::decode(buf).map_err(prost_err("snapshot meta"))?;
    Ok(SnapshotMeta {
        index: LogIndex(s.index),
        term: Term(s.term),
        membership: membership_from_stored(s.membership.unwrap_or_default())?,
    })
}

/// Encodes a store identity record.
#[cfg(test)]
pub(crate) fn encode_identity(id: &StoredIdentity) -> Vec<u8> {
    id.encode_to_vec()
}

/// Decodes a store identity record.
pub(crate) fn decode_identity(buf: &[u8]) -> Result<StoredIdentity, DecodeError> {
    StoredIdentity::decode(buf).map_err(prost_err("store identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> Membership {
        Membership::with_voters([
            (NodeId(1), Bytes::from_static(b"a")),
            (NodeId(2), Bytes::new()),
        ])
        .apply(&crate::raft::ConfChange::AddLearner {
            id: NodeId(7),
            context: Bytes::from_static(b"learner"),
        })
        .unwrap()
    }

    #[test]
    fn entries_of_every_kind_round_trip() {
        for payload in [
            EntryPayload::Noop,
            EntryPayload::Command(Bytes::from_static(b"put x")),
            EntryPayload::Command(Bytes::new()),
            EntryPayload::Membership(membership()),
        ] {
            let e = Entry {
                term: Term(3),
                index: LogIndex(42),
                payload,
            };
            assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        }
    }

    #[test]
    fn learners_survive_a_round_trip() {
        let m = decode_membership(&encode_membership(&membership())).unwrap();
        assert_eq!(m, membership());
        assert_eq!(m.get(NodeId(7)).unwrap().role, Role::Learner);
    }

    #[test]
    fn hard_state_and_snapshot_meta_round_trip() {
        let hs = HardState {
            term: Term(9),
            vote: Some(NodeId(2)),
            commit: LogIndex(17),
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)).unwrap(), hs);
        let none = HardState::default();
        assert_eq!(decode_hard_state(&encode_hard_state(&none)).unwrap(), none);
        let meta = SnapshotMeta {
            index: LogIndex(5),
            term: Term(2),
            membership: membership(),
        };
        assert_eq!(
            decode_snapshot_meta(&encode_snapshot_meta(&meta)).unwrap(),
            meta
        );
    }

    #[test]
    fn garbage_is_a_typed_error_naming_what_failed() {
        let err = decode_entry(&[0xff, 0xff, 0xff]).unwrap_err();
        assert!(err.to_string().starts_with("log entry"), "{err}");
        let err = decode_entry(&[]).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Missing {
                    field: "payload",
                    ..
                }
            ),
            "{err}"
        );
        let bad_role = StoredMembership {
            members: vec![StoredMember {
                id: 1,
                role: 9,
                context: Bytes::new(),
            }],
        }
        .encode_to_vec();
        assert!(matches!(
            decode_membership(&bad_role),
            Err(DecodeError::Invalid { field: "role", .. })
        ));
    }
}
