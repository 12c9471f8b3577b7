//! Reconcile scenarios against the mocked API server (see `fixtures`): each
//! test lists every request the reconciler must make, in order, and what the
//! fake raftkv nodes must have been asked to do.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::crd::{Phase, RaftClusterStatus};
use crate::fixtures::{Expect, FakeNodes, context, serve};
use crate::node_api::{NodeRole, NodeStatus};
use crate::observation::tests::status as node_status;

const NS: &str = "prod";
const CLUSTER: &str = "/apis/raftkv.io/v1alpha1/namespaces/prod/raftclusters/kv";

fn cluster(replicas: i32, retention: PvcRetention) -> RaftCluster {
    let mut c = crate::resources::test_cluster::cluster();
    c.spec.replicas = replicas;
    c.spec.pvc_retention = retention;
    c.metadata.generation = Some(4);
    // Spec already seen: no EvenReplicas warning unless a test wants one.
    c.status = Some(RaftClusterStatus {
        observed_generation: Some(4),
        ..Default::default()
    });
    c
}

fn statefulset(replicas: u32, ready: u32) -> Value {
    json!({"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"kv","namespace":NS},
           "spec":{"replicas":replicas,"selector":{},"serviceName":"kv-peers","template":{}},
           "status":{"replicas":replicas,"readyReplicas":ready}})
}

fn list(kind: &str, names: &[String]) -> Value {
    let items: Vec<Value> = names
        .iter()
        .map(|n| json!({"metadata":{"name":n,"namespace":NS}}))
        .collect();
    json!({"apiVersion":"v1","kind":kind,"metadata":{},"items":items})
}

fn pods(n: u32) -> Value {
    list(
        "PodList",
        &(0..n).map(|i| format!("kv-{i}")).collect::<Vec<_>>(),
    )
}

fn pvcs(ordinals: &[u32]) -> Value {
    list(
        "PersistentVolumeClaimList",
        &ordinals
            .iter()
            .map(|i| format!("data-kv-{i}"))
            .collect::<Vec<_>>(),
    )
}

/// The observation requests every apply pass starts with.
fn observe(sts: Option<Value>, pod_list: Value, pvc_list: Value) -> Vec<Expect> {
    let new = sts.is_none();
    vec![
        Expect::apply("/api/v1/namespaces/prod/services/kv-peers", |b| {
            assert_eq!(b["spec"]["publishNotReadyAddresses"], true)
        }),
        Expect::apply("/api/v1/namespaces/prod/services/kv", |b| {
            assert_eq!(b["spec"]["type"], "ClusterIP")
        }),
        // A new cluster gets its peer secret; an existing one keeps it
        // (created once, never replaced).
        Expect::new(Method::POST, "/api/v1/namespaces/prod/secrets", move |b| {
            assert_eq!(b["metadata"]["name"], "kv-peer");
            assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
            if new {
                (StatusCode::CREATED, b.clone())
            } else {
                (
                    StatusCode::CONFLICT,
                    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"AlreadyExists","code":409,"message":"secrets \"kv-peer\" already exists"}),
                )
            }
        }),
        Expect::apply(
            "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/kv",
            |b| assert_eq!(b["spec"]["ingress"][0]["ports"][0]["port"], 2380),
        ),
        match sts {
            Some(s) => Expect::get("/apis/apps/v1/namespaces/prod/statefulsets/kv", s),
            None => Expect::not_found(Method::GET, "/apis/apps/v1/namespaces/prod/statefulsets/kv"),
        },
        Expect::get("/api/v1/namespaces/prod/pods", pod_list),
        Expect::get("/api/v1/namespaces/prod/persistentvolumeclaims", pvc_list),
    ]
}

