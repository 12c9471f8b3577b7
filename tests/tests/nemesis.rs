//! The nemesis suite: five real `raftkv` processes behind peer proxies,
//! concurrent clients reading and writing through any member, and a
//! nemesis that kills, pauses, partitions, moves leadership and changes
//! membership at seeded random times, with log compaction so frequent that
//! members catch up by InstallSnapshot. Afterwards everything is healed and
//! the test checks that
//! - every member converges to the same applied index and holds the same
//!   keys, values and revisions,
//! - no acknowledged write is missing, nothing never written is present,
//! - the recorded history is linearizable (porcupine),
//! - the cluster never did what it must never do (see `nemesis.rs`).
//!
//! `RAFTKV_NEMESIS_SEED` replays a run's schedule (the seed is printed
//! first): the same steps, hold times, client operations and picks among
//! candidates; how they interleave with the cluster's own timing (who leads
//! when, what a step finds impaired) is not reproducible.
//! `RAFTKV_NEMESIS_SECS` sets how long faults are injected (default 40).

// Test code: a failed unwrap is a failed test, also in helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raftkv_e2e::history::History;
use raftkv_e2e::nemesis::Nemesis;
use raftkv_e2e::seed::{Rng, seed_from_env};
use raftkv_e2e::workload::{Endpoints, Record, Workload};
use raftkv_e2e::{Cluster, Options};
use serde_json::Value;

const DEFAULT_SECS: u64 = 40;
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// The client id of the final reads in the history.
const FINAL_READER: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_kills_pauses_partitions_transfers_and_membership_changes_the_cluster_stays_linearizable_and_converges()
 {
    let seed = seed_from_env("RAFTKV_NEMESIS_SEED");
    let secs: u64 = std::env::var("RAFTKV_NEMESIS_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("RAFTKV_NEMESIS_SECS is a number of seconds")
        })
        .unwrap_or(DEFAULT_SECS);
    println!("NEMESIS seed {seed} for {secs} s (replay: RAFTKV_NEMESIS_SEED={seed})");
    let out = std::env::temp_dir().join(format!("raftkv-nemesis-{seed}"));
    std::fs::create_dir_all(&out).unwrap();

    let mut rng = Rng::new(seed);
    let endpoints = Endpoints::default();
    let opts = Options {
        election_timeout_ms: 500,
        heartbeat_interval_ms: 50,
        request_timeout_ms: 2000,
        // Compact often and keep little: a member that misses a few
        // hundred entries catches up by InstallSnapshot.
        snapshot_every: 100,
        snapshot_keep_trailing: 20,
        ..Options::default()
    };
    let mut nemesis = Nemesis::start(5, opts, rng.fork(), endpoints.clone()).unwrap();
    nemesis
        .cluster
        .wait_leader(Duration::from_secs(30))
        .await
        .unwrap();

    let started = Instant::now();
    let history = History::new();
    let clients = Workload::default().start(&mut rng, endpoints, history.clone());
    nemesis.run(started + Duration::from_secs(secs)).await;
    let record = clients.stop().await;
    let ran_for = started.elapsed();

    let mut violations: Vec<String> = nemesis.problems.clone();
    let voters = nemesis.voters();
    let c = &nemesis.cluster;
    let converged = converge(c, &voters).await;
    if let Err(e) = &converged {
        violations.push(format!("no convergence: {e}"));
    }
    let listings = listings(c, &voters).await;
    violations.extend(compare(&listings));
    if let Some((_, reference)) = listings.iter().find(|(_, l)| l.is_some()) {
        violations.extend(acknowledged_writes(&record, reference.as_ref().unwrap()));
    }
    violations.extend(final_reads(c, &voters, &record, &history).await);
    let verdict = history.check(&out.join("history.json"), 600);
    match &verdict {
        Ok(v) => println!("CHECKER: {v}"),
        Err(e) => violations.push(format!("{e:#}")),
    }

    let snapshots = count_in_logs(c, "installed snapshot");
    println!(
        "NEMESIS FIGURES seed {seed}, {:.0} s of faults:\n  \
         operations: {} writes ({} ok, {} failed, {} unknown), {} reads ({} ok, {} failed), \
         {} in the checked history\n  \
         faults: {:?}\n  \
         snapshots installed: {snapshots}; members at the end: {voters:?}; \
         applied index: {:?}\n  \
         connections the proxies could not attribute: {}\n  \
         violations: {}",
        ran_for.as_secs_f64(),
        record.writes.total(),
        record.writes.ok,
        record.writes.failed,
        record.writes.unknown,
        record.reads.total(),
        record.reads.ok,
        record.reads.failed,
        history.len(),
        nemesis.injected,
        converged.as_ref().ok(),
        nemesis.unidentified_connections(),
        violations.len(),
    );
    if !violations.is_empty() {
        keep_logs(c, &out);
        for v in &violations {
            println!("VIOLATION: {v}");
        }
        panic!(
            "{} violation(s) with seed {seed} (replay: RAFTKV_NEMESIS_SEED={seed}); \
             history and node logs in {}:\n{}",
            violations.len(),
            out.display(),
            violations.join("\n")
        );
    }
    assert!(
        record.writes.ok > 50,
        "too few acknowledged writes to mean anything: {:?}",
        record.writes
    );
    assert!(
        nemesis.injected.contains_key("add-learner"),
        "no membership change happened: {:?}",
        nemesis.injected
    );
    assert!(snapshots > 0, "no member installed a snapshot");
    let _ = std::fs::remove_dir_all(&out);
}

