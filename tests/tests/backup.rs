//! Backups end to end: a backup saved from a member while a client keeps
//! writing restores into a new three-member cluster that serves every
//! acknowledged write up to the backup's revision, at the same revisions,
//! with history down to the compaction point; `etcdctl snapshot save`
//! works against raftkv; damaged files are refused by name; scheduled
//! backups (`raftkv snapshot backup`) keep the newest N and report what
//! they saved, in a directory or in an S3-compatible bucket (a real
//! `moto_server` on loopback, which `.ci/install` installs), from which a
//! new cluster is restored.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_e2e::{Cluster, Options, raftkv_bin};
use reqwest::Method;
use serde_json::Value;

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// `raftkv snapshot restore SOURCE` for one member of the new cluster `n`.
fn restore_args(source: &str, n: &Cluster, node: &raftkv_e2e::Node) -> Vec<String> {
    [
        "snapshot",
        "restore",
        source,
        "--data-dir",
        node.data_dir.to_str().unwrap(),
        "--initial-cluster",
        n.initial_cluster(),
        "--id",
        &node.id.to_string(),
        "--cluster-id",
        &n.cluster_id().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A restore succeeded and says it restored `revision`.
fn assert_restored(o: &Output, revision: i64) {
    assert!(o.status.success(), "{}", text(o));
    assert!(
        text(o).contains(&format!("at revision {revision}")),
        "{}",
        text(o)
    );
}

async fn raftkv(args: &[&str]) -> Output {
    tokio::process::Command::new(raftkv_bin().unwrap())
        .args(args)
        .output()
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--dial-timeout=5s"])
        .args(args)
        .output()
        .await
        .expect("etcdctl must be installed (.ci/install installs etcd-client)")
}

async fn put(c: &Cluster, id: u64, key: &str, value: &str) -> i64 {
    let a = c.put(id, key, value).await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body["revision"].as_i64().unwrap()
}

async fn status_of(file: &Path) -> Value {
    let o = raftkv(&["snapshot", "status", "-w", "json", file.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every key under `prefix` on node `id`: value, create and mod revision,
/// version.
async fn listed(c: &Cluster, id: u64, prefix: &str) -> HashMap<String, (String, i64, i64, i64)> {
    let a = c
        .request(id, Method::GET, &format!("/v1/kv?prefix={prefix}"), None)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_string(),
                (
                    kv["value"].as_str().unwrap().to_string(),
                    kv["create_revision"].as_i64().unwrap(),
                    kv["mod_revision"].as_i64().unwrap(),
                    kv["version"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Writes `w/<n>` keys one after another through `base` until stopped,
/// recording each acknowledged write's revision.
async fn writer(base: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<(String, i64)>>>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w/{n:06}");
        let r = http
            .put(format!("{base}/v1/kv/{key}"))
            .body(format!("v{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        acked
            .lock()
            .unwrap()
            .push((key, body["revision"].as_i64().unwrap()));
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_into_a_new_cluster_at_the_same_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.rkv");
    let c = Cluster::start(3, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();

    // History: a key rewritten twice, a key deleted, a compaction between.
    let h1 = put(&c, leader, "h", "1").await;
    let h2 = put(&c, leader, "h", "2").await;
    let h3 = put(&c, leader, "h", "3").await;
    put(&c, leader, "gone", "x").await;
    let d = c
        .request(leader, Method::DELETE, "/v1/kv/gone", None)
        .await
        .unwrap();
    assert_eq!(d.status, 200);
    let compact = etcdctl(&c.client_endpoint(leader), &["compact", &h2.to_string()]).await;
    assert!(compact.status.success(), "{}", text(&compact));

    // A client keeps writing through the leader while a follower saves.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writing = tokio::spawn(writer(c.http(leader).unwrap(), stop.clone(), acked.clone()));
    let count = || acked.lock().unwrap().len();
    Cluster::eventually(Duration::from_secs(30), "50 writes", || async {
        (count() >= 50).then_some(())
    })
    .await
    .unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let saved = raftkv(&[
        "snapshot",
        "save",
        "--endpoints",
        &c.client_endpoint(follower),
        file.to_str().unwrap(),
    ])
    .await;
    assert!(saved.status.success(), "{}", text(&saved));
    assert!(
        text(&saved).contains("Snapshot saved at"),
        "{}",
        text(&saved)
    );
    let after_save = count();
    Cluster::eventually(Duration::from_secs(30), "50 more writes", || async {
        (count() >= after_save + 50).then_some(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writing.await.unwrap();
    let acked = acked.lock().unwrap().clone();

    let status = status_of(&file).await;
    let revision = status["revision"].as_i64().unwrap();
    assert_eq!(status["compact_revision"].as_i64().unwrap(), h2);
    let before: Vec<_> = acked.iter().filter(|(_, r)| *r <= revision).collect();
    assert!(
        before.len() >= 50,
        "{} writes before the backup",
        before.len()
    );
    assert!(
        acked.iter().any(|(_, r)| *r > revision),
        "writes went on after the backup's revision {revision}"
    );
    // The writer's keys, plus "h".
    assert_eq!(
        status["total_keys"].as_u64().unwrap(),
        before.len() as u64 + 1
    );

    // etcdctl saves a backup raftkv can read.
    let etcd_file = dir.path().join("etcdctl.db");
    let e = etcdctl(
        &c.client_endpoint(leader),
        &["snapshot", "save", etcd_file.to_str().unwrap()],
    )
    .await;
    assert!(e.status.success(), "{}", text(&e));
    let etcd_status = status_of(&etcd_file).await;
    assert_eq!(
        etcd_status["revision"].as_i64().unwrap(),
        acked.last().unwrap().1,
        "etcdctl's backup holds every write"
    );
    drop(c);

    // A new cluster from the backup.
    let mut n = Cluster::prepare(3, Options::default()).unwrap();
    for node in &n.nodes {
        let args = restore_args(file.to_str().unwrap(), &n, node);
        let o = raftkv(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_restored(&o, revision);
    }
    n.start_prepared().unwrap();
    let leader = n.wait_leader(LEADER_WAIT).await.unwrap();

    let restored = listed(&n, leader, "w/").await;
    for (key, rev) in &acked {
        match restored.get(key) {
            Some((value, create, modified, version)) => {
                assert!(*rev <= revision, "{key} at {rev} is after the backup");
                assert_eq!(value, &format!("v{}", &key[2..].parse::<u64>().unwrap()));
                assert_eq!((*create, *modified, *version), (*rev, *rev, 1), "{key}");
            }
            None => assert!(*rev > revision, "{key} acknowledged at {rev} is missing"),
        }
    }
    assert_eq!(restored.len(), before.len());
    let h = listed(&n, leader, "h").await;
    assert_eq!(h["h"], ("3".to_string(), h1, h3, 3));
    assert!(!listed(&n, leader, "gone").await.contains_key("gone"));
    // History down to the compaction point, and not below it.
    let e = n.client_endpoint(leader);
    let at_h2 = etcdctl(&e, &["get", "h", &format!("--rev={h2}")]).await;
    assert_eq!(
        String::from_utf8_lossy(&at_h2.stdout),
        "h\n2\n",
        "{}",
        text(&at_h2)
    );
    let at_h1 = etcdctl(&e, &["get", "h", &format!("--rev={h1}")]).await;
    assert!(!at_h1.status.success());
    assert!(text(&at_h1).contains("compacted"), "{}", text(&at_h1));
    // Every member holds the same history, and the revisions go on.
    for id in 1..=3 {
        let a = Cluster::eventually(Duration::from_secs(20), "a member to catch up", || async {
            let a = n.get_serializable(id, "h").await.ok()?;
            (a.status == 200).then_some(a)
        })
        .await
        .unwrap();
        assert_eq!(a.raw, b"3");
    }
    assert_eq!(put(&n, leader, "new", "1").await, revision + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_truncated_backup_is_refused_by_status_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.rkv");
    let c = Cluster::start(1, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    for i in 0..20 {
        put(&c, leader, &format!("k{i}"), &"v".repeat(1000)).await;
    }
    let saved = raftkv(&[
        "snapshot",
        "save",
        "--endpoints",
        &c.client_endpoint(leader),
        file.to_str().unwrap(),
    ])
    .await;
    assert!(saved.status.success(), "{}", text(&saved));
    drop(c);
    let good = std::fs::read(&file).unwrap();

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 100);
    for (name, bytes, says) in [
        ("flipped.rkv", flipped, "corrupt"),
        ("truncated.rkv", truncated, "truncated"),
    ] {
        let bad = dir.path().join(name);
        std::fs::write(&bad, bytes).unwrap();
        let status = raftkv(&["snapshot", "status", bad.to_str().unwrap()]).await;
        assert!(!status.status.success());
        let msg = text(&status);
        assert!(msg.contains(says) && msg.contains(name), "{msg}");

        let data_dir = dir.path().join(format!("{name}.data"));
        let restore = raftkv(&[
            "snapshot",
            "restore",
            bad.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--initial-cluster",
            "1=http://127.0.0.1:1",
            "--id",
            "1",
        ])
        .await;
        assert!(!restore.status.success());
        let msg = text(&restore);
        assert!(msg.contains(says) && msg.contains(name), "{msg}");
        assert!(!data_dir.join("kv.redb").exists() && !data_dir.join("raft-log").exists());
    }
}

/// Runs `raftkv snapshot backup` into `dir` keeping `keep`; returns the
/// exit status and the JSON report.
async fn scheduled_backup(endpoint: &str, dir: &Path, keep: &str) -> (bool, Value) {
    let report = dir.join("report.json");
    let _ = std::fs::remove_file(&report);
    // Backups are named by the second: never two runs in one.
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Cluster::eventually(Duration::from_secs(3), "the next second", || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (now > second).then_some(())
    })
    .await
    .unwrap();
    let backups = dir.join("backups");
    let o = raftkv(&[
        "snapshot",
        "backup",
        "--dir",
        backups.to_str().unwrap(),
        "--prefix",
        "kv",
        "--keep",
        keep,
        "--endpoints",
        endpoint,
        "--report",
        report.to_str().unwrap(),
    ])
    .await;
    let json = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", text(&o)));
    (o.status.success(), serde_json::from_str(&json).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_keep_the_newest_and_report_what_they_saved() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(1, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    let endpoint = c.client_endpoint(leader);
    let mut reports = Vec::new();
    for i in 0..3 {
        let revision = put(&c, leader, &format!("k{i}"), "v").await;
        let (ok, report) = scheduled_backup(&endpoint, dir.path(), "2").await;
        assert!(ok, "{report}");
        assert_eq!(report["revision"].as_i64(), Some(revision), "{report}");
        let file = dir
            .path()
            .join("backups")
            .join(report["file"].as_str().unwrap());
        let status = status_of(&file).await;
        assert_eq!(status["total_size"], report["size_bytes"], "{status}");
        assert_eq!(status["sha256"], report["sha256"]);
        assert!(report["time"].as_str().unwrap().ends_with('Z'), "{report}");
        reports.push(report);
    }
    // Keep 2: the first one went, pruned by the third run.
    assert_eq!(
        reports[2]["pruned"],
        serde_json::json!([reports[0]["file"]])
    );
    assert_eq!(reports[2]["kept"], 2);
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let expected: Vec<String> = reports[1..]
        .iter()
        .map(|r| r["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, expected);

    // A run that cannot reach the cluster fails, says why in the report,
    // and deletes nothing.
    let (ok, report) = scheduled_backup("127.0.0.1:9", dir.path(), "1").await;
    assert!(!ok);
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("no endpoint answered"), "{error}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("backups"))
            .unwrap()
            .count(),
        2
    );
}

/// A `moto_server` (an S3-compatible server) on a loopback port, stopped
/// by its PID when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Moto {
    async fn start() -> Moto {
        let port = raftkv_e2e::free_port().unwrap();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server must be installed (.ci/install installs moto[server])");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        Cluster::eventually(Duration::from_secs(60), "moto_server to answer", || async {
            let r = http.get(&moto.endpoint).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
        .unwrap();
        moto
    }

    /// moto checks no signatures: plain requests create and list.
    async fn create_bucket(&self, bucket: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }

    /// The keys under `prefix` in `bucket`.
    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = reqwest::Client::new()
            .get(format!(
                "{}/{bucket}?list-type=2&prefix={prefix}",
                self.endpoint
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    /// The object's ETag: `"<md5>-<parts>"` for a multipart upload.
    async fn etag(&self, bucket: &str, key: &str) -> String {
        let r = reqwest::Client::new()
            .head(format!("{}/{bucket}/{key}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{key}: {}", r.status());
        r.headers()["etag"].to_str().unwrap().to_string()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `raftkv` with the object store's flags and credentials.
async fn raftkv_s3(moto: &Moto, staging: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(raftkv_bin().unwrap())
        .args(args)
        .args([
            "--s3-endpoint",
            &moto.endpoint,
            "--s3-region",
            "eu-west-1",
            "--s3-force-path-style",
            "--s3-staging-dir",
            staging.to_str().unwrap(),
        ])
        .env("AWS_ACCESS_KEY_ID", "raftkv-test")
        .env("AWS_SECRET_ACCESS_KEY", "raftkv-test-secret")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_to_s3_under_writes_are_pruned_and_restore_a_cluster_that_serves_every_key() {
    let moto = Moto::start().await;
    moto.create_bucket("raftkv-backups").await;
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    // A run killed while saving left its `.part` file behind.
    let stale = staging.join("kv-20200101T000000Z.db.part");
    std::fs::write(&stale, b"half a backup").unwrap();

    let c = Cluster::start(3, Options::default()).unwrap();
    let leader = c.wait_leader(LEADER_WAIT).await.unwrap();
    // More than one 5 MiB part: the upload goes in parts.
    let big = "b".repeat(64 * 1024);
    for i in 0..100 {
        put(&c, leader, &format!("big/{i:03}"), &big).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writing = tokio::spawn(writer(c.http(leader).unwrap(), stop.clone(), acked.clone()));
    let count = || acked.lock().unwrap().len();

    let endpoints = (1..=3)
        .map(|id| c.client_endpoint(id))
        .collect::<Vec<_>>()
        .join(",");
    let mut reports = Vec::new();
    let mut last_run = 0;
    for run in 0..3 {
        let enough = (run + 1) * 20;
        Cluster::eventually(Duration::from_secs(30), "more writes", || async {
            (count() >= enough).then_some(())
        })
        .await
        .unwrap();
        let report_file = dir.path().join(format!("report-{run}.json"));
        // Backups are named by the second: never two runs in one.
        Cluster::eventually(Duration::from_secs(3), "the next second", || async {
            (unix_second() > last_run).then_some(())
        })
        .await
        .unwrap();
        let o = raftkv_s3(
            &moto,
            &staging,
            &[
                "snapshot",
                "backup",
                "--s3",
                "s3://raftkv-backups/prod/kv",
                "--prefix",
                "kv",
                "--keep",
                "2",
                "--endpoints",
                &endpoints,
                "--s3-part-size-mib",
                "5",
                "--report",
                report_file.to_str().unwrap(),
            ],
        )
        .await;
        assert!(o.status.success(), "{}", text(&o));
        last_run = unix_second();
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
        let file = report["file"].as_str().unwrap();
        assert_eq!(
            report["location"].as_str().unwrap(),
            format!("s3://raftkv-backups/prod/kv/{file}")
        );
        assert!(report["size_bytes"].as_u64().unwrap() > 6 << 20, "{report}");
        reports.push(report);
    }
    stop.store(true, Ordering::Relaxed);
    writing.await.unwrap();
    let acked = acked.lock().unwrap().clone();

    // The killed run's leftover went with the first run; nothing is staged.
    assert_eq!(
        reports[0]["stale_removed"],
        serde_json::json!(["kv-20200101T000000Z.db.part"])
    );
    assert!(!stale.exists());
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    // Keep 2: the third run pruned the first by listing the prefix.
    assert_eq!(
        reports[2]["pruned"],
        serde_json::json!([reports[0]["file"]])
    );
    assert_eq!(reports[2]["kept"], 2);
    let expected: Vec<String> = reports[1..]
        .iter()
        .map(|r| format!("prod/kv/{}", r["file"].as_str().unwrap()))
        .collect();
    assert_eq!(moto.keys("raftkv-backups", "prod/kv/").await, expected);
    let newest = &expected[1];
    let etag = moto.etag("raftkv-backups", newest).await;
    assert!(
        etag.trim_matches('"').ends_with("-2"),
        "not multipart: {etag}"
    );
    drop(c);

    // A new cluster from the newest backup, fetched from the bucket.
    let revision = reports[2]["revision"].as_i64().unwrap();
    let url = format!("s3://raftkv-backups/{newest}");
    let mut n = Cluster::prepare(3, Options::default()).unwrap();
    for node in &n.nodes {
        let args = restore_args(&url, &n, node);
        let o = raftkv_s3(
            &moto,
            &staging,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        assert_restored(&o, revision);
    }
    // The downloaded copies are gone.
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    n.start_prepared().unwrap();
    let leader = n.wait_leader(LEADER_WAIT).await.unwrap();
    let restored = listed(&n, leader, "w/").await;
    let before = acked.iter().filter(|(_, r)| *r <= revision).count();
    assert!(before >= 60, "{before} writes before the last backup");
    for (key, rev) in &acked {
        match restored.get(key) {
            Some((_, _, modified, _)) => assert_eq!(modified, rev, "{key}"),
            None => assert!(*rev > revision, "{key} acknowledged at {rev} is missing"),
        }
    }
    assert_eq!(restored.len(), before);
    let bigs = listed(&n, leader, "big/").await;
    assert_eq!(bigs.len(), 100);
    assert!(bigs.values().all(|(v, ..)| v == &big));
}

fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
