//! `raftkv snapshot backup`: one run of a scheduled backup into a
//! directory of backups (what the operator's CronJob runs, and what a cron
//! line outside Kubernetes can run too).
//!
//! Each run saves a new file named `<prefix>-<UTC time>.db`, whose names
//! sort in time order, into a directory (`--dir`) or an S3-compatible
//! bucket (`--s3 s3://BUCKET/PREFIX`, see `s3.rs`), then deletes the
//! oldest of the prefix's files beyond `--keep`, and finally writes a
//! one-line JSON report of what it did to `--report`. In a Kubernetes Job that path is the container's termination
//! message file, which is how the operator learns the revision, size and
//! file name of a backup without reading the volume; a failed run reports
//! `{"error": ...}` there. Deleting only after a good save means a failing
//! cluster never costs the backups already kept.
//!
//! A run that was killed (a Job's deadline, a node lost) leaves its
//! `.part` file behind (and, with S3, its staged copy); the next run
//! deletes those of its prefix that are older than itself before it saves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::cli::client::TlsClientArgs;
use crate::cli::s3::{Bucket, S3Args, S3Url};

/// The extension of backup files (etcd's snapshots use the same).
const EXTENSION: &str = ".db";
/// The suffix of a file being written (see `snapshot::part_file`).
const PART: &str = ".part";
/// Termination messages are cut at 4096 bytes; a report never needs more.
const MAX_REPORT_BYTES: usize = 4000;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The directory of backups (created if missing).
    #[arg(long, required_unless_present = "s3", conflicts_with = "s3")]
    pub dir: Option<PathBuf>,
    /// Keep the backups in an S3-compatible bucket instead, under a key
    /// prefix: `s3://BUCKET[/PREFIX]`. Credentials come from
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    #[arg(long, env = "RAFTKV_BACKUP_S3")]
    pub s3: Option<String>,
    #[command(flatten)]
    pub s3_options: S3Args,
    /// File names start with this (e.g. the cluster's name); only files of
    /// this prefix are counted and pruned.
    #[arg(long, default_value = "raftkv")]
    pub prefix: String,
    /// How many of the prefix's backups to keep, the new one included.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,
    /// Write a JSON report of the run here (also when it fails).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The cluster's client gRPC endpoints (host:port); the first that
    /// answers is used.
    #[arg(
        long,
        env = "RAFTKV_GRPC_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Give up on connecting to an endpoint after this long.
    #[arg(long, default_value_t = 5000)]
    pub connect_timeout_ms: u64,
    #[command(flatten)]
    pub tls: TlsClientArgs,
}

/// What a successful run reports (the operator parses it; keep the field
/// names stable).
#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    /// The new backup's file name, relative to the directory (or the
    /// bucket's prefix).
    pub file: String,
    /// Where it is: its path, or its `s3://` URL.
    pub location: String,
    pub revision: i64,
    pub size_bytes: u64,
    pub sha256: String,
    /// When the save finished, RFC 3339 UTC.
    pub time: String,
    /// Backups of the prefix left after pruning.
    pub kept: usize,
    /// Files deleted by pruning.
    pub pruned: Vec<String>,
    /// Leftovers of killed runs that were deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stale_removed: Vec<String>,
}

#[derive(Serialize)]
struct FailureReport<'a> {
    error: &'a str,
}

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let result = backup(&args).await;
    let json = match &result {
        Ok(report) => serde_json::to_string(report)?,
        Err(e) => {
            let mut error = format!("{e:#}");
            truncate_at_char_boundary(&mut error, MAX_REPORT_BYTES - 16);
            serde_json::to_string(&FailureReport { error: &error })?
        }
    };
    if let Some(path) = &args.report {
        // A report that cannot be written must not hide the backup's own
        // outcome: say so and go on.
        if let Err(e) = std::fs::write(path, &json) {
            eprintln!("cannot write the report to {}: {e}", path.display());
        }
    }
    let report = result?;
    println!(
        "saved {} (revision {}, {} bytes); {} kept, pruned {:?}",
        report.location, report.revision, report.size_bytes, report.kept, report.pruned
    );
    Ok(())
}

fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

async fn backup(args: &BackupArgs) -> anyhow::Result<Report> {
    validate_prefix(&args.prefix)?;
    let now = jiff::Timestamp::now();
    let file = file_name(&args.prefix, now);
    match (&args.dir, &args.s3) {
        (Some(dir), None) => backup_to_dir(args, dir, file).await,
        (None, Some(url)) => backup_to_s3(args, &S3Url::parse(url)?, file).await,
        _ => anyhow::bail!("give exactly one of --dir and --s3"),
    }
}