/// Names of the env vars of the applied StatefulSet's container.
fn env_names(sts: &Value) -> Vec<String> {
    sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// StatefulSet and PDB applies with the replica count and budget expected;
/// a cluster that has a leader in the scenario has pods that join.
fn apply_owned(replicas: u32, max_unavailable: i32) -> Vec<Expect> {
    apply_owned_as(replicas, max_unavailable, "RAFTKV_JOIN")
}

fn apply_owned_as(replicas: u32, max_unavailable: i32, start_var: &'static str) -> Vec<Expect> {
    let key = match start_var {
        "RAFTKV_JOIN" => "join",
        _ => "initialCluster",
    };
    vec![
        start_config(key),
        Expect::apply("/apis/apps/v1/namespaces/prod/statefulsets/kv", move |b| {
            assert_eq!(b["spec"]["replicas"], replicas, "StatefulSet replicas");
            assert!(
                env_names(b).iter().any(|n| n == start_var),
                "{start_var} missing"
            );
            assert_eq!(b["spec"]["updateStrategy"]["type"], "OnDelete");
            assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
        }),
        Expect::apply(
            "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/kv",
            move |b| {
                assert_eq!(
                    b["spec"]["maxUnavailable"], max_unavailable,
                    "PDB maxUnavailable"
                )
            },
        ),
    ]
}

/// The start ConfigMap apply, holding exactly the key `key`.
fn start_config(key: &'static str) -> Expect {
    Expect::apply("/api/v1/namespaces/prod/configmaps/kv-start", move |b| {
        let keys: Vec<&String> = b["data"].as_object().unwrap().keys().collect();
        assert_eq!(keys, [key], "start ConfigMap keys");
        assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
    })
}

/// The status write; `check` sees the applied status.
fn status_write(check: impl FnOnce(&Value) + Send + 'static) -> Expect {
    Expect::new(Method::PATCH, &format!("{CLUSTER}/status"), move |b| {
        assert_eq!(b["kind"], "RaftCluster");
        check(&b["status"]);
        let mut answer = serde_json::to_value(crate::resources::test_cluster::cluster()).unwrap();
        answer["status"] = b["status"].clone();
        (StatusCode::OK, answer)
    })
}

/// `n` healthy nodes with the leader at `leader`; `members` is (id, voter, match).
fn nodes(n: u64, leader: u64, members: &[(u64, bool, Option<u64>)]) -> FakeNodes {
    FakeNodes::with(statuses(n, leader, members))
}

/// What nodes `1..=n` report, `leader` leading in term 5.
fn statuses(n: u64, leader: u64, members: &[(u64, bool, Option<u64>)]) -> Vec<NodeStatus> {
    (1..=n)
        .map(|i| {
            let role = if i == leader {
                NodeRole::Leader
            } else {
                NodeRole::Follower
            };
            node_status(i, role, 5, Some(leader), members)
        })
        .collect()
}

async fn run_scenario(
    c: RaftCluster,
    nodes: FakeNodes,
    script: Vec<Expect>,
) -> Result<Action, Error> {
    let (ctx, handle) = context(nodes);
    let verifier = serve(handle, script);
    let result = reconcile(Arc::new(c), ctx).await;
    tokio::time::timeout(Duration::from_secs(10), verifier)
        .await
        .expect("scenario timed out: a scripted request was never made")
        .expect("API server verifier failed");
    result
}

#[tokio::test]
async fn a_new_cluster_gets_no_finalizer() {
    // Straight to the owned objects: no PATCH adding a finalizer, which
    // would wedge deletion once the operator (or its RBAC) is gone.
    let mut script = observe(None, pods(0), pvcs(&[]));
    script.extend(apply_owned_as(1, 0, "RAFTKV_INITIAL_CLUSTER"));
    script.push(Expect::event(NS, "ScalingUp"));
    script.push(status_write(|_| {}));
    run_scenario(
        cluster(3, PvcRetention::Retain),
        FakeNodes::default(),
        script,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_finalizer_of_an_earlier_operator_version_is_removed() {
    let mut c = cluster(3, PvcRetention::Retain);
    c.metadata.finalizers = Some(vec!["example.com/other".into(), LEGACY_FINALIZER.into()]);
    c.metadata.resource_version = Some("17".into());
    let script = vec![Expect::new(Method::PATCH, CLUSTER, |b| {
        assert_eq!(b["metadata"]["finalizers"], json!(["example.com/other"]));
        assert_eq!(b["metadata"]["resourceVersion"], "17");
        (
            StatusCode::OK,
            serde_json::to_value(crate::resources::test_cluster::cluster()).unwrap(),
        )
    })];
    let action = run_scenario(c, FakeNodes::default(), script).await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn create_from_nothing_starts_one_pod_and_reports_bootstrapping() {
    let mut script = observe(None, pods(0), pvcs(&[]));
    script.extend(apply_owned_as(1, 0, "RAFTKV_INITIAL_CLUSTER"));
    script.push(Expect::event(NS, "ScalingUp"));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], "Bootstrapping");
        assert!(s.get("bootstrapped").is_none());
        assert_eq!(s["replicas"], 1);
        assert_eq!(s["observedGeneration"], 4);
        assert_eq!(s["conditions"][0]["type"], "Available");
        assert_eq!(s["conditions"][0]["status"], "False");
    }));
    let action = run_scenario(
        cluster(3, PvcRetention::Retain),
        FakeNodes::default(),
        script,
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn status_update_of_a_stable_cluster_reports_leader_term_and_commit() {
    let members = [(1, true, None), (2, true, Some(100)), (3, true, Some(100))];
    let fake = nodes(3, 2, &members);
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 1));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["bootstrapped"], true);
        assert_eq!(s["leader"], "kv-1");
        assert_eq!(s["leaderId"], 2);
        assert_eq!(s["term"], 5);
        assert_eq!(s["commitIndex"], 100);
        assert_eq!(s["readyReplicas"], 3);
        assert_eq!(s["members"].as_array().unwrap().len(), 3);
        assert_eq!(s["members"][1]["isLeader"], true);
    }));
    let action = run_scenario(cluster(3, PvcRetention::Retain), fake.clone(), script)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert!(
        fake.calls().is_empty(),
        "a stable cluster gets no admin calls: {:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn scale_up_raises_the_statefulset_then_adds_then_promotes() {
    // Pass 1: two voters, StatefulSet at 2: raise to 3.
    let two = [(1, true, None), (2, true, Some(100))];
    let mut script = observe(Some(statefulset(2, 2)), pods(2), pvcs(&[0, 1]));
    script.extend(apply_owned(3, 0));
    script.push(Expect::event(NS, "ScalingUp"));
    script.push(status_write(|s| assert_eq!(s["phase"], "Scaling")));
    run_scenario(cluster(3, PvcRetention::Retain), nodes(2, 1, &two), script)
        .await
        .unwrap();

    // Pass 2: pod kv-2 answers but is not a member: add it as a learner.
    let fake = nodes(3, 1, &two);
    let mut script = observe(Some(statefulset(3, 2)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 0));
    script.push(Expect::event(NS, "MemberAdded"));
    script.push(status_write(|s| {
        assert_eq!(s["message"], "adding member 3 as a learner")
    }));
    run_scenario(cluster(3, PvcRetention::Retain), fake.clone(), script)
        .await
        .unwrap();
    assert_eq!(
        fake.calls(),
        ["kv-0: add learner 3 kv-2 http://kv-2.kv-peers.prod.svc:2380 learner=true"]
    );

    // Pass 3: the learner has caught up: promote it (on the leader).
    let fake = nodes(
        3,
        1,
        &[(1, true, None), (2, true, Some(100)), (3, false, Some(95))],
    );
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 0));
    script.push(Expect::event(NS, "MemberPromoted"));
    script.push(status_write(|s| {
        assert_eq!(s["members"][2]["role"], "learner")
    }));
    run_scenario(cluster(3, PvcRetention::Retain), fake.clone(), script)
        .await
        .unwrap();
    assert_eq!(fake.calls(), ["kv-0: promote 3"]);
}

