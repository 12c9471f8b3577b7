//! Crash tests. Each test re-executes its own test binary as a child writer
//! (selected by an environment variable), which prints every acknowledged
//! log index; the parent kills it with SIGKILL at a random point, reopens
//! the stores and checks that everything acknowledged is there and nothing
//! else claims to be. (A full disk is tested on the simulated disk, in
//! `storage_log.rs`: a full disk fails a log write only when it begins a
//! segment, which a file-size limit cannot reach.)

// Test helpers outside #[test] fns may unwrap too (clippy.toml only covers
// the test fns themselves).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command as Proc, Stdio};

use bytes::Bytes;
use raftkv::raft::{Entry, EntryPayload, HardState, LogIndex, NodeId, Storage, Term};
use raftkv::storage::{Command, Identity, KvStore, Limits, LogStore, Op};
use rand::{Rng, SeedableRng};

const CRASH_CHILD: &str = "RAFTKV_TEST_CRASH_CHILD_DIR";
const ID: Identity = Identity {
    cluster_id: 77,
    node_id: NodeId(1),
};

fn entry(i: u64, value_len: usize) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(i),
        payload: EntryPayload::Command(
            Command {
                request_id: None,
                auth: None,
                op: Op::Put {
                    key: Bytes::from(format!("k{}", i % 50)),
                    value: Bytes::from(format!("{i}:{}", "v".repeat(value_len))),
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                    lease: 0,
                },
            }
            .encode(),
        ),
    }
}

/// The child: appends batches to the log (durably, then acknowledges) and
/// applies committed entries to the state machine, forever.
fn crash_child(dir: &Path) {
    let log = LogStore::open(dir, ID).unwrap();
    let kv = KvStore::open(dir, Limits::default()).unwrap();
    // Catch the state machine up first, as the node does on restart.
    let commit = log.hard_state().commit;
    let behind = log
        .entries(kv.applied_index().next(), commit.next(), None)
        .unwrap();
    kv.apply(&behind).unwrap();
    let mut out = std::io::stdout().lock();
    loop {
        let last = log.last_index().unwrap().get();
        let n = 1 + last % 7;
        let entries: Vec<_> = (last + 1..=last + n).map(|i| entry(i, 100)).collect();
        let hs = HardState {
            term: Term(1),
            vote: Some(NodeId(1)),
            commit: LogIndex(last + n),
        };
        log.persist(None, &entries, Some(&hs)).unwrap();
        writeln!(out, "ack {}", last + n).unwrap();
        out.flush().unwrap();
        kv.apply(&entries).unwrap();
    }
}

fn spawn_self(test: &str, env: &str, dir: &Path) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    let args = ["--exact", test, "--nocapture", "--test-threads=1"];
    let mut cmd = Proc::new(&exe);
    cmd.args(args);
    cmd.env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn acks(line: &str) -> Option<u64> {
    line.strip_prefix("ack ")
        .and_then(|n| n.trim().parse().ok())
}

#[test]
fn acknowledged_entries_survive_sigkill_and_the_state_machine_catches_up() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD) {
        crash_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogStore::open(dir.path(), ID).unwrap();
        log.bootstrap(&raftkv::raft::Membership::with_voters([(
            NodeId(1),
            Bytes::new(),
        )]))
        .unwrap();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let mut max_acked = 0;
    for round in 0..6 {
        let mut child = spawn_self(
            "acknowledged_entries_survive_sigkill_and_the_state_machine_catches_up",
            CRASH_CHILD,
            dir.path(),
        );
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wait_for = rng.random_range(1..60);
        let mut seen = 0;
        for line in lines.by_ref() {
            if let Some(n) = acks(&line.unwrap()) {
                max_acked = max_acked.max(n);
                seen += 1;
                if seen >= wait_for {
                    break;
                }
            }
        }
        assert!(seen >= wait_for, "child of round {round} stopped early");
        child.kill().unwrap();
        // Acknowledgements printed before the kill count too.
        for line in lines {
            if let Some(n) = acks(&line.unwrap()) {
                max_acked = max_acked.max(n);
            }
        }
        child.wait().unwrap();

        // A killed process leaves its writes in the page cache, so the log
        // usually ends whole (a torn record needs a power loss: the
        // simulated disk's tests cover that).
        let log = LogStore::open(dir.path(), ID).unwrap();
        let commit = log.hard_state().commit;
        // Everything acknowledged is there; at most the one batch in flight
        // at the kill is there unacknowledged, and it is whole.
        assert!(
            commit.get() >= max_acked,
            "round {round}: lost acknowledged entries"
        );
        assert_eq!(log.last_index().unwrap(), commit, "round {round}");
        let entries = log.entries(LogIndex(1), commit.next(), None).unwrap();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(*e, entry(i as u64 + 1, 100), "round {round}");
        }
        max_acked = commit.get();

        // The state machine is consistent at its (possibly older) applied
        // index, and catches up from the log.
        let kv = KvStore::open(dir.path(), Limits::default()).unwrap();
        let applied = kv.applied_index();
        assert!(applied <= commit, "round {round}: applied past the log");
        // The child applies without fsync and never syncs the state
        // machine, so the kill always leaves it behind the log: this is the
        // replay path.
        assert!(applied < commit, "round {round}: expected a replay");
        // Every entry is a put; a fresh store is at revision 1.
        assert_eq!(kv.revision(), applied.get() as i64 + 1, "round {round}");
        kv.apply(&entries).unwrap();
        assert_eq!(kv.applied_index(), commit);
        for i in commit.get().saturating_sub(49).max(1)..=commit.get() {
            let got = kv.get(format!("k{}", i % 50).as_bytes()).unwrap().unwrap();
            assert_eq!(got.mod_revision, i as i64 + 1);
        }
    }
    assert!(max_acked > 6);
}