async fn backup_to_dir(args: &BackupArgs, dir: &Path, file: String) -> anyhow::Result<Report> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(&file);
    if path.exists() {
        anyhow::bail!(
            "{} already exists (two runs in the same second?)",
            path.display()
        );
    }
    let stale_removed = remove_stale(dir, &args.prefix, &file, false)?;
    let summary = super::snapshot::save(
        &path,
        &args.endpoints,
        Duration::from_millis(args.connect_timeout_ms),
        &args.tls,
    )
    .await?;
    let finished = jiff::Timestamp::now();
    let (kept, pruned) = prune(dir, &args.prefix, args.keep as usize, &file)?;
    Ok(Report {
        location: path.display().to_string(),
        file,
        revision: summary.revision,
        size_bytes: summary.total_size,
        sha256: summary.sha256,
        time: finished.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        kept,
        pruned,
        stale_removed,
    })
}

/// Saves into the staging directory, uploads, deletes the staged copy,
/// then prunes the bucket's prefix by listing it.
async fn backup_to_s3(args: &BackupArgs, dest: &S3Url, file: String) -> anyhow::Result<Report> {
    let bucket = Bucket::open(&dest.bucket, &args.s3_options)?;
    let staging = args.s3_options.staging_dir();
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let stale_removed = remove_stale(&staging, &args.prefix, &file, true)?;
    let path = staging.join(&file);
    let saved = super::snapshot::save(
        &path,
        &args.endpoints,
        Duration::from_millis(args.connect_timeout_ms),
        &args.tls,
    )
    .await;
    let object = dest.child(&file);
    let uploaded = match saved {
        Ok(summary) => bucket.upload(&path, &object).await.map(|()| summary),
        Err(e) => Err(e),
    };
    // The staged copy goes whatever happened: the bucket is the store.
    let _ = std::fs::remove_file(&path);
    let summary = uploaded?;
    let finished = jiff::Timestamp::now();
    let mut names: Vec<String> = bucket
        .list(dest)
        .await?
        .into_iter()
        .filter(|n| is_backup_of(&args.prefix, n))
        .collect();
    // A store whose listings lag behind its writes must not make the new
    // backup uncounted.
    if !names.contains(&file) {
        names.push(file.clone());
    }
    let total = names.len();
    let doomed = to_prune(names, args.keep as usize, &file);
    for name in &doomed {
        bucket.delete(&dest.child(name)).await?;
    }
    Ok(Report {
        location: object.to_string(),
        file,
        revision: summary.revision,
        size_bytes: summary.total_size,
        sha256: summary.sha256,
        time: finished.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        kept: total - doomed.len(),
        pruned: doomed,
        stale_removed,
    })
}

/// Of `names` (a directory's entries), the leftovers of the prefix's runs
/// older than `current` (this run's file name): their `.part` files, and
/// with `staged_too` (a staging directory, which never keeps a backup)
/// their finished files as well.
fn stale(names: &[String], prefix: &str, current: &str, staged_too: bool) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            let (base, partial) = match name.strip_suffix(PART) {
                Some(base) => (base, true),
                None => (name.as_str(), false),
            };
            (partial || staged_too) && is_backup_of(prefix, base) && base < current
        })
        .cloned()
        .collect()
}

/// Deletes what `stale` names in `dir`; returns the names deleted.
fn remove_stale(
    dir: &Path,
    prefix: &str,
    current: &str,
    staged_too: bool,
) -> anyhow::Result<Vec<String>> {
    let names = list_names(dir)?;
    let doomed = stale(&names, prefix, current, staged_too);
    for name in &doomed {
        std::fs::remove_file(dir.join(name))
            .with_context(|| format!("cannot delete {name}, left by an earlier run"))?;
    }
    Ok(doomed)
}

fn list_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// A prefix is one path component that cannot reach outside the directory.
fn validate_prefix(prefix: &str) -> anyhow::Result<()> {
    let ok = !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !prefix.starts_with('.');
    anyhow::ensure!(
        ok,
        "--prefix {prefix:?}: use letters, digits, '-', '_' and '.' (not first)"
    );
    Ok(())
}

/// `<prefix>-20261201T030000Z.db`: fixed width, so names sort in time order.
fn file_name(prefix: &str, at: jiff::Timestamp) -> String {
    format!("{prefix}-{}{EXTENSION}", at.strftime("%Y%m%dT%H%M%SZ"))
}

