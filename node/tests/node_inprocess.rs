//! Node-level tests: three nodes started in-process with `server::start`
//! (real storage in temp dirs, real gRPC peer transport on loopback), driven
//! through `NodeHandle` — the API the HTTP and gRPC layers are built on.

// Test code: a failed unwrap is a failed test, also in helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv::metrics::Metrics;
use raftkv::raft::NodeId;
use raftkv::server::{
    Bootstrap, ClientError, Consistency, MemberInfo, NodeConfig, NodeHandle, RunningNode, start,
};
use raftkv::storage::{ApplyOutcome, Command, Limits, Op, RangeRequest, SnapshotPolicy};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn three_nodes(dir: &std::path::Path) -> Vec<RunningNode> {
    three_nodes_with(
        dir,
        Limits {
            max_key_bytes: 64,
            max_value_bytes: 1024,
            max_txn_ops: 16,
            ..Limits::default()
        },
    )
    .await
}

async fn three_nodes_with(dir: &std::path::Path, limits: Limits) -> Vec<RunningNode> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let members: Vec<(NodeId, MemberInfo)> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                NodeId(i as u64 + 1),
                MemberInfo {
                    name: format!("node-{}", i + 1),
                    peer_url: format!("http://127.0.0.1:{p}"),
                    client_url: String::new(),
                },
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let id = NodeId(i as u64 + 1);
        let cfg = NodeConfig {
            id,
            name: format!("node-{}", i + 1),
            cluster_id: None,
            data_dir: dir.join(format!("n{}", i + 1)),
            listen_peer: format!("127.0.0.1:{port}").parse().unwrap(),
            advertise_peer: format!("http://127.0.0.1:{port}"),
            advertise_client: String::new(),
            bootstrap: Bootstrap::Initial(members.clone()),
            tick: Duration::from_millis(10),
            election_ticks: 30,
            heartbeat_ticks: 3,
            request_timeout: Duration::from_secs(2),
            limits,
            snapshot_policy: SnapshotPolicy::default(),
            kv_cache_bytes: 16 << 20,
            max_snapshot_bytes: 1 << 30,
            disk: Default::default(),
            peer_security: raftkv::server::PeerSecurity::none(),
            lease_checkpoint_interval: raftkv::server::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
        };
        nodes.push(start(cfg, Arc::new(Metrics::new().unwrap())).await.unwrap());
    }
    nodes
}

