//! One Watch stream: its watches, fed by the state machine's change feed
//! and, where the feed cannot serve them, by history.
//!
//! A session is one task. It subscribes to the feed once, before it looks
//! at the store's revision, so every revision after the one it saw is
//! announced to it (or it is told it lagged). Each watch remembers the next
//! revision it owes the client (`next`):
//!
//! - an announcement of revisions `(after, revision]` serves every watch
//!   that is complete up to `after`: its changes at or above `next` go out
//!   and `next` moves past `revision`;
//! - a watch that is not complete up to `after` (it starts in the past, the
//!   session lagged behind the feed, the store jumped to an installed
//!   snapshot) is *unsynced*: it reads history from `next`, a bounded
//!   chunk per turn of the loop, until it has caught up with the store,
//!   then follows the feed again. If that history was compacted meanwhile,
//!   the watch is canceled with the compacted revision, as etcd does.
//!
//! So changes go out in revision order, each once, whether they came from
//! the feed or from history. The apply path never waits for a session:
//! the feed drops what a slow session has not read, and the session reads
//! it from history instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::super::convert::header;
use super::super::observe::Observer;
use super::super::proto::etcdserverpb::{self as pb, watch_request::RequestUnion};
use super::watcher::{DUPLICATE_ID, Watcher};
use crate::storage::{Applied, KvStore, Replay, ReplayRequest, StoreError, Subscription};

/// How many changes one history read of one watch returns at most (it
/// finishes the revision it is in).
pub(crate) const REPLAY_CHUNK: usize = 1000;

/// What a session needs besides its streams.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    pub cluster_id: u64,
    pub member_id: u64,
    pub progress_interval: Duration,
    /// Turns true when the server stops.
    pub stopping: watch::Receiver<bool>,
    /// Who opened the stream: each watch needs read permission on its
    /// range (checked when it is created, as etcd does).
    pub caller: crate::grpc::gate::Checked,
}

/// What woke the session up.
enum Wake {
    ClientGone,
    Stopping,
    Request(Option<Result<pb::WatchRequest, Status>>),
    Applied(Result<Arc<Applied>, RecvError>),
    Tick,
    CatchUp,
}

/// Why a session ended.
enum End {
    /// The client went away (or the server is stopping).
    ClientGone,
    /// The store failed; the client is told.
    Failed(Status),
}

pub(crate) struct Session {
    cfg: SessionConfig,
    kv: KvStore,
    feed: Subscription,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    observer: Observer,
    watchers: BTreeMap<i64, Watcher>,
    /// The next id the server assigns (etcd starts at 0).
    next_id: i64,
    /// The store's revision as far as this session has followed the feed:
    /// every synced watch was sent everything up to it.
    revision: i64,
}

impl Session {
    /// A session on `kv`, subscribed now.
    pub(crate) fn new(
        cfg: SessionConfig,
        kv: KvStore,
        out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
        observer: Observer,
    ) -> Self {
        // Subscribe first: every revision after the one read next is then
        // announced to us.
        let feed = kv.subscribe();
        let revision = kv.revision();
        Session {
            cfg,
            kv,
            feed,
            out,
            observer,
            watchers: BTreeMap::new(),
            next_id: 0,
            revision,
        }
    }

    /// Serves the stream until the client goes away.
    pub(crate) async fn run(mut self, mut requests: Streaming<pb::WatchRequest>) {
        let end = self.serve(&mut requests).await;
        self.observer.watchers_removed(self.watchers.len());
        if let End::Failed(status) = end {
            let _ = self.out.send(Err(status)).await;
        }
    }