/// Whether `name` is one of `prefix`'s backups (not another prefix's that
/// merely starts the same, such as `kv-2-...` for prefix `kv`).
fn is_backup_of(prefix: &str, name: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(EXTENSION))
    else {
        return false;
    };
    // YYYYMMDDTHHMMSSZ
    stamp.len() == 16
        && stamp.char_indices().all(|(i, c)| match i {
            8 => c == 'T',
            15 => c == 'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Of `names` (one prefix's backups), those to delete so that the newest
/// `keep` remain; `current` (the backup just written) is never among them.
fn to_prune(mut names: Vec<String>, keep: usize, current: &str) -> Vec<String> {
    names.sort_unstable_by(|a, b| b.cmp(a));
    names
        .into_iter()
        .skip(keep)
        .filter(|n| n != current)
        .collect()
}

/// Deletes the prefix's backups beyond the newest `keep`; returns how many
/// remain and which were deleted.
fn prune(
    dir: &Path,
    prefix: &str,
    keep: usize,
    current: &str,
) -> anyhow::Result<(usize, Vec<String>)> {
    let mut names = list_names(dir)?;
    names.retain(|n| is_backup_of(prefix, n));
    let total = names.len();
    let doomed = to_prune(names, keep, current);
    for name in &doomed {
        std::fs::remove_file(dir.join(name))
            .with_context(|| format!("cannot delete the old backup {name}"))?;
    }
    Ok((total - doomed.len(), doomed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn file_names_sort_in_time_order_and_are_recognised() {
        let a = file_name("kv", at("2026-12-01T03:00:00Z"));
        let b = file_name("kv", at("2026-12-01T10:00:00Z"));
        assert_eq!(a, "kv-20261201T030000Z.db");
        assert!(a < b);
        assert!(is_backup_of("kv", &a));
        assert!(!is_backup_of("kv", &format!("{a}.part")));
        assert!(!is_backup_of("kv", "kv-2-20261201T030000Z.db"));
        assert!(!is_backup_of("kv", "notes.txt"));
        assert!(is_backup_of("kv-2", "kv-2-20261201T030000Z.db"));
    }

    #[test]
    fn pruning_keeps_the_newest_and_never_the_new_one() {
        let names: Vec<String> = [
            "kv-20261101T000000Z.db",
            "kv-20261201T000000Z.db",
            "kv-20261001T000000Z.db",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            to_prune(names.clone(), 2, "kv-20261201T000000Z.db"),
            ["kv-20261001T000000Z.db"]
        );
        assert_eq!(
            to_prune(names.clone(), 1, "kv-20261201T000000Z.db"),
            ["kv-20261101T000000Z.db", "kv-20261001T000000Z.db"]
        );
        assert!(to_prune(names, 5, "kv-20261201T000000Z.db").is_empty());
    }

    #[test]
    fn prune_deletes_only_the_prefixs_old_backups() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "kv-20261001T000000Z.db",
            "kv-20261101T000000Z.db",
            "kv-20261201T000000Z.db",
            "kv-20261201T000000Z.db.part",
            "other-20260101T000000Z.db",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let (kept, pruned) = prune(dir.path(), "kv", 2, "kv-20261201T000000Z.db").unwrap();
        assert_eq!(kept, 2);
        assert_eq!(pruned, ["kv-20261001T000000Z.db"]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "kv-20261101T000000Z.db",
                "kv-20261201T000000Z.db",
                "kv-20261201T000000Z.db.part",
                "other-20260101T000000Z.db"
            ]
        );
    }

    #[test]
    fn leftovers_of_older_runs_are_stale_and_nothing_else_is() {
        let names: Vec<String> = [
            "kv-20261130T030000Z.db.part",
            "kv-20261130T030000Z.db",
            "kv-20261201T030000Z.db.part",
            "kv-20261202T030000Z.db.part",
            "kv-2-20261130T030000Z.db.part",
            "notes.part",
        ]
        .map(String::from)
        .to_vec();
        let current = "kv-20261201T030000Z.db";
        // A directory of backups: only older `.part` files of the prefix.
        assert_eq!(
            stale(&names, "kv", current, false),
            ["kv-20261130T030000Z.db.part"]
        );
        // A staging directory: finished but never uploaded copies too.
        assert_eq!(
            stale(&names, "kv", current, true),
            ["kv-20261130T030000Z.db.part", "kv-20261130T030000Z.db"]
        );
    }

    #[test]
    fn remove_stale_deletes_a_killed_runs_part_file() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["kv-20261130T030000Z.db.part", "kv-20261130T030000Z.db"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let removed = remove_stale(dir.path(), "kv", "kv-20261201T030000Z.db", false).unwrap();
        assert_eq!(removed, ["kv-20261130T030000Z.db.part"]);
        assert_eq!(list_names(dir.path()).unwrap(), ["kv-20261130T030000Z.db"]);
    }

    #[test]
    fn a_prefix_cannot_leave_the_directory() {
        assert!(validate_prefix("demo").is_ok());
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_report_is_the_json_the_operator_reads() {
        let r = Report {
            file: "kv-20261201T030000Z.db".into(),
            location: "s3://b1/kv/kv-20261201T030000Z.db".into(),
            stale_removed: vec![],
            revision: 42,
            size_bytes: 1234,
            sha256: "ab".into(),
            time: "2026-12-01T03:00:01Z".into(),
            kept: 3,
            pruned: vec![],
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        for key in ["file", "location", "revision", "size_bytes", "time"] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
    }
}
