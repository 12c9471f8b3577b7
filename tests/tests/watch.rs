//! etcd's Watch against a real raftkv cluster, with the real `etcdctl`
//! (etcd 3.4's): `etcdctl watch` runs as a child process on a follower
//! while keys are written through another member, and must print every
//! event, in order; a watch from a compacted revision is canceled. And
//! etcd's Go client (`tests/linearizability/watch_test.go`) watches while
//! keys are written and leadership moves, and while members crash and
//! restart.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use raftkv_e2e::{Cluster, Options, etcdctl};

/// A running `etcdctl watch`: what it printed so far; stopped (by its own
/// pid) when dropped.
struct Watch {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Watch {
    fn start(endpoint: &str, args: &[&str]) -> anyhow::Result<Watch> {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "watch"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("etcdctl must be installed")?;
        let collect = |mut from: Box<dyn Read + Send>| {
            let into = Arc::new(Mutex::new(String::new()));
            let sink = into.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
            into
        };
        let stdout = collect(Box::new(child.stdout.take().context("stdout")?));
        let stderr = collect(Box::new(child.stderr.take().context("stderr")?));
        Ok(Watch {
            child,
            stdout,
            stderr,
        })
    }

    fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the output is `expected` (failing if it grows past it).
    async fn prints(&self, expected: &str) -> anyhow::Result<()> {
        Cluster::eventually(Duration::from_secs(20), "etcdctl watch's output", || {
            let out = self.stdout();
            async move { (out.len() >= expected.len()).then_some(()) }
        })
        .await
        .with_context(|| {
            format!(
                "printed so far:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        })?;
        assert_eq!(self.stdout(), expected, "stderr: {}", self.stderr());
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_on_a_follower_prints_history_and_every_live_event() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(Duration::from_secs(20)).await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap_or(1);
    let (on_leader, on_follower) = (c.client_endpoint(leader), c.client_endpoint(follower));

    etcdctl(&on_leader, &["put", "/w/a", "1"], "")?; // 2
    etcdctl(&on_leader, &["put", "/w/b", "2"], "")?; // 3
    etcdctl(&on_leader, &["put", "/x", "9"], "")?; // 4

    // From revision 2 with previous values, on a follower: history first.
    let history = Watch::start(
        &on_follower,
        &["--prefix", "/w/", "--rev", "2", "--prev-kv"],
    )?;
    // One key, from the next revision, on the leader.
    let live = Watch::start(&on_leader, &["/w/a", "--rev", "5"])?;
    history.prints("PUT\n/w/a\n1\nPUT\n/w/b\n2\n").await?;
    let mut history_expected = "PUT\n/w/a\n1\nPUT\n/w/b\n2\n".to_owned();
    let mut live_expected = String::new();

    // Writes through the leader, and through the other follower.
    let other = (1..=3).find(|id| *id != leader && *id != follower);
    let via = other.map_or(on_leader.clone(), |id| c.client_endpoint(id));
    etcdctl(&via, &["put", "/w/a", "11"], "")?;
    etcdctl(&on_leader, &["del", "/w/b"], "")?;
    etcdctl(&via, &["txn"], "\nput /w/c 3\nput /w/d 4\n\n\n")?;
    etcdctl(&on_leader, &["del", "--prefix", "/w/"], "")?;
    history_expected.push_str(concat!(
        "PUT\n/w/a\n1\n/w/a\n11\n",
        "DELETE\n/w/b\n2\n/w/b\n\n",
        "PUT\n/w/c\n3\n",
        "PUT\n/w/d\n4\n",
        "DELETE\n/w/a\n11\n/w/a\n\n",
        "DELETE\n/w/c\n3\n/w/c\n\n",
        "DELETE\n/w/d\n4\n/w/d\n\n",
    ));
    history.prints(&history_expected).await?;
    live_expected.push_str("PUT\n/w/a\n11\nDELETE\n/w/a\n\n");
    live.prints(&live_expected).await?;
    drop(history);
    drop(live);

    // A watch from a compacted revision is canceled by the server.
    etcdctl(&on_leader, &["compaction", "5"], "")?;
    // etcdctl returns once the leader applied the compaction; a watch
    // started on a follower that has not yet would replay from 2 and stay.
    // A linearizable read there waits until the follower applied what the
    // leader had committed, so once it finds 2 compacted, the follower has.
    let read = etcdctl(&on_follower, &["get", "/w/a", "--rev", "2"], "");
    assert!(
        read.as_ref().is_err_and(|e| e
            .to_string()
            .contains("required revision has been compacted")),
        "a read at a compacted revision: {read:?}"
    );
    let mut compacted = Watch::start(&on_follower, &["--rev", "2", "/w/a"])?;
    Cluster::eventually(Duration::from_secs(20), "etcdctl watch to exit", || {
        let exited = compacted.child.try_wait().ok().flatten().is_some();
        async move { exited.then_some(()) }
    })
    .await
    .with_context(|| compacted.stderr())?;
    assert!(
        compacted
            .stderr()
            .contains("required revision has been compacted"),
        "stderr: {}",
        compacted.stderr()
    );
    c.terminate(1)?;
    c.terminate(2)?;
    c.terminate(3)?;
    Ok(())
}

/// Runs the Go watch test against `c`'s members with `env` added, and
/// checks it passed (and really ran).
fn go_watch_test(c: &Cluster, env: &[(&str, &str)]) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let endpoints = (1..=3)
        .map(|id| format!("http://{}", c.client_endpoint(id)))
        .collect::<Vec<_>>()
        .join(",");
    let module = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("linearizability");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(raftkv_e2e::history::go())
            .current_dir(module)
            .args([
                "test",
                "-count=1",
                "-run",
                "TestAWatchSeesEveryWriteInOrderThroughALeaderChange",
                "-v",
                ".",
            ])
            .env("RAFTKV_WATCH_ENDPOINTS", endpoints)
            .envs(env)
            .output()
            .context("the Go watch test needs Go (see .ci/install)")?;
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "{report}");
        // Not skipped: it really ran against the cluster.
        anyhow::ensure!(report.contains("--- PASS"), "{report}");
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_go_client_watches_every_write_through_a_leader_change() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, Options::default())?;
    c.wait_leader(Duration::from_secs(20)).await?;
    go_watch_test(&c, &[]).await??;
    c.terminate(1)?;
    c.terminate(2)?;
    c.terminate(3)?;
    Ok(())
}

/// The same, while every member in turn is killed (`kill -9`) and
/// restarted: whichever member the watch was on, it resumes elsewhere
/// without a gap, a repeat or a reordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_go_client_watches_every_write_while_members_crash_and_restart() -> anyhow::Result<()>
{
    let mut c = Cluster::start(3, Options::default())?;
    c.wait_leader(Duration::from_secs(20)).await?;
    let test = go_watch_test(&c, &[("RAFTKV_WATCH_PACE_MS", "40")]);
    // The Go test's first write: its watch starts from there.
    let endpoint = c.client_endpoint(1);
    Cluster::eventually(Duration::from_secs(60), "the Go test to start", || async {
        let value = etcdctl(&endpoint, &["get", "--print-value-only", "/go/start"], "").ok()?;
        (value.trim() == "0").then_some(())
    })
    .await?;
    for id in 1..=3 {
        // Spaced so that each crash falls among the paced writes.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        c.kill(id)?;
        c.wait_leader(Duration::from_secs(20)).await?;
        c.restart(id)?;
    }
    test.await??;
    c.wait_leader(Duration::from_secs(20)).await?;
    c.terminate(1)?;
    c.terminate(2)?;
    c.terminate(3)?;
    Ok(())
}
