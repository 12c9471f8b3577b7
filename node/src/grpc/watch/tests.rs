//! The Watch service over real gRPC, in front of [`FakeBackend`] (the real
//! state machine without Raft): history replay then live events, a slow
//! client that lags behind the feed, compaction, filters, prev_kv, cancel
//! and progress.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::super::fake_backend::{CLUSTER_ID, FakeBackend, MEMBER_ID, TERM};
use super::super::proto::etcdserverpb::{
    self as pb, kv_client::KvClient, watch_client::WatchClient, watch_create_request::FilterType,
    watch_request::RequestUnion,
};
use super::super::proto::mvccpb::event::EventType;
use crate::metrics::Metrics;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    backend: FakeBackend,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    async fn start() -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = FakeBackend::new();
        let metrics = Arc::new(Metrics::new().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(super::super::serve_with_shutdown(
            listener,
            None,
            backend.clone(),
            Some(metrics.clone()),
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            addr,
            backend,
            metrics,
            stop: Some(stop),
            server,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            // A small window, so that a client that does not read holds
            // the server up soon (the lag test).
            .initial_stream_window_size(Some(65_535))
            .initial_connection_window_size(Some(65_535))
            .connect()
            .await
            .unwrap()
    }

    async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    async fn watch(&self) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let responses = WatchClient::new(self.channel().await)
            .watch(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, responses }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap().unwrap();
    }
}

/// One Watch call from the client's side.
struct Stream {
    tx: mpsc::Sender<pb::WatchRequest>,
    responses: Streaming<pb::WatchResponse>,
}

impl Stream {
    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(pb::WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    async fn create(&self, req: pb::WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(req)).await;
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(PATIENCE, self.responses.message())
            .await
            .expect("a watch response in time")
            .unwrap()
            .expect("the stream is open")
    }

    /// Creates a watch and returns its id (from the created response).
    async fn created(&mut self, req: pb::WatchCreateRequest) -> i64 {
        self.create(req).await;
        let r = self.next().await;
        assert!(r.created && !r.canceled, "{r:?}");
        r.watch_id
    }

    /// Events until `n` have arrived, checking they are for `id`.
    async fn events(&mut self, id: i64, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = self.next().await;
            assert_eq!(r.watch_id, id, "{r:?}");
            assert!(!r.canceled, "{r:?}");
            out.extend(r.events.into_iter().map(Event::from));
        }
        assert_eq!(out.len(), n, "{out:?}");
        out
    }
}

/// An event, flattened for comparisons.
#[derive(Debug, PartialEq, Eq)]
struct Event {
    kind: EventType,
    key: String,
    value: String,
    mod_revision: i64,
    version: i64,
    prev: Option<String>,
}

impl From<super::super::proto::mvccpb::Event> for Event {
    fn from(e: super::super::proto::mvccpb::Event) -> Self {
        let kv = e.kv.unwrap_or_default();
        Event {
            kind: EventType::try_from(e.r#type).unwrap(),
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            mod_revision: kv.mod_revision,
            version: kv.version,
            prev: e
                .prev_kv
                .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
        }
    }
}

fn put_event(key: &str, value: &str, rev: i64, version: i64, prev: Option<&str>) -> Event {
    Event {
        kind: EventType::Put,
        key: key.into(),
        value: value.into(),
        mod_revision: rev,
        version,
        prev: prev.map(Into::into),
    }
}

fn delete_event(key: &str, rev: i64, prev: Option<&str>) -> Event {
    Event {
        kind: EventType::Delete,
        key: key.into(),
        value: String::new(),
        mod_revision: rev,
        version: 0,
        prev: prev.map(Into::into),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn prefix(p: &str) -> pb::WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    pb::WatchCreateRequest {
        key: b(p),
        range_end: Bytes::from(end),
        ..Default::default()
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    kv.put(pb::PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

async fn delete(kv: &mut KvClient<Channel>, key: &str, range_end: &str) -> i64 {
    kv.delete_range(pb::DeleteRangeRequest {
        key: b(key),
        range_end: b(range_end),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

fn put_op(k: &str, v: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        })),
    }
}

fn delete_op(k: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: b(k),
                ..Default::default()
            },
        )),
    }
}

