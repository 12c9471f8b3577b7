//! The simulated cluster: real nodes turned tick by tick, a client
//! workload, and a fault schedule drawn from the seed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, oneshot, watch};

use super::checks::{Acked, Checks, Violation};
use super::outbox::SimOutbox;
use crate::http::probes::{READY_APPLY_GAP, readiness};
use crate::metrics::Metrics;
use crate::raft::harness::{Faults, Network};
use crate::raft::{LogIndex, Message, MessageBody, NodeId, RoleState, Term};
use crate::server::driver::{Driver, Event, Health};
use crate::server::handle::{DriverReply, MemberChange, NewMember, Request, WriteResult};
use crate::server::inbound::Inbound;
use crate::server::member_info::MemberInfo;
use crate::server::start::{Bootstrap, NodeConfig, driver_config, open_node};
use crate::storage::{
    ApplyOutcome, Command, Disk, DiskMode, FaultyDisk, ImageCheck, KvStore, Limits, Op,
    SnapshotPolicy,
};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Voters the cluster is bootstrapped with.
    pub voters: u64,
    /// Ticks of workload and faults; then the cluster is healed and must
    /// converge.
    pub ticks: u64,
    pub faults: Faults,
    /// Mean ticks between crashes of a random member (0: none).
    pub crash_every: u64,
    /// Whether a crash may also be a power loss: the member's disk then
    /// loses some of what it wrote since its last sync.
    pub power_loss: bool,
    /// Mean ticks between disk faults below redb on a random member (0:
    /// none): a full disk or one failing writes and syncs for a while, or
    /// the power going off in the middle of a turn.
    pub disk_fault_every: u64,
    /// Mean ticks between partitions that isolate a random member (0: none).
    pub partition_every: u64,
    /// Mean ticks between membership changes (0: none).
    pub membership_every: u64,
    /// Mean ticks between leadership transfers (0: none).
    pub transfer_every: u64,
    /// Writes submitted per tick, on average.
    pub writes_per_tick: f64,
    /// The snapshot policy of every member: small, so that compaction and
    /// InstallSnapshot happen all the time.
    pub snapshot_policy: SnapshotPolicy,
    /// Start members with different size limits (they must still apply the
    /// same commands).
    pub mixed_limits: bool,
}

impl SimOptions {
    /// Every fault, at rates that make a few hundred ticks eventful.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            voters: 3,
            ticks: 400,
            faults: Faults {
                drop: 0.02,
                duplicate: 0.02,
                max_delay: 3,
            },
            crash_every: 60,
            power_loss: true,
            disk_fault_every: 100,
            partition_every: 80,
            membership_every: 90,
            transfer_every: 120,
            writes_per_tick: 0.7,
            snapshot_policy: SnapshotPolicy {
                every_entries: 20,
                keep_trailing: 5,
            },
            mixed_limits: true,
        }
    }
}

/// What a run did, and the first invariant it broke, if any.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub ticks: u64,
    pub turns: u64,
    pub writes_acked: u64,
    pub writes_failed: u64,
    pub crashes: u64,
    /// Of those, crashes with a power loss (unsynced writes lost).
    pub power_losses: u64,
    /// Disk faults injected (full, failing, power off mid-turn).
    pub disk_faults: u64,
    /// Members that stopped on a disk error, as a real process does.
    pub disk_stops: u64,
    /// Unsynced pages the disks threw away.
    pub pages_lost: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    pub transfers: u64,
    pub snapshots_installed: u64,
    pub snapshots_refused: u64,
    pub violation: Option<Violation>,
}

const ELECTION_TICKS: u32 = 10;
const HEARTBEAT_TICKS: u32 = 2;
/// Ticks a healed cluster gets to agree on everything.
const CONVERGE_TICKS: u64 = 3000;

struct SimNode {
    cfg: NodeConfig,
    disk: Arc<FaultyDisk>,
    /// The tick at which the disk's fault mode ends.
    disk_healthy_at: u64,
    /// The disk's fault count and generation when the member last started:
    /// a member may stop on its own only if its disk failed since.
    disk_at_start: (u64, u64),
    driver: Option<Driver>,
    outbox: SimOutbox,
    health: Option<watch::Receiver<Health>>,
    /// Held so that the driver's channels stay open.
    _senders: Option<(mpsc::Sender<Request>, mpsc::Sender<Inbound>)>,
    /// The peers this member heard from since it started: the first
    /// message on a peer's stream tells the receiver where the sender is,
    /// as the real peer service does.
    heard_from: std::collections::BTreeSet<NodeId>,
}