#[tokio::test]
async fn scale_down_with_the_leader_on_the_last_pod() {
    let three = [(1, true, Some(100)), (2, true, Some(100)), (3, true, None)];
    // Pass 1: leader is kv-2 (id 3), which must go: transfer first. The
    // spec change to an even count is warned about once.
    let fake = nodes(3, 3, &three);
    let mut c = cluster(2, PvcRetention::Delete);
    c.metadata.generation = Some(5);
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 0));
    script.push(Expect::event(NS, "LeaderTransferred"));
    script.push(Expect::event(NS, "EvenReplicas"));
    script.push(status_write(|s| assert_eq!(s["phase"], "Scaling")));
    run_scenario(c, fake.clone(), script).await.unwrap();
    assert_eq!(fake.calls(), ["kv-2: transfer leader to 1"]);

    // Pass 2: leadership moved to id 1: remove member 3 via the leader.
    let fake = nodes(3, 1, &three);
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 0));
    script.push(Expect::event(NS, "MemberRemoved"));
    script.push(status_write(|_| {}));
    run_scenario(cluster(2, PvcRetention::Delete), fake.clone(), script)
        .await
        .unwrap();
    assert_eq!(fake.calls(), ["kv-0: remove 3"]);

    // Pass 3: member 3 gone from the configuration: shrink the StatefulSet.
    let two = [(1, true, None), (2, true, Some(100))];
    let mut fake = nodes(2, 1, &two);
    fake.statuses.lock().unwrap().insert(
        "kv-2".into(),
        node_status(3, NodeRole::Learner, 5, None, &[]),
    );
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(2, 0));
    script.push(Expect::event(NS, "ScalingDown"));
    script.push(status_write(|s| assert_eq!(s["replicas"], 2)));
    run_scenario(cluster(2, PvcRetention::Delete), fake.clone(), script)
        .await
        .unwrap();
    assert!(fake.calls().is_empty());

    // Pass 4: pod kv-2 is gone; pvcRetention Delete removes its volume.
    fake = nodes(2, 1, &two);
    let mut script = observe(Some(statefulset(2, 2)), pods(2), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(2, 0));
    script.push(Expect::new(Method::DELETE, "/api/v1/namespaces/prod/persistentvolumeclaims/data-kv-2", |_| {
        (StatusCode::OK, json!({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"data-kv-2"}}))
    }));
    script.push(Expect::event(NS, "VolumeDeleted"));
    script.push(status_write(|_| {}));
    run_scenario(cluster(2, PvcRetention::Delete), fake, script)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_membership_change_in_flight_defers_without_failing() {
    // The node answers 409 (another change in flight): no event, no error,
    // the status still says what is pending, and the pass requeues soon.
    let fake = nodes(3, 1, &[(1, true, None), (2, true, Some(100))]);
    fake.busy.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut script = observe(Some(statefulset(3, 2)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 0));
    script.push(status_write(|s| assert_eq!(s["phase"], "Scaling")));
    let action = run_scenario(cluster(3, PvcRetention::Retain), fake.clone(), script)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert!(fake.calls().is_empty());
}

