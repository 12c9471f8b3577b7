//! Recovery from the permanent loss of a quorum: two of three data
//! directories gone, `raftkv recover` names the survivor's log and turns it
//! into a one-member cluster with its data, which then grows back to three
//! members by the normal learner path. The tool refuses while a quorum is
//! still alive.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use raftkv_e2e::{Cluster, Options, raftkv_bin};
use reqwest::Method;

const LEADER_WAIT: Duration = Duration::from_secs(20);

fn recover(args: &[&str], dir: &Path) -> Output {
    Command::new(raftkv_bin().unwrap())
        .arg("recover")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn members(c: &Cluster, via: u64) -> Vec<(u64, String)> {
    let a = c
        .request(via, Method::GET, "/v1/members", None)
        .await
        .unwrap();
    a.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Adds `id` as a learner through `leader`, waits until it serves `key`,
/// and promotes it.
async fn grow(c: &mut Cluster, leader: u64, id: u64, key: &str) {
    let peer_url = c.start_joining(id).unwrap().peer_url();
    let body = serde_json::json!({"id": id, "peer_url": peer_url, "learner": true});
    let a = c
        .request(
            leader,
            Method::POST,
            "/v1/members",
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    Cluster::eventually(
        Duration::from_secs(30),
        "the learner to catch up",
        || async {
            let a = c.get_serializable(id, key).await.ok()?;
            (a.status == 200).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(id)));
    let promote = format!("/v1/members/{id}/promote");
    let a = Cluster::eventually(Duration::from_secs(30), "the promotion", || async {
        let a = c.request(leader, Method::POST, &promote, None).await.ok()?;
        (a.status == 200).then_some(a)
    })
    .await
    .unwrap();
    assert_eq!(a.body["role"], "voter", "{:?}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_data_dirs_lost_force_new_cluster_keeps_the_data_and_grows_back_to_three() {
    let opts = Options {
        snapshot_every: 40,
        snapshot_keep_trailing: 10,
        ..Options::default()
    };
    let mut c = Cluster::start(3, opts).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    for i in 0..100 {
        let a = c
            .put(leader, &format!("r{i:03}"), &format!("v{i}"))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let lost: Vec<u64> = (1..=3).filter(|id| *id != survivor).collect();
    // The majority that acknowledged the last put may have been the leader
    // and the other follower: only what the survivor holds can survive.
    Cluster::eventually(
        Duration::from_secs(10),
        "the survivor to hold r099",
        || async {
            let a = c.get_serializable(survivor, "r099").await.ok()?;
            (a.status == 200).then_some(())
        },
    )
    .await
    .unwrap();
    let dir = |c: &Cluster, id: u64| c.nodes[(id - 1) as usize].data_dir.clone();

    // While the other two run, they are a quorum: refused, nothing written.
    c.kill(survivor).unwrap();
    let refused = recover(&["force-new-cluster"], &dir(&c, survivor));
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("a quorum of the cluster's 3 voters is still alive"),
        "{}",
        text(&refused)
    );

    // The other two lose their data for good.
    for id in &lost {
        c.kill(*id).unwrap();
        std::fs::remove_dir_all(dir(&c, *id)).unwrap();
    }
    let inspected = recover(&["inspect"], &dir(&c, survivor));
    assert!(inspected.status.success(), "{}", text(&inspected));
    assert!(
        text(&inspected).contains(&format!("newest log: {}", dir(&c, survivor).display())),
        "{}",
        text(&inspected)
    );
    let forced = recover(&["force-new-cluster"], &dir(&c, survivor));
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(
        text(&forced).contains("is now its only voter"),
        "{}",
        text(&forced)
    );

    c.restart(survivor).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    assert_eq!(leader, survivor);
    assert_eq!(
        members(&c, leader).await,
        vec![(survivor, "voter".to_string())]
    );
    for i in [0, 42, 99] {
        let a = c.get(leader, &format!("r{i:03}")).await.unwrap();
        assert_eq!(a.status, 200, "r{i:03}: {:?}", a.body);
        assert_eq!(a.raw, format!("v{i}").into_bytes());
    }
    assert_eq!(c.put(leader, "after", "w").await.unwrap().status, 200);

    // Back to three members by the learner path.
    grow(&mut c, leader, 4, "after").await;
    grow(&mut c, leader, 5, "after").await;
    let mut ids: Vec<u64> = members(&c, leader).await.iter().map(|m| m.0).collect();
    ids.sort();
    assert_eq!(ids, vec![survivor, 4, 5]);
    assert_eq!(c.put(5, "grown", "x").await.unwrap().status, 200);
    assert_eq!(c.get(4, "r099").await.unwrap().raw, b"v99");
}
