//! The Raft protocol: roles, elections, replication, ReadIndex, membership
//! changes and leadership transfer.
//!
//! [`RaftNode::step`] dispatches a message first on its term (the rules every
//! role shares, Figure 2 "all servers") and then on the role:
//! `step_leader`, `step_candidate`, `step_follower`. Timers are
//! `tick_election` and `tick_heartbeat`; role changes are `become_follower`,
//! `become_pre_candidate`, `become_candidate` and `become_leader`.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::admission::{self, Refusal};
use super::config::{Config, ConfigError};
use super::log::RaftLog;
use super::membership::{ConfChange, ConfChangeError, Membership};
use super::message::{
    AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, Message, MessageBody, VoteRequest,
    VoteResponse,
};
use super::progress::{Progress, ProgressState};
use super::quorum::{self, VoteResult};
use super::read_only::ReadOnly;
use super::ready::{ReadState, Ready, RoleState, Status};
use super::snapshot::Snapshot;
use super::storage::{Storage, StorageError};
use super::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

/// Where a proposal was placed in the log. It succeeded if, once
/// `index` is applied, the entry there has this `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub index: LogIndex,
    pub term: Term,
}

/// A request the core cannot accept right now.
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
    /// Promoting a learner that has not caught up would add a voter that
    /// cannot vote for anything new: one more failure would cost quorum.
    #[error(
        "can only promote a learner member which is in sync with leader \
         (member {id} holds {match_index} entries, needs {needed})"
    )]
    LearnerNotCaughtUp {
        id: NodeId,
        match_index: LogIndex,
        needed: LogIndex,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What the core could not do. A refused message is not a failure of the
/// node (the message was ignored, nothing changed; the driver counts it);
/// the others are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("refused a message from {from}: {reason}")]
    Refused { from: NodeId, reason: Refusal },
}

/// What the leader knows of one peer, for status pages and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub state: &'static str,
}

/// One Raft node's consensus state. See the [module docs](super).
#[derive(Debug)]
pub struct RaftNode<S: Storage> {
    id: NodeId,
    config: Config,
    log: RaftLog<S>,
    term: Term,
    vote: Option<NodeId>,
    role: RoleState,
    leader: Option<NodeId>,
    /// The leader's commit index as last heard from it (our own when we
    /// lead): how far a follower is behind, even while it waits for a
    /// snapshot and cannot commit anything itself.
    leader_commit: LogIndex,

    /// The configuration in force: the last one in the log, committed or not.
    membership: Membership,
    /// The configuration as of the start of the log (snapshot or bootstrap).
    base_membership: Membership,
    /// Configurations appended to the log after the base, by index; needed to
    /// fall back when a suffix with a configuration is truncated.
    membership_log: Vec<(LogIndex, Membership)>,

    /// Leader only: replication state of every other member.
    progress: BTreeMap<NodeId, Progress>,
    /// Candidate only: votes received in this campaign.
    votes: BTreeMap<NodeId, bool>,
    read_only: ReadOnly,

    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    rng: ChaCha8Rng,

    /// Leader only: the member leadership is being handed to, and for how
    /// many ticks.
    transferee: Option<(NodeId, u32)>,

    /// Set (by the driver, see [`RaftNode::withhold_votes`]) for a member
    /// that started with an empty data directory to join a cluster. It may
    /// be a voter whose data was lost under the same id (a wiped disk): it
    /// no longer holds the entries it acknowledged nor remembers its votes,
    /// so its vote could elect a leader that lacks committed entries. It
    /// neither votes nor campaigns until a committed configuration shows it
    /// as a learner: then it was added anew, and caught up as one.
    withholding_votes: bool,

    msgs: Vec<Message>,
    read_states: Vec<ReadState>,
    /// The hard state last handed to the driver.
    persisted_hard_state: HardState,
    /// The last committed entry handed out by `ready()`, applied at `advance()`.
    handed_to_apply: Option<LogIndex>,
}

impl<S: Storage> RaftNode<S> {
    /// Starts a node from what `storage` holds. `config.applied`-style
    /// knowledge of the state machine is passed as `applied`: entries up to
    /// it are not handed out again.
    pub fn new(config: Config, storage: S) -> Result<Self, RaftError> {
        Self::with_applied(config, storage, LogIndex::ZERO)
    }

