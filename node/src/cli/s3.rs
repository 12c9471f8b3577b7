//! S3-compatible object stores as a home for backups: where
//! `raftkv snapshot backup --s3` uploads and prunes, and where
//! `raftkv snapshot restore s3://BUCKET/KEY` downloads from.
//!
//! A backup is always saved (and checked) as a local file first, in a
//! staging directory, and only then uploaded: the object store never holds
//! a backup that did not pass the same checks as a restore, and an upload
//! that fails leaves nothing behind but an incomplete multipart upload
//! (which the store's lifecycle rule for incomplete uploads removes).
//!
//! Credentials come from the environment, as for every S3 tool:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`
//! (object_store's builder also reads `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! and the web-identity and container-credential variables). The HTTP
//! client is hyper with rustls on ring (`http.rs`), like every other
//! connection raftkv makes.

mod http;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The URL scheme of objects and prefixes in an S3-compatible store.
pub const SCHEME: &str = "s3://";
/// S3 refuses multipart parts smaller than this (except the last one).
const MIN_PART_MIB: u64 = 5;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;

/// How to reach the object store (the bucket and key come with the
/// `s3://` URL).
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// The S3 API's endpoint URL, for stores other than AWS (MinIO, Ceph,
    /// R2, ...); default: AWS's endpoint of the region.
    #[arg(long = "s3-endpoint", env = "RAFTKV_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The bucket's region (default: `AWS_REGION`, else us-east-1).
    #[arg(long = "s3-region", env = "RAFTKV_S3_REGION")]
    pub region: Option<String>,
    /// Address the bucket as a path of the endpoint
    /// (`https://host/bucket/key`) rather than as a host name
    /// (`https://bucket.host/key`); most self-hosted stores want this.
    #[arg(long = "s3-force-path-style", env = "RAFTKV_S3_FORCE_PATH_STYLE")]
    pub force_path_style: bool,
    /// Where a backup is written before its upload, or downloaded before
    /// its restore (default: the system's temporary directory).
    #[arg(long = "s3-staging-dir", env = "RAFTKV_S3_STAGING_DIR")]
    pub staging_dir: Option<PathBuf>,
    /// Files larger than this many MiB are uploaded in parts of this size.
    #[arg(long = "s3-part-size-mib", env = "RAFTKV_S3_PART_SIZE_MIB", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(MIN_PART_MIB..=5120))]
    pub part_size_mib: u64,
}

impl S3Args {
    /// The directory for local copies of backups.
    pub fn staging_dir(&self) -> PathBuf {
        self.staging_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    fn part_size(&self) -> usize {
        usize::try_from(self.part_size_mib.max(MIN_PART_MIB) << 20).unwrap_or(usize::MAX)
    }
}

/// A bucket and a key (an object) or key prefix (a "directory"), parsed
/// from `s3://BUCKET[/KEY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing '/'; empty for the bucket's root.
    pub key: String,
}

impl S3Url {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix(SCHEME) else {
            bail!("{url:?} is not an s3:// URL");
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules: 3-63 of lower-case letters, digits,
        // '.' and '-'.
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
        if !bucket_ok {
            bail!(
                "{url:?}: the bucket name must be 3 to 63 lower-case letters, digits, '.' or '-'"
            );
        }
        let key = key.trim_matches('/');
        if key.split('/').any(|part| part == "." || part == "..") {
            bail!("{url:?}: a key may not have '.' or '..' parts");
        }
        Ok(Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The object `name` under this prefix.
    pub fn child(&self, name: &str) -> Self {
        Self {
            bucket: self.bucket.clone(),
            key: if self.key.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", self.key)
            },
        }
    }

    /// The key's last part (an object's file name).
    pub fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or_default()
    }

    fn path(&self) -> ObjectPath {
        ObjectPath::from(self.key.as_str())
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{SCHEME}{}", self.bucket)
        } else {
            write!(f, "{SCHEME}{}/{}", self.bucket, self.key)
        }
    }
}

/// A connection to one bucket.
#[derive(Debug)]
pub struct Bucket {
    store: AmazonS3,
    name: String,
    part_size: usize,
}

