//! The backup file: a state machine image wrapped so that it can be kept
//! on its own, checked end to end, and saved by `etcdctl snapshot save`.
//!
//! A backup is exactly what `Maintenance.Snapshot` streams, and a file is
//! those bytes as received. Layout, version 1 (integers little endian):
//!
//! ```text
//! image     the state machine image of `image.rs` ("RKVSNAP1", its frames,
//!           its trailer with a CRC-32): state record (revision, compacted
//!           revision, applied index and term), every version of every key
//!           down to the compaction point, the clients' last outcomes
//! padding   0..=511 zero bytes
//! footer    32 bytes: magic "RKVBAK" | version u16 | image length u64 |
//!           cluster id u64 | member id u64 (who produced it)
//! sha256    32 bytes: SHA-256 of every byte before it
//! ```
//!
//! The padding makes everything before the SHA-256 a whole number of
//! 512-byte blocks. That is etcd's own shape (a bbolt file, whose pages are
//! multiples of 512 bytes, followed by its SHA-256 as the stream's last
//! 32 bytes), and `etcdctl snapshot save` refuses a stream whose length is
//! not `512·k + 32`. A file of the wrong length is therefore also the
//! first sign of a truncated copy.
//!
//! Reading ([`read_backup`]) checks, in this order: the length, the footer
//! (magic, version, an image length that fits the file), the SHA-256 of the
//! whole file, the image's framing and CRC-32, every frame decodable, and
//! zero padding. Each failure names the file and what is wrong with it.
//!
//! A backup carries what the image carries: everything a follower needs to
//! replace its state machine (InstallSnapshot uses the same image), so a
//! table added to the state machine must be added to the image anyway for
//! replication's sake, and backups then carry it too; the test
//! `every_table_of_the_state_machine_travels_in_the_image` fails when a
//! table is added to `kv.redb` but not to the image.
//!
//! This is not etcd's bbolt format: etcd's tools cannot restore it, and
//! raftkv cannot restore etcd's.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use super::error::StoreError;
use super::image::{
    ClientFrame, FrameParser, KIND_CLIENT, KIND_LEASE, KIND_STATE, KIND_VERSION, LeaseFrame,
    VersionFrame, decode_state,
};
use super::kv_store::{KvState, StoredValue};
use super::snapshot::SnapshotReader;
use crate::raft::SnapshotMeta;

/// The backup format this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u16 = 1;
const FOOTER_MAGIC: &[u8; 6] = b"RKVBAK";
const FOOTER_BYTES: usize = 32;
/// What a backup's length is counted in (see the module doc).
pub const BACKUP_BLOCK: u64 = 512;
/// The length of the SHA-256 that ends a backup.
pub const SHA256_BYTES: usize = 32;
/// How much a reader reads at a time.
const READ_BYTES: usize = 1 << 20;

/// Why a backup file was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{file}: {op} failed: {source}")]
    Io {
        file: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{file}: is {size} bytes, too short to be a raftkv backup (truncated, or not a backup)"
    )]
    TooShort { file: PathBuf, size: u64 },
    #[error(
        "{file}: is truncated (or has bytes appended): its {size} bytes are not a whole number \
         of 512-byte blocks plus the 32-byte SHA-256, as every raftkv backup is"
    )]
    Truncated { file: PathBuf, size: u64 },
    #[error(
        "{file}: no raftkv backup footer before its last 32 bytes: not a raftkv backup \
         (etcd's bbolt snapshots cannot be restored by raftkv), or truncated"
    )]
    NotABackup { file: PathBuf },
    #[error(
        "{file}: backup format version {found} is unknown (this build reads version {supported})"
    )]
    UnknownVersion {
        file: PathBuf,
        found: u16,
        supported: u16,
    },
    #[error(
        "{file}: footer says the image is {image_bytes} bytes, which does not fit the file's {size} bytes: corrupt"
    )]
    BadFooter {
        file: PathBuf,
        image_bytes: u64,
        size: u64,
    },
    #[error(
        "{file}: corrupt: the SHA-256 of its contents is {actual}, its last 32 bytes say \
         {expected}"
    )]
    Checksum {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{file}: the state machine image inside is damaged: {source}")]
    Image {
        file: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("{file}: non-zero bytes in the padding after the image: corrupt")]
    Padding { file: PathBuf },
}

