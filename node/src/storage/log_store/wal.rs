//! The log's files: a directory of segments, each a run of checksummed
//! records that are only ever appended.
//!
//! Why not a database: a Raft log is written at its end and read near its
//! end, and every append must be durable before it is acknowledged. A
//! B-tree commit rewrites several scattered pages per transaction before
//! its fsync; an append writes the new bytes, in place, into a file whose
//! length was fixed when it was created, so the fsync has nothing but those
//! bytes to flush. That fsync is on every write's critical path.
//!
//! The layout, in `raft-log/` in the data directory:
//! - segments `<seq>.wal` (`seq` in 16 hex digits), created at their full
//!   length (sparse) so that appends never change a file's size;
//! - each record is `len: u32 | crc: u32 | kind: u8 | payload`, little
//!   endian. `crc` is CRC-32 over kind, length and payload, seeded with the
//!   previous record's crc (the first record of a segment: with a seed drawn
//!   from its sequence number), so a record is valid only where it was
//!   written: stale bytes past a torn end never pass for a continuation;
//! - the first record of every segment is a checkpoint: the store's
//!   identity and the log's whole state (base snapshot meta, hard state,
//!   flags) when the segment was begun, and where the previous segment's
//!   records ended. A segment is renamed into place only once its
//!   checkpoint is durable, so every `.wal` file starts with one.
//!
//! Reading a segment stops at the first record that is all zeros (the
//! unwritten rest of the file) or does not check out (a write torn by a
//! crash). Only the newest segment may end torn: the store always begins a
//! new segment when it opens, and the checkpoint of every later segment
//! names where its predecessor's records end, so an older segment that
//! stops early lost records that were durable, and is refused as corrupt.

use std::fmt;
use std::path::{Path, PathBuf};

use prost::Message;
use redb::StorageBackend;

use super::super::disk::Disk;
use super::super::error::{DecodeError, StoreError};

/// The record header: length, checksum, kind.
pub(super) const HEADER: u64 = 9;
/// No record is larger; a header claiming more is a torn or foreign write.
const MAX_RECORD: u32 = 1 << 30;

/// What a record holds. The numbers are the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// The segment's first record: a [`Checkpoint`].
    Checkpoint = 1,
    /// A log entry (`codec::encode_entry`). It replaces every entry at or
    /// after its index.
    Entry = 2,
    /// The hard state (`codec::encode_hard_state`).
    HardState = 3,
    /// A snapshot received from the leader (`codec::encode_snapshot_meta`):
    /// the whole log before it is gone, and it is the new base.
    Install = 4,
    /// A local compaction (`codec::encode_snapshot_meta`): the entries up
    /// to its index are gone, and it is the new base.
    Compact = 5,
    /// Whether the node withholds its votes: one byte, 0 or 1.
    Withhold = 6,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Checkpoint,
            2 => Kind::Entry,
            3 => Kind::HardState,
            4 => Kind::Install,
            5 => Kind::Compact,
            6 => Kind::Withhold,
            _ => return None,
        })
    }
}

/// The first record of every segment.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Checkpoint {
    #[prost(uint64, tag = "1")]
    pub format_version: u64,
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "3")]
    pub node_id: u64,
    #[prost(uint64, tag = "4")]
    pub storage_id: u64,
    /// This segment's sequence number (as in its file name).
    #[prost(uint64, tag = "5")]
    pub seq: u64,
    /// Where the previous segment's records end; 0 for a first segment.
    #[prost(uint64, tag = "6")]
    pub prev_end: u64,
    /// `codec::encode_snapshot_meta` of the base.
    #[prost(bytes = "vec", tag = "7")]
    pub snapshot_meta: Vec<u8>,
    /// `codec::encode_hard_state`.
    #[prost(bytes = "vec", tag = "8")]
    pub hard_state: Vec<u8>,
    #[prost(bool, tag = "9")]
    pub has_state: bool,
    #[prost(bool, tag = "10")]
    pub withhold_votes: bool,
}

/// The file name of segment `seq`.
pub(super) fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// The sequence number in a segment's file name, if it is one.
pub(super) fn segment_seq(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn seed(seq: u64) -> u32 {
    crc32fast::hash(&seq.to_le_bytes())
}

fn checksum(prev: u32, kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(&[kind]);
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Records encoded for one write, continuing a chain of checksums.
pub(super) struct Batch {
    buf: Vec<u8>,
    crc: u32,
    /// Where each record's payload starts in `buf`, and its length.
    payloads: Vec<(u64, u32)>,
}

impl Batch {
    pub(super) fn new(prev_crc: u32) -> Batch {
        Batch {
            buf: Vec::new(),
            crc: prev_crc,
            payloads: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, kind: Kind, payload: &[u8]) {
        let crc = checksum(self.crc, kind as u8, payload);
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf.push(kind as u8);
        self.payloads
            .push((self.buf.len() as u64, payload.len() as u32));
        self.buf.extend_from_slice(payload);
        self.crc = crc;
    }

    pub(super) fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The checksum the next record continues from.
    pub(super) fn crc(&self) -> u32 {
        self.crc
    }

    /// Each record's payload: offset in the batch, and length.
    pub(super) fn payloads(&self) -> &[(u64, u32)] {
        &self.payloads
    }
}

/// The size on disk of a record with `payload_len` bytes of payload.
pub(super) fn record_size(payload_len: usize) -> u64 {
    HEADER + payload_len as u64
}

/// One open segment file. Closed (for the simulated disk's bookkeeping)
/// when the last reader or writer lets go of it.
pub(super) struct SegmentFile {
    pub seq: u64,
    pub path: PathBuf,
    file: Box<dyn StorageBackend>,
}

impl fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        // Nothing to do about a failure here: the file is no longer used.
        let _ = self.file.close();
    }
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        file: path.to_path_buf(),
        op,
        source,
    }
}