fn deleted(mut c: RaftCluster) -> RaftCluster {
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    c
}

#[tokio::test]
async fn a_cluster_being_deleted_is_left_to_the_garbage_collector() {
    // No request at all: owned objects (and volumes, through the
    // StatefulSet's whenDeleted policy) go through owner references.
    let action = run_scenario(
        deleted(cluster(3, PvcRetention::Delete)),
        FakeNodes::default(),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn deleting_a_cluster_with_the_legacy_finalizer_deletes_volumes_then_releases() {
    let mut c = deleted(cluster(3, PvcRetention::Delete));
    c.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    let mut script = vec![Expect::get(
        "/api/v1/namespaces/prod/persistentvolumeclaims",
        pvcs(&[0, 1]),
    )];
    for i in 0..2 {
        script.push(Expect::new(Method::DELETE, &format!("/api/v1/namespaces/prod/persistentvolumeclaims/data-kv-{i}"), |_| {
            (StatusCode::OK, json!({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"x"}}))
        }));
    }
    script.push(Expect::event(NS, "VolumesDeleted"));
    script.push(Expect::new(Method::PATCH, CLUSTER, |b| {
        assert_eq!(b["metadata"]["finalizers"], json!([]), "{b}");
        (
            StatusCode::OK,
            serde_json::to_value(crate::resources::test_cluster::cluster()).unwrap(),
        )
    }));
    let action = run_scenario(c, FakeNodes::default(), script).await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn deleting_a_cluster_with_retained_volumes_and_the_legacy_finalizer_only_releases_it() {
    let mut c = deleted(cluster(3, PvcRetention::Retain));
    c.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    let script = vec![Expect::new(Method::PATCH, CLUSTER, |_| {
        (
            StatusCode::OK,
            serde_json::to_value(crate::resources::test_cluster::cluster()).unwrap(),
        )
    })];
    run_scenario(c, FakeNodes::default(), script).await.unwrap();
}

#[tokio::test]
async fn losing_the_leader_is_recorded_as_quorum_lost_and_degraded() {
    let mut c = cluster(3, PvcRetention::Retain);
    c.status.as_mut().unwrap().leader = Some("kv-0".into());
    c.status.as_mut().unwrap().bootstrapped = true;
    // Every node answers, none is leader.
    let fake = FakeNodes::with(
        (1..=3)
            .map(|i| node_status(i, NodeRole::Candidate, 9, None, &[]))
            .collect(),
    );
    let mut script = observe(Some(statefulset(3, 0)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 0));
    script.push(Expect::event(NS, "LeaderLost"));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], Phase::Degraded.as_str());
        assert_eq!(s["term"], 9);
        assert!(s.get("leader").is_none());
    }));
    run_scenario(c, fake.clone(), script).await.unwrap();
    assert!(
        fake.calls().is_empty(),
        "no membership change without a leader"
    );
}

