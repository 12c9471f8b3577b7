//! The reconciler: one pass observes a `RaftCluster` (owned objects, pods,
//! volumes and every node's `/v1/status`), applies the owned objects with
//! server-side apply, carries out the planner's single next step, records
//! an event for it and writes the status.
//!
//! Everything is derived from what is observed on each pass, so a pass can
//! be interrupted anywhere and the next one continues correctly.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use tracing::{info, instrument, warn};

use crate::cluster_status::{self, StatusInput};
use crate::crd::{PvcRetention, RaftCluster, RaftClusterStatus};
use crate::identity::{ClusterIdentity, FIELD_MANAGER, NodeId};
use crate::metrics::Metrics;
use crate::node_client::{AddressResolver, NodeClient, NodeError};
use crate::node_steps::{self, NodeStepOutcome};
use crate::observation::ClusterObservation;
use crate::planner::{self, PlanInput, Step};
use crate::resources::statefulset::StartMode;
use crate::resources::{client_service, headless_service, pdb, service_monitor, statefulset};

/// Finalizer that lets the operator delete volumes before the cluster goes.
pub const FINALIZER: &str = "raftkv.io/cleanup";
const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";

/// A failed reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("raftkv node: {0}")]
    Node(#[from] NodeError),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// Low-cardinality label for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Node(_) => "node",
            Error::Serialize { .. } => "serialize",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Tunables of the reconciler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Requeue while a change is under way or the cluster is not healthy.
    pub busy_requeue: Duration,
    /// Requeue of a stable cluster, to keep status (term, commit) fresh.
    pub stable_requeue: Duration,
    /// Learner catch-up threshold (entries behind the commit index).
    pub max_catch_up_lag: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            busy_requeue: Duration::from_secs(5),
            stable_requeue: Duration::from_secs(30),
            max_catch_up_lag: 100,
        }
    }
}

/// Shared state of every reconcile.
pub struct Context<N, R> {
    pub client: Client,
    pub node: N,
    pub resolver: R,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}

impl<N, R> std::fmt::Debug for Context<N, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<N: NodeClient, R: AddressResolver> Context<N, R> {
    pub fn new(
        client: Client,
        node: N,
        resolver: R,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            node,
            resolver,
            recorder,
            metrics,
            settings,
        }
    }
}

/// Entry point called by the controller runtime.
#[instrument(skip_all, fields(cluster = %cluster_status::display_name(&cluster)))]
pub async fn reconcile<N: NodeClient, R: AddressResolver>(
    cluster: Arc<RaftCluster>,
    ctx: Arc<Context<N, R>>,
) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let started = Instant::now();
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    let api: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            FinalizerEvent::Apply(c) => apply(&c, &ctx).await,
            FinalizerEvent::Cleanup(c) => cleanup(&c, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(inner)
        | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// What to do after a failed pass: count it and retry soon.
pub fn error_policy<N: NodeClient, R: AddressResolver>(
    cluster: Arc<RaftCluster>,
    error: &Error,
    ctx: Arc<Context<N, R>>,
) -> Action {
    warn!(cluster = %cluster_status::display_name(&cluster), %error, "reconcile failed");
    ctx.metrics
        .failures
        .with_label_values(&[error.kind()])
        .inc();
    Action::requeue(ctx.settings.busy_requeue)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn server_side_apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.patch(name, &apply_params(), &Patch::Apply(obj)).await?)
}

/// Everything read from the API server on one pass.
struct KubeObservation {
    statefulset_replicas: u32,
    ready_replicas: i32,
    pods: BTreeSet<u32>,
    pvcs: BTreeSet<u32>,
}

async fn observe_kube(client: &Client, id: &ClusterIdentity) -> Result<KubeObservation, Error> {
    let ns = &id.namespace;
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&id.statefulset())
        .await?;
    let selector = ListParams::default().labels(&id.selector_string());
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&selector)
        .await?;
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&selector)
        .await?;
    Ok(KubeObservation {
        statefulset_replicas: sts
            .as_ref()
            .and_then(|s| s.spec.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        ready_replicas: sts
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        pods: pods
            .items
            .into_iter()
            .filter_map(|p| id.ordinal_of(&p.name_any()))
            .collect(),
        pvcs: pvcs
            .items
            .into_iter()
            .filter_map(|p| id.pvc_ordinal_of(&p.name_any()))
            .collect(),
    })
}