impl Bucket {
    pub fn open(bucket: &str, args: &S3Args) -> anyhow::Result<Self> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_http_connector(http::HyperConnector)
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: Duration::from_secs(120),
                ..RetryConfig::default()
            });
        if let Some(region) = &args.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &args.endpoint {
            let endpoint = if args.force_path_style {
                endpoint.clone()
            } else {
                // object_store wants the bucket in a virtual-hosted-style
                // endpoint's host name; AWS's own endpoint it builds itself.
                virtual_hosted_endpoint(endpoint, bucket)?
            };
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        builder = builder.with_virtual_hosted_style_request(!args.force_path_style);
        let store = builder
            .build()
            .with_context(|| format!("cannot configure the S3 client for bucket {bucket}"))?;
        Ok(Self {
            store,
            name: bucket.to_string(),
            part_size: args.part_size(),
        })
    }

    /// Uploads the local file `from` as the object `to` (in parts when it
    /// is larger than a part).
    pub async fn upload(&self, from: &Path, to: &S3Url) -> anyhow::Result<()> {
        let mut file = tokio::fs::File::open(from)
            .await
            .with_context(|| format!("cannot open {}", from.display()))?;
        let len = file
            .metadata()
            .await
            .with_context(|| format!("cannot read {}", from.display()))?
            .len();
        if len <= self.part_size as u64 {
            let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or_default());
            file.read_to_end(&mut data)
                .await
                .with_context(|| format!("cannot read {}", from.display()))?;
            self.store
                .put(&to.path(), PutPayload::from(data))
                .await
                .with_context(|| format!("cannot upload {to}"))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&to.path())
            .await
            .with_context(|| format!("cannot start the multipart upload of {to}"))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let result = async {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .with_context(|| format!("cannot read {}", from.display()))?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .with_context(|| format!("cannot upload a part of {to}"))?;
                writer.write(&buf[..n]);
            }
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .with_context(|| format!("cannot complete the multipart upload of {to}"))?;
                Ok(())
            }
            Err(e) => {
                // Best effort: the store's lifecycle rule is the backstop.
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Downloads the object `from` into the local file `to` (through a
    /// `.part` file, synced, then renamed).
    pub async fn download(&self, from: &S3Url, to: &Path) -> anyhow::Result<()> {
        let part = crate::cli::snapshot::part_file(to);
        let result = async {
            let got = self
                .store
                .get(&from.path())
                .await
                .with_context(|| format!("cannot download {from}"))?;
            let mut out = tokio::fs::File::create(&part)
                .await
                .with_context(|| format!("cannot create {}", part.display()))?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.with_context(|| format!("cannot download {from}"))?;
                out.write_all(&chunk)
                    .await
                    .with_context(|| format!("cannot write {}", part.display()))?;
            }
            out.sync_all()
                .await
                .with_context(|| format!("cannot sync {}", part.display()))?;
            tokio::fs::rename(&part, to)
                .await
                .with_context(|| format!("cannot rename {} to {}", part.display(), to.display()))?;
            anyhow::Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result
    }

    /// The file names of the objects directly under `prefix`.
    pub async fn list(&self, prefix: &S3Url) -> anyhow::Result<Vec<String>> {
        let path = prefix.path();
        let listing = self
            .store
            .list_with_delimiter(Some(&path))
            .await
            .with_context(|| format!("cannot list {prefix}"))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect())
    }

    pub async fn delete(&self, object: &S3Url) -> anyhow::Result<()> {
        self.store
            .delete(&object.path())
            .await
            .with_context(|| format!("cannot delete {object}"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `scheme://bucket.host[:port][/path]` from `scheme://host[:port][/path]`.
fn virtual_hosted_endpoint(endpoint: &str, bucket: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(endpoint)
        .with_context(|| format!("--s3-endpoint {endpoint:?} is not a URL"))?;
    let Some(host) = url.host_str() else {
        bail!("--s3-endpoint {endpoint:?} has no host");
    };
    let host = format!("{bucket}.{host}");
    url.set_host(Some(&host))
        .with_context(|| format!("--s3-endpoint {endpoint:?}: {host} is not a host name"))?;
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_name_a_bucket_and_a_key() {
        let u = S3Url::parse("s3://backups/prod/kv/").unwrap();
        assert_eq!(u.bucket, "backups");
        assert_eq!(u.key, "prod/kv");
        let o = u.child("kv-20261201T030000Z.db");
        assert_eq!(o.to_string(), "s3://backups/prod/kv/kv-20261201T030000Z.db");
        assert_eq!(o.file_name(), "kv-20261201T030000Z.db");
        let root = S3Url::parse("s3://backups").unwrap();
        assert_eq!(root.key, "");
        assert_eq!(root.child("a.db").to_string(), "s3://backups/a.db");
        for bad in [
            "backups/x",
            "s3://",
            "s3://Upper/x",
            "s3://a/x",
            "s3://b_b_b/x",
            "s3://bucket/../x",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_virtual_hosted_endpoint_puts_the_bucket_in_the_host() {
        assert_eq!(
            virtual_hosted_endpoint("https://minio.example:9000", "b1").unwrap(),
            "https://b1.minio.example:9000"
        );
        assert!(virtual_hosted_endpoint("not a url", "b1").is_err());
    }
}
