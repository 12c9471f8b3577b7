//! The randomized simulator: many seeds, each a cluster of 3, 5 or 7 cores
//! driven through a faulty network with crashes, restarts, partitions,
//! proposals, reads, membership changes, leadership transfers and log
//! compaction, with Raft's safety properties checked after every step.
//! Half the seeds persist the way the pipelined driver does: writes
//! complete late and out of step with messages, are acknowledged to the
//! core afterwards, and a node may crash between a write and its
//! acknowledgement (or lose every write still queued).
//!
//! `RAFTKV_SIM_SEEDS=N` runs seeds `1..=N`; `RAFTKV_SIM_SEED=S` replays one
//! seed exactly. Every run ends with one summary line:
//! `sim: <N> seeds, <S> steps, 0 violations`.

use bytes::Bytes;
use raftkv::raft::harness::{Cluster, ClusterOptions, Faults};
use raftkv::raft::{ConfChange, LogIndex, NodeId, Term};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seeds CI runs by default.
const DEFAULT_SEEDS: u64 = 10_000;
/// Ticks of chaos per seed.
const CHAOS_TICKS: u64 = 1500;

struct Outcome {
    steps: u64,
}

fn main() {
    let seeds: Vec<u64> = match std::env::var("RAFTKV_SIM_SEED") {
        Ok(s) => match s.trim().parse() {
            Ok(seed) => vec![seed],
            Err(_) => {
                eprintln!("RAFTKV_SIM_SEED must be a number, got {s:?}");
                std::process::exit(2);
            }
        },
        Err(_) => {
            let n = std::env::var("RAFTKV_SIM_SEEDS")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (1..=n).collect()
        }
    };

    let mut steps = 0u64;
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run_seed(seed) {
            Ok(o) => steps += o.steps,
            Err(msg) => {
                eprintln!("sim: seed {seed} FAILED: {msg}");
                eprintln!(
                    "sim: replay with: RAFTKV_SIM_SEED={seed} cargo test --release -p raftkv --test sim"
                );
                failures.push(seed);
            }
        }
    }
    println!(
        "sim: {} seeds, {} steps, {} violations",
        seeds.len(),
        steps,
        failures.len()
    );
    if !failures.is_empty() {
        eprintln!("sim: failing seeds: {failures:?}");
        std::process::exit(1);
    }
}

fn run_seed(seed: u64) -> Result<Outcome, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed);
    let size = [3u64, 5, 7][(seed % 3) as usize];
    let mut opts = ClusterOptions::new(size, seed);
    opts.faults = Faults {
        drop: rng.random_range(0.0..0.15),
        duplicate: rng.random_range(0.0..0.1),
        max_delay: rng.random_range(0..6),
    };
    opts.crash_mid_ready = 0.001;
    // One-entry messages make followers hold a prefix of what the leader
    // sent, which the paper's Figure 8 interleaving needs.
    opts.max_message_bytes = [1, 64, 512, 4096][rng.random_range(0..4)];
    opts.max_inflight = rng.random_range(1..8);
    if (seed / 3) % 2 == 1 {
        opts.async_persistence = true;
        opts.max_persist_delay = rng.random_range(0..5);
        opts.crash_before_ack = 0.002;
    }
    // Some seeds are calm, some churn: crashes and restarts per tick.
    let churn = [0.005, 0.015, 0.04][rng.random_range(0..3)];
    let mut c = Cluster::new(opts);
    let mut next_id = size + 1;
    let mut command = 0u64;
    let mut removals: Vec<(NodeId, LogIndex, Term)> = Vec::new();

    for _ in 0..CHAOS_TICKS {
        c.tick();
        if let Some(v) = c.violation() {
            return Err(v.to_string());
        }
        // Members whose removal has committed are shut down, as an operator
        // would; until then they keep running (and must not disturb anyone).
        removals.retain(|(id, index, term)| match c.committed_term(*index) {
            Some(t) if t == *term => {
                c.retire(*id);
                false
            }
            Some(_) => false,
            None => true,
        });

        let roll: f64 = rng.random_range(0.0..1.0);
        let up = c.up_ids();
        let down: Vec<NodeId> = c
            .ids()
            .into_iter()
            .filter(|id| !c.is_up(*id) && !c.removed().contains(id))
            .collect();
        let leader = c.leader();
        if roll < 0.30 {
            if let Some(l) = leader {
                command += 1;
                let _ = c.propose(l, Bytes::from(format!("cmd-{seed}-{command}")));
            }
        } else if roll < 0.33 {
            if let Some(l) = leader {
                let _ = c.read_index(l, command);
            }
        } else if roll < 0.33 + churn {
            if up.len() > 1 {
                // Often the leader: that is where the interesting histories
                // start.
                let victim = match leader {
                    Some(l) if rng.random_bool(0.5) => l,
                    _ => up[rng.random_range(0..up.len())],
                };
                c.crash(victim);
            }
        } else if roll < 0.33 + 3.0 * churn {
            if !down.is_empty() {
                let id = down[rng.random_range(0..down.len())];
                c.restart(id);
            }
        } else if roll < 0.39 + 3.0 * churn {
            // A random split, possibly one-way.
            let ids = c.ids();
            let cut = rng.random_range(1..ids.len());
            let (a, b) = ids.split_at(cut);
            let one_way = rng.random_bool(0.3);
            for x in a {
                for y in b {
                    c.block_one_way(*x, *y);
                    if !one_way {
                        c.block_one_way(*y, *x);
                    }
                }
            }
        } else if roll < 0.405 + 3.0 * churn {
            c.heal();
        } else if roll < 0.42 + 3.0 * churn {
            if !up.is_empty() {
                let id = up[rng.random_range(0..up.len())];
                c.compact(id, rng.random_range(0..20));
            }
        } else if roll < 0.43 + 3.0 * churn {
            if let Some(l) = leader {
                membership_step(&mut c, &mut rng, l, &mut next_id, &mut removals);
            }
        } else if roll < 0.435 + 3.0 * churn {
            if let Some(l) = leader {
                let voters: Vec<NodeId> = c
                    .node(l)
                    .map(|r| r.membership().voters().collect())
                    .unwrap_or_default();
                if !voters.is_empty() {
                    let to = voters[rng.random_range(0..voters.len())];
                    let _ = c.transfer_leader(l, to);
                }
            }
        }
    }

    // Heal everything and check liveness: a leader is elected and a new
    // proposal commits within a bounded number of ticks.
    c.heal();
    c.set_faults(Faults::none());
    c.set_crash_mid_ready(0.0);
    c.set_crash_before_ack(0.0);
    for id in c.ids() {
        c.restart(id);
    }
    let bound = 60 * 10;
    let mut committed = false;
    for _ in 0..bound {
        if let Some(l) = c.leader() {
            if let Ok(p) = c.propose(l, Bytes::from_static(b"liveness")) {
                if c.run_until(|c| c.committed_term(p.index) == Some(p.term), 40) {
                    committed = true;
                    break;
                }
            }
        }
        c.tick();
        if let Some(v) = c.violation() {
            return Err(v.to_string());
        }
    }
    if let Some(v) = c.violation() {
        return Err(v.to_string());
    }
    if !committed {
        return Err(format!(
            "liveness: no proposal committed within {bound} ticks after healing\n{}",
            describe(&c)
        ));
    }
    Ok(Outcome { steps: c.steps() })
}

