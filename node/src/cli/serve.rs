//! `raftkv serve`: run one node until SIGTERM/SIGINT.
//!
//! Shutdown is graceful: stop taking HTTP requests, hand leadership to
//! another voter if we lead, let the driver finish, exit 0. A second signal
//! exits at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tracing::{error, info, warn};

use crate::http::{HttpLimits, HttpState, observability_router, router};
use crate::metrics::Metrics;
use crate::raft::NodeId;
use crate::server::{
    Bootstrap, MemberInfo, NodeConfig, cluster_id_of_token, start, validate_member_url,
};
use crate::server::{PeerSecret, PeerSecurity};
use crate::storage::{
    DEFAULT_KV_CACHE_BYTES, DEFAULT_QUOTA_BACKEND_BYTES, Disk, Limits, SnapshotPolicy,
};
use crate::tls::reload::KeyPairFiles;
use crate::tls::{ClientTls, ServerTls};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "RAFTKV_ID", required_unless_present = "id_from_ordinal")]
    pub id: Option<u64>,
    /// Take the id from the host name `<name>-<ordinal>` (a StatefulSet
    /// pod): id = ordinal + 1.
    #[arg(long, env = "RAFTKV_ID_FROM_ORDINAL", conflicts_with = "id")]
    pub id_from_ordinal: bool,
    /// A human-readable name (default: the host name, or node-<id>).
    #[arg(long, env = "RAFTKV_NAME")]
    pub name: Option<String>,
    /// The cluster id (default: from --cluster-token, else derived from
    /// --initial-cluster). Every member of a cluster must agree on it.
    #[arg(long, env = "RAFTKV_CLUSTER_ID", conflicts_with = "cluster_token")]
    pub cluster_id: Option<u64>,
    /// A name for the cluster, hashed into the cluster id; lets nodes that
    /// `--join` later agree on the id without knowing the initial cluster.
    #[arg(long, env = "RAFTKV_CLUSTER_TOKEN")]
    pub cluster_token: Option<String>,
    /// Where the node keeps its data.
    #[arg(long, env = "RAFTKV_DATA_DIR", default_value = "raftkv-data")]
    pub data_dir: PathBuf,
    /// Address of the etcd-compatible gRPC client API.
    #[arg(long, env = "RAFTKV_LISTEN_CLIENT", default_value = "127.0.0.1:2379")]
    pub listen_client: SocketAddr,
    /// Address of the peer (Raft) gRPC endpoint.
    #[arg(long, env = "RAFTKV_LISTEN_PEER", default_value = "127.0.0.1:2380")]
    pub listen_peer: SocketAddr,
    /// Address of the HTTP API, metrics and probes.
    #[arg(long, env = "RAFTKV_LISTEN_HTTP", default_value = "127.0.0.1:8080")]
    pub listen_http: SocketAddr,
    /// Also serve `/metrics`, `/healthz` and `/readyz` here, in plain HTTP
    /// whatever TLS the HTTP port has (etcd's `--listen-metrics-urls`): for
    /// Prometheus and kubelet probes when the HTTP port requires client
    /// certificates. Nothing else is served on it.
    #[arg(long, env = "RAFTKV_LISTEN_METRICS")]
    pub listen_metrics: Option<SocketAddr>,
    /// The peer URL other nodes use to reach this one (default: from
    /// --listen-peer).
    #[arg(long, env = "RAFTKV_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// The client URL clients use to reach this one (default: from
    /// --listen-client).
    #[arg(long, env = "RAFTKV_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// Bootstrap a new cluster: `1=http://host1:2380,2=http://host2:2380,...`;
    /// every listed node is a voter. Ignored when the data dir holds a log.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER", conflicts_with = "join")]
    pub initial_cluster: Option<String>,
    /// Start empty and wait to be added to an existing cluster.
    #[arg(long, env = "RAFTKV_JOIN")]
    pub join: bool,
    /// Length of one Raft tick.
    #[arg(long, env = "RAFTKV_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// Election timeout (randomized between this and twice this).
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval.
    #[arg(long, env = "RAFTKV_HEARTBEAT_INTERVAL_MS", default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// Every client request fails (503) if not done within this time.
    #[arg(long, env = "RAFTKV_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Watches that ask for progress notifications get one this often
    /// while idle (etcd's default: 10 minutes).
    #[arg(
        long,
        env = "RAFTKV_WATCH_PROGRESS_NOTIFY_INTERVAL_MS",
        default_value_t = 600_000
    )]
    pub watch_progress_notify_interval_ms: u64,
    /// How often the leader commits how long each lease has left, so that
    /// a new leader does not give leases their full TTL again (etcd's
    /// lease checkpoints, every 5 minutes by default as in etcd; 0: never)
    #[arg(
        long,
        env = "RAFTKV_LEASE_CHECKPOINT_INTERVAL_MS",
        default_value_t = 300_000
    )]
    pub lease_checkpoint_interval_ms: u64,
    /// Compact the log every this many applied entries...
    #[arg(long, env = "RAFTKV_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// ...keeping this many entries for followers that are a little behind.
    #[arg(long, env = "RAFTKV_SNAPSHOT_KEEP_TRAILING", default_value_t = 5_000)]
    pub snapshot_keep_trailing: u64,
    /// The backend quota in bytes (etcd's flag): a write that arrives while
    /// the state machine's file is larger raises the NOSPACE alarm, and
    /// writes are refused until `etcdctl alarm disarm`. 0: no quota.
    #[arg(
        long,
        env = "RAFTKV_QUOTA_BACKEND_BYTES",
        default_value_t = DEFAULT_QUOTA_BACKEND_BYTES
    )]
    pub quota_backend_bytes: u64,
    /// Most operations in one transaction.
    #[arg(long, env = "RAFTKV_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Largest key, in bytes.
    #[arg(long, env = "RAFTKV_MAX_KEY_BYTES", default_value_t = 1536)]
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    #[arg(long, env = "RAFTKV_MAX_VALUE_BYTES", default_value_t = 1536 * 1024)]
    pub max_value_bytes: usize,
    /// Memory for the state machine's page cache, in MiB: the bulk of a
    /// node's resident size once its data outgrows it (the log's cache is a
    /// fixed 32 MiB). Reads beyond it go to the OS page cache.
    #[arg(long, env = "RAFTKV_KV_CACHE_MB", default_value_t = DEFAULT_KV_CACHE_BYTES >> 20)]
    pub kv_cache_mb: usize,
    /// Largest snapshot image accepted from a leader, in MiB. A stream that
    /// grows past it is cut off and counted; raise it for very large
    /// state machines.
    #[arg(long, env = "RAFTKV_MAX_SNAPSHOT_MB", default_value_t = 64 * 1024)]
    pub max_snapshot_mb: u64,
    /// HTTP: a request head must arrive within this time of its first byte.
    #[arg(long, env = "RAFTKV_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// HTTP: a request body must arrive within this time of its head
    /// (else 408).
    #[arg(long, env = "RAFTKV_HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_body_timeout_ms: u64,
    /// HTTP: a keep-alive connection with no request for this long is
    /// closed.
    #[arg(long, env = "RAFTKV_HTTP_IDLE_TIMEOUT_MS", default_value_t = 90_000)]
    pub http_idle_timeout_ms: u64,
    /// HTTP: most connections open at once (also capped at a quarter of the
    /// open-file limit). At the bound the connection idle the longest is
    /// closed to make room.
    #[arg(long, env = "RAFTKV_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
    /// How long an auth token (from `Authenticate` or `POST
    /// /v1/auth/login`) stays valid, in seconds; clients authenticate
    /// again after it (etcd's --auth-token-ttl).
    #[arg(
        long,
        env = "RAFTKV_AUTH_TOKEN_TTL",
        default_value_t = crate::auth::token::DEFAULT_TTL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub auth_token_ttl: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS and peer authentication (names as etcd's flags).
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Certificate (PEM chain) of the client gRPC and HTTP ports; turns TLS
    /// on for both. Re-read when the file changes.
    #[arg(long, env = "RAFTKV_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "RAFTKV_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// CA bundle that client certificates must chain to.
    #[arg(long, env = "RAFTKV_TRUSTED_CA_FILE", requires = "cert_file")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse client connections without a certificate from
    /// --trusted-ca-file (client gRPC and HTTP ports).
    #[arg(long, env = "RAFTKV_CLIENT_CERT_AUTH", requires = "trusted_ca_file")]
    pub client_cert_auth: bool,
    /// Certificate of the peer port, also presented when dialling peers;
    /// turns TLS on for the peer port. Re-read when the file changes.
    #[arg(long, env = "RAFTKV_PEER_CERT_FILE", requires = "peer_key_file")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "RAFTKV_PEER_KEY_FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle that peer certificates must chain to (both ways).
    #[arg(long, env = "RAFTKV_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse peers without a certificate from --peer-trusted-ca-file that
    /// names the host of the member they claim to be.
    #[arg(
        long,
        env = "RAFTKV_PEER_CLIENT_CERT_AUTH",
        requires_all = ["peer_trusted_ca_file", "peer_cert_file"]
    )]
    pub peer_client_cert_auth: bool,
    /// File holding the cluster's shared peer secret (16+ bytes): peers
    /// prove membership with tokens derived from it.
    #[arg(long, env = "RAFTKV_PEER_SECRET_FILE", conflicts_with = "peer_secret")]
    pub peer_secret_file: Option<PathBuf>,
    /// The shared peer secret itself (for an environment variable filled
    /// from a Kubernetes Secret; never on a command line, which any local
    /// user can read).
    #[arg(long, env = "RAFTKV_PEER_SECRET", hide = true, hide_env_values = true)]
    pub peer_secret: Option<String>,
    /// `auto`: peers must authenticate (a shared secret, or certificates
    /// with --peer-client-cert-auth) and the node refuses to start without
    /// either. `none`: anyone who reaches the peer port is believed.
    #[arg(long, env = "RAFTKV_PEER_AUTH", value_enum, default_value_t = PeerAuthMode::Auto)]
    pub peer_auth: PeerAuthMode,
}