impl SegmentFile {
    /// Opens an existing segment.
    pub(super) fn open(disk: &Disk, dir: &Path, seq: u64) -> Result<SegmentFile, StoreError> {
        let path = dir.join(segment_name(seq));
        let file = disk.file(&path, false).map_err(io(&path, "open"))?;
        Ok(SegmentFile { seq, path, file })
    }

    /// Creates segment `seq` at `len` bytes, holding only `checkpoint`,
    /// durably: written under a temporary name, synced, then renamed into
    /// place and the directory synced.
    pub(super) fn create(
        disk: &Disk,
        dir: &Path,
        seq: u64,
        len: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(SegmentFile, u64, u32), StoreError> {
        let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
        let path = dir.join(segment_name(seq));
        let file = disk.file(&tmp, true).map_err(io(&tmp, "create"))?;
        let mut batch = Batch::new(seed(seq));
        batch.push(Kind::Checkpoint, &checkpoint.encode_to_vec());
        file.set_len(0).map_err(io(&tmp, "truncate"))?;
        file.set_len(len.max(batch.len()))
            .map_err(io(&tmp, "preallocate"))?;
        file.write(0, batch.bytes()).map_err(io(&tmp, "write"))?;
        file.sync_data().map_err(io(&tmp, "sync"))?;
        std::fs::rename(&tmp, &path).map_err(io(&path, "rename into place"))?;
        super::super::sync_dir(dir)?;
        let segment = SegmentFile {
            seq,
            path: path.clone(),
            file,
        };
        Ok((segment, batch.len(), batch.crc()))
    }

    pub(super) fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write(offset, bytes)
            .map_err(io(&self.path, "append"))
    }

    pub(super) fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io(&self.path, "sync"))
    }

    pub(super) fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![0; len as usize];
        self.file
            .read(offset, &mut out)
            .map_err(io(&self.path, "read"))?;
        Ok(out)
    }

    /// The segment's bytes up to somewhat past its last valid record: read
    /// in growing pieces, not the whole preallocated file, so that opening
    /// a log reads about what it holds.
    fn read_records(&self) -> Result<Vec<u8>, StoreError> {
        let len = self.file.len().map_err(io(&self.path, "stat"))?;
        let mut bytes = Vec::new();
        let mut piece = 1u64 << 20;
        loop {
            let from = bytes.len() as u64;
            let n = piece.min(len - from);
            bytes.extend_from_slice(&self.read(from, n)?);
            let (end, _, _) = scan(&bytes, seed(self.seq), |_| ());
            if bytes.len() as u64 == len || !runs_past(&bytes[end as usize..]) {
                return Ok(bytes);
            }
            piece = piece.saturating_mul(2);
        }
    }
}

/// One record read back from a segment.
pub(super) struct Record<'a> {
    pub kind: Kind,
    /// Where the payload starts in the segment.
    pub offset: u64,
    pub payload: &'a [u8],
}

/// A segment's records, as far as they check out.
pub(super) struct Scanned {
    pub file: SegmentFile,
    pub bytes: Vec<u8>,
    pub checkpoint: Checkpoint,
    /// Where the valid records end.
    pub end: u64,
    /// Whether something other than zeros follows the last valid record:
    /// a write torn by a crash.
    pub torn: bool,
}

impl Scanned {
    /// Reads segment `seq` and checks its checkpoint.
    pub(super) fn read(disk: &Disk, dir: &Path, seq: u64) -> Result<Scanned, StoreError> {
        let file = SegmentFile::open(disk, dir, seq)?;
        let bytes = file.read_records()?;
        let mut first = None;
        let (end, _, torn) = scan(&bytes, seed(seq), |r| {
            if first.is_none() {
                first = Some((r.kind, r.payload.to_vec()));
            }
        });
        let corrupt = |what, field| StoreError::Corrupt {
            file: file.path.clone(),
            what,
            source: DecodeError::Missing { what, field },
        };
        let checkpoint = match first {
            Some((Kind::Checkpoint, payload)) => {
                Checkpoint::decode(payload.as_slice()).map_err(|source| StoreError::Corrupt {
                    file: file.path.clone(),
                    what: "segment checkpoint",
                    source: DecodeError::Prost {
                        what: "segment checkpoint",
                        source,
                    },
                })?
            }
            _ => return Err(corrupt("log segment", "checkpoint record")),
        };
        if checkpoint.seq != seq {
            return Err(StoreError::Corrupt {
                file: file.path.clone(),
                what: "segment checkpoint",
                source: DecodeError::Invalid {
                    what: "segment checkpoint",
                    field: "sequence number (not the file's)",
                    value: checkpoint.seq as i64,
                },
            });
        }
        Ok(Scanned {
            file,
            bytes,
            checkpoint,
            end,
            torn,
        })
    }
}

