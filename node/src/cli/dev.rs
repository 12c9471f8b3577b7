//! `raftkv dev`: a local cluster of real `raftkv serve` processes on
//! loopback, for trying raftkv out. Node `i` (from 1) listens on the base
//! ports plus an offset; data persists in `--data-dir` across runs unless
//! `--fresh`. Ctrl-C (or SIGTERM) stops every node gracefully.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::{Child, Command};

use crate::server::NodeStatus;
use crate::tls::local_ca::LocalCa;
use crate::tls::reload::KeyPairFiles;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// How many nodes.
    #[arg(long, env = "RAFTKV_DEV_NODES", default_value_t = 3)]
    pub nodes: u64,
    /// Where the nodes keep their data (one sub-directory each) and logs.
    #[arg(long, env = "RAFTKV_DEV_DATA_DIR", default_value = "raftkv-dev")]
    pub data_dir: PathBuf,
    /// Delete the data directory first.
    #[arg(long, env = "RAFTKV_DEV_FRESH")]
    pub fresh: bool,
    /// Client (gRPC) port of node 1; node i uses this + 10·(i-1).
    #[arg(long, env = "RAFTKV_DEV_CLIENT_PORT", default_value_t = 2379)]
    pub client_port: u16,
    /// Peer port of node 1; node i uses this + 10·(i-1).
    #[arg(long, env = "RAFTKV_DEV_PEER_PORT", default_value_t = 2380)]
    pub peer_port: u16,
    /// HTTP port of node 1; node i uses this + (i-1).
    #[arg(long, env = "RAFTKV_DEV_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// TLS on every port: a local CA under the data directory issues the
    /// nodes' certificates and a client certificate; clients (etcdctl,
    /// curl) must present it.
    #[arg(long, env = "RAFTKV_DEV_TLS")]
    pub tls: bool,
}

/// The files `raftkv dev --tls` makes (fresh on every start).
#[derive(Debug)]
struct DevCerts {
    ca: PathBuf,
    node: KeyPairFiles,
    client: KeyPairFiles,
}

/// A new local CA, one certificate for the nodes (all on loopback) used on
/// every port and for dialling peers, and one client certificate.
fn dev_certs(data_dir: &std::path::Path) -> anyhow::Result<DevCerts> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = LocalCa::new("raftkv dev CA")?;
    let node = ca
        .issue("raftkv dev node", &["127.0.0.1", "localhost"])?
        .write(&dir, "node")?;
    let client = ca.issue("raftkv dev client", &[])?.write(&dir, "client")?;
    Ok(DevCerts {
        ca: ca.write_ca(&dir)?,
        node,
        client,
    })
}

/// The addresses of one dev node.
#[derive(Debug, Clone)]
pub struct DevNode {
    pub id: u64,
    pub client: String,
    pub peer: String,
    pub http: String,
}