/// One random single-step membership change on leader `l`.
fn membership_step(
    c: &mut Cluster,
    rng: &mut ChaCha8Rng,
    l: NodeId,
    next_id: &mut u64,
    removals: &mut Vec<(NodeId, LogIndex, Term)>,
) {
    let Some(node) = c.node(l) else {
        return;
    };
    let m = node.membership().clone();
    let voters: Vec<NodeId> = m.voters().collect();
    let learners: Vec<NodeId> = m.learners().collect();
    let choice = rng.random_range(0..3);
    if choice == 0 && m.ids().count() < 9 {
        let id = NodeId(*next_id);
        let change = ConfChange::AddLearner {
            id,
            context: Bytes::from(format!("node-{id}")),
        };
        if c.change_membership(l, change).is_ok() {
            *next_id += 1;
            c.add_empty_node(id);
        }
    } else if choice == 1 && !learners.is_empty() {
        let id = learners[rng.random_range(0..learners.len())];
        let _ = c.change_membership(l, ConfChange::Promote { id });
    } else if choice == 2 && (voters.len() > 3 || !learners.is_empty()) {
        let pool: Vec<NodeId> = if voters.len() > 3 {
            voters.iter().chain(learners.iter()).copied().collect()
        } else {
            learners
        };
        let id = pool[rng.random_range(0..pool.len())];
        if let Ok(p) = c.change_membership(l, ConfChange::Remove { id }) {
            removals.push((id, p.index, p.term));
        }
    }
}

/// The state of every node, for failure reports.
fn describe(c: &Cluster) -> String {
    let mut out = String::new();
    for id in c.ids() {
        match c.node(id) {
            Some(r) => {
                let s = r.status();
                let voters: Vec<u64> = r.membership().voters().map(|v| v.0).collect();
                let learners: Vec<u64> = r.membership().learners().map(|v| v.0).collect();
                out.push_str(&format!(
                    "  node {id}: {} term {} leader {:?} commit {} applied {} log {}..={} voters {voters:?} learners {learners:?} pending-change {}\n",
                    s.role.as_str(),
                    s.term,
                    s.leader.map(|l| l.0),
                    s.commit_index,
                    s.applied_index,
                    s.first_log_index,
                    s.last_log_index,
                    r.membership_change_pending(),
                ));
                for (peer, p) in r.progress() {
                    out.push_str(&format!(
                        "    -> {peer}: match {} next {} {}\n",
                        p.match_index, p.next_index, p.state
                    ));
                }
            }
            None => out.push_str(&format!(
                "  node {id}: down{}\n",
                if c.removed().contains(&id) {
                    " (removed)"
                } else {
                    ""
                }
            )),
        }
    }
    out
}
