//! Issue 4, test 6: clients write and read continuously while nodes are
//! killed and restarted; the recorded history must be linearizable, as
//! judged by porcupine (the Go checker in `tests/linearizability`).

// Test code: a failed unwrap is a failed test, also in helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_e2e::{Cluster, Options};
use serde_json::{Value, json};

const CLIENTS: usize = 4;
const KEYS: [&str; 3] = ["x", "y", "z"];
const RUN_FOR: Duration = Duration::from_secs(10);

/// Nanoseconds since the test began: the history's clock.
fn now(t0: Instant) -> i64 {
    t0.elapsed().as_nanos() as i64
}

async fn client(
    id: usize,
    endpoints: Vec<String>,
    t0: Instant,
    history: Arc<Mutex<Vec<Value>>>,
) -> (usize, usize) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut seq = 0u64;
    let (mut ok, mut unknown) = (0, 0);
    // A small deterministic generator per client: no shared RNG needed.
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (id as u64 + 1);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    while t0.elapsed() < RUN_FOR {
        let r = next();
        let key = KEYS[(r % KEYS.len() as u64) as usize];
        let node = &endpoints[((r >> 8) % endpoints.len() as u64) as usize];
        let url = format!("{node}/v1/kv/{key}");
        let call = now(t0);
        match (r >> 16) % 5 {
            0 | 1 => {
                seq += 1;
                let value = format!("c{id}-{seq}");
                let resp = http.put(&url).body(value.clone()).send().await;
                let ret = now(t0);
                // A request that never reached a node cannot take effect.
                if matches!(&resp, Err(e) if e.is_connect()) {
                    continue;
                }
                let done = matches!(&resp, Ok(r) if r.status() == 200);
                if done {
                    ok += 1;
                } else {
                    unknown += 1;
                    let why = match resp {
                        Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                        Err(e) => e.to_string(),
                    };
                    eprintln!("UNKNOWN put via {node}: {why}");
                }
                // Anything but a 200 may still take effect later: unknown.
                history.lock().unwrap().push(json!({
                    "client": id, "op": "put", "key": key, "value": value,
                    "call": call, "return": if done { json!(ret) } else { Value::Null },
                }));
            }
            2 => {
                let resp = http.delete(&url).send().await;
                let ret = now(t0);
                if matches!(&resp, Err(e) if e.is_connect()) {
                    continue;
                }
                let done = matches!(&resp, Ok(r) if r.status() == 200);
                history.lock().unwrap().push(json!({
                    "client": id, "op": "delete", "key": key,
                    "call": call, "return": if done { json!(ret) } else { Value::Null },
                }));
            }
            _ => {
                let Ok(resp) = http.get(&url).send().await else {
                    continue;
                };
                let status = resp.status().as_u16();
                let body = resp.bytes().await.unwrap_or_default();
                let ret = now(t0);
                let found = match status {
                    200 => true,
                    404 => false,
                    // A failed read has no effect: leave it out.
                    _ => continue,
                };
                let value = if found {
                    String::from_utf8_lossy(&body).into_owned()
                } else {
                    String::new()
                };
                history.lock().unwrap().push(json!({
                    "client": id, "op": "get", "key": key, "value": value,
                    "found": found, "call": call, "return": ret,
                }));
            }
        }
    }
    (ok, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_recorded_while_nodes_crash_and_restart_is_linearizable() {
    let mut c = Cluster::start(5, Options::default()).unwrap();
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let endpoints: Vec<String> = (1..=5).map(|id| c.http(id).unwrap()).collect();
    let t0 = Instant::now();
    let history = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(id, endpoints.clone(), t0, history.clone())))
        .collect();

    // Chaos: kill -9 a node (the leader every other round), let the cluster
    // work without it, restart it. At most one node is down at a time, so a
    // quorum always exists.
    let mut round = 0u64;
    while t0.elapsed() < RUN_FOR - Duration::from_secs(2) {
        round += 1;
        let victim = if round % 2 == 1 {
            c.wait_leader(Duration::from_secs(10)).await.unwrap_or(1)
        } else {
            1 + round % 5
        };
        c.kill(victim).unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        c.restart(victim).unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let mut acked = 0;
    let mut unknown = 0;
    for cl in clients {
        let (ok, unk) = cl.await.unwrap();
        acked += ok;
        unknown += unk;
    }
    let history = history.lock().unwrap().clone();
    println!(
        "HISTORY: {} operations, {acked} acknowledged puts, {unknown} puts with unknown outcome, {round} kill/restart rounds",
        history.len()
    );
    assert!(
        acked > 20,
        "too few successful writes to mean anything: {acked}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.json");
    std::fs::write(&file, serde_json::to_vec(&history).unwrap()).unwrap();
    let checker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("linearizability");
    let out = std::process::Command::new("go")
        .current_dir(&checker)
        .args(["run", ".", "-timeout", "120s"])
        .arg(&file)
        .output()
        .expect("the linearizability check needs Go (see .ci/install)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("CHECKER: {}", report.trim());
    assert!(
        out.status.success(),
        "history is not linearizable (or unchecked):\n{report}"
    );
}