struct PendingWrite {
    key: Bytes,
    value: Bytes,
    reply: oneshot::Receiver<DriverReply<WriteResult>>,
}

/// A cluster of real nodes in one deterministic simulation.
pub struct SimCluster {
    opts: SimOptions,
    rng: ChaCha8Rng,
    now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Network,
    /// Images in flight, by (from, to, index, term).
    images: HashMap<(NodeId, NodeId, LogIndex, Term), Vec<Bytes>>,
    checks: Checks,
    acked: Vec<Acked>,
    writes: Vec<PendingWrite>,
    change: Option<oneshot::Receiver<DriverReply<crate::server::MemberStatus>>>,
    next_key: u64,
    next_id: u64,
    report: Report,
    dir: PathBuf,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("seed", &self.opts.seed)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn peer_url(id: NodeId) -> String {
    format!("http://sim-node-{id}:2380")
}

impl SimCluster {
    /// Bootstraps `opts.voters` members, each with a data directory under
    /// `dir` (which should be empty; memory-backed is fastest, since the
    /// simulation fsyncs a lot).
    pub fn new(opts: SimOptions, dir: PathBuf) -> Self {
        let mut c = SimCluster {
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            net: Network::new(opts.faults),
            now: 0,
            nodes: BTreeMap::new(),
            images: HashMap::new(),
            checks: Checks::default(),
            acked: Vec::new(),
            writes: Vec::new(),
            change: None,
            next_key: 0,
            next_id: opts.voters + 1,
            report: Report::default(),
            dir,
            opts,
        };
        let members: Vec<(NodeId, MemberInfo)> = (1..=c.opts.voters)
            .map(|i| {
                (
                    NodeId(i),
                    MemberInfo {
                        name: format!("sim-{i}"),
                        peer_url: peer_url(NodeId(i)),
                        client_url: String::new(),
                    },
                )
            })
            .collect();
        for (id, _) in &members {
            c.add_node(*id, Bootstrap::Initial(members.clone()));
        }
        c
    }

    /// Runs the workload under faults, then heals everything and lets the
    /// cluster converge; checks every invariant after every tick.
    pub fn run(mut self) -> Report {
        while self.now < self.opts.ticks && self.report.violation.is_none() {
            self.inject_faults();
            self.submit_writes();
            self.tick();
        }
        if self.report.violation.is_none() {
            self.converge();
        }
        self.report.ticks = self.now;
        self.report.pages_lost = self.nodes.values().map(|n| n.disk.stats().pages_lost).sum();
        self.report
    }

    // ------------------------------------------------------------ nodes

    fn node_config(
        &mut self,
        id: NodeId,
        bootstrap: Bootstrap,
        disk: &Arc<FaultyDisk>,
    ) -> NodeConfig {
        let mut limits = Limits::default();
        if self.opts.mixed_limits && id.get() % 2 == 0 {
            // A member started with much smaller limits than the leader it
            // follows: it must still apply what the leader accepted.
            limits.max_value_bytes = 4;
            limits.max_key_bytes = 4;
        }
        NodeConfig {
            id,
            name: format!("sim-{id}"),
            cluster_id: Some(0x51),
            data_dir: self.dir.join(format!("node-{id}")),
            listen_peer: ([127, 0, 0, 1], 0).into(),
            advertise_peer: peer_url(id),
            advertise_client: String::new(),
            bootstrap,
            tick: std::time::Duration::from_millis(10),
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
            request_timeout: std::time::Duration::from_secs(5),
            limits,
            snapshot_policy: self.opts.snapshot_policy,
            kv_cache_bytes: 4 << 20,
            max_snapshot_bytes: 1 << 30,
            disk: Disk::faulty(disk.clone()),
            peer_security: crate::server::PeerSecurity::none(),
            lease_checkpoint_interval: crate::server::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
        }
    }

