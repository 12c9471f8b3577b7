//! The TLS and network-policy parts of the `RaftCluster` resource:
//! `spec.tls` and `spec.networkPolicy`. Part of the CRD (see `crd.rs`);
//! they live here, beside the code that acts on them.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// TLS of every member's listeners (client gRPC, peer gRPC, HTTP API) and
/// of the operator's own calls to the members.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'certManager' || has(self.certManager)").message("tls.certManager (its issuerRef) is required with mode certManager"))]
#[x_kube(validation = Rule::new("self.mode != 'secretRef' || has(self.secretRef)").message("tls.secretRef is required with mode secretRef"))]
#[x_kube(validation = Rule::new("self.mode != 'secretRef' || !self.clientCertAuth || has(self.secretRef.operatorSecretName)").message("tls.secretRef.operatorSecretName is required with clientCertAuth: the operator must present a client certificate to the members"))]
#[x_kube(validation = Rule::new("self.mode == 'auto' || self.mode == 'certManager' || !has(self.clientUsers) || size(self.clientUsers) == 0").message("tls.clientUsers needs mode auto or certManager: with secretRef you issue the certificates"))]
pub struct TlsSpec {
    /// `disabled`: plain text (peers still authenticate with the cluster's
    /// shared secret). `auto`: the operator runs a CA of the cluster and
    /// issues and renews every certificate. `certManager`: cert-manager
    /// issues them from the Issuer you name. `secretRef`: you provide the
    /// Secrets. Fixed when the cluster is created: members registered
    /// their URLs with the scheme they started with.
    #[serde(default)]
    pub mode: TlsMode,

    /// Refuse clients without a certificate from the cluster's CA on the
    /// client and HTTP ports (etcd's `--client-cert-auth`). The operator
    /// always presents one.
    #[serde(default = "default_true")]
    pub client_cert_auth: bool,

    /// With mode `certManager`: the issuer of the certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerTls>,

    /// With mode `secretRef`: the Secrets (type `kubernetes.io/tls`, with
    /// `tls.crt`, `tls.key` and `ca.crt`) to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRefTls>,

    /// With mode `auto` or `certManager`: users who each get a client
    /// certificate of their own, whose common name is the user name, in
    /// Secret `<name>-client-<user>-tls`. With etcd's auth enabled a member
    /// takes that name as the user (etcd's `--client-cert-auth`), so each
    /// holder gets only the permissions of its user's roles. A user taken
    /// off the list loses its Secret; its certificate stays valid until it
    /// expires, so revoke access with `etcdctl user delete` (or revoke the
    /// user's roles) as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 40),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub client_users: Vec<String>,
}

fn default_true() -> bool {
    true
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            mode: TlsMode::default(),
            client_cert_auth: default_true(),
            cert_manager: None,
            secret_ref: None,
            client_users: Vec::new(),
        }
    }
}

impl TlsSpec {
    /// Whether the members' listeners use TLS.
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Disabled
    }
}

/// Where a cluster's certificates come from. (`disabled`, not `off`:
/// YAML 1.1, which kubectl reads, takes an unquoted `off` for `false`.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    #[default]
    Disabled,
    Auto,
    CertManager,
    SecretRef,
}

/// cert-manager settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerTls {
    pub issuer_ref: IssuerRef,
}

/// A cert-manager `Issuer` (in the cluster's namespace) or `ClusterIssuer`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(regex(pattern = r"^(Issuer|ClusterIssuer)$"))]
    pub kind: String,
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// Secrets you provide. Each is of type `kubernetes.io/tls` with
/// `tls.crt`, `tls.key` and `ca.crt`; one certificate serves every member,
/// so it must name all of them (`*.<name>-peers.<namespace>.svc`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRefTls {
    /// The client and HTTP ports' certificate; its `ca.crt` is the CA
    /// client certificates must chain to, and the CA the operator trusts.
    #[schemars(length(min = 1, max = 253))]
    pub server_secret_name: String,
    /// The peer port's certificate (also presented when dialling peers);
    /// the server Secret when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub peer_secret_name: Option<String>,
    /// The client certificate the operator presents to the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub operator_secret_name: Option<String>,
}

/// The NetworkPolicy the operator gives the members.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// Who may reach the client and HTTP ports, as NetworkPolicy `from`
    /// entries. Absent: any source (what a Service offers; authentication
    /// is TLS's job). An empty list: only the members and the operator. The
    /// peer port is always open to the members only, the metrics port (with
    /// TLS) to anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_from: Option<Vec<NetworkPolicyPeer>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_tls_is_off_and_client_certificates_are_required_by_default() {
        let tls: TlsSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(tls.mode, TlsMode::Disabled);
        assert!(tls.client_cert_auth);
        assert_eq!(tls, TlsSpec::default());
        assert!(!tls.enabled());
        let tls: TlsSpec = serde_json::from_value(serde_json::json!({"mode": "auto"})).unwrap();
        assert!(tls.enabled() && tls.client_cert_auth);
        let cm: TlsSpec = serde_json::from_value(serde_json::json!({
            "mode": "certManager", "certManager": {"issuerRef": {"name": "ca"}}
        }))
        .unwrap();
        let issuer = cm.cert_manager.unwrap().issuer_ref;
        assert_eq!(
            (issuer.kind.as_str(), issuer.group.as_str()),
            ("Issuer", "cert-manager.io")
        );
    }
}