pub fn layout(args: &DevArgs) -> anyhow::Result<Vec<DevNode>> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    let port = |base: u16, step: u64, i: u64| -> anyhow::Result<u16> {
        u16::try_from(u64::from(base) + step * (i - 1)).context("port out of range")
    };
    let nodes = (1..=args.nodes)
        .map(|i| {
            Ok(DevNode {
                id: i,
                client: format!("127.0.0.1:{}", port(args.client_port, 10, i)?),
                peer: format!("127.0.0.1:{}", port(args.peer_port, 10, i)?),
                http: format!("127.0.0.1:{}", port(args.http_port, 1, i)?),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Bases close together give two listeners one port: the second node
    // to start would fail, and the cluster would wait for a leader that
    // never comes. Say so before starting anything.
    let mut taken: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for n in &nodes {
        for (what, addr) in [("client", &n.client), ("peer", &n.peer), ("HTTP", &n.http)] {
            let who = format!("node {}'s {what} port", n.id);
            if let Some(first) = taken.insert(addr, who.clone()) {
                bail!(
                    "{addr} would be both {first} and {who}: with --nodes {}, HTTP ports \
                     are --http-port + 0..{}, client and peer ports --client-port and \
                     --peer-port + 0, 10, 20...; choose bases further apart",
                    args.nodes,
                    args.nodes - 1
                );
            }
        }
    }
    Ok(nodes)
}

/// The dev cluster's shared peer secret: made once, at random, and kept in
/// the data directory (readable by its owner only) so restarts agree.
fn dev_peer_secret(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    use rand::RngCore as _;
    use std::io::Write as _;
    let path = data_dir.join("peer-secret");
    if path.exists() {
        return Ok(path);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let nodes = layout(&args)?;
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("cannot delete {}", args.data_dir.display()))?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the raftkv executable")?;
    let certs = if args.tls {
        Some(dev_certs(&args.data_dir)?)
    } else {
        None
    };
    let scheme = if args.tls { "https" } else { "http" };
    let initial: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}={scheme}://{}", n.id, n.peer))
        .collect();
    let initial = initial.join(",");
    let peer_secret = dev_peer_secret(&args.data_dir)?;

    let mut children: Vec<(u64, Child)> = Vec::new();
    for n in &nodes {
        let dir = args.data_dir.join(format!("node-{}", n.id));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("raftkv.log"))
            .with_context(|| format!("cannot open the log file in {}", dir.display()))?;
        let mut cmd = Command::new(&exe);
        // The nodes are configured by flags only; the caller's RAFTKV_*
        // variables (say, RAFTKV_ID) must not leak into them. The log
        // filter is not configuration: it passes.
        for (k, _) in std::env::vars() {
            if k.starts_with("RAFTKV_") && k != "RAFTKV_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .args(["--id", &n.id.to_string()])
            .args(["--name", &format!("node-{}", n.id)])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client", &n.client])
            .args(["--listen-peer", &n.peer])
            .args(["--listen-http", &n.http])
            .args(["--advertise-client", &format!("{scheme}://{}", n.client)])
            .args(["--initial-cluster", &initial])
            .arg("--peer-secret-file")
            .arg(&peer_secret);
        if let Some(c) = &certs {
            cmd.arg("--cert-file")
                .arg(&c.node.cert)
                .arg("--key-file")
                .arg(&c.node.key)
                .arg("--trusted-ca-file")
                .arg(&c.ca)
                .arg("--client-cert-auth")
                .arg("--peer-cert-file")
                .arg(&c.node.cert)
                .arg("--peer-key-file")
                .arg(&c.node.key)
                .arg("--peer-trusted-ca-file")
                .arg(&c.ca)
                .arg("--peer-client-cert-auth");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start node {}", n.id))?;
        children.push((n.id, child));
    }

    println!(
        "raftkv dev cluster: {} nodes, data in {}",
        nodes.len(),
        args.data_dir.display()
    );
    println!();
    // The pid is there so that `kill -9 <pid>` of the leader, the classic
    // Raft demonstration, needs no searching.
    println!(
        "  {:<4} {:<8} {:<22} {:<22} {:<22}",
        "ID", "PID", "HTTP", "CLIENT (gRPC)", "PEER"
    );
    for (n, (_, child)) in nodes.iter().zip(&children) {
        let pid = child
            .id()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<4} {:<8} {:<22} {:<22} {:<22}",
            n.id,
            pid,
            format!("{scheme}://{}", n.http),
            n.client,
            n.peer
        );
    }
    println!();
    let http_endpoints: Vec<String> = nodes
        .iter()
        .map(|n| format!("{scheme}://{}", n.http))
        .collect();
    let client_endpoints: Vec<String> = nodes
        .iter()
        .map(|n| format!("{scheme}://{}", n.client))
        .collect();

    let wait = async {
        match &certs {
            None => wait_for_leader(&http_endpoints, Duration::from_secs(30))
                .await
                .map(|s| (s.leader_id.unwrap_or(0), s.term)),
            Some(c) => {
                let tls = crate::tls::ClientTls {
                    trusted_ca: Some(c.ca.clone()),
                    key_pair: Some(c.client.clone()),
                };
                wait_for_leader_grpc(&client_endpoints, &tls, Duration::from_secs(30)).await
            }
        }
    };
    let waited = tokio::select! {
        w = wait => w,
        _ = tokio::signal::ctrl_c() => {
            stop_all(&mut children).await;
            return Ok(());
        }
    };
    match waited {
        Ok((leader, term)) => println!("leader: node {leader} (term {term})"),
        Err(e) => println!(
            "no leader yet: {e} (see the node logs in {})",
            args.data_dir.display()
        ),
    }
    let first = &nodes[0];
    println!();
    println!("try:");
    match &certs {
        None => {
            println!(
                "  curl -X PUT --data-binary hello http://{}/v1/kv/greeting",
                first.http
            );
            println!("  curl http://{}/v1/kv/greeting", first.http);
            println!(
                "  raftkv kv get greeting --endpoints {}",
                http_endpoints.join(",")
            );
            println!(
                "  raftkv cluster status --endpoints {}",
                http_endpoints.join(",")
            );
            println!("  etcdctl --endpoints {} put foo bar", first.client);
        }
        Some(c) => {
            let (ca, cert, key) = (
                c.ca.display(),
                c.client.cert.display(),
                c.client.key.display(),
            );
            println!(
                "  etcdctl --endpoints {} --cacert {ca} --cert {cert} --key {key} put foo bar",
                client_endpoints.join(",")
            );
            println!(
                "  curl --cacert {ca} --cert {cert} --key {key} https://{}/v1/status",
                first.http
            );
            println!(
                "  raftkv bench put --endpoints {} --cacert {ca} --cert {cert} --key {key}",
                client_endpoints.join(",")
            );
        }
    }
    println!();
    println!(
        "Ctrl-C stops the cluster; node logs are in {}/node-*/raftkv.log",
        args.data_dir.display()
    );

    // A node that dies (say, killed to watch a failover) is reported and
    // the rest keep running; only a signal stops the cluster.
    let mut reported = std::collections::HashSet::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => {
                println!("stopping…");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for (id, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        if reported.insert(*id) {
                            println!("node {id} exited ({status}); the others keep running");
                        }
                    }
                }
            }
        }
    }
    stop_all(&mut children).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Asks every node to stop (SIGTERM), waits, then kills what is left.
