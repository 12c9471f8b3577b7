//! The operator's side of a TLS cluster's connections: the CA it trusts
//! and the client certificate it presents, turned into a rustls client
//! configuration (ring provider, as everywhere in raftkv).

use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::authority::IssuedPem;

/// What the operator needs to call a TLS cluster's members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorTls {
    /// The CA the members' certificates chain to (PEM).
    pub ca: String,
    /// The operator's client certificate and key, where it has one.
    pub identity: Option<IssuedPem>,
}

/// Why the operator's TLS material is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("the CA certificate is unusable: {0}")]
    Ca(String),
    #[error("the operator's client certificate is unusable: {0}")]
    Identity(String),
}

impl OperatorTls {
    /// A client configuration that trusts only the cluster's CA and
    /// presents the operator's certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, ClientTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            let cert = cert.map_err(|e| ClientTlsError::Ca(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ClientTlsError::Ca(e.to_string()))?;
            any = true;
        }
        if !any {
            return Err(ClientTlsError::Ca("no certificate in it".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientTlsError::Ca(e.to_string()))?
        .with_root_certificates(roots);
        // No ALPN here: the connector offers http/1.1 itself.
        Ok(match &self.identity {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ClientTlsError::Identity(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
                    .map_err(|e| ClientTlsError::Identity(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ClientTlsError::Identity(e.to_string()))?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::authority::{Authority, Usage};

    #[test]
    fn a_client_configuration_is_built_from_the_clusters_pem_and_garbage_is_an_error() {
        let now = time::OffsetDateTime::now_utc();
        let ca = Authority::new("prod/kv", now).unwrap();
        let me = ca
            .issue("raftkv-operator", &[], Usage::Client, now)
            .unwrap();
        let good = OperatorTls {
            ca: ca.cert_pem().into(),
            identity: Some(me.clone()),
        };
        assert!(
            good.client_config()
                .unwrap()
                .client_auth_cert_resolver
                .has_certs()
        );
        let no_ca = OperatorTls {
            ca: "garbage".into(),
            identity: None,
        };
        assert!(matches!(no_ca.client_config(), Err(ClientTlsError::Ca(_))));
        let bad_key = OperatorTls {
            ca: ca.cert_pem().into(),
            identity: Some(IssuedPem {
                cert: me.cert,
                key: "garbage".into(),
            }),
        };
        assert!(matches!(
            bad_key.client_config(),
            Err(ClientTlsError::Identity(_))
        ));
    }
}
