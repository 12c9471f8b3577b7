//! The peer port under attack: three in-process nodes whose peers
//! authenticate (with certificates, or with a shared secret), and callers
//! that should not be believed. Every hostile call must be refused (and the
//! refusals counted) while the cluster keeps its leader, its term and its
//! service.

// Test code: a failed unwrap is a failed test, also in helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv::metrics::Metrics;
use raftkv::raft::{Heartbeat, LogIndex, Message, MessageBody, NodeId, Term};
use raftkv::server::peer_proto::{self as pb, peer_client::PeerClient};
use raftkv::server::{
    Bootstrap, MemberInfo, NodeConfig, NodeHandle, PeerAuth, PeerSecret, PeerSecurity, RunningNode,
    start, wire,
};
use raftkv::storage::{Command, Limits, Op, SnapshotPolicy};
use raftkv::tls::local_ca::LocalCa;
use raftkv::tls::reload::KeyPairFiles;
use raftkv::tls::{ClientTls, ServerTls};
use tokio::io::AsyncWriteExt;

/// Node `i` (1-based) lives on its own loopback address, so that its
/// certificate can name a host no other member has.
fn host(i: u64) -> String {
    format!("127.0.0.{i}")
}

fn free_port(host: &str) -> u16 {
    TcpListener::bind(format!("{host}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the test cluster's peers authenticate.
enum Mode {
    /// Peer mTLS: certificates from `ca` naming each node's host.
    Certificates,
    /// A shared secret, no TLS.
    Secret(&'static [u8]),
}

struct Cluster {
    nodes: Vec<RunningNode>,
    urls: Vec<String>,
    ca: LocalCa,
    ca_path: std::path::PathBuf,
    cluster_id: u64,
}

async fn start_cluster(dir: &Path, mode: Mode) -> Cluster {
    let ca = LocalCa::new("peer CA").unwrap();
    let ca_path = ca.write_ca(dir).unwrap();
    let scheme = match mode {
        Mode::Certificates => "https",
        Mode::Secret(_) => "http",
    };
    let ports: Vec<u16> = (1..=3).map(|i| free_port(&host(i))).collect();
    let urls: Vec<String> = (1..=3u64)
        .map(|i| format!("{scheme}://{}:{}", host(i), ports[i as usize - 1]))
        .collect();
    let members: Vec<(NodeId, MemberInfo)> = (1..=3u64)
        .map(|i| {
            (
                NodeId(i),
                MemberInfo {
                    name: format!("node-{i}"),
                    peer_url: urls[i as usize - 1].clone(),
                    client_url: String::new(),
                },
            )
        })
        .collect();
    let cluster_id = 777;
    let mut nodes = Vec::new();
    for i in 1..=3u64 {
        let security = match mode {
            Mode::Certificates => {
                let files = ca
                    .issue(&format!("node-{i}"), &[&host(i)])
                    .unwrap()
                    .write(dir, &format!("node-{i}"))
                    .unwrap();
                PeerSecurity {
                    tls: Some(ServerTls {
                        key_pair: files.clone(),
                        trusted_ca: Some(ca_path.clone()),
                        client_cert_auth: true,
                    }),
                    dial: ClientTls {
                        trusted_ca: Some(ca_path.clone()),
                        key_pair: Some(files),
                    },
                    secret: None,
                    certificate_auth: true,
                }
            }
            Mode::Secret(secret) => PeerSecurity {
                secret: Some(Arc::new(PeerSecret::from_bytes(secret).unwrap())),
                ..PeerSecurity::none()
            },
        };
        let cfg = NodeConfig {
            id: NodeId(i),
            name: format!("node-{i}"),
            cluster_id: Some(cluster_id),
            data_dir: dir.join(format!("n{i}")),
            listen_peer: format!("{}:{}", host(i), ports[i as usize - 1])
                .parse()
                .unwrap(),
            advertise_peer: urls[i as usize - 1].clone(),
            advertise_client: String::new(),
            bootstrap: Bootstrap::Initial(members.clone()),
            tick: Duration::from_millis(10),
            election_ticks: 30,
            heartbeat_ticks: 3,
            request_timeout: Duration::from_secs(2),
            limits: Limits {
                max_key_bytes: 64,
                max_value_bytes: 1024,
                max_txn_ops: 16,
                ..Limits::default()
            },
            snapshot_policy: SnapshotPolicy::default(),
            kv_cache_bytes: 16 << 20,
            max_snapshot_bytes: 1 << 30,
            peer_security: security,
            lease_checkpoint_interval: raftkv::server::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
            disk: Default::default(),
        };
        nodes.push(start(cfg, Arc::new(Metrics::new().unwrap())).await.unwrap());
    }
    Cluster {
        nodes,
        urls,
        ca,
        ca_path,
        cluster_id,
    }
}

impl Cluster {
    async fn leader(&self) -> NodeHandle {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for n in &self.nodes {
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

    fn node(&self, id: NodeId) -> &RunningNode {
        self.nodes
            .iter()
            .find(|n| n.handle.member_id() == id)
            .unwrap()
    }

    /// Waits until `node`'s refusal counter for `reason` reaches `n`.
    async fn refused(&self, node: NodeId, reason: &str, n: u64) {
        let line = format!("raftkv_peer_messages_refused_total{{reason=\"{reason}\"}} {n}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.node(node).metrics.render();
            if text.contains(&line) {
                return;
            }
            assert!(Instant::now() < deadline, "never counted {line}:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn put(key: &str, value: &str) -> Command {
    Command {
        request_id: None,
        auth: None,
        op: Op::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
            lease: 0,
        },
    }
}

fn heartbeat(from: u64, to: NodeId, term: Term) -> pb::Message {
    wire::message_to_pb(&Message {
        from: NodeId(from),
        to,
        term,
        body: MessageBody::Heartbeat(Heartbeat {
            commit: LogIndex(0),
            leader_commit: LogIndex(0),
            read_round: 0,
        }),
    })
}

/// Sends one message stream to `url` as `claimed`, over `connector`, with
/// `auth`'s proof; returns the call's outcome.
async fn send_as(
    url: &str,
    tls: Option<ClientTls>,
    auth: &PeerAuth,
    claimed: NodeId,
    messages: Vec<pb::Message>,
) -> Result<(), String> {
    let connector = raftkv::tls::connect::Connector::new(tls.map(|t| t.client_config().unwrap()));
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    let channel = connector
        .connect(endpoint)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    auth.stamp(&mut request, claimed);
    PeerClient::new(channel)
        .send(request)
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

/// The cluster still serves, nobody's term moved, the leader still leads.
async fn undisturbed(c: &Cluster, leader: &NodeHandle, term: u64) {
    leader.write(put("still", "serving")).await.unwrap();
    for n in &c.nodes {
        let s = n.handle.status().await.unwrap();
        assert_eq!(s.term, term, "node {} changed term", n.handle.member_id());
        assert_eq!(s.leader_id, Some(leader.member_id().get()));
        assert!(!n.driver.is_finished());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peer_mtls_only_the_member_named_by_a_certificate_is_believed() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_cluster(dir.path(), Mode::Certificates).await;
    let leader = c.leader().await;
    let lid = leader.member_id();
    let fid = [1, 2, 3]
        .map(NodeId)
        .into_iter()
        .find(|i| *i != lid)
        .unwrap();
    let third = NodeId(6 - lid.get() - fid.get());
    // Replication and forwarding run over TLS between the members.
    let follower = c.node(fid).handle.clone();
    follower.write(put("over", "tls")).await.unwrap();
    let term = leader.status().await.unwrap().term;
    let target = &c.urls[fid.get() as usize - 1];
    let auth = PeerAuth {
        cluster_id: c.cluster_id,
        secret: None,
        certificate: true,
    };

    // The third member's own, valid certificate, claiming to be the leader:
    // a forged heartbeat with a higher term.
    let third_files = KeyPairFiles {
        cert: dir.path().join(format!("node-{}.pem", third.get())),
        key: dir.path().join(format!("node-{}-key.pem", third.get())),
    };
    let as_third = ClientTls {
        trusted_ca: Some(c.ca_path.clone()),
        key_pair: Some(third_files.clone()),
    };
    let r = send_as(
        target,
        Some(as_third.clone()),
        &auth,
        lid,
        vec![heartbeat(lid.get(), fid, Term(term + 1000))],
    )
    .await;
    assert!(r.is_err(), "posing as the leader: {r:?}");
    c.refused(fid, "certificate_identity", 1).await;

    // The same certificate under its own id, but messages from the leader.
    let r = send_as(
        target,
        Some(as_third),
        &auth,
        third,
        vec![heartbeat(lid.get(), fid, Term(term + 1000))],
    )
    .await;
    assert!(r.is_err(), "a message from someone else: {r:?}");
    c.refused(fid, "from_mismatch", 1).await;

    // A certificate from the peer CA for a host that is no member, claiming
    // a made-up id and a higher term.
    let stranger =
        c.ca.issue("node-9", &["127.0.0.9"])
            .unwrap()
            .write(dir.path(), "stranger")
            .unwrap();
    let r = send_as(
        target,
        Some(ClientTls {
            trusted_ca: Some(c.ca_path.clone()),
            key_pair: Some(stranger),
        }),
        &auth,
        NodeId(9),
        vec![heartbeat(9, fid, Term(term + 1000))],
    )
    .await;
    assert!(r.is_err(), "a non-member: {r:?}");
    c.refused(fid, "not_a_member", 1).await;

    // A valid certificate of another cluster (another CA), naming the
    // leader's host: the handshake fails.
    let other = LocalCa::new("another cluster's CA").unwrap();
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let foreign = other
        .issue("node-x", &[&host(lid.get())])
        .unwrap()
        .write(&other_dir, "foreign")
        .unwrap();
    let r = send_as(
        target,
        Some(ClientTls {
            trusted_ca: Some(c.ca_path.clone()),
            key_pair: Some(foreign),
        }),
        &auth,
        lid,
        vec![heartbeat(lid.get(), fid, Term(term + 1000))],
    )
    .await;
    assert!(r.is_err(), "another cluster's certificate: {r:?}");

    // No certificate at all.
    let r = send_as(
        target,
        Some(ClientTls {
            trusted_ca: Some(c.ca_path.clone()),
            key_pair: None,
        }),
        &auth,
        lid,
        vec![heartbeat(lid.get(), fid, Term(term + 1000))],
    )
    .await;
    assert!(r.is_err(), "no certificate: {r:?}");

    // Plaintext gRPC to the TLS port.
    let plain = target.replace("https://", "http://");
    let r = send_as(
        &plain,
        None,
        &auth,
        lid,
        vec![heartbeat(lid.get(), fid, Term(term + 1000))],
    )
    .await;
    assert!(r.is_err(), "plaintext to a TLS port: {r:?}");

    // Garbage bytes.
    let addr = target.trim_start_matches("https://");
    for garbage in [
        &[0u8; 64][..],
        b"\x16\x03\x01\xff\xffhello",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(garbage).await;
        let _ = tcp.shutdown().await;
    }

    undisturbed(&c, &leader, term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_secret_callers_without_a_valid_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_cluster(
        dir.path(),
        Mode::Secret(b"the cluster's shared peer secret"),
    )
    .await;
    let leader = c.leader().await;
    let lid = leader.member_id();
    let fid = [1, 2, 3]
        .map(NodeId)
        .into_iter()
        .find(|i| *i != lid)
        .unwrap();
    // Replication and forwarding carry valid tokens.
    c.node(fid)
        .handle
        .write(put("with", "token"))
        .await
        .unwrap();
    let term = leader.status().await.unwrap().term;
    let target = &c.urls[fid.get() as usize - 1];
    let forged = || vec![heartbeat(lid.get(), fid, Term(term + 1000))];

    // No token: a caller that only knows the protocol (and the cluster id).
    let r = send_as(target, None, &PeerAuth::none(c.cluster_id), lid, forged()).await;
    assert!(r.is_err(), "no token: {r:?}");
    c.refused(fid, "bad_peer_token", 1).await;
    // A token made with another secret.
    let wrong = PeerAuth {
        cluster_id: c.cluster_id,
        secret: Some(Arc::new(
            PeerSecret::from_bytes(b"a guess at the shared secret").unwrap(),
        )),
        certificate: false,
    };
    let r = send_as(target, None, &wrong, lid, forged()).await;
    assert!(r.is_err(), "wrong secret: {r:?}");
    c.refused(fid, "bad_peer_token", 2).await;
    // The right secret for another cluster id.
    let right = PeerSecret::from_bytes(b"the cluster's shared peer secret").unwrap();
    let other_cluster = PeerAuth {
        cluster_id: c.cluster_id + 1,
        secret: Some(Arc::new(right)),
        certificate: false,
    };
    let r = send_as(target, None, &other_cluster, lid, forged()).await;
    assert!(r.is_err(), "another cluster: {r:?}");
    c.refused(fid, "bad_peer_token", 3).await;
    // Forwarded writes need a proven sender too (this caller names none).
    let mut client = PeerClient::connect(target.clone()).await.unwrap();
    let r = client
        .forward(tokio_stream::iter(Vec::<pb::ForwardCall>::new()))
        .await;
    assert!(r.is_err(), "forwarding without a token: {r:?}");
    c.refused(fid, "unauthenticated", 1).await;

    undisturbed(&c, &leader, term).await;
}
