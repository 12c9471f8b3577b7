//! Conversions between the core's messages ([`crate::raft::Message`] and
//! friends) and their protobuf form in `proto/raft.proto`.
//!
//! Everything decoded here came from the network: a missing field or an
//! unknown variant is a [`WireError`], never a panic.

use bytes::Bytes;

use crate::raft::{
    AppendRequest, AppendResponse, ConfChangeError, Entry, EntryPayload, Heartbeat,
    HeartbeatResponse, LogIndex, Membership, Message, MessageBody, NodeId, Role, SnapshotMeta,
    Term, VoteRequest, VoteResponse,
};
use crate::server::peer_proto as pb;

/// Why a message from a peer could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed peer message: {0} is missing")]
    Missing(&'static str),
    #[error("malformed peer message: {0}")]
    Invalid(String),
}

impl From<ConfChangeError> for WireError {
    fn from(e: ConfChangeError) -> Self {
        WireError::Invalid(e.to_string())
    }
}

pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        members: m
            .members()
            .map(|(id, member)| pb::Member {
                id: id.get(),
                learner: member.role == Role::Learner,
                context: member.context.to_vec(),
            })
            .collect(),
    }
}

pub fn membership_from_pb(m: pb::Membership) -> Result<Membership, WireError> {
    // Build through the public constructors: voters first, then learners, so
    // the result is exactly the configuration that was sent.
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for member in m.members {
        if member.id == 0 {
            return Err(WireError::Invalid("member id 0".into()));
        }
        let entry = (NodeId(member.id), Bytes::from(member.context));
        if member.learner {
            learners.push(entry);
        } else {
            voters.push(entry);
        }
    }
    let mut out = Membership::with_voters(voters);
    for (id, context) in learners {
        out = out.apply(&crate::raft::ConfChange::AddLearner { id, context })?;
    }
    Ok(out)
}

pub fn meta_to_pb(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        index: meta.index.get(),
        term: meta.term.get(),
        membership: Some(membership_to_pb(&meta.membership)),
    }
}

pub fn meta_from_pb(meta: pb::SnapshotMeta) -> Result<SnapshotMeta, WireError> {
    Ok(SnapshotMeta {
        index: LogIndex(meta.index),
        term: Term(meta.term),
        membership: membership_from_pb(
            meta.membership
                .ok_or(WireError::Missing("snapshot membership"))?,
        )?,
    })
}

fn entry_to_pb(e: &Entry) -> pb::Entry {
    use pb::entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Noop => Payload::Noop(pb::Empty {}),
        EntryPayload::Command(data) => Payload::Command(data.to_vec()),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        term: e.term.get(),
        index: e.index.get(),
        payload: Some(payload),
    }
}

fn entry_from_pb(e: pb::Entry) -> Result<Entry, WireError> {
    use pb::entry::Payload;
    let payload = match e.payload.ok_or(WireError::Missing("entry payload"))? {
        Payload::Noop(_) => EntryPayload::Noop,
        Payload::Command(data) => EntryPayload::Command(Bytes::from(data)),
        Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(m)?),
    };
    if e.index == 0 {
        return Err(WireError::Invalid("entry index 0".into()));
    }
    Ok(Entry {
        term: Term(e.term),
        index: LogIndex(e.index),
        payload,
    })
}

