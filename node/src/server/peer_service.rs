//! The inbound side of the peer protocol: the tonic service other nodes
//! call. Messages go to the driver's inbound channel (awaiting a full
//! channel is back-pressure on the sending peer); snapshot images are staged
//! to a file and handed to the driver only once complete; forwarded client
//! requests run through the local [`NodeHandle`].

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use crate::metrics::Metrics;
use crate::raft::{Message, MessageBody, NodeId, Snapshot, SnapshotMeta, Term};
use crate::server::forward;
use crate::server::inbound::Inbound;
use crate::server::peer_auth::{MemberDirectory, PeerAuth, Refused};
use crate::server::peer_proto as pb;
use crate::server::transport::{
    CLIENT_URL_HEADER, MAX_PEER_MESSAGE_BYTES, PEER_ID_HEADER, PEER_URL_HEADER,
};
use crate::server::{NodeHandle, put_path, wire};
use crate::storage::ImageCheck;

#[derive(Debug)]
pub(crate) struct PeerService {
    pub id: NodeId,
    pub inbound: mpsc::Sender<Inbound>,
    pub snapshot_dir: PathBuf,
    pub handle: NodeHandle,
    pub metrics: Arc<Metrics>,
    /// The largest snapshot image accepted; a larger stream is cut off.
    pub max_snapshot_bytes: u64,
    /// Who may call (see [`crate::server::peer_auth`]).
    pub auth: PeerAuth,
    /// The members' peer URLs, which certificates are checked against.
    pub members: MemberDirectory,
}

impl PeerService {
    /// The sender `request` proved to be, or the refusal (counted).
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Option<NodeId>, Status> {
        self.auth
            .verify(request, &self.members)
            .map_err(|refused| self.refuse(refused))
    }

    fn refuse(&self, refused: Refused) -> Status {
        self.metrics
            .peer_messages_refused_total
            .with_label_values(&[refused.reason])
            .inc();
        warn!(reason = refused.reason, detail = %refused.detail, "refused a peer call");
        refused.into_status()
    }

    /// Once a sender is proven, everything it sends must be from it.
    fn check_from(&self, proven: Option<NodeId>, from: NodeId) -> Result<(), Status> {
        match proven {
            Some(id) if self.auth.authenticates() && id != from => Err(self.refuse(Refused {
                reason: "from_mismatch",
                detail: format!("node {id} sent a message from node {from}"),
            })),
            _ => Ok(()),
        }
    }
}

