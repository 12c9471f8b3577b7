//! The reconciler: one pass observes a `RaftCluster` (owned objects, pods,
//! volumes and every node's `/v1/status`), applies the owned objects with
//! server-side apply, carries out the planner's single next step, records
//! an event for it and writes the status.
//!
//! Everything is derived from what is observed on each pass, so a pass can
//! be interrupted anywhere and the next one continues correctly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use tracing::{debug, info, instrument, warn};

use crate::cluster_status::{self, StatusInput};
use crate::crd::{PvcRetention, RaftCluster, RaftClusterStatus};
use crate::identity::{ClusterIdentity, FIELD_MANAGER, NodeId};
use crate::member_volumes;
use crate::metrics::Metrics;
use crate::node_client::{AddressResolver, NodeClient, NodeError};
use crate::node_steps::{self, NodeStepOutcome};
use crate::observation::ClusterObservation;
use crate::planner::{self, PlanInput, Step};
use crate::resources::start_config::{self, StartMode};
use crate::resources::{
    client_service, headless_service, network_policy, pdb, peer_secret, service_monitor,
    statefulset,
};
use crate::retained_volumes::{self, Refusal};

/// Finalizer of earlier operator versions, which deleted volumes
/// themselves. It is removed from every cluster: with the operator's RBAC
/// gone first (`helm uninstall`), nobody could remove it and the cluster
/// stayed stuck in deletion.
pub const LEGACY_FINALIZER: &str = "raftkv.io/cleanup";
const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";

/// A failed reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("raftkv node: {0}")]
    Node(#[from] NodeError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::reconcile::TlsReconcileError),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl Error {
    /// Low-cardinality label for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Node(_) => "node",
            Error::Tls(_) => "tls",
            Error::Serialize { .. } => "serialize",
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
    /// How long a pod replaced by a rollout may take to answer and catch up
    /// before the rollout halts.
    pub rollout_timeout: Duration,
    /// A member that has not answered for this long is reported.
    pub member_down_threshold: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            busy_requeue: Duration::from_secs(5),
            stable_requeue: Duration::from_secs(30),
            max_catch_up_lag: 100,
            rollout_timeout: Duration::from_secs(300),
            member_down_threshold: Duration::from_secs(120),
        }
    }
}

/// Shared state of every reconcile.
pub struct Context<N, R> {
    pub client: Client,
    pub node: N,
    pub resolver: R,
    /// Who records the events (see [`publish`]).
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Whether the missing ServiceMonitor CRD was already warned about:
    /// once is news, on every pass it is noise.
    pub service_monitor_crd_missing: WarnOnce,
}

/// A condition that is logged at WARN when it appears, at DEBUG while it
/// lasts, and warned about again if it comes back after clearing.
#[derive(Debug, Default)]
pub struct WarnOnce(AtomicBool);

