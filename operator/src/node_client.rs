//! How the operator talks to raftkv nodes: the [`NodeClient`] trait (status
//! and membership calls addressed to a pod), the [`AddressResolver`] that
//! turns a pod name into URLs, and the HTTP implementation.
//!
//! The trait is the seam for tests: reconcile tests use an in-memory fake,
//! and a test against real node processes can use [`HttpNodeClient`] with a
//! [`StaticResolver`] mapping pod names to loopback addresses.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::identity::{ClusterIdentity, HTTP_PORT, NodeId};
use crate::node_api::{AddMemberRequest, ApiErrorBody, NodeStatus, TransferLeaderRequest};

/// A failed call to a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {pod} unreachable: {reason}")]
    Unreachable { pod: String, reason: String },
    /// Another membership change is still in flight (HTTP 409); retry later.
    #[error("node {pod}: a membership change is already in progress")]
    ChangeInProgress { pod: String },
    /// The node knows no leader (HTTP 503).
    #[error("node {pod}: no leader: {message}")]
    NoLeader { pod: String, message: String },
    #[error("node {pod} answered {status}: {message} ({code})")]
    Rejected {
        pod: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("node {pod} sent an unreadable answer: {reason}")]
    BadResponse { pod: String, reason: String },
}

/// An error and its sources, `outer: inner: root`. reqwest's own message
/// is only "error sending request for url (...)"; the cause a user needs
/// (a DNS failure, a refused connection, a timeout) is in the sources.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        // Some errors repeat their source's message in their own.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Calls to the raftkv admin API of one pod of a cluster.
pub trait NodeClient: Send + Sync + 'static {
    fn status(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
    ) -> impl Future<Output = Result<NodeStatus, NodeError>> + Send;
    fn add_learner(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        member: &AddMemberRequest,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn promote(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        id: NodeId,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn remove(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        id: NodeId,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
    fn transfer_leader(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        to: NodeId,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
}

/// Maps a cluster's pod names to the URLs nodes and the operator use.
pub trait AddressResolver: Send + Sync + 'static {
    /// Base URL of the pod's HTTP API, as the operator reaches it.
    fn http_url(&self, cluster: &ClusterIdentity, pod: &str) -> String;
    /// Peer URL other nodes use to reach the pod.
    fn peer_url(&self, cluster: &ClusterIdentity, pod: &str) -> String;
    /// Client URL the pod advertises.
    fn client_url(&self, cluster: &ClusterIdentity, pod: &str) -> String;
}

/// In-cluster DNS through the headless Service:
/// `http://<pod>.<name>-peers.<ns>.svc:8080`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DnsResolver;

impl AddressResolver for DnsResolver {
    fn http_url(&self, cluster: &ClusterIdentity, pod: &str) -> String {
        format!("http://{}:{HTTP_PORT}", cluster.pod_host(pod))
    }
    fn peer_url(&self, cluster: &ClusterIdentity, pod: &str) -> String {
        cluster.peer_url(pod)
    }
    fn client_url(&self, cluster: &ClusterIdentity, pod: &str) -> String {
        cluster.client_url(pod)
    }
}

/// Fixed addresses per pod name, e.g. loopback ports of local processes.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    pub nodes: BTreeMap<String, StaticAddresses>,
}

#[derive(Clone, Debug, Default)]
pub struct StaticAddresses {
    pub http: String,
    pub peer: String,
    pub client: String,
}

impl AddressResolver for StaticResolver {
    fn http_url(&self, _: &ClusterIdentity, pod: &str) -> String {
        self.nodes
            .get(pod)
            .map(|a| a.http.clone())
            .unwrap_or_default()
    }
    fn peer_url(&self, _: &ClusterIdentity, pod: &str) -> String {
        self.nodes
            .get(pod)
            .map(|a| a.peer.clone())
            .unwrap_or_default()
    }
    fn client_url(&self, _: &ClusterIdentity, pod: &str) -> String {
        self.nodes
            .get(pod)
            .map(|a| a.client.clone())
            .unwrap_or_default()
    }
}

/// [`NodeClient`] over HTTP/JSON.
#[derive(Debug, Clone)]
pub struct HttpNodeClient<R> {
    http: reqwest::Client,
    resolver: R,
}

impl<R: AddressResolver> HttpNodeClient<R> {
    /// `timeout` bounds every call: a node that hangs must not stall a reconcile.
    pub fn new(resolver: R, timeout: Duration) -> Result<Self, NodeError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| NodeError::Unreachable {
                pod: String::new(),
                reason: format!("building HTTP client: {e}"),
            })?;
        Ok(Self { http, resolver })
    }

    pub fn resolver(&self) -> &R {
        &self.resolver
    }

    async fn send(
        &self,
        pod: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, NodeError> {
        let resp = req.send().await.map_err(|e| NodeError::Unreachable {
            pod: pod.to_string(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body: ApiErrorBody = resp.json().await.unwrap_or_else(|_| ApiErrorBody {
            error: status.to_string(),
            code: String::new(),
        });
        let pod = pod.to_string();
        Err(match status.as_u16() {
            409 => NodeError::ChangeInProgress { pod },
            503 => NodeError::NoLeader {
                pod,
                message: body.error,
            },
            code => NodeError::Rejected {
                pod,
                status: code,
                code: body.code,
                message: body.error,
            },
        })
    }

    async fn post_ok<B: serde::Serialize + Sync>(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), NodeError> {
        let url = format!("{}{path}", self.resolver.http_url(cluster, pod));
        let mut req = self.http.post(url);
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send(pod, req).await.map(drop)
    }
}

impl<R: AddressResolver> NodeClient for HttpNodeClient<R> {
    async fn status(&self, cluster: &ClusterIdentity, pod: &str) -> Result<NodeStatus, NodeError> {
        let url = format!("{}/v1/status", self.resolver.http_url(cluster, pod));
        let resp = self.send(pod, self.http.get(url)).await?;
        resp.json().await.map_err(|e| NodeError::BadResponse {
            pod: pod.to_string(),
            reason: e.to_string(),
        })
    }

    async fn add_learner(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        member: &AddMemberRequest,
    ) -> Result<(), NodeError> {
        self.post_ok(cluster, pod, "/v1/members", Some(member))
            .await
    }

    async fn promote(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        id: NodeId,
    ) -> Result<(), NodeError> {
        self.post_ok::<()>(cluster, pod, &format!("/v1/members/{id}/promote"), None)
            .await
    }

    async fn remove(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        id: NodeId,
    ) -> Result<(), NodeError> {
        let url = format!("{}/v1/members/{id}", self.resolver.http_url(cluster, pod));
        self.send(pod, self.http.delete(url)).await.map(drop)
    }

    async fn transfer_leader(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        to: NodeId,
    ) -> Result<(), NodeError> {
        self.post_ok(
            cluster,
            pod,
            "/v1/leader/transfer",
            Some(&TransferLeaderRequest { to }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Json, Path};
    use axum::http::StatusCode;
    use axum::routing::{delete, get, post};
    use std::sync::{Arc, Mutex};

    /// A tiny stand-in node on loopback that records the calls it gets.
    async fn fake_node(log: Arc<Mutex<Vec<String>>>) -> (String, tokio::task::JoinHandle<()>) {
        let l1 = log.clone();
        let l2 = log.clone();
        let l3 = log.clone();
        let app = axum::Router::new()
            .route(
                "/v1/status",
                get(|| async {
                    Json(serde_json::json!({"id":1,"name":"kv-0","role":"leader","term":3,"leader_id":1,
                        "commit_index":5,"applied_index":5,"last_log_index":5,"members":[]}))
                }),
            )
            .route(
                "/v1/members",
                post(move |Json(body): Json<AddMemberRequest>| async move {
                    l1.lock().unwrap().push(format!("add {} {}", body.id, body.peer_url));
                    if body.id == NodeId(9) {
                        return (StatusCode::CONFLICT, Json(serde_json::json!({"error":"busy","code":"membership_change_in_progress"})));
                    }
                    (StatusCode::OK, Json(serde_json::json!({})))
                }),
            )
            .route(
                "/v1/members/{id}/promote",
                post(move |Path(id): Path<u64>| async move {
                    l2.lock().unwrap().push(format!("promote {id}"));
                    StatusCode::OK
                }),
            )
            .route(
                "/v1/members/{id}",
                delete(move |Path(id): Path<u64>| async move {
                    l3.lock().unwrap().push(format!("remove {id}"));
                    (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error":"no leader","code":"no_leader"})))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn http_client_speaks_the_node_admin_api() {
        let log = Arc::new(Mutex::new(vec![]));
        let (url, server) = fake_node(log.clone()).await;
        let resolver = StaticResolver {
            nodes: BTreeMap::from([(
                "kv-0".to_string(),
                StaticAddresses {
                    http: url,
                    ..Default::default()
                },
            )]),
        };
        let client = HttpNodeClient::new(resolver, Duration::from_secs(5)).unwrap();
        let id = ClusterIdentity::new("kv", "ns");

        let status = client.status(&id, "kv-0").await.unwrap();
        assert_eq!((status.term, status.leader_id), (3, Some(NodeId(1))));

        let member = |n| AddMemberRequest {
            id: NodeId(n),
            name: format!("kv-{}", n - 1),
            peer_url: "http://p:2380".into(),
            client_url: "http://p:2379".into(),
            learner: true,
        };
        client.add_learner(&id, "kv-0", &member(2)).await.unwrap();
        assert!(matches!(
            client.add_learner(&id, "kv-0", &member(9)).await,
            Err(NodeError::ChangeInProgress { .. })
        ));
        client.promote(&id, "kv-0", NodeId(2)).await.unwrap();
        assert!(matches!(
            client.remove(&id, "kv-0", NodeId(2)).await,
            Err(NodeError::NoLeader { .. })
        ));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "add 2 http://p:2380",
                "add 9 http://p:2380",
                "promote 2",
                "remove 2"
            ]
        );

        // A pod the resolver does not know is an error, not a panic.
        assert!(client.status(&id, "kv-7").await.is_err());
        server.abort();
    }

    #[tokio::test]
    async fn an_unreachable_node_error_says_why() {
        // Nothing listens on port 1. The error must carry the cause (here a
        // refused connection; in a cluster often a DNS failure), not only
        // reqwest's "error sending request".
        let resolver = StaticResolver {
            nodes: BTreeMap::from([(
                "kv-0".to_string(),
                StaticAddresses {
                    http: "http://127.0.0.1:1".into(),
                    ..Default::default()
                },
            )]),
        };
        let client = HttpNodeClient::new(resolver, Duration::from_secs(5)).unwrap();
        let err = client
            .status(&ClusterIdentity::new("kv", "ns"), "kv-0")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }

    #[test]
    fn dns_resolver_uses_the_headless_service() {
        let id = ClusterIdentity::new("kv", "prod");
        assert_eq!(
            DnsResolver.http_url(&id, "kv-1"),
            "http://kv-1.kv-peers.prod.svc:8080"
        );
        assert_eq!(
            DnsResolver.peer_url(&id, "kv-1"),
            "http://kv-1.kv-peers.prod.svc:2380"
        );
    }
}