#[tokio::test]
async fn an_api_error_fails_the_pass_and_is_counted() {
    let (ctx, handle) = context(FakeNodes::default());
    let verifier = serve(
        handle,
        vec![Expect::new(
            Method::PATCH,
            "/api/v1/namespaces/prod/services/kv-peers",
            |_| {
                (
                    StatusCode::FORBIDDEN,
                    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"no"}),
                )
            },
        )],
    );
    let c = Arc::new(cluster(3, PvcRetention::Retain));
    let err = reconcile(c.clone(), ctx.clone()).await.unwrap_err();
    verifier.await.unwrap();
    assert_eq!(err.kind(), "kube");
    assert_eq!(
        error_policy(c, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert!(
        ctx.metrics
            .render()
            .unwrap()
            .contains(r#"raftkv_operator_reconcile_errors_total{error="kube"} 1"#)
    );
}

const SERVICE_MONITOR: &str = "/apis/monitoring.coreos.com/v1/namespaces/prod/servicemonitors/kv";

fn stable_three() -> FakeNodes {
    nodes(
        3,
        1,
        &[(1, true, None), (2, true, Some(100)), (3, true, Some(100))],
    )
}

#[tokio::test]
async fn monitoring_creates_a_service_monitor_when_its_crd_exists() {
    let mut c = cluster(3, PvcRetention::Retain);
    c.spec.monitoring.enabled = true;
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 1));
    script.push(Expect::get(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com",
        json!({"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
               "metadata":{"name":"servicemonitors.monitoring.coreos.com"},
               "spec":{"group":"monitoring.coreos.com","names":{"kind":"ServiceMonitor","plural":"servicemonitors"},"scope":"Namespaced","versions":[]}}),
    ));
    script.push(Expect::apply(SERVICE_MONITOR, |b| {
        assert_eq!(b["kind"], "ServiceMonitor");
        assert_eq!(b["spec"]["endpoints"][0]["path"], "/metrics");
    }));
    script.push(status_write(|s| assert_eq!(s["serviceMonitor"], true)));
    run_scenario(c, stable_three(), script).await.unwrap();
}

#[tokio::test]
async fn monitoring_without_the_prometheus_operator_is_skipped() {
    let mut c = cluster(3, PvcRetention::Retain);
    c.spec.monitoring.enabled = true;
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 1));
    script.push(Expect::not_found(
        Method::GET,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com",
    ));
    script.push(status_write(|s| assert!(s.get("serviceMonitor").is_none())));
    run_scenario(c, stable_three(), script).await.unwrap();
}

#[test]
fn a_lasting_condition_is_warned_about_once_and_again_after_it_cleared() {
    let missing = WarnOnce::default();
    assert!(missing.first());
    assert!(!missing.first());
    assert!(!missing.first());
    missing.clear();
    assert!(missing.first());
}

#[tokio::test]
async fn turning_monitoring_off_deletes_our_service_monitor() {
    let mut c = cluster(3, PvcRetention::Retain);
    c.status.as_mut().unwrap().service_monitor = true;
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 1));
    script.push(Expect::not_found(Method::DELETE, SERVICE_MONITOR));
    script.push(status_write(|s| assert!(s.get("serviceMonitor").is_none())));
    run_scenario(c, stable_three(), script).await.unwrap();
}

