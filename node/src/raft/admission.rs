//! What a message must satisfy before the core acts on it.
//!
//! The protocol assumes peers follow it, but bytes from the network are not
//! peers: a corrupted frame, a buggy or outdated build, or a forger can send
//! anything. One such message must never be able to stop or fork the
//! cluster, so [`RaftNode::step`](super::RaftNode::step) refuses, before it
//! changes any state:
//!
//! - messages that are not well formed ([`check_well_formed`]): terms or
//!   indexes beyond [`Term::MAX_VALID`] / [`LogIndex::MAX_VALID`] (no real
//!   cluster gets there, and below them local arithmetic cannot overflow),
//!   entries that do not follow `prev_log_index` one by one, entry terms
//!   that go backwards or exceed the message's term, a snapshot without a
//!   single voter;
//! - messages that are well formed but not believable from this sender now
//!   (checked in `node.rs`, which knows the state): a sender outside the
//!   configuration, a second leader in one term, a TimeoutNow that does not
//!   come from the current leader, an acknowledgement of entries the leader
//!   never had.
//!
//! What this cannot stop is a forger who claims to be a member with a
//! plausible term: that is the transport's job (peer authentication).

use super::message::{AppendRequest, Message, MessageBody};
use super::types::{LogIndex, Term};

/// Why a message was refused. The label names it in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("term beyond the valid range")]
    AbsurdTerm,
    #[error("log index beyond the valid range")]
    AbsurdIndex,
    #[error("entries do not follow the previous index one by one")]
    NonContiguousEntries,
    #[error("entry terms go backwards or exceed the message's term")]
    EntryTermsOutOfOrder,
    #[error("a snapshot whose configuration has no voter")]
    SnapshotWithoutVoters,
    #[error("sender is not a member of the configuration")]
    NotAMember,
    #[error("a second leader in the same term")]
    SecondLeader,
    #[error("TimeoutNow that does not come from the current leader")]
    TimeoutNowNotFromLeader,
    #[error("acknowledges entries beyond the leader's log")]
    AckBeyondLog,
}

impl Refusal {
    /// A short stable name for metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::AbsurdTerm => "absurd_term",
            Refusal::AbsurdIndex => "absurd_index",
            Refusal::NonContiguousEntries => "non_contiguous_entries",
            Refusal::EntryTermsOutOfOrder => "entry_terms_out_of_order",
            Refusal::SnapshotWithoutVoters => "snapshot_without_voters",
            Refusal::NotAMember => "not_a_member",
            Refusal::SecondLeader => "second_leader",
            Refusal::TimeoutNowNotFromLeader => "timeout_now_not_from_leader",
            Refusal::AckBeyondLog => "ack_beyond_log",
        }
    }

    /// Whether no correct peer can ever send such a message, however the
    /// network delays, duplicates or reorders it. The other refusals are
    /// also what a correct but out-of-date peer sends (a removed member
    /// that does not know it yet, a delayed TimeoutNow).
    pub fn is_malformed(self) -> bool {
        !matches!(
            self,
            Refusal::NotAMember | Refusal::TimeoutNowNotFromLeader | Refusal::SecondLeader
        )
    }
}

/// Checks what can be checked of a message without knowing the node's state.
pub fn check_well_formed(m: &Message) -> Result<(), Refusal> {
    if m.term > Term::MAX_VALID {
        return Err(Refusal::AbsurdTerm);
    }
    match &m.body {
        MessageBody::Append(req) => check_append(m.term, req),
        MessageBody::Heartbeat(hb) => index(hb.commit).and(index(hb.leader_commit)),
        MessageBody::InstallSnapshot(s) => {
            index(s.meta.index)?;
            if s.meta.term > m.term {
                return Err(Refusal::EntryTermsOutOfOrder);
            }
            if s.meta.membership.voter_count() == 0 {
                return Err(Refusal::SnapshotWithoutVoters);
            }
            Ok(())
        }
        MessageBody::Vote(v) => {
            index(v.last_log_index)?;
            if v.last_log_term > m.term {
                return Err(Refusal::EntryTermsOutOfOrder);
            }
            Ok(())
        }
        MessageBody::AppendResponse(super::message::AppendResponse::Accepted { match_index }) => {
            index(*match_index)
        }
        MessageBody::AppendResponse(super::message::AppendResponse::Rejected {
            rejected_index,
            hint_index,
            hint_term,
        }) => {
            index(*rejected_index)?;
            index(*hint_index)?;
            if *hint_term > Term::MAX_VALID {
                return Err(Refusal::AbsurdTerm);
            }
            Ok(())
        }
        MessageBody::VoteResponse(_) | MessageBody::HeartbeatResponse(_) => Ok(()),
        MessageBody::TimeoutNow => Ok(()),
    }
}

