//! Trusted CAs that follow their file on disk.
//!
//! A CA bundle changes too: cert-manager and the operator publish a new CA
//! next to the old one before they issue from it, and a cluster moving to a
//! new CA must trust both for a while without a restart. So the verifiers
//! here do not hold a fixed root store. Each verification asks
//! [`Followed`] for the current one, which re-reads the bundle at most once
//! per [`CHECK_EVERY`] and rebuilds the webpki verifier only when the
//! bytes changed. A bundle that no longer loads (half written, empty) is
//! ignored with a warning and the last good roots stay in force.
//!
//! - [`TrustedClients`]: a server's check of client (or peer) certificates;
//! - [`TrustedServers`]: a client's check of the server it dialled.
//!
//! Signature checks of the handshake itself do not depend on the roots,
//! so they go straight to the provider's algorithms.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::TlsError;
use super::config::load_roots;
use super::reload::{CHECK_EVERY, Followed};

/// The handshake's own signature checks, the same whatever the roots.
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn ca_error(path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Ca {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Checks client certificates against a CA bundle that may change.
#[derive(Debug)]
pub struct TrustedClients {
    roots: Followed<Arc<dyn ClientCertVerifier>>,
    /// Refuse a client that presents no certificate.
    require: bool,
    signatures: Signatures,
}

impl TrustedClients {
    /// Loads the bundle at `ca` now; fails if it does not load. With
    /// `require`, a client without a certificate is refused; without it, a
    /// certificate is checked only when one is presented.
    pub fn load(
        ca: PathBuf,
        require: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        Self::load_checking_every(ca, require, provider, CHECK_EVERY)
    }

    /// Like [`load`](Self::load), looking at the file every `check_every`.
    pub fn load_checking_every(
        ca: PathBuf,
        require: bool,
        provider: Arc<CryptoProvider>,
        check_every: Duration,
    ) -> Result<Self, TlsError> {
        let build_provider = provider.clone();
        let roots = Followed::load(vec![ca.clone()], check_every, "trusted CA", move || {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(load_roots(&ca)?),
                build_provider.clone(),
            );
            let verifier = if require {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            verifier.build().map_err(|e| ca_error(&ca, e))
        })?;
        Ok(TrustedClients {
            roots,
            require,
            signatures: Signatures(provider),
        })
    }
}

impl ClientCertVerifier for TrustedClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.require
    }

    /// No hints: they would name the roots of one moment, and clients
    /// choose among their certificates without them.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.roots
            .current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Checks a dialled server's certificate against a CA bundle that may
/// change.
#[derive(Debug)]
pub struct TrustedServers {
    roots: Followed<Arc<WebPkiServerVerifier>>,
    signatures: Signatures,
}

impl TrustedServers {
    /// Loads the bundle at `ca` now; fails if it does not load.
    pub fn load(ca: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        Self::load_checking_every(ca, provider, CHECK_EVERY)
    }

    /// Like [`load`](Self::load), looking at the file every `check_every`.
    pub fn load_checking_every(
        ca: PathBuf,
        provider: Arc<CryptoProvider>,
        check_every: Duration,
    ) -> Result<Self, TlsError> {
        let build_provider = provider.clone();
        let roots = Followed::load(vec![ca.clone()], check_every, "trusted CA", move || {
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(load_roots(&ca)?),
                build_provider.clone(),
            )
            .build()
            .map_err(|e| ca_error(&ca, e))
        })?;
        Ok(TrustedServers {
            roots,
            signatures: Signatures(provider),
        })
    }
}

impl ServerCertVerifier for TrustedServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.roots.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}