    fn add_node(&mut self, id: NodeId, bootstrap: Bootstrap) {
        let disk = FaultyDisk::new(self.rng.random());
        let cfg = self.node_config(id, bootstrap, &disk);
        self.nodes.insert(
            id,
            SimNode {
                cfg,
                disk,
                disk_healthy_at: 0,
                disk_at_start: (0, 0),
                driver: None,
                outbox: SimOutbox::default(),
                health: None,
                _senders: None,
                heard_from: Default::default(),
            },
        );
        self.start(id);
    }

    /// Opens a member's data directory and starts its driver.
    fn start(&mut self, id: NodeId) {
        let seed = self.rng.random();
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let faults_before = n.disk.stats().faults;
        let opened = match open_node(&n.cfg, seed) {
            Ok(o) => o,
            // A failing disk may keep a member from starting, as it would a
            // real process; it is tried again later.
            Err(_)
                if n.disk.mode() != DiskMode::Healthy || n.disk.stats().faults > faults_before =>
            {
                return;
            }
            Err(e) => {
                let detail = format!("member {id} cannot start: {e:#}");
                self.fail("a member restarts from its data directory", detail);
                return;
            }
        };
        n.disk_at_start = (faults_before, n.disk.generation());
        let (req_tx, req_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(64);
        let (health_tx, health_rx) = watch::channel(Health {
            last_loop: std::time::Instant::now(),
            leader: None,
            commit_index: LogIndex::ZERO,
            leader_commit: LogIndex::ZERO,
            applied_index: opened.kv.applied_index(),
            role: RoleState::Follower,
            term: Term::ZERO,
        });
        let metrics = match Metrics::new() {
            Ok(m) => Arc::new(m),
            Err(e) => {
                self.fail("metrics", e.to_string());
                return;
            }
        };
        n.outbox = SimOutbox::default();
        let mut driver = Driver::new(
            driver_config(&n.cfg, opened.cluster_id),
            opened.node,
            opened.kv,
            Box::new(n.outbox.clone()),
            metrics,
            req_rx,
            in_rx,
            health_tx,
        );
        driver.begin();
        n.driver = Some(driver);
        n.heard_from.clear();
        n.health = Some(health_rx);
        n._senders = Some((req_tx, in_tx));
        self.checks.forget(id);
    }

    /// The member's machine loses power: its disk loses part of what was
    /// written since the last sync, then the member crashes.
    fn power_off(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get(&id) {
            n.disk.power_loss();
            self.report.power_losses += 1;
        }
        self.crash(id);
    }

    /// Whether the member's disk failed since it started (a fault, or the
    /// power went off).
    fn disk_failed(&self, id: NodeId) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| (n.disk.stats().faults, n.disk.generation()) != n.disk_at_start)
    }