fn index(i: LogIndex) -> Result<(), Refusal> {
    if i > LogIndex::MAX_VALID {
        Err(Refusal::AbsurdIndex)
    } else {
        Ok(())
    }
}

fn check_append(term: Term, req: &AppendRequest) -> Result<(), Refusal> {
    index(req.prev_log_index)?;
    index(req.leader_commit)?;
    if req.prev_log_term > term {
        return Err(Refusal::EntryTermsOutOfOrder);
    }
    let mut expected = req.prev_log_index;
    let mut last_term = req.prev_log_term;
    for e in &req.entries {
        expected = expected.next();
        if e.index != expected || e.index > LogIndex::MAX_VALID {
            return Err(Refusal::NonContiguousEntries);
        }
        if e.term < last_term || e.term > term {
            return Err(Refusal::EntryTermsOutOfOrder);
        }
        last_term = e.term;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::raft::{Entry, EntryPayload, Heartbeat, Membership, NodeId, Snapshot, SnapshotMeta};

    fn msg(term: u64, body: MessageBody) -> Message {
        Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(term),
            body,
        }
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Command(Bytes::from_static(b"x")),
        }
    }

    fn append(prev: u64, prev_term: u64, entries: Vec<Entry>) -> MessageBody {
        MessageBody::Append(AppendRequest {
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(prev_term),
            entries,
            leader_commit: LogIndex(prev),
        })
    }

    #[test]
    fn a_term_near_the_end_of_u64_is_refused() {
        let hb = MessageBody::Heartbeat(Heartbeat {
            commit: LogIndex(0),
            leader_commit: LogIndex(0),
            read_round: 0,
        });
        assert_eq!(
            check_well_formed(&msg(u64::MAX, hb.clone())),
            Err(Refusal::AbsurdTerm)
        );
        assert_eq!(check_well_formed(&msg(7, hb)), Ok(()));
    }

    #[test]
    fn entries_must_follow_the_previous_index_one_by_one() {
        let ok = append(5, 1, vec![entry(6, 1), entry(7, 2)]);
        assert_eq!(check_well_formed(&msg(2, ok)), Ok(()));
        let gap = append(5, 1, vec![entry(6, 1), entry(8, 1)]);
        assert_eq!(
            check_well_formed(&msg(2, gap)),
            Err(Refusal::NonContiguousEntries)
        );
        let wrong_start = append(5, 1, vec![entry(9, 1)]);
        assert_eq!(
            check_well_formed(&msg(2, wrong_start)),
            Err(Refusal::NonContiguousEntries)
        );
        let wraps = append(u64::MAX, 1, vec![entry(0, 1)]);
        assert_eq!(check_well_formed(&msg(2, wraps)), Err(Refusal::AbsurdIndex));
    }

    #[test]
    fn entry_terms_never_go_backwards_or_beyond_the_message_term() {
        let backwards = append(5, 2, vec![entry(6, 1)]);
        assert_eq!(
            check_well_formed(&msg(2, backwards)),
            Err(Refusal::EntryTermsOutOfOrder)
        );
        let future = append(5, 1, vec![entry(6, 3)]);
        assert_eq!(
            check_well_formed(&msg(2, future)),
            Err(Refusal::EntryTermsOutOfOrder)
        );
    }

    #[test]
    fn a_snapshot_must_name_at_least_one_voter() {
        let snapshot = |membership| {
            MessageBody::InstallSnapshot(Snapshot {
                meta: SnapshotMeta {
                    index: LogIndex(10),
                    term: Term(1),
                    membership,
                },
                data: Bytes::new(),
            })
        };
        assert_eq!(
            check_well_formed(&msg(1, snapshot(Membership::default()))),
            Err(Refusal::SnapshotWithoutVoters)
        );
        let one = Membership::with_voters([(NodeId(1), Bytes::new())]);
        assert_eq!(check_well_formed(&msg(1, snapshot(one))), Ok(()));
    }
}
