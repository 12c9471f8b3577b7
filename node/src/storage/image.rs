//! The snapshot image format, and reading one frame by frame.
//!
//! An image is self-describing (little endian):
//!
//! ```text
//! magic "RKVSNAP1"
//! frame*   = len: u32 | kind: u8 | payload (len bytes)
//!   kind 1 = state record (applied index/term, revision, membership,
//!            compaction), first
//!   kind 3 = one client's last outcome (prost: client id, record)
//!   kind 4 = trailer (prost: frame count, crc32 of every byte before it), last
//!   kind 5 = one version of a key (prost: key, revision, stored version),
//!            in key then revision order
//!   kind 6 = one lease (prost: id, stored lease); the keys attached to it
//!            are not sent: each key's latest version names its lease
//!   kind 7 = the auth store (users, roles, permissions, auth flag; see
//!            `auth.rs`), at most once, right after the state record
//! ```
//!
//! An image of a store that never used auth has no kind 7 frame, so that it
//! stays readable by builds from before auth existed; an image without one
//! installs an empty auth store (auth disabled).
//!
//! Images of state format 2 carry history (kind 5) instead of the latest
//! values (kind 2, format 1): the installer rebuilds the latest value of
//! every key from its last version. A format 1 image is refused, by the
//! check and the installer alike. File format 3 (history stored by
//! revision) left images as they were: its images still say format 2, and
//! it installs images that say 2 or 3.
//!
//! [`FrameParser`] splits a stream of chunks (cut anywhere) into frames and
//! checks the magic, frame sizes, the checksum and the frame count; the
//! installer (`snapshot.rs`) writes what it yields into a staging database.
//! [`ImageCheck`] runs the same parser and decodes every frame without
//! writing anything: a node checks an image while it receives it, so that a
//! garbage or truncated stream is refused at the door instead of reaching
//! the consensus core.

use bytes::Bytes;
use prost::Message;

use super::error::StoreError;
use super::kv_store::KvState;
use crate::raft::SnapshotMeta;

