//! How the operator talks to raftkv nodes: the [`NodeClient`] trait (status
//! and membership calls addressed to a pod), the [`AddressResolver`] that
//! turns a pod name into URLs, and the HTTP implementation.
//!
//! The trait is the seam for tests: reconcile tests use an in-memory fake,
//! and a test against real node processes can use [`HttpNodeClient`] with a
//! [`StaticResolver`] mapping pod names to loopback addresses.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use crate::identity::{ClusterIdentity, NodeId};
use crate::node_api::{AddMemberRequest, ApiErrorBody, NodeStatus, TransferLeaderRequest};
use crate::tls::operator_client::OperatorTls;

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
    /// The CA to trust and the client certificate to present when calling
    /// `cluster`'s members (`None`: plain HTTP, or none available yet).
    /// Called by every reconcile pass before the calls, so that renewed
    /// certificates are picked up.
    fn use_tls(&self, _cluster: &ClusterIdentity, _tls: Option<&OperatorTls>) {}
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
        cluster.http_url(pod)
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

type Transport = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A transport for one kind of cluster: plain, or TLS with the cluster's
/// CA and the operator's client certificate.
fn transport(tls: rustls::ClientConfig, timeout: Duration) -> Transport {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(timeout));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// A TLS configuration that trusts nothing, for the plain transport (which
/// is never asked for https: a TLS cluster has its own transport).
fn trust_nothing() -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    )
}

/// [`NodeClient`] over HTTP/JSON, and over HTTPS for clusters with
/// `spec.tls` (each with its own CA and client certificate, handed over
/// by the reconciler through [`NodeClient::use_tls`]).
#[derive(Debug)]
pub struct HttpNodeClient<R> {
    plain: Transport,
    /// `namespace/name` -> the cluster's TLS material and its transport.
    tls: Mutex<BTreeMap<String, (OperatorTls, Transport)>>,
    timeout: Duration,
    resolver: R,
}

/// A node's answer: status and body.
struct Answer {
    status: http::StatusCode,
    body: Bytes,
}

fn cluster_key(cluster: &ClusterIdentity) -> String {
    format!("{}/{}", cluster.namespace, cluster.name)
}

impl<R: AddressResolver> HttpNodeClient<R> {
    /// `timeout` bounds every call: a node that hangs must not stall a reconcile.
    pub fn new(resolver: R, timeout: Duration) -> Result<Self, NodeError> {
        let plain = trust_nothing().map_err(|e| NodeError::Unreachable {
            pod: String::new(),
            reason: format!("building the HTTP client: {e}"),
        })?;
        Ok(Self {
            plain: transport(plain, timeout),
            tls: Mutex::new(BTreeMap::new()),
            timeout,
            resolver,
        })
    }

    pub fn resolver(&self) -> &R {
        &self.resolver
    }