impl WarnOnce {
    /// Record that the condition holds; true if this is news.
    pub fn first(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
    /// Record that the condition cleared.
    pub fn clear(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
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
        Self {
            client,
            node,
            resolver,
            reporter,
            metrics,
            settings,
            service_monitor_crd_missing: WarnOnce::default(),
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
    let result = reconcile_pass(&cluster, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// One pass. Deleting a cluster needs no operator: every owned object,
/// and with `pvcRetention: Delete` every volume (through the StatefulSet's
/// `whenDeleted: Delete` policy), is garbage-collected through owner
/// references. So a `helm uninstall` that removes the operator's RBAC
/// before the RaftCluster cannot wedge the deletion.
async fn reconcile_pass<N: NodeClient, R: AddressResolver>(
    cluster: &RaftCluster,
    ctx: &Context<N, R>,
) -> Result<Action, Error> {
    if has_legacy_finalizer(cluster) {
        // Set by operator versions that deleted volumes themselves.
        if cluster.metadata.deletion_timestamp.is_some() {
            cleanup_legacy(cluster, ctx).await?;
        }
        remove_legacy_finalizer(cluster, ctx).await?;
        return Ok(Action::await_change());
    }
    if cluster.metadata.deletion_timestamp.is_some() {
        let id = ClusterIdentity::of(cluster);
        ctx.metrics.forget_cluster(&id.namespace, &id.name);
        return Ok(Action::await_change());
    }
    apply(cluster, ctx).await
}

fn has_legacy_finalizer(cluster: &RaftCluster) -> bool {
    cluster.finalizers().iter().any(|f| f == LEGACY_FINALIZER)
}

/// Remove [`LEGACY_FINALIZER`], keeping any other finalizer. The patch
/// carries the resource version, so it fails (and the next pass retries)
/// if someone changed the list meanwhile.
async fn remove_legacy_finalizer<N, R>(
    cluster: &RaftCluster,
    ctx: &Context<N, R>,
) -> Result<(), Error> {
    let kept: Vec<&String> = cluster
        .finalizers()
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": kept,
            "resourceVersion": cluster.resource_version(),
        }
    });
    let api: Api<RaftCluster> =
        Api::namespaced(ctx.client.clone(), &ClusterIdentity::of(cluster).namespace);
    api.patch(
        &cluster.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    info!("removed the finalizer {LEGACY_FINALIZER} of an earlier operator version");
    Ok(())
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

/// Creates the cluster's peer secret unless it exists. Created, never
/// applied: its value is random and must not change under running members
/// (see `peer_secret`). Creating and accepting "already exists" spares the
/// operator the right to read any Secret.
async fn ensure_peer_secret(
    client: &Client,
    cluster: &RaftCluster,
    id: &ClusterIdentity,
) -> Result<(), Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), &id.namespace);
    match secrets
        .create(&PostParams::default(), &peer_secret::build(cluster))
        .await
    {
        Ok(_) => {
            info!(secret = %id.peer_secret(), "created the peer secret");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Everything read from the API server on one pass.
struct KubeObservation {
    statefulset_replicas: u32,
    ready_replicas: i32,
    pods: BTreeSet<u32>,
    pvcs: BTreeSet<u32>,
    /// Volumes kept from an earlier cluster of the same name.
    retained_pvcs: BTreeSet<u32>,
    /// Members that refuse their volume.
    refusals: Vec<Refusal>,
    /// Pods created from an older template than the StatefulSet's current
    /// revision (empty while the StatefulSet controller has not yet seen
    /// the latest spec).
    outdated: BTreeSet<u32>,
    /// Pods being deleted.
    terminating: BTreeSet<u32>,
    /// Creation time of each pod.
    pod_created: BTreeMap<u32, Timestamp>,
    /// UID of each data PVC.
    pvc_uids: BTreeMap<u32, String>,
}

/// Label the StatefulSet controller puts on each pod: the revision of the
/// template it was created from.
const REVISION_LABEL: &str = "controller-revision-hash";

async fn observe_kube(
    client: &Client,
    cluster: &RaftCluster,
    id: &ClusterIdentity,
) -> Result<KubeObservation, Error> {
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
    // The current revision is only known once the StatefulSet controller
    // has seen the latest spec; until then nothing counts as outdated.
    let update_revision = sts.as_ref().and_then(|s| {
        let status = s.status.as_ref()?;
        (status.observed_generation == s.metadata.generation)
            .then(|| status.update_revision.clone())
            .flatten()
    });
    let ordinal = |p: &Pod| id.ordinal_of(&p.name_any());
    let outdated = pods
        .items
        .iter()
        .filter(|p| {
            update_revision
                .as_ref()
                .is_some_and(|rev| p.labels().get(REVISION_LABEL) != Some(rev))
        })
        .filter_map(ordinal)
        .collect();
    let terminating = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter_map(ordinal)
        .collect();
    let pod_created = pods
        .items
        .iter()
        .filter_map(|p| Some((ordinal(p)?, p.creation_timestamp()?.0)))
        .collect();
    let pvc_uids = pvcs
        .items
        .iter()
        .filter_map(|p| Some((id.pvc_ordinal_of(&p.name_any())?, p.uid()?)))
        .collect();
    Ok(KubeObservation {
        outdated,
        terminating,
        pod_created,
        pvc_uids,
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
            .iter()
            .filter_map(|p| id.ordinal_of(&p.name_any()))
            .collect(),
        pvcs: pvcs
            .items
            .iter()
            .filter_map(|p| id.pvc_ordinal_of(&p.name_any()))
            .collect(),
        retained_pvcs: retained_volumes::retained_ordinals(cluster, id, &pvcs.items),
        refusals: retained_volumes::refusals(&pods.items),
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
    ensure_peer_secret(client, cluster, &id).await?;
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    server_side_apply(
        &policies,
        &id.network_policy(),
        &network_policy::build(cluster),
    )
    .await?;

    let kube_obs = observe_kube(client, cluster, &id).await?;
    let mut ordinals: BTreeSet<u32> = (0..kube_obs.statefulset_replicas).collect();
    ordinals.extend(kube_obs.pods.iter().copied());
    // Certificates for every pod that exists or may be created on this
    // pass (the StatefulSet grows towards spec.replicas), before the
    // StatefulSet asks for the pod; and what the operator itself needs to
    // call the members, before it calls them.
    let tls_members = ordinals
        .last()
        .map_or(0, |o| o.saturating_add(1))
        .max(u32::try_from(cluster.spec.replicas).unwrap_or(0));
    let operator_tls = crate::tls::reconcile::ensure(client, cluster, tls_members).await?;
    ctx.node.use_tls(&id, operator_tls.as_ref());
    let obs = node_steps::observe(&ctx.node, &id, &ordinals).await;
    let raft = obs.raft();
    let bootstrapped = cluster_status::is_bootstrapped(cluster, &obs);
    // Only a cluster that never had a leader adopts volumes; afterwards
    // every volume is its own.
    let adopting = if bootstrapped {
        BTreeSet::new()
    } else {
        kube_obs.retained_pvcs.clone()
    };
    let desired = u32::try_from(cluster.spec.replicas.max(1)).unwrap_or(1);
    let now = Timestamp::now();
    let down_since = cluster_status::down_since(cluster, &obs, now);
    // A member lost its data if its PVC was replaced or its data
    // directory created anew on the same PVC.
    let (recorded_volumes, recorded_storage) = cluster
        .status
        .as_ref()
        .map(|s| (s.member_volumes.clone(), s.member_storage.clone()))
        .unwrap_or_default();
    let storage_ids = obs.storage_ids();
    let mut lost_volumes =
        member_volumes::lost(&recorded_volumes, raft.as_ref(), &id, &kube_obs.pvc_uids);
    lost_volumes.extend(member_volumes::lost(
        &recorded_storage,
        raft.as_ref(),
        &id,
        &storage_ids,
    ));
    let member_volumes =
        member_volumes::record(&recorded_volumes, raft.as_ref(), &id, &kube_obs.pvc_uids);
    let member_storage =
        member_volumes::record(&recorded_storage, raft.as_ref(), &id, &storage_ids);
    let overdue = overdue(&kube_obs, &down_since, now, ctx.settings.rollout_timeout);
    let plan = PlanInput {
        desired,
        statefulset_replicas: kube_obs.statefulset_replicas,
        raft: raft.clone(),
        healthy: obs.healthy(),
        pods: kube_obs.pods.clone(),
        pvcs: kube_obs.pvcs.clone(),
        delete_pvcs: cluster.spec.pvc_retention == PvcRetention::Delete,
        max_catch_up_lag: ctx.settings.max_catch_up_lag,
        outdated: kube_obs.outdated.clone(),
        terminating: kube_obs.terminating.clone(),
        applied: obs.answered().map(|s| (s.id, s.applied_index)).collect(),
        lost_volumes: lost_volumes.clone(),
        overdue,
    };
    let step = planner::adopt_retained(kube_obs.statefulset_replicas, raft.as_ref(), &adopting)
        .unwrap_or_else(|| planner::next_step(&plan));
    info!(?step, "planned");
    if raft.is_none() {
        // Without a leader, why the members do not answer is the clue.
        for node in &obs.nodes {
            if let Err(error) = &node.status {
                info!(pod = %node.pod, %error, "member did not answer");
            }
        }
    }

    let replicas = match step {
        Step::RaiseStatefulSet { replicas } | Step::ShrinkStatefulSet { replicas } => replicas,
        _ => kube_obs.statefulset_replicas,
    };
    let replicas = i32::try_from(replicas).unwrap_or(i32::MAX);
    // Pods with retained data resume from it; none may bootstrap a new
    // cluster beside them.
    let start_mode = if bootstrapped || !adopting.is_empty() {
        StartMode::Join
    } else {
        StartMode::Bootstrap
    };
    // Before the StatefulSet: its pods read their start mode from here.
    let config_api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    server_side_apply(
        &config_api,
        &id.start_config(),
        &start_config::build(cluster, start_mode),
    )
    .await?;
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), ns);
    server_side_apply(
        &sts_api,
        &id.statefulset(),
        &statefulset::build(cluster, replicas),
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
    let backup = crate::backup::reconcile::reconcile_or_report(client, cluster, now).await;

    let outcome = carry_out(cluster, ctx, &id, &obs, &step, &lost_volumes).await?;

    let mut status = cluster_status::build(
        cluster,
        &StatusInput {
            observation: &obs,
            step: &step,
            statefulset_replicas: replicas,
            ready_replicas: kube_obs.ready_replicas,
            adopting: &adopting,
            refusals: &kube_obs.refusals,
            now,
            down_since: &down_since,
            member_down_seconds: i64::try_from(ctx.settings.member_down_threshold.as_secs())
                .unwrap_or(i64::MAX),
            rolling: !kube_obs.outdated.is_empty(),
            lost_volumes: &lost_volumes,
            member_volumes,
            member_storage,
            overdue: &plan.overdue,
        },
    );
    status.service_monitor = service_monitor;
    let backup_interval = backup.interval_seconds;
    let backup_configured = backup.configured_since;
    backup.apply_to(&mut status);
    warn_on_transitions(cluster, ctx, &status).await;
    write_status(cluster, ctx, &status).await?;
    ctx.metrics.observe_cluster(ns, &id.name, &status);
    ctx.metrics.observe_backup(
        ns,
        &id.name,
        crate::metrics::BackupGauges {
            last_success: status
                .backup
                .as_ref()
                .and_then(|b| b.last_successful_time.as_ref())
                .map(|t| t.0.as_second()),
            interval_seconds: backup_interval,
            configured_since: backup_configured,
        },
    );

    let stable = step == Step::Stable
        && status.phase == Some(crate::crd::Phase::Running)
        && outcome == Outcome::Done;
    Ok(Action::requeue(if stable {
        ctx.settings.stable_requeue
    } else {
        ctx.settings.busy_requeue
    }))
}

/// Ordinals of pods whose member has been down, or the pod itself up
/// without catching up, for longer than the rollout waits: from the pod's
/// creation, or from when its member stopped answering if that is later
/// (a member that ran for days and then crashed gets the full timeout).
fn overdue(
    kube_obs: &KubeObservation,
    down_since: &BTreeMap<NodeId, Timestamp>,
    now: Timestamp,
    timeout: Duration,
) -> BTreeSet<u32> {
    let timeout = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
    kube_obs
        .pod_created
        .iter()
        .filter(|(ordinal, created)| {
            let since = down_since
                .get(&NodeId::from_ordinal(**ordinal))
                .map_or(**created, |down| (*down).max(**created));
            now.as_second() - since.as_second() >= timeout
        })
        .map(|(ordinal, _)| *ordinal)
        .collect()
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
        if ctx.service_monitor_crd_missing.first() {
            warn!(
                "monitoring.enabled but the ServiceMonitor CRD ({SERVICE_MONITOR_CRD}) is not installed; no ServiceMonitor until it is"
            );
        } else {
            debug!("ServiceMonitor CRD still not installed; skipping");
        }
        return Ok(false);
    }
    ctx.service_monitor_crd_missing.clear();
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
    lost_volumes: &BTreeSet<NodeId>,
) -> Result<Outcome, Error> {
    if node_steps::apply(&ctx.node, &ctx.resolver, id, obs, step).await?
        == NodeStepOutcome::Deferred
    {
        return Ok(Outcome::Deferred);
    }
    match step {
        Step::DeletePvc { ordinal } => {
            let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &id.namespace);
            delete_ignoring_absent(&api, &id.pvc(*ordinal)).await?;
        }
        Step::ReplacePod { ordinal } => {
            let api = Api::<Pod>::namespaced(ctx.client.clone(), &id.namespace);
            delete_ignoring_absent(&api, &id.pod(*ordinal)).await?;
        }
        Step::RemoveMember { id: n } if lost_volumes.contains(n) => {
            let pod = n.ordinal().map_or_else(|| n.to_string(), |o| id.pod(o));
            let note = format!(
                "{pod} (id {n}) lost its data (its PVC was replaced or its data directory emptied): removed from the configuration; it joins again as a learner"
            );
            publish(
                ctx,
                cluster,
                EventType::Warning,
                cluster_status::VOLUME_LOST,
                note,
            )
            .await;
            return Ok(Outcome::Done);
        }
        _ => {}
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
        Step::ReplacePod { ordinal } => (
            "PodReplaced",
            format!(
                "deleted {} to start it from the current pod template",
                id.pod(*ordinal)
            ),
        ),
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
            "LeaderLost",
            "no member reports a leader".into(),
        )
        .await;
    }
    let reason_of = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
                     type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.reason.clone())
    };
    let before = |type_: &str| previous.and_then(|p| reason_of(&p.conditions, type_));
    let now = |type_: &str| reason_of(&status.conditions, type_);
    for (type_, reason, event_type) in [
        (
            "Progressing",
            cluster_status::ADOPTING_VOLUMES,
            EventType::Normal,
        ),
        (
            "Degraded",
            cluster_status::DATA_DIR_REFUSED,
            EventType::Warning,
        ),
        (
            "Degraded",
            cluster_status::ROLLOUT_HALTED,
            EventType::Warning,
        ),
        (
            "Degraded",
            cluster_status::LEARNER_NOT_CATCHING_UP,
            EventType::Warning,
        ),
        ("Degraded", cluster_status::QUORUM_LOST, EventType::Warning),
    ] {
        let wanted = Some(reason.to_string());
        if now(type_) == wanted && before(type_) != wanted {
            let note = status.message.clone().unwrap_or_default();
            publish(ctx, cluster, event_type, reason, note).await;
        }
    }
    // A member down for longer than the threshold: news whenever the list
    // of such members changes.
    let down = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        conditions
            .iter()
            .find(|c| c.type_ == cluster_status::MEMBER_DOWN && c.status == "True")
            .map(|c| c.message.clone())
    };
    let down_now = down(&status.conditions);
    if down_now.is_some() && down_now != previous.and_then(|p| down(&p.conditions)) {
        let note = down_now.unwrap_or_default();
        publish(
            ctx,
            cluster,
            EventType::Warning,
            cluster_status::MEMBER_DOWN,
            note,
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

/// Record an event on the cluster. Events are advisory: failing to record
/// one must not fail the pass.
///
/// Each call uses a fresh [`Recorder`]: a long-lived one keeps a cache keyed
/// by (type, reason, action, reporter, object), *not* by the note, and turns
/// every later event with the same reason into a series update of the first
/// one, which keeps the first note. Five `ScalingUp` steps then read "x5
/// StatefulSet raised to 1 pods". The operator publishes one event per
/// change it makes, so every note is news and gets its own Event.
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
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &cluster.object_ref(&())).await {
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

/// Deletes `name`; an object already gone is no error.
pub(crate) async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A cluster created by an operator version that used [`LEGACY_FINALIZER`]
/// is being deleted: its StatefulSet may still say `whenDeleted: Retain`,
/// so delete the volumes here when `pvcRetention: Delete`.
async fn cleanup_legacy<N, R>(cluster: &RaftCluster, ctx: &Context<N, R>) -> Result<(), Error> {
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
    Ok(())
}

/// Run the controller until `shutdown` resolves.
pub async fn run<N: NodeClient, R: AddressResolver>(
    ctx: Arc<Context<N, R>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let clusters = Api::<RaftCluster>::all(client.clone());
    let cfg = watcher::Config::default();
    // Pods belong to the StatefulSet, not to the RaftCluster: map them to
    // their cluster by its instance label, so that a pod that goes away,
    // comes back or changes readiness starts a pass at once.
    let member_pods = watcher::Config::default().labels("app.kubernetes.io/name=raftkv");
    // Backup Jobs belong to the CronJob (or to nobody, when started by
    // hand from it): mapped to their cluster the same way, so that a
    // finished backup shows in the status at once.
    let backup_jobs = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/name={}",
        crate::backup::BACKUP_APP
    ));
    Controller::new(clusters, cfg.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), cfg.clone())
        .owns(Api::<Service>::all(client.clone()), cfg.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), cfg.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), cfg.clone())
        .owns(Api::<CronJob>::all(client.clone()), cfg)
        .watches(Api::<Pod>::all(client.clone()), member_pods, |pod: Pod| {
            let cluster = pod.labels().get("app.kubernetes.io/instance")?.clone();
            Some(ObjectRef::<RaftCluster>::new(&cluster).within(&pod.namespace()?))
        })
        .watches(Api::<Job>::all(client), backup_jobs, |job: Job| {
            let cluster = job.labels().get("app.kubernetes.io/instance")?.clone();
            Some(ObjectRef::<RaftCluster>::new(&cluster).within(&job.namespace()?))
        })
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