/// The partitions above are only as good as the proxies: a leader cut off
/// from its peers must lose its quorum (and with it, every write through
/// it), and rejoin when healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_partitioned_by_the_peer_proxies_is_replaced_and_rejoins_when_healed() {
    let mut n = Nemesis::start(3, Options::default(), Rng::new(1), Endpoints::default()).unwrap();
    let old = n
        .cluster
        .wait_leader(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(n.cluster.put(old, "before", "1").await.unwrap().status, 200);
    n.partition(&[old]);
    let others: Vec<u64> = n.voters().into_iter().filter(|v| *v != old).collect();
    let c = &n.cluster;
    let new = Cluster::eventually(
        Duration::from_secs(20),
        "a new leader among the majority",
        || async {
            let s = c.status(others[0]).await.ok()?;
            let l = s["leader_id"].as_u64()?;
            (l != old).then_some(l)
        },
    )
    .await
    .unwrap();
    assert!(others.contains(&new), "{new} leads, not one of {others:?}");
    let a = c.put(old, "through-the-cut-off-node", "x").await.unwrap();
    assert_eq!(
        a.status, 503,
        "a write through the cut-off node: {:?}",
        a.body
    );
    assert_eq!(c.put(new, "majority", "2").await.unwrap().status, 200);
    n.heal_all();
    let c = &n.cluster;
    Cluster::eventually(
        Duration::from_secs(20),
        "the old leader to rejoin",
        || async {
            let a = c.get(old, "majority").await.ok()?;
            (a.status == 200 && a.raw == b"2").then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(n.unidentified_connections(), 0);
}

/// Waits until every member answers with the same leader and has applied
/// everything the leader committed; returns that index.
async fn converge(c: &Cluster, members: &[u64]) -> Result<u64, String> {
    let deadline = Instant::now() + CONVERGE_WITHIN;
    loop {
        let mut statuses = BTreeMap::new();
        for id in members {
            statuses.insert(*id, c.status(*id).await.ok());
        }
        let leaders: Vec<Option<u64>> = statuses
            .values()
            .map(|s| s.as_ref().and_then(|s| s["leader_id"].as_u64()))
            .collect();
        let applied: Vec<Option<u64>> = statuses
            .values()
            .map(|s| s.as_ref().and_then(|s| s["applied_index"].as_u64()))
            .collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| l == &Some(*leader))
            && let Some(Some(ls)) = statuses.get(leader)
            && let Some(commit) = ls["commit_index"].as_u64()
            && applied.iter().all(|a| *a == Some(commit))
        {
            let mut reported: Vec<u64> = ls["members"]
                .as_array()
                .map(|ms| ms.iter().filter_map(|m| m["id"].as_u64()).collect())
                .unwrap_or_default();
            reported.sort_unstable();
            if reported != members {
                return Err(format!(
                    "the leader reports members {reported:?}, the nemesis made {members:?}"
                ));
            }
            return Ok(commit);
        }
        if Instant::now() > deadline {
            let tails: String = members
                .iter()
                .map(|id| format!("\n--- node {id} ---\n{}", c.log_tail(*id)))
                .collect();
            return Err(format!(
                "within {CONVERGE_WITHIN:?}: leaders {leaders:?}, applied {applied:?}\n\
                 statuses: {statuses:?}{tails}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every member's own (serializable) listing of all keys.
async fn listings(c: &Cluster, members: &[u64]) -> Vec<(u64, Option<Value>)> {
    let mut out = Vec::new();
    for id in members {
        let a = c
            .request(
                *id,
                reqwest::Method::GET,
                "/v1/kv?consistency=serializable",
                None,
            )
            .await;
        out.push((*id, a.ok().filter(|a| a.status == 200).map(|a| a.body)));
    }
    out
}

/// Members must hold the same keys, values and revisions.
fn compare(listings: &[(u64, Option<Value>)]) -> Vec<String> {
    let mut v = Vec::new();
    let Some((first, Some(reference))) = listings.first() else {
        return vec![format!("no listing from the first member: {listings:?}")];
    };
    if reference["more"] != false {
        v.push(format!("node {first}'s listing is truncated"));
    }
    for (id, l) in &listings[1..] {
        match l {
            None => v.push(format!("node {id} did not list its keys")),
            Some(l) if l != reference => v.push(format!(
                "node {id}'s state differs from node {first}'s: {}",
                first_difference(reference, l)
            )),
            Some(_) => {}
        }
    }
    v
}

fn first_difference(a: &Value, b: &Value) -> String {
    if a["revision"] != b["revision"] || a["count"] != b["count"] {
        return format!(
            "revision {} vs {}, count {} vs {}",
            a["revision"], b["revision"], a["count"], b["count"]
        );
    }
    let empty = Vec::new();
    let (ka, kb) = (
        a["kvs"].as_array().unwrap_or(&empty),
        b["kvs"].as_array().unwrap_or(&empty),
    );
    ka.iter()
        .zip(kb)
        .find(|(x, y)| x != y)
        .map(|(x, y)| format!("{x} vs {y}"))
        .unwrap_or_else(|| "the key lists differ in length".into())
}

/// Every acknowledged write-once key is there with its value; no such key
/// is there that was never written.
fn acknowledged_writes(record: &Record, listing: &Value) -> Vec<String> {
    let present: BTreeMap<String, String> = listing["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv["key"].as_str()?.into(), kv["value"].as_str()?.into())))
        .filter(|(k, _): &(String, String)| k.starts_with("a/"))
        .collect();
    let mut v = Vec::new();
    for (k, val) in &record.acked {
        match present.get(k) {
            Some(p) if p == val => {}
            other => v.push(format!(
                "acknowledged write {k}={val} is missing (found {other:?})"
            )),
        }
    }
    for (k, val) in &present {
        let written = record.acked.get(k).or_else(|| record.maybe.get(k));
        if written != Some(val) {
            v.push(format!("{k}={val} is present but was never written so"));
        }
    }
    v
}

/// A last linearizable read of every register, through each member in
/// turn, closes the history: a lost write shows up as a stale final value.
async fn final_reads(
    c: &Cluster,
    members: &[u64],
    record: &Record,
    history: &History,
) -> Vec<String> {
    let mut v = Vec::new();
    for (i, key) in record.registers.iter().enumerate() {
        let id = members[i % members.len()];
        let call = history.now();
        match c.get(id, key).await {
            Ok(a) if a.status == 200 => {
                history.read(
                    FINAL_READER,
                    key,
                    Some(&String::from_utf8_lossy(&a.raw)),
                    call,
                );
            }
            Ok(a) if a.status == 404 => history.read(FINAL_READER, key, None, call),
            other => v.push(format!(
                "final read of {key} via node {id} failed: {other:?}"
            )),
        }
    }
    v
}

fn count_in_logs(c: &Cluster, needle: &str) -> usize {
    c.nodes
        .iter()
        .map(|n| {
            std::fs::read_to_string(&n.log)
                .unwrap_or_default()
                .matches(needle)
                .count()
        })
        .sum()
}

/// Copies every node's log next to the history.
fn keep_logs(c: &Cluster, out: &Path) {
    for n in &c.nodes {
        let to: PathBuf = out.join(format!("node-{}.log", n.id));
        let _ = std::fs::copy(&n.log, to);
    }
}
