//! From the files an operator names to rustls configurations.
//!
//! The names follow etcd's flags so that an etcd deployment's certificates
//! and habits carry over: a server certificate and key, and optionally a
//! trusted CA that client (or peer) certificates must chain to. With
//! `client_cert_auth` a connection without such a certificate is refused
//! during the handshake, before any request is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::reload::{ClientCertResolver, KeyPairFiles, ReloadingKeyPair, ServerCertResolver};
use super::trust::{TrustedClients, TrustedServers};
use super::{TlsError, provider};

/// The TLS side of one listener.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The listener's own certificate chain and key (re-read on change).
    pub key_pair: KeyPairFiles,
    /// CA that client certificates must chain to.
    pub trusted_ca: Option<PathBuf>,
    /// Refuse connections that present no certificate from `trusted_ca`.
    pub client_cert_auth: bool,
}

/// What a client (a node dialling its peers, the CLI) trusts and presents.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// CA the server's certificate must chain to.
    pub trusted_ca: Option<PathBuf>,
    /// The certificate and key to present, if the server asks.
    pub key_pair: Option<KeyPairFiles>,
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_path_buf(),
            what: "private key",
        },
        e => TlsError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
    })
}

/// A root store holding every certificate of a CA bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Ca {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

impl ServerTls {
    /// A server configuration offering `alpn`, and the key pair it serves
    /// (kept so that callers can see what is loaded).
    pub fn server_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadingKeyPair>), TlsError> {
        let provider = provider();
        let key_pair = Arc::new(ReloadingKeyPair::load(
            self.key_pair.clone(),
            provider.clone(),
        )?);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.trusted_ca, self.client_cert_auth) {
            (None, true) => {
                return Err(TlsError::Config(
                    "client certificate authentication needs a trusted CA file".into(),
                ));
            }
            (None, false) => builder.with_no_client_auth(),
            (Some(ca), require) => {
                // Without `client_cert_auth` a certificate is checked when
                // one is presented, and its absence is not held against the
                // client (as etcd does with a CA but no --client-cert-auth).
                let verifier = TrustedClients::load(ca.clone(), require, provider)?;
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(ServerCertResolver(key_pair.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok((Arc::new(config), key_pair))
    }
}

impl ClientTls {
    /// A client configuration for gRPC (ALPN h2). A trusted CA is required:
    /// a cluster's certificates come from its own CA, not the public ones.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let ca = self.trusted_ca.as_ref().ok_or_else(|| {
            TlsError::Config("connecting with TLS needs a trusted CA file".into())
        })?;
        let provider = provider();
        let verifier = TrustedServers::load(ca.clone(), provider.clone())?;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &self.key_pair {
            Some(files) => {
                let key_pair = Arc::new(ReloadingKeyPair::load(files.clone(), provider)?);
                builder.with_client_cert_resolver(Arc::new(ClientCertResolver(key_pair)))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![super::ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}
