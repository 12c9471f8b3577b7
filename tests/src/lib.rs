//! Support code for raftkv's end-to-end tests: starting, stopping and
//! talking to real `raftkv` processes on loopback.
//!
//! [`Cluster`] starts N `raftkv serve` processes on free loopback ports, each
//! with its own temporary data directory, and kills every process it started
//! (by its child handle) when dropped. The binary is `$RAFTKV_BIN` if set,
//! otherwise the workspace's `raftkv` built once per test run with the
//! running cargo.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub mod history;
pub mod nemesis;
pub mod peer_proxy;
pub mod seed;
pub mod socket_owner;
pub mod workload;

/// The `raftkv` binary under test.
pub fn raftkv_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn locate_or_build() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("RAFTKV_BIN") {
        return Ok(PathBuf::from(bin));
    }
    // target/<profile>/deps/<test exe> → target/<profile>/raftkv
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory")?
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "raftkv", "--bin", "raftkv"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().context("cannot run cargo to build raftkv")?;
    if !status.success() {
        bail!("building raftkv failed");
    }
    let bin = profile_dir.join("raftkv");
    if !bin.exists() {
        bail!("raftkv was built but is not at {}", bin.display());
    }
    Ok(bin)
}

/// Runs etcdctl (API v3) against `endpoints`, feeding it `stdin`; fails on a
/// non-zero exit with etcdctl's own message.
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoints,
            "--dial-timeout=5s",
            "--command-timeout=10s",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("etcdctl must be installed (.ci/install installs etcd-client)")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A free loopback port, below the kernel's ephemeral range: a port from
/// that range, once released, may be taken by an outgoing connection (a
/// node dialing its peers) before the node meant to listen on it binds it.
/// Never the same port twice in one test process. Each process starts
/// from a place of its own in the range (its id and the time), so that
/// test processes running side by side rarely try the same ports, and
/// walks it in strides of [`PORT_STRIDE`]: a caller that lays out ports
/// from a base (`raftkv dev` takes `base + node - 1` and
/// `base + 10 * (node - 1)`) gets bases far enough apart.
pub fn free_port() -> anyhow::Result<u16> {
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(2048, 65536);
    // A power of two (see the walk below), at most half the ports below.
    let span = 1 << (low / 2).min(16384).ilog2();
    let base = low - span;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let start = *next.get_or_insert_with(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::process::id().wrapping_mul(7919).wrapping_add(nanos) % span
    });
    for step in 0..span {
        // The stride is odd and the span a power of two: the walk visits
        // every port of the span before it repeats one.
        let offset = (start + step * PORT_STRIDE) % span;
        let Ok(port) = u16::try_from(base + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some((offset + PORT_STRIDE) % span);
            return Ok(port);
        }
    }
    bail!("no free loopback port in {base}..{low}")
}

/// How far apart the ports [`free_port`] hands out one after the other
/// are: more than a `raftkv dev` of five nodes spans from its bases.
pub const PORT_STRIDE: u32 = 61;

/// Tunables of a test cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub request_timeout_ms: u64,
    pub snapshot_every: u64,
    pub snapshot_keep_trailing: u64,
    pub max_value_bytes: usize,
    pub max_key_bytes: usize,
    /// More `raftkv serve` flags for every node (TLS files, say).
    pub extra_args: Vec<String>,
    /// Give every node a plain metrics and probes port (`--listen-metrics`,
    /// see [`Node::metrics`]).
    pub listen_metrics: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            election_timeout_ms: 500,
            heartbeat_interval_ms: 50,
            request_timeout_ms: 3000,
            snapshot_every: 10_000,
            snapshot_keep_trailing: 5_000,
            max_value_bytes: 64 * 1024,
            max_key_bytes: 256,
            extra_args: Vec::new(),
            listen_metrics: false,
        }
    }
}

/// One node of a test cluster.
#[derive(Debug)]
pub struct Node {
    pub id: u64,
    pub http_port: u16,
    pub peer_port: u16,
    /// The peer port other nodes are told to reach this one at: the peer
    /// port itself, or a proxy in front of it.
    pub advertised_peer_port: u16,
    pub client_port: u16,
    /// Used when the cluster's options ask for `--listen-metrics`.
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Started with `--join` (restarts keep it).
    joined: bool,
    /// The largest file the process may write (RLIMIT_FSIZE), standing in
    /// for a disk that is full: writes past it fail with EFBIG.
    file_size_limit: Option<u64>,
    /// The length of the log file when the process was last started.
    log_start: u64,
    child: Option<Child>,
}

