//! One test (or a few) per capability of the consensus core: elections,
//! PreVote and CheckQuorum, the leader's no-op, replication and fast
//! back-tracking, pipelining and batching, learners and membership changes,
//! leadership transfer, ReadIndex, and snapshots.

// Test helpers may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use raftkv::raft::harness::{Cluster, ClusterOptions, NodeSetup};
use raftkv::raft::{
    AppendRequest, AppendResponse, ConfChange, Config, EntryPayload, Heartbeat, LogIndex,
    MemStorage, Membership, Message, MessageBody, NodeId, ProposeError, RaftError, RaftNode,
    Refusal, RoleState, Storage, Term, VoteRequest,
};

fn elected(n: u64, seed: u64) -> (Cluster, NodeId) {
    let mut c = Cluster::new(ClusterOptions::new(n, seed));
    assert!(c.run_until(|c| c.leader().is_some(), 200));
    let l = c.leader().unwrap();
    // Let the no-op commit, so followers are in steady replication.
    let p = c.propose(l, Bytes::from_static(b"warm-up")).unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 100));
    (c, l)
}

fn status(c: &Cluster, id: NodeId) -> raftkv::raft::Status {
    c.node(id).unwrap().status()
}

/// Whether leader `l` knows that `id` holds its whole log.
fn caught_up(c: &Cluster, l: NodeId, id: NodeId) -> bool {
    let leader = c.node(l).unwrap();
    let last = leader.status().last_log_index;
    leader
        .progress()
        .iter()
        .any(|(p, pr)| *p == id && pr.match_index == last)
}

fn counter(
    c: &mut Cluster,
    pred: impl Fn(&Message) -> bool + 'static,
    drop: bool,
) -> Rc<Cell<u32>> {
    let n = Rc::new(Cell::new(0u32));
    let k = n.clone();
    c.set_filter(Some(Box::new(move |m| {
        if pred(m) {
            k.set(k.get() + 1);
            return drop;
        }
        false
    })));
    n
}

fn three_member_node(id: u64, seed: u64) -> RaftNode<MemStorage> {
    let m = Membership::with_voters((1..=3).map(|i| (NodeId(i), Bytes::new())));
    let mut config = Config::new(NodeId(id));
    config.election_ticks = 10;
    config.heartbeat_ticks = 2;
    config.seed = seed;
    RaftNode::new(config, MemStorage::new(m)).unwrap()
}

/// Carries out a `Ready` as a driver must (persist, then hand back the
/// messages to send) and advances.
fn drive(n: &mut RaftNode<MemStorage>) -> Vec<Message> {
    let rd = n.ready();
    if let Some(s) = rd.snapshot {
        n.storage_mut().apply_snapshot(s);
    }
    n.storage_mut().append(&rd.entries).unwrap();
    if let Some(hs) = rd.hard_state {
        n.storage_mut().set_hard_state(hs);
    }
    n.advance();
    rd.messages
}

fn vote_request(from: u64, to: u64, term: u64, last_index: u64, last_term: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body: MessageBody::Vote(VoteRequest {
            pre_vote: false,
            last_log_index: LogIndex(last_index),
            last_log_term: Term(last_term),
            transfer: false,
        }),
    }
}

// ------------------------------------------------------------- 1. election

#[test]
fn a_vote_is_handed_to_the_driver_to_persist_together_with_the_grant() {
    let mut n = three_member_node(1, 1);
    n.step(vote_request(2, 1, 1, 0, 0)).unwrap();
    let rd = n.ready();
    let hs = rd.hard_state.expect("the vote changes the hard state");
    assert_eq!(hs.vote, Some(NodeId(2)));
    assert_eq!(hs.term, Term(1));
    // The grant is in the same Ready, which the driver persists before it
    // sends anything.
    assert!(rd.messages.iter().any(|m| matches!(
        m.body,
        MessageBody::VoteResponse(ref r) if r.granted && m.to == NodeId(2)
    )));
    n.advance();
    // One vote per term: another candidate in term 1 is refused.
    n.step(vote_request(3, 1, 1, 0, 0)).unwrap();
    let rd = n.ready();
    assert!(rd.messages.iter().any(|m| matches!(
        m.body,
        MessageBody::VoteResponse(ref r) if !r.granted && m.to == NodeId(3)
    )));
}

#[test]
fn a_candidate_whose_log_is_behind_is_refused() {
    let setups = vec![
        NodeSetup {
            id: 1,
            log_terms: vec![1, 2],
            term: 2,
        },
        NodeSetup {
            id: 2,
            log_terms: vec![1],
            term: 2,
        },
        NodeSetup {
            id: 3,
            log_terms: vec![1, 2],
            term: 2,
        },
    ];
    let mut c = Cluster::with_setups(ClusterOptions::new(3, 3), setups);
    // Node 2 campaigns first but nobody with a newer log votes for it.
    assert!(!c.elect(NodeId(2), 60));
    assert!(c.elect(NodeId(1), 100));
}