async fn apply<N: NodeClient, R: AddressResolver>(
    cluster: &RaftCluster,
    ctx: &Context<N, R>,
) -> Result<Action, Error> {
    let client = &ctx.client;
    let id = ClusterIdentity::of(cluster);
    let ns = id.namespace.as_str();
    let services = Api::<Service>::namespaced(client.clone(), ns);
    server_side_apply(
        &services,
        &id.headless_service(),
        &headless_service::build(cluster),
    )
    .await?;
    server_side_apply(
        &services,
        &id.client_service(),
        &client_service::build(cluster),
    )
    .await?;

    let kube_obs = observe_kube(client, &id).await?;
    let mut ordinals: BTreeSet<u32> = (0..kube_obs.statefulset_replicas).collect();
    ordinals.extend(kube_obs.pods.iter().copied());
    let obs = node_steps::observe(&ctx.node, &id, &ordinals).await;
    let raft = obs.raft();
    let desired = u32::try_from(cluster.spec.replicas.max(1)).unwrap_or(1);
    let step = planner::next_step(&PlanInput {
        desired,
        statefulset_replicas: kube_obs.statefulset_replicas,
        raft: raft.clone(),
        healthy: obs.healthy(),
        pods: kube_obs.pods.clone(),
        pvcs: kube_obs.pvcs.clone(),
        delete_pvcs: cluster.spec.pvc_retention == PvcRetention::Delete,
        max_catch_up_lag: ctx.settings.max_catch_up_lag,
    });
    info!(?step, "planned");

    let replicas = match step {
        Step::RaiseStatefulSet { replicas } | Step::ShrinkStatefulSet { replicas } => replicas,
        _ => kube_obs.statefulset_replicas,
    };
    let replicas = i32::try_from(replicas).unwrap_or(i32::MAX);
    let start_mode = if cluster_status::is_bootstrapped(cluster, &obs) {
        StartMode::Join
    } else {
        StartMode::Bootstrap
    };
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), ns);
    server_side_apply(
        &sts_api,
        &id.statefulset(),
        &statefulset::build(cluster, replicas, start_mode),
    )
    .await?;

    // The budget follows the smallest voter count the cluster may have
    // while it changes; with no leader visible, assume the worst.
    let voters = raft
        .as_ref()
        .map_or(1, |r| r.members.iter().filter(|m| m.voter).count());
    let budget_voters = i32::try_from(voters)
        .unwrap_or(1)
        .min(cluster.spec.replicas)
        .max(1);
    let pdb_api = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns);
    server_side_apply(&pdb_api, &id.pdb(), &pdb::build(cluster, budget_voters)).await?;

    let service_monitor = reconcile_service_monitor(cluster, ctx, &id).await?;

    let outcome = carry_out(cluster, ctx, &id, &obs, &step).await?;

    let mut status = cluster_status::build(
        cluster,
        &StatusInput {
            observation: &obs,
            step: &step,
            statefulset_replicas: replicas,
            ready_replicas: kube_obs.ready_replicas,
            now: Timestamp::now(),
        },
    );
    status.service_monitor = service_monitor;
    warn_on_transitions(cluster, ctx, &status).await;
    write_status(cluster, ctx, &status).await?;
    ctx.metrics.observe_cluster(ns, &id.name, &status);

    let stable = step == Step::Stable
        && status.phase == Some(crate::crd::Phase::Running)
        && outcome == Outcome::Done;
    Ok(Action::requeue(if stable {
        ctx.settings.stable_requeue
    } else {
        ctx.settings.busy_requeue
    }))
}

/// Create the ServiceMonitor when monitoring is on and the Prometheus
/// Operator's CRD exists; delete the one we created when monitoring is
/// turned off. Returns whether a ServiceMonitor of ours now exists.
async fn reconcile_service_monitor<N, R>(
    cluster: &RaftCluster,
    ctx: &Context<N, R>,
    id: &ClusterIdentity,
) -> Result<bool, Error> {
    let api = Api::<service_monitor::ServiceMonitor>::namespaced(ctx.client.clone(), &id.namespace);
    if !cluster.spec.monitoring.enabled {
        if cluster.status.as_ref().is_some_and(|s| s.service_monitor) {
            delete_ignoring_absent(&api, &id.service_monitor()).await?;
        }
        return Ok(false);
    }
    let crds = Api::<CustomResourceDefinition>::all(ctx.client.clone());
    if crds.get_opt(SERVICE_MONITOR_CRD).await?.is_none() {
        warn!("monitoring.enabled but the ServiceMonitor CRD is not installed; skipping");
        return Ok(false);
    }
    server_side_apply(
        &api,
        &id.service_monitor(),
        &service_monitor::build(cluster),
    )
    .await?;
    Ok(true)
}

/// Whether the planned step went through.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    /// The node refused for a transient reason (change in flight, no
    /// leader): retry on the short requeue, not an error.
    Deferred,
}

async fn carry_out<N: NodeClient, R: AddressResolver>(
    cluster: &RaftCluster,
    ctx: &Context<N, R>,
    id: &ClusterIdentity,
    obs: &ClusterObservation,
    step: &Step,
) -> Result<Outcome, Error> {
    if node_steps::apply(&ctx.node, &ctx.resolver, id, obs, step).await?
        == NodeStepOutcome::Deferred
    {
        return Ok(Outcome::Deferred);
    }
    if let Step::DeletePvc { ordinal } = step {
        let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &id.namespace);
        delete_ignoring_absent(&api, &id.pvc(*ordinal)).await?;
    }
    if let Some((reason, note)) = event_for(step, id) {
        publish(ctx, cluster, EventType::Normal, reason, note).await;
    }
    Ok(Outcome::Done)
}