/// `helm uninstall` deletes the operator's ServiceAccount while it runs:
/// every call then fails with 401. SIGTERM must still stop it promptly.
#[tokio::test]
async fn the_controller_stops_within_the_grace_period_while_the_api_refuses_it() {
    let (ctx, mut handle) = context(FakeNodes::default());
    let refuse = tokio::spawn(async move {
        while let Some((_, send)) = handle.next_request().await {
            let body = json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Unauthorized","code":401,"message":"Unauthorized"});
            send.send_response(
                http::Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    let (trigger, stopping) = crate::shutdown::Shutdown::new();
    let started = std::time::Instant::now();
    let controller = tokio::spawn(crate::shutdown::bounded(
        run(ctx, stopping.clone().requested()),
        stopping,
        crate::shutdown::GRACE,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    trigger.fire();
    tokio::time::timeout(crate::shutdown::GRACE + Duration::from_secs(2), controller)
        .await
        .expect("the controller did not stop after shutdown was requested")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(6));
    refuse.abort();
}

/// Two scale-up steps in a row, on one operator context: each gets its own
/// event with its own note, not a series update of the first ("x2
/// StatefulSet raised to 2 pods").
#[tokio::test]
async fn every_step_of_the_same_kind_is_recorded_with_its_own_note() {
    let fake = nodes(1, 1, &[(1, true, None)]);
    let (ctx, handle) = context(fake.clone());
    let mut script = observe(Some(statefulset(1, 1)), pods(1), pvcs(&[0]));
    script.extend(apply_owned(2, 0));
    script.push(Expect::event_with_note(NS, "ScalingUp", "raised to 2 pods"));
    script.push(status_write(|_| {}));
    script.extend(observe(Some(statefulset(2, 2)), pods(2), pvcs(&[0, 1])));
    script.extend(apply_owned(3, 0));
    script.push(Expect::event_with_note(NS, "ScalingUp", "raised to 3 pods"));
    script.push(status_write(|_| {}));
    let verifier = serve(handle, script);
    let c = Arc::new(cluster(3, PvcRetention::Retain));
    reconcile(c.clone(), ctx.clone()).await.unwrap();
    // Member 2 joined and was promoted in between.
    let two = nodes(2, 1, &[(1, true, None), (2, true, Some(100))]);
    *fake.statuses.lock().unwrap() = two.statuses.lock().unwrap().clone();
    reconcile(c, ctx).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), verifier)
        .await
        .expect("scenario timed out")
        .expect("API server verifier failed");
}

fn created_at(second: i64) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
    )
}

/// Deleted with `pvcRetention: Retain`, applied again under the same name:
/// the volumes predate the new RaftCluster. All their pods start at once,
/// joining (none bootstraps a second cluster), with the same cluster token
/// as before, and the status says what is going on.
#[tokio::test]
async fn a_recreated_cluster_adopts_the_volumes_it_retained() {
    let mut c = cluster(3, PvcRetention::Retain);
    c.metadata.uid = Some("uid-of-the-new-object".into());
    c.metadata.creation_timestamp = Some(created_at(1_000));
    let mut old_pvcs = list("PersistentVolumeClaimList", &[]);
    old_pvcs["items"] = json!(
        (0..3)
            .map(
                |i| json!({"metadata":{"name":format!("data-kv-{i}"),"namespace":NS,
                                     "creationTimestamp":"1970-01-01T00:00:10Z"}})
            )
            .collect::<Vec<_>>()
    );
    let mut script = observe(None, pods(0), old_pvcs);
    script.push(start_config("join"));
    script.push(Expect::apply(
        "/apis/apps/v1/namespaces/prod/statefulsets/kv",
        |b| {
            assert_eq!(b["spec"]["replicas"], 3, "a pod for every retained volume");
            let env = &b["spec"]["template"]["spec"]["containers"][0]["env"];
            let var = |name: &str| {
                env.as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == name)
                    .map(|e| e["value"].clone())
            };
            assert_eq!(var("RAFTKV_CLUSTER_TOKEN"), Some(json!("prod/kv")));
        },
    ));
    script.push(Expect::apply(
        "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/kv",
        |_| {},
    ));
    script.push(Expect::event(NS, "ScalingUp"));
    script.push(Expect::event_with_note(
        NS,
        "AdoptingVolumes",
        "data-kv-0, data-kv-1, data-kv-2",
    ));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], "Bootstrapping");
        assert_eq!(s["clusterToken"], "prod/kv");
        let message = s["message"].as_str().unwrap();
        assert!(
            message.contains("adopting the volumes data-kv-0"),
            "{message}"
        );
        assert_eq!(s["conditions"][1]["type"], "Progressing");
        assert_eq!(s["conditions"][1]["reason"], "AdoptingVolumes");
    }));
    run_scenario(c, FakeNodes::default(), script).await.unwrap();
}

/// A member whose volume belongs to another cluster id crash-loops; the
/// reason, from the pod's termination message, reaches the status and an
/// event instead of an endless "Bootstrapping".
#[tokio::test]
async fn a_member_refusing_its_volume_fails_the_cluster_with_the_reason() {
    let pod_list = json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":[{
        "metadata":{"name":"kv-0","namespace":NS},
        "status":{"containerStatuses":[{
            "name":"raftkv","image":"raftkv","imageID":"","ready":false,"restartCount":4,
            "state":{"waiting":{"reason":"CrashLoopBackOff"}},
            "lastState":{"terminated":{"exitCode":1,
                "message":"Error: /var/lib/raftkv/log.redb: belongs to cluster 0x1a, not to this node's cluster 0x2b"}}}]}}]});
    let mut script = observe(Some(statefulset(1, 0)), pod_list, pvcs(&[0]));
    script.extend(apply_owned_as(1, 0, "RAFTKV_INITIAL_CLUSTER"));
    script.push(Expect::event_with_note(
        NS,
        "DataDirRefused",
        "kv-0 refuses data-kv-0",
    ));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], "Failed");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains("belongs to cluster 0x1a"),
            "{s}"
        );
        assert_eq!(s["conditions"][2]["type"], "Degraded");
        assert_eq!(s["conditions"][2]["status"], "True");
        assert_eq!(s["conditions"][2]["reason"], "DataDirRefused");
        assert_eq!(s["conditions"][0]["reason"], "DataDirRefused");
    }));
    run_scenario(
        cluster(3, PvcRetention::Retain),
        FakeNodes::default(),
        script,
    )
    .await
    .unwrap();
}