#[test]
fn election_timeouts_are_randomized_by_the_seed_within_one_to_two_timeouts() {
    let first_campaign = |seed| {
        let mut n = three_member_node(1, seed);
        for tick in 1..=40 {
            n.tick();
            if n.status().role != RoleState::Follower {
                return tick;
            }
        }
        panic!("no campaign within 40 ticks");
    };
    let ticks: Vec<u32> = (0..20).map(first_campaign).collect();
    assert!(ticks.iter().all(|t| (10..20).contains(t)), "{ticks:?}");
    assert!(
        ticks.iter().any(|t| *t != ticks[0]),
        "different seeds differ: {ticks:?}"
    );
    assert_eq!(
        first_campaign(7),
        first_campaign(7),
        "one seed, one schedule"
    );
}

// --------------------------------------------------- 2. PreVote, CheckQuorum

#[test]
fn a_partitioned_node_does_not_raise_the_term_of_a_healthy_cluster_when_it_returns() {
    let (mut c, l) = elected(3, 5);
    let term = status(&c, l).term;
    let follower = c.ids().into_iter().find(|id| *id != l).unwrap();
    c.isolate(follower);
    c.run(500);
    assert_eq!(
        status(&c, follower).term,
        term,
        "PreVote: no term inflation"
    );
    c.heal();
    c.run(100);
    assert_eq!(c.leader(), Some(l), "the leader is undisturbed");
    assert_eq!(status(&c, l).term, term);
    assert_eq!(status(&c, follower).leader, Some(l));
}

#[test]
fn a_leader_that_loses_its_quorum_steps_down() {
    let (mut c, l) = elected(5, 6);
    c.isolate(l);
    // CheckQuorum looks once per election timeout (10 ticks here).
    assert!(c.run_until(|c| status(c, l).role != RoleState::Leader, 25));
}

// ------------------------------------------------------ 3. no-op and commit

#[test]
fn a_new_leader_starts_its_term_with_a_noop() {
    let (c, l) = elected(3, 7);
    let s = c.storage(l).unwrap();
    let term = status(&c, l).term;
    let entries = s
        .entries(LogIndex(1), s.last_index().unwrap().next(), None)
        .unwrap();
    let first_of_term = entries.iter().find(|e| e.term == term).unwrap();
    assert_eq!(first_of_term.payload, EntryPayload::Noop);
}

#[test]
fn a_leader_counts_itself_toward_commit_only_once_its_write_is_durable() {
    let m = Membership::with_voters([(NodeId(1), Bytes::new())]);
    let mut config = Config::new(NodeId(1));
    config.election_ticks = 10;
    config.heartbeat_ticks = 2;
    let mut n = RaftNode::new(config, MemStorage::new(m)).unwrap();
    while n.status().role != RoleState::Leader {
        n.tick();
    }
    drive(&mut n);
    drive(&mut n);
    let p = n.propose(Bytes::from_static(b"x")).unwrap();
    let rd = n.ready();
    assert!(rd.entries.iter().any(|e| e.index == p.index), "to persist");
    assert!(
        rd.committed_entries.iter().all(|e| e.index < p.index),
        "not committed before it is durable, even by a single voter"
    );
    n.storage_mut().append(&rd.entries).unwrap();
    if let Some(hs) = rd.hard_state {
        n.storage_mut().set_hard_state(hs);
    }
    n.advance();
    let rd = n.ready();
    assert!(rd.committed_entries.iter().any(|e| e.index == p.index));
}

// ----------------------------------------------------------- 4. replication

#[test]
fn fast_back_tracking_skips_a_whole_conflicting_term_in_one_round_trip() {
    let mut leader_log = vec![1];
    leader_log.extend([3; 50]);
    let mut conflicting = vec![1];
    conflicting.extend([2; 50]);
    let setups = vec![
        NodeSetup {
            id: 1,
            log_terms: leader_log.clone(),
            term: 3,
        },
        NodeSetup {
            id: 2,
            log_terms: conflicting,
            term: 3,
        },
        NodeSetup {
            id: 3,
            log_terms: leader_log,
            term: 3,
        },
    ];
    let mut c = Cluster::with_setups(ClusterOptions::new(3, 9), setups);
    let rejections = counter(
        &mut c,
        |m| {
            m.from == NodeId(2)
                && matches!(
                    m.body,
                    MessageBody::AppendResponse(AppendResponse::Rejected { .. })
                )
        },
        false,
    );
    assert!(c.elect(NodeId(1), 100));
    assert!(c.run_until(|c| c.log_terms(NodeId(2)) == c.log_terms(NodeId(1)), 200));
    // One index per round trip would take 50.
    assert!(rejections.get() <= 2, "{} rejections", rejections.get());
}