async fn leader(nodes: &[RunningNode]) -> NodeHandle {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for n in nodes {
            if let Ok(s) = n.handle.status().await {
                if s.role == "leader" {
                    return n.handle.clone();
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn a_follower(nodes: &[RunningNode], leader: &NodeHandle) -> NodeHandle {
    nodes
        .iter()
        .map(|n| n.handle.clone())
        .find(|h| h.member_id() != leader.member_id())
        .unwrap()
}

fn put(key: &str, value: &str) -> Command {
    Command {
        request_id: None,
        auth: None,
        op: Op::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            prev_kv: true,
            ignore_value: false,
            ignore_lease: false,
            lease: 0,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_via_a_follower_are_forwarded_and_reads_see_them_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    let leader = leader(&nodes).await;
    let follower = a_follower(&nodes, &leader);
    let first = follower.write(put("a", "1")).await.unwrap();
    let ApplyOutcome::Put { revision, prev_kv } = first.outcome else {
        panic!("{:?}", first.outcome)
    };
    assert!(revision >= 1 && prev_kv.is_none());
    let second = follower.write(put("a", "2")).await.unwrap();
    let ApplyOutcome::Put { prev_kv, .. } = second.outcome else {
        panic!("{:?}", second.outcome)
    };
    assert_eq!(prev_kv.unwrap().value, Bytes::from_static(b"1"));
    for n in &nodes {
        let r = n
            .handle
            .range(RangeRequest::key(&b"a"[..]), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(r.range.kvs[0].value, Bytes::from_static(b"2"));
        assert!(r.raft_term.get() >= 1);
    }
    assert_eq!(leader.cluster_id(), follower.cluster_id());
}

/// Forwarded calls share one stream per leader and are answered in
/// completion order: each caller must still get its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_forwarded_writes_each_get_their_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    let leader = leader(&nodes).await;
    let follower = a_follower(&nodes, &leader);
    // Every key is written twice, first with "first-i": the second write's
    // previous value names the key it belongs to.
    let mut firsts = tokio::task::JoinSet::new();
    for i in 0..200 {
        let f = follower.clone();
        firsts.spawn(async move { f.write(put(&format!("k{i}"), &format!("first-{i}"))).await });
    }
    while let Some(r) = firsts.join_next().await {
        r.unwrap().unwrap();
    }
    let mut seconds = tokio::task::JoinSet::new();
    for i in 0..200 {
        let f = follower.clone();
        seconds.spawn(async move {
            let w = f.write(put(&format!("k{i}"), "second")).await.unwrap();
            (i, w)
        });
    }
    let mut revisions = std::collections::HashSet::new();
    while let Some(r) = seconds.join_next().await {
        let (i, w) = r.unwrap();
        let ApplyOutcome::Put { revision, prev_kv } = w.outcome else {
            panic!("{:?}", w.outcome)
        };
        let prev = prev_kv.unwrap();
        assert_eq!(prev.key, Bytes::from(format!("k{i}")));
        assert_eq!(prev.value, Bytes::from(format!("first-{i}")));
        assert!(
            revisions.insert(revision),
            "revision {revision} answered twice"
        );
    }
    assert_eq!(revisions.len(), 200);
}

/// A forwarded read whose answer is larger than gRPC's default message
/// limit (4 MiB) must reach the follower's client, and must not disturb the
/// writes forwarded on the same stream meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_forwarded_read_succeeds_alongside_forwarded_writes() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes_with(
        dir.path(),
        Limits {
            max_key_bytes: 64,
            max_value_bytes: 1 << 20,
            max_txn_ops: 16,
            ..Limits::default()
        },
    )
    .await;
    let leader = leader(&nodes).await;
    let follower = a_follower(&nodes, &leader);
    let mib = "x".repeat(1 << 20);
    for i in 0..5 {
        leader.write(put(&format!("big/{i}"), &mib)).await.unwrap();
    }
    // Writers keep forwarded writes in flight on the follower's stream
    // until the large answer has come back on it.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (f, done) = (follower.clone(), done.clone());
        writers.spawn(async move {
            let mut results = Vec::new();
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || i < 10 {
                results.push(f.write(put(&format!("small/{w}/{i}"), "v")).await);
                i += 1;
            }
            results
        });
    }
    let read = follower
        .range(
            RangeRequest {
                key: Bytes::from_static(b"big/"),
                range_end: Bytes::from_static(b"big0"),
                ..Default::default()
            },
            Consistency::Linearizable,
        )
        .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed = Vec::new();
    while let Some(results) = writers.join_next().await {
        failed.extend(results.unwrap().into_iter().filter_map(Result::err));
    }
    assert!(failed.is_empty(), "forwarded writes failed: {failed:?}");
    let read = read.unwrap();
    assert_eq!(read.range.kvs.len(), 5);
    assert!(read.range.kvs.iter().all(|kv| kv.value.len() == 1 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_membership_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    let leader = leader(&nodes).await;
    // Once a write of its term has committed, the leader accepts
    // membership changes (before that it answers "change in progress").
    leader.write(put("ok", "1")).await.unwrap();
    let big = "v".repeat(2000);
    assert!(matches!(
        leader.write(put("k", &big)).await,
        Err(ClientError::TooLarge(_))
    ));
    assert!(matches!(
        leader.write(put("", "v")).await,
        Err(ClientError::InvalidArgument(_))
    ));
    assert!(matches!(
        leader.promote(NodeId(9)).await,
        Err(ClientError::NotFound(_))
    ));
    let voter = leader.promote(NodeId(1)).await;
    assert!(
        matches!(voter, Err(ClientError::FailedPrecondition(_))),
        "{voter:?}"
    );
    let s = leader.status().await.unwrap();
    assert_eq!(s.members.len(), 3);
    assert!(s.members.iter().all(|m| m.role == "voter"));
    // A serializable read is served locally even for a missing key.
    let r = nodes[0]
        .handle
        .range(RangeRequest::key(&b"none"[..]), Consistency::Serializable)
        .await
        .unwrap();
    assert!(r.range.kvs.is_empty());
}

/// Forged and garbage peer input, sent straight to a follower's peer port:
/// every piece is refused and counted, and the follower keeps its term, its
/// leader and its service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_garbage_peer_input_is_refused_and_counted_without_disturbing_anyone() {
    use raftkv::raft::{
        AppendRequest, Entry, EntryPayload, Heartbeat, LogIndex, Membership, Message, MessageBody,
        Term,
    };
    use raftkv::server::peer_proto::{self as pb, peer_client::PeerClient};
    use raftkv::server::wire;

    let dir = tempfile::tempdir().unwrap();
    let nodes = three_nodes(dir.path()).await;
    let l = leader(&nodes).await;
    let f = a_follower(&nodes, &l);
    f.write(put("before", "1")).await.unwrap();
    let before = f.status().await.unwrap();
    let fid = f.member_id();
    let lid = l.member_id();
    let peer_url = before
        .members
        .iter()
        .find(|m| m.id == fid.get())
        .unwrap()
        .peer_url
        .clone();
    let term = Term(before.term);
    let forged = |from: u64, term: Term, body: MessageBody| Message {
        from: NodeId(from),
        to: fid,
        term,
        body,
    };
    let entry = |index, term| Entry {
        term,
        index: LogIndex(index),
        payload: EntryPayload::Command(Bytes::from_static(b"forged")),
    };
    let messages = [
        // One message with the last term there is.
        forged(
            lid.get(),
            Term(u64::MAX),
            MessageBody::Heartbeat(Heartbeat {
                commit: LogIndex(0),
                leader_commit: LogIndex(0),
                read_round: 0,
            }),
        ),
        // Entries with a hole, from the real leader's id and term.
        forged(
            lid.get(),
            term,
            MessageBody::Append(AppendRequest {
                prev_log_index: LogIndex(before.last_log_index),
                prev_log_term: term,
                entries: vec![
                    entry(before.last_log_index + 1, term),
                    entry(before.last_log_index + 3, term),
                ],
                leader_commit: LogIndex(before.commit_index),
            }),
        ),
        // A stranger with a higher term.
        forged(
            99,
            Term(term.get() + 1000),
            MessageBody::Heartbeat(Heartbeat {
                commit: LogIndex(0),
                leader_commit: LogIndex(0),
                read_round: 0,
            }),
        ),
        // A TimeoutNow from a member that is not the leader.
        forged(6 - fid.get() - lid.get(), term, MessageBody::TimeoutNow),
    ];
    let mut client = PeerClient::connect(peer_url).await.unwrap();
    let outbound: Vec<pb::Message> = messages.iter().map(wire::message_to_pb).collect();
    client.send(tokio_stream::iter(outbound)).await.unwrap();

    // ~800 bytes of garbage as a snapshot image.
    let meta = raftkv::raft::SnapshotMeta {
        index: LogIndex(before.commit_index + 1000),
        term,
        membership: Membership::with_voters((1..=3).map(|i| (NodeId(i), Bytes::new()))),
    };
    let garbage = vec![0xA5u8; 800];
    let chunks = vec![
        pb::SnapshotChunk {
            chunk: Some(pb::snapshot_chunk::Chunk::Header(pb::SnapshotHeader {
                from: lid.get(),
                to: fid.get(),
                term: term.get(),
                meta: Some(wire::meta_to_pb(&meta)),
            })),
        },
        pb::SnapshotChunk {
            chunk: Some(pb::snapshot_chunk::Chunk::Data(garbage.clone())),
        },
        pb::SnapshotChunk {
            chunk: Some(pb::snapshot_chunk::Chunk::End(pb::SnapshotEnd {
                bytes: 800,
            })),
        },
    ];
    let refused = client.install_snapshot(tokio_stream::iter(chunks)).await;
    assert!(refused.is_err(), "a garbage image is refused: {refused:?}");

    let follower = nodes.iter().find(|n| n.handle.member_id() == fid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = follower.metrics.render();
        if [
            "absurd_term",
            "non_contiguous_entries",
            "not_a_member",
            "timeout_now_not_from_leader",
            "bad_snapshot",
        ]
        .iter()
        .all(|r| {
            text.contains(&format!(
                "raftkv_peer_messages_refused_total{{reason=\"{r}\"}} 1"
            ))
        }) {
            break text;
        }
        assert!(Instant::now() < deadline, "not all counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.contains("raftkv_peer_messages_refused_total"));
    assert!(!follower.driver.is_finished(), "the follower keeps running");
    let after = f.status().await.unwrap();
    assert_eq!(after.term, before.term, "nobody's term moved");
    assert_eq!(after.leader_id, Some(lid.get()));
    assert_eq!(l.status().await.unwrap().role, "leader");
    assert!(f.write(put("after", "2")).await.is_ok());
    let got = f
        .range(RangeRequest::key(&b"after"[..]), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.range.kvs.len(), 1);
}