async fn stop_all(children: &mut [(u64, Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = child.id() {
            // A terminal's Ctrl-C already reached the nodes; this covers
            // SIGTERM to `dev` and nodes started without a terminal.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, child) in children.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                println!("node {id} did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
    println!("all nodes stopped");
}

/// Polls the nodes' gRPC ports (etcd's Maintenance.Status, over TLS) until
/// one of them reports a leader; returns (leader, term).
async fn wait_for_leader_grpc(
    endpoints: &[String],
    tls: &crate::tls::ClientTls,
    within: Duration,
) -> anyhow::Result<(u64, u64)> {
    use crate::grpc::proto::etcdserverpb::{StatusRequest, maintenance_client::MaintenanceClient};
    let connector = crate::tls::connect::Connector::new(Some(tls.client_config()?));
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for ep in endpoints {
            let endpoint = tonic::transport::Endpoint::from_shared(ep.clone())?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(1));
            if let Ok(channel) = connector.connect(endpoint).await {
                if let Ok(s) = MaintenanceClient::new(channel)
                    .status(StatusRequest {})
                    .await
                {
                    let s = s.into_inner();
                    if s.leader != 0 {
                        return Ok((s.leader, s.raft_term));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader within {within:?}")
}

/// Polls the nodes until one of them reports a leader.
pub async fn wait_for_leader(endpoints: &[String], within: Duration) -> anyhow::Result<NodeStatus> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for ep in endpoints {
            if let Ok(resp) = client.get(format!("{ep}/v1/status")).send().await {
                if let Ok(s) = resp.json::<NodeStatus>().await {
                    if s.leader_id.is_some() {
                        return Ok(s);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader within {within:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_distinct_ports() {
        let args = DevArgs {
            nodes: 3,
            data_dir: PathBuf::from("d"),
            fresh: false,
            client_port: 2379,
            peer_port: 2380,
            http_port: 8080,
            tls: false,
        };
        let l = layout(&args).unwrap();
        let mut all: Vec<&String> = l
            .iter()
            .flat_map(|n| [&n.client, &n.peer, &n.http])
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 9);
        assert_eq!(l[2].http, "127.0.0.1:8082");
        assert_eq!(l[1].peer, "127.0.0.1:2390");
    }

    #[test]
    fn bases_that_make_two_nodes_share_a_port_are_refused_naming_both() {
        let args = DevArgs {
            nodes: 3,
            data_dir: PathBuf::from("d"),
            fresh: false,
            client_port: 28229,
            peer_port: 28230,
            http_port: 28228,
            tls: false,
        };
        let err = layout(&args).unwrap_err().to_string();
        assert!(
            err.contains(
                "127.0.0.1:28229 would be both node 1's client port and node 2's HTTP port"
            ),
            "{err}"
        );
        // Apart by more than the nodes span: fine.
        let apart = DevArgs {
            peer_port: 28240,
            http_port: 28300,
            ..args
        };
        assert!(layout(&apart).is_ok());
    }
}
