//! Majority arithmetic: who won a vote, and which index a majority holds.
//!
//! Kept apart from the protocol so that the two questions every Raft bug
//! eventually comes down to ("is this a quorum?", "what is committed?") have
//! one answer, tested on its own.

use std::collections::BTreeMap;

use super::types::{LogIndex, NodeId};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority has granted.
    Won,
    /// A majority has refused, or cannot grant any more.
    Lost,
    /// Neither yet.
    Pending,
}

/// How many voters make a majority of `voters`.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// Counts the votes of `voters`; `votes` maps a voter to its answer, and a
/// voter that has not answered is absent.
pub fn vote_result(
    voters: impl IntoIterator<Item = NodeId>,
    votes: &BTreeMap<NodeId, bool>,
) -> VoteResult {
    let (mut granted, mut rejected, mut total) = (0, 0, 0);
    for id in voters {
        total += 1;
        match votes.get(&id) {
            Some(true) => granted += 1,
            Some(false) => rejected += 1,
            None => {}
        }
    }
    let need = majority(total);
    if granted >= need {
        VoteResult::Won
    } else if total - rejected < need {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// The largest index that a majority of voters hold: sort the match indexes
/// in descending order and take the one at position `majority - 1`.
/// A configuration without voters commits nothing.
pub fn committed_index(match_indexes: impl IntoIterator<Item = LogIndex>) -> LogIndex {
    let mut indexes: Vec<LogIndex> = match_indexes.into_iter().collect();
    if indexes.is_empty() {
        return LogIndex::ZERO;
    }
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[majority(indexes.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn majorities() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn a_vote_is_won_by_a_majority_and_lost_once_a_majority_is_out_of_reach() {
        let mut votes = BTreeMap::new();
        votes.insert(NodeId(1), true);
        assert_eq!(vote_result(ids(5), &votes), VoteResult::Pending);
        votes.insert(NodeId(2), true);
        votes.insert(NodeId(3), false);
        assert_eq!(vote_result(ids(5), &votes), VoteResult::Pending);
        votes.insert(NodeId(4), false);
        assert_eq!(vote_result(ids(5), &votes), VoteResult::Pending);
        votes.insert(NodeId(5), false);
        assert_eq!(vote_result(ids(5), &votes), VoteResult::Lost);
        votes.insert(NodeId(5), true);
        assert_eq!(vote_result(ids(5), &votes), VoteResult::Won);
    }

    #[test]
    fn votes_of_non_voters_do_not_count() {
        let mut votes = BTreeMap::new();
        votes.insert(NodeId(9), true);
        votes.insert(NodeId(8), true);
        votes.insert(NodeId(1), true);
        assert_eq!(vote_result(ids(3), &votes), VoteResult::Pending);
    }

    #[test]
    fn the_committed_index_is_what_a_majority_holds() {
        let c = |v: &[u64]| committed_index(v.iter().map(|&i| LogIndex(i)));
        assert_eq!(c(&[5]), LogIndex(5));
        assert_eq!(c(&[5, 3, 4]), LogIndex(4));
        assert_eq!(c(&[5, 3]), LogIndex(3));
        assert_eq!(c(&[9, 1, 1, 9, 5]), LogIndex(5));
        assert_eq!(c(&[]), LogIndex(0));
    }
}