/// Who produced a backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupOrigin {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// A backup's bytes, streamed from a consistent image: the image's chunks,
/// then padding and footer, then the SHA-256 as a chunk of its own (as
/// etcd sends it).
pub struct BackupStream {
    reader: SnapshotReader,
    origin: BackupOrigin,
    sha: ring::digest::Context,
    image_bytes: u64,
    tail: Tail,
}

impl std::fmt::Debug for BackupStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupStream")
            .field("reader", &self.reader)
            .field("image_bytes", &self.image_bytes)
            .field("tail", &self.tail)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    Image,
    Footer,
    Sha,
    Done,
}

impl BackupStream {
    /// Wraps the image `reader` reads.
    pub fn new(reader: SnapshotReader, origin: BackupOrigin) -> Self {
        BackupStream {
            reader,
            origin,
            sha: ring::digest::Context::new(&ring::digest::SHA256),
            image_bytes: 0,
            tail: Tail::Image,
        }
    }

    /// The position of the image (the state machine's applied index).
    pub fn meta(&self) -> SnapshotMeta {
        self.reader.meta()
    }

    /// The store's revision in the backup.
    pub fn revision(&self) -> i64 {
        self.reader.revision()
    }

    /// How many bytes the backup has at least after what was returned so
    /// far (exact once the image is done: its length is known only then).
    pub fn remaining_at_least(&self) -> u64 {
        match self.tail {
            Tail::Image | Tail::Footer => (FOOTER_BYTES + SHA256_BYTES) as u64,
            Tail::Sha => SHA256_BYTES as u64,
            Tail::Done => 0,
        }
    }

    /// The next piece of the backup, `None` once all of it was returned.
    pub fn next_chunk(&mut self) -> Option<Result<Bytes, StoreError>> {
        loop {
            match self.tail {
                Tail::Image => match self.reader.next_chunk() {
                    Some(Ok(chunk)) => {
                        self.sha.update(&chunk);
                        self.image_bytes += chunk.len() as u64;
                        return Some(Ok(chunk));
                    }
                    Some(Err(e)) => {
                        self.tail = Tail::Done;
                        return Some(Err(e));
                    }
                    None => self.tail = Tail::Footer,
                },
                Tail::Footer => {
                    let tail = footer_and_padding(self.image_bytes, self.origin);
                    self.sha.update(&tail);
                    self.tail = Tail::Sha;
                    return Some(Ok(Bytes::from(tail)));
                }
                Tail::Sha => {
                    self.tail = Tail::Done;
                    let sha = self.sha.clone().finish();
                    return Some(Ok(Bytes::copy_from_slice(sha.as_ref())));
                }
                Tail::Done => return None,
            }
        }
    }
}

/// The padding after an image of `image_bytes` and the footer.
fn footer_and_padding(image_bytes: u64, origin: BackupOrigin) -> Vec<u8> {
    let used = (image_bytes + FOOTER_BYTES as u64) % BACKUP_BLOCK;
    let pad = ((BACKUP_BLOCK - used) % BACKUP_BLOCK) as usize;
    let mut out = vec![0u8; pad];
    out.extend_from_slice(FOOTER_MAGIC);
    out.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&image_bytes.to_le_bytes());
    out.extend_from_slice(&origin.cluster_id.to_le_bytes());
    out.extend_from_slice(&origin.member_id.to_le_bytes());
    out
}