    /// Like [`RaftNode::new`], for a state machine that has already applied
    /// entries up to `applied` (it kept them durably).
    pub fn with_applied(config: Config, storage: S, applied: LogIndex) -> Result<Self, RaftError> {
        config.validate()?;
        let initial = storage.initial_state()?;
        let hs = initial.hard_state;
        let mut log = RaftLog::new(storage, hs.commit, applied)?;
        log.apply_only_persisted = config.async_persistence;
        let mut membership_log = Vec::new();
        let first = log.first_index()?;
        let last = log.last_index();
        if first <= last {
            for e in log.slice(first, last.next(), usize::MAX)? {
                if let EntryPayload::Membership(m) = e.payload {
                    membership_log.push((e.index, m));
                }
            }
        }
        let base = initial.membership;
        let membership = membership_log
            .last()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| base.clone());
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut node = RaftNode {
            id: config.id,
            log,
            term: hs.term,
            vote: hs.vote,
            role: RoleState::Follower,
            leader: None,
            leader_commit: LogIndex::ZERO,
            membership,
            base_membership: base,
            membership_log,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            read_only: ReadOnly::default(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_ticks,
            rng,
            transferee: None,
            withholding_votes: false,
            msgs: Vec::new(),
            read_states: Vec::new(),
            persisted_hard_state: HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            },
            handed_to_apply: None,
            config,
        };
        node.reset_election_timeout();
        Ok(node)
    }

    // ---------------------------------------------------------------- API

    /// Neither vote nor campaign until a committed configuration shows this
    /// node as a learner (see the field's doc). For a node whose data
    /// directory was created to join a cluster, until then.
    pub fn withhold_votes(&mut self) {
        self.withholding_votes = true;
        self.refresh_vote_withholding();
    }

    /// Whether this node still withholds its votes. The driver persists the
    /// change once it turns false, so that a restart does not withhold
    /// again a vote that was cleared.
    pub fn withholding_votes(&self) -> bool {
        self.withholding_votes
    }

    /// Lifts the withholding once a committed configuration (the base one
    /// is committed by definition) has this node as a learner.
    fn refresh_vote_withholding(&mut self) {
        if !self.withholding_votes {
            return;
        }
        let committed = self.log.committed;
        let added_anew = self.base_membership.is_learner(self.id)
            || self
                .membership_log
                .iter()
                .any(|(index, m)| *index <= committed && m.is_learner(self.id));
        if added_anew {
            self.withholding_votes = false;
        }
    }

    /// Whether this node may stand for election now.
    fn may_campaign(&self) -> bool {
        self.membership.is_voter(self.id) && !self.withholding_votes
    }

    /// One logical clock tick.
    pub fn tick(&mut self) {
        match self.role {
            RoleState::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    /// Processes a message from a peer. Messages for another node, from an
    /// old term, or otherwise irrelevant are ignored: the network may deliver
    /// anything.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        if m.to != self.id || m.from == self.id {
            return Ok(());
        }
        admission::check_well_formed(&m)
            .and_then(|()| self.check_sender(&m))
            .map_err(|reason| RaftError::Refused {
                from: m.from,
                reason,
            })?;
        if m.term > self.term {
            if let MessageBody::Vote(req) = &m.body {
                // A node that hears from a leader ignores vote requests: a
                // removed or partitioned node cannot depose a healthy leader
                // (thesis §4.2.3). A transfer is a deliberate exception.
                if self.in_leader_lease() && !req.transfer {
                    return Ok(());
                }
            }
            match &m.body {
                // A pre-vote does not change anyone's term.
                MessageBody::Vote(VoteRequest { pre_vote: true, .. }) => {}
                MessageBody::VoteResponse(VoteResponse {
                    pre_vote: true,
                    granted: true,
                }) => {}
                MessageBody::Append(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::InstallSnapshot(_) => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                // A leader from an old term (say, one that was partitioned
                // and, with PreVote, kept its term) must learn the new term,
                // or it never steps down.
                MessageBody::Append(_) | MessageBody::Heartbeat(_)
                    if self.config.check_quorum || self.config.pre_vote =>
                {
                    self.send(
                        m.from,
                        MessageBody::AppendResponse(AppendResponse::Rejected {
                            rejected_index: LogIndex::ZERO,
                            hint_index: LogIndex::ZERO,
                            hint_term: Term::ZERO,
                        }),
                    );
                }
                MessageBody::Vote(VoteRequest { pre_vote: true, .. }) => {
                    self.send(
                        m.from,
                        MessageBody::VoteResponse(VoteResponse {
                            pre_vote: true,
                            granted: false,
                        }),
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        if let MessageBody::Vote(req) = &m.body {
            self.handle_vote_request(&m, req);
            return Ok(());
        }
        match self.role {
            RoleState::Leader => self.step_leader(m),
            RoleState::Candidate | RoleState::PreCandidate => self.step_candidate(m),
            RoleState::Follower => self.step_follower(m),
        }
        Ok(())
    }

    /// The checks of `admission` that need the node's state: is this
    /// message believable from this sender now?
    fn check_sender(&self, m: &Message) -> Result<(), Refusal> {
        let leader_message = matches!(
            m.body,
            MessageBody::Append(_) | MessageBody::Heartbeat(_) | MessageBody::InstallSnapshot(_)
        );
        // A node that is still joining knows no configuration yet and must
        // hear its leader. A follower whose configuration lags may not yet
        // know a newly elected leader: it accepts one once it has heard
        // from no leader for an election timeout (as for votes), and from
        // then on for the rest of that leader's term, until the log brings
        // the configuration that names it.
        let known_leader = m.term == self.term && self.leader == Some(m.from);
        if !self.membership.is_empty()
            && !self.membership.contains(m.from)
            && !(leader_message && (known_leader || !self.in_leader_lease()))
        {
            return Err(Refusal::NotAMember);
        }
        if m.term == self.term {
            if leader_message
                && self.role == RoleState::Follower
                && self.leader.is_some_and(|l| l != m.from)
            {
                return Err(Refusal::SecondLeader);
            }
            if let MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) = m.body {
                if self.role == RoleState::Leader && match_index > self.log.last_index() {
                    return Err(Refusal::AckBeyondLog);
                }
            }
        }
        if m.body == MessageBody::TimeoutNow && (m.term != self.term || self.leader != Some(m.from))
        {
            return Err(Refusal::TimeoutNowNotFromLeader);
        }
        Ok(())
    }

    /// Whether we heard from a leader within the election timeout (with
    /// CheckQuorum, a healthy leader's followers ignore would-be usurpers).
    fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_ticks
    }

    /// Appends a command to the log (leader only).
    pub fn propose(&mut self, data: Bytes) -> Result<Proposal, ProposeError> {
        let mut placed = self.propose_batch(vec![data])?;
        placed.pop().ok_or(ProposeError::NotLeader {
            leader: self.leader,
        })
    }

    /// Appends many commands at once: one append, one message per follower.
    pub fn propose_batch(&mut self, commands: Vec<Bytes>) -> Result<Vec<Proposal>, ProposeError> {
        self.check_can_propose()?;
        let payloads = commands.into_iter().map(EntryPayload::Command).collect();
        Ok(self.append_and_replicate(payloads))
    }

    /// Asks to serve a linearizable read: once leadership is confirmed,
    /// `Ready::read_states` carries `ctx` with the index the state machine
    /// must have applied before the read is served.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        if self.role != RoleState::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if !self.committed_in_current_term() {
            // Until its no-op commits, a new leader does not know the
            // commit index (thesis §6.4 step 1).
            self.read_only.defer(ctx);
            return Ok(());
        }
        self.start_read(ctx);
        Ok(())
    }

    /// Proposes a single-step membership change (leader only). At most one
    /// change may be in flight, and only once this leader has committed an
    /// entry of its own term.
    pub fn change_membership(&mut self, change: ConfChange) -> Result<Proposal, ProposeError> {
        self.check_can_propose()?;
        if self.membership_change_pending() || !self.committed_in_current_term() {
            return Err(ProposeError::MembershipChangePending);
        }
        if let ConfChange::Promote { id } = change {
            self.check_caught_up(id)?;
        }
        let next = self.membership.apply(&change)?;
        let mut placed = self.append_and_replicate(vec![EntryPayload::Membership(next)]);
        placed.pop().ok_or(ProposeError::NotLeader {
            leader: self.leader,
        })
    }

    /// A learner may be promoted once it holds at least 90 % of the
    /// leader's log (the bar etcd sets): enough to show it runs and keeps
    /// up, without waiting for a busy cluster to stand still.
    fn check_caught_up(&self, id: NodeId) -> Result<(), ProposeError> {
        if !self.membership.is_learner(id) {
            // Not a learner: let the configuration say what is wrong.
            return Ok(());
        }
        let last = self.log.last_index().get();
        let needed = LogIndex(last - last / 10);
        let match_index = self
            .progress
            .get(&id)
            .map_or(LogIndex::ZERO, |pr| pr.match_index);
        if match_index < needed || match_index == LogIndex::ZERO {
            return Err(ProposeError::LearnerNotCaughtUp {
                id,
                match_index,
                needed,
            });
        }
        Ok(())
    }

    /// Hands leadership to `to` (thesis §3.10): stop accepting proposals,
    /// bring `to` up to date, then tell it to campaign at once.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != RoleState::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.membership.is_voter(to) {
            return Err(ProposeError::NotVoter(to));
        }
        if matches!(self.transferee, Some((t, _)) if t == to) {
            return Ok(());
        }
        self.transferee = Some((to, 0));
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// The transport could not reach `to`: stop pipelining to it.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// An out-of-band snapshot transfer to `to` finished (`ok`) or failed.
    pub fn report_snapshot(&mut self, to: NodeId, ok: bool) {
        let (base, max) = (
            self.config.heartbeat_ticks,
            self.config.election_ticks.saturating_mul(10),
        );
        if let Some(pr) = self.progress.get_mut(&to) {
            if let ProgressState::Snapshot { .. } = pr.state {
                pr.snapshot_finished(ok, base, max);
                if !ok {
                    pr.state = ProgressState::Snapshot {
                        pending: LogIndex::ZERO,
                    };
                }
                // Wait for the follower's answer before sending more.
                pr.become_probe();
                pr.probe_sent = ok;
            }
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.read_states.is_empty()
            || self.log.has_unhanded()
            || self.log.has_committed_to_apply()
            || self.hard_state() != self.persisted_hard_state
    }

    /// What to do now; see [`Ready`] for the order the driver must follow.
    pub fn ready(&mut self) -> Ready {
        self.refresh_vote_withholding();
        let hs = self.hard_state();
        // A storage failure leaves the entries for the next Ready rather
        // than skipping them.
        let committed_entries = self
            .log
            .committed_to_apply(self.config.max_apply_bytes)
            .unwrap_or_default();
        self.handed_to_apply = committed_entries.last().map(|e| e.index);
        let (snapshot, entries) = self.log.take_unhanded();
        Ready {
            hard_state: (hs != self.persisted_hard_state).then_some(hs),
            snapshot,
            entries,
            messages: std::mem::take(&mut self.msgs),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
        }
    }

    /// The driver has done everything the last [`Ready`] asked, its write
    /// included.
    pub fn advance(&mut self) {
        self.advance_handed();
        self.log.stable();
        // The leader's own entries now count toward a quorum.
        if self.role == RoleState::Leader && self.maybe_commit() {
            self.broadcast_append();
        }
    }

    /// The driver has taken the last [`Ready`] in hand: sent what may go at
    /// once, queued the write (snapshot, entries, hard state, and the
    /// messages that must wait for it) and the entries to apply, but the
    /// write may not be durable yet. It reports that later, in order, with
    /// [`RaftNode::on_persisted`]; until then the entries stay in memory
    /// and the leader does not count itself for them.
    pub fn advance_handed(&mut self) {
        self.persisted_hard_state = self.hard_state();
        if let Some(last) = self.handed_to_apply.take() {
            self.log.applied = self.log.applied.max(last);
        }
        self.log.trim_recent();
    }

    /// Everything handed out for persistence up to the entry `(index,
    /// term)` — or the snapshot at `index` — is durable. Acknowledgements
    /// arrive in the order the writes were handed out, possibly long after
    /// later `Ready`s; one a truncation overtook is ignored. May be called
    /// at any time outside a `ready()`/`advance_handed()` pair.
    pub fn on_persisted(&mut self, index: LogIndex, term: Term) {
        self.log.stable_to(index, term);
        if self.role == RoleState::Leader && self.maybe_commit() {
            self.broadcast_append();
        }
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.log.committed,
            leader_commit: if self.role == RoleState::Leader {
                self.log.committed
            } else {
                self.leader_commit.max(self.log.committed)
            },
            applied_index: self.log.applied,
            last_log_index: self.log.last_index(),
            first_log_index: self.log.first_index().unwrap_or_default(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration in force (the last in the log, even uncommitted).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// What the leader knows of each peer; empty on other nodes.
    pub fn progress(&self) -> Vec<(NodeId, PeerProgress)> {
        self.progress
            .iter()
            .map(|(id, pr)| {
                (
                    *id,
                    PeerProgress {
                        match_index: pr.match_index,
                        next_index: pr.next_index,
                        state: pr.state_name(),
                    },
                )
            })
            .collect()
    }

    pub fn storage(&self) -> &S {
        self.log.storage()
    }

    pub fn storage_mut(&mut self) -> &mut S {
        self.log.storage_mut()
    }

    /// Whether a membership change is appended but not yet committed.
    pub fn membership_change_pending(&self) -> bool {
        self.membership_log
            .last()
            .is_some_and(|(index, _)| *index > self.log.committed)
    }

    // ------------------------------------------------------------ timers

    fn tick_election(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            if self.may_campaign() {
                self.campaign(self.config.pre_vote, false);
            } else {
                // A learner cannot campaign, but it must not go on naming
                // a leader it no longer hears (readiness, status, and where
                // it forwards requests).
                self.leader = None;
            }
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed = self.heartbeat_elapsed.saturating_add(1);
        self.election_elapsed = self.election_elapsed.saturating_add(1);

        if let Some((to, elapsed)) = self.transferee {
            // A transfer that has not finished within an election timeout
            // is abandoned, so proposals are not blocked forever.
            if elapsed + 1 >= self.config.election_ticks {
                self.transferee = None;
            } else {
                self.transferee = Some((to, elapsed + 1));
            }
        }

        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                // A leader cut off from a majority steps down, so clients
                // stop waiting on it (thesis §6.2).
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
            for pr in self.progress.values_mut() {
                pr.recent_active = false;
            }
        }

        for pr in self.progress.values_mut() {
            pr.snapshot_backoff = pr.snapshot_backoff.saturating_sub(1);
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let voters: Vec<NodeId> = self.membership.voters().collect();
        let active = voters
            .iter()
            .filter(|v| **v == self.id || self.progress.get(v).is_some_and(|pr| pr.recent_active))
            .count();
        active >= quorum::majority(voters.len())
    }

    fn reset_election_timeout(&mut self) {
        let base = self.config.election_ticks;
        self.randomized_election_timeout = base + self.rng.random_range(0..base);
    }

    // ------------------------------------------------------- role changes

    fn reset(&mut self, term: Term) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_election_timeout();
        self.votes.clear();
        self.progress.clear();
        self.transferee = None;
        self.read_only.reset();
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset(term);
        self.role = RoleState::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        // A pre-candidate keeps its term and vote: nothing is disturbed
        // unless the rehearsal shows it could win.
        self.votes.clear();
        self.progress.clear();
        self.leader = None;
        self.role = RoleState::PreCandidate;
        self.transferee = None;
        self.read_only.reset();
    }

    fn become_candidate(&mut self) {
        let next = self.term.next();
        self.reset(next);
        self.vote = Some(self.id);
        self.role = RoleState::Candidate;
    }

    fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = RoleState::Leader;
        self.leader = Some(self.id);
        let next = self.log.last_index().next();
        for id in self.membership.ids().filter(|id| *id != self.id) {
            self.progress
                .insert(id, Progress::new(next, self.config.max_inflight));
        }
        for pr in self.progress.values_mut() {
            // Give every follower a full election timeout before CheckQuorum
            // counts it as silent.
            pr.recent_active = true;
        }
        // The no-op lets this leader commit entries of earlier terms and
        // learn the commit index (paper §5.4.2, §8).
        self.append_and_replicate(vec![EntryPayload::Noop]);
    }

    fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        if pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
        let campaign_term = if pre_vote {
            self.term.next()
        } else {
            self.term
        };
        self.votes.insert(self.id, true);
        if quorum::vote_result(self.membership.voters(), &self.votes) == VoteResult::Won {
            // A single voter wins at once.
            if pre_vote {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        let voters: Vec<NodeId> = self.membership.voters().filter(|v| *v != self.id).collect();
        for v in voters {
            self.msgs.push(Message {
                from: self.id,
                to: v,
                term: campaign_term,
                body: MessageBody::Vote(VoteRequest {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    transfer,
                }),
            });
        }
    }

    // ------------------------------------------------------------ voting

    fn handle_vote_request(&mut self, m: &Message, req: &VoteRequest) {
        // We may vote for the same candidate again (a retransmission), or
        // for anyone if we have not voted and know no leader in this term; a
        // pre-vote for a future term is granted on the log check alone.
        let can_vote = !self.withholding_votes
            && (self.vote == Some(m.from)
                || (self.vote.is_none() && self.leader.is_none())
                || (req.pre_vote && m.term > self.term));
        let granted = can_vote
            && self
                .log
                .is_up_to_date(req.last_log_index, req.last_log_term);
        if granted && !req.pre_vote {
            // The vote is part of the hard state: Ready hands it to the
            // driver to persist before this answer is sent.
            self.vote = Some(m.from);
            self.election_elapsed = 0;
        }
        let term = if req.pre_vote && granted {
            m.term
        } else {
            self.term
        };
        self.msgs.push(Message {
            from: self.id,
            to: m.from,
            term,
            body: MessageBody::VoteResponse(VoteResponse {
                pre_vote: req.pre_vote,
                granted,
            }),
        });
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::VoteResponse(resp) => {
                let expecting_pre_vote = self.role == RoleState::PreCandidate;
                if resp.pre_vote != expecting_pre_vote {
                    return;
                }
                if !self.membership.is_voter(m.from) {
                    return;
                }
                self.votes.insert(m.from, resp.granted);
                match quorum::vote_result(self.membership.voters(), &self.votes) {
                    VoteResult::Won if expecting_pre_vote => self.campaign(false, false),
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, None);
                    }
                    VoteResult::Pending => {}
                }
            }
            // Someone else won this term.
            MessageBody::Append(_)
            | MessageBody::Heartbeat(_)
            | MessageBody::InstallSnapshot(_) => {
                let term = self.term;
                self.become_follower(term, Some(m.from));
                self.step_follower(m);
            }
            _ => {}
        }
    }

    // ----------------------------------------------------------- follower

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append(req) => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.leader_commit = self.leader_commit.max(req.leader_commit);
                self.handle_append(m.from, req);
            }
            MessageBody::Heartbeat(hb) => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.leader_commit = self.leader_commit.max(hb.leader_commit);
                self.log.commit_to(hb.commit);
                self.send(
                    m.from,
                    MessageBody::HeartbeatResponse(HeartbeatResponse {
                        read_round: hb.read_round,
                    }),
                );
            }
            MessageBody::InstallSnapshot(snapshot) => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.leader_commit = self.leader_commit.max(snapshot.meta.index);
                self.handle_snapshot(m.from, snapshot);
            }
            // Skip PreVote: the leader asked us to take over.
            MessageBody::TimeoutNow if self.may_campaign() => {
                self.campaign(false, true);
            }
            _ => {}
        }
    }

    fn handle_append(&mut self, from: NodeId, req: AppendRequest) {
        if req.prev_log_index < self.log.committed {
            // Everything up to our commit index matches any leader's log.
            let committed = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse::Accepted {
                    match_index: committed,
                }),
            );
            return;
        }
        let first_new = req.prev_log_index.next();
        let entries = req.entries;
        let membership_entries: Vec<(LogIndex, Membership)> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .collect();
        match self.log.maybe_append(
            req.prev_log_index,
            req.prev_log_term,
            req.leader_commit,
            entries,
        ) {
            Some(last_new) => {
                self.refresh_membership_after_append(first_new, last_new, membership_entries);
                self.send(
                    from,
                    MessageBody::AppendResponse(AppendResponse::Accepted {
                        match_index: last_new,
                    }),
                );
            }
            None => {
                let (hint_index, hint_term) = self
                    .log
                    .find_conflict_by_term(req.prev_log_index, req.prev_log_term);
                self.send(
                    from,
                    MessageBody::AppendResponse(AppendResponse::Rejected {
                        rejected_index: req.prev_log_index,
                        hint_index,
                        hint_term,
                    }),
                );
            }
        }
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        if index <= self.log.committed {
            let committed = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse::Accepted {
                    match_index: committed,
                }),
            );
            return;
        }
        if self.log.matches(index, snapshot.meta.term) {
            // We already have everything the snapshot covers.
            self.log.commit_to(index);
        } else {
            self.base_membership = snapshot.meta.membership.clone();
            self.membership_log.clear();
            self.membership = self.base_membership.clone();
            self.log.restore(snapshot);
        }
        self.send(
            from,
            MessageBody::AppendResponse(AppendResponse::Accepted { match_index: index }),
        );
    }

    // ------------------------------------------------------------- leader

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        match m.body {
            MessageBody::AppendResponse(resp) => {
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                pr.recent_active = true;
                match resp {
                    AppendResponse::Accepted { match_index } => {
                        self.handle_append_accepted(from, match_index)
                    }
                    AppendResponse::Rejected {
                        rejected_index,
                        hint_index,
                        hint_term,
                    } => {
                        // Fast back-tracking: skip every entry of ours whose
                        // term is above the follower's hint term.
                        let next = if hint_term > Term::ZERO {
                            self.log
                                .find_conflict_by_term(hint_index, hint_term)
                                .0
                                .next()
                        } else {
                            hint_index.next()
                        };
                        let Some(pr) = self.progress.get_mut(&from) else {
                            return;
                        };
                        if pr.reject(rejected_index, next) {
                            self.send_append(from, true);
                        }
                    }
                }
            }
            MessageBody::HeartbeatResponse(resp) => {
                let last = self.log.last_index();
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                pr.recent_active = true;
                pr.probe_sent = false;
                if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
                    pr.inflights.free_first();
                }
                let lagging = pr.match_index < last;
                if lagging {
                    self.send_append(from, true);
                }
                if resp.read_round > 0 && self.membership.is_voter(from) {
                    let ready = self.read_only.ack(
                        from,
                        resp.read_round,
                        self.id,
                        self.membership.voters(),
                    );
                    self.read_states.extend(ready);
                }
            }
            _ => {}
        }
    }

    fn handle_append_accepted(&mut self, from: NodeId, match_index: LogIndex) {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        let updated = pr.acknowledge(match_index);
        match pr.state {
            ProgressState::Probe if updated || pr.match_index == last => pr.become_replicate(),
            ProgressState::Snapshot { pending } if pr.match_index >= pending => {
                pr.become_probe();
            }
            _ => {}
        }
        if updated && self.maybe_commit() {
            self.broadcast_append();
        } else {
            while self.send_append(from, false) {}
        }
        if let Some((to, _)) = self.transferee {
            if to == from
                && self
                    .progress
                    .get(&from)
                    .is_some_and(|pr| pr.match_index == self.log.last_index())
            {
                self.send(to, MessageBody::TimeoutNow);
            }
        }
    }

    /// Advances the commit index to what a majority holds — but only by
    /// counting replicas of an entry from the current term (paper §5.4.2).
    /// The leader counts itself only for what it has persisted.
    fn maybe_commit(&mut self) -> bool {
        let last = self.log.persisted;
        let candidate = quorum::committed_index(self.membership.voters().map(|v| {
            if v == self.id {
                last
            } else {
                self.progress
                    .get(&v)
                    .map(|pr| pr.match_index)
                    .unwrap_or(LogIndex::ZERO)
            }
        }));
        if candidate <= self.log.committed || !self.log.matches(candidate, self.term) {
            return false;
        }
        self.log.commit_to(candidate);
        self.after_commit_advanced();
        true
    }

    fn after_commit_advanced(&mut self) {
        // Drop configurations that can no longer be truncated away, keeping
        // the newest committed one as the fallback.
        let committed = self.log.committed;
        if let Some(pos) = self
            .membership_log
            .iter()
            .rposition(|(i, _)| *i <= committed)
        {
            let (_, m) = self.membership_log[pos].clone();
            self.base_membership = m;
            self.membership_log.drain(..=pos);
        }
        if self.role != RoleState::Leader {
            return;
        }
        // Reads that waited for this leader's first commit can start now.
        if self.committed_in_current_term() {
            for ctx in self.read_only.take_deferred() {
                self.start_read(ctx);
            }
        }
        // A leader that removed itself steps down once the removal commits
        // (thesis §4.2.2), handing over to the most up-to-date voter.
        if !self.membership.is_voter(self.id) && !self.membership_change_pending() {
            let last = self.log.last_index();
            let successor = self
                .progress
                .iter()
                .filter(|(id, pr)| self.membership.is_voter(**id) && pr.match_index == last)
                .map(|(id, _)| *id)
                .next();
            if let Some(to) = successor {
                self.send(to, MessageBody::TimeoutNow);
            }
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    fn committed_in_current_term(&self) -> bool {
        self.log
            .term(self.log.committed)
            .is_ok_and(|t| t == self.term)
    }

    fn start_read(&mut self, ctx: u64) {
        let index = self.log.committed;
        if self.membership.voter_count() == 1 && self.membership.is_voter(self.id) {
            self.read_states.push(ReadState { ctx, index });
            return;
        }
        self.read_only.add(ctx, index);
        self.broadcast_heartbeat();
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != RoleState::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    fn append_and_replicate(&mut self, payloads: Vec<EntryPayload>) -> Vec<Proposal> {
        let term = self.term;
        let mut index = self.log.last_index();
        let mut entries = Vec::with_capacity(payloads.len());
        let mut placed = Vec::with_capacity(payloads.len());
        for payload in payloads {
            index = index.next();
            if let EntryPayload::Membership(m) = &payload {
                self.apply_membership(index, m.clone());
            }
            entries.push(Entry {
                term,
                index,
                payload,
            });
            placed.push(Proposal { index, term });
        }
        self.log.append(entries);
        // A single voter commits on its own.
        self.maybe_commit();
        self.broadcast_append();
        placed
    }

    /// A configuration takes effect when it is appended (thesis §4.1).
    fn apply_membership(&mut self, index: LogIndex, m: Membership) {
        self.membership_log.push((index, m.clone()));
        self.membership = m;
        if self.role == RoleState::Leader {
            let next = self.log.last_index().next();
            let ids: Vec<NodeId> = self.membership.ids().filter(|i| *i != self.id).collect();
            self.progress.retain(|id, _| ids.contains(id));
            for id in ids {
                self.progress.entry(id).or_insert_with(|| {
                    let mut pr = Progress::new(next, self.config.max_inflight);
                    pr.recent_active = true;
                    pr
                });
            }
            if let Some((to, _)) = self.transferee {
                if !self.membership.is_voter(to) {
                    self.transferee = None;
                }
            }
        }
    }

    /// After a follower accepted entries `first_new..=last_new`: the
    /// configurations among them are now the log's at those indexes, and
    /// any beyond `last_new` survive only if the log still reaches them.
    fn refresh_membership_after_append(
        &mut self,
        first_new: LogIndex,
        last_new: LogIndex,
        new_entries: Vec<(LogIndex, Membership)>,
    ) {
        // The common case, an append without configurations that replaced
        // none: nothing changes, and the hot path clones nothing.
        if new_entries.is_empty() && !self.membership_log.iter().any(|(i, _)| *i >= first_new) {
            return;
        }
        let last = self.log.last_index();
        self.membership_log
            .retain(|(i, _)| *i < first_new || (*i > last_new && *i <= last));
        for (index, m) in new_entries {
            if !self.membership_log.iter().any(|(i, _)| *i == index) {
                self.membership_log.push((index, m));
            }
        }
        self.membership_log.sort_by_key(|(i, _)| *i);
        self.membership = self
            .membership_log
            .last()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_membership.clone());
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_append(to, true);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let round = self.read_only.current_round();
        let committed = self.log.committed;
        let targets: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(id, pr)| (*id, pr.match_index.min(committed)))
            .collect();
        for (to, commit) in targets {
            self.send(
                to,
                MessageBody::Heartbeat(Heartbeat {
                    commit,
                    leader_commit: committed,
                    read_round: round,
                }),
            );
        }
    }

    /// Sends `to` the entries it needs next, or a snapshot if they were
    /// compacted. With `allow_empty`, sends even without new entries (to
    /// probe, or to carry a new commit index). Returns whether it sent.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next_index;
        if next > last && !allow_empty {
            return false;
        }
        let prev = next.prev();
        let prev_term = self.log.term(prev);
        let entries = self.log.entries_from(next, self.config.max_message_bytes);
        let (prev_term, entries) = match (prev_term, entries) {
            (Ok(t), Ok(e)) => (t, e),
            (Err(StorageError::Compacted(_)), _) | (_, Err(StorageError::Compacted(_))) => {
                return self.send_snapshot(to);
            }
            // Anything else is a storage fault: try again on a later tick.
            _ => return false,
        };
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let last_sent = entries.last().map(|e| e.index);
        let committed = self.log.committed;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.sent_entries(last_sent);
        }
        self.send(
            to,
            MessageBody::Append(AppendRequest {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit: committed,
            }),
        );
        last_sent.is_some()
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        if self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.snapshot_backoff > 0)
        {
            return false;
        }
        let Ok(snapshot) = self.log.storage().snapshot() else {
            return false;
        };
        let index = snapshot.meta.index;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(index);
        }
        self.send(to, MessageBody::InstallSnapshot(snapshot));
        false
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.msgs.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }
}