/// Encodes a message for the wire.
pub fn message_to_pb(m: &Message) -> pb::Message {
    use pb::message::Body;
    let body = match &m.body {
        MessageBody::Vote(v) => Body::Vote(pb::VoteRequest {
            pre_vote: v.pre_vote,
            last_log_index: v.last_log_index.get(),
            last_log_term: v.last_log_term.get(),
            transfer: v.transfer,
        }),
        MessageBody::VoteResponse(v) => Body::VoteResponse(pb::VoteResponse {
            pre_vote: v.pre_vote,
            granted: v.granted,
        }),
        MessageBody::Append(a) => Body::Append(pb::AppendRequest {
            prev_log_index: a.prev_log_index.get(),
            prev_log_term: a.prev_log_term.get(),
            entries: a.entries.iter().map(entry_to_pb).collect(),
            leader_commit: a.leader_commit.get(),
        }),
        MessageBody::AppendResponse(r) => Body::AppendResponse(pb::AppendResponse {
            result: Some(match r {
                AppendResponse::Accepted { match_index } => {
                    pb::append_response::Result::Accepted(pb::AppendAccepted {
                        match_index: match_index.get(),
                    })
                }
                AppendResponse::Rejected {
                    rejected_index,
                    hint_index,
                    hint_term,
                } => pb::append_response::Result::Rejected(pb::AppendRejected {
                    rejected_index: rejected_index.get(),
                    hint_index: hint_index.get(),
                    hint_term: hint_term.get(),
                }),
            }),
        }),
        MessageBody::Heartbeat(h) => Body::Heartbeat(pb::Heartbeat {
            commit: h.commit.get(),
            leader_commit: h.leader_commit.get(),
            read_round: h.read_round,
        }),
        MessageBody::HeartbeatResponse(h) => Body::HeartbeatResponse(pb::HeartbeatResponse {
            read_round: h.read_round,
        }),
        MessageBody::InstallSnapshot(s) => Body::InstallSnapshot(meta_to_pb(&s.meta)),
        MessageBody::TimeoutNow => Body::TimeoutNow(pb::Empty {}),
    };
    pb::Message {
        from: m.from.get(),
        to: m.to.get(),
        term: m.term.get(),
        body: Some(body),
    }
}