#[tokio::test]
async fn a_watch_from_a_past_revision_replays_history_then_follows_live_writes() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    assert_eq!(put(&mut kv, "a/1", "x").await, 2);
    put(&mut kv, "a/1", "y").await; // 3
    put(&mut kv, "b", "other").await; // 4
    delete(&mut kv, "a/1", "").await; // 5
    let mut w = r.watch().await;
    let id = w
        .created(pb::WatchCreateRequest {
            start_revision: 2,
            prev_kv: true,
            ..prefix("a/")
        })
        .await;
    assert_eq!(id, 0, "the server's first id is 0, as etcd's");
    assert_eq!(
        w.events(id, 3).await,
        vec![
            put_event("a/1", "x", 2, 1, None),
            put_event("a/1", "y", 3, 2, Some("x")),
            delete_event("a/1", 5, Some("y")),
        ]
    );
    // Live: a put, then a transaction writing two keys of the prefix and
    // deleting a third: one revision, all its events in order.
    put(&mut kv, "a/2", "p").await; // 6
    assert_eq!(
        w.events(id, 1).await,
        vec![put_event("a/2", "p", 6, 1, None)]
    );
    kv.txn(pb::TxnRequest {
        success: vec![put_op("a/3", "q"), delete_op("a/2"), put_op("a/1", "z")],
        ..Default::default()
    })
    .await
    .unwrap();
    let r7 = w.next().await;
    assert_eq!(r7.header.unwrap().revision, 7);
    let header = r7.header.unwrap();
    assert_eq!(
        (header.cluster_id, header.member_id, header.raft_term),
        (CLUSTER_ID, MEMBER_ID, TERM)
    );
    assert_eq!(
        r7.events.into_iter().map(Event::from).collect::<Vec<_>>(),
        vec![
            put_event("a/3", "q", 7, 1, None),
            delete_event("a/2", 7, Some("p")),
            put_event("a/1", "z", 7, 1, None),
        ]
    );
    // A range delete: one event per deleted key, at one revision.
    delete(&mut kv, "a/", "a0").await; // 8
    assert_eq!(
        w.events(id, 2).await,
        vec![
            delete_event("a/1", 8, Some("z")),
            delete_event("a/3", 8, Some("q"))
        ]
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_watch_from_now_sees_only_later_writes_and_its_created_header_says_now() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    put(&mut kv, "k", "old").await; // 2
    let mut w = r.watch().await;
    w.create(pb::WatchCreateRequest {
        key: b("k"),
        ..Default::default()
    })
    .await;
    let created = w.next().await;
    assert!(created.created);
    assert_eq!(created.header.unwrap().revision, 2);
    put(&mut kv, "other", "x").await; // 3
    put(&mut kv, "k", "new").await; // 4
    assert_eq!(
        w.events(created.watch_id, 1).await,
        vec![put_event("k", "new", 4, 2, None)],
        "no prev_kv unless asked"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_compacted_start_revision_cancels_the_watch_with_the_compact_revision() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    for i in 0..5 {
        put(&mut kv, "k", &i.to_string()).await; // 2..=6
    }
    kv.compact(pb::CompactionRequest {
        revision: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut w = r.watch().await;
    w.create(pb::WatchCreateRequest {
        key: b("k"),
        start_revision: 3,
        ..Default::default()
    })
    .await;
    let created = w.next().await;
    assert!(created.created && !created.canceled, "{created:?}");
    let canceled = w.next().await;
    assert_eq!(
        (
            canceled.watch_id,
            canceled.canceled,
            canceled.compact_revision
        ),
        (created.watch_id, true, 5),
        "{canceled:?}"
    );
    // etcd's header on this answer has no revision.
    assert_eq!(canceled.header.map(|h| h.revision), Some(0), "{canceled:?}");
    // From the compacted revision on, history is still there.
    let id = w
        .created(pb::WatchCreateRequest {
            key: b("k"),
            start_revision: 5,
            ..Default::default()
        })
        .await;
    let events = w.events(id, 2).await;
    assert_eq!(
        events.iter().map(|e| e.mod_revision).collect::<Vec<_>>(),
        vec![5, 6]
    );
    r.shutdown().await;
}

#[tokio::test]
async fn filters_drop_puts_or_deletes() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let mut w = r.watch().await;
    let no_put = w
        .created(pb::WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..prefix("f")
        })
        .await;
    let no_delete = w
        .created(pb::WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..prefix("f")
        })
        .await;
    put(&mut kv, "f1", "a").await; // 2
    delete(&mut kv, "f1", "").await; // 3
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = w.next().await;
        for e in r.events {
            seen.push((r.watch_id, Event::from(e)));
        }
    }
    seen.sort_by_key(|(id, _)| *id);
    assert_eq!(
        seen,
        vec![
            (no_put, delete_event("f1", 3, None)),
            (no_delete, put_event("f1", "a", 2, 1, None)),
        ]
    );
    r.shutdown().await;
}