#[test]
fn followers_learn_the_commit_index_and_apply_up_to_it() {
    let (mut c, l) = elected(5, 10);
    let mut last = None;
    for i in 0..20 {
        last = Some(c.propose(l, Bytes::from(format!("v{i}"))).unwrap());
    }
    let p = last.unwrap();
    assert!(c.run_until(|c| c.ids().iter().all(|id| c.applied(*id) >= p.index), 100));
    for id in c.ids() {
        assert!(status(&c, id).commit_index >= p.index);
    }
}

#[test]
fn a_leader_missing_an_entry_is_never_asked_to_overwrite_committed_entries() {
    let (mut c, l) = elected(3, 11);
    let p = c.propose(l, Bytes::from_static(b"x")).unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 50));
    c.run(50);
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

// ------------------------------------------------ 5. pipelining and batching

#[test]
fn replication_is_pipelined_up_to_the_in_flight_window() {
    let mut opts = ClusterOptions::new(3, 12);
    opts.max_inflight = 4;
    opts.max_message_bytes = 1; // one entry per message
    let mut c = Cluster::new(opts);
    assert!(c.run_until(|c| c.leader().is_some(), 200));
    let l = c.leader().unwrap();
    let p = c.propose(l, Bytes::from_static(b"warm-up")).unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 100));
    let follower = c.ids().into_iter().find(|id| *id != l).unwrap();
    let sent = counter(
        &mut c,
        move |m| {
            m.to == follower && matches!(&m.body, MessageBody::Append(a) if !a.entries.is_empty())
        },
        false,
    );
    // Ten proposals within one tick: no acknowledgement can arrive yet.
    for i in 0..10 {
        c.propose(l, Bytes::from(format!("p{i}"))).unwrap();
    }
    assert_eq!(sent.get(), 4, "the window bounds what is in flight");
    let last = c.node(l).unwrap().status().last_log_index;
    assert!(c.run_until(|c| c.applied(follower) >= last, 100));
}

#[test]
fn a_probing_follower_gets_one_append_at_a_time() {
    let mut c = Cluster::new(ClusterOptions::new(3, 13));
    // Right after the election every follower is probed.
    assert!(c.run_until(|c| c.leader().is_some(), 200));
    let l = c.leader().unwrap();
    let follower = c.ids().into_iter().find(|id| *id != l).unwrap();
    let sent = counter(
        &mut c,
        move |m| m.to == follower && matches!(m.body, MessageBody::Append(_)),
        false,
    );
    // The no-op's append is already in flight; proposals add nothing until
    // the probe is answered.
    for i in 0..5 {
        c.propose(l, Bytes::from(format!("p{i}"))).unwrap();
    }
    assert_eq!(sent.get(), 0);
}

#[test]
fn propose_batch_places_many_commands_in_one_append() {
    let mut n = three_member_node(1, 1);
    // Win an election by hand: campaign, then two grants.
    for _ in 0..40 {
        n.tick();
        if n.status().role != RoleState::Follower {
            break;
        }
    }
    drive(&mut n);
    for round in 0..2 {
        let term = n.status().term;
        let pre_vote = n.status().role == RoleState::PreCandidate;
        for voter in [2, 3] {
            n.step(Message {
                from: NodeId(voter),
                to: NodeId(1),
                term: if pre_vote { term.next() } else { term },
                body: MessageBody::VoteResponse(raftkv::raft::VoteResponse {
                    pre_vote,
                    granted: true,
                }),
            })
            .unwrap();
        }
        drive(&mut n);
        if n.status().role == RoleState::Leader {
            break;
        }
        assert_eq!(round, 0, "leader after the pre-vote and the vote");
    }
    assert_eq!(n.status().role, RoleState::Leader);
    // Acknowledge the no-op so both followers are replicating.
    let noop = n.status().last_log_index;
    for f in [2, 3] {
        n.step(Message {
            from: NodeId(f),
            to: NodeId(1),
            term: n.status().term,
            body: MessageBody::AppendResponse(AppendResponse::Accepted { match_index: noop }),
        })
        .unwrap();
    }
    drive(&mut n);
    let batch: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("{i:04}"))).collect();
    let placed = n.propose_batch(batch).unwrap();
    assert_eq!(placed.len(), 100);
    let messages = drive(&mut n);
    let appends: Vec<&Message> = messages
        .iter()
        .filter(|m| matches!(&m.body, MessageBody::Append(a) if !a.entries.is_empty()))
        .collect();
    let shape: Vec<(u64, usize)> = appends
        .iter()
        .map(|m| {
            (
                m.to.0,
                match &m.body {
                    MessageBody::Append(a) => a.entries.len(),
                    _ => 0,
                },
            )
        })
        .collect();
    assert_eq!(appends.len(), 2, "one message per follower: {shape:?}");
    for m in appends {
        let MessageBody::Append(a) = &m.body else {
            unreachable!()
        };
        assert_eq!(a.entries.len(), 100);
    }
}

