//! etcd's `Watch` service: one bidirectional stream per call, carrying any
//! number of watches.
//!
//! - [`session`]: one stream's loop, fed by the state machine's change
//!   feed and by history (where the ordering and catch-up rules live);
//! - [`watcher`]: one watch, its filters, and its changes as etcd events
//!   and responses.
//!
//! Every member serves watches from its own state machine: a follower's
//! events are what it applied, so a watch on any member sees every change
//! once the member applied it. What differs from etcd is listed in the
//! README (etcd compatibility).

pub(crate) mod session;
pub(crate) mod watcher;

#[cfg(test)]
mod tests;

use std::pin::Pin;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::backend::Backend;
use super::observe::Observer;
use super::proto::etcdserverpb::{self as pb, watch_server::Watch};
use session::{Session, SessionConfig};

/// Responses queued for one stream before its session waits for the
/// client: a client that reads slowly holds its session up, never the
/// state machine.
const STREAM_QUEUE: usize = 64;

/// The Watch service over a node.
#[derive(Debug, Clone)]
pub struct WatchService<B> {
    backend: B,
    observer: Observer,
    /// Turns true when the server stops: streams end then.
    stopping: watch::Receiver<bool>,
}

impl<B: Backend> WatchService<B> {
    pub fn new(backend: B, observer: Observer, stopping: watch::Receiver<bool>) -> Self {
        WatchService {
            backend,
            observer,
            stopping,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Backend> Watch for WatchService<B> {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let Some(kv) = self.backend.watch_store() else {
            return Err(Status::unimplemented("this server does not serve watches"));
        };
        // The stream's caller; each watch's range is checked on creation.
        let caller = super::gate::caller(&self.backend, &request)?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let cfg = SessionConfig {
            caller,
            cluster_id: self.backend.cluster_id(),
            member_id: self.backend.member_id(),
            progress_interval: self.backend.watch_progress_interval(),
            stopping: self.stopping.clone(),
        };
        let session = Session::new(cfg, kv, tx, self.observer.clone());
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
