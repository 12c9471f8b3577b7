//! The nemesis: faults injected into a running cluster at seeded random
//! times — `kill -9` and restart, a full disk (a file size limit, which
//! needs no privileges), SIGSTOP/SIGCONT, network partitions
//! through the peer proxies (a node isolated, a minority split off, a
//! one-way link cut), leadership transfers, and membership changes (a new
//! node added as a learner, promoted, an old voter removed).
//!
//! Faults that impair nodes overlap, but never impair more than a minority
//! of the voters at once, so a quorum always exists; membership changes
//! run only while nothing else is impaired, one step at a time. What is
//! checked here is what the cluster must always do whatever the timing
//! (e.g. refuse to promote a learner that holds nothing); everything else
//! is checked by the caller once the nemesis has healed the cluster.

mod admin;
mod membership;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::peer_proxy::PeerProxy;
use crate::seed::Rng;
use crate::workload::Endpoints;
use crate::{Cluster, Options, Pids};

/// How long a nemesis step may wait for the cluster before it counts as a
/// problem (no leader, a change that never commits).
const STEP_DEADLINE: Duration = Duration::from_secs(60);

/// A fault that lasts until healed.
#[derive(Clone, Debug)]
enum Fault {
    Kill(u64),
    Pause(u64),
    /// Restarted with a file size limit at its largest file's size: the
    /// first write that grows a file fails (EFBIG), as on a full disk.
    DiskFull(u64),
    /// Directed links (from, to) that are cut.
    Partition {
        links: Vec<(u64, u64)>,
        impaired: Vec<u64>,
    },
}

impl Fault {
    fn impaired(&self) -> Vec<u64> {
        match self {
            Fault::Kill(n) | Fault::Pause(n) | Fault::DiskFull(n) => vec![*n],
            Fault::Partition { impaired, .. } => impaired.clone(),
        }
    }
}

#[derive(Debug)]
struct Active {
    fault: Fault,
    until: Instant,
}

/// The cluster under test and the faults done to it.
#[derive(Debug)]
pub struct Nemesis {
    pub cluster: Cluster,
    proxies: BTreeMap<u64, PeerProxy>,
    pids: Pids,
    rng: Rng,
    endpoints: Endpoints,
    /// The voters, as the nemesis changed them.
    voters: BTreeSet<u64>,
    next_id: u64,
    active: Vec<Active>,
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, u64>,
    /// Things the cluster did that it must never do, or did not do within
    /// a deadline although it had a quorum.
    pub problems: Vec<String>,
    started: Instant,
    http: reqwest::Client,
}

