//! Starting a node: open (or create) its data directory, bootstrap a new
//! cluster's configuration or wait to be added, restore the core at the
//! state machine's applied index, and spawn the driver and the peer server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::raft::{Config, LogIndex, Membership, NodeId, RaftNode, RoleState, Storage, Term};
use crate::server::driver::{Driver, DriverConfig, DriverError, Health};
use crate::server::forward::grpc_forwarder;
use crate::server::handle::NodeHandle;
use crate::server::member_info::MemberInfo;
use crate::server::peer_auth::PeerSecurity;
use crate::server::peer_proto::peer_server::PeerServer;
use crate::server::peer_service::PeerService;
use crate::server::transport::{MAX_PEER_MESSAGE_BYTES, Transport};
use crate::storage::{Disk, Identity, KvStore, Limits, LogStore, SnapshotPolicy};
use crate::tls::connect::Connector;

/// Client requests queued for the driver before callers wait.
const REQUEST_QUEUE: usize = 4096;
/// Peer messages queued for the driver before peers wait.
const INBOUND_QUEUE: usize = 4096;

/// How a brand-new node gets its first configuration.
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// A static cluster: every listed node is a voter.
    Initial(Vec<(NodeId, MemberInfo)>),
    /// Start empty and wait to be added by an existing cluster.
    Join,
}

/// Everything needed to run one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub name: String,
    /// `None`: derived from the initial cluster.
    pub cluster_id: Option<u64>,
    pub data_dir: PathBuf,
    pub listen_peer: SocketAddr,
    /// The peer URL other nodes reach this one at.
    pub advertise_peer: String,
    /// The client URL clients reach this one at (shown in member lists).
    pub advertise_client: String,
    pub bootstrap: Bootstrap,
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub request_timeout: Duration,
    pub limits: Limits,
    pub snapshot_policy: SnapshotPolicy,
    /// The state machine's page cache (see `--kv-cache-mb`).
    pub kv_cache_bytes: usize,
    /// The largest snapshot image this node accepts from a leader.
    pub max_snapshot_bytes: u64,
    /// Where the databases live (the system's files but in simulations).
    pub disk: Disk,
    /// TLS and authentication on the peer port.
    pub peer_security: PeerSecurity,
    /// How often the leader commits leases' remaining TTLs (etcd's lease
    /// checkpoint interval, `--lease-checkpoint-interval-ms`); zero: never.
    pub lease_checkpoint_interval: Duration,
}

/// etcd's lease checkpoint interval.
pub const DEFAULT_LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    pub handle: NodeHandle,
    pub health: watch::Receiver<Health>,
    pub metrics: Arc<Metrics>,
    pub driver: JoinHandle<Result<(), DriverError>>,
    pub peer_server: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A cluster id every member computes alike from the initial cluster.
pub fn cluster_id_of(members: &[(NodeId, MemberInfo)]) -> u64 {
    let mut sorted: Vec<_> = members
        .iter()
        .map(|(id, m)| format!("{id}={}", m.peer_url))
        .collect();
    sorted.sort();
    cluster_id_of_token(&sorted.join(","))
}

