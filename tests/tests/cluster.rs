//! End-to-end: real `raftkv serve` processes on loopback, elections, kills,
//! restarts, snapshots, membership and bad input (issue 4's list).

// Test code: a failed unwrap is a failed test, also in helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use raftkv_e2e::{Cluster, Options};
use reqwest::Method;

const LEADER_WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_elect_one_leader_and_writes_through_any_node_are_readable_from_all() {
    let c = Cluster::start(5, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    assert!((1..=5).contains(&leader));
    for id in 1..=5 {
        let a = c
            .put(id, &format!("key-{id}"), &format!("value-{id}"))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "put through node {id}: {:?}", a.body);
        assert!(a.body["revision"].as_i64().unwrap() >= 1);
    }
    for reader in 1..=5 {
        for writer in 1..=5 {
            let a = c.get(reader, &format!("key-{writer}")).await.unwrap();
            assert_eq!(a.status, 200, "node {reader} reading key-{writer}");
            assert_eq!(a.raw, format!("value-{writer}").into_bytes());
        }
    }
    // Exactly one node says it leads.
    let mut leaders = 0;
    for id in 1..=5 {
        if c.status(id).await.unwrap()["role"] == "leader" {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1);
    // Every write succeeded, so no node may count a failed proposal: a
    // follower forwarding a write to the leader is not a failure (the
    // RaftkvProposalsFailing alert reads this counter).
    for id in 1..=5 {
        let text = metrics_text(&c, id).await;
        let failed = text
            .lines()
            .find(|l| l.starts_with("raftkv_raft_proposals_failed_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(failed, Some(0.0), "node {id}: {text}");
    }
}

/// As with etcd, a member answers a write or a linearizable read only once
/// it applied what the answer reflects, also when the leader did the work:
/// the client may go on reading that member serializably and see it.
/// (The handle's unit test shows the wait itself; here, the whole path.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_follower_answered_it_then_serves_to_serializable_reads() {
    let c = Cluster::start(3, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    for follower in (1..=3).filter(|id| *id != leader) {
        for i in 0..40 {
            let (mine, theirs) = (format!("f{follower}-{i}"), format!("l{follower}-{i}"));
            let a = c.put(follower, &mine, "w").await.unwrap();
            assert_eq!(a.status, 200, "{:?}", a.body);
            let a = c.get_serializable(follower, &mine).await.unwrap();
            assert_eq!(
                (a.status, a.raw.as_slice()),
                (200, b"w".as_slice()),
                "node {follower} answered the put of {mine} but does not hold it"
            );
            assert_eq!(c.put(leader, &theirs, "r").await.unwrap().status, 200);
            assert_eq!(c.get(follower, &theirs).await.unwrap().status, 200);
            let a = c.get_serializable(follower, &theirs).await.unwrap();
            assert_eq!(
                (a.status, a.raw.as_slice()),
                (200, b"r".as_slice()),
                "node {follower} read {theirs} linearizably but does not hold it"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(5, Options::default()).unwrap();
    let old = c.wait_leader(LEADER_WAIT).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        let a = c
            .put(1 + i % 5, &format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        acked.push(i);
    }
    c.kill(old).unwrap();
    let killed_at = Instant::now();
    let survivor = c.running()[0];
    // The first write that succeeds after the kill marks the failover.
    let failover = Cluster::eventually(
        Duration::from_secs(30),
        "a write after the kill",
        || async {
            let a = c.put(survivor, "after-kill", "yes").await.ok()?;
            (a.status == 200).then(|| killed_at.elapsed())
        },
    )
    .await
    .unwrap();
    println!("FAILOVER: first successful write {failover:?} after kill -9 of leader {old}");
    let new = c.wait_leader(LEADER_WAIT).await.unwrap();
    assert_ne!(new, old);
    for id in c.running() {
        for i in &acked {
            let a = c.get(id, &format!("k{i}")).await.unwrap();
            assert_eq!(a.status, 200, "node {id} lost k{i}");
            assert_eq!(a.raw, format!("v{i}").into_bytes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_fast_and_terms_hold_then_restart_recovers_everything() {
    let opts = Options {
        request_timeout_ms: 2000,
        ..Options::default()
    };
    let mut c = Cluster::start(5, opts).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    for i in 0..10 {
        assert_eq!(
            c.put(leader, &format!("q{i}"), "x").await.unwrap().status,
            200
        );
    }
    // Kill three, the leader among them.
    let mut victims = vec![leader];
    victims.extend((1..=5).filter(|id| *id != leader).take(2));
    for v in &victims {
        c.kill(*v).unwrap();
    }
    let survivors = c.running();
    assert_eq!(survivors.len(), 2);
    for s in &survivors {
        let started = Instant::now();
        let a = c.put(*s, "no-quorum", "x").await.unwrap();
        let took = started.elapsed();
        assert_eq!(a.status, 503, "node {s}: {:?}", a.body);
        assert!(a.body["code"].is_string(), "JSON error body: {:?}", a.body);
        assert!(took < Duration::from_millis(2000 + 1500), "took {took:?}");
    }
    // PreVote: the survivors cannot win an election, so their term stays put
    // over many election timeouts.
    let terms_before: Vec<u64> = {
        let mut t = Vec::new();
        for s in &survivors {
            t.push(c.status(*s).await.unwrap()["term"].as_u64().unwrap());
        }
        t
    };
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        for (s, before) in survivors.iter().zip(&terms_before) {
            let st = c.status(*s).await.unwrap();
            assert_eq!(
                st["term"].as_u64().unwrap(),
                *before,
                "node {s}'s term climbed"
            );
            assert!(st["leader_id"].is_null() || st["role"] != "leader");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for v in &victims {
        c.restart(*v).unwrap();
    }
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    assert_eq!(
        c.put(leader, "after-recovery", "y").await.unwrap().status,
        200
    );
    for id in 1..=5 {
        for i in 0..10 {
            let a = c.get(id, &format!("q{i}")).await.unwrap();
            assert_eq!(a.status, 200, "node {id} lost q{i}\n{}", c.log_tail(id));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_while_the_log_was_compacted_catches_up_by_snapshot() {
    let opts = Options {
        snapshot_every: 50,
        snapshot_keep_trailing: 10,
        ..Options::default()
    };
    let mut c = Cluster::start(3, opts).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    let lagger = (1..=3).find(|id| *id != leader).unwrap();
    c.kill(lagger).unwrap();
    for i in 0..200 {
        let a = c
            .put(leader, &format!("s{i:03}"), &format!("v{i}"))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }
    let st = c.status(leader).await.unwrap();
    assert!(
        st["first_log_index"].as_u64().unwrap() > 100,
        "the leader compacted its log: {st}"
    );
    c.restart(lagger).unwrap();
    let commit = st["commit_index"].as_u64().unwrap();
    Cluster::eventually(
        Duration::from_secs(30),
        "the restarted node to catch up",
        || async {
            let s = c.status(lagger).await.ok()?;
            (s["applied_index"].as_u64()? >= commit).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(lagger)));
    for i in [0, 57, 199] {
        let a = c
            .get_serializable(lagger, &format!("s{i:03}"))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "s{i:03} on node {lagger}");
        assert_eq!(a.raw, format!("v{i}").into_bytes());
    }
    let log = std::fs::read_to_string(&c.nodes[(lagger - 1) as usize].log).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "caught up without a snapshot?\n{log}"
    );
    // The snapshot carried the configuration: the node knows every member,
    // serves linearizable reads and writes, and keeps knowing after a
    // restart (a cluster whose membership never changed since bootstrap).
    for round in 0..2 {
        let s = c.status(lagger).await.unwrap();
        assert_eq!(
            s["members"].as_array().map(Vec::len),
            Some(3),
            "round {round}: {s}"
        );
        let a = c.put(lagger, &format!("after-{round}"), "w").await.unwrap();
        assert_eq!(
            a.status, 200,
            "round {round}: write through it: {:?}",
            a.body
        );
        let a = c.get(lagger, "s199").await.unwrap();
        assert_eq!(
            a.status, 200,
            "round {round}: linearizable read: {:?}",
            a.body
        );
        let ready = c
            .request(lagger, Method::GET, "/readyz", None)
            .await
            .unwrap();
        assert_eq!(ready.status, 200, "round {round}: {:?}", ready.raw);
        c.terminate(lagger).unwrap();
        c.restart(lagger).unwrap();
        c.wait_leader(LEADER_WAIT).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_add_learner_promote_and_remove_over_http_while_serving() {
    let mut c = Cluster::start(3, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    for i in 0..20 {
        assert_eq!(
            c.put(leader, &format!("m{i}"), "x").await.unwrap().status,
            200
        );
    }
    let peer_url = c.start_joining(4).unwrap().peer_url();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let body = serde_json::json!({"id": 4, "name": "four", "peer_url": peer_url, "learner": true});
    let a = c
        .request(
            follower,
            Method::POST,
            "/v1/members",
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["role"], "learner");
    // The learner catches up (it serves a serializable read of old data).
    Cluster::eventually(
        Duration::from_secs(20),
        "the learner to catch up",
        || async {
            let a = c.get_serializable(4, "m19").await.ok()?;
            (a.status == 200).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nlearner: {:?}\nleader: {:?}\n{}",
            futures_status(&c, 4),
            futures_status(&c, leader),
            c.log_tail(4)
        )
    });
    let a = c
        .request(leader, Method::POST, "/v1/members/4/promote", None)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["role"], "voter");
    assert_eq!(c.put(4, "through-four", "y").await.unwrap().status, 200);
    // Remove a voter that is not the leader; the cluster keeps serving.
    let gone = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    let a = c
        .request(leader, Method::DELETE, &format!("/v1/members/{gone}"), None)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let members = c
        .request(leader, Method::GET, "/v1/members", None)
        .await
        .unwrap();
    let ids: Vec<u64> = members.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(!ids.contains(&gone) && ids.contains(&4), "{ids:?}");
    c.kill(gone).unwrap();
    assert_eq!(
        c.put(leader, "after-remove", "z").await.unwrap().status,
        200
    );
    assert_eq!(c.get(4, "after-remove").await.unwrap().raw, b"z");
}

/// `id`'s status, once it says the node withholds its votes.
async fn withholding(c: &Cluster, id: u64) -> Option<serde_json::Value> {
    let s = c.status(id).await.ok()?;
    (s["withholding_votes"] == true).then_some(s)
}

/// A member whose data directory is lost comes back under the same id with
/// an empty one (and a new storage id). It no longer knows what it
/// acknowledged, so it withholds its vote, across restarts too, until it is
/// removed and added back as a learner; then it votes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_with_an_empty_data_directory_votes_only_once_added_anew() {
    let mut c = Cluster::start(3, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    assert_eq!(c.put(leader, "before", "x").await.unwrap().status, 200);
    let wiped = (1..=3).find(|id| *id != leader).unwrap();
    let third = (1..=3).find(|id| *id != leader && *id != wiped).unwrap();
    let old_storage = c.status(wiped).await.unwrap()["storage_id"].clone();
    assert!(
        old_storage.as_str().is_some_and(|s| s.len() == 16),
        "{old_storage}"
    );
    assert_eq!(c.status(wiped).await.unwrap()["withholding_votes"], false);

    c.wipe(wiped).unwrap();
    let s = Cluster::eventually(
        Duration::from_secs(20),
        "the wiped member to withhold",
        || withholding(&c, wiped),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(wiped)));
    assert_ne!(s["storage_id"], old_storage);
    c.kill(wiped).unwrap();
    c.restart(wiped).unwrap();
    Cluster::eventually(
        Duration::from_secs(20),
        "withholding after a restart",
        || withholding(&c, wiped),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(wiped)));

    // Removed, added back as a learner, promoted.
    let a = c
        .request(
            leader,
            Method::DELETE,
            &format!("/v1/members/{wiped}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let peer_url = c.peer_url(wiped).unwrap();
    let body = serde_json::json!({"id": wiped, "peer_url": peer_url, "learner": true});
    let a = Cluster::eventually(Duration::from_secs(20), "adding it back", || async {
        let a = c
            .request(
                leader,
                Method::POST,
                "/v1/members",
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
            .ok()?;
        (a.status == 201).then_some(a)
    })
    .await
    .unwrap();
    assert_eq!(a.body["role"], "learner");
    Cluster::eventually(Duration::from_secs(20), "the vote back", || async {
        let s = c.status(wiped).await.ok()?;
        (s["withholding_votes"] == false).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(wiped)));
    let promote = format!("/v1/members/{wiped}/promote");
    Cluster::eventually(Duration::from_secs(30), "the promotion", || async {
        let a = c.request(leader, Method::POST, &promote, None).await.ok()?;
        (a.status == 200).then_some(())
    })
    .await
    .unwrap();

    // Its vote counts now: without the leader, it and the third elect one.
    c.kill(leader).unwrap();
    let next = c.wait_leader(LEADER_WAIT).await.unwrap();
    assert!(next == wiped || next == third, "{next}");
    assert_eq!(c.get(next, "before").await.unwrap().raw, b"x");
    assert_eq!(c.status(third).await.unwrap()["leader_id"], next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_leaves_the_cluster_serving() {
    let opts = Options {
        max_value_bytes: 1024,
        max_key_bytes: 64,
        ..Options::default()
    };
    let c = Cluster::start(3, opts).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    let big = "x".repeat(2048);
    let a = c.put(leader, "big", &big).await.unwrap();
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.body["code"], "too_large");
    let a = c.put(leader, &"k".repeat(100), "v").await.unwrap();
    assert_eq!(a.status, 413, "{:?}", a.body);
    let a = c.get(leader, "%FF%FE").await.unwrap();
    assert_eq!(a.status, 400, "invalid key encoding: {:?}", a.body);
    assert!(a.body["error"].is_string());
    let a = c
        .request(
            leader,
            Method::POST,
            "/v1/members",
            Some(b"{not json".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.body["code"], "invalid_argument");
    let a = c
        .request(leader, Method::POST, "/v1/members/77/promote", None)
        .await
        .unwrap();
    assert_eq!(a.status, 404, "{:?}", a.body);
    let a = c
        .request(leader, Method::DELETE, "/v1/members/abc", None)
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{:?}", a.body);
    let a = c
        .request(
            leader,
            Method::POST,
            "/v1/leader/transfer",
            Some(br#"{"to": 99}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 404, "{:?}", a.body);
    let a = c
        .request(leader, Method::GET, "/v1/kv?prefix=a&limit=many", None)
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert_eq!(a.body["code"], "invalid_argument");
    let a = c
        .request(leader, Method::GET, "/v1/kv/k?consistency=sometimes", None)
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{:?}", a.body);
    let a = c.get(leader, "absent").await.unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(a.body["code"], "not_found");
    // Still serving.
    assert_eq!(c.put(leader, "fine", "ok").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_voter_is_refused() {
    let c = Cluster::start(1, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    let a = c
        .request(leader, Method::DELETE, "/v1/members/1", None)
        .await
        .unwrap();
    assert_eq!(a.status, 409, "{:?}", a.body);
    assert_eq!(c.put(leader, "still", "here").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_membership_change_while_one_is_in_flight_is_a_conflict() {
    // A long election timeout keeps the leader leading for a while after it
    // lost its followers, so its membership change stays uncommitted.
    let opts = Options {
        election_timeout_ms: 6000,
        heartbeat_interval_ms: 100,
        request_timeout_ms: 4000,
        ..Options::default()
    };
    let mut c = Cluster::start(3, opts).unwrap();
    let leader = c.wait_leader(Duration::from_secs(40)).await.unwrap();
    assert_eq!(c.put(leader, "k", "v").await.unwrap().status, 200);
    for id in (1..=3).filter(|id| *id != leader).collect::<Vec<_>>() {
        c.kill(id).unwrap();
    }
    let before = c.status(leader).await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap();
    let url = c.http(leader).unwrap();
    let first = tokio::spawn(async move {
        let body = serde_json::json!({"id": 8, "peer_url": "127.0.0.1:9", "learner": true});
        reqwest::Client::new()
            .post(format!("{url}/v1/members"))
            .json(&body)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Wait until the first change is in the leader's log.
    Cluster::eventually(
        Duration::from_secs(3),
        "the first change to be appended",
        || async {
            let s = c.status(leader).await.ok()?;
            (s["last_log_index"].as_u64()? > before).then_some(())
        },
    )
    .await
    .unwrap();
    let body = serde_json::json!({"id": 9, "peer_url": "127.0.0.1:9", "learner": true});
    let second = c
        .request(
            leader,
            Method::POST,
            "/v1/members",
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(second.status, 409, "{:?}", second.body);
    assert_eq!(second.body["code"], "membership_change_in_progress");
    // The first never commits without a quorum: it fails with 503, not hangs.
    assert_eq!(first.await.unwrap().unwrap(), 503);
}

/// A status for a failure message, fetched without an async context.
fn futures_status(c: &Cluster, id: u64) -> String {
    let url = match c.http(id) {
        Ok(u) => format!("{u}/v1/status"),
        Err(e) => return e.to_string(),
    };
    std::thread::spawn(move || {
        std::process::Command::new("curl")
            .args(["-s", "-m", "2", &url])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    })
    .join()
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_with_an_idempotency_key_is_applied_once() {
    let c = Cluster::start(3, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let http = reqwest::Client::new();
    let put = |node: u64, seq: &str, value: &'static str| {
        let url = format!("{}/v1/kv/idem", c.http(node).unwrap());
        let req = http
            .put(url)
            .header("x-raftkv-client-id", "77")
            .header("x-raftkv-sequence", seq.to_string())
            .body(value);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (s1, first) = put(leader, "1", "a").await;
    assert_eq!(s1, 200, "{first}");
    // The "retry" goes through another node and still answers the original.
    let (s2, again) = put(follower, "1", "a").await;
    assert_eq!(s2, 200, "{again}");
    assert_eq!(first["revision"], again["revision"]);
    let a = c.get(leader, "idem").await.unwrap();
    assert_eq!(a.status, 200);
    let (s3, next) = put(leader, "2", "b").await;
    assert_eq!(s3, 200, "{next}");
    assert!(next["revision"].as_i64() > first["revision"].as_i64());
    let (stale, body) = put(leader, "1", "c").await;
    assert_eq!(
        stale, 400,
        "a sequence older than the last applied one: {body}"
    );
    let a = c.get(leader, "idem").await.unwrap();
    assert_eq!(a.raw, b"b");
    // The same key for another command is a client bug: refused, not
    // acknowledged with the first command's answer.
    let (reused, body) = put(leader, "2", "d").await;
    assert_eq!(reused, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("different command"),
        "{body}"
    );
    assert_eq!(c.get(leader, "idem").await.unwrap().raw, b"b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_describe_each_node() {
    let c = Cluster::start(3, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    assert_eq!(c.put(leader, "m", "1").await.unwrap().status, 200);
    for id in 1..=3 {
        let h = c.request(id, Method::GET, "/healthz", None).await.unwrap();
        assert_eq!(h.status, 200);
        Cluster::eventually(Duration::from_secs(10), "readyz", || async {
            let r = c.request(id, Method::GET, "/readyz", None).await.ok()?;
            (r.status == 200).then_some(())
        })
        .await
        .unwrap();
    }
    // RTT is measured from heartbeat round trips: wait for a few.
    let m = Cluster::eventually(Duration::from_secs(10), "RTT samples", || async {
        let m = metrics_text(&c, leader).await;
        m.contains("raftkv_network_peer_rtt_seconds_count{peer=")
            .then_some(m)
    })
    .await
    .unwrap();
    for needle in [
        "raftkv_raft_is_leader 1",
        "raftkv_raft_has_leader 1",
        "raftkv_raft_peer_match_index{peer=",
        "raftkv_raft_members{role=\"voter\"} 3",
        "raftkv_disk_log_fsync_seconds_count",
        "raftkv_raft_proposals_committed_total 1",
        "raftkv_db_size_bytes{db=\"kv\"}",
        "process_resident_memory_bytes",
        &format!("raftkv_node_info{{cluster=\"4242\",id=\"{leader}\""),
        "raftkv_http_requests_total{method=\"PUT\",route=\"/v1/kv/{*key}\",status=\"200\"} 1",
    ] {
        assert!(m.contains(needle), "leader metrics lack {needle}:\n{m}");
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let f = metrics_text(&c, follower).await;
    assert!(f.contains("raftkv_raft_is_leader 0"), "{f}");
    assert!(f.contains("raftkv_raft_has_leader 1"), "{f}");
}

async fn metrics_text(c: &Cluster, id: u64) -> String {
    let a = c.request(id, Method::GET, "/metrics", None).await.unwrap();
    assert_eq!(a.status, 200);
    String::from_utf8(a.raw).unwrap()
}

/// A follower whose disk fills up (no file may grow: a file size limit,
/// which needs no privileges) stops with a clear error, never a panic; the
/// others keep acknowledging writes; once space is freed it restarts,
/// catches up and serves everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_a_follower_clearly_and_it_catches_up_once_space_is_freed() {
    let mut c = Cluster::start(3, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    let full = (1..=3).find(|id| *id != leader).unwrap();
    c.kill(full).unwrap();
    let limit = c.largest_data_file(full).unwrap();
    c.restart_with_file_size_limit(full, limit).unwrap();
    let value = "v".repeat(4096);
    let mut written = 0;
    let status = loop {
        let a = c
            .put(leader, &format!("full-{written:05}"), &value)
            .await
            .unwrap();
        assert_eq!(a.status, 200, "write {written}: {:?}", a.body);
        written += 1;
        if let Some(status) = c.exited(full).unwrap() {
            break status;
        }
        assert!(
            written < 20_000,
            "node {full} never filled its disk:\n{}",
            c.log_tail(full)
        );
    };
    let log = c.log_tail(full);
    assert!(!status.success(), "exit status {status}:\n{log}");
    assert!(
        log.contains("File too large") && !log.contains("panicked"),
        "a clear error naming the cause:\n{log}"
    );
    for i in 0..20 {
        let a = c.put(leader, &format!("after-{i}"), "w").await.unwrap();
        assert_eq!(a.status, 200, "the others keep serving: {:?}", a.body);
    }
    c.restart(full).unwrap();
    let commit = c.status(leader).await.unwrap()["commit_index"]
        .as_u64()
        .unwrap();
    Cluster::eventually(Duration::from_secs(30), "the node to catch up", || async {
        let s = c.status(full).await.ok()?;
        (s["applied_index"].as_u64()? >= commit).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(full)));
    for key in [
        "full-00000".to_string(),
        format!("full-{:05}", written - 1),
        "after-19".to_string(),
    ] {
        let a = c.get_serializable(full, &key).await.unwrap();
        assert_eq!(a.status, 200, "{key} on node {full}: {:?}", a.body);
    }
    let a = c.put(full, "through-the-refilled-node", "w").await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let said = log
        .lines()
        .find(|l| l.contains("File too large"))
        .unwrap_or_default();
    println!("node {full} filled its disk after {written} writes of 4 KiB: {said}");
}
