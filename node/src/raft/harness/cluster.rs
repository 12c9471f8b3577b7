//! Simulated nodes and the driver loop that carries out their `Ready`s.
//!
//! Each node has durable storage (a [`MemStorage`] written only when a
//! `Ready` says so) and a durable state machine (a running digest of every
//! entry applied). A crash drops the core and with it everything that was
//! not yet persisted; a restart builds a new core from what is durable.
//!
//! Persistence is either synchronous (each `Ready` is written before its
//! messages go and `advance()` returns) or, with
//! [`ClusterOptions::async_persistence`], a per-node queue of writes that
//! complete after a random delay, in order, each followed by the messages
//! that waited for it and a late `on_persisted` acknowledgement. A crash
//! then loses every queued write, and a node may crash right after a write
//! is durable but before anyone heard of it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::invariants::{Invariants, Violation, chain_digest};
use super::network::{Faults, Filter, Network};
use crate::raft::{
    ConfChange, Config, Entry, EntryPayload, HardState, LogIndex, MemStorage, Membership, Message,
    MessageBody, NodeId, Proposal, ProposeError, RaftError, RaftNode, ReadState, RoleState,
    Snapshot, Storage, Term,
};

/// How to build a simulated cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub seed: u64,
    /// Nodes `1..=voters` start as voters.
    pub voters: u64,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub max_inflight: usize,
    pub max_message_bytes: usize,
    pub faults: Faults,
    /// Probability that a node crashes in the middle of handling a `Ready`:
    /// before persisting, or after persisting but before sending.
    pub crash_mid_ready: f64,
    /// Nodes persist on a simulated writer thread: writes complete late
    /// (see the [module docs](self)) and are acknowledged with
    /// `on_persisted`.
    pub async_persistence: bool,
    /// With `async_persistence`: a write completes after `0..=this` ticks
    /// (but never before the writes queued ahead of it).
    pub max_persist_delay: u64,
    /// With `async_persistence`: probability that a node crashes right
    /// after a write became durable, before its messages or its
    /// acknowledgement.
    pub crash_before_ack: f64,
}

impl ClusterOptions {
    pub fn new(voters: u64, seed: u64) -> Self {
        ClusterOptions {
            seed,
            voters,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            max_inflight: 8,
            max_message_bytes: 4096,
            faults: Faults::none(),
            crash_mid_ready: 0.0,
            async_persistence: false,
            max_persist_delay: 0,
            crash_before_ack: 0.0,
        }
    }
}

/// A node's starting log, for scenario tests that reproduce the paper's
/// figures: the terms of its entries (index 1 onwards) and its current term.
#[derive(Clone, Debug)]
pub struct NodeSetup {
    pub id: u64,
    pub log_terms: Vec<u64>,
    pub term: u64,
}

/// The state machine of a simulated node: a digest chained over every entry
/// applied, so two nodes agree on the digest at an index iff they applied
/// the same entries.
#[derive(Clone, Debug, Default)]
struct StateMachine {
    applied: LogIndex,
    digest: u64,
    membership: Membership,
}

impl StateMachine {
    fn apply(&mut self, e: &Entry) {
        self.applied = e.index;
        self.digest = chain_digest(self.digest, e);
        if let EntryPayload::Membership(m) = &e.payload {
            self.membership = m.clone();
        }
    }

    fn image(&self) -> Bytes {
        Bytes::copy_from_slice(&self.digest.to_le_bytes())
    }

    fn restore(&mut self, s: &Snapshot) {
        let mut digest = [0u8; 8];
        if s.data.len() == 8 {
            digest.copy_from_slice(&s.data);
        }
        self.applied = s.meta.index;
        self.digest = u64::from_le_bytes(digest);
        self.membership = s.meta.membership.clone();
    }
}

/// One `Ready`'s write, queued on a node's simulated writer thread.
struct QueuedWrite {
    /// The tick from which it may complete.
    due: u64,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    /// Messages that promise this write is durable.
    then_send: Vec<Message>,
}

