//! `raftkv snapshot`: backups, like `etcdctl snapshot save` and `etcdutl
//! snapshot status|restore`.
//!
//! - `save`: asks a member for a backup over etcd's `Maintenance.Snapshot`
//!   and writes it to a file (through a `.part` file that is checked end
//!   to end, synced, and only then renamed);
//! - `status`: checks a backup file and tells what it holds;
//! - `restore`: prepares the data directory of one member of a new cluster
//!   from a backup file (run it once per member, with the same file and
//!   `--initial-cluster`, then start each member with `raftkv serve`).
//!
//! `restore` and `restore-if-bootstrapping` also take an `s3://BUCKET/KEY`
//! instead of a file: the object is downloaded into a staging directory,
//! restored from there, and deleted.
//!
//! The file format is described in the storage module (`backup.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use tonic::transport::Endpoint;

use crate::cli::client::TlsClientArgs;
use crate::cli::s3::{self, Bucket, S3Args, S3Url};
use crate::cli::serve::{ServeArgs, parse_initial_cluster};
use crate::cli::snapshot_rotation;
use crate::grpc::proto::etcdserverpb::{SnapshotRequest, maintenance_client::MaintenanceClient};
use crate::raft::{Membership, NodeId};
use crate::server::{Bootstrap, MemberInfo};
use crate::server::{cluster_id_of, cluster_id_of_token};
use crate::storage::{
    BackupSummary, Identity, KV_FILE, LEGACY_LOG_FILE, LOG_DIR, read_backup, restore_backup,
};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub op: SnapshotOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Simple,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotOp {
    /// Save a backup of a member's state machine (keys, history,
    /// revisions) to FILE.
    Save {
        /// Where to write the backup.
        file: PathBuf,
        /// The member's client gRPC endpoint (host:port); with several,
        /// the first that answers is used.
        #[arg(
            long,
            env = "RAFTKV_GRPC_ENDPOINTS",
            value_delimiter = ',',
            default_value = "127.0.0.1:2379"
        )]
        endpoints: Vec<String>,
        /// Give up on connecting to an endpoint after this long.
        #[arg(long, default_value_t = 5000)]
        connect_timeout_ms: u64,
        #[command(flatten)]
        tls: TlsClientArgs,
    },
    /// Check a backup file and show what it holds.
    Status {
        file: PathBuf,
        #[arg(long, short = 'w', value_enum, default_value_t = StatusFormat::Simple)]
        write_out: StatusFormat,
    },
    /// Save a backup into a directory of backups and keep only the newest
    /// (what the operator's scheduled backup job runs).
    Backup(snapshot_rotation::BackupArgs),
    /// Prepare this member's empty data directory from a backup if, and
    /// only if, it is about to bootstrap a new cluster: reads the same
    /// flags and `RAFTKV_*` variables as `raftkv serve` (an init container
    /// of the operator's pods runs it). A member that joins, or whose data
    /// directory already holds a store, is left alone.
    RestoreIfBootstrapping {
        /// The backup: a file, or an object `s3://BUCKET/KEY`.
        file: PathBuf,
        #[command(flatten)]
        serve: Box<ServeArgs>,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Prepare one member's data directory of a new cluster from a backup.
    Restore {
        /// The backup: a file, or an object `s3://BUCKET/KEY`.
        file: PathBuf,
        /// The new member's data directory (must not hold a store yet).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new cluster's voters, `id=peer_url,...`, exactly as they
        /// will be given to `raftkv serve`.
        #[arg(long)]
        initial_cluster: String,
        /// This member's id (one of --initial-cluster's).
        #[arg(long)]
        id: u64,
        /// The new cluster's id, as `raftkv serve --cluster-id` will be
        /// given it (default: from --cluster-token, else derived from
        /// --initial-cluster, as `raftkv serve` derives it).
        #[arg(long, conflicts_with = "cluster_token")]
        cluster_id: Option<u64>,
        /// As `raftkv serve --cluster-token`.
        #[arg(long)]
        cluster_token: Option<String>,
        #[command(flatten)]
        s3: S3Args,
    },
}

pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.op {
        SnapshotOp::Save {
            file,
            endpoints,
            connect_timeout_ms,
            tls,
        } => {
            let s = save(
                &file,
                &endpoints,
                Duration::from_millis(connect_timeout_ms),
                &tls,
            )
            .await?;
            println!(
                "Snapshot saved at {} (revision {}, {} keys, {} bytes, sha256 {})",
                file.display(),
                s.revision,
                s.total_keys,
                s.total_size,
                s.sha256
            );
            Ok(())
        }
        SnapshotOp::Backup(args) => snapshot_rotation::run(args).await,
        SnapshotOp::RestoreIfBootstrapping { file, serve, s3 } => {
            restore_if_bootstrapping(&file, &serve, &s3).await
        }
        SnapshotOp::Status { file, write_out } => {
            let summary = read_backup(&file, |_| Ok(()))?;
            print_summary(&summary, write_out)
        }
        SnapshotOp::Restore {
            file,
            data_dir,
            initial_cluster,
            id,
            cluster_id,
            cluster_token,
            s3,
        } => restore(
            &fetch(&file, &s3).await?.path,
            &data_dir,
            &parse_initial_cluster(&initial_cluster)?,
            id,
            cluster_id.or_else(|| cluster_token.as_deref().map(cluster_id_of_token)),
        ),
    }
}