/// The event that records a step, if it changed something.
fn event_for(step: &Step, id: &ClusterIdentity) -> Option<(&'static str, String)> {
    let pod_of = |n: NodeId| n.ordinal().map_or_else(|| n.to_string(), |o| id.pod(o));
    Some(match step {
        Step::RaiseStatefulSet { replicas } => (
            "ScalingUp",
            format!("StatefulSet raised to {replicas} pods"),
        ),
        Step::ShrinkStatefulSet { replicas } => (
            "ScalingDown",
            format!("StatefulSet shrunk to {replicas} pods"),
        ),
        Step::AddLearner { id: n, .. } => (
            "MemberAdded",
            format!("{} (id {n}) added as a learner", pod_of(*n)),
        ),
        Step::Promote { id: n } => (
            "MemberPromoted",
            format!("{} (id {n}) promoted to voter", pod_of(*n)),
        ),
        Step::TransferLeader { from, to } => (
            "LeaderTransferred",
            format!("leadership moved from {} to {}", pod_of(*from), pod_of(*to)),
        ),
        Step::RemoveMember { id: n } => (
            "MemberRemoved",
            format!("{} (id {n}) removed from the configuration", pod_of(*n)),
        ),
        Step::DeletePvc { ordinal } => ("VolumeDeleted", format!("deleted {}", id.pvc(*ordinal))),
        Step::WaitCatchUp { .. } | Step::Wait(_) | Step::Stable => return None,
    })
}

/// Warnings about state changes the user should notice.
async fn warn_on_transitions<N, R>(
    cluster: &RaftCluster,
    ctx: &Context<N, R>,
    status: &RaftClusterStatus,
) {
    let previous = cluster.status.as_ref();
    if previous.is_some_and(|p| p.leader.is_some()) && status.leader.is_none() {
        publish(
            ctx,
            cluster,
            EventType::Warning,
            "QuorumLost",
            "no member reports a leader".into(),
        )
        .await;
    }
    let spec_changed = previous.and_then(|p| p.observed_generation) != cluster.metadata.generation;
    if spec_changed && cluster.spec.replicas % 2 == 0 {
        let note = format!(
            "{} replicas tolerate no more failures than {}; prefer an odd number",
            cluster.spec.replicas,
            cluster.spec.replicas - 1
        );
        publish(ctx, cluster, EventType::Warning, "EvenReplicas", note).await;
    }
}

/// Events are advisory: failing to record one must not fail the pass.
async fn publish<N, R>(
    ctx: &Context<N, R>,
    cluster: &RaftCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        warn!(error = %e, reason, "could not record event");
    }
}

async fn write_status<N, R>(
    cluster: &RaftCluster,
    ctx: &Context<N, R>,
    status: &RaftClusterStatus,
) -> Result<(), Error> {
    let api: Api<RaftCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "raftkv.io/v1alpha1",
        "kind": "RaftCluster",
        "status": serde_json::to_value(status).map_err(|source| Error::Serialize { what: "status", source })?,
    });
    api.patch_status(&cluster.name_any(), &apply_params(), &Patch::Apply(patch))
        .await?;
    Ok(())
}

async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The cluster is being deleted: owned objects go with it through owner
/// references; volumes are deleted here when `pvcRetention: Delete`.
async fn cleanup<N, R>(cluster: &RaftCluster, ctx: &Context<N, R>) -> Result<Action, Error> {
    let id = ClusterIdentity::of(cluster);
    if cluster.spec.pvc_retention == PvcRetention::Delete {
        let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &id.namespace);
        let pvcs = api
            .list(&ListParams::default().labels(&id.selector_string()))
            .await?;
        for pvc in pvcs.items {
            delete_ignoring_absent(&api, &pvc.name_any()).await?;
        }
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "VolumesDeleted",
            "deleted member volumes (pvcRetention: Delete)".into(),
        )
        .await;
    }
    ctx.metrics.forget_cluster(&id.namespace, &id.name);
    Ok(Action::await_change())
}

/// Run the controller until `shutdown` resolves.
pub async fn run<N: NodeClient, R: AddressResolver>(
    ctx: Arc<Context<N, R>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let clusters = Api::<RaftCluster>::all(client.clone());
    let cfg = watcher::Config::default();
    Controller::new(clusters, cfg.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), cfg.clone())
        .owns(Api::<Service>::all(client.clone()), cfg.clone())
        .owns(Api::<PodDisruptionBudget>::all(client), cfg)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile loop error"),
            }
        })
        .await;
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