    async fn serve(&mut self, requests: &mut Streaming<pb::WatchRequest>) -> End {
        let mut requests_open = true;
        let mut stopping = self.cfg.stopping.clone();
        let mut tick = tokio::time::interval(self.cfg.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval is immediate.
        tick.tick().await;
        loop {
            let unsynced = self.watchers.values().any(|w| !w.synced);
            let wake = tokio::select! {
                biased;
                () = self.out.closed() => Wake::ClientGone,
                () = stopped(&mut stopping) => Wake::Stopping,
                req = requests.next(), if requests_open => Wake::Request(req),
                applied = self.feed.recv() => Wake::Applied(applied),
                _ = tick.tick() => Wake::Tick,
                () = std::future::ready(()), if unsynced => Wake::CatchUp,
            };
            let turn = match wake {
                Wake::ClientGone => Err(End::ClientGone),
                // etcd's answer when it stops: clients resume the watches
                // on another member.
                Wake::Stopping => Err(End::Failed(Status::unavailable(
                    "etcdserver: server stopped",
                ))),
                Wake::Request(Some(Ok(req))) => self.on_request(req).await,
                // A broken request stream ends the call.
                Wake::Request(Some(Err(_))) => Err(End::ClientGone),
                // The client closed its side: it still reads events (etcd
                // keeps such a stream open, for grpc-gateway).
                Wake::Request(None) => {
                    requests_open = false;
                    Ok(())
                }
                Wake::Applied(Ok(applied)) => self.on_applied(&applied).await,
                Wake::Applied(Err(RecvError::Lagged(_))) => {
                    self.lagged();
                    Ok(())
                }
                Wake::Applied(Err(RecvError::Closed)) => Err(End::Failed(Status::unavailable(
                    "the state machine was closed",
                ))),
                Wake::Tick => self.progress_tick().await,
                Wake::CatchUp => Ok(()),
            };
            if let Err(end) = turn {
                return end;
            }
            if let Err(end) = self.catch_up_once().await {
                return end;
            }
        }
    }

    // ------------------------------------------------------------ requests

    async fn on_request(&mut self, req: pb::WatchRequest) -> Result<(), End> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(&create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    self.observer.watchers_removed(1);
                    self.send(pb::WatchResponse {
                        header: Some(self.header(self.revision)),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                // etcd answers nothing for an unknown id.
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => self.progress_request().await,
            None => Ok(()),
        }
    }

    async fn create(&mut self, req: &pb::WatchCreateRequest) -> Result<(), End> {
        // Start from what the feed says now, so that "now" is a revision
        // every later announcement follows.
        self.drain_feed().await?;
        let refused = |reason: &str| pb::WatchResponse {
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_owned(),
            ..Default::default()
        };
        let start = if req.start_revision > 0 {
            req.start_revision
        } else {
            self.revision + 1
        };
        if let Err(denied) =
            self.cfg
                .caller
                .may(crate::storage::auth::Need::Read, &req.key, &req.range_end)
        {
            let mut r = refused(denied.message());
            r.header = Some(self.header(self.revision));
            return self.send(r).await;
        }
        // The range is checked before an id is taken, as etcd does.
        let mut watcher = match Watcher::new(req.watch_id, req, start) {
            Ok(w) => w,
            Err(reason) => {
                let mut r = refused(&reason);
                r.header = Some(self.header(self.revision));
                return self.send(r).await;
            }
        };
        let id = if req.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        } else if self.watchers.contains_key(&req.watch_id) || req.watch_id < 0 {
            let mut r = refused(DUPLICATE_ID);
            r.header = Some(self.header(self.revision));
            return self.send(r).await;
        } else {
            req.watch_id
        };
        watcher.id = id;
        // Anything at or below the session's revision is history.
        watcher.synced = start > self.revision;
        self.send(pb::WatchResponse {
            header: Some(self.header(self.revision)),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.watchers.insert(id, watcher);
        self.observer.watchers_added(1);
        Ok(())
    }

    /// etcd's progress request: the revision up to which every watch of
    /// the stream was sent everything, with watch id -1. Taken once every
    /// watch has caught up, so the answer is the store's revision as of
    /// the feed.
    async fn progress_request(&mut self) -> Result<(), End> {
        self.drain_feed().await?;
        while self.watchers.values().any(|w| !w.synced) {
            self.catch_up_once().await?;
            self.drain_feed().await?;
        }
        let revision = self.progress_revision(None);
        self.send(pb::WatchResponse {
            header: Some(self.header(revision)),
            watch_id: -1,
            ..Default::default()
        })
        .await
    }

    /// The periodic notification of idle watches that asked for it.
    async fn progress_tick(&mut self) -> Result<(), End> {
        let due: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.progress_notify && w.synced && !w.sent_since_tick)
            .map(|w| w.id)
            .collect();
        for w in self.watchers.values_mut() {
            w.sent_since_tick = false;
        }
        for id in due {
            let revision = self.progress_revision(Some(id));
            self.send(pb::WatchResponse {
                header: Some(self.header(revision)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// The revision up to which `only` (or every watch) was sent all its
    /// changes, never beyond the store's revision.
    fn progress_revision(&self, only: Option<i64>) -> i64 {
        self.watchers
            .values()
            .filter(|w| only.is_none_or(|id| w.id == id))
            .map(|w| w.next - 1)
            .fold(self.revision, i64::min)
    }

    // ---------------------------------------------------------------- feed

    /// Takes every announcement already waiting.
    async fn drain_feed(&mut self) -> Result<(), End> {
        loop {
            match self.feed.try_recv() {
                Ok(applied) => self.on_applied(&applied).await?,
                Err(TryRecvError::Lagged(_)) => self.lagged(),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Closed) => {
                    return Err(End::Failed(Status::unavailable(
                        "the state machine was closed",
                    )));
                }
            }
        }
    }

    /// Announcements were lost: every watch reads history from where it
    /// stands (those already past the lost ones read nothing).
    fn lagged(&mut self) {
        self.observer.watch_lagged();
        for w in self.watchers.values_mut() {
            w.synced = false;
        }
    }

    async fn on_applied(&mut self, applied: &Arc<Applied>) -> Result<(), End> {
        self.revision = self.revision.max(applied.revision());
        let (after, revision, changes) = match applied.as_ref() {
            Applied::Changes {
                after,
                revision,
                changes,
            } => (*after, *revision, changes),
            Applied::Jumped { revision } => {
                for w in self.watchers.values_mut() {
                    if w.next <= *revision {
                        w.synced = false;
                    }
                }
                return Ok(());
            }
        };
        let mut out = Vec::new();
        for w in self.watchers.values_mut() {
            if w.next > revision {
                continue;
            }
            if w.next <= after {
                // It owes revisions this announcement does not hold.
                w.synced = false;
                continue;
            }
            let events: Vec<_> = changes
                .iter()
                .filter(|c| w.wants(c))
                .map(|c| w.event(c))
                .collect();
            w.next = revision + 1;
            w.synced = true;
            if !events.is_empty() {
                w.sent_since_tick = true;
                out.push((w.id, events));
            }
        }
        for (id, events) in out {
            self.send_events(id, revision, events).await?;
        }
        Ok(())
    }

    // ------------------------------------------------------------- history

    /// One history read for every unsynced watch.
    async fn catch_up_once(&mut self) -> Result<(), End> {
        let behind: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| !w.synced)
            .map(|w| w.id)
            .collect();
        for id in behind {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let req = ReplayRequest {
                from: w.next,
                key: w.key.to_vec(),
                range_end: w.range_end.to_vec(),
                prev_kv: w.prev_kv,
                max_changes: REPLAY_CHUNK,
            };
            let kv = self.kv.clone();
            let read = tokio::task::spawn_blocking(move || kv.replay(&req))
                .await
                .map_err(|e| End::Failed(Status::internal(e.to_string())))?
                .map_err(|e: StoreError| End::Failed(Status::internal(e.to_string())))?;
            match read {
                Replay::Compacted { compacted } => {
                    self.watchers.remove(&id);
                    self.observer.watchers_removed(1);
                    self.send(pb::WatchResponse {
                        // etcd's compacted answer has no revision.
                        header: Some(self.header(0)),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compacted,
                        ..Default::default()
                    })
                    .await?;
                }
                Replay::Changes {
                    changes,
                    through,
                    revision,
                } => {
                    let Some(w) = self.watchers.get_mut(&id) else {
                        continue;
                    };
                    let events: Vec<_> = changes
                        .iter()
                        .filter(|c| w.wants(c))
                        .map(|c| w.event(c))
                        .collect();
                    w.next = w.next.max(through + 1);
                    // Caught up with the store: later revisions are the
                    // feed's (announced to us, since we subscribed before).
                    if through >= revision {
                        w.synced = true;
                    }
                    if !events.is_empty() {
                        w.sent_since_tick = true;
                        self.send_events(id, through, events).await?;
                    }
                }
            }
        }
        Ok(())
    }

    // --------------------------------------------------------------- sends

    async fn send_events(
        &mut self,
        id: i64,
        revision: i64,
        events: Vec<super::super::proto::mvccpb::Event>,
    ) -> Result<(), End> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        let count = events.len();
        for r in w.responses(self.header(revision), events) {
            self.send(r).await?;
        }
        self.observer.watch_events_sent(count);
        Ok(())
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), End> {
        self.out
            .send(Ok(response))
            .await
            .map_err(|_| End::ClientGone)
    }

    /// etcd's header; the term is that of the last applied entry.
    fn header(&self, revision: i64) -> pb::ResponseHeader {
        header(
            self.cfg.cluster_id,
            self.cfg.member_id,
            revision,
            self.kv.applied_term().get(),
        )
    }
}

/// Completes once `stopping` turns true; never if nobody can stop us.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