#[test]
fn a_heartbeat_answer_reopens_a_window_full_of_lost_messages() {
    let mut opts = ClusterOptions::new(3, 15);
    opts.max_inflight = 1;
    let mut c = Cluster::new(opts);
    assert!(c.run_until(|c| c.leader().is_some(), 200));
    let l = c.leader().unwrap();
    let p = c.propose(l, Bytes::from_static(b"warm-up")).unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 100));
    let follower = c.ids().into_iter().find(|id| *id != l).unwrap();
    // Lose every append to the follower for a while.
    let _lost = counter(
        &mut c,
        move |m| m.to == follower && matches!(m.body, MessageBody::Append(_)),
        true,
    );
    let q = c.propose(l, Bytes::from_static(b"lost once")).unwrap();
    c.run(5);
    c.set_filter(None);
    assert!(c.run_until(|c| c.applied(follower) >= q.index, 100));
}

// ------------------------------------------------- 6. learners, membership

#[test]
fn a_learner_gets_the_log_but_neither_votes_nor_counts_toward_commit() {
    let (mut c, l) = elected(3, 16);
    let learner = NodeId(4);
    c.change_membership(
        l,
        ConfChange::AddLearner {
            id: learner,
            context: Bytes::from_static(b"node-4"),
        },
    )
    .unwrap();
    c.add_empty_node(learner);
    let p = c
        .propose(l, Bytes::from_static(b"to the learner too"))
        .unwrap();
    assert!(c.run_until(|c| c.applied(learner) >= p.index, 200));
    assert!(c.node(learner).unwrap().membership().is_learner(learner));

    // With both other voters cut off, leader + learner are not a majority.
    for id in c.ids() {
        if id != l && id != learner {
            c.isolate(id);
        }
    }
    let q = c.propose(l, Bytes::from_static(b"stuck")).unwrap();
    c.run(8);
    assert!(
        c.committed_term(q.index).is_none(),
        "a learner is not a voter"
    );
    assert!(c.applied(learner) < q.index);
}

/// A voter whose disk was wiped comes back under the same id with an empty
/// log, withholding its votes (as a node that joins with a new data
/// directory does). Its vote must not elect a leader that lacks an entry
/// only its lost data had acknowledged; removed and added back as a
/// learner, it votes again.
#[test]
fn a_wiped_voter_withholds_its_vote_until_added_back_as_a_learner() {
    let (mut c, l) = elected(3, 31);
    let others: Vec<NodeId> = c.ids().into_iter().filter(|i| *i != l).collect();
    let (b, w) = (others[0], others[1]);
    // An entry committed by the leader and w alone.
    c.isolate(b);
    let p = c.propose(l, Bytes::from_static(b"on l and w")).unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 100));
    // w loses its disk, the leader goes down, b is back.
    c.wipe(w);
    c.crash(l);
    c.heal();
    c.run(300);
    // b lacks the entry: w's vote would have made it leader (a broken
    // Leader Completeness, which the harness reports).
    assert_eq!(c.leader(), None);
    assert!(c.violation().is_none(), "{:?}", c.violation());
    assert!(c.node(w).unwrap().withholding_votes());

    // The old leader returns and removes w, then adds it back as a learner.
    c.restart(l);
    assert!(c.run_until(|c| c.leader().is_some(), 300));
    let leader = c.leader().unwrap();
    // A new leader changes the configuration once its term has a commit.
    let q = c.propose(leader, Bytes::from_static(b"new term")).unwrap();
    assert!(c.run_until(|c| c.committed_term(q.index) == Some(q.term), 100));
    c.change_membership(leader, ConfChange::Remove { id: w })
        .unwrap();
    assert!(c.run_until(
        |c| !c.node(leader).unwrap().membership_change_pending(),
        100
    ));
    assert!(c.node(w).unwrap().withholding_votes());
    c.change_membership(
        leader,
        ConfChange::AddLearner {
            id: w,
            context: Bytes::new(),
        },
    )
    .unwrap();
    assert!(c.run_until(|c| !c.node(w).unwrap().withholding_votes(), 100));
    assert!(c.run_until(|c| caught_up(c, leader, w), 100));
    c.change_membership(leader, ConfChange::Promote { id: w })
        .unwrap();
    assert!(c.run_until(
        |c| !c.node(leader).unwrap().membership_change_pending(),
        100
    ));
    // A voter again: with the leader down, w and the third member elect one.
    c.crash(leader);
    assert!(c.run_until(|c| c.leader().is_some(), 300));
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

