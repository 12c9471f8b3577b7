//! One watch of a stream: what it watches, how far it has been sent, and
//! how its changes become etcd events and responses.

use bytes::Bytes;
use prost::Message;

use super::super::convert::key_value;
use super::super::proto::etcdserverpb::{self as pb, watch_create_request::FilterType};
use super::super::proto::mvccpb;
use crate::storage::{Change, ChangeKind, in_range};

/// A response with fragmentation asked for is split when its events take
/// more than this (etcd splits at its request size limit, 1.5 MiB).
pub(crate) const FRAGMENT_BYTES: usize = 1536 * 1024;

/// etcd's answer to a watch range whose end is not after its start.
pub(crate) const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's answer to a watch id already in use on the stream.
pub(crate) const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// A watch's parameters and position.
#[derive(Clone, Debug)]
pub(crate) struct Watcher {
    pub id: i64,
    /// The keys, as an etcd range (`range_end` empty: `key` alone; `"\0"`:
    /// every key from `key` on).
    pub key: Bytes,
    pub range_end: Bytes,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// The next revision to send: every change below it was sent.
    pub next: i64,
    /// Whether the watch follows the feed; `false`: it must read history
    /// (it starts in the past, or missed announcements).
    pub synced: bool,
    /// Whether anything was sent since the last progress tick.
    pub sent_since_tick: bool,
}

impl Watcher {
    /// A watch from a create request, normalised as etcd does: an empty key
    /// is `"\0"` (the smallest key), and the range must not be empty.
    /// `start` is the first revision to send.
    pub(crate) fn new(id: i64, req: &pb::WatchCreateRequest, start: i64) -> Result<Self, String> {
        let key = if req.key.is_empty() {
            Bytes::from_static(&[0])
        } else {
            req.key.clone()
        };
        let range_end = req.range_end.clone();
        if !range_end.is_empty() && range_end.as_ref() != [0] && key >= range_end {
            return Err(EMPTY_RANGE.into());
        }
        let has = |f: FilterType| req.filters.contains(&(f as i32));
        Ok(Watcher {
            id,
            key,
            range_end,
            no_put: has(FilterType::Noput),
            no_delete: has(FilterType::Nodelete),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            next: start,
            synced: false,
            sent_since_tick: false,
        })
    }

    /// Whether the watch wants `change` (its key, its kind, not yet sent).
    pub(crate) fn wants(&self, change: &Change) -> bool {
        change.revision() >= self.next
            && in_range(&change.kv.key, &self.key, &self.range_end)
            && match change.kind {
                ChangeKind::Put => !self.no_put,
                ChangeKind::Delete => !self.no_delete,
            }
    }

    /// The event `change` is sent as.
    pub(crate) fn event(&self, change: &Change) -> mvccpb::Event {
        let kind = match change.kind {
            ChangeKind::Put => mvccpb::event::EventType::Put,
            ChangeKind::Delete => mvccpb::event::EventType::Delete,
        };
        mvccpb::Event {
            r#type: kind as i32,
            kv: Some(key_value(change.kv.clone())),
            prev_kv: if self.prev_kv {
                change.prev.clone().map(key_value)
            } else {
                None
            },
        }
    }

    /// The responses that carry `events`: one, or with fragmentation on and
    /// more than [`FRAGMENT_BYTES`] of events, several, each but the last
    /// marked as a fragment.
    pub(crate) fn responses(
        &self,
        header: pb::ResponseHeader,
        events: Vec<mvccpb::Event>,
    ) -> Vec<pb::WatchResponse> {
        let response = |events: Vec<mvccpb::Event>, fragment: bool| pb::WatchResponse {
            header: Some(header),
            watch_id: self.id,
            events,
            fragment,
            ..Default::default()
        };
        if !self.fragment {
            return vec![response(events, false)];
        }
        let mut out = Vec::new();
        let mut part = Vec::new();
        let mut size = 0;
        for e in events {
            let len = e.encoded_len();
            if !part.is_empty() && size + len > FRAGMENT_BYTES {
                out.push(response(std::mem::take(&mut part), true));
                size = 0;
            }
            size += len;
            part.push(e);
        }
        out.push(response(part, false));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::KeyValue;

    fn put(key: &str, rev: i64, size: usize) -> Change {
        Change {
            kind: ChangeKind::Put,
            kv: KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(vec![b'v'; size]),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: 0,
            },
            prev: None,
        }
    }

    fn create(key: &str, range_end: &str) -> pb::WatchCreateRequest {
        pb::WatchCreateRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(range_end.as_bytes()),
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_range_is_refused_like_etcd() {
        assert_eq!(
            Watcher::new(0, &create("b", "a"), 1).unwrap_err(),
            EMPTY_RANGE
        );
        assert_eq!(
            Watcher::new(0, &create("a", "a"), 1).unwrap_err(),
            EMPTY_RANGE
        );
        // "\0" means every key from the start on.
        assert!(Watcher::new(0, &create("b", "\0"), 1).is_ok());
        // An empty key is the smallest key.
        let w = Watcher::new(0, &create("", "\0"), 1).unwrap();
        assert!(w.wants(&put("a", 1, 1)));
    }

    #[test]
    fn filters_drop_their_kind_and_sent_revisions_are_skipped() {
        let mut req = create("a", "b");
        req.filters = vec![FilterType::Noput as i32];
        let w = Watcher::new(0, &req, 5).unwrap();
        assert!(!w.wants(&put("a1", 6, 1)));
        let del = Change {
            kind: ChangeKind::Delete,
            ..put("a1", 6, 0)
        };
        assert!(w.wants(&del));
        assert!(!w.wants(&Change {
            kind: ChangeKind::Delete,
            ..put("a1", 4, 0)
        }));
        assert!(!w.wants(&Change {
            kind: ChangeKind::Delete,
            ..put("b", 6, 0)
        }));
    }

    #[test]
    fn large_responses_are_fragmented_only_when_asked() {
        let mut req = create("a", "\0");
        let events = |w: &Watcher| {
            (0..4)
                .map(|i| w.event(&put("a", 2 + i, FRAGMENT_BYTES / 2)))
                .collect::<Vec<_>>()
        };
        let w = Watcher::new(1, &req, 1).unwrap();
        let whole = w.responses(pb::ResponseHeader::default(), events(&w));
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].events.len(), 4);
        req.fragment = true;
        let w = Watcher::new(1, &req, 1).unwrap();
        let parts = w.responses(pb::ResponseHeader::default(), events(&w));
        assert!(parts.len() > 1, "{}", parts.len());
        assert!(parts[..parts.len() - 1].iter().all(|r| r.fragment));
        assert!(!parts[parts.len() - 1].fragment);
        assert_eq!(parts.iter().map(|r| r.events.len()).sum::<usize>(), 4);
    }
}
