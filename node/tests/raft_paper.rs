//! Scenarios from the weekend hands-on and the Raft paper, on a simulated
//! cluster: five nodes elect one leader; an isolated leader is replaced;
//! three of five down stops all progress; Figure 7's followers converge;
//! Figure 8's trap is avoided.

// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use bytes::Bytes;
use raftkv::raft::harness::{Cluster, ClusterOptions, NodeSetup};
use raftkv::raft::{LogIndex, MessageBody, NodeId, RoleState, Term};

fn cluster(n: u64) -> Cluster {
    Cluster::new(ClusterOptions::new(n, 42))
}

fn leader_of(c: &Cluster) -> NodeId {
    c.leader().expect("a leader")
}

fn term_of(c: &Cluster, id: NodeId) -> Term {
    c.node(id).expect("node is up").status().term
}

fn commit_of(c: &Cluster, id: NodeId) -> LogIndex {
    c.node(id).expect("node is up").status().commit_index
}

/// Proposes on the leader and runs until it is committed there.
fn commit_one(c: &mut Cluster, data: &'static str) -> LogIndex {
    let l = leader_of(c);
    let p = c.propose(l, Bytes::from_static(data.as_bytes())).unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 100));
    p.index
}

#[test]
fn five_nodes_elect_exactly_one_leader() {
    let mut c = cluster(5);
    assert!(c.run_until(|c| c.leader().is_some(), 100));
    c.run(200);
    let leaders: Vec<NodeId> = c
        .up_ids()
        .into_iter()
        .filter(|id| c.node(*id).unwrap().status().role == RoleState::Leader)
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {leaders:?}");
    let l = leaders[0];
    for id in c.up_ids() {
        let s = c.node(id).unwrap().status();
        assert_eq!(s.leader, Some(l), "node {id} follows the leader");
        assert_eq!(s.term, term_of(&c, l));
    }
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

#[test]
fn an_isolated_leader_is_replaced_and_its_uncommitted_entries_are_discarded() {
    let mut c = cluster(5);
    assert!(c.run_until(|c| c.leader().is_some(), 100));
    commit_one(&mut c, "before");
    let old = leader_of(&c);
    let old_term = term_of(&c, old);

    c.isolate(old);
    // The isolated leader still accepts proposals, but cannot commit them.
    let lost = c.propose(old, Bytes::from_static(b"lost")).unwrap();
    assert!(c.run_until(
        |c| {
            c.leader()
                .is_some_and(|l| l != old && term_of(c, l) > old_term)
        },
        200
    ));
    let new = leader_of(&c);
    let kept = c.propose(new, Bytes::from_static(b"kept")).unwrap();
    assert!(c.run_until(|c| c.committed_term(kept.index) == Some(kept.term), 100));

    c.heal();
    assert!(c.run_until(
        |c| c.node(old).unwrap().status().role == RoleState::Follower
            && c.node(old).unwrap().status().commit_index >= kept.index,
        200
    ));
    assert_eq!(term_of(&c, old), term_of(&c, new));
    // The entry the old leader appended at `lost.index` was replaced by the
    // new leader's, and was never committed.
    let s = c.storage(old).unwrap();
    use raftkv::raft::Storage;
    assert_ne!(s.term(lost.index).unwrap(), lost.term);
    assert_ne!(c.committed_term(lost.index), Some(lost.term));
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

#[test]
fn with_three_of_five_down_the_two_left_make_no_progress_and_their_term_stays() {
    let mut c = cluster(5);
    assert!(c.run_until(|c| c.leader().is_some(), 100));
    commit_one(&mut c, "before");
    let l = leader_of(&c);
    // Keep the leader among the survivors: it must notice it lost quorum.
    let others: Vec<NodeId> = c.ids().into_iter().filter(|id| *id != l).collect();
    let survivors = [l, others[0]];
    for id in &others[1..] {
        c.crash(*id);
    }
    let commit_before = commit_of(&c, l);
    let _ = c.propose(l, Bytes::from_static(b"never"));

    // CheckQuorum: the leader steps down within two election timeouts.
    assert!(c.run_until(|c| c.leader().is_none(), 40));
    let terms: Vec<Term> = survivors.iter().map(|id| term_of(&c, *id)).collect();
    c.run(1000);
    for (id, term) in survivors.iter().zip(&terms) {
        let s = c.node(*id).unwrap().status();
        assert_ne!(s.role, RoleState::Leader, "node {id} must not lead");
        assert_eq!(
            s.commit_index, commit_before,
            "node {id} committed nothing new"
        );
        assert_eq!(
            s.term, *term,
            "PreVote keeps node {id}'s term from climbing"
        );
    }

    for id in &others[1..] {
        c.restart(*id);
    }
    assert!(c.run_until(|c| c.leader().is_some(), 200));
    commit_one(&mut c, "after");
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

#[test]
fn without_pre_vote_a_minority_keeps_raising_its_term() {
    // The contrast that shows what PreVote buys: the same minority, without
    // it, campaigns in ever higher terms and disrupts the cluster on return.
    let mut opts = ClusterOptions::new(5, 42);
    opts.pre_vote = false;
    let mut c = Cluster::new(opts);
    assert!(c.run_until(|c| c.leader().is_some(), 100));
    let l = leader_of(&c);
    let others: Vec<NodeId> = c.ids().into_iter().filter(|id| *id != l).collect();
    for id in &others[1..] {
        c.crash(*id);
    }
    let before = term_of(&c, others[0]);
    c.run(1000);
    assert!(term_of(&c, others[0]) > before);
}

/// Raft paper, Figure 7: when the leader at the top comes to power, any of
/// the followers (a)–(f) could be in its cluster; each converges to the
/// leader's log.
#[test]
fn figure_7_followers_with_missing_extra_and_conflicting_entries_converge() {
    // Every node has seen term 7 (node (d) led it), so the new leader runs
    // for term 8, as in the figure.
    let setups = vec![
        // The leader-to-be.
        NodeSetup {
            id: 1,
            log_terms: vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6],
            term: 7,
        },
        // (a) missing one entry
        NodeSetup {
            id: 2,
            log_terms: vec![1, 1, 1, 4, 4, 5, 5, 6, 6],
            term: 7,
        },
        // (b) missing many
        NodeSetup {
            id: 3,
            log_terms: vec![1, 1, 1, 4],
            term: 7,
        },
        // (c) one extra entry of term 6
        NodeSetup {
            id: 4,
            log_terms: vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
            term: 7,
        },
        // (d) extra entries of term 7
        NodeSetup {
            id: 5,
            log_terms: vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
            term: 7,
        },
        // (e) missing entries and extra entries of term 4
        NodeSetup {
            id: 6,
            log_terms: vec![1, 1, 1, 4, 4, 4, 4],
            term: 7,
        },
        // (f) many entries of terms 2 and 3
        NodeSetup {
            id: 7,
            log_terms: vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
            term: 7,
        },
    ];
    let mut c = Cluster::with_setups(ClusterOptions::new(7, 7), setups);
    assert!(c.elect(NodeId(1), 200), "node 1 wins with a, b, e, f");
    let l = NodeId(1);
    commit_one(&mut c, "after");
    let leader_log = c.log_terms(l);
    assert!(c.run_until(
        |c| c.ids().iter().all(|id| c.log_terms(*id) == leader_log),
        300
    ));
    // The leader's entries 1..=10 survive everywhere; (c)'s and (d)'s extra
    // entries, and (e)'s and (f)'s conflicting ones, are gone.
    assert_eq!(&leader_log[..10], &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

/// Raft paper, Figure 8: a leader must not commit an entry from an earlier
/// term by counting replicas, because a later leader may still overwrite it.
#[test]
fn figure_8_an_entry_from_an_earlier_term_is_never_committed_by_counting_replicas() {
    // State (b) of the figure: S1 replicated index 2 (term 2) to S2 and
    // crashed; S5 was elected in term 3 and appended index 2 (term 3).
    let setups = vec![
        NodeSetup {
            id: 1,
            log_terms: vec![1, 2],
            term: 3,
        },
        NodeSetup {
            id: 2,
            log_terms: vec![1, 2],
            term: 3,
        },
        NodeSetup {
            id: 3,
            log_terms: vec![1],
            term: 3,
        },
        NodeSetup {
            id: 4,
            log_terms: vec![1],
            term: 3,
        },
        NodeSetup {
            id: 5,
            log_terms: vec![1, 3],
            term: 3,
        },
    ];
    let mut opts = ClusterOptions::new(5, 8);
    // One entry per message, so S3 can hold index 2 without index 3.
    opts.max_message_bytes = 1;
    // The figure predates CheckQuorum's leader leases: with them, S2–S4
    // would refuse S5 for as long as they remember S1.
    opts.check_quorum = false;
    let mut c = Cluster::with_setups(opts, setups);

    // (c) S5 is away; S1 is elected in term 4 and appends its no-op at
    // index 3. Index 3 is never delivered, but index 2 reaches S3: it is now
    // on a majority (S1, S2, S3).
    c.isolate(NodeId(5));
    // Index 3 is held back from any node that already has index 2 (which is
    // what lets a follower hold 2 without 3); appends that will be rejected
    // anyway pass, so the leader can find out what each follower lacks.
    let has_index_2 = Rc::new(RefCell::new(BTreeSet::from([NodeId(1), NodeId(2)])));
    let index_3_held_back = Rc::new(Cell::new(0u32));
    let (holders, counter) = (has_index_2.clone(), index_3_held_back.clone());
    c.set_filter(Some(Box::new(move |m| {
        let MessageBody::Append(a) = &m.body else {
            return false;
        };
        if a.entries.iter().any(|e| e.index == LogIndex(3)) && holders.borrow().contains(&m.to) {
            counter.set(counter.get() + 1);
            return true;
        }
        if a.entries.iter().any(|e| e.index == LogIndex(2)) {
            holders.borrow_mut().insert(m.to);
        }
        false
    })));
    assert!(c.elect(NodeId(1), 200));
    assert_eq!(term_of(&c, NodeId(1)), Term(4));
    assert!(c.run_until(|c| c.log_terms(NodeId(3)) == vec![1, 2], 100));
    c.run(50);
    assert!(
        index_3_held_back.get() > 0,
        "the leader did try to send index 3"
    );
    assert!(
        commit_of(&c, NodeId(1)) < LogIndex(2),
        "index 2 (term 2) is on a majority but must not be committed"
    );

    // (d) S1 crashes; S5 comes back and is elected (S2, S3, S4 vote for its
    // log ending in term 3) and overwrites index 2 everywhere.
    c.crash(NodeId(1));
    c.set_filter(None);
    c.heal();
    assert!(c.elect(NodeId(5), 300));
    commit_one(&mut c, "after");
    assert_eq!(c.committed_term(LogIndex(2)), Some(Term(3)));
    for id in [2, 3, 4, 5] {
        assert_eq!(c.log_terms(NodeId(id))[1], 3, "S{id} holds S5's index 2");
    }
    assert!(c.violation().is_none(), "{:?}", c.violation());
}