impl Nemesis {
    /// Starts `n` voters, each behind its own peer proxy, and publishes
    /// their HTTP URLs in `endpoints`.
    pub fn start(n: u64, opts: Options, rng: Rng, endpoints: Endpoints) -> anyhow::Result<Nemesis> {
        let pids = Pids::default();
        let mut proxies = BTreeMap::new();
        let cluster = Cluster::start_routed(n, opts, pids.clone(), |id, peer_port| {
            let proxy = PeerProxy::start(id, peer_port, pids.clone())?;
            let port = proxy.port;
            proxies.insert(id, proxy);
            Ok(port)
        })?;
        for node in &cluster.nodes {
            endpoints.set(node.id, node.http());
        }
        Ok(Nemesis {
            voters: (1..=n).collect(),
            next_id: n + 1,
            cluster,
            proxies,
            pids,
            rng,
            endpoints,
            active: Vec::new(),
            injected: BTreeMap::new(),
            problems: Vec::new(),
            started: Instant::now(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        })
    }

    /// The current voters.
    pub fn voters(&self) -> Vec<u64> {
        self.voters.iter().copied().collect()
    }

    fn note(&self, what: &str) {
        println!(
            "[{:8.2}s] nemesis: {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn count(&mut self, kind: &'static str) {
        *self.injected.entry(kind).or_default() += 1;
    }

    fn problem(&mut self, what: String) {
        self.note(&format!("PROBLEM: {what}"));
        self.problems.push(what);
    }

    /// Injects faults until `until`, then heals everything.
    pub async fn run(&mut self, until: Instant) {
        let halfway = Instant::now() + (until - Instant::now()) / 2;
        let mut next = Instant::now() + self.rng.millis(500, 2000);
        while Instant::now() < until {
            // Wake for the next scheduled step or heal, whichever is first:
            // this waits for a time on the schedule, not for a condition.
            let wake = self
                .active
                .iter()
                .map(|a| a.until)
                .fold(next.min(until), Instant::min);
            tokio::time::sleep_until(wake.into()).await;
            self.heal_expired();
            if Instant::now() >= next && Instant::now() < until {
                // Each step draws from its own generator, forked from the
                // seed's: a step skipped or cut short by the cluster's
                // timing does not shift the choices of the steps after it.
                let mut parent = std::mem::replace(&mut self.rng, Rng::new(0));
                self.rng = parent.fork();
                // Every run changes membership at least once, however the
                // dice fall: past halfway, as soon as nothing is impaired.
                if Instant::now() > halfway
                    && self.active.is_empty()
                    && !self.injected.contains_key("add-learner")
                {
                    let _ = self.change_membership().await;
                } else {
                    self.step().await;
                }
                self.rng = parent;
                next = Instant::now() + self.rng.millis(200, 2500);
            }
        }
        self.heal_all();
    }

    /// One scheduled step: the kind is drawn first, so the sequence of
    /// kinds depends on the seed alone.
    async fn step(&mut self) {
        let roll = self.rng.below(100);
        let hold = self.rng.millis(300, 4000);
        let result = match roll {
            0..13 => self.kill(hold).await,
            13..18 => self.fill_disk(hold).await,
            18..32 => self.pause(hold),
            32..46 => self.isolate(hold).await,
            46..56 => self.split(hold),
            56..66 => self.one_way(hold).await,
            66..88 => self.transfer().await,
            _ => self.change_membership().await,
        };
        if let Err(e) = result {
            self.note(&format!("step skipped: {e:#}"));
        }
    }

    fn impaired(&self) -> BTreeSet<u64> {
        self.active
            .iter()
            .flat_map(|a| a.fault.impaired())
            .collect()
    }

    /// Voters that no fault touches, if `more` more of them may be impaired
    /// without losing the quorum.
    fn healthy_if_room_for(&self, more: usize) -> anyhow::Result<Vec<u64>> {
        let impaired = self.impaired();
        let tolerable = (self.voters.len() - 1) / 2;
        if impaired.len() + more > tolerable {
            bail!(
                "{} of {} voters already impaired",
                impaired.len(),
                self.voters.len()
            );
        }
        Ok(self
            .voters
            .iter()
            .copied()
            .filter(|v| !impaired.contains(v))
            .collect())
    }

    /// A healthy voter; the leader (if healthy) 40% of the time.
    async fn victim(&mut self, healthy: &[u64]) -> u64 {
        let prefer_leader = self.rng.chance(40);
        let pick = self.rng.pick(healthy);
        if prefer_leader && let Some(l) = self.leader().await.filter(|l| healthy.contains(l)) {
            return l;
        }
        pick
    }

    async fn kill(&mut self, hold: Duration) -> anyhow::Result<()> {
        let healthy = self.healthy_if_room_for(1)?;
        let v = self.victim(&healthy).await;
        self.cluster.kill(v)?;
        self.note(&format!("kill -9 node {v} for {hold:?}"));
        self.count("kill");
        self.hold(Fault::Kill(v), hold);
        Ok(())
    }

    /// A voter's disk fills up: it must stop with a clear error, never a
    /// panic, while the others serve; once space is freed it restarts and
    /// catches up (checked by the caller with everything else).
    async fn fill_disk(&mut self, hold: Duration) -> anyhow::Result<()> {
        let healthy = self.healthy_if_room_for(1)?;
        let v = self.victim(&healthy).await;
        self.cluster.kill(v)?;
        let limit = self.cluster.largest_data_file(v)?;
        self.cluster.restart_with_file_size_limit(v, limit)?;
        self.note(&format!(
            "fill the disk of node {v} (no file may grow past {limit} bytes) for {hold:?}"
        ));
        self.count("disk-full");
        self.hold(Fault::DiskFull(v), hold);
        Ok(())
    }

    /// Frees the space: a node that stopped must have said why, and is
    /// started again; one that did not get to grow a file keeps running.
    fn free_disk(&mut self, n: u64) -> anyhow::Result<String> {
        let status = match self.cluster.exited(n)? {
            Some(status) => status,
            None => {
                let lifted = self.cluster.lift_file_size_limit(n);
                let hit = self.cluster.log_since_start(n)?.contains("File too large");
                if lifted.is_ok() && !hit {
                    return Ok(format!("free the disk of node {n}, which is still running"));
                }
                // It met the full disk before the limit was lifted (or
                // exited since it was last looked at): it is on its way out.
                self.cluster
                    .wait_exited(n, Duration::from_secs(30))
                    .with_context(|| format!("the limit could not be lifted: {lifted:?}"))?
            }
        };
        let log = self.cluster.log_tail(n);
        if log.contains("panicked") {
            self.problem(format!("node {n} panicked on a full disk:\n{log}"));
        } else if status.success() || !log.contains("File too large") {
            self.problem(format!(
                "node {n} stopped on a full disk ({status}) without saying so:\n{log}"
            ));
        }
        self.cluster.restart(n)?;
        Ok(format!(
            "free the disk of node {n}, which stopped ({status}); restart it"
        ))
    }

    fn pause(&mut self, hold: Duration) -> anyhow::Result<()> {
        let healthy = self.healthy_if_room_for(1)?;
        let v = self.rng.pick(&healthy);
        self.cluster.signal(v, "STOP")?;
        self.note(&format!("pause (SIGSTOP) node {v} for {hold:?}"));
        self.count("pause");
        self.hold(Fault::Pause(v), hold);
        Ok(())
    }

    async fn isolate(&mut self, hold: Duration) -> anyhow::Result<()> {
        let healthy = self.healthy_if_room_for(1)?;
        let v = self.victim(&healthy).await;
        let links = self.links_between(&[v]);
        self.note(&format!("isolate node {v} for {hold:?}"));
        self.count("isolate");
        self.hold(
            Fault::Partition {
                links,
                impaired: vec![v],
            },
            hold,
        );
        Ok(())
    }

    /// The largest minority of the voters cut off from the rest.
    fn split(&mut self, hold: Duration) -> anyhow::Result<()> {
        let size = (self.voters.len() - 1) / 2;
        let mut healthy = self.healthy_if_room_for(size)?;
        let mut side = Vec::new();
        for _ in 0..size {
            let i = self.rng.below(healthy.len() as u64) as usize;
            side.push(healthy.remove(i));
        }
        let links = self.links_between(&side);
        self.note(&format!("partition {side:?} from the rest for {hold:?}"));
        self.count("split");
        self.hold(
            Fault::Partition {
                links,
                impaired: side,
            },
            hold,
        );
        Ok(())
    }

    /// Cuts one direction of one link, from the leader half the time.
    async fn one_way(&mut self, hold: Duration) -> anyhow::Result<()> {
        let healthy = self.healthy_if_room_for(2)?;
        let from = self.victim(&healthy).await;
        let others: Vec<u64> = healthy.iter().copied().filter(|n| *n != from).collect();
        let to = self.rng.pick(&others);
        self.note(&format!(
            "cut the link {from} -> {to} (one way) for {hold:?}"
        ));
        self.count("one-way");
        self.hold(
            Fault::Partition {
                links: vec![(from, to)],
                impaired: vec![from, to],
            },
            hold,
        );
        Ok(())
    }

    /// Cuts `side` off from the other nodes, both ways, until
    /// [`Nemesis::heal_all`].
    pub fn partition(&mut self, side: &[u64]) {
        let links = self.links_between(side);
        self.note(&format!("partition {side:?} from the rest until healed"));
        self.count("split");
        self.hold(
            Fault::Partition {
                links,
                impaired: side.to_vec(),
            },
            Duration::from_secs(24 * 3600),
        );
    }

    /// Every link between `side` and the other nodes, both ways.
    fn links_between(&self, side: &[u64]) -> Vec<(u64, u64)> {
        let others = self.proxies.keys().filter(|n| !side.contains(n));
        others
            .flat_map(|o| side.iter().flat_map(move |s| [(*s, *o), (*o, *s)]))
            .collect()
    }

    fn hold(&mut self, fault: Fault, hold: Duration) {
        self.active.push(Active {
            fault,
            until: Instant::now() + hold,
        });
        self.apply_partitions();
    }

    /// Tells every proxy which links into its node are cut now.
    fn apply_partitions(&self) {
        for (node, proxy) in &self.proxies {
            let from: BTreeSet<u64> = self
                .active
                .iter()
                .filter_map(|a| match &a.fault {
                    Fault::Partition { links, .. } => Some(links),
                    _ => None,
                })
                .flatten()
                .filter(|(_, to)| to == node)
                .map(|(from, _)| *from)
                .collect();
            proxy.set_cut(&from);
        }
    }

    fn heal_expired(&mut self) {
        let now = Instant::now();
        let (due, keep): (Vec<Active>, Vec<Active>) =
            self.active.drain(..).partition(|a| a.until <= now);
        self.active = keep;
        for a in due {
            self.heal(a.fault);
        }
    }

    /// Ends every fault.
    pub fn heal_all(&mut self) {
        for a in std::mem::take(&mut self.active) {
            self.heal(a.fault);
        }
        self.apply_partitions();
    }

    fn heal(&mut self, fault: Fault) {
        let healed = match &fault {
            Fault::Kill(n) => self
                .cluster
                .restart(*n)
                .map(|()| format!("restart node {n}")),
            Fault::Pause(n) => self
                .cluster
                .signal(*n, "CONT")
                .map(|()| format!("resume (SIGCONT) node {n}")),
            Fault::DiskFull(n) => self.free_disk(*n),
            Fault::Partition { links, .. } => {
                self.apply_partitions();
                Ok(format!("heal links {links:?}"))
            }
        };
        match healed {
            Ok(what) => self.note(&what),
            Err(e) => self.problem(format!("cannot heal {fault:?}: {e:#}")),
        }
    }

    async fn transfer(&mut self) -> anyhow::Result<()> {
        let impaired = self.impaired();
        let leader = self.leader().await.context("no leader to transfer from")?;
        let to: Vec<u64> = self
            .voters
            .iter()
            .copied()
            .filter(|v| *v != leader && !impaired.contains(v))
            .collect();
        if to.is_empty() {
            bail!("no healthy voter to transfer to");
        }
        let to = self.rng.pick(&to);
        let r = self
            .post(leader, "/v1/leader/transfer", Some(json!({ "to": to })))
            .await;
        self.count("transfer");
        self.note(&format!("transfer leadership {leader} -> {to}: {r:?}"));
        Ok(())
    }

    /// Connections the proxies could not attribute to a node.
    pub fn unidentified_connections(&self) -> u64 {
        self.proxies.values().map(PeerProxy::unidentified).sum()
    }
}