/// See `--peer-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerAuthMode {
    Auto,
    None,
}

impl TlsArgs {
    /// TLS of the client gRPC and HTTP ports.
    pub fn client_tls(&self) -> Option<ServerTls> {
        Some(ServerTls {
            key_pair: KeyPairFiles {
                cert: self.cert_file.clone()?,
                key: self.key_file.clone()?,
            },
            trusted_ca: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
        })
    }

    /// The peer port's security, or why the node must not start.
    pub fn peer_security(&self) -> anyhow::Result<PeerSecurity> {
        let key_pair = match (&self.peer_cert_file, &self.peer_key_file) {
            (Some(cert), Some(key)) => Some(KeyPairFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let secret = match (&self.peer_secret_file, &self.peer_secret) {
            (Some(path), _) => Some(Arc::new(
                PeerSecret::load(path).context("--peer-secret-file")?,
            )),
            (None, Some(s)) => Some(Arc::new(
                PeerSecret::from_bytes(s.as_bytes()).context("RAFTKV_PEER_SECRET")?,
            )),
            (None, None) => None,
        };
        let security = PeerSecurity {
            tls: key_pair.clone().map(|key_pair| ServerTls {
                key_pair,
                trusted_ca: self.peer_trusted_ca_file.clone(),
                client_cert_auth: self.peer_client_cert_auth,
            }),
            dial: ClientTls {
                trusted_ca: self.peer_trusted_ca_file.clone(),
                key_pair,
            },
            secret,
            certificate_auth: self.peer_client_cert_auth,
        };
        match self.peer_auth {
            PeerAuthMode::Auto if !security.authenticates() => bail!(
                "the peer port would believe anyone who reaches it: give the cluster a \
                 shared secret (--peer-secret-file or RAFTKV_PEER_SECRET), or use peer \
                 certificates with --peer-client-cert-auth; --peer-auth none accepts the risk"
            ),
            PeerAuthMode::Auto => Ok(security),
            PeerAuthMode::None => {
                if security.authenticates() {
                    bail!("--peer-auth none contradicts a peer secret or --peer-client-cert-auth");
                }
                warn!(
                    "PEER AUTHENTICATION IS OFF (--peer-auth none): anyone who can reach \
                     the peer port can send Raft messages as any member, rewrite data and \
                     depose the leader; use only where nothing else can reach that port"
                );
                Ok(security)
            }
        }
    }
}

/// Parses `1=http://a:2380,2=b:2380`.
pub fn parse_initial_cluster(s: &str) -> anyhow::Result<Vec<(NodeId, MemberInfo)>> {
    let mut out: Vec<(NodeId, MemberInfo)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, url) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {part:?} is not id=peer_url"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("--initial-cluster: {id:?} is not a node id"))?;
        if id == 0 {
            bail!("--initial-cluster: node id 0 is reserved");
        }
        if out.iter().any(|(i, _)| i.get() == id) {
            bail!("--initial-cluster lists node {id} twice");
        }
        // Every node must derive the same configuration, so nothing that
        // differs per node (like its own name) goes in here.
        out.push((
            NodeId(id),
            MemberInfo {
                name: format!("node-{id}"),
                peer_url: validate_member_url(url.trim())
                    .with_context(|| format!("--initial-cluster: bad peer URL for node {id}"))?,
                client_url: String::new(),
            },
        ));
    }
    if out.is_empty() {
        bail!("--initial-cluster is empty");
    }
    Ok(out)
}