/// Pods `kv-0..n` created from the given template revisions.
fn pods_at(revisions: &[&str]) -> Value {
    let items: Vec<Value> = revisions
        .iter()
        .enumerate()
        .map(|(i, rev)| {
            json!({"metadata":{"name":format!("kv-{i}"),"namespace":NS,
                   "creationTimestamp":"2026-01-01T00:00:00Z",
                   "labels":{"controller-revision-hash":rev}}})
        })
        .collect();
    json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":items})
}

fn statefulset_at(revision: &str) -> Value {
    let mut sts = statefulset(3, 3);
    sts["metadata"]["generation"] = json!(2);
    sts["status"]["observedGeneration"] = json!(2);
    sts["status"]["updateRevision"] = json!(revision);
    sts
}

/// A template change: the StatefulSet (OnDelete) replaces nothing; the
/// operator deletes the outdated follower's pod, and only that one.
#[tokio::test]
async fn an_outdated_follower_pod_is_deleted_to_roll_it() {
    let members = [(1, true, None), (2, true, Some(100)), (3, true, Some(100))];
    let fake = nodes(3, 1, &members);
    let mut script = observe(
        Some(statefulset_at("kv-new")),
        pods_at(&["kv-old", "kv-old", "kv-old"]),
        pvcs(&[0, 1, 2]),
    );
    script.extend(apply_owned(3, 1));
    script.push(Expect::new(
        Method::DELETE,
        "/api/v1/namespaces/prod/pods/kv-2",
        |_| {
            (
                StatusCode::OK,
                json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"kv-2","namespace":NS}}),
            )
        },
    ));
    script.push(Expect::event_with_note(NS, "PodReplaced", "deleted kv-2"));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], "Upgrading");
        assert_eq!(s["conditions"][1]["reason"], "ReplacingPod");
    }));
    run_scenario(cluster(3, PvcRetention::Retain), fake.clone(), script)
        .await
        .unwrap();
    assert!(
        fake.calls().is_empty(),
        "no membership change: {:?}",
        fake.calls()
    );
}

/// The PVC of kv-1 is not the one its member joined with: the member is
/// removed (to be added back as a learner), with a warning.
#[tokio::test]
async fn a_member_whose_pvc_was_replaced_is_removed() {
    let members = [(1, true, None), (2, true, Some(100)), (3, true, Some(100))];
    let fake = nodes(3, 1, &members);
    let mut c = cluster(3, PvcRetention::Retain);
    if let Some(s) = c.status.as_mut() {
        s.member_volumes = [("kv-0", "u0"), ("kv-1", "u1"), ("kv-2", "u2")]
            .into_iter()
            .map(|(p, u)| (p.to_string(), u.to_string()))
            .collect();
    }
    let mut pvc_list = pvcs(&[0, 1, 2]);
    for (i, uid) in ["u0", "u1-new", "u2"].iter().enumerate() {
        pvc_list["items"][i]["metadata"]["uid"] = json!(uid);
    }
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvc_list);
    script.extend(apply_owned(3, 1));
    script.push(Expect::event_with_note(
        NS,
        "VolumeLost",
        "kv-1 (id 2) lost its data",
    ));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], "Degraded");
        assert_eq!(s["conditions"][2]["reason"], "VolumeLost");
        // Still the old record: it is replaced once the member left.
        assert_eq!(s["memberVolumes"]["kv-1"], "u1");
    }));
    run_scenario(c, fake.clone(), script).await.unwrap();
    assert_eq!(fake.calls(), ["kv-0: remove 2"]);
}