    /// The transport for `cluster`'s members.
    fn transport(&self, cluster: &ClusterIdentity, pod: &str) -> Result<Transport, NodeError> {
        if !cluster.tls {
            return Ok(self.plain.clone());
        }
        let map = self
            .tls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&cluster_key(cluster))
            .map(|(_, t)| t.clone())
            .ok_or_else(|| NodeError::Unreachable {
                pod: pod.to_string(),
                reason: "the cluster uses TLS and the operator has no certificate for it yet"
                    .into(),
            })
    }

    async fn call(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, NodeError> {
        let unreachable = |reason: String| NodeError::Unreachable {
            pod: pod.to_string(),
            reason,
        };
        let transport = self.transport(cluster, pod)?;
        let url = format!("{}{path}", self.resolver.http_url(cluster, pod));
        let mut req = http::Request::builder().method(method).uri(&url);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(format!("bad URL {url:?}: {e}")))?;
        let exchange = async {
            let resp = transport
                .request(req)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(error_chain(&e)))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
    }

    async fn send(
        &self,
        cluster: &ClusterIdentity,
        pod: &str,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, NodeError> {
        let resp = self.call(cluster, pod, method, path, body).await?;
        let status = resp.status;
        if status.is_success() {
            return Ok(resp.body);
        }
        let body: ApiErrorBody =
            serde_json::from_slice(&resp.body).unwrap_or_else(|_| ApiErrorBody {
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
        let body =
            body.map(serde_json::to_vec)
                .transpose()
                .map_err(|e| NodeError::BadResponse {
                    pod: pod.to_string(),
                    reason: format!("cannot encode the request: {e}"),
                })?;
        self.send(cluster, pod, http::Method::POST, path, body)
            .await
            .map(drop)
    }
}

impl<R: AddressResolver> NodeClient for HttpNodeClient<R> {
    fn use_tls(&self, cluster: &ClusterIdentity, tls: Option<&OperatorTls>) {
        let key = cluster_key(cluster);
        let mut map = self
            .tls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tls) = tls else {
            map.remove(&key);
            return;
        };
        if map.get(&key).is_some_and(|(known, _)| known == tls) {
            return; // keep the pooled connections
        }
        match tls.client_config() {
            Ok(config) => {
                map.insert(key, (tls.clone(), transport(config, self.timeout)));
            }
            Err(error) => {
                tracing::warn!(cluster = %key, %error, "cannot use the cluster's TLS material");
                map.remove(&key);
            }
        }
    }

    async fn status(&self, cluster: &ClusterIdentity, pod: &str) -> Result<NodeStatus, NodeError> {
        let body = self
            .send(cluster, pod, http::Method::GET, "/v1/status", None)
            .await?;
        serde_json::from_slice(&body).map_err(|e| NodeError::BadResponse {
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
        self.send(
            cluster,
            pod,
            http::Method::DELETE,
            &format!("/v1/members/{id}"),
            None,
        )
        .await
        .map(drop)
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
    use crate::tls::authority::{Authority, Usage};
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

    /// A member's HTTP port over TLS that requires a client certificate of
    /// `ca`, answering every request with a status.
    async fn tls_node(ca: &Authority) -> (u16, tokio::task::JoinHandle<()>) {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let now = time::OffsetDateTime::now_utc();
        let cert = ca
            .issue("kv-0", &["localhost".into()], Usage::Member, now)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = vec![CertificateDer::from_pem_slice(cert.cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        let body = r#"{"id":1,"name":"kv-0","role":"leader","term":7,"leader_id":1,
                            "commit_index":5,"applied_index":5,"last_log_index":5,"members":[]}"#;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn with_tls_the_operator_presents_its_certificate_and_trusts_only_the_cluster_ca() {
        let now = time::OffsetDateTime::now_utc();
        let ca = Authority::new("ns/kv", now).unwrap();
        let (port, server) = tls_node(&ca).await;
        let resolver = StaticResolver {
            nodes: BTreeMap::from([(
                "kv-0".to_string(),
                StaticAddresses {
                    http: format!("https://localhost:{port}"),
                    ..Default::default()
                },
            )]),
        };
        let client = HttpNodeClient::new(resolver, Duration::from_secs(5)).unwrap();
        let id = ClusterIdentity::new("kv", "ns").with_tls(true);
        // Nothing handed over yet: a clear error, no plain-text attempt.
        let err = client.status(&id, "kv-0").await.unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");

        let me = ca
            .issue("raftkv-operator", &[], Usage::Client, now)
            .unwrap();
        let good = OperatorTls {
            ca: ca.cert_pem().into(),
            identity: Some(me.clone()),
        };
        client.use_tls(&id, Some(&good));
        assert_eq!(client.status(&id, "kv-0").await.unwrap().term, 7);

        // A client certificate of another CA is refused by the member.
        let other = Authority::new("ns/other", now).unwrap();
        let stranger = other
            .issue("raftkv-operator", &[], Usage::Client, now)
            .unwrap();
        client.use_tls(
            &id,
            Some(&OperatorTls {
                ca: ca.cert_pem().into(),
                identity: Some(stranger),
            }),
        );
        assert!(client.status(&id, "kv-0").await.is_err());
        // A member whose certificate is not of the CA the operator trusts
        // is not believed.
        client.use_tls(
            &id,
            Some(&OperatorTls {
                ca: other.cert_pem().into(),
                identity: Some(me),
            }),
        );
        let err = client.status(&id, "kv-0").await.unwrap_err().to_string();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        // Back to the right material: it works again.
        client.use_tls(&id, Some(&good));
        assert_eq!(client.status(&id, "kv-0").await.unwrap().term, 7);
        server.abort();
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