impl Node {
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
    /// The plain metrics and probes port's URL (with `listen_metrics`).
    pub fn metrics(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }
    /// The peer URL other nodes use (see `advertised_peer_port`).
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.advertised_peer_port)
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of real processes.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub opts: Options,
    initial: String,
    cluster_id: u64,
    /// The cluster's shared peer secret (each test cluster has its own).
    peer_secret: String,
    _dir: tempfile::TempDir,
    bin: PathBuf,
    http: reqwest::Client,
    pids: Pids,
}

/// Which node each running process is, by pid; shared with whoever needs to
/// tell processes apart (the peer proxies), kept current by the cluster.
#[derive(Clone, Debug, Default)]
pub struct Pids(Arc<Mutex<HashMap<u32, u64>>>);

impl Pids {
    /// Every running process: (pid, node id).
    pub fn all(&self) -> Vec<(u32, u64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(p, id)| (*p, *id)).collect()
    }
    fn set(&self, pid: u32, id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, id);
    }
    fn unset(&self, pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }
}

/// An HTTP answer: status and JSON body (or the raw body as a string).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Cluster {
    /// Starts `n` voters (ids 1..=n) bootstrapped as one cluster.
    pub fn start(n: u64, opts: Options) -> anyhow::Result<Cluster> {
        Self::start_routed(n, opts, Pids::default(), |_, peer_port| Ok(peer_port))
    }

    /// Like [`Cluster::start`], but node `id` is advertised to its peers at
    /// the port `route(id, peer_port)` returns (say, a proxy's), and the
    /// cluster keeps `pids` current.
    pub fn start_routed(
        n: u64,
        opts: Options,
        pids: Pids,
        route: impl FnMut(u64, u16) -> anyhow::Result<u16>,
    ) -> anyhow::Result<Cluster> {
        let mut c = Self::prepare_routed(n, opts, pids, route)?;
        c.start_prepared()?;
        Ok(c)
    }

    /// Like [`Cluster::start`], but nothing runs yet: the data directories
    /// can be prepared first (say, restored from a backup, with
    /// [`Cluster::initial_cluster`] and [`Cluster::cluster_id`]), then
    /// [`Cluster::start_prepared`] starts every node.
    pub fn prepare(n: u64, opts: Options) -> anyhow::Result<Cluster> {
        Self::prepare_routed(n, opts, Pids::default(), |_, peer_port| Ok(peer_port))
    }

    /// Starts every node of a cluster from [`Cluster::prepare`].
    pub fn start_prepared(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.spawn(id)?;
        }
        Ok(())
    }

    /// The `--initial-cluster` every node is started with.
    pub fn initial_cluster(&self) -> &str {
        &self.initial
    }

    /// The `--cluster-id` every node is started with.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    fn prepare_routed(
        n: u64,
        opts: Options,
        pids: Pids,
        mut route: impl FnMut(u64, u16) -> anyhow::Result<u16>,
    ) -> anyhow::Result<Cluster> {
        let bin = raftkv_bin()?;
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for id in 1..=n {
            let peer_port = free_port()?;
            nodes.push(Node {
                id,
                http_port: free_port()?,
                peer_port,
                advertised_peer_port: route(id, peer_port)?,
                client_port: free_port()?,
                metrics_port: free_port()?,
                data_dir: dir.path().join(format!("node-{id}")),
                log: dir.path().join(format!("node-{id}.log")),
                joined: false,
                file_size_limit: None,
                log_start: 0,
                child: None,
            });
        }
        let initial = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let c = Cluster {
            nodes,
            opts,
            initial,
            cluster_id: 4242,
            peer_secret: format!(
                "test-cluster-secret-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ),
            _dir: dir,
            bin,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
            pids,
        };
        Ok(c)
    }

    fn node(&self, id: u64) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let opts = self.opts.clone();
        let initial = self.initial.clone();
        let cluster_id = self.cluster_id;
        let bin = self.bin.clone();
        let pids = self.pids.clone();
        let peer_secret = self.peer_secret.clone();
        let node = self.node_mut(id)?;
        let join = node.joined;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        node.log_start = log.metadata()?.len();
        let mut cmd = match node.file_size_limit {
            None => Command::new(bin),
            Some(bytes) => {
                // SIGXFSZ would kill the process at the limit; ignored
                // (the disposition survives exec), the write fails with
                // EFBIG as on a full disk. Both execs keep the pid. Only
                // the soft limit is lowered: raising a hard limit back
                // needs CAP_SYS_RESOURCE, which root in a container may
                // lack.
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    "trap '' XFSZ; exec prlimit --fsize=\"$0\":unlimited -- \"$@\"",
                    &bytes.to_string(),
                ])
                .arg(bin);
                c
            }
        };
        cmd.arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen-http", &format!("127.0.0.1:{}", node.http_port)])
            .args(["--listen-peer", &format!("127.0.0.1:{}", node.peer_port)])
            .args(["--advertise-peer", &node.peer_url()])
            .args([
                "--listen-client",
                &format!("127.0.0.1:{}", node.client_port),
            ])
            .args(["--cluster-id", &cluster_id.to_string()])
            .args(if opts.listen_metrics {
                vec![
                    "--listen-metrics".to_string(),
                    format!("127.0.0.1:{}", node.metrics_port),
                ]
            } else {
                Vec::new()
            })
            .args([
                "--election-timeout-ms",
                &opts.election_timeout_ms.to_string(),
            ])
            .args([
                "--heartbeat-interval-ms",
                &opts.heartbeat_interval_ms.to_string(),
            ])
            .args(["--request-timeout-ms", &opts.request_timeout_ms.to_string()])
            .args(["--snapshot-every", &opts.snapshot_every.to_string()])
            .args([
                "--snapshot-keep-trailing",
                &opts.snapshot_keep_trailing.to_string(),
            ])
            .args(["--max-value-bytes", &opts.max_value_bytes.to_string()])
            .args(["--max-key-bytes", &opts.max_key_bytes.to_string()])
            .args(&opts.extra_args)
            .env("RAFTKV_LOG", "info,raftkv::server::transport=warn")
            .env("RAFTKV_PEER_SECRET", peer_secret)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if join {
            cmd.arg("--join");
        } else {
            cmd.args(["--initial-cluster", &initial]);
        }
        let child = cmd.spawn().context("cannot start raftkv")?;
        pids.set(child.id(), id);
        node.child = Some(child);
        Ok(())
    }

    /// Adds a node process (not yet a member) that starts with `--join`.
    pub fn start_joining(&mut self, id: u64) -> anyhow::Result<&Node> {
        self.start_joining_routed(id, |_, peer_port| Ok(peer_port))
    }

    /// Like [`Cluster::start_joining`], advertised at `route(id, peer_port)`.
    pub fn start_joining_routed(
        &mut self,
        id: u64,
        route: impl FnOnce(u64, u16) -> anyhow::Result<u16>,
    ) -> anyhow::Result<&Node> {
        let dir = self._dir.path().to_path_buf();
        let peer_port = free_port()?;
        self.nodes.push(Node {
            id,
            http_port: free_port()?,
            peer_port,
            advertised_peer_port: route(id, peer_port)?,
            client_port: free_port()?,
            metrics_port: free_port()?,
            data_dir: dir.join(format!("node-{id}")),
            log: dir.join(format!("node-{id}.log")),
            joined: true,
            file_size_limit: None,
            log_start: 0,
            child: None,
        });
        self.spawn(id)?;
        self.node(id)
    }

    /// `kill -9`.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let pids = self.pids.clone();
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.child.take() {
            pids.unset(child.id());
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, ...) to node `id`'s process, by
    /// its pid.
    pub fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .node(id)?
            .pid()
            .with_context(|| format!("node {id} is not running"))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} (node {id}) failed");
        }
        Ok(())
    }

    /// The running processes by pid, kept current as nodes stop and start.
    pub fn pids(&self) -> Pids {
        self.pids.clone()
    }

    /// Graceful stop: SIGTERM, then wait for the process; returns whether
    /// it exited successfully.
    pub fn terminate(&mut self, id: u64) -> anyhow::Result<bool> {
        let pids = self.pids.clone();
        let node = self.node_mut(id)?;
        let Some(mut child) = node.child.take() else {
            bail!("node {id} is not running");
        };
        pids.unset(child.id());
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("node {id} did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a killed node again with its data directory.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if self.node(id)?.is_running() {
            bail!("node {id} is running");
        }
        self.node_mut(id)?.file_size_limit = None;
        self.spawn(id)
    }

    /// The peer URL `id` advertises.
    pub fn peer_url(&self, id: u64) -> anyhow::Result<String> {
        Ok(self.node(id)?.peer_url())
    }

    /// `kill -9`, then starts the node again under the same id with an
    /// empty data directory and `--join`: a member whose disk was lost.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        let node = self.node_mut(id)?;
        std::fs::remove_dir_all(&node.data_dir)
            .with_context(|| format!("cannot remove {}", node.data_dir.display()))?;
        node.joined = true;
        node.file_size_limit = None;
        self.spawn(id)
    }

    /// Starts a killed node again with no file allowed to grow past
    /// `bytes`: its disk is as good as full.
    pub fn restart_with_file_size_limit(&mut self, id: u64, bytes: u64) -> anyhow::Result<()> {
        if self.node(id)?.is_running() {
            bail!("node {id} is running");
        }
        self.node_mut(id)?.file_size_limit = Some(bytes);
        self.spawn(id)
    }

    /// Lifts a running node's file size limit (space was freed).
    pub fn lift_file_size_limit(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        let pid = node
            .pid()
            .with_context(|| format!("node {id} is not running"))?;
        node.file_size_limit = None;
        let status = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), "--fsize=unlimited:unlimited"])
            .status()?;
        if !status.success() {
            bail!("prlimit --pid {pid} --fsize=unlimited:unlimited failed");
        }
        Ok(())
    }

    /// What node `id` has logged since it was last started.
    pub fn log_since_start(&self, id: u64) -> anyhow::Result<String> {
        let node = self.node(id)?;
        let text = std::fs::read(&node.log)?;
        let from = usize::try_from(node.log_start).unwrap_or(usize::MAX);
        Ok(String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned())
    }

    /// Waits for node `id`'s process to end on its own.
    pub fn wait_exited(
        &mut self,
        id: u64,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited(id)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("node {id} did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The size of the largest file in node `id`'s data directory, its
    /// subdirectories included.
    pub fn largest_data_file(&self, id: u64) -> anyhow::Result<u64> {
        let mut dirs = vec![self.node(id)?.data_dir.clone()];
        let mut largest = 0;
        // The log's segments live one level down, in `raft-log/`.
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
                let e = e?;
                let meta = e.metadata()?;
                if meta.is_file() {
                    largest = largest.max(meta.len());
                } else if meta.is_dir() {
                    dirs.push(e.path());
                }
            }
        }
        Ok(largest)
    }

    /// How node `id`'s process ended, if it ended on its own (it is then
    /// no longer running).
    pub fn exited(&mut self, id: u64) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let pids = self.pids.clone();
        let node = self.node_mut(id)?;
        let Some(child) = node.child.as_mut() else {
            return Ok(None);
        };
        let Some(status) = child.try_wait()? else {
            return Ok(None);
        };
        pids.unset(child.id());
        node.child = None;
        Ok(Some(status))
    }

    pub fn http(&self, id: u64) -> anyhow::Result<String> {
        Ok(self.node(id)?.http())
    }

    /// Node `id`'s client (etcd API) address, as etcdctl's `--endpoints`
    /// takes it.
    pub fn client_endpoint(&self, id: u64) -> String {
        let port = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.client_port);
        format!("127.0.0.1:{}", port.unwrap_or(0))
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    pub async fn request(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{}", self.http(id)?, path);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let raw = resp.bytes().await?.to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Ok(Answer { status, body, raw })
    }

    pub async fn put(&self, id: u64, key: &str, value: &str) -> anyhow::Result<Answer> {
        self.request(
            id,
            reqwest::Method::PUT,
            &format!("/v1/kv/{key}"),
            Some(value.as_bytes().to_vec()),
        )
        .await
    }

    /// Linearizable read; `None` if absent.
    pub async fn get(&self, id: u64, key: &str) -> anyhow::Result<Answer> {
        self.request(id, reqwest::Method::GET, &format!("/v1/kv/{key}"), None)
            .await
    }

    pub async fn get_serializable(&self, id: u64, key: &str) -> anyhow::Result<Answer> {
        self.request(
            id,
            reqwest::Method::GET,
            &format!("/v1/kv/{key}?consistency=serializable"),
            None,
        )
        .await
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<Value> {
        let a = self
            .request(id, reqwest::Method::GET, "/v1/status", None)
            .await?;
        if a.status != 200 {
            bail!("status of node {id}: HTTP {}", a.status);
        }
        Ok(a.body)
    }

    /// Waits until every running node agrees on one leader; returns it.
    pub async fn wait_leader(&self, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for id in self.running() {
                let leader = self
                    .status(id)
                    .await
                    .ok()
                    .and_then(|s| s["leader_id"].as_u64());
                leaders.push(leader);
            }
            if let Some(Some(first)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*first))
                && self.running().contains(first)
            {
                return Ok(*first);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {within:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `f` until it returns `Some` or `within` passes.
    pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {within:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of a node's log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let Ok(node) = self.node(id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