/// kv-1's data directory was emptied on the same PVC: its node reports
/// another storage id than the one its member joined with, and the member
/// is removed (to be added back as a learner) just as for a new PVC.
#[tokio::test]
async fn a_member_whose_data_directory_was_emptied_is_removed() {
    let members = [(1, true, None), (2, true, Some(100)), (3, true, Some(100))];
    let mut reported = statuses(3, 1, &members);
    for (s, id) in reported.iter_mut().zip(["s0", "s1-new", "s2"]) {
        s.storage_id = Some(id.into());
    }
    let fake = FakeNodes::with(reported);
    let mut c = cluster(3, PvcRetention::Retain);
    if let Some(s) = c.status.as_mut() {
        s.member_storage = [("kv-0", "s0"), ("kv-1", "s1"), ("kv-2", "s2")]
            .into_iter()
            .map(|(p, u)| (p.to_string(), u.to_string()))
            .collect();
    }
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 1));
    script.push(Expect::event_with_note(
        NS,
        "VolumeLost",
        "kv-1 (id 2) lost its data",
    ));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], "Degraded");
        assert_eq!(s["conditions"][2]["reason"], "VolumeLost");
        assert_eq!(s["memberStorage"]["kv-1"], "s1");
        assert_eq!(s["memberStorage"]["kv-2"], "s2");
    }));
    run_scenario(c, fake.clone(), script).await.unwrap();
    assert_eq!(fake.calls(), ["kv-0: remove 2"]);
}

/// A stable cluster with `tls.mode: auto`, on the pass after an upgrade of
/// the operator (or its first): the CA is made and stored, every member,
/// the operator and the users get a certificate, the operator is handed
/// its own before it calls the members, and the pods get https URLs.
#[tokio::test]
async fn tls_auto_makes_a_ca_and_a_certificate_per_member_before_calling_them() {
    let members = [(1, true, None), (2, true, Some(100)), (3, true, Some(100))];
    let fake = nodes(3, 2, &members);
    let mut c = cluster(3, PvcRetention::Retain);
    c.spec.tls.mode = crate::crd::TlsMode::Auto;
    let secrets = "/api/v1/namespaces/prod/secrets";
    let mut script = observe(Some(statefulset(3, 3)), pods(3), pvcs(&[0, 1, 2]));
    script.extend([
        Expect::not_found(Method::GET, &format!("{secrets}/kv-ca")),
        Expect::new(Method::POST, secrets, |b| {
            assert_eq!(b["metadata"]["name"], "kv-ca");
            assert_eq!(b["type"], "kubernetes.io/tls");
            assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
            (StatusCode::CREATED, b.clone())
        }),
        Expect::not_found(Method::GET, &format!("{secrets}/kv-tls")),
        Expect::not_found(Method::GET, &format!("{secrets}/kv-operator-tls")),
        Expect::not_found(Method::GET, &format!("{secrets}/kv-client-tls")),
        Expect::apply(&format!("{secrets}/kv-tls"), |b| {
            let keys: Vec<&String> = b["data"].as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                [
                    "ca.crt", "kv-0.crt", "kv-0.key", "kv-1.crt", "kv-1.key", "kv-2.crt",
                    "kv-2.key"
                ]
            );
        }),
        Expect::apply(&format!("{secrets}/kv-operator-tls"), |b| {
            assert_eq!(b["type"], "kubernetes.io/tls")
        }),
        Expect::apply(&format!("{secrets}/kv-client-tls"), |b| {
            assert_eq!(b["type"], "kubernetes.io/tls")
        }),
        start_config("join"),
        Expect::apply("/apis/apps/v1/namespaces/prod/statefulsets/kv", |b| {
            let env = &b["spec"]["template"]["spec"]["containers"][0]["env"];
            let value = |n: &str| {
                env.as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == n)
                    .map(|e| e["value"].clone())
            };
            assert_eq!(
                value("RAFTKV_ADVERTISE_PEER"),
                Some(json!("https://$(RAFTKV_NAME).kv-peers.prod.svc:2380"))
            );
            assert_eq!(value("RAFTKV_CLIENT_CERT_AUTH"), Some(json!("true")));
        }),
        Expect::apply(
            "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/kv",
            |_| {},
        ),
    ]);
    script.push(status_write(|s| assert_eq!(s["phase"], "Running")));
    run_scenario(c, fake.clone(), script).await.unwrap();
    let handed = fake.tls.lock().unwrap().get("prod/kv").cloned().flatten();
    let handed = handed.expect("the operator's TLS material was handed to the node client");
    assert!(handed.ca.contains("BEGIN CERTIFICATE"));
    assert!(
        handed.identity.is_some(),
        "the operator presents a client certificate"
    );
}