#[test]
fn only_one_membership_change_is_in_flight_at_a_time() {
    let (mut c, l) = elected(3, 17);
    c.change_membership(
        l,
        ConfChange::AddLearner {
            id: NodeId(4),
            context: Bytes::new(),
        },
    )
    .unwrap();
    assert_eq!(
        c.change_membership(
            l,
            ConfChange::AddLearner {
                id: NodeId(5),
                context: Bytes::new()
            }
        ),
        Err(ProposeError::MembershipChangePending)
    );
    c.add_empty_node(NodeId(4));
    assert!(c.run_until(|c| !c.node(l).unwrap().membership_change_pending(), 50));
    assert!(c.run_until(|c| caught_up(c, l, NodeId(4)), 50));
    c.change_membership(l, ConfChange::Promote { id: NodeId(4) })
        .unwrap();
    assert!(c.run_until(|c| !c.node(l).unwrap().membership_change_pending(), 50));
    assert!(c.node(l).unwrap().membership().is_voter(NodeId(4)));
    // The last voter cannot be removed; a missing member cannot be.
    assert!(matches!(
        c.change_membership(l, ConfChange::Remove { id: NodeId(9) }),
        Err(ProposeError::ConfChange(_))
    ));
}

#[test]
fn a_configuration_takes_effect_when_appended_not_when_committed() {
    let (mut c, l) = elected(3, 18);
    for id in c.ids() {
        if id != l {
            c.isolate(id);
        }
    }
    c.change_membership(
        l,
        ConfChange::AddLearner {
            id: NodeId(4),
            context: Bytes::new(),
        },
    )
    .unwrap();
    let node = c.node(l).unwrap();
    assert!(node.membership_change_pending(), "not committed");
    assert!(node.membership().is_learner(NodeId(4)), "but in force");
}

#[test]
fn removing_the_leader_hands_leadership_over_once_the_removal_commits() {
    let (mut c, l) = elected(3, 19);
    let p = c
        .change_membership(l, ConfChange::Remove { id: l })
        .unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 100));
    assert!(c.run_until(|c| c.leader().is_some_and(|n| n != l), 100));
    let new = c.leader().unwrap();
    c.retire(l);
    let q = c.propose(new, Bytes::from_static(b"after")).unwrap();
    assert!(c.run_until(|c| c.committed_term(q.index) == Some(q.term), 100));
    assert_eq!(c.node(new).unwrap().membership().voter_count(), 2);
}

// ------------------------------------------------ 7. leadership transfer

#[test]
fn leadership_is_transferred_with_timeout_now() {
    let (mut c, l) = elected(3, 20);
    let to = c.ids().into_iter().find(|id| *id != l).unwrap();
    let term = status(&c, l).term;
    c.transfer_leader(l, to).unwrap();
    assert!(c.run_until(|c| c.leader() == Some(to), 20));
    assert!(status(&c, to).term > term);
}

#[test]
fn transfer_to_a_learner_is_refused() {
    let (mut c, l) = elected(3, 21);
    c.change_membership(
        l,
        ConfChange::AddLearner {
            id: NodeId(4),
            context: Bytes::new(),
        },
    )
    .unwrap();
    assert_eq!(
        c.transfer_leader(l, NodeId(4)),
        Err(ProposeError::NotVoter(NodeId(4)))
    );
}

#[test]
fn transfer_waits_for_a_lagging_target_to_catch_up() {
    let (mut c, l) = elected(3, 22);
    let to = c.ids().into_iter().find(|id| *id != l).unwrap();
    c.isolate(to);
    for i in 0..10 {
        c.propose(l, Bytes::from(format!("{i}"))).unwrap();
    }
    c.run(3);
    c.transfer_leader(l, to).unwrap();
    assert_eq!(
        c.propose(l, Bytes::from_static(b"during")),
        Err(ProposeError::TransferInProgress)
    );
    c.heal();
    assert!(c.run_until(|c| c.leader() == Some(to), 30));
    let leader_last = status(&c, to).last_log_index;
    assert!(
        leader_last >= LogIndex(12),
        "the target caught up before it led"
    );
}

