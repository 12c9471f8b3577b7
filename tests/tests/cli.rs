//! The `raftkv` command line end to end: `dev` starts a working cluster and
//! stops it cleanly; the client subcommands talk to it; `serve` shuts down
//! gracefully on SIGTERM, handing leadership over first.

// Test code: a failed unwrap is a failed test, also in helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftkv_e2e::{Cluster, Options, free_port, raftkv_bin};

fn raftkv(args: &[&str]) -> (bool, String) {
    let out = Command::new(raftkv_bin().unwrap())
        .args(args)
        .env_remove("RAFTKV_ENDPOINTS")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn dev_starts_a_cluster_the_cli_can_use_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Bases from the harness, which hands out ports far enough apart for
    // dev's layout (see `free_port`); a clash would fail loudly below.
    let http = free_port().unwrap();
    let client = free_port().unwrap();
    let peer = free_port().unwrap();
    let mut dev = Command::new(raftkv_bin().unwrap())
        .args(["dev", "--nodes", "3", "--fresh"])
        .arg("--data-dir")
        .arg(dir.path().join("dev"))
        .args(["--http-port", &http.to_string()])
        .args(["--client-port", &client.to_string()])
        .args(["--peer-port", &peer.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read on a thread of its own, so that the deadline holds even when
    // dev prints nothing at all (a node that cannot start, say).
    let stdout = dev.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() || lines_tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => {
                stop_dev(&mut dev);
                panic!("no leader line ({e}):\n{printed}");
            }
        };
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("leader: node") {
            break;
        }
    }
    assert!(
        printed.contains(&format!("http://127.0.0.1:{http}")),
        "{printed}"
    );

    let endpoints = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", http + i))
        .collect::<Vec<_>>()
        .join(",");
    let (ok, out) = raftkv(&["kv", "put", "greeting", "hello", "--endpoints", &endpoints]);
    assert!(ok, "{out}");
    let (ok, out) = raftkv(&["kv", "get", "greeting", "--endpoints", &endpoints]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "hello");
    let (ok, out) = raftkv(&["cluster", "status", "--endpoints", &endpoints, "-o", "json"]);
    assert!(ok, "{out}");
    let statuses: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(statuses.as_array().unwrap().len(), 3);
    let leaders = statuses
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"]["role"] == "leader")
        .count();
    assert_eq!(leaders, 1, "{out}");
    let (ok, out) = raftkv(&["member", "list", "--endpoints", &endpoints]);
    assert!(ok && out.contains("(leader)"), "{out}");
    let (ok, out) = raftkv(&["kv", "get", "absent", "--endpoints", &endpoints]);
    assert!(!ok && out.contains("404"), "{out}");

    Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap();
    // Everything dev prints until its output closes (it and its nodes
    // exited), within a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rest = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => rest.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                stop_dev(&mut dev);
                panic!("dev did not stop on SIGTERM: {rest:?}");
            }
        }
    }
    let status = dev.wait().unwrap();
    assert!(status.success(), "dev exit: {status}\n{rest:?}");
    assert!(rest.iter().any(|l| l == "all nodes stopped"), "{rest:?}");
    // Nothing listens any more.
    for i in 0..3 {
        assert!(std::net::TcpStream::connect(("127.0.0.1", http + i)).is_err());
    }
}

/// Stops a `raftkv dev` the test gave up on: SIGTERM first, which stops its
/// nodes too; SIGKILL if it has not exited within 15 s.
fn stop_dev(dev: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = dev.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = dev.kill();
    let _ = dev.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over_and_exits_cleanly() {
    let opts = Options {
        // Long enough that only a hand-over (not an election after the
        // leader vanished) can produce a new leader quickly.
        election_timeout_ms: 3000,
        heartbeat_interval_ms: 100,
        ..Options::default()
    };
    let mut c = Cluster::start(3, opts).unwrap();
    let leader = c.wait_leader(Duration::from_secs(30)).await.unwrap();
    assert_eq!(c.put(leader, "before", "x").await.unwrap().status, 200);
    let stopped = Instant::now();
    assert!(c.terminate(leader).unwrap(), "the leader did not exit 0");
    let new = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let took = stopped.elapsed();
    assert_ne!(new, leader);
    assert!(
        took < Duration::from_millis(2500),
        "a new leader after {took:?}: slower than a hand-over, as slow as an election"
    );
    assert_eq!(c.put(new, "after", "y").await.unwrap().status, 200);
    assert_eq!(c.get(new, "before").await.unwrap().raw, b"x");
}