fn print_summary(s: &BackupSummary, format: StatusFormat) -> anyhow::Result<()> {
    match format {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(s)?),
        StatusFormat::Simple => {
            println!("hash:             {:08x} (CRC-32 of the image)", s.hash);
            println!("revision:         {}", s.revision);
            println!("compact revision: {}", s.compact_revision);
            println!("total keys:       {}", s.total_keys);
            println!("total versions:   {}", s.total_versions);
            println!("total leases:     {}", s.total_leases);
            println!("total size:       {} bytes", s.total_size);
            println!("sha256:           {}", s.sha256);
            println!(
                "applied index:    {} (term {})",
                s.applied_index, s.applied_term
            );
            println!(
                "taken from:       member {:x} of cluster {:x}",
                s.member_id, s.cluster_id
            );
            println!("format version:   {}", s.format_version);
        }
    }
    Ok(())
}

pub(crate) fn part_file(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

/// Saves a backup from the first of `endpoints` that answers into `file`;
/// returns what the (checked) file holds.
pub(super) async fn save(
    file: &Path,
    endpoints: &[String],
    connect_timeout: Duration,
    tls: &TlsClientArgs,
) -> anyhow::Result<BackupSummary> {
    let client_tls = tls.client_tls();
    let connector = crate::tls::connect::Connector::new(match client_tls.trusted_ca {
        Some(_) => Some(
            client_tls
                .client_config()
                .context("client TLS (--cacert, --cert, --key)")?,
        ),
        None => None,
    });
    let mut errors = Vec::new();
    for endpoint in endpoints {
        let uri = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        let channel = match Endpoint::from_shared(uri) {
            Ok(e) => e.connect_timeout(connect_timeout),
            Err(e) => {
                errors.push(format!("{endpoint}: {e}"));
                continue;
            }
        };
        match connector.connect(channel).await {
            Ok(channel) => return save_from(MaintenanceClient::new(channel), endpoint, file).await,
            Err(e) => errors.push(format!("{endpoint}: {e}")),
        }
    }
    bail!("no endpoint answered: {}", errors.join("; "))
}

async fn save_from(
    mut client: MaintenanceClient<tonic::transport::Channel>,
    endpoint: &str,
    file: &Path,
) -> anyhow::Result<BackupSummary> {
    let part = part_file(file);
    let result = async {
        let mut out = std::fs::File::create(&part)
            .with_context(|| format!("cannot create {}", part.display()))?;
        let mut stream = client
            .snapshot(SnapshotRequest {})
            .await
            .with_context(|| format!("{endpoint}: Snapshot failed"))?
            .into_inner();
        while let Some(msg) = stream
            .message()
            .await
            .with_context(|| format!("{endpoint}: the snapshot stream failed"))?
        {
            out.write_all(&msg.blob)
                .with_context(|| format!("cannot write {}", part.display()))?;
        }
        out.sync_all()
            .with_context(|| format!("cannot sync {}", part.display()))?;
        drop(out);
        // What arrived is checked as a restore would check it.
        let summary = read_backup(&part, |_| Ok(()))?;
        std::fs::rename(&part, file)
            .with_context(|| format!("cannot rename {} to {}", part.display(), file.display()))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", dir.display()))?;
        }
        anyhow::Ok(summary)
    }
    .await;
    match result {
        Ok(s) => Ok(s),
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

/// What `restore-if-bootstrapping` decided for this member.
#[derive(Debug, PartialEq, Eq)]
enum BootstrapRestore {
    /// A brand-new member of a new cluster: seed it from the backup.
    Restore,
    /// The data directory already holds a store; it is never overwritten.
    HasData(PathBuf),
    /// The member joins an existing cluster, which sends it the data.
    Joins,
}

fn bootstrap_restore_decision(data_dir: &Path, bootstrap: &Bootstrap) -> BootstrapRestore {
    if let Some(f) = [KV_FILE, LOG_DIR, LEGACY_LOG_FILE]
        .iter()
        .map(|name| data_dir.join(name))
        .find(|f| f.exists())
    {
        return BootstrapRestore::HasData(f);
    }
    match bootstrap {
        Bootstrap::Initial(_) => BootstrapRestore::Restore,
        Bootstrap::Join => BootstrapRestore::Joins,
    }
}

/// The init container's half of `spec.restore`: exactly the node
/// `raftkv serve` will open with the same flags, restored from `file` when
/// it is about to bootstrap, left alone otherwise.
async fn restore_if_bootstrapping(
    file: &Path,
    serve: &ServeArgs,
    s3: &S3Args,
) -> anyhow::Result<()> {
    let cfg = serve.node_config()?;
    match bootstrap_restore_decision(&cfg.data_dir, &cfg.bootstrap) {
        BootstrapRestore::HasData(f) => {
            println!(
                "{} already holds a store ({}); nothing restored",
                cfg.data_dir.display(),
                f.display()
            );
            Ok(())
        }
        BootstrapRestore::Joins => {
            println!(
                "member {} joins an existing cluster and gets its data from the leader; nothing restored",
                cfg.id
            );
            Ok(())
        }
        BootstrapRestore::Restore => {
            let Bootstrap::Initial(members) = &cfg.bootstrap else {
                bail!("a bootstrapping member without an initial configuration");
            };
            let backup = fetch(file, s3).await?;
            restore(
                &backup.path,
                &cfg.data_dir,
                members,
                cfg.id.get(),
                cfg.cluster_id,
            )
        }
    }
}

/// A backup file to restore from: the one given, or a downloaded copy of
/// the object given, deleted when this is dropped.
#[derive(Debug)]
struct Fetched {
    path: PathBuf,
    downloaded: bool,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        if self.downloaded {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `file` itself, or, for `s3://BUCKET/KEY`, the object downloaded into
/// the staging directory.
async fn fetch(file: &Path, s3: &S3Args) -> anyhow::Result<Fetched> {
    let Some(url) = file.to_str().filter(|f| f.starts_with(s3::SCHEME)) else {
        return Ok(Fetched {
            path: file.to_path_buf(),
            downloaded: false,
        });
    };
    let object = S3Url::parse(url)?;
    if object.key.is_empty() {
        bail!("{url}: name an object (s3://BUCKET/KEY), not a bucket");
    }
    let bucket = Bucket::open(&object.bucket, s3)?;
    let staging = s3.staging_dir();
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let path = staging.join(format!("restore-{}", object.file_name()));
    bucket.download(&object, &path).await?;
    println!("downloaded {object} from bucket {}", bucket.name());
    Ok(Fetched {
        path,
        downloaded: true,
    })
}

fn restore(
    file: &Path,
    data_dir: &Path,
    members: &[(NodeId, MemberInfo)],
    id: u64,
    cluster_id: Option<u64>,
) -> anyhow::Result<()> {
    if !members.iter().any(|(m, _)| m.get() == id) {
        bail!("--initial-cluster does not list --id {id}");
    }
    // Exactly what `raftkv serve` derives from the same flags, so that the
    // restored member opens as the node it is started as.
    let cluster_id = cluster_id.unwrap_or_else(|| cluster_id_of(members));
    let membership = Membership::with_voters(members.iter().map(|(id, m)| (*id, m.to_context())));
    let identity = Identity {
        cluster_id,
        node_id: NodeId(id),
    };
    let (summary, meta) = restore_backup(file, data_dir, identity, &membership)?;
    println!(
        "restored {} keys at revision {} (compacted up to {}) into {} for member {id} of cluster \
         {cluster_id}; its log starts after index {} (term {}). Start every member with \
         `raftkv serve` and the same --initial-cluster{}.",
        summary.total_keys,
        summary.revision,
        summary.compact_revision,
        data_dir.display(),
        meta.index,
        meta.term,
        if summary.cluster_id == cluster_id {
            "; note: the new cluster has the same id as the one the backup came from \
             (pass --cluster-token to both restore and serve to tell them apart)"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial() -> Bootstrap {
        Bootstrap::Initial(vec![(
            NodeId(1),
            MemberInfo {
                name: "node-1".into(),
                peer_url: "http://kv-0.kv-peers.prod.svc:2380".into(),
                client_url: String::new(),
            },
        )])
    }

    #[test]
    fn only_an_empty_bootstrapping_member_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            bootstrap_restore_decision(dir.path(), &initial()),
            BootstrapRestore::Restore
        );
        assert_eq!(
            bootstrap_restore_decision(dir.path(), &Bootstrap::Join),
            BootstrapRestore::Joins
        );
        // A file system's own entries do not make a data directory.
        std::fs::create_dir(dir.path().join("lost+found")).unwrap();
        assert_eq!(
            bootstrap_restore_decision(dir.path(), &initial()),
            BootstrapRestore::Restore
        );
    }

    #[test]
    fn a_data_directory_that_holds_a_store_is_never_overwritten() {
        for name in [KV_FILE, LOG_DIR, LEGACY_LOG_FILE] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(name), b"").unwrap();
            assert_eq!(
                bootstrap_restore_decision(dir.path(), &initial()),
                BootstrapRestore::HasData(dir.path().join(name))
            );
        }
    }
}
