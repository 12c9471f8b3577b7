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
use crate::node_api::NodeRole;
use crate::observation::tests::status as node_status;

const NS: &str = "prod";
const CLUSTER: &str = "/apis/raftkv.io/v1alpha1/namespaces/prod/raftclusters/kv";

fn cluster(replicas: i32, retention: PvcRetention) -> RaftCluster {
    let mut c = crate::resources::test_cluster::cluster();
    c.spec.replicas = replicas;
    c.spec.pvc_retention = retention;
    c.metadata.generation = Some(4);
    c.metadata.finalizers = Some(vec![FINALIZER.into()]);
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
    vec![
        Expect::apply("/api/v1/namespaces/prod/services/kv-peers", |b| {
            assert_eq!(b["spec"]["publishNotReadyAddresses"], true)
        }),
        Expect::apply("/api/v1/namespaces/prod/services/kv", |b| {
            assert_eq!(b["spec"]["type"], "ClusterIP")
        }),
        match sts {
            Some(s) => Expect::get("/apis/apps/v1/namespaces/prod/statefulsets/kv", s),
            None => Expect::not_found(Method::GET, "/apis/apps/v1/namespaces/prod/statefulsets/kv"),
        },
        Expect::get("/api/v1/namespaces/prod/pods", pod_list),
        Expect::get("/api/v1/namespaces/prod/persistentvolumeclaims", pvc_list),
    ]
}

/// StatefulSet and PDB applies with the replica count and budget expected.
fn apply_owned(replicas: u32, max_unavailable: i32) -> Vec<Expect> {
    vec![
        Expect::apply("/apis/apps/v1/namespaces/prod/statefulsets/kv", move |b| {
            assert_eq!(b["spec"]["replicas"], replicas, "StatefulSet replicas");
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
    FakeNodes::with(
        (1..=n)
            .map(|i| {
                let role = if i == leader {
                    NodeRole::Leader
                } else {
                    NodeRole::Follower
                };
                node_status(i, role, 5, Some(leader), members)
            })
            .collect(),
    )
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
async fn a_new_cluster_gets_the_finalizer_first() {
    let mut c = cluster(3, PvcRetention::Retain);
    c.metadata.finalizers = None;
    let script = vec![Expect::new(Method::PATCH, CLUSTER, |b| {
        assert!(b.to_string().contains(FINALIZER), "{b}");
        let mut answer = serde_json::to_value(crate::resources::test_cluster::cluster()).unwrap();
        answer["metadata"]["finalizers"] = json!([FINALIZER]);
        (StatusCode::OK, answer)
    })];
    let action = run_scenario(c, FakeNodes::default(), script).await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn create_from_nothing_starts_one_pod_and_reports_bootstrapping() {
    let mut script = observe(None, pods(0), pvcs(&[]));
    script.extend(apply_owned(1, 0));
    script.push(Expect::event(NS, "ScalingUp"));
    script.push(status_write(|s| {
        assert_eq!(s["phase"], "Bootstrapping");
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

#[tokio::test]
async fn deletion_with_the_finalizer_deletes_volumes_then_releases() {
    let mut c = cluster(3, PvcRetention::Delete);
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
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
        let ops = b.as_array().unwrap();
        assert!(
            ops.iter()
                .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
            "{b}"
        );
        (
            StatusCode::OK,
            serde_json::to_value(crate::resources::test_cluster::cluster()).unwrap(),
        )
    }));
    let action = run_scenario(c, FakeNodes::default(), script).await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn deletion_with_retained_volumes_only_releases_the_finalizer() {
    let mut c = cluster(3, PvcRetention::Retain);
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
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
    // Every node answers, none is leader.
    let fake = FakeNodes::with(
        (1..=3)
            .map(|i| node_status(i, NodeRole::Candidate, 9, None, &[]))
            .collect(),
    );
    let mut script = observe(Some(statefulset(3, 0)), pods(3), pvcs(&[0, 1, 2]));
    script.extend(apply_owned(3, 0));
    script.push(Expect::event(NS, "QuorumLost"));
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