/// Decodes a message from the wire. An `InstallSnapshot` decodes with empty
/// data: the image travels on the snapshot stream.
pub fn message_from_pb(m: pb::Message) -> Result<Message, WireError> {
    use pb::message::Body;
    if m.from == 0 || m.to == 0 {
        return Err(WireError::Invalid("sender or receiver id 0".into()));
    }
    let body = match m.body.ok_or(WireError::Missing("message body"))? {
        Body::Vote(v) => MessageBody::Vote(VoteRequest {
            pre_vote: v.pre_vote,
            last_log_index: LogIndex(v.last_log_index),
            last_log_term: Term(v.last_log_term),
            transfer: v.transfer,
        }),
        Body::VoteResponse(v) => MessageBody::VoteResponse(VoteResponse {
            pre_vote: v.pre_vote,
            granted: v.granted,
        }),
        Body::Append(a) => MessageBody::Append(AppendRequest {
            prev_log_index: LogIndex(a.prev_log_index),
            prev_log_term: Term(a.prev_log_term),
            entries: a
                .entries
                .into_iter()
                .map(entry_from_pb)
                .collect::<Result<_, _>>()?,
            leader_commit: LogIndex(a.leader_commit),
        }),
        Body::AppendResponse(r) => MessageBody::AppendResponse(
            match r.result.ok_or(WireError::Missing("append result"))? {
                pb::append_response::Result::Accepted(a) => AppendResponse::Accepted {
                    match_index: LogIndex(a.match_index),
                },
                pb::append_response::Result::Rejected(r) => AppendResponse::Rejected {
                    rejected_index: LogIndex(r.rejected_index),
                    hint_index: LogIndex(r.hint_index),
                    hint_term: Term(r.hint_term),
                },
            },
        ),
        Body::Heartbeat(h) => MessageBody::Heartbeat(Heartbeat {
            commit: LogIndex(h.commit),
            leader_commit: LogIndex(h.leader_commit),
            read_round: h.read_round,
        }),
        Body::HeartbeatResponse(h) => MessageBody::HeartbeatResponse(HeartbeatResponse {
            read_round: h.read_round,
        }),
        Body::InstallSnapshot(meta) => MessageBody::InstallSnapshot(crate::raft::Snapshot {
            meta: meta_from_pb(meta)?,
            data: Bytes::new(),
        }),
        Body::TimeoutNow(_) => MessageBody::TimeoutNow,
    };
    Ok(Message {
        from: NodeId(m.from),
        to: NodeId(m.to),
        term: Term(m.term),
        body,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::raft::{ConfChange, Snapshot};

    fn membership() -> Membership {
        Membership::with_voters([
            (NodeId(1), Bytes::from_static(b"{\"name\":\"a\"}")),
            (NodeId(2), Bytes::new()),
        ])
        .apply(&ConfChange::AddLearner {
            id: NodeId(3),
            context: Bytes::from_static(b"c"),
        })
        .unwrap()
    }

    fn round_trip(m: Message) {
        let bytes = message_to_pb(&m).encode_to_vec();
        let decoded = message_from_pb(pb::Message::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(decoded, m);
    }

    fn msg(body: MessageBody) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(7),
            body,
        }
    }

    #[test]
    fn every_message_kind_survives_the_wire() {
        round_trip(msg(MessageBody::Vote(VoteRequest {
            pre_vote: true,
            last_log_index: LogIndex(9),
            last_log_term: Term(6),
            transfer: true,
        })));
        round_trip(msg(MessageBody::VoteResponse(VoteResponse {
            pre_vote: false,
            granted: true,
        })));
        round_trip(msg(MessageBody::Append(AppendRequest {
            prev_log_index: LogIndex(4),
            prev_log_term: Term(3),
            entries: vec![
                Entry {
                    term: Term(7),
                    index: LogIndex(5),
                    payload: EntryPayload::Noop,
                },
                Entry {
                    term: Term(7),
                    index: LogIndex(6),
                    payload: EntryPayload::Command(Bytes::from_static(b"put x")),
                },
                Entry {
                    term: Term(7),
                    index: LogIndex(7),
                    payload: EntryPayload::Membership(membership()),
                },
            ],
            leader_commit: LogIndex(5),
        })));
        round_trip(msg(MessageBody::AppendResponse(AppendResponse::Accepted {
            match_index: LogIndex(7),
        })));
        round_trip(msg(MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected_index: LogIndex(7),
            hint_index: LogIndex(3),
            hint_term: Term(2),
        })));
        round_trip(msg(MessageBody::Heartbeat(Heartbeat {
            commit: LogIndex(3),
            leader_commit: LogIndex(9),
            read_round: 11,
        })));
        round_trip(msg(MessageBody::HeartbeatResponse(HeartbeatResponse {
            read_round: 11,
        })));
        round_trip(msg(MessageBody::InstallSnapshot(Snapshot {
            meta: SnapshotMeta {
                index: LogIndex(100),
                term: Term(5),
                membership: membership(),
            },
            data: Bytes::new(),
        })));
        round_trip(msg(MessageBody::TimeoutNow));
    }

    #[test]
    fn a_message_without_a_body_is_an_error() {
        let m = pb::Message {
            from: 1,
            to: 2,
            term: 1,
            body: None,
        };
        assert_eq!(message_from_pb(m), Err(WireError::Missing("message body")));
    }

    #[test]
    fn an_entry_without_a_payload_is_an_error() {
        let m = pb::Message {
            from: 1,
            to: 2,
            term: 1,
            body: Some(pb::message::Body::Append(pb::AppendRequest {
                entries: vec![pb::Entry {
                    term: 1,
                    index: 1,
                    payload: None,
                }],
                ..Default::default()
            })),
        };
        assert!(message_from_pb(m).is_err());
    }

    #[test]
    fn a_membership_with_id_zero_or_duplicates_is_an_error() {
        let zero = pb::Membership {
            members: vec![pb::Member {
                id: 0,
                learner: false,
                context: vec![],
            }],
        };
        assert!(membership_from_pb(zero).is_err());
        let dup = pb::Membership {
            members: vec![
                pb::Member {
                    id: 1,
                    learner: false,
                    context: vec![],
                },
                pb::Member {
                    id: 1,
                    learner: true,
                    context: vec![],
                },
            ],
        };
        assert!(membership_from_pb(dup).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(m) = pb::Message::decode(data.as_slice()) {
                let _ = message_from_pb(m);
            }
        }

        #[test]
        fn commands_of_any_content_round_trip(cmd in proptest::collection::vec(any::<u8>(), 0..64), term in 1u64..1000, index in 1u64..1000) {
            round_trip(msg(MessageBody::Append(AppendRequest {
                prev_log_index: LogIndex(index - 1),
                prev_log_term: Term(term),
                entries: vec![Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Command(Bytes::from(cmd)) }],
                leader_commit: LogIndex(0),
            })));
        }
    }
}
