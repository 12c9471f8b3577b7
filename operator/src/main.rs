//! `raftkv-operator` binary: `crd` prints the CustomResourceDefinition, `run`
//! starts the controller behind leader election and serves `/metrics`,
//! `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use raftkv_operator::admin_server::{self, AdminState};
use raftkv_operator::controller::{self, Context, Settings};
use raftkv_operator::leader_election::{self, LeaseSettings};
use raftkv_operator::metrics::Metrics;
use raftkv_operator::node_client::{DnsResolver, HttpNodeClient};
use raftkv_operator::shutdown::{self, Shutdown};
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "raftkv-operator",
    version,
    about = "Kubernetes operator for raftkv clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the RaftCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "RAFTKV_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Compete for a Lease so only one replica acts at a time.
    #[arg(long, env = "RAFTKV_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(
        long,
        env = "RAFTKV_OPERATOR_LEASE_NAME",
        default_value = "raftkv-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (normally the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the Lease (normally the operator's pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "RAFTKV_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Timeout of each call to a raftkv node.
    #[arg(long, env = "RAFTKV_OPERATOR_NODE_TIMEOUT_MS", default_value_t = 3000)]
    node_timeout_ms: u64,
    /// Requeue interval while a cluster changes or is unhealthy.
    #[arg(
        long,
        env = "RAFTKV_OPERATOR_BUSY_REQUEUE_SECONDS",
        default_value_t = 5
    )]
    busy_requeue_seconds: u64,
    /// Status refresh interval of a stable cluster.
    #[arg(
        long,
        env = "RAFTKV_OPERATOR_STABLE_REQUEUE_SECONDS",
        default_value_t = 30
    )]
    stable_requeue_seconds: u64,
    /// A learner within this many entries of the commit index is promoted.
    #[arg(long, env = "RAFTKV_OPERATOR_MAX_CATCH_UP_LAG", default_value_t = 100)]
    max_catch_up_lag: u64,
    /// A pod replaced by a rolling update that has not answered and caught
    /// up after this long halts the rollout.
    #[arg(
        long,
        env = "RAFTKV_OPERATOR_ROLLOUT_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    rollout_timeout_seconds: u64,
    /// A member that has not answered for this long is reported in the
    /// status (condition MemberDown) and by a Warning event.
    #[arg(
        long,
        env = "RAFTKV_OPERATOR_MEMBER_DOWN_SECONDS",
        default_value_t = 120
    )]
    member_down_seconds: u64,
    /// Log as JSON lines.
    #[arg(long, env = "RAFTKV_OPERATOR_LOG_JSON", default_value_t = true, action = clap::ArgAction::Set)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = raftkv_operator::crd::crd_yaml().context("serializing the CRD")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting tokio")?;
            let result = runtime.block_on(run(args));
            // Blocking tasks (a DNS lookup of a node that does not answer)
            // must not hold the exit up.
            runtime.shutdown_timeout(shutdown::GRACE);
            result
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let app = admin_server::router(AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "admin server stopped");
        }
    });

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let node = HttpNodeClient::new(DnsResolver, Duration::from_millis(args.node_timeout_ms))?;
    let settings = Settings {
        busy_requeue: Duration::from_secs(args.busy_requeue_seconds),
        stable_requeue: Duration::from_secs(args.stable_requeue_seconds),
        max_catch_up_lag: args.max_catch_up_lag,
        rollout_timeout: Duration::from_secs(args.rollout_timeout_seconds),
        member_down_threshold: Duration::from_secs(args.member_down_seconds),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        node,
        DnsResolver,
        metrics,
        settings,
    ));

    // One listener for SIGTERM/SIGINT; everything below waits on `shutdown`.
    let (trigger, stopping) = Shutdown::new();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        trigger.fire();
    });

    if !args.leader_elect {
        ready.store(true, Ordering::Relaxed);
        info!("leader election disabled; reconciling");
        run_controller(ctx, stopping.clone().requested(), stopping).await;
        return Ok(());
    }

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("raftkv-operator-{}", std::process::id()));
    let lease = LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity,
        duration_seconds: args.lease_seconds,
        grace_seconds: (args.lease_seconds / 3).max(1),
    };
    let mut election = leader_election::start(client, &lease)
        .await
        .context("starting leader election")?;
    // A standby replica is ready: it serves metrics and waits for the lease.
    ready.store(true, Ordering::Relaxed);
    info!(lease = %lease.name, identity = %lease.identity, "waiting for the operator lease");
    tokio::select! {
        got = leader_election::acquired(&mut election.is_leader) => {
            if !got {
                anyhow::bail!("the lease watcher stopped before this replica became leader");
            }
        }
        () = stopping.clone().requested() => return Ok(()),
    }
    let lost = leader_election::lost(election.is_leader.clone());
    let lost_flag = Arc::new(AtomicBool::new(false));
    let flag = lost_flag.clone();
    let requested = stopping.clone().requested();
    let stop = async move {
        tokio::select! {
            () = lost => flag.store(true, Ordering::Relaxed),
            () = requested => {}
        }
    };
    run_controller(ctx, stop, stopping).await;
    // Dropping the receiver makes the lease manager release the lease; that
    // is one more API call, which may fail for good (RBAC already deleted),
    // so it gets a bounded time too.
    drop(election.is_leader);
    if tokio::time::timeout(shutdown::GRACE, election.task)
        .await
        .is_err()
    {
        warn!("could not release the operator lease in time; it expires on its own");
    }
    if lost_flag.load(Ordering::Relaxed) {
        // Exit so a fresh process competes again with clean caches.
        anyhow::bail!("lost the operator lease; exiting");
    }
    Ok(())
}

/// Run the controller until `stop`; once shutdown is requested, reconciles
/// in flight get [`shutdown::GRACE`] to finish and are then abandoned.
async fn run_controller(
    ctx: Arc<Context<HttpNodeClient<DnsResolver>, DnsResolver>>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    stopping: Shutdown,
) {
    if shutdown::bounded(controller::run(ctx, stop), stopping, shutdown::GRACE)
        .await
        .is_none()
    {
        warn!(
            grace = ?shutdown::GRACE,
            "reconciles still running after the shutdown grace period; exiting anyway"
        );
    }
}