    /// Everything in memory is lost; the data directory stays.
    fn crash(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.driver = None;
            n.health = None;
            n._senders = None;
            n.outbox = SimOutbox::default();
        }
        self.checks.forget(id);
    }

    fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.driver.is_some())
    }

    fn up_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.driver.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn kv(&self, id: NodeId) -> Option<KvStore> {
        self.nodes
            .get(&id)
            .and_then(|n| n.driver.as_ref())
            .map(|d| d.kv().clone())
    }

    fn leader(&self) -> Option<NodeId> {
        self.up_ids().into_iter().find(|id| {
            self.nodes
                .get(id)
                .and_then(|n| n.driver.as_ref())
                .is_some_and(|d| d.core().status().role == RoleState::Leader)
        })
    }

    /// One turn of `id`'s driver loop. A driver may stop on an error of
    /// its own disk (a real node exits, and is restarted); stopping on
    /// anything else, input from the network included, is a broken
    /// invariant.
    fn turn(&mut self, id: NodeId, event: Event) {
        let Some(driver) = self.nodes.get_mut(&id).and_then(|n| n.driver.as_mut()) else {
            return;
        };
        self.report.turns += 1;
        let result = driver.turn(event);
        let powered_off = self
            .nodes
            .get(&id)
            .is_some_and(|n| n.disk.generation() != n.disk_at_start.1);
        match result {
            // The machine is gone: whatever the turn did after its disk
            // went away never left it.
            _ if powered_off => {
                self.report.disk_stops += 1;
                self.crash(id);
            }
            Ok(_) => {}
            Err(_) if self.disk_failed(id) => {
                // What it sent before the error is on the wire.
                self.report.disk_stops += 1;
                let sent = self.nodes.get(&id).map(|n| n.outbox.take().messages);
                for m in sent.into_iter().flatten() {
                    self.net.send(m, self.now, &mut self.rng);
                }
                self.crash(id);
            }
            Err(e) => {
                let detail = format!("member {id}: {e}");
                self.fail("a member never stops on its own", detail);
                self.crash(id);
            }
        }
    }

    // ------------------------------------------------------------ a tick

    fn tick(&mut self) {
        self.now += 1;
        for id in self.up_ids() {
            self.turn(id, Event::Tick);
        }
        self.collect();
        for m in self.net.take_due(self.now) {
            self.deliver(m);
            self.collect();
        }
        self.poll_replies();
        self.check();
    }

    /// Puts what every driver sent on the network.
    fn collect(&mut self) {
        for id in self.up_ids() {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            let out = n.outbox.take();
            for m in out.messages {
                self.net.send(m, self.now, &mut self.rng);
            }
            for s in out.snapshots {
                let to = s.message.to;
                let sent = match (s.chunks, &s.message.body) {
                    (Ok(chunks), MessageBody::InstallSnapshot(snap)) => {
                        self.images
                            .insert((id, to, snap.meta.index, snap.meta.term), chunks);
                        self.net.send(s.message, self.now, &mut self.rng)
                    }
                    _ => false,
                };
                if !sent {
                    self.turn(id, Event::Inbound(Inbound::SnapshotSent { to, ok: false }));
                }
            }
        }
    }

    fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from, m.to);
        let reachable = self.is_up(to) && !self.net.is_blocked(from, to);
        if reachable
            && self
                .nodes
                .get_mut(&to)
                .is_some_and(|n| n.heard_from.insert(from))
        {
            let hint = Inbound::PeerUrl {
                id: from,
                url: peer_url(from),
                client_url: None,
            };
            self.turn(to, Event::Inbound(hint));
        }
        let MessageBody::InstallSnapshot(snap) = &m.body else {
            if reachable {
                self.turn(to, Event::Inbound(Inbound::Message(m)));
            }
            return;
        };
        let key = (from, to, snap.meta.index, snap.meta.term);
        let staged = if reachable {
            self.stage(to, &m, self.images.get(&key))
        } else {
            None
        };
        let ok = staged.is_some();
        if let Some(staged) = staged {
            self.report.snapshots_installed += 1;
            self.turn(
                to,
                Event::Inbound(Inbound::SnapshotReceived { message: m, staged }),
            );
        } else if reachable {
            self.report.snapshots_refused += 1;
        }
        self.turn(from, Event::Inbound(Inbound::SnapshotSent { to, ok }));
    }

    /// What the peer service does with an incoming image: check it while
    /// writing it to the staging directory. Unlike the peer service, which
    /// names every transfer apart, a duplicated image is staged again under
    /// the same name: the driver must keep it all the same.
    fn stage(&self, to: NodeId, m: &Message, chunks: Option<&Vec<Bytes>>) -> Option<PathBuf> {
        let MessageBody::InstallSnapshot(snap) = &m.body else {
            return None;
        };
        let n = self.nodes.get(&to)?;
        let dir = n.cfg.data_dir.join("snapshots");
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join(format!(
            "incoming-{}-{}-{}.snap",
            m.from, snap.meta.index, snap.meta.term
        ));
        let mut check = ImageCheck::new(n.cfg.max_snapshot_bytes);
        let mut image = Vec::new();
        for c in chunks? {
            check.feed(c).ok()?;
            image.extend_from_slice(c);
        }
        if check.finish().ok()? != snap.meta {
            return None;
        }
        std::fs::write(&path, image).ok()?;
        Some(path)
    }

    // --------------------------------------------------------- workload

    fn submit_writes(&mut self) {
        let mut n = 0.0;
        while self
            .rng
            .random_bool(self.opts.writes_per_tick.clamp(0.0, 0.99) / (1.0 + n))
        {
            n += 1.0;
            let ups = self.up_ids();
            if ups.is_empty() {
                return;
            }
            // Mostly to the leader, as a client that follows redirects
            // would; sometimes to anyone (a follower refuses).
            let id = match self.leader() {
                Some(l) if self.rng.random_bool(0.8) => l,
                _ => ups[self.rng.random_range(0..ups.len())],
            };
            self.next_key += 1;
            // Now and then a compaction well behind the writes, so that
            // history is both kept and deleted while members crash, lag
            // and install snapshots.
            if self.next_key % 10 == 0 {
                let newest = self.acked.iter().map(|a| a.revision).max().unwrap_or(0);
                if newest > 10 {
                    let (reply, _ignored) = oneshot::channel();
                    let cmd = Command {
                        request_id: None,
                        auth: None,
                        op: Op::Compact {
                            revision: newest - 5,
                        },
                    };
                    self.turn(id, Event::Request(Request::Write { cmd, reply }));
                    continue;
                }
            }
            // Keys are written again and again, so they have history.
            // Values longer than the small members' limits: the leader
            // decides, every member applies.
            let key = Bytes::from(format!("key-{:05}", self.next_key % 13));
            let value = Bytes::from(format!("value-{}", self.next_key));
            let (reply, rx) = oneshot::channel();
            let cmd = Command {
                request_id: None,
                auth: None,
                op: Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                    lease: 0,
                },
            };
            self.writes.push(PendingWrite {
                key,
                value,
                reply: rx,
            });
            self.turn(id, Event::Request(Request::Write { cmd, reply }));
        }
    }

    fn poll_replies(&mut self) {
        let mut still = Vec::new();
        for mut w in std::mem::take(&mut self.writes) {
            match w.reply.try_recv() {
                Ok(Ok(WriteResult {
                    outcome: ApplyOutcome::Put { revision, .. },
                    ..
                })) => {
                    self.report.writes_acked += 1;
                    self.acked.push(Acked {
                        key: w.key,
                        value: w.value,
                        revision,
                    });
                }
                Ok(_) | Err(oneshot::error::TryRecvError::Closed) => self.report.writes_failed += 1,
                Err(oneshot::error::TryRecvError::Empty) => still.push(w),
            }
        }
        self.writes = still;
        if let Some(rx) = self.change.as_mut() {
            if !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                self.change = None;
            }
        }
    }

    // ----------------------------------------------------------- faults

    fn chance(&mut self, every: u64) -> bool {
        every > 0 && self.rng.random_range(0..every) == 0
    }

    /// The members of the configuration the leader has in force (every
    /// node while there is no leader).
    fn members(&self) -> Vec<NodeId> {
        match self
            .leader()
            .and_then(|l| self.nodes.get(&l))
            .and_then(|n| n.driver.as_ref())
        {
            Some(d) => d.core().membership().ids().collect(),
            None => self.nodes.keys().copied().collect(),
        }
    }

    fn inject_faults(&mut self) {
        let members = self.members();
        let down: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|id| !self.is_up(*id))
            .collect();
        // Crash one member at a time, fewer than a majority in all.
        if self.chance(self.opts.crash_every) && down.len() < (members.len() - 1) / 2 {
            let ups: Vec<NodeId> = members.iter().copied().filter(|i| self.is_up(*i)).collect();
            if !ups.is_empty() {
                let id = ups[self.rng.random_range(0..ups.len())];
                self.report.crashes += 1;
                if self.opts.power_loss && self.rng.random_bool(0.5) {
                    self.power_off(id);
                } else {
                    self.crash(id);
                }
            }
        }
        self.inject_disk_faults(&members);
        for id in down {
            if self.chance(self.opts.crash_every / 2 + 1) {
                self.start(id);
            }
        }
        if self.chance(self.opts.partition_every) {
            if self.net.is_partitioned() {
                self.net.heal();
            } else if !members.is_empty() {
                let id = members[self.rng.random_range(0..members.len())];
                self.report.partitions += 1;
                for other in self.nodes.keys().copied().collect::<Vec<_>>() {
                    if other != id {
                        self.net.block(id, other);
                        self.net.block(other, id);
                    }
                }
            }
        }
        if self.chance(self.opts.membership_every) {
            self.change_membership();
        }
        if self.chance(self.opts.transfer_every) {
            if let Some(l) = self.leader() {
                let voters: Vec<NodeId> = self
                    .nodes
                    .get(&l)
                    .and_then(|n| n.driver.as_ref())
                    .map(|d| d.core().membership().voters().collect())
                    .unwrap_or_default();
                if !voters.is_empty() {
                    let to = voters[self.rng.random_range(0..voters.len())];
                    let (reply, _rx) = oneshot::channel();
                    self.report.transfers += 1;
                    self.turn(l, Event::Request(Request::TransferLeader { to, reply }));
                }
            }
        }
    }

    /// Ends disk faults whose time is up (the operator freed space or
    /// replaced the disk), and starts a new one on a member now and then,
    /// while fewer than a majority are down: a disk fault usually stops
    /// its member.
    fn inject_disk_faults(&mut self, members: &[NodeId]) {
        let now = self.now;
        for n in self.nodes.values_mut() {
            if n.disk_healthy_at <= now {
                n.disk.set_mode(DiskMode::Healthy);
            }
        }
        let down = members.iter().filter(|id| !self.is_up(**id)).count();
        if !self.chance(self.opts.disk_fault_every) || down >= (members.len() - 1) / 2 {
            return;
        }
        let ups: Vec<NodeId> = members.iter().copied().filter(|i| self.is_up(*i)).collect();
        if ups.is_empty() {
            return;
        }
        let id = ups[self.rng.random_range(0..ups.len())];
        let mode = match self.rng.random_range(0..3) {
            0 => DiskMode::Full,
            1 => DiskMode::Flaky { one_in: 20 },
            _ => DiskMode::PowerOffAfter {
                after: self.rng.random_range(1..=300),
            },
        };
        let lasts = self.rng.random_range(20..100);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.disk.set_mode(mode);
            n.disk_healthy_at = now + lasts;
            self.report.disk_faults += 1;
        }
    }

    /// One change at a time: add a learner (a new, empty member), promote
    /// a learner, or remove a member while more than three voters remain.
    fn change_membership(&mut self) {
        if self.change.is_some() {
            return;
        }
        let Some(l) = self.leader() else {
            return;
        };
        let Some(m) = self
            .nodes
            .get(&l)
            .and_then(|n| n.driver.as_ref())
            .map(|d| d.core().membership().clone())
        else {
            return;
        };
        let learners: Vec<NodeId> = m.learners().collect();
        let voters: Vec<NodeId> = m.voters().collect();
        let change = match self.rng.random_range(0..3) {
            0 if m.ids().count() < 6 => {
                let id = NodeId(self.next_id);
                self.next_id += 1;
                self.add_node(id, Bootstrap::Join);
                MemberChange::AddLearner(NewMember {
                    id: Some(id),
                    name: format!("sim-{id}"),
                    peer_url: peer_url(id),
                    client_url: String::new(),
                })
            }
            1 if !learners.is_empty() => {
                MemberChange::Promote(learners[self.rng.random_range(0..learners.len())])
            }
            2 if voters.len() > 3 || !learners.is_empty() => {
                let pool: Vec<NodeId> = if voters.len() > 3 {
                    voters.iter().chain(&learners).copied().collect()
                } else {
                    learners
                };
                MemberChange::Remove(pool[self.rng.random_range(0..pool.len())])
            }
            _ => return,
        };
        let (reply, rx) = oneshot::channel();
        self.change = Some(rx);
        self.report.membership_changes += 1;
        self.turn(
            l,
            Event::Request(Request::ChangeMembership { change, reply }),
        );
    }

    // ----------------------------------------------------------- checks

    fn fail(&mut self, property: &'static str, detail: String) {
        if self.report.violation.is_none() {
            self.report.violation = Some(Violation {
                tick: self.now,
                property,
                detail,
            });
        }
    }

    /// The commit index of the cluster: the highest any member knows.
    fn cluster_commit(&self) -> LogIndex {
        self.nodes
            .values()
            .filter_map(|n| n.driver.as_ref())
            .map(|d| d.core().status().commit_index)
            .max()
            .unwrap_or_default()
    }

    fn check(&mut self) {
        let commit = self.cluster_commit();
        let grace = u64::from(ELECTION_TICKS) * 4;
        let members = self.members();
        for id in self.up_ids() {
            let Some(kv) = self.kv(id) else {
                continue;
            };
            // A removed member (or a joiner whose addition failed) is no
            // longer expected to keep up; its state must still never
            // contradict the others'.
            let removed = !members.contains(&id);
            let mut result = self.checks.state(id, &kv);
            if result.is_ok() && self.now % 25 == 0 {
                result = Checks::acknowledged(id, &kv, &self.acked);
            }
            if result.is_ok() && !removed {
                let ready = self
                    .nodes
                    .get(&id)
                    .and_then(|n| n.health.as_ref())
                    .is_some_and(|h| readiness(&h.borrow()).is_ok());
                let behind =
                    commit.get().saturating_sub(kv.applied_index().get()) > READY_APPLY_GAP;
                result = self.checks.readiness(id, ready, behind, grace);
            }
            if let Err((property, detail)) = result {
                self.fail(property, detail);
                return;
            }
        }
    }

    /// Heals every fault and restarts every member that is still in the
    /// configuration; they must then agree on everything, and hold every
    /// acknowledged write.
    fn converge(&mut self) {
        self.net.heal();
        self.net.faults = Faults::none();
        for n in self.nodes.values() {
            n.disk.set_mode(DiskMode::Healthy);
        }
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            if !self.is_up(id) {
                self.start(id);
            }
        }
        let deadline = self.now + CONVERGE_TICKS;
        while self.now < deadline && self.report.violation.is_none() {
            self.tick();
            if self.now % 10 == 0 {
                // Whoever is not in the final configuration goes away.
                // A member may still stop on a store its faulty disk broke
                // before the healing (a write failed, and it notices at its
                // next write): it is restarted, as a real one would be.
                if self.leader().is_some() {
                    let members = self.members();
                    for id in self.up_ids() {
                        if !members.contains(&id) {
                            self.crash(id);
                        }
                    }
                    for id in members {
                        if self.nodes.contains_key(&id) && !self.is_up(id) {
                            self.start(id);
                        }
                    }
                }
                if self.converged() {
                    break;
                }
            }
        }
        if self.report.violation.is_some() {
            return;
        }
        if !self.converged() {
            let states: Vec<String> = self
                .up_ids()
                .into_iter()
                .filter_map(|id| {
                    let d = self.nodes.get(&id)?.driver.as_ref()?;
                    let s = d.core().status();
                    Some(format!(
                        "{id}: {:?} term {} commit {} applied {} members {:?}",
                        s.role,
                        s.term,
                        s.commit_index,
                        d.kv().applied_index(),
                        d.core().membership().ids().collect::<Vec<_>>()
                    ))
                })
                .collect();
            self.fail(
                "a healed cluster converges",
                format!("not converged after {CONVERGE_TICKS} ticks: {states:?}"),
            );
            return;
        }
        for id in self.up_ids() {
            if let Some(kv) = self.kv(id) {
                if let Err((property, detail)) = Checks::acknowledged(id, &kv, &self.acked) {
                    self.fail(property, detail);
                    return;
                }
            }
        }
        // A commit index alone waits for a tick before it is written: on
        // a quiet cluster the log soon holds what the member knows
        // committed (the tick that notices may itself learn a commit, so
        // a few are allowed).
        let mut lagging = Vec::new();
        for _ in 0..3 {
            self.tick();
            lagging = self
                .up_ids()
                .into_iter()
                .filter_map(|id| {
                    let core = self.nodes.get(&id)?.driver.as_ref()?.core();
                    let (stored, commit) =
                        (core.storage().stored_commit(), core.status().commit_index);
                    (stored != commit)
                        .then(|| format!("member {id} stored {stored}, knows {commit}"))
                })
                .collect();
            if lagging.is_empty() {
                return;
            }
        }
        self.fail(
            "a quiet member's log holds its commit index within a few ticks",
            lagging.join("; "),
        );
    }

    /// One leader, and every member in its configuration applied its whole
    /// commit index with an equal state.
    fn converged(&self) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let Some(leader) = self.nodes.get(&l).and_then(|n| n.driver.as_ref()) else {
            return false;
        };
        let commit = leader.core().status().commit_index;
        let members: Vec<NodeId> = leader.core().membership().ids().collect();
        let mut hashes = Vec::new();
        for id in members {
            let Some(kv) = self.kv(id) else {
                return false;
            };
            if kv.applied_index() != commit {
                return false;
            }
            match super::checks::state_hash(&kv) {
                Ok(h) => hashes.push(h),
                Err(_) => return false,
            }
        }
        hashes.windows(2).all(|w| w[0] == w[1])
    }
}
