//! One reconcile pass's TLS work: make sure the certificates exist and are
//! fresh (by mode), and find what the operator needs to call the members.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use time::OffsetDateTime;
use tracing::info;

use super::authority::{Authority, IssuedPem, PkiError};
use super::auto::{self, CA_CRT, TLS_CRT, TLS_KEY, data_text};
use super::cert_manager;
use super::operator_client::OperatorTls;
use crate::controller::delete_ignoring_absent;
use crate::crd::{RaftCluster, TlsMode};
use crate::identity::{ClusterIdentity, FIELD_MANAGER};

/// Why the TLS work of a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Certificates of `cluster` for members `0..members`, made or renewed as
/// its mode says. Returns what the operator presents and trusts when it
/// calls the members, or `None` with TLS off or while the material does
/// not exist yet (cert-manager has not issued it, a user's Secret is
/// missing): calls to the members then fail and the status says so.
pub async fn ensure(
    client: &Client,
    cluster: &RaftCluster,
    members: u32,
) -> Result<Option<OperatorTls>, TlsReconcileError> {
    let id = ClusterIdentity::of(cluster);
    let secrets = Api::<Secret>::namespaced(client.clone(), &id.namespace);
    let tls = &cluster.spec.tls;
    match tls.mode {
        TlsMode::Disabled => Ok(None),
        TlsMode::Auto => {
            let ca = ensure_ca(&secrets, cluster, &id).await?;
            let now = OffsetDateTime::now_utc();
            let existing_members = secrets.get_opt(&id.member_tls_secret()).await?;
            let existing_operator = secrets.get_opt(&id.operator_tls_secret()).await?;
            let existing_client = secrets.get_opt(&id.client_tls_secret()).await?;
            let desired = auto::desired(
                cluster,
                &ca,
                members,
                existing_members.as_ref(),
                existing_operator.as_ref(),
                existing_client.as_ref(),
                now,
            )?;
            let mut existing_users = std::collections::BTreeMap::new();
            for user in auto::client_users(cluster) {
                if let Some(s) = secrets.get_opt(&id.user_tls_secret(user)).await? {
                    existing_users.insert(user.clone(), s);
                }
            }
            let users = auto::user_secrets(cluster, &ca, &existing_users, now)?;
            for secret in [desired.members, desired.operator, desired.client]
                .into_iter()
                .flatten()
                .chain(users)
            {
                let name = secret.metadata.name.clone().unwrap_or_default();
                secrets
                    .patch(&name, &apply_params(), &Patch::Apply(&secret))
                    .await?;
                info!(%name, "wrote certificates");
            }
            for user in auto::dropped_users(cluster) {
                delete_ignoring_absent(&secrets, &id.user_tls_secret(&user)).await?;
                info!(%user, "removed the certificate Secret of a user no longer listed");
            }
            Ok(Some(OperatorTls {
                ca: ca.cert_pem().to_string(),
                identity: Some(desired.operator_identity),
            }))
        }
        TlsMode::CertManager => {
            if let Some(cm) = &tls.cert_manager {
                let api = Api::<DynamicObject>::namespaced_with(
                    client.clone(),
                    &id.namespace,
                    &cert_manager::api_resource(),
                );
                for cert in cert_manager::certificates(cluster, &cm.issuer_ref) {
                    let name = cert.metadata.name.clone().unwrap_or_default();
                    api.patch(&name, &apply_params(), &Patch::Apply(&cert))
                        .await?;
                }
                // cert-manager leaves a Certificate's Secret behind when
                // the Certificate goes: both go.
                for user in auto::dropped_users(cluster) {
                    delete_ignoring_absent(&api, &id.user_certificate(&user)).await?;
                    delete_ignoring_absent(&secrets, &id.user_tls_secret(&user)).await?;
                    info!(%user, "removed the certificate of a user no longer listed");
                }
            }
            let operator = secrets.get_opt(&id.operator_tls_secret()).await?;
            Ok(operator.as_ref().and_then(|s| {
                Some(OperatorTls {
                    ca: data_text(s, CA_CRT)?,
                    identity: Some(pair(s)?),
                })
            }))
        }
        TlsMode::SecretRef => {
            let Some(refs) = &tls.secret_ref else {
                return Ok(None);
            };
            let Some(server) = secrets.get_opt(&refs.server_secret_name).await? else {
                return Ok(None);
            };
            let identity = match &refs.operator_secret_name {
                Some(name) => secrets.get_opt(name).await?.as_ref().and_then(pair),
                None => None,
            };
            Ok(data_text(&server, CA_CRT).map(|ca| OperatorTls { ca, identity }))
        }
    }
}

fn pair(secret: &Secret) -> Option<IssuedPem> {
    Some(IssuedPem {
        cert: data_text(secret, TLS_CRT)?,
        key: data_text(secret, TLS_KEY)?,
    })
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The cluster's CA: read from `<name>-ca`, or made and stored there.
/// Created, never applied, so that two operators racing at the start
/// cannot end up with two CAs: the loser reads the winner's.
async fn ensure_ca(
    secrets: &Api<Secret>,
    cluster: &RaftCluster,
    id: &ClusterIdentity,
) -> Result<Authority, TlsReconcileError> {
    let name = id.ca_secret();
    if let Some(existing) = secrets.get_opt(&name).await? {
        return Ok(auto::load_ca(&name, &existing)?);
    }
    let ca = Authority::new(
        &format!("raftkv {}/{} CA", id.namespace, id.name),
        OffsetDateTime::now_utc(),
    )?;
    match secrets
        .create(&PostParams::default(), &auto::ca_secret(cluster, &ca))
        .await
    {
        Ok(_) => {
            info!(secret = %name, "created the cluster's CA");
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = secrets.get(&name).await?;
            Ok(auto::load_ca(&name, &existing)?)
        }
        Err(e) => Err(e.into()),
    }
}