/// `name-3` → 4.
pub fn id_from_hostname(hostname: &str) -> anyhow::Result<u64> {
    let ordinal = hostname
        .rsplit_once('-')
        .map(|(_, n)| n)
        .with_context(|| format!("host name {hostname:?} is not <name>-<ordinal>"))?;
    let n: u64 = ordinal
        .parse()
        .with_context(|| format!("host name {hostname:?} does not end in an ordinal"))?;
    Ok(n + 1)
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

impl ServeArgs {
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let id = match (self.id, self.id_from_ordinal) {
            (Some(id), _) => id,
            (None, true) => id_from_hostname(
                &hostname().context("--id-from-ordinal needs the host name (HOSTNAME)")?,
            )?,
            (None, false) => bail!("--id is required"),
        };
        if id == 0 {
            bail!("--id must be a positive integer");
        }
        let bootstrap = match (&self.initial_cluster, self.join) {
            (Some(s), false) => Bootstrap::Initial(parse_initial_cluster(s)?),
            (None, true) => Bootstrap::Join,
            (None, false) => {
                // A single node on its own: a one-member cluster.
                Bootstrap::Initial(vec![(
                    NodeId(id),
                    MemberInfo {
                        name: format!("node-{id}"),
                        peer_url: self.advertise_peer_url()?,
                        client_url: String::new(),
                    },
                )])
            }
            (Some(_), true) => bail!("--initial-cluster and --join exclude each other"),
        };
        if self.tick_ms == 0 {
            bail!("--tick-ms must be positive");
        }
        let election_ticks = (self.election_timeout_ms / self.tick_ms).max(2) as u32;
        let heartbeat_ticks = (self.heartbeat_interval_ms / self.tick_ms).max(1) as u32;
        if heartbeat_ticks >= election_ticks {
            bail!("--heartbeat-interval-ms must be well below --election-timeout-ms");
        }
        let name = self
            .name
            .clone()
            .or_else(|| self.id_from_ordinal.then(hostname).flatten())
            .unwrap_or_else(|| format!("node-{id}"));
        Ok(NodeConfig {
            id: NodeId(id),
            name,
            cluster_id: self
                .cluster_id
                .or_else(|| self.cluster_token.as_deref().map(cluster_id_of_token)),
            data_dir: self.data_dir.clone(),
            listen_peer: self.listen_peer,
            advertise_peer: self.advertise_peer_url()?,
            advertise_client: match &self.advertise_client {
                Some(u) => validate_member_url(u).context("--advertise-client")?,
                None => format!("{}://{}", self.client_scheme(), self.listen_client),
            },
            bootstrap,
            tick: Duration::from_millis(self.tick_ms),
            election_ticks,
            heartbeat_ticks,
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            limits: Limits {
                max_key_bytes: self.max_key_bytes,
                max_value_bytes: self.max_value_bytes,
                max_txn_ops: self.max_txn_ops,
                quota_backend_bytes: self.quota_backend_bytes,
            },
            snapshot_policy: SnapshotPolicy {
                every_entries: self.snapshot_every.max(1),
                keep_trailing: self.snapshot_keep_trailing,
            },
            kv_cache_bytes: self.kv_cache_mb.saturating_mul(1 << 20),
            max_snapshot_bytes: self.max_snapshot_mb.saturating_mul(1 << 20),
            disk: Disk::default(),
            peer_security: self.tls.peer_security()?,
            lease_checkpoint_interval: Duration::from_millis(self.lease_checkpoint_interval_ms),
        })
    }

    /// The HTTP port's limits, the connection bound kept well below
    /// `open_files` (the process's file descriptor limit) so that HTTP
    /// clients alone can never use them all up.
    pub fn http_limits(&self, open_files: Option<u64>) -> HttpLimits {
        let fd_share = open_files
            .map(|n| usize::try_from(n / 4).unwrap_or(usize::MAX))
            .unwrap_or(usize::MAX);
        HttpLimits {
            header_timeout: Duration::from_millis(self.http_header_timeout_ms.max(1)),
            body_timeout: Duration::from_millis(self.http_body_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.http_idle_timeout_ms.max(1)),
            max_connections: self.http_max_connections.min(fd_share).max(1),
        }
    }

    fn client_scheme(&self) -> &'static str {
        if self.tls.cert_file.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn peer_scheme(&self) -> &'static str {
        if self.tls.peer_cert_file.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn advertise_peer_url(&self) -> anyhow::Result<String> {
        match &self.advertise_peer {
            Some(u) => validate_member_url(u).context("--advertise-peer"),
            None => Ok(format!("{}://{}", self.peer_scheme(), self.listen_peer)),
        }
    }
}