#[tokio::test]
async fn cancel_is_answered_and_stops_events_while_other_watches_go_on() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let mut w = r.watch().await;
    let mine = w
        .created(pb::WatchCreateRequest {
            watch_id: 7,
            ..prefix("c")
        })
        .await;
    assert_eq!(mine, 7, "a client-chosen id is kept");
    // The same id again is refused as etcd refuses it.
    w.create(pb::WatchCreateRequest {
        watch_id: 7,
        ..prefix("c")
    })
    .await;
    let dup = w.next().await;
    assert!(dup.created && dup.canceled, "{dup:?}");
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // An empty range too.
    w.create(pb::WatchCreateRequest {
        key: b("z"),
        range_end: b("a"),
        ..Default::default()
    })
    .await;
    let empty = w.next().await;
    assert!(empty.canceled);
    assert_eq!(empty.cancel_reason, "mvcc: watcher range is empty");

    let other = w.created(prefix("c")).await;
    assert_eq!(other, 0);
    assert_eq!(r.metrics.grpc_watchers.get(), 2, "{}", r.metrics.render());
    w.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
        watch_id: mine,
    }))
    .await;
    let canceled = w.next().await;
    assert_eq!((canceled.watch_id, canceled.canceled), (mine, true));
    put(&mut kv, "c1", "v").await;
    let next = w.next().await;
    assert_eq!(next.watch_id, other, "the canceled watch gets nothing");
    assert_eq!(next.events.len(), 1);
    assert_eq!(r.metrics.grpc_watchers.get(), 1);
    assert_eq!(r.metrics.grpc_watch_events_sent_total.get(), 1);
    // Closing the stream ends its watches.
    drop(w);
    let deadline = Instant::now() + PATIENCE;
    while r.metrics.grpc_watchers.get() != 0 {
        assert!(Instant::now() < deadline, "the watch outlived its stream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.shutdown().await;
}

#[tokio::test]
async fn a_progress_request_answers_the_current_revision_with_watch_id_minus_one() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let mut w = r.watch().await;
    let id = w.created(prefix("p")).await;
    put(&mut kv, "p1", "v").await; // 2
    put(&mut kv, "q", "v").await; // 3: not watched
    assert_eq!(w.events(id, 1).await.len(), 1);
    w.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let progress = w.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
    assert_eq!(progress.header.unwrap().revision, 3);
    r.shutdown().await;
}

#[tokio::test]
async fn idle_watches_that_asked_get_progress_notifications() {
    let r = Running::start().await;
    r.backend
        .set_watch_progress_interval(Duration::from_millis(50));
    let mut kv = r.kv().await;
    put(&mut kv, "x", "v").await; // 2
    let mut w = r.watch().await;
    let quiet = w.created(prefix("n")).await;
    let notified = w
        .created(pb::WatchCreateRequest {
            progress_notify: true,
            ..prefix("n")
        })
        .await;
    let progress = w.next().await;
    assert_eq!(progress.watch_id, notified, "{progress:?} (not {quiet})");
    assert!(progress.events.is_empty() && !progress.canceled);
    assert_eq!(progress.header.unwrap().revision, 2);
    r.shutdown().await;
}

#[tokio::test]
async fn a_client_that_reads_slowly_lags_behind_the_feed_and_loses_nothing() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let mut w = r.watch().await;
    let id = w.created(prefix("s")).await;
    // Far more than the feed keeps plus what the stream buffers, while
    // the client reads nothing.
    let value = "v".repeat(1000);
    let writes = 3 * crate::storage::FEED_CAPACITY + 1500;
    for i in 0..writes {
        put(&mut kv, &format!("s{}", i % 7), &value).await;
    }
    let last = 1 + writes as i64;
    let mut next = 2;
    while next <= last {
        let r = w.next().await;
        assert_eq!(r.watch_id, id);
        for e in r.events {
            let kv = e.kv.unwrap();
            assert_eq!(kv.mod_revision, next, "in order, none lost, none twice");
            next += 1;
        }
    }
    assert!(
        r.metrics.grpc_watch_lagged_total.get() >= 1,
        "the test did not make the session lag"
    );
    // Back on the feed afterwards.
    put(&mut kv, "s0", "live").await;
    assert_eq!(w.events(id, 1).await[0].mod_revision, last + 1);
    r.shutdown().await;
}