/// The records of a segment's `bytes` after its checkpoint, in order, as
/// far as they check out.
pub(super) fn records(
    bytes: &[u8],
    seq: u64,
    mut each: impl FnMut(Record<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut result = Ok(());
    let mut first = true;
    scan(bytes, seed(seq), |r| {
        if std::mem::take(&mut first) || result.is_err() {
            return;
        }
        result = each(r);
    });
    result
}

/// Whether the record that starts `rest` (where a scan stopped) may be
/// cut off by the end of what was read, rather than invalid.
fn runs_past(rest: &[u8]) -> bool {
    let Some(header) = rest.get(..HEADER as usize) else {
        return true;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    len <= MAX_RECORD && HEADER + u64::from(len) > rest.len() as u64
}

/// Walks the valid records of a segment's bytes; returns where they end,
/// the checksum to continue from, and whether non-zero bytes follow.
fn scan(bytes: &[u8], seed: u32, mut each: impl FnMut(Record<'_>)) -> (u64, u32, bool) {
    let mut at = 0usize;
    let mut crc = seed;
    loop {
        let rest = &bytes[at..];
        let Some(header) = rest.get(..HEADER as usize) else {
            return (at as u64, crc, rest.iter().any(|&b| b != 0));
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let kind = Kind::from_byte(header[8]);
        let payload = rest
            .get(HEADER as usize..)
            .and_then(|p| p.get(..len as usize));
        let valid = match (kind, payload) {
            (Some(kind), Some(payload)) if len <= MAX_RECORD => {
                (checksum(crc, kind as u8, payload) == stored).then_some((kind, payload))
            }
            _ => None,
        };
        let Some((kind, payload)) = valid else {
            return (at as u64, crc, rest.iter().any(|&b| b != 0));
        };
        each(Record {
            kind,
            offset: (at as u64) + HEADER,
            payload,
        });
        crc = stored;
        at += HEADER as usize + len as usize;
    }
}

/// The segments in `dir`, oldest first; removes leftovers of segments whose
/// creation a crash interrupted (they never held anything but a
/// checkpoint that was not yet in place).
pub(super) fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io(dir, "list"))? {
        let item = item.map_err(io(dir, "list"))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = segment_seq(name) {
            seqs.push(seq);
        } else if name.ends_with(".wal.tmp") {
            let path = item.path();
            std::fs::remove_file(&path).map_err(io(&path, "remove"))?;
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(bytes: &[u8], seed: u32) -> Vec<(Kind, Vec<u8>)> {
        let mut out = Vec::new();
        scan(bytes, seed, |r| out.push((r.kind, r.payload.to_vec())));
        out
    }

    #[test]
    fn records_read_back_and_stop_at_zeros() {
        let mut b = Batch::new(7);
        b.push(Kind::Entry, b"one");
        b.push(Kind::HardState, b"");
        let mut bytes = b.bytes().to_vec();
        bytes.resize(bytes.len() + 100, 0);
        assert_eq!(
            records(&bytes, 7),
            vec![(Kind::Entry, b"one".to_vec()), (Kind::HardState, vec![])]
        );
        let (end, crc, torn) = scan(&bytes, 7, |_| ());
        assert_eq!((end, crc, torn), (b.len(), b.crc(), false));
    }

    #[test]
    fn a_damaged_record_ends_the_segment_and_is_reported_torn() {
        let mut b = Batch::new(7);
        b.push(Kind::Entry, b"one");
        b.push(Kind::Entry, b"two");
        let mut bytes = b.bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(records(&bytes, 7), vec![(Kind::Entry, b"one".to_vec())]);
        assert!(scan(&bytes, 7, |_| ()).2);
    }

    #[test]
    fn a_record_from_another_chain_does_not_continue_this_one() {
        // The same record, written after a different predecessor (as a
        // stale record past a torn end would be), does not check out.
        let mut a = Batch::new(7);
        a.push(Kind::Entry, b"x");
        let mut b = Batch::new(7);
        b.push(Kind::Entry, b"y");
        b.push(Kind::Entry, b"z");
        let mut bytes = a.bytes().to_vec();
        bytes.extend_from_slice(&b.bytes()[b.payloads()[1].0 as usize - HEADER as usize..]);
        assert_eq!(records(&bytes, 7), vec![(Kind::Entry, b"x".to_vec())]);
        assert!(
            records(a.bytes(), 8).is_empty(),
            "the seed is part of the chain"
        );
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_seq(&segment_name(0x2a)), Some(0x2a));
        assert_eq!(segment_seq("2a.wal"), None);
        assert_eq!(segment_seq("000000000000002a.wal.tmp"), None);
    }
}
