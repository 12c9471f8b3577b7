//! `raftkv recover`: offline tools for a cluster that lost its quorum for
//! good (a majority of its data directories gone). `inspect` tells which
//! surviving member holds the newest log; `force-new-cluster` turns that
//! member into a one-member cluster that keeps its data, like etcd's
//! `--force-new-cluster`, after checking that no quorum is still alive.
//! Both run on a stopped node's data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::raft::{LogIndex, Membership, NodeId, Storage, Term};
use crate::server::MemberInfo;
use crate::storage::{KV_FILE, KvStore, Limits, LogStore};

#[derive(Debug, Args)]
pub struct RecoverArgs {
    #[command(subcommand)]
    pub op: RecoverOp,
}

#[derive(Debug, Subcommand)]
pub enum RecoverOp {
    /// What each stopped member's data directory holds, and which one has
    /// the newest log (the one to force a new cluster from).
    Inspect {
        /// A data directory (repeat for every surviving member you can
        /// reach from here).
        #[arg(long = "data-dir", required = true)]
        data_dirs: Vec<PathBuf>,
    },
    /// Make this stopped member the only voter of its cluster, keeping its
    /// data: its whole log is kept (as a newly elected leader keeps it) and
    /// a configuration naming it alone is committed. Refused while a quorum of the old members still
    /// answers on their peer ports. Then start it with `raftkv serve` as
    /// before and add members back with `raftkv member add` and `--join`.
    ForceNewCluster {
        #[arg(long)]
        data_dir: PathBuf,
        /// How long to wait for each other member's peer port.
        #[arg(long, default_value_t = 2000)]
        probe_timeout_ms: u64,
    },
}

pub async fn run(args: RecoverArgs) -> anyhow::Result<()> {
    match args.op {
        RecoverOp::Inspect { data_dirs } => inspect(&data_dirs),
        RecoverOp::ForceNewCluster {
            data_dir,
            probe_timeout_ms,
        } => force_new_cluster(&data_dir, Duration::from_millis(probe_timeout_ms)).await,
    }
}

/// What a data directory holds, as far as recovery cares.
#[derive(Debug)]
struct Holding {
    node: NodeId,
    cluster_id: u64,
    term: Term,
    commit: LogIndex,
    last: (Term, LogIndex),
    applied: Option<LogIndex>,
    members: Membership,
}

/// The log of a stopped node, opened as the node it belongs to.
fn open_stopped(dir: &Path) -> anyhow::Result<LogStore> {
    let identity = LogStore::identity_of(dir).with_context(|| {
        format!(
            "{}: cannot read the log (is the node stopped?)",
            dir.display()
        )
    })?;
    Ok(LogStore::open(dir, identity)?)
}

fn holding(dir: &Path) -> anyhow::Result<Holding> {
    let log = open_stopped(dir)?;
    let identity = log.identity();
    let last_index = log.last_index()?;
    let last_term = log.term(last_index)?;
    let applied = if dir.join(KV_FILE).exists() {
        Some(KvStore::open(dir, Limits::default())?.applied_index())
    } else {
        None
    };
    Ok(Holding {
        node: identity.node_id,
        cluster_id: identity.cluster_id,
        term: log.hard_state().term,
        commit: log.stored_commit(),
        last: (last_term, last_index),
        applied,
        members: log.membership_at(last_index)?,
    })
}

fn describe_members(m: &Membership) -> String {
    m.members()
        .map(|(id, member)| {
            let info = MemberInfo::from_context(&member.context);
            let role = if m.is_voter(id) { "voter" } else { "learner" };
            format!("{id} ({role}, {})", info.peer_url)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn inspect(dirs: &[PathBuf]) -> anyhow::Result<()> {
    let mut newest: Option<(PathBuf, Holding)> = None;
    for dir in dirs {
        let h = match holding(dir) {
            Ok(h) => h,
            Err(e) => {
                println!("{}: {e:#}", dir.display());
                continue;
            }
        };
        println!(
            "{}: node {} of cluster {}: term {}, commit index {}, last log entry {} (term {}), \
             state machine applied {}; members: {}",
            dir.display(),
            h.node,
            h.cluster_id,
            h.term,
            h.commit,
            h.last.1,
            h.last.0,
            h.applied
                .map_or_else(|| "nothing".to_string(), |a| a.to_string()),
            describe_members(&h.members),
        );
        // Raft's own rule: the log with the later last term, then the
        // longer one, holds every entry the others could have committed.
        if newest.as_ref().is_none_or(|(_, n)| h.last > n.last) {
            newest = Some((dir.clone(), h));
        }
    }
    let Some((dir, h)) = newest else {
        bail!("no readable data directory");
    };
    println!(
        "newest log: {} (node {}, last entry {} of term {}); to make it a one-member cluster: \
         raftkv recover force-new-cluster --data-dir {}",
        dir.display(),
        h.node,
        h.last.1,
        h.last.0,
        dir.display()
    );
    Ok(())
}

/// Whether something accepts connections at `url`'s host and port.
async fn answers(url: &str, within: Duration) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    matches!(
        tokio::time::timeout(within, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

async fn force_new_cluster(dir: &Path, probe_timeout: Duration) -> anyhow::Result<()> {
    let log = open_stopped(dir)?;
    let identity = log.identity();
    let me = identity.node_id;
    // The configuration in force is the last in the log; the last committed
    // one may still be what the other members go by, if the newer one never
    // reached them. A quorum alive in either could go on without this node.
    let last = log.membership_at(log.last_index()?)?;
    let committed = log.membership_at(log.stored_commit())?;
    if !last.is_voter(me) && !committed.is_voter(me) {
        bail!(
            "node {me} is not a voter of the configuration its log holds ({}); \
             force a new cluster from a voter's data directory",
            describe_members(&last)
        );
    }
    let configs = if last == committed {
        vec![&last]
    } else {
        vec![&last, &committed]
    };
    for config in configs {
        let voters: Vec<NodeId> = config.voters().collect();
        let mut alive = Vec::new();
        for id in voters.iter().copied().filter(|id| *id != me) {
            let Some(member) = config.get(id) else {
                continue;
            };
            let url = MemberInfo::from_context(&member.context).peer_url;
            if answers(&url, probe_timeout).await {
                alive.push(format!("{id} ({url})"));
            }
        }
        let quorum = voters.len() / 2 + 1;
        let me_counted = usize::from(config.is_voter(me));
        if !alive.is_empty() && alive.len() + me_counted >= quorum {
            bail!(
                "refusing: a quorum of the cluster's {} voters is still alive (this node and {}); \
                 forcing a new cluster now would split it in two. Stop those members first if \
                 their data is really lost, or let the cluster heal",
                voters.len(),
                alive.join(", ")
            );
        }
    }
    let dropped = last.voters().filter(|id| *id != me).count();
    let index = log
        .force_new_cluster()
        .context("cannot write the new configuration")?;
    println!(
        "node {me} of cluster {} is now its only voter (configuration at index {index}; \
         {dropped} other voter(s) dropped, its whole log kept). Start it with `raftkv serve` \
         as before; add members back with `raftkv member add` and start them with --join.",
        identity.cluster_id
    );
    Ok(())
}