/// Numbers the images staged by this process (see `install_snapshot`).
static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn driver_gone() -> Status {
    Status::unavailable("the node is shutting down")
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<pb::Message>>,
    ) -> Result<Response<pb::SendSummary>, Status> {
        let proven = self.authenticate(&request)?;
        let sender_url = request
            .metadata()
            .get(PEER_URL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let client_url = request
            .metadata()
            .get(CLIENT_URL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let sender_id = request
            .metadata()
            .get(PEER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|id| *id != 0)
            .map(NodeId);
        let mut stream = request.into_inner();
        let mut received = 0u64;
        if let (Some(id), Some(url)) = (sender_id, &sender_url) {
            self.inbound
                .send(Inbound::PeerUrl {
                    id,
                    url: url.clone(),
                    client_url: client_url.clone(),
                })
                .await
                .map_err(|_| driver_gone())?;
        }
        while let Some(m) = stream.message().await? {
            let m =
                wire::message_from_pb(m).map_err(|e| Status::invalid_argument(e.to_string()))?;
            put_path::message("received", &m);
            received += 1;
            self.check_from(proven, m.from)?;
            if m.to != self.id {
                continue;
            }
            if let Some(url) = sender_url
                .as_ref()
                .filter(|_| received == 1 && sender_id.is_none())
            {
                self.inbound
                    .send(Inbound::PeerUrl {
                        id: m.from,
                        url: url.clone(),
                        client_url: client_url.clone(),
                    })
                    .await
                    .map_err(|_| driver_gone())?;
            }
            self.inbound
                .send(Inbound::Message(m))
                .await
                .map_err(|_| driver_gone())?;
        }
        Ok(Response::new(pb::SendSummary { received }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotAck>, Status> {
        use pb::snapshot_chunk::Chunk;
        let proven = self.authenticate(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::SnapshotChunk {
                chunk: Some(Chunk::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a snapshot stream starts with its header",
                ));
            }
        };
        let meta = wire::meta_from_pb(
            header
                .meta
                .ok_or_else(|| Status::invalid_argument("snapshot header without meta"))?,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if header.to != self.id.get() || header.from == 0 {
            return Err(Status::invalid_argument(
                "snapshot addressed to another node",
            ));
        }
        self.check_from(proven, NodeId(header.from))?;
        tokio::fs::create_dir_all(&self.snapshot_dir)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        // A name of its own per transfer: a leader that sends the same
        // image again must not overwrite the one the driver may be reading.
        let path = self.snapshot_dir.join(format!(
            "incoming-{}-{}-{}-{}.snap",
            header.from,
            meta.index,
            meta.term,
            STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = stage(&mut stream, &path, &meta, self.max_snapshot_bytes).await;
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                self.metrics
                    .peer_messages_refused_total
                    .with_label_values(&["bad_snapshot"])
                    .inc();
                warn!(from = header.from, error = %e, "refused a snapshot");
                return Err(e);
            }
        };
        let message = Message {
            from: NodeId(header.from),
            to: self.id,
            term: Term(header.term),
            body: MessageBody::InstallSnapshot(Snapshot {
                meta,
                data: bytes::Bytes::new(),
            }),
        };
        self.inbound
            .send(Inbound::SnapshotReceived {
                message,
                staged: path,
            })
            .await
            .map_err(|_| driver_gone())?;
        Ok(Response::new(pb::SnapshotAck { bytes }))
    }

    type ForwardStream = ReceiverStream<Result<pb::ForwardAnswer, Status>>;

    /// Serves every call of a follower's forwarding stream concurrently (a
    /// task each, so one slow call never holds up the others) and answers
    /// in completion order.
    async fn forward(
        &self,
        request: Request<Streaming<pb::ForwardCall>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        // Only members may have their clients' writes run here.
        self.authenticate(&request)?;
        let mut calls = request.into_inner();
        let (answers, stream) = mpsc::channel(FORWARD_ANSWERS_QUEUED);
        let handle = self.handle.clone();
        tokio::spawn(async move {
            // Ends when the follower closes its side or the stream breaks;
            // calls already running still answer into a closed channel,
            // which is harmless.
            while let Ok(Some(call)) = calls.message().await {
                let handle = handle.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let reply = match call.request.map(forward::decode_request) {
                        Some(Ok(req)) => handle.serve_forwarded(req).await,
                        Some(Err(e)) => Err(e),
                        None => Err(crate::server::ClientError::InvalidArgument(
                            "a forwarded call without a request".into(),
                        )),
                    };
                    let answer = forward::answer(call.id, reply, MAX_PEER_MESSAGE_BYTES);
                    let _ = answers.send(Ok(answer)).await;
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// Answers waiting to go back to one follower before the serving tasks
/// wait (back-pressure on a follower that stopped reading).
const FORWARD_ANSWERS_QUEUED: usize = 1024;

/// Writes the data chunks to `path` (fsynced), checking the image as it
/// arrives: garbage is refused at its first bytes, an image larger than
/// `max_bytes` as soon as it grows past it, and a complete image only if its
/// checksum holds and it is at the position its header claimed. Only an
/// image that passed ever reaches the consensus core.
async fn stage(
    stream: &mut Streaming<pb::SnapshotChunk>,
    path: &PathBuf,
    claimed: &SnapshotMeta,
    max_bytes: u64,
) -> Result<u64, Status> {
    use pb::snapshot_chunk::Chunk;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut check = ImageCheck::new(max_bytes);
    let mut written = 0u64;
    loop {
        match stream.message().await? {
            Some(pb::SnapshotChunk {
                chunk: Some(Chunk::Data(d)),
            }) => {
                check
                    .feed(&d)
                    .map_err(|e| Status::invalid_argument(format!("snapshot: {e}")))?;
                file.write_all(&d)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                written += d.len() as u64;
            }
            Some(pb::SnapshotChunk {
                chunk: Some(Chunk::End(end)),
            }) => {
                if end.bytes != written {
                    return Err(Status::data_loss(format!(
                        "snapshot: sender says {} bytes, received {written}",
                        end.bytes
                    )));
                }
                let image = check
                    .finish()
                    .map_err(|e| Status::invalid_argument(format!("snapshot: {e}")))?;
                if image != *claimed {
                    return Err(Status::invalid_argument(format!(
                        "snapshot: the image is at {}/{}, its header said {}/{}",
                        image.index, image.term, claimed.index, claimed.term
                    )));
                }
                file.sync_all()
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                return Ok(written);
            }
            Some(_) => return Err(Status::invalid_argument("unexpected snapshot chunk")),
            None => {
                return Err(Status::data_loss(
                    "snapshot stream ended before its end marker",
                ));
            }
        }
    }
}