/// Raises the soft limit on open files to the hard limit (a default soft
/// limit of 1024 is easily used up by clients) and returns the new soft
/// limit, or `None` if it cannot be read.
fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // Linux refuses more than fs.nr_open (2^20 by default), even when the
    // hard limit says "unlimited".
    const MOST: u64 = 1 << 20;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let target = hard.min(MOST);
    if soft < target {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => return Some(target),
            Err(e) => warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    Some(soft)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.node_config()?;
    let open_files = raise_open_file_limit();
    let http_limits = args.http_limits(open_files);
    info!(
        open_files = ?open_files,
        max_http_connections = http_limits.max_connections,
        "connection limits"
    );
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    let client_tls = match args.tls.client_tls() {
        Some(tls) => Some(
            tls.server_config(&[crate::tls::ALPN_H2])
                .context("client TLS")?
                .0,
        ),
        None => None,
    };
    let http_tls = match args.tls.client_tls() {
        Some(tls) => Some(crate::tls::accept::TlsListener {
            config: tls
                .server_config(&[crate::tls::ALPN_H2, crate::tls::ALPN_HTTP1])
                .context("HTTP TLS")?
                .0,
            failures: crate::tls::accept::HandshakeFailures::of(&metrics, "http"),
        }),
        None => None,
    };
    let node = start(cfg.clone(), metrics.clone()).await?;
    let handle = node
        .handle
        .clone()
        .with_auth_token_ttl(Duration::from_secs(args.auth_token_ttl));
    let state = HttpState {
        handle: handle.clone(),
        health: node.health.clone(),
        metrics: metrics.clone(),
        max_body_bytes: cfg.limits.max_value_bytes + 1,
        body_timeout: http_limits.body_timeout,
    };
    let http = tokio::net::TcpListener::bind(args.listen_http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.listen_http))?;
    info!(
        id = %cfg.id,
        http = %args.listen_http,
        peer = %args.listen_peer,
        client = %args.listen_client,
        "raftkv node serving"
    );
    let client = tokio::net::TcpListener::bind(args.listen_client)
        .await
        .with_context(|| format!("cannot listen for gRPC clients on {}", args.listen_client))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let grpc_task = tokio::spawn(crate::grpc::serve_with_shutdown(
        client,
        client_tls,
        handle.with_watch_progress_interval(Duration::from_millis(
            args.watch_progress_notify_interval_ms.max(1),
        )),
        Some(metrics.clone()),
        async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        },
    ));
    if let Some(addr) = args.listen_metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        info!(metrics = %addr, "serving metrics and probes in plain HTTP");
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::http::serve(
            listener,
            observability_router(state.clone()),
            http_limits,
            None,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(crate::http::serve(
        http,
        router(state),
        http_limits,
        http_tls,
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));

    let mut driver = node.driver;
    tokio::select! {
        _ = shutdown_signal() => {
            info!("signal received: shutting down (a second signal exits at once)");
            tokio::spawn(async {
                shutdown_signal().await;
                warn!("second signal: exiting now");
                std::process::exit(130);
            });
            let _ = stop_tx.send(true);
            if let Err(e) = node.handle.shutdown().await {
                warn!(error = %e, "leadership hand-over did not finish");
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), grpc_task).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut driver).await;
            info!("stopped");
            Ok(())
        }
        res = &mut driver => {
            let _ = stop_tx.send(true);
            match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    error!(error = %e, "the driver stopped");
                    Err(e.into())
                }
                Err(e) => Err(anyhow::anyhow!("the driver task failed: {e}")),
            }
        }
        res = node.peer_server => {
            bail!("the peer server stopped: {res:?}")
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn initial_cluster_parses_and_rejects_garbage() {
        let m = parse_initial_cluster("1=127.0.0.1:2380, 2=http://h:2390").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1.peer_url, "http://127.0.0.1:2380");
        assert_eq!(m[1].1.peer_url, "http://h:2390");
        assert!(parse_initial_cluster("1=a,1=b").is_err());
        assert!(parse_initial_cluster("0=a").is_err());
        assert!(parse_initial_cluster("x=a").is_err());
        assert!(parse_initial_cluster("").is_err());
        assert!(parse_initial_cluster("1=ftp://x:1").is_err());
        assert!(parse_initial_cluster("1=http://h:99999").is_err());
    }

    #[test]
    fn statefulset_ordinals_become_ids() {
        assert_eq!(id_from_hostname("raftkv-0").unwrap(), 1);
        assert_eq!(id_from_hostname("my-cluster-4").unwrap(), 5);
        assert!(id_from_hostname("raftkv").is_err());
        assert!(id_from_hostname("raftkv-x").is_err());
    }

    fn serve(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["raftkv", "serve", "--id", "1"];
        argv.extend_from_slice(extra);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not serve")
        };
        *args
    }

    #[test]
    fn the_peer_port_is_never_open_unless_asked_for() {
        let err = serve(&[]).node_config().unwrap_err().to_string();
        assert!(err.contains("--peer-auth none"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a secret of more than sixteen bytes\n").unwrap();
        let good = dir.path().join("good");
        std::fs::copy(&secret, &good).unwrap();
        let cfg = serve(&["--peer-secret-file", secret.to_str().unwrap()])
            .node_config()
            .unwrap();
        assert!(cfg.peer_security.secret.is_some());
        std::fs::write(&secret, "short").unwrap();
        assert!(
            serve(&["--peer-secret-file", secret.to_str().unwrap()])
                .node_config()
                .is_err()
        );
        // Certificates: https:// advertised URLs, identity checks on.
        let cert = dir.path().join("c.pem");
        let cfg = serve(&[
            "--peer-cert-file",
            cert.to_str().unwrap(),
            "--peer-key-file",
            cert.to_str().unwrap(),
            "--peer-trusted-ca-file",
            cert.to_str().unwrap(),
            "--peer-client-cert-auth",
        ])
        .node_config()
        .unwrap();
        assert!(cfg.peer_security.certificate_auth);
        assert!(cfg.advertise_peer.starts_with("https://"));
        // TLS alone authenticates nobody.
        assert!(
            serve(&[
                "--peer-cert-file",
                cert.to_str().unwrap(),
                "--peer-key-file",
                cert.to_str().unwrap(),
            ])
            .node_config()
            .is_err()
        );
        assert!(
            serve(&[
                "--peer-auth",
                "none",
                "--peer-secret-file",
                good.to_str().unwrap()
            ])
            .node_config()
            .is_err(),
            "none contradicts a secret"
        );
    }

    #[test]
    fn the_auth_token_ttl_defaults_to_etcds_and_refuses_zero() {
        assert_eq!(serve(&[]).auth_token_ttl, 300);
        assert_eq!(serve(&["--auth-token-ttl", "60"]).auth_token_ttl, 60);
        let argv = ["raftkv", "serve", "--id", "1", "--auth-token-ttl", "0"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn serve_flags_become_a_node_config() {
        let cli = Cli::try_parse_from([
            "raftkv",
            "serve",
            "--id",
            "2",
            "--initial-cluster",
            "1=127.0.0.1:2380,2=127.0.0.1:2390",
            "--election-timeout-ms",
            "500",
            "--heartbeat-interval-ms",
            "50",
            "--peer-auth",
            "none",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let cfg = args.node_config().unwrap();
        assert!(!cfg.peer_security.authenticates());
        assert_eq!(cfg.id, NodeId(2));
        assert_eq!(cfg.election_ticks, 50);
        assert_eq!(cfg.heartbeat_ticks, 5);
        assert!(matches!(cfg.bootstrap, Bootstrap::Initial(ref m) if m.len() == 2));
        assert_eq!(cfg.kv_cache_bytes, 256 << 20, "the default page cache");
        let cli = Cli::try_parse_from([
            "raftkv",
            "serve",
            "--id",
            "1",
            "--join",
            "--kv-cache-mb",
            "64",
            "--peer-auth",
            "none",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.node_config().unwrap().kv_cache_bytes, 64 << 20);
        assert!(
            Cli::try_parse_from([
                "raftkv",
                "serve",
                "--id",
                "1",
                "--join",
                "--initial-cluster",
                "1=a"
            ])
            .is_err()
        );
    }
}