#[test]
fn a_transfer_that_cannot_complete_times_out() {
    let (mut c, l) = elected(5, 23);
    let to = c.ids().into_iter().find(|id| *id != l).unwrap();
    c.isolate(to);
    c.transfer_leader(l, to).unwrap();
    assert!(c.propose(l, Bytes::from_static(b"x")).is_err());
    // After an election timeout the leader gives up and serves again.
    c.run(12);
    assert_eq!(c.leader(), Some(l));
    assert!(c.propose(l, Bytes::from_static(b"y")).is_ok());
}

// ------------------------------------------------------------ 8. ReadIndex

#[test]
fn a_read_is_served_once_a_quorum_confirms_the_leader() {
    let (mut c, l) = elected(3, 24);
    let commit = status(&c, l).commit_index;
    c.read_index(l, 77).unwrap();
    assert!(c.reads(l).is_empty(), "not before the heartbeat round");
    assert!(c.run_until(|c| !c.reads(l).is_empty(), 10));
    let r = &c.reads(l)[0];
    assert_eq!(r.ctx, 77);
    assert_eq!(r.index, commit);
}

#[test]
fn an_isolated_leader_never_serves_a_read() {
    let (mut c, l) = elected(3, 25);
    c.isolate(l);
    c.read_index(l, 1).unwrap();
    c.run(50);
    assert!(
        c.reads(l).is_empty(),
        "a deposed leader's read could be stale"
    );
}

#[test]
fn a_new_leader_serves_reads_only_after_its_noop_commits() {
    let mut c = Cluster::new(ClusterOptions::new(3, 26));
    assert!(c.run_until(|c| c.leader().is_some(), 200));
    let l = c.leader().unwrap();
    let noop = status(&c, l).last_log_index;
    c.read_index(l, 5).unwrap();
    assert!(c.run_until(|c| !c.reads(l).is_empty(), 20));
    assert!(c.reads(l)[0].index >= noop);
}

#[test]
fn a_follower_does_not_serve_read_index() {
    let (mut c, l) = elected(3, 27);
    let f = c.ids().into_iter().find(|id| *id != l).unwrap();
    assert_eq!(
        c.read_index(f, 1),
        Err(ProposeError::NotLeader { leader: Some(l) })
    );
}

// ------------------------------------------------------------ 9. snapshots

/// A cluster whose leader compacted 40 entries away while one follower was
/// down: (cluster, leader, the follower that was down, the last proposal).
fn behind_compaction(seed: u64) -> (Cluster, NodeId, NodeId, raftkv::raft::Proposal) {
    let (mut c, l) = elected(3, seed);
    let lagging = c.ids().into_iter().find(|id| *id != l).unwrap();
    c.crash(lagging);
    let mut last = None;
    for i in 0..40 {
        last = Some(c.propose(l, Bytes::from(format!("{i}"))).unwrap());
        c.tick();
    }
    let p = last.unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 100));
    for id in c.up_ids() {
        c.compact(id, 0);
    }
    (c, l, lagging, p)
}

#[test]
fn a_follower_behind_compaction_catches_up_by_snapshot() {
    let (mut c, l, lagging, p) = behind_compaction(28);
    assert!(c.storage(l).unwrap().first_index().unwrap() > LogIndex(20));
    let snapshots = counter(
        &mut c,
        |m| matches!(m.body, MessageBody::InstallSnapshot(_)),
        false,
    );
    c.restart(lagging);
    assert!(c.run_until(|c| c.applied(lagging) >= p.index, 200));
    assert!(snapshots.get() >= 1);
    let s = c.storage(lagging).unwrap();
    assert!(
        s.first_index().unwrap() > LogIndex(20),
        "covered log discarded"
    );
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

// -------------------------------------------------- 10. hostile input

fn heartbeat(from: u64, term: u64, commit: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(1),
        term: Term(term),
        body: MessageBody::Heartbeat(Heartbeat {
            commit: LogIndex(commit),
            leader_commit: LogIndex(commit),
            read_round: 0,
        }),
    }
}