struct SimNode {
    raft: Option<RaftNode<MemStorage>>,
    /// Writes handed out and not yet durable (async persistence only).
    writes: VecDeque<QueuedWrite>,
    /// What survives a crash; only meaningful while `raft` is `None`.
    durable: MemStorage,
    sm: StateMachine,
    incarnation: u64,
    reads: Vec<ReadState>,
}

/// A simulated cluster. See the [module docs](super).
pub struct Cluster {
    opts: ClusterOptions,
    nodes: BTreeMap<NodeId, SimNode>,
    pub net: Network,
    rng: ChaCha8Rng,
    now: u64,
    inv: Invariants,
    violation: Option<Violation>,
    steps: u64,
    /// Members known to have been removed (never restarted).
    removed: BTreeSet<NodeId>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("now", &self.now)
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("violation", &self.violation)
            .finish()
    }
}

fn context(id: NodeId) -> Bytes {
    Bytes::from(format!("node-{id}"))
}

impl Cluster {
    /// A fresh cluster of `opts.voters` voters with empty logs.
    pub fn new(opts: ClusterOptions) -> Self {
        let setups = (1..=opts.voters)
            .map(|id| NodeSetup {
                id,
                log_terms: Vec::new(),
                term: 0,
            })
            .collect();
        Self::with_setups(opts, setups)
    }

    /// A cluster whose nodes start with the given logs (all voters).
    pub fn with_setups(opts: ClusterOptions, setups: Vec<NodeSetup>) -> Self {
        let membership =
            Membership::with_voters(setups.iter().map(|s| (NodeId(s.id), context(NodeId(s.id)))));
        let mut cluster = Cluster {
            net: Network::new(opts.faults),
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            opts,
            nodes: BTreeMap::new(),
            now: 0,
            inv: Invariants::default(),
            violation: None,
            steps: 0,
            removed: BTreeSet::new(),
        };
        for s in setups {
            let mut storage = MemStorage::new(membership.clone());
            let entries: Vec<Entry> = s
                .log_terms
                .iter()
                .enumerate()
                .map(|(i, t)| Entry {
                    term: Term(*t),
                    index: LogIndex(i as u64 + 1),
                    // Distinct payloads per (index, term), identical across
                    // nodes that share the entry.
                    payload: EntryPayload::Command(Bytes::from(format!("e{}t{}", i + 1, t))),
                })
                .collect();
            for e in &entries {
                let prev = if e.index.0 > 1 {
                    Some(Term(s.log_terms[e.index.0 as usize - 2]))
                } else {
                    None
                };
                if let Err(v) = cluster.inv.saw_write(NodeId(s.id), e, prev, LogIndex::ZERO) {
                    cluster.violation.get_or_insert(v);
                }
            }
            // Writing the setup cannot fail: the log is contiguous from 1.
            let _ = storage.append(&entries);
            storage.set_hard_state(HardState {
                term: Term(s.term),
                vote: None,
                commit: LogIndex::ZERO,
            });
            cluster.add_node_with_storage(
                NodeId(s.id),
                storage,
                StateMachine {
                    membership: membership.clone(),
                    ..StateMachine::default()
                },
            );
        }
        cluster
    }

    fn config(&self, id: NodeId, incarnation: u64) -> Config {
        let mut c = Config::new(id);
        c.election_ticks = self.opts.election_ticks;
        c.heartbeat_ticks = self.opts.heartbeat_ticks;
        c.pre_vote = self.opts.pre_vote;
        c.check_quorum = self.opts.check_quorum;
        c.max_inflight = self.opts.max_inflight;
        c.max_message_bytes = self.opts.max_message_bytes;
        c.async_persistence = self.opts.async_persistence;
        c.seed = self
            .opts
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(id.0 * 7919 + incarnation);
        c
    }

    fn add_node_with_storage(&mut self, id: NodeId, storage: MemStorage, sm: StateMachine) {
        let config = self.config(id, 0);
        let raft = match RaftNode::with_applied(config, storage.clone(), sm.applied) {
            Ok(r) => Some(r),
            Err(e) => {
                self.fail("node start", format!("node {id} failed to start: {e}"));
                None
            }
        };
        self.nodes.insert(
            id,
            SimNode {
                raft,
                writes: VecDeque::new(),
                durable: storage,
                sm,
                incarnation: 0,
                reads: Vec::new(),
            },
        );
    }

