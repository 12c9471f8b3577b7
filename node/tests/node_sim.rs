//! The whole-node simulation: real drivers, real redb stores and the real
//! snapshot path under a simulated network, crashes, partitions,
//! membership changes and leadership transfers, from many seeds.
//!
//! `RAFTKV_NODE_SIM_SEEDS=N` runs N seeds (default 2000);
//! `RAFTKV_NODE_SIM_SEED=S` replays one.

// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use raftkv::server::sim::{Report, SimCluster, SimOptions};

fn run(seed: u64) -> Report {
    // In memory where the system offers it: the simulation fsyncs a lot.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("raftkv-sim")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory");
    SimCluster::new(SimOptions::new(seed), dir.path().to_path_buf()).run()
}

#[test]
fn whole_nodes_keep_every_invariant_under_faults() {
    let seeds: Vec<u64> = match std::env::var("RAFTKV_NODE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RAFTKV_NODE_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("RAFTKV_NODE_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(2000u64);
            (1..=n).collect()
        }
    };
    let mut total = Report::default();
    let mut failures = Vec::new();
    for seed in &seeds {
        let r = run(*seed);
        total.ticks += r.ticks;
        total.turns += r.turns;
        total.writes_acked += r.writes_acked;
        total.writes_failed += r.writes_failed;
        total.crashes += r.crashes;
        total.power_losses += r.power_losses;
        total.disk_faults += r.disk_faults;
        total.disk_stops += r.disk_stops;
        total.pages_lost += r.pages_lost;
        total.partitions += r.partitions;
        total.membership_changes += r.membership_changes;
        total.transfers += r.transfers;
        total.snapshots_installed += r.snapshots_installed;
        total.snapshots_refused += r.snapshots_refused;
        if let Some(v) = r.violation {
            failures.push(format!("seed {seed}: {v}"));
        }
    }
    println!(
        "node sim: {} seeds, {} ticks, {} turns, writes {} acked / {} failed, \
         {} crashes ({} with power loss), {} disk faults ({} stops, {} unsynced pages lost), {} partitions, {} membership changes, {} transfers, \
         {} snapshots installed, {} violations",
        seeds.len(),
        total.ticks,
        total.turns,
        total.writes_acked,
        total.writes_failed,
        total.crashes,
        total.power_losses,
        total.disk_faults,
        total.disk_stops,
        total.pages_lost,
        total.partitions,
        total.membership_changes,
        total.transfers,
        total.snapshots_installed,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // One replayed seed need not cover everything; a schedule of many must.
    assert!(
        seeds.len() == 1
            || total.snapshots_installed > 0
                && total.crashes > 0
                && total.membership_changes > 0
                && total.power_losses > 0
                && total.disk_stops > 0
                && total.pages_lost > 0,
        "the schedule must exercise snapshots, crashes, power losses, disk faults and membership changes"
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(7);
    let b = run(7);
    assert_eq!(
        (
            a.ticks,
            a.turns,
            a.writes_acked,
            a.crashes,
            a.snapshots_installed,
            a.disk_stops,
            a.pages_lost
        ),
        (
            b.ticks,
            b.turns,
            b.writes_acked,
            b.crashes,
            b.snapshots_installed,
            b.disk_stops,
            b.pages_lost
        )
    );
}