fn refusal(result: Result<(), RaftError>) -> Refusal {
    match result {
        Err(RaftError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn one_message_with_term_u64_max_is_refused_and_the_node_still_campaigns() {
    let mut n = three_member_node(1, 40);
    assert_eq!(
        refusal(n.step(heartbeat(2, u64::MAX, 0))),
        Refusal::AbsurdTerm
    );
    assert_eq!(n.status().term, Term(0), "the term did not move");
    // The node goes on as if nothing happened: its (pre-)vote requests ask
    // for term 1, not for a term that wrapped to 0.
    let mut asked = Vec::new();
    for _ in 0..40 {
        n.tick();
        asked.extend(drive(&mut n));
    }
    assert!(
        asked
            .iter()
            .any(|m| matches!(m.body, MessageBody::Vote(_)) && m.term == Term(1)),
        "{asked:?}"
    );
}

#[test]
fn terms_and_indexes_never_wrap() {
    assert_eq!(Term(u64::MAX).next(), Term(u64::MAX));
    assert_eq!(LogIndex(u64::MAX).next(), LogIndex(u64::MAX));
    assert_eq!(LogIndex(u64::MAX - 1).plus(5), LogIndex(u64::MAX));
}

#[test]
fn a_non_contiguous_append_is_refused_before_it_reaches_the_log() {
    let mut n = three_member_node(1, 41);
    let entry = |index, term| raftkv::raft::Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Command(Bytes::from_static(b"x")),
    };
    let append = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::Append(AppendRequest {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: vec![entry(1, 1), entry(3, 1)],
            leader_commit: LogIndex(0),
        }),
    };
    assert_eq!(refusal(n.step(append)), Refusal::NonContiguousEntries);
    assert_eq!(n.status().last_log_index, LogIndex(0));
    assert!(n.ready().entries.is_empty(), "nothing to persist");
}

#[test]
fn a_non_member_cannot_depose_a_leader_its_followers_hear() {
    let mut n = three_member_node(1, 42);
    n.step(heartbeat(2, 1, 0)).unwrap();
    drive(&mut n);
    assert_eq!(n.status().leader, Some(NodeId(2)));
    assert_eq!(refusal(n.step(heartbeat(99, 5, 0))), Refusal::NotAMember);
    assert_eq!(
        refusal(n.step(vote_request(99, 1, 5, 100, 5))),
        Refusal::NotAMember
    );
    assert_eq!(n.status().term, Term(1));
    assert_eq!(n.status().leader, Some(NodeId(2)));
}

#[test]
fn a_follower_refuses_a_second_leader_in_the_same_term() {
    let mut n = three_member_node(1, 43);
    n.step(heartbeat(2, 1, 0)).unwrap();
    assert_eq!(refusal(n.step(heartbeat(3, 1, 0))), Refusal::SecondLeader);
    assert_eq!(n.status().leader, Some(NodeId(2)));
}

#[test]
fn timeout_now_only_counts_from_the_current_leader() {
    let mut n = three_member_node(1, 44);
    n.step(heartbeat(2, 1, 0)).unwrap();
    drive(&mut n);
    let timeout_now = |from| Message {
        from: NodeId(from),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::TimeoutNow,
    };
    assert_eq!(
        refusal(n.step(timeout_now(3))),
        Refusal::TimeoutNowNotFromLeader
    );
    let mut forged_later_term = timeout_now(2);
    forged_later_term.term = Term(9);
    assert_eq!(
        refusal(n.step(forged_later_term)),
        Refusal::TimeoutNowNotFromLeader
    );
    assert_eq!(n.status().role, RoleState::Follower);
    assert_eq!(n.status().term, Term(1));
    n.step(timeout_now(2)).unwrap();
    assert_eq!(n.status().role, RoleState::Candidate);
}

#[test]
fn a_follower_knows_the_leaders_commit_index_even_when_it_cannot_commit_itself() {
    let mut n = three_member_node(1, 45);
    n.step(Message {
        body: MessageBody::Heartbeat(Heartbeat {
            commit: LogIndex(0),
            leader_commit: LogIndex(500),
            read_round: 0,
        }),
        ..heartbeat(2, 1, 0)
    })
    .unwrap();
    let s = n.status();
    assert_eq!(s.commit_index, LogIndex(0));
    assert_eq!(s.leader_commit, LogIndex(500));
}

#[test]
fn a_learner_that_has_not_caught_up_cannot_be_promoted() {
    let (mut c, l) = elected(3, 46);
    let learner = NodeId(4);
    let p = c
        .change_membership(
            l,
            ConfChange::AddLearner {
                id: learner,
                context: Bytes::new(),
            },
        )
        .unwrap();
    assert!(c.run_until(|c| c.committed_term(p.index) == Some(p.term), 100));
    // The learner was never started.
    assert!(matches!(
        c.change_membership(l, ConfChange::Promote { id: learner }),
        Err(ProposeError::LearnerNotCaughtUp { .. })
    ));
    assert!(c.node(l).unwrap().membership().is_learner(learner));
    c.add_empty_node(learner);
    assert!(c.run_until(|c| caught_up(c, l, learner), 200));
    c.change_membership(l, ConfChange::Promote { id: learner })
        .unwrap();
}

#[test]
fn failed_snapshot_transfers_back_off_instead_of_retrying_every_heartbeat() {
    let (mut c, _, lagging, p) = behind_compaction(47);
    // Every snapshot transfer fails (say, the follower's disk is full).
    let attempts = counter(
        &mut c,
        |m| matches!(m.body, MessageBody::InstallSnapshot(_)),
        true,
    );
    c.restart(lagging);
    let ticks = 2000;
    c.run(ticks);
    let heartbeats_in_that_time = ticks / u64::from(ClusterOptions::new(3, 47).heartbeat_ticks);
    assert!(attempts.get() >= 2, "it does retry");
    assert!(
        u64::from(attempts.get()) * 10 < heartbeats_in_that_time,
        "{} attempts in {ticks} ticks",
        attempts.get()
    );
    // Once transfers work again, the follower catches up.
    c.set_filter(None);
    assert!(c.run_until(|c| c.applied(lagging) >= p.index, 3000));
}

#[test]
fn a_follower_whose_configuration_lags_keeps_hearing_a_leader_it_does_not_know_yet() {
    let mut n = three_member_node(1, 48);
    // Member 4 was added and elected while we were away: our configuration
    // does not name it. Its first message counts once no leader is heard...
    for _ in 0..25 {
        n.tick();
    }
    drive(&mut n);
    let term = n.status().term.get() + 1;
    n.step(heartbeat(4, term, 0)).unwrap();
    assert_eq!(n.status().leader, Some(NodeId(4)));
    // ...and so does every later one of its term, though we now hear it.
    n.step(heartbeat(4, term, 0)).unwrap();
    assert_eq!(
        refusal(n.step(heartbeat(5, term, 0))),
        Refusal::NotAMember,
        "a stranger is still refused"
    );
}

// ------------------------------------------------- asynchronous persistence

fn async_node(voters: u64, id: u64) -> RaftNode<MemStorage> {
    let m = Membership::with_voters((1..=voters).map(|i| (NodeId(i), Bytes::new())));
    let mut config = Config::new(NodeId(id));
    config.election_ticks = 10;
    config.heartbeat_ticks = 2;
    config.async_persistence = true;
    RaftNode::new(config, MemStorage::new(m)).unwrap()
}

#[test]
fn a_leader_counts_itself_only_for_entries_acknowledged_durable() {
    let mut n = async_node(1, 1);
    for _ in 0..100 {
        if n.status().role == RoleState::Leader {
            break;
        }
        n.tick();
    }
    assert_eq!(n.status().role, RoleState::Leader);
    let p = n.propose(Bytes::from_static(b"x")).unwrap();
    let rd = n.ready();
    n.advance_handed();
    assert!(rd.entries.iter().any(|e| e.index == p.index));
    assert_eq!(
        n.status().commit_index,
        LogIndex::ZERO,
        "nothing is durable"
    );
    // Durable now, but the core has not heard so: still nothing committed.
    n.storage_mut().append(&rd.entries).unwrap();
    assert_eq!(n.status().commit_index, LogIndex::ZERO);
    let last = rd.entries.last().unwrap();
    n.on_persisted(last.index, last.term);
    assert_eq!(n.status().commit_index, p.index);
    assert!(
        n.ready()
            .committed_entries
            .iter()
            .any(|e| e.index == p.index)
    );
}

#[test]
fn a_follower_applies_a_committed_entry_only_once_it_is_durable_here() {
    let mut n = async_node(3, 1);
    let entry = raftkv::raft::Entry {
        term: Term(1),
        index: LogIndex(1),
        payload: EntryPayload::Noop,
    };
    n.step(Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::Append(AppendRequest {
            prev_log_index: LogIndex::ZERO,
            prev_log_term: Term::ZERO,
            entries: vec![entry.clone()],
            leader_commit: LogIndex(1),
        }),
    })
    .unwrap();
    let rd = n.ready();
    assert_eq!(rd.entries, vec![entry.clone()]);
    assert!(rd.committed_entries.is_empty(), "not durable here yet");
    // The acceptance is for the driver to send once the write is durable.
    assert!(rd.messages.iter().any(|m| !m.can_send_before_persist()
        && matches!(
            m.body,
            MessageBody::AppendResponse(AppendResponse::Accepted { .. })
        )));
    n.advance_handed();
    assert!(!n.has_ready() || n.ready().committed_entries.is_empty());
    n.advance_handed();
    n.storage_mut().append(&rd.entries).unwrap();
    n.on_persisted(LogIndex(1), Term(1));
    assert_eq!(n.ready().committed_entries, vec![entry]);
}