pub(super) const MAGIC: &[u8; 8] = b"RKVSNAP1";
pub(super) const KIND_STATE: u8 = 1;
pub(super) const KIND_CLIENT: u8 = 3;
pub(super) const KIND_TRAILER: u8 = 4;
pub(super) const KIND_VERSION: u8 = 5;
pub(super) const KIND_LEASE: u8 = 6;
pub(super) const KIND_AUTH: u8 = 7;
/// The size a chunk grows to before it is handed out.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// The largest frame an installer accepts (a key + value at the default
/// limits is far below this); bounds memory on malformed input.
pub(super) const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Why an image could not be read or installed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("image does not start with the snapshot magic")]
    BadMagic,
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {what} frame: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("malformed auth frame: {0}")]
    BadAuth(#[source] super::error::DecodeError),
    #[error("image does not start with a state record")]
    MissingState,
    #[error("image format version {0} is unknown")]
    UnknownFormat(u64),
    #[error("checksum mismatch (image says {expected:#010x}, received {actual:#010x})")]
    Checksum { expected: u32, actual: u32 },
    #[error("frame count mismatch (image says {expected}, received {actual})")]
    FrameCount { expected: u64, actual: u64 },
    #[error("data after the trailer")]
    TrailingData,
    #[error("image is incomplete (no trailer received)")]
    Incomplete,
    #[error("image is larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("image is at {got}, its header said {expected}")]
    WrongPosition { expected: String, got: String },
    #[error("image's configuration has no voter")]
    NoVoters,
    #[error("malformed state record: {0}")]
    BadState(#[source] super::error::DecodeError),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct VersionFrame {
    #[prost(bytes = "bytes", tag = "1")]
    pub(super) key: Bytes,
    #[prost(int64, tag = "2")]
    pub(super) revision: i64,
    /// A `StoredValue` as history holds it.
    #[prost(bytes = "bytes", tag = "3")]
    pub(super) version: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LeaseFrame {
    #[prost(int64, tag = "1")]
    pub(super) id: i64,
    /// A `StoredLease`.
    #[prost(bytes = "bytes", tag = "2")]
    pub(super) lease: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ClientFrame {
    #[prost(uint64, tag = "1")]
    pub(super) client_id: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub(super) record: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Trailer {
    #[prost(uint64, tag = "1")]
    pub(super) frames: u64,
    #[prost(uint32, tag = "2")]
    pub(super) crc32: u32,
}

pub(super) fn push_frame(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// Splits an image into frames and verifies its framing and trailer.
#[derive(Debug, Default)]
pub(super) struct FrameParser {
    buf: Vec<u8>,
    magic_seen: bool,
    crc: crc32fast::Hasher,
    frames: u64,
    done: bool,
    state_seen: bool,
}

impl FrameParser {
    /// Feeds the next chunk; `on_frame(kind, whole frame, payload)` is
    /// called for every complete frame but the trailer, in order.
    pub(super) fn feed(
        &mut self,
        chunk: &[u8],
        mut on_frame: impl FnMut(u8, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.done && !chunk.is_empty() {
            return Err(SnapshotError::TrailingData.into());
        }
        self.buf.extend_from_slice(chunk);
        if !self.magic_seen {
            let n = self.buf.len().min(MAGIC.len());
            if self.buf[..n] != MAGIC[..n] {
                return Err(SnapshotError::BadMagic.into());
            }
            if n < MAGIC.len() {
                return Ok(());
            }
            self.crc.update(MAGIC);
            self.buf.drain(..MAGIC.len());
            self.magic_seen = true;
        }
        let buf = std::mem::take(&mut self.buf);
        let consumed = self.frames_in(&buf, &mut on_frame);
        self.buf = buf;
        self.buf.drain(..consumed?);
        Ok(())
    }

    /// Handles the complete frames at the head of `buf`; returns how many
    /// bytes they took.
    fn frames_in(
        &mut self,
        buf: &[u8],
        on_frame: &mut impl FnMut(u8, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let mut at = 0;
        while buf.len() - at >= 5 {
            let mut len = [0u8; 4];
            len.copy_from_slice(&buf[at..at + 4]);
            let len = u32::from_le_bytes(len) as usize;
            if len > MAX_FRAME {
                return Err(SnapshotError::FrameTooLarge(len).into());
            }
            if buf.len() - at < 5 + len {
                break;
            }
            let kind = buf[at + 4];
            let frame = &buf[at..at + 5 + len];
            if kind == KIND_TRAILER {
                self.check_trailer(&frame[5..])?;
            } else {
                self.crc.update(frame);
                self.frames += 1;
                if !self.state_seen && kind != KIND_STATE {
                    return Err(SnapshotError::MissingState.into());
                }
                self.state_seen = true;
                on_frame(kind, frame, &frame[5..])?;
            }
            at += 5 + len;
            if self.done && at < buf.len() {
                return Err(SnapshotError::TrailingData.into());
            }
        }
        Ok(at)
    }

    fn check_trailer(&mut self, payload: &[u8]) -> Result<(), SnapshotError> {
        let t = Trailer::decode(payload).map_err(|source| SnapshotError::Malformed {
            what: "trailer",
            source,
        })?;
        let actual = self.crc.clone().finalize();
        if t.crc32 != actual {
            return Err(SnapshotError::Checksum {
                expected: t.crc32,
                actual,
            });
        }
        if t.frames != self.frames {
            return Err(SnapshotError::FrameCount {
                expected: t.frames,
                actual: self.frames,
            });
        }
        self.done = true;
        Ok(())
    }

    /// Whether the whole image, trailer included, has been fed and nothing
    /// is left over.
    pub(super) fn complete(&self) -> Result<(), SnapshotError> {
        if !self.done || !self.buf.is_empty() {
            return Err(SnapshotError::Incomplete);
        }
        if !self.state_seen {
            return Err(SnapshotError::MissingState);
        }
        Ok(())
    }

    pub(super) fn frames(&self) -> u64 {
        self.frames
    }
}

/// Decodes the state record at the head of an image.
pub(super) fn decode_state(payload: &[u8]) -> Result<KvState, StoreError> {
    match KvState::decode_image(payload) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(v)) => Err(SnapshotError::UnknownFormat(v).into()),
        Err(source) => Err(SnapshotError::BadState(source).into()),
    }
}

/// Checks an image as it streams in, without storing anything: framing,
/// checksum, every frame decodable, a size bound, and a configuration with
/// at least one voter. [`ImageCheck::finish`] returns the image's position.
#[derive(Debug)]
pub struct ImageCheck {
    parser: FrameParser,
    max_bytes: u64,
    seen_bytes: u64,
    state: Option<KvState>,
}

impl ImageCheck {
    /// Starts checking an image that may be at most `max_bytes` long.
    pub fn new(max_bytes: u64) -> Self {
        ImageCheck {
            parser: FrameParser::default(),
            max_bytes,
            seen_bytes: 0,
            state: None,
        }
    }

    /// Checks the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.seen_bytes = self.seen_bytes.saturating_add(chunk.len() as u64);
        if self.seen_bytes > self.max_bytes {
            return Err(SnapshotError::TooLarge(self.max_bytes).into());
        }
        let state = &mut self.state;
        self.parser.feed(chunk, |kind, _, payload| {
            let malformed = |what| move |source| SnapshotError::Malformed { what, source };
            match kind {
                KIND_STATE if state.is_none() => {
                    let s = decode_state(payload)?;
                    if s.membership.voter_count() == 0 {
                        return Err(SnapshotError::NoVoters.into());
                    }
                    *state = Some(s);
                }
                KIND_VERSION => {
                    let f = VersionFrame::decode(payload).map_err(malformed("version"))?;
                    super::kv_store::StoredValue::decode(f.version.as_ref())
                        .map_err(malformed("version"))?;
                }
                KIND_CLIENT => {
                    ClientFrame::decode(payload).map_err(malformed("client"))?;
                }
                KIND_LEASE => {
                    let f = LeaseFrame::decode(payload).map_err(malformed("lease"))?;
                    super::lease::StoredLease::decode(f.lease.as_ref())
                        .map_err(malformed("lease"))?;
                }
                KIND_AUTH => {
                    super::auth::AuthState::decode(payload).map_err(SnapshotError::BadAuth)?;
                }
                other => return Err(SnapshotError::UnknownKind(other).into()),
            }
            Ok(())
        })
    }

    /// The image's position and configuration, once the whole image passed.
    pub fn finish(self) -> Result<SnapshotMeta, StoreError> {
        self.parser.complete()?;
        let state = self.state.ok_or(SnapshotError::MissingState)?;
        Ok(state.meta())
    }
}