/// What a backup holds, as `raftkv snapshot status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackupSummary {
    /// The store's revision when the backup was taken.
    pub revision: i64,
    /// Reads below this revision were compacted away before the backup.
    pub compact_revision: i64,
    /// Keys that exist at `revision`.
    pub total_keys: u64,
    /// Versions of keys (history, deletes included).
    pub total_versions: u64,
    /// Leases granted and not revoked.
    pub total_leases: u64,
    /// The whole file, in bytes.
    pub total_size: u64,
    /// The SHA-256 that ends the file, in hex.
    pub sha256: String,
    /// The image's own CRC-32 (its trailer's).
    pub hash: u32,
    pub applied_index: u64,
    pub applied_term: u64,
    pub format_version: u16,
    pub cluster_id: u64,
    pub member_id: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The footer's fields.
struct Footer {
    image_bytes: u64,
    origin: BackupOrigin,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Reads and checks a whole backup file, handing every byte of its image
/// to `on_image` in order; returns what it holds only once every check
/// passed (so a caller installing the image must not use it before).
pub fn read_backup(
    file: &Path,
    mut on_image: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<BackupSummary, BackupError> {
    let io = |op| {
        move |source| BackupError::Io {
            file: file.to_path_buf(),
            op,
            source,
        }
    };
    let mut f = std::fs::File::open(file).map_err(io("open"))?;
    let size = f.metadata().map_err(io("stat"))?.len();
    let minimum = (FOOTER_BYTES + SHA256_BYTES) as u64;
    if size < minimum {
        return Err(BackupError::TooShort {
            file: file.to_path_buf(),
            size,
        });
    }
    if size % BACKUP_BLOCK != SHA256_BYTES as u64 {
        return Err(BackupError::Truncated {
            file: file.to_path_buf(),
            size,
        });
    }
    let data_bytes = size - SHA256_BYTES as u64;
    let mut end = [0u8; FOOTER_BYTES + SHA256_BYTES];
    f.seek(SeekFrom::Start(data_bytes - FOOTER_BYTES as u64))
        .map_err(io("seek"))?;
    f.read_exact(&mut end).map_err(io("read"))?;
    let (footer, expected_sha) = end.split_at(FOOTER_BYTES);
    if &footer[..6] != FOOTER_MAGIC {
        return Err(BackupError::NotABackup {
            file: file.to_path_buf(),
        });
    }
    let version = u16::from_le_bytes([footer[6], footer[7]]);
    if version != BACKUP_FORMAT_VERSION {
        return Err(BackupError::UnknownVersion {
            file: file.to_path_buf(),
            found: version,
            supported: BACKUP_FORMAT_VERSION,
        });
    }
    let footer = Footer {
        image_bytes: le_u64(&footer[8..]),
        origin: BackupOrigin {
            cluster_id: le_u64(&footer[16..]),
            member_id: le_u64(&footer[24..]),
        },
    };
    let padded = data_bytes - FOOTER_BYTES as u64;
    if footer.image_bytes > padded || padded - footer.image_bytes >= BACKUP_BLOCK {
        return Err(BackupError::BadFooter {
            file: file.to_path_buf(),
            image_bytes: footer.image_bytes,
            size,
        });
    }

    f.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut summary = ImageSummary::default();
    // The first failure inside the image; reading goes on so that a
    // damaged file is reported as such (by its SHA-256) rather than by
    // whatever the damage made of a frame.
    let mut image_error: Option<StoreError> = None;
    let mut padding_ok = true;
    let mut at = 0u64;
    let mut buf = vec![0u8; READ_BYTES];
    while at < padded {
        let want = (padded - at).min(READ_BYTES as u64) as usize;
        f.read_exact(&mut buf[..want]).map_err(io("read"))?;
        let chunk = &buf[..want];
        sha.update(chunk);
        let image_part = (footer.image_bytes.saturating_sub(at) as usize).min(want);
        if image_error.is_none() && image_part > 0 {
            let part = &chunk[..image_part];
            if let Err(e) = summary.feed(part).and_then(|()| on_image(part)) {
                image_error = Some(e);
            }
        }
        padding_ok &= chunk[image_part..].iter().all(|b| *b == 0);
        at += want as u64;
    }
    sha.update(&end[..FOOTER_BYTES]);
    let actual = sha.finish();
    if actual.as_ref() != expected_sha {
        return Err(BackupError::Checksum {
            file: file.to_path_buf(),
            expected: hex(expected_sha),
            actual: hex(actual.as_ref()),
        });
    }
    let image = |source| BackupError::Image {
        file: file.to_path_buf(),
        source,
    };
    if let Some(e) = image_error {
        return Err(image(e));
    }
    let (state, crc) = summary.finish().map_err(image)?;
    if !padding_ok {
        return Err(BackupError::Padding {
            file: file.to_path_buf(),
        });
    }
    Ok(BackupSummary {
        revision: state.revision,
        compact_revision: state.compaction.compacted,
        total_keys: summary.keys,
        total_versions: summary.versions,
        total_leases: summary.leases,
        total_size: size,
        sha256: hex(expected_sha),
        hash: crc,
        applied_index: state.applied_index.get(),
        applied_term: state.applied_term.get(),
        format_version: version,
        cluster_id: footer.origin.cluster_id,
        member_id: footer.origin.member_id,
    })
}

/// Decodes every frame of an image, counting what it holds.
#[derive(Debug, Default)]
struct ImageSummary {
    parser: FrameParser,
    state: Option<KvState>,
    versions: u64,
    keys: u64,
    leases: u64,
    /// The key of the last version seen, and whether that version exists.
    last: Option<(Bytes, bool)>,
    crc: crc32fast::Hasher,
}

impl ImageSummary {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let ImageSummary {
            parser,
            state,
            versions,
            keys,
            leases,
            last,
            crc,
        } = self;
        parser.feed(chunk, |kind, frame, payload| {
            crc.update(frame);
            let malformed = |what| move |source| super::SnapshotError::Malformed { what, source };
            match kind {
                KIND_STATE if state.is_none() => *state = Some(decode_state(payload)?),
                KIND_VERSION => {
                    let f = VersionFrame::decode(payload).map_err(malformed("version"))?;
                    let v =
                        StoredValue::decode(f.version.as_ref()).map_err(malformed("version"))?;
                    *versions += 1;
                    if let Some((key, live)) = last.take()
                        && key != f.key
                        && live
                    {
                        *keys += 1;
                    }
                    *last = Some((f.key, !v.tombstone));
                }
                KIND_CLIENT => {
                    ClientFrame::decode(payload).map_err(malformed("client"))?;
                }
                super::image::KIND_AUTH => {
                    super::auth::AuthState::decode(payload)
                        .map_err(super::SnapshotError::BadAuth)?;
                }
                KIND_LEASE => {
                    let f = LeaseFrame::decode(payload).map_err(malformed("lease"))?;
                    super::lease::StoredLease::decode(f.lease.as_ref())
                        .map_err(malformed("lease"))?;
                    *leases += 1;
                }
                other => return Err(super::SnapshotError::UnknownKind(other).into()),
            }
            Ok(())
        })
    }

    /// The image's state record and the CRC-32 of its frames, once the
    /// whole image (trailer included) passed.
    fn finish(&mut self) -> Result<(KvState, u32), StoreError> {
        self.parser.complete()?;
        if let Some((_, true)) = self.last.take() {
            self.keys += 1;
        }
        let state = self
            .state
            .clone()
            .ok_or(super::SnapshotError::MissingState)?;
        Ok((state, self.crc.clone().finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryPayload, LogIndex, Term};
    use crate::storage::{Command, KvStore, Limits, Op};

    fn put(index: u64, key: &str, value: &str) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Command(
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
                .encode(),
            ),
        }
    }

    fn delete(index: u64, key: &str) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Command(
                Command {
                    request_id: None,
                    auth: None,
                    op: Op::DeleteRange {
                        key: Bytes::copy_from_slice(key.as_bytes()),
                        range_end: Bytes::new(),
                        prev_kv: false,
                    },
                }
                .encode(),
            ),
        }
    }

    /// A store with three keys (one rewritten) and one deleted key, and a
    /// backup of it in `dir/backup`.
    fn backup_of_a_store(dir: &Path) -> (PathBuf, KvStore) {
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let kv = KvStore::open(&dir.join("src"), Limits::default()).unwrap();
        kv.apply(&[
            put(1, "a", "1"),
            put(2, "b", "2"),
            put(3, "a", "3"),
            put(4, "gone", "x"),
            delete(5, "gone"),
            put(6, "c", &"v".repeat(3000)),
        ])
        .unwrap();
        let file = dir.join("backup");
        write(&kv, &file);
        (file, kv)
    }

    fn write(kv: &KvStore, file: &Path) {
        let origin = BackupOrigin {
            cluster_id: 7,
            member_id: 3,
        };
        let mut stream = BackupStream::new(kv.snapshot().unwrap(), origin);
        let mut bytes = Vec::new();
        let mut last = Bytes::new();
        while let Some(chunk) = stream.next_chunk() {
            last = chunk.unwrap();
            bytes.extend_from_slice(&last);
        }
        assert_eq!(
            last.len(),
            SHA256_BYTES,
            "the SHA-256 is a chunk of its own"
        );
        std::fs::write(file, bytes).unwrap();
    }

    fn read(file: &Path) -> Result<BackupSummary, BackupError> {
        read_backup(file, |_| Ok(()))
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_backup_is_512_byte_blocks_plus_its_sha256_as_etcdctl_expects() {
        let dir = tempdir();
        let (file, _) = backup_of_a_store(dir.path());
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.len() as u64 % BACKUP_BLOCK, SHA256_BYTES as u64);
        let (data, sha) = bytes.split_at(bytes.len() - SHA256_BYTES);
        assert_eq!(
            ring::digest::digest(&ring::digest::SHA256, data).as_ref(),
            sha
        );
        assert!(bytes.starts_with(b"RKVSNAP1"));
    }

    #[test]
    fn status_counts_live_keys_versions_and_names_the_revision() {
        let dir = tempdir();
        let (file, kv) = backup_of_a_store(dir.path());
        let s = read(&file).unwrap();
        assert_eq!(s.revision, kv.revision());
        assert_eq!(s.total_keys, 3, "a, b, c; not the deleted key");
        assert_eq!(s.total_versions, 6, "every put and the delete");
        assert_eq!(s.applied_index, 6);
        assert_eq!(s.total_size, std::fs::metadata(&file).unwrap().len());
        assert_eq!((s.cluster_id, s.member_id), (7, 3));
        assert_eq!(s.format_version, BACKUP_FORMAT_VERSION);
    }

    #[test]
    fn the_image_handed_out_is_the_image_the_store_wrote() {
        let dir = tempdir();
        let (file, kv) = backup_of_a_store(dir.path());
        let mut image = Vec::new();
        read_backup(&file, |b| {
            image.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        let mut reader = kv.snapshot().unwrap();
        let mut direct = Vec::new();
        while let Some(c) = reader.next_chunk() {
            direct.extend_from_slice(&c.unwrap());
        }
        assert_eq!(image, direct);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused_as_corrupt() {
        let dir = tempdir();
        let (file, _) = backup_of_a_store(dir.path());
        let good = std::fs::read(&file).unwrap();
        // In the image's head, its middle, the padding/footer region, and
        // the SHA-256 itself.
        for at in [3, good.len() / 2, good.len() - 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&file, &bad).unwrap();
            let e = read(&file).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(
                    e,
                    BackupError::Checksum { .. }
                        | BackupError::NotABackup { .. }
                        | BackupError::BadFooter { .. }
                ),
                "byte {at}: {msg}"
            );
            assert!(msg.contains(&file.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn a_truncated_file_is_refused_as_truncated() {
        let dir = tempdir();
        let (file, _) = backup_of_a_store(dir.path());
        let good = std::fs::read(&file).unwrap();
        for len in [good.len() - 1, good.len() - 100, good.len() / 2 + 7] {
            std::fs::write(&file, &good[..len]).unwrap();
            let e = read(&file).unwrap_err();
            assert!(matches!(e, BackupError::Truncated { .. }), "{len}: {e}");
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        std::fs::write(&file, &good[..10]).unwrap();
        assert!(matches!(
            read(&file).unwrap_err(),
            BackupError::TooShort { .. }
        ));
        // Cut by whole blocks: the length looks right, the footer is gone.
        std::fs::write(&file, &good[..good.len() - 512]).unwrap();
        let e = read(&file).unwrap_err();
        assert!(
            matches!(
                e,
                BackupError::NotABackup { .. }
                    | BackupError::BadFooter { .. }
                    | BackupError::Checksum { .. }
                    | BackupError::TooShort { .. }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_backup_is_refused_as_such() {
        let dir = tempdir();
        let file = dir.path().join("bbolt.db");
        std::fs::write(&file, vec![7u8; 4096 + 32]).unwrap();
        let e = read(&file).unwrap_err();
        assert!(matches!(e, BackupError::NotABackup { .. }), "{e}");
        assert!(e.to_string().contains("not a raftkv backup"), "{e}");
    }

    #[test]
    fn an_unknown_version_is_refused_by_number() {
        let dir = tempdir();
        let (file, _) = backup_of_a_store(dir.path());
        let mut bytes = std::fs::read(&file).unwrap();
        let footer = bytes.len() - SHA256_BYTES - FOOTER_BYTES;
        bytes[footer + 6] = 9;
        let n = bytes.len() - SHA256_BYTES;
        let sha = ring::digest::digest(&ring::digest::SHA256, &bytes[..n]);
        bytes[n..].copy_from_slice(sha.as_ref());
        std::fs::write(&file, &bytes).unwrap();
        let e = read(&file).unwrap_err();
        assert!(
            matches!(e, BackupError::UnknownVersion { found: 9, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_damaged_image_with_a_matching_sha256_is_still_refused() {
        // Someone rewrote the SHA-256 after the damage: the image's own
        // CRC-32 still catches it.
        let dir = tempdir();
        let (file, _) = backup_of_a_store(dir.path());
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[200] ^= 1;
        let n = bytes.len() - SHA256_BYTES;
        let sha = ring::digest::digest(&ring::digest::SHA256, &bytes[..n]);
        bytes[n..].copy_from_slice(sha.as_ref());
        std::fs::write(&file, &bytes).unwrap();
        let e = read(&file).unwrap_err();
        assert!(matches!(e, BackupError::Image { .. }), "{e}");
    }

    #[test]
    fn every_table_of_the_state_machine_travels_in_the_image() {
        use redb::{ReadableDatabase, TableHandle};
        // What the image carries (kv and lease_keys are rebuilt from
        // history by the installer). A table added to kv.redb must be
        // carried by the image (InstallSnapshot and backups alike) and
        // listed here.
        let carried = ["meta", "kv", "versions", "clients", "leases", "lease_keys"];
        let dir = tempdir();
        let (_, kv) = backup_of_a_store(dir.path());
        let backend = kv.backend();
        let txn = backend.db.begin_read().unwrap();
        for t in txn.list_tables().unwrap() {
            assert!(
                carried.contains(&t.name()),
                "table {:?} of kv.redb is not carried by snapshot images",
                t.name()
            );
        }
    }
}
