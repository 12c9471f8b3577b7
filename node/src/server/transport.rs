//! Outbound peer transport: one long-lived gRPC message stream per peer,
//! reconnecting with back-off, plus one-off chunked streams for snapshots.
//!
//! Every peer has its own bounded queue and task, so a slow or dead peer
//! never blocks the driver or the other peers: when a queue is full the
//! message is dropped (Raft retransmits) and the driver is told the peer is
//! unreachable, which makes the core probe it instead of pipelining.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::raft::{Message, MessageBody, NodeId};
use crate::server::inbound::Inbound;
use crate::server::outbox::Outbox;
use crate::server::peer_auth::PeerAuth;
use crate::server::peer_proto as pb;
use crate::server::peer_proto::peer_client::PeerClient;
use crate::server::wire;
use crate::storage::SnapshotReader;
use crate::tls::connect::Connector;

/// Messages queued for one peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// gRPC metadata on every message stream: the sender's advertised peer URL,
/// so that a node that does not know the sender yet (one that is joining and
/// has no configuration) can answer it.
pub(crate) const PEER_URL_HEADER: &str = "x-raftkv-peer-url";
/// Likewise the sender's client URL: the initial configuration carries no
/// client URLs, so members learn each other's from their streams.
pub(crate) const CLIENT_URL_HEADER: &str = "x-raftkv-client-url";
/// The sender's node id, so that the receiver learns the URLs above as soon
/// as a stream opens, even if no message follows (followers only message
/// the leader).
pub(crate) const PEER_ID_HEADER: &str = "x-raftkv-peer-id";
/// The largest message the peer protocol carries, either way (tonic's
/// default of 4 MiB is too small for a forwarded read's answer). Both ends
/// of every peer stream must agree on it: a message the receiver refuses
/// breaks the whole stream.
pub(crate) const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;
/// Bytes per snapshot chunk.
pub const SNAPSHOT_CHUNK: usize = 256 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Peer {
    url: String,
    queue: mpsc::Sender<pb::Message>,
    task: JoinHandle<()>,
}