    /// Starts a brand-new, empty node that waits to be added to the cluster.
    pub fn add_empty_node(&mut self, id: NodeId) {
        self.add_node_with_storage(
            id,
            MemStorage::new(Membership::default()),
            StateMachine::default(),
        );
    }

    fn fail(&mut self, property: &'static str, detail: String) {
        self.violation.get_or_insert(Violation { property, detail });
    }

    // ------------------------------------------------------------ queries

    /// The first safety violation seen, if any.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// Steps taken (ticks, deliveries and client requests).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Invariant checks performed.
    pub fn checks(&self) -> u64 {
        self.inv.checks
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.raft.is_some())
    }

    pub fn up_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn node(&self, id: NodeId) -> Option<&RaftNode<MemStorage>> {
        self.nodes.get(&id).and_then(|n| n.raft.as_ref())
    }

    /// The durable storage of a node (live or crashed).
    pub fn storage(&self, id: NodeId) -> Option<&MemStorage> {
        let n = self.nodes.get(&id)?;
        Some(match &n.raft {
            Some(r) => r.storage(),
            None => &n.durable,
        })
    }

    /// The terms of a node's durable log from its first index on.
    pub fn log_terms(&self, id: NodeId) -> Vec<u64> {
        let Some(s) = self.storage(id) else {
            return Vec::new();
        };
        let (Ok(first), Ok(last)) = (s.first_index(), s.last_index()) else {
            return Vec::new();
        };
        (first.0..=last.0)
            .filter_map(|i| s.term(LogIndex(i)).ok().map(|t| t.0))
            .collect()
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.raft.as_ref().map(|r| (*id, r.status())))
            .filter(|(_, s)| s.role == RoleState::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    /// The state machine's applied index on a node.
    pub fn applied(&self, id: NodeId) -> LogIndex {
        self.nodes
            .get(&id)
            .map(|n| n.sm.applied)
            .unwrap_or_default()
    }

    /// ReadIndex results a node has produced so far.
    pub fn reads(&self, id: NodeId) -> &[ReadState] {
        self.nodes
            .get(&id)
            .map(|n| n.reads.as_slice())
            .unwrap_or(&[])
    }

    pub fn committed_term(&self, index: LogIndex) -> Option<Term> {
        self.inv.committed_term(index)
    }

    pub fn max_committed(&self) -> LogIndex {
        self.inv.max_committed()
    }

    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    // ------------------------------------------------------------ actions

    /// Advances time by one tick: every live node ticks, then the messages
    /// due are delivered.
    pub fn tick(&mut self) {
        self.now += 1;
        for id in self.up_ids() {
            self.tick_node(id);
        }
        // Writes complete in no fixed order relative to the messages of the
        // same tick: sometimes before, sometimes after they are delivered.
        let early = self.opts.async_persistence && self.rng.random_bool(0.5);
        if early {
            self.complete_due_writes();
        }
        self.deliver_due();
        if !early {
            self.complete_due_writes();
        }
    }

    /// One tick of one node's clock, with its `Ready` carried out.
    fn tick_node(&mut self, id: NodeId) {
        if let Some(r) = self.raft_mut(id) {
            r.tick();
        }
        self.steps += 1;
        self.process_ready(id);
        self.check_leaders();
    }

    /// Ticks only `id` (the others' clocks stand still, but they receive and
    /// answer messages) until it is leader, or `max_ticks` pass. Lets a
    /// scenario choose who campaigns, as the paper's figures do.
    pub fn elect(&mut self, id: NodeId, max_ticks: u64) -> bool {
        for _ in 0..max_ticks {
            if self
                .node(id)
                .is_some_and(|r| r.status().role == RoleState::Leader)
            {
                return true;
            }
            if self.violation.is_some() {
                return false;
            }
            self.now += 1;
            self.tick_node(id);
            self.deliver_due();
        }
        self.node(id)
            .is_some_and(|r| r.status().role == RoleState::Leader)
    }

    fn raft_mut(&mut self, id: NodeId) -> Option<&mut RaftNode<MemStorage>> {
        self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut())
    }

    fn deliver_due(&mut self) {
        for m in self.net.take_due(self.now) {
            let (from, to) = (m.from, m.to);
            let is_snapshot = matches!(m.body, MessageBody::InstallSnapshot(_));
            // A partition that formed while a message was in flight stops it.
            if !self.is_up(to) || self.net.is_blocked(from, to) {
                if is_snapshot {
                    self.report_snapshot(from, to, false);
                }
                continue;
            }
            if is_snapshot {
                // The stream finished; the sender hears so, as from a
                // real transport.
                self.report_snapshot(from, to, true);
            }
            self.steps += 1;
            let result = self.raft_mut(to).map(|r| r.step(m));
            match result {
                // A removed member or a delayed TimeoutNow is refused, as it
                // should be; a malformed message from a correct peer is a bug.
                Some(Err(RaftError::Refused { reason, .. })) if !reason.is_malformed() => {}
                Some(Err(e)) => {
                    self.fail("step", format!("node {to} failed to step a message: {e}"));
                }
                _ => {}
            }
            self.process_ready(to);
            self.check_leaders();
        }
    }

    fn report_snapshot(&mut self, from: NodeId, to: NodeId, ok: bool) {
        if let Some(r) = self.raft_mut(from) {
            r.report_snapshot(to, ok);
            self.process_ready(from);
        }
    }

    /// Runs `ticks` ticks.
    pub fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            if self.violation.is_some() {
                return;
            }
            self.tick();
        }
    }

    /// Runs until `pred` holds (checked after every tick) or `max_ticks`
    /// pass; returns whether it held.
    pub fn run_until(&mut self, pred: impl Fn(&Cluster) -> bool, max_ticks: u64) -> bool {
        for _ in 0..max_ticks {
            if pred(self) {
                return true;
            }
            if self.violation.is_some() {
                return false;
            }
            self.tick();
        }
        pred(self)
    }

    /// Proposes a command on `id`.
    pub fn propose(&mut self, id: NodeId, data: Bytes) -> Result<Proposal, ProposeError> {
        let r = self
            .raft_mut(id)
            .ok_or(ProposeError::NotLeader { leader: None })?;
        let p = r.propose(data);
        self.steps += 1;
        self.process_ready(id);
        self.check_leaders();
        p
    }

    pub fn change_membership(
        &mut self,
        id: NodeId,
        change: ConfChange,
    ) -> Result<Proposal, ProposeError> {
        let r = self
            .raft_mut(id)
            .ok_or(ProposeError::NotLeader { leader: None })?;
        let p = r.change_membership(change);
        self.steps += 1;
        self.process_ready(id);
        p
    }

    pub fn transfer_leader(&mut self, id: NodeId, to: NodeId) -> Result<(), ProposeError> {
        let r = self
            .raft_mut(id)
            .ok_or(ProposeError::NotLeader { leader: None })?;
        let res = r.transfer_leader(to);
        self.steps += 1;
        self.process_ready(id);
        res
    }

    pub fn read_index(&mut self, id: NodeId, ctx: u64) -> Result<(), ProposeError> {
        let r = self
            .raft_mut(id)
            .ok_or(ProposeError::NotLeader { leader: None })?;
        let res = r.read_index(ctx);
        self.steps += 1;
        self.process_ready(id);
        res
    }

    /// Stops a node, losing everything it had not persisted.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if let Some(r) = n.raft.take() {
                n.durable = r.storage().clone();
            }
            // What was queued and not yet written is lost.
            n.writes.clear();
            n.reads.clear();
        }
    }

    /// Restarts a crashed node from its durable state.
    pub fn restart(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        if n.raft.is_some() || self.removed.contains(&id) {
            return;
        }
        let incarnation = n.incarnation + 1;
        let config = self.config(id, incarnation);
        let storage = n.durable.clone();
        let applied = n.sm.applied;
        match RaftNode::with_applied(config, storage, applied) {
            Ok(r) => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.raft = Some(r);
                    n.incarnation = incarnation;
                }
            }
            Err(e) => self.fail("restart", format!("node {id} failed to restart: {e}")),
        }
    }

    /// Replaces a node's disk with an empty one and starts it again, as a
    /// member whose data directory was lost comes back under the same id:
    /// withholding its votes, as the server has a node that joins with a
    /// new data directory do.
    pub fn wipe(&mut self, id: NodeId) {
        self.crash(id);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.durable = MemStorage::new(Membership::default());
            n.sm = StateMachine::default();
        }
        self.restart(id);
        if let Some(r) = self.raft_mut(id) {
            r.withhold_votes();
        }
    }

    /// Stops a node for good (it was removed from the cluster).
    pub fn retire(&mut self, id: NodeId) {
        self.crash(id);
        self.removed.insert(id);
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.net.block(id, other);
                self.net.block(other, id);
            }
        }
    }

    /// Splits the cluster: nodes in different groups cannot talk.
    pub fn partition(&mut self, groups: &[&[u64]]) {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for x in *a {
                        for y in *b {
                            self.net.block(NodeId(*x), NodeId(*y));
                        }
                    }
                }
            }
        }
    }

    /// Blocks messages from `from` to `to` only (an asymmetric fault).
    pub fn block_one_way(&mut self, from: NodeId, to: NodeId) {
        self.net.block(from, to);
    }

    pub fn heal(&mut self) {
        self.net.heal();
    }

    pub fn set_filter(&mut self, filter: Option<Filter>) {
        self.net.filter = filter;
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.net.faults = faults;
    }

    pub fn set_crash_mid_ready(&mut self, p: f64) {
        self.opts.crash_mid_ready = p;
    }

    pub fn set_crash_before_ack(&mut self, p: f64) {
        self.opts.crash_before_ack = p;
    }

    /// Takes a snapshot of `id`'s state machine and compacts its log up to
    /// the applied index, keeping `keep` trailing entries.
    pub fn compact(&mut self, id: NodeId, keep: u64) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(r) = n.raft.as_mut() else {
            return;
        };
        let applied = n.sm.applied;
        if applied.0 <= keep {
            return;
        }
        let Ok(first) = r.storage().first_index() else {
            return;
        };
        if applied < first {
            return;
        }
        // The snapshot must describe the state at its index, so it is taken
        // at the applied index; the trailing entries stay in the log.
        let (membership, image) = (n.sm.membership.clone(), n.sm.image());
        if let Err(e) = r.storage_mut().compact(applied, membership, image) {
            self.fail("compaction", format!("node {id} failed to compact: {e}"));
        }
    }

    // ------------------------------------------------------- driver loop

    /// Carries out every `Ready` of `id`, checking each durable write,
    /// commit and apply against the invariants.
    fn process_ready(&mut self, id: NodeId) {
        loop {
            let crash_roll = if self.opts.crash_mid_ready > 0.0 {
                self.rng.random_range(0.0..1.0)
            } else {
                1.0
            };
            let now = self.now;
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            let Some(r) = n.raft.as_mut() else {
                return;
            };
            if !r.has_ready() {
                return;
            }
            let mut rd = r.ready();
            let p = self.opts.crash_mid_ready;
            // Like a fast driver, send what may leave before the write
            // (a leader's appends and heartbeats) first.
            let (early, late): (Vec<_>, Vec<_>) = std::mem::take(&mut rd.messages)
                .into_iter()
                .partition(|m| m.can_send_before_persist());
            let mut snapshot_failures = Vec::new();
            for m in early {
                let to = m.to;
                let is_snapshot = matches!(m.body, MessageBody::InstallSnapshot(_));
                if !self.net.send(m, now, &mut self.rng) && is_snapshot {
                    // The transport reports a failed snapshot stream.
                    snapshot_failures.push(to);
                }
            }
            if crash_roll < p / 2.0 {
                // Crash before anything of this Ready is durable.
                self.crash(id);
                return;
            }
            let mut failed: Option<Violation> = None;

            if self.opts.async_persistence {
                // 1–2. Queue the write with the messages that wait for it;
                //      with nothing to write and nothing queued, they go now.
                let nothing_to_write =
                    rd.snapshot.is_none() && rd.entries.is_empty() && rd.hard_state.is_none();
                let queue_empty = self.nodes.get(&id).is_none_or(|n| n.writes.is_empty());
                if nothing_to_write && queue_empty {
                    for m in late {
                        self.send_promise(id, m);
                    }
                } else {
                    let due = now + self.rng.random_range(0..=self.opts.max_persist_delay);
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.writes.push_back(QueuedWrite {
                            due,
                            snapshot: rd.snapshot.take(),
                            entries: std::mem::take(&mut rd.entries),
                            hard_state: rd.hard_state.take(),
                            then_send: late,
                        });
                    }
                }
            } else {
                // 1. Persist: snapshot, entries, hard state.
                if let Some(v) = self.persist(id, rd.snapshot.take(), &rd.entries, rd.hard_state) {
                    failed.get_or_insert(v);
                }
                if crash_roll < p {
                    // Crash after persisting, before any message is sent.
                    if let Some(v) = failed {
                        self.violation.get_or_insert(v);
                    }
                    self.crash(id);
                    return;
                }
                // 2. Send what had to wait for the write.
                for m in late {
                    self.send_promise(id, m);
                }
            }

            // 3. Apply. A node persisting asynchronously hands out an entry
            //    to apply before the hard state that records its commit is
            //    durable: the node says it is committed, so it is checked
            //    as such here.
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            if self.opts.async_persistence {
                let term = n.raft.as_ref().map(|r| r.status().term).unwrap_or_default();
                for e in &rd.committed_entries {
                    if let Err(v) = self.inv.saw_commit(id, e, term) {
                        failed.get_or_insert(v);
                    }
                }
            }
            for e in &rd.committed_entries {
                let prev = n.sm.applied;
                n.sm.apply(e);
                if let Err(v) = self.inv.saw_apply(id, e, prev, n.sm.digest) {
                    failed.get_or_insert(v);
                }
            }
            // 4. Reads.
            n.reads.extend(rd.read_states);
            if let Some(r) = n.raft.as_mut() {
                if self.opts.async_persistence {
                    r.advance_handed();
                } else {
                    r.advance();
                }
                for to in snapshot_failures {
                    r.report_snapshot(to, false);
                }
            }
            if let Some(v) = failed {
                self.violation.get_or_insert(v);
                return;
            }
        }
    }

    /// Completes, in order, every queued write of every live node that is
    /// due.
    fn complete_due_writes(&mut self) {
        for id in self.up_ids() {
            while self.violation.is_none()
                && self
                    .nodes
                    .get(&id)
                    .and_then(|n| n.writes.front())
                    .is_some_and(|w| w.due <= self.now)
            {
                self.complete_write(id);
            }
        }
    }

    /// The simulated writer thread of `id` finishes its oldest write: it is
    /// durable; then (unless the node crashes right there) the messages
    /// that waited for it go out and the core hears of it.
    fn complete_write(&mut self, id: NodeId) {
        let Some(w) = self.nodes.get_mut(&id).and_then(|n| n.writes.pop_front()) else {
            return;
        };
        let ack = w
            .entries
            .last()
            .map(|e| (e.index, e.term))
            .or_else(|| w.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)));
        if let Some(v) = self.persist(id, w.snapshot, &w.entries, w.hard_state) {
            self.violation.get_or_insert(v);
            return;
        }
        if self.opts.crash_before_ack > 0.0
            && self.rng.random_range(0.0..1.0) < self.opts.crash_before_ack
        {
            self.crash(id);
            return;
        }
        for m in w.then_send {
            self.send_promise(id, m);
        }
        if let (Some((index, term)), Some(r)) = (ack, self.raft_mut(id)) {
            r.on_persisted(index, term);
        }
        self.steps += 1;
        self.process_ready(id);
        self.check_leaders();
    }

    /// Sends a message that had to wait for a write, checking first that
    /// what it promises is durable on its sender: an accepted append only
    /// entries the sender's storage holds, a granted vote only a vote its
    /// storage recorded.
    fn send_promise(&mut self, id: NodeId, m: Message) {
        if let Some(storage) = self.storage(id) {
            let broken = match &m.body {
                MessageBody::AppendResponse(crate::raft::AppendResponse::Accepted {
                    match_index,
                }) => storage
                    .last_index()
                    .map_or(true, |last| last < *match_index),
                MessageBody::VoteResponse(v) if v.granted && !v.pre_vote => {
                    let hs = storage.hard_state();
                    hs.term != m.term || hs.vote != Some(m.to)
                }
                _ => false,
            };
            if broken {
                self.fail(
                    "acknowledged only when durable",
                    format!("node {id} sent {m:?} before it was durable"),
                );
                return;
            }
        }
        let now = self.now;
        self.net.send(m, now, &mut self.rng);
    }

    /// Makes one write durable on `id`'s storage (snapshot, entries, hard
    /// state), checking it against the invariants.
    fn persist(
        &mut self,
        id: NodeId,
        snapshot: Option<Snapshot>,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Option<Violation> {
        let n = self.nodes.get_mut(&id)?;
        let r = n.raft.as_mut()?;
        let mut failed: Option<Violation> = None;
        let old_hs = r.storage().hard_state();
        if let Some(s) = &snapshot {
            r.storage_mut().apply_snapshot(s.clone());
            n.sm.restore(s);
            if let Err(v) = self.inv.saw_state(id, s.meta.index, n.sm.digest) {
                failed.get_or_insert(v);
            }
        }
        if !entries.is_empty() {
            let durable_commit = r.storage().hard_state().commit;
            for (k, e) in entries.iter().enumerate() {
                let prev_term = if k > 0 {
                    Some(entries[k - 1].term)
                } else {
                    r.storage().term(e.index.prev()).ok()
                };
                if let Err(v) = self.inv.saw_write(id, e, prev_term, durable_commit) {
                    failed.get_or_insert(v);
                }
            }
            if let Err(e) = r.storage_mut().append(entries) {
                failed.get_or_insert(Violation {
                    property: "storage contract",
                    detail: format!("node {id} could not append: {e}"),
                });
            }
        }
        if let Some(hs) = hard_state {
            if hs.term < old_hs.term {
                failed.get_or_insert(Violation {
                    property: "terms never decrease",
                    detail: format!("node {id} went from term {} to {}", old_hs.term, hs.term),
                });
            }
            if hs.term == old_hs.term && old_hs.vote.is_some() && hs.vote != old_hs.vote {
                failed.get_or_insert(Violation {
                    property: "one vote per term",
                    detail: format!(
                        "node {id} changed its vote in term {} from {:?} to {:?}",
                        hs.term, old_hs.vote, hs.vote
                    ),
                });
            }
            let storage = r.storage();
            let floor = storage.first_index().map(|i| i.prev()).unwrap_or_default();
            let from = old_hs.commit.max(floor).next();
            if hs.commit >= from {
                match storage.entries(from, hs.commit.next(), None) {
                    Ok(entries) => {
                        for e in &entries {
                            if let Err(v) = self.inv.saw_commit(id, e, hs.term) {
                                failed.get_or_insert(v);
                            }
                        }
                    }
                    Err(e) => {
                        failed.get_or_insert(Violation {
                            property: "commit within the log",
                            detail: format!(
                                "node {id} committed up to {} but its log cannot serve it: {e}",
                                hs.commit
                            ),
                        });
                    }
                }
            }
            r.storage_mut().set_hard_state(hs);
        }
        failed
    }

    /// Election Safety after every step, and Leader Completeness for every
    /// new leader.
    fn check_leaders(&mut self) {
        let leaders: Vec<(NodeId, Term)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| n.raft.as_ref().map(|r| (*id, r.status())))
            .filter(|(_, s)| s.role == RoleState::Leader)
            .map(|(id, s)| (id, s.term))
            .collect();
        for (id, term) in leaders {
            let new = !self.inv.is_known_leader(term, id);
            if let Err(v) = self.inv.saw_leader(term, id) {
                self.violation.get_or_insert(v);
                return;
            }
            if new {
                let Some(storage) = self.storage(id).cloned() else {
                    continue;
                };
                let result = self.inv.check_leader_complete(id, term, |index| {
                    let first = storage.first_index().map_err(|_| ())?;
                    if index < first {
                        return Ok(None);
                    }
                    storage.term(index).map(Some).map_err(|_| ())
                });
                if let Err(v) = result {
                    self.violation.get_or_insert(v);
                    return;
                }
            }
        }
    }
}