/// A cluster id from a cluster token (FNV-1a: stable across builds and
/// platforms, unlike std's hasher). Never 0.
pub fn cluster_id_of_token(token: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Opens storage and starts the driver and the peer server. Needs tokio's
/// multi-threaded runtime: the driver does its disk work in
/// `block_in_place`, which the single-threaded runtime cannot do.
pub async fn start(cfg: NodeConfig, metrics: Arc<Metrics>) -> anyhow::Result<RunningNode> {
    if tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::MultiThread
    {
        bail!("a raftkv node needs tokio's multi-threaded runtime");
    }
    let seed = cfg.id.get() ^ u64::from(std::process::id()) ^ nanos();
    let OpenedNode {
        cluster_id,
        node,
        kv,
    } = open_node(&cfg, seed)?;
    let applied = kv.applied_index();
    let peer_auth = cfg.peer_security.auth(cluster_id);
    // Dialling https:// peers needs the peer CA; plain http:// peers are
    // dialled as they are.
    let connector = Connector::new(match &cfg.peer_security.dial.trusted_ca {
        Some(_) => Some(
            cfg.peer_security
                .dial
                .client_config()
                .context("peer TLS (dialling peers)")?,
        ),
        None => None,
    });
    let peer_tls = match &cfg.peer_security.tls {
        Some(tls) => Some(
            tls.server_config(&[crate::tls::ALPN_H2])
                .context("peer TLS (the peer listener)")?
                .0,
        ),
        None => None,
    };

    let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let (health_tx, health_rx) = watch::channel(Health {
        last_loop: Instant::now(),
        leader: None,
        commit_index: LogIndex::ZERO,
        leader_commit: LogIndex::ZERO,
        applied_index: applied,
        role: RoleState::Follower,
        term: Term::ZERO,
    });
    metrics
        .node_info
        .with_label_values(&[&cfg.id.to_string(), &cfg.name, &cluster_id.to_string()])
        .set(1);

    let handle = NodeHandle::new(
        cfg.id,
        cluster_id,
        cfg.request_timeout,
        req_tx,
        Some(grpc_forwarder(connector.clone(), peer_auth.clone(), cfg.id)),
    )
    .with_store(kv.clone());
    let driver_cfg = driver_config(&cfg, cluster_id);
    let snapshot_dir = driver_cfg.snapshot_dir.clone();
    let members = driver_cfg.members.clone();
    // Known before the peer port opens, so no caller is ever checked
    // against an empty directory by a node that has a configuration.
    members.set(
        node.membership()
            .members()
            .map(|(id, m)| (id, MemberInfo::from_context(&m.context).peer_url)),
    );
    let driver = Driver::new(
        driver_cfg,
        node,
        kv,
        Box::new(Transport::new(
            in_tx.clone(),
            cfg.id,
            cfg.advertise_peer.clone(),
            cfg.advertise_client.clone(),
            connector,
            peer_auth.clone(),
        )),
        metrics.clone(),
        req_rx,
        in_rx,
        health_tx,
    );
    let driver = tokio::spawn(driver.run());

    let service = PeerService {
        id: cfg.id,
        inbound: in_tx,
        snapshot_dir,
        handle: handle.clone(),
        metrics: metrics.clone(),
        max_snapshot_bytes: cfg.max_snapshot_bytes,
        auth: peer_auth,
        members,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen_peer)
        .await
        .with_context(|| format!("cannot listen for peers on {}", cfg.listen_peer))?;
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // A peer that vanished without closing its streams (a dead host)
        // is found by pings and its connection freed.
        .http2_keepalive_interval(Some(crate::grpc::HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::grpc::HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(
            PeerServer::new(service)
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
        );
    let peer_server = match peer_tls {
        Some(config) => {
            let tls = crate::tls::accept::TlsListener {
                config,
                failures: crate::tls::accept::HandshakeFailures::of(&metrics, "peer"),
            };
            tokio::spawn(server.serve_with_incoming(crate::tls::accept::incoming(listener, tls)))
        }
        None => {
            // tonic ignores the builder's tcp_nodelay for a listener it did
            // not bind: without it a follower's small answers wait ~40 ms
            // (Nagle + delayed ACK), which made 1-client linearizable reads
            // take 44 ms instead of 0.8 ms.
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(crate::grpc::TCP_KEEPALIVE));
            tokio::spawn(server.serve_with_incoming(incoming))
        }
    };

    Ok(RunningNode {
        handle,
        health: health_rx,
        metrics,
        driver,
        peer_server,
    })
}

/// What the driver of the node `cfg` describes needs to know.
pub(crate) fn driver_config(cfg: &NodeConfig, cluster_id: u64) -> DriverConfig {
    DriverConfig {
        id: cfg.id,
        name: cfg.name.clone(),
        cluster_id,
        advertise_client: cfg.advertise_client.clone(),
        tick: cfg.tick,
        snapshot_policy: cfg.snapshot_policy,
        snapshot_dir: cfg.data_dir.join("snapshots"),
        members: crate::server::MemberDirectory::default(),
        min_lease_ttl: min_lease_ttl(cfg.tick, cfg.election_ticks),
        lease_checkpoint_interval: cfg.lease_checkpoint_interval,
    }
}

/// etcd's minimum lease TTL: 1.5 election timeouts, in whole seconds
/// rounded up, so that a lease outlives the election that follows a
/// leader's failure.
pub(crate) fn min_lease_ttl(tick: std::time::Duration, election_ticks: u32) -> i64 {
    let election = tick.saturating_mul(election_ticks);
    let millis = election.as_millis().saturating_mul(3) / 2;
    i64::try_from(millis.div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

/// A node's storage, opened and restored: what the driver is built from.
pub(crate) struct OpenedNode {
    pub cluster_id: u64,
    pub node: RaftNode<LogStore>,
    pub kv: KvStore,
}

/// Opens (or creates) the data directory, bootstraps a new cluster's
/// configuration or waits to be added, and restores the consensus core at
/// the state machine's applied index. Touches nothing but the data
/// directory, so the whole-node simulation opens its nodes the same way.
pub(crate) fn open_node(cfg: &NodeConfig, seed: u64) -> anyhow::Result<OpenedNode> {
    if cfg.id.get() == 0 {
        bail!("the node id must not be 0");
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let cluster_id = match (&cfg.bootstrap, cfg.cluster_id) {
        (_, Some(id)) => id,
        (Bootstrap::Initial(members), None) => cluster_id_of(members),
        (Bootstrap::Join, None) => {
            bail!("a node started with --join needs --cluster-id or --cluster-token")
        }
    };
    let log = LogStore::open_on(
        &cfg.disk,
        &cfg.data_dir,
        Identity {
            cluster_id,
            node_id: cfg.id,
        },
    )?;
    if log.recovered_after_crash() {
        warn!(
            log = %log.path().display(),
            "the log ended in a write torn by a crash; it was never acknowledged and is dropped"
        );
    }
    let kv = KvStore::open_on(&cfg.disk, &cfg.data_dir, cfg.limits, cfg.kv_cache_bytes)?;
    if log.is_new() {
        match &cfg.bootstrap {
            Bootstrap::Initial(members) => {
                if !members.iter().any(|(id, _)| *id == cfg.id) {
                    bail!("--initial-cluster does not list this node's id {}", cfg.id);
                }
                let membership =
                    Membership::with_voters(members.iter().map(|(id, m)| (*id, m.to_context())));
                log.bootstrap_cluster(&membership)
                    .context("cannot write the initial configuration")?;
                info!(members = members.len(), "bootstrapped a new cluster");
            }
            Bootstrap::Join => {
                // This may be a member whose data was lost, back under the
                // same id: it must not vote before it is added anew.
                log.set_withhold_votes(true)
                    .context("cannot record the new data directory's vote withholding")?;
                info!(
                    "starting empty; waiting to be added to a cluster (no votes until added as a learner)"
                );
            }
        }
    } else {
        info!("restarting from the stored log; --initial-cluster is ignored");
    }

    let applied = kv.applied_index();
    // The state machine must know the configuration in force at its applied
    // index: snapshots are cut from it. A new cluster's configuration is in
    // the log store only; data directories written before this repair carry
    // an empty one in the state machine, so this runs on every start.
    if kv.membership().is_empty() {
        let in_force = log
            .membership_at(applied)
            .context("cannot read the configuration in force from the log")?;
        if kv
            .adopt_membership(&in_force)
            .context("cannot record the configuration in the state machine")?
        {
            info!(index = %applied, "recorded the configuration in force in the state machine");
        }
    }
    let mut raft_cfg = Config::new(cfg.id);
    raft_cfg.election_ticks = cfg.election_ticks;
    raft_cfg.heartbeat_ticks = cfg.heartbeat_ticks;
    raft_cfg.seed = seed;
    // The driver's log writer persists on its own thread and acknowledges
    // late (see `driver/log_writer.rs`).
    raft_cfg.async_persistence = true;
    let withhold_votes = log.withholds_votes();
    let mut node = RaftNode::with_applied(raft_cfg, log, applied)
        .map_err(|e| anyhow::anyhow!("cannot start the consensus core: {e}"))?;
    if withhold_votes {
        node.withhold_votes();
    }
    let first = node.storage().first_index().unwrap_or(LogIndex(1));
    info!(id = %cfg.id, applied = %applied, first_log_index = %first, "node starting");
    Ok(OpenedNode {
        cluster_id,
        node,
        kv,
    })
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}