/// The outbound side of the peer protocol, owned by the driver.
pub(crate) struct Transport {
    /// Where peer tasks report failures (as [`Inbound::Unreachable`]) and
    /// snapshot transfers report their end.
    reports: mpsc::Sender<Inbound>,
    peers: HashMap<NodeId, Peer>,
    /// Our own advertised peer and client URLs, sent with every stream.
    self_url: String,
    self_client_url: String,
    self_id: NodeId,
    /// Dials peers (with TLS for `https://` URLs).
    connector: Connector,
    /// Proves who we are on every stream.
    auth: PeerAuth,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A URL a tonic endpoint accepts: `host:port` gets an `http://` scheme.
pub fn normalize_url(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(normalize_url(url))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

impl Outbox for Transport {
    fn set_peers(&mut self, peers: &[(NodeId, String)]) {
        Transport::set_peers(self, peers);
    }

    fn send(&mut self, m: Message) -> bool {
        Transport::send(self, m)
    }

    fn send_snapshot(&mut self, m: Message, reader: SnapshotReader) {
        Transport::send_snapshot(self, m, reader);
    }
}

impl Transport {
    pub(crate) fn new(
        reports: mpsc::Sender<Inbound>,
        self_id: NodeId,
        self_url: String,
        self_client_url: String,
        connector: Connector,
        auth: PeerAuth,
    ) -> Self {
        Transport {
            reports,
            peers: HashMap::new(),
            self_url,
            self_client_url,
            self_id,
            connector,
            auth,
        }
    }

    /// Makes the set of peer streams match `peers` (id, peer URL).
    pub(crate) fn set_peers(&mut self, peers: &[(NodeId, String)]) {
        self.peers.retain(|id, p| {
            let keep = peers.iter().any(|(i, url)| i == id && *url == p.url);
            if !keep {
                p.task.abort();
            }
            keep
        });
        for (id, url) in peers {
            if self.peers.contains_key(id) || url.is_empty() {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let task = tokio::spawn(run_peer(
                *id,
                url.clone(),
                (
                    self.self_id,
                    self.self_url.clone(),
                    self.self_client_url.clone(),
                ),
                rx,
                self.reports.clone(),
                (self.connector.clone(), self.auth.clone()),
            ));
            self.peers.insert(
                *id,
                Peer {
                    url: url.clone(),
                    queue: tx,
                    task,
                },
            );
        }
    }

    /// Queues a message; returns false if it was dropped (unknown peer or
    /// full queue), in which case the caller reports the peer unreachable.
    pub(crate) fn send(&mut self, m: Message) -> bool {
        let Some(peer) = self.peers.get(&m.to) else {
            return false;
        };
        peer.queue.try_send(wire::message_to_pb(&m)).is_ok()
    }

    /// Streams a snapshot image to `m.to` on its own connection.
    pub(crate) fn send_snapshot(&mut self, m: Message, reader: SnapshotReader) {
        let to = m.to;
        let reports = self.reports.clone();
        let dial = (self.connector.clone(), self.auth.clone(), self.self_id);
        let Some(url) = self.peers.get(&to).map(|p| p.url.clone()) else {
            let _ = reports.try_send(Inbound::SnapshotSent { to, ok: false });
            return;
        };
        tokio::spawn(async move {
            let ok = match stream_snapshot(&url, m, reader, dial).await {
                Ok(bytes) => {
                    debug!(to = %to, bytes, "snapshot sent");
                    true
                }
                Err(e) => {
                    warn!(to = %to, error = %e, "snapshot transfer failed");
                    false
                }
            };
            let _ = reports.send(Inbound::SnapshotSent { to, ok }).await;
        });
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for p in self.peers.values() {
            p.task.abort();
        }
    }
}

/// The life of one peer stream: connect, pump the queue into a client
/// stream until it breaks, back off, reconnect.
async fn run_peer(
    to: NodeId,
    url: String,
    (self_id, self_url, self_client_url): (NodeId, String, String),
    mut queue: mpsc::Receiver<pb::Message>,
    reports: mpsc::Sender<Inbound>,
    (connector, auth): (Connector, PeerAuth),
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let connected = match endpoint(&url) {
            Ok(ep) => connector.connect(ep).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(channel) => {
                backoff = BACKOFF_MIN;
                let err = pump(
                    channel,
                    (self_id, self_url.as_str(), self_client_url.as_str()),
                    &auth,
                    &mut queue,
                )
                .await;
                debug!(to = %to, error = %err, "peer stream ended");
            }
            Err(e) => debug!(to = %to, url = %url, error = %e, "cannot connect to peer"),
        }
        // Whatever is queued is stale by the time we reconnect; Raft resends
        // what matters. Tell the core to stop pipelining to this peer.
        while queue.try_recv().is_ok() {}
        if reports.send(Inbound::Unreachable(to)).await.is_err() {
            return; // the driver is gone
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Forwards queued messages over one client stream until the stream or the
/// queue ends; returns why it ended.
async fn pump(
    channel: Channel,
    (self_id, self_url, self_client_url): (NodeId, &str, &str),
    auth: &PeerAuth,
    queue: &mut mpsc::Receiver<pb::Message>,
) -> String {
    let mut client = PeerClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::Message>(256);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(self_url) {
        request.metadata_mut().insert(PEER_URL_HEADER, v);
    }
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(self_client_url) {
        request.metadata_mut().insert(CLIENT_URL_HEADER, v);
    }
    auth.stamp(&mut request, self_id);
    let call = client.send(request);
    tokio::pin!(call);
    loop {
        tokio::select! {
            msg = queue.recv() => {
                let Some(msg) = msg else { return "queue closed".into() };
                if tx.send(msg).await.is_err() {
                    return "stream closed".into();
                }
            }
            res = &mut call => {
                return match res {
                    Ok(_) => "peer closed the stream".into(),
                    Err(status) => status.to_string(),
                };
            }
        }
    }
}

async fn stream_snapshot(
    url: &str,
    m: Message,
    mut reader: SnapshotReader,
    (connector, auth, self_id): (Connector, PeerAuth, NodeId),
) -> Result<u64, String> {
    let MessageBody::InstallSnapshot(snapshot) = &m.body else {
        return Err("not an InstallSnapshot message".into());
    };
    let header = pb::SnapshotHeader {
        from: m.from.get(),
        to: m.to.get(),
        term: m.term.get(),
        meta: Some(wire::meta_to_pb(&snapshot.meta)),
    };
    let channel = connector
        .connect(endpoint(url).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<pb::SnapshotChunk>(4);
    // Reading the image is blocking disk work: do it off the runtime.
    let producer = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let first = pb::SnapshotChunk {
            chunk: Some(pb::snapshot_chunk::Chunk::Header(header)),
        };
        if tx.blocking_send(first).is_err() {
            return Ok(());
        }
        let mut total = 0u64;
        while let Some(data) = reader.next_chunk().transpose().map_err(|e| e.to_string())? {
            total += data.len() as u64;
            for piece in data.chunks(SNAPSHOT_CHUNK) {
                let chunk = pb::SnapshotChunk {
                    chunk: Some(pb::snapshot_chunk::Chunk::Data(piece.to_vec())),
                };
                if tx.blocking_send(chunk).is_err() {
                    return Ok(());
                }
            }
        }
        let end = pb::SnapshotChunk {
            chunk: Some(pb::snapshot_chunk::Chunk::End(pb::SnapshotEnd {
                bytes: total,
            })),
        };
        let _ = tx.blocking_send(end);
        Ok(())
    });
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    auth.stamp(&mut request, self_id);
    let ack = PeerClient::new(channel)
        .install_snapshot(request)
        .await
        .map_err(|s| s.to_string())?;
    producer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the snapshot: {e}"))?;
    Ok(ack.into_inner().bytes)
}
