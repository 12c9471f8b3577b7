//! Test doubles for reconcile tests: a mocked Kubernetes API server that
//! answers a scripted sequence of requests and asserts each one (method,
//! path, body), and an in-memory [`NodeClient`] standing in for raftkv nodes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use crate::controller::{Context, Settings};
use crate::identity::{ClusterIdentity, NodeId};
use crate::metrics::Metrics;
use crate::node_api::{AddMemberRequest, NodeStatus};
use crate::node_client::{DnsResolver, NodeClient, NodeError};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Checks a request body and produces the response.
type Responder = Box<dyn FnOnce(&Value) -> (StatusCode, Value) + Send>;

/// One expected request of a scenario.
pub struct Expect {
    method: Method,
    path: String,
    query_contains: Option<&'static str>,
    respond: Responder,
}

impl Expect {
    pub fn new(
        method: Method,
        path: &str,
        respond: impl FnOnce(&Value) -> (StatusCode, Value) + Send + 'static,
    ) -> Self {
        Self {
            method,
            path: path.into(),
            query_contains: None,
            respond: Box::new(respond),
        }
    }

    /// A server-side apply PATCH (must carry our field manager and force);
    /// `check` inspects the applied object, which is echoed back.
    pub fn apply(path: &str, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        let mut e = Self::new(Method::PATCH, path, move |body| {
            check(body);
            (StatusCode::OK, body.clone())
        });
        e.query_contains = Some("fieldManager=raftkv-operator");
        e
    }

    pub fn get(path: &str, answer: Value) -> Self {
        Self::new(Method::GET, path, move |_| (StatusCode::OK, answer))
    }

    pub fn not_found(method: Method, path: &str) -> Self {
        Self::new(method, path, |_| {
            (
                StatusCode::NOT_FOUND,
                json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}),
            )
        })
    }

    /// An event recorded through the Recorder, with the given reason.
    pub fn event(ns: &str, reason: &'static str) -> Self {
        Self::new(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            move |body| {
                assert_eq!(body["reason"], reason, "event: {body}");
                (StatusCode::CREATED, body.clone())
            },
        )
    }
}

impl Expect {
    /// A new event (a POST, not a series update of an earlier one) with
    /// this reason and a note containing `note`.
    pub fn event_with_note(ns: &str, reason: &'static str, note: &'static str) -> Self {
        Self::new(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            move |body| {
                assert_eq!(body["reason"], reason, "event: {body}");
                let got = body["note"].as_str().unwrap_or_default();
                assert!(got.contains(note), "event note {got:?} lacks {note:?}");
                (StatusCode::CREATED, body.clone())
            },
        )
    }
}

/// Serve `script` in order; panics (failing the returned task) on the first
/// request that does not match.
pub fn serve(mut handle: Handle, script: Vec<Expect>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for (i, expect) in script.into_iter().enumerate() {
            let (request, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request {i} never came"));
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            assert_eq!(
                (&method, path.as_str()),
                (&expect.method, expect.path.as_str()),
                "request {i}: expected {} {}, got {method} {path}?{query}",
                expect.method,
                expect.path
            );
            if let Some(q) = expect.query_contains {
                assert!(
                    query.contains(q),
                    "request {i} {method} {path}: query {query:?} lacks {q}"
                );
            }
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let (status, answer) = (expect.respond)(&body);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    })
}

/// An in-memory raftkv cluster: `status` answers from a map by pod name
/// (absent = unreachable); admin calls are logged.
#[derive(Debug, Default, Clone)]
pub struct FakeNodes {
    pub statuses: Arc<Mutex<BTreeMap<String, NodeStatus>>>,
    pub calls: Arc<Mutex<Vec<String>>>,
    /// When set, admin calls answer "membership change in progress".
    pub busy: Arc<AtomicBool>,
    /// The TLS material the reconciler handed over, per `namespace/name`.
    pub tls: Arc<Mutex<BTreeMap<String, Option<crate::tls::operator_client::OperatorTls>>>>,
}

impl FakeNodes {
    pub fn with(statuses: Vec<NodeStatus>) -> Self {
        let nodes = Self::default();
        for s in statuses {
            nodes.statuses.lock().unwrap().insert(s.name.clone(), s);
        }
        nodes
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn log(&self, pod: &str, what: String) -> Result<(), NodeError> {
        if !self.statuses.lock().unwrap().contains_key(pod) {
            return Err(NodeError::Unreachable {
                pod: pod.into(),
                reason: "fake: no such node".into(),
            });
        }
        if self.busy.load(Ordering::Relaxed) {
            return Err(NodeError::ChangeInProgress { pod: pod.into() });
        }
        self.calls.lock().unwrap().push(format!("{pod}: {what}"));
        Ok(())
    }
}

impl NodeClient for FakeNodes {
    fn use_tls(
        &self,
        cluster: &ClusterIdentity,
        tls: Option<&crate::tls::operator_client::OperatorTls>,
    ) {
        self.tls.lock().unwrap().insert(
            format!("{}/{}", cluster.namespace, cluster.name),
            tls.cloned(),
        );
    }
    async fn status(&self, _: &ClusterIdentity, pod: &str) -> Result<NodeStatus, NodeError> {
        self.statuses
            .lock()
            .unwrap()
            .get(pod)
            .cloned()
            .ok_or_else(|| NodeError::Unreachable {
                pod: pod.into(),
                reason: "fake: down".into(),
            })
    }
    async fn add_learner(
        &self,
        _: &ClusterIdentity,
        pod: &str,
        m: &AddMemberRequest,
    ) -> Result<(), NodeError> {
        self.log(
            pod,
            format!(
                "add learner {} {} {} learner={}",
                m.id, m.name, m.peer_url, m.learner
            ),
        )
    }
    async fn promote(&self, _: &ClusterIdentity, pod: &str, id: NodeId) -> Result<(), NodeError> {
        self.log(pod, format!("promote {id}"))
    }
    async fn remove(&self, _: &ClusterIdentity, pod: &str, id: NodeId) -> Result<(), NodeError> {
        self.log(pod, format!("remove {id}"))
    }
    async fn transfer_leader(
        &self,
        _: &ClusterIdentity,
        pod: &str,
        to: NodeId,
    ) -> Result<(), NodeError> {
        self.log(pod, format!("transfer leader to {to}"))
    }
}

/// A context whose API client is the mock server and whose nodes are fake.
pub fn context(nodes: FakeNodes) -> (Arc<Context<FakeNodes, DnsResolver>>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let settings = Settings {
        busy_requeue: Duration::from_secs(5),
        stable_requeue: Duration::from_secs(30),
        max_catch_up_lag: 10,
        rollout_timeout: Duration::from_secs(60),
        member_down_threshold: Duration::from_secs(60),
    };
    let ctx = Context::new(
        client,
        nodes,
        DnsResolver,
        Arc::new(Metrics::new().unwrap()),
        settings,
    );
    (Arc::new(ctx), handle)
}
