//! A certificate and key that follow their files on disk.
//!
//! Certificates are short-lived where it matters (cert-manager renews them
//! before expiry and rewrites the mounted Secret), so a node must pick up
//! new ones without a restart. Rather than watch the files, every handshake
//! asks for the current pair, and at most once per [`CHECK_EVERY`] that
//! reads the two files (a few KiB) and compares them with what was loaded;
//! when they differ, the pair is parsed again. Contents rather than
//! modification times, because a rotation written within one timestamp tick
//! would otherwise go unseen. A pair that does not load (a rotation half written,
//! a key that does not match its certificate) is ignored with a warning and
//! the old one keeps serving; the next check tries again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use super::TlsError;
use super::config::{load_certs, load_key};

/// How often the files are looked at, at most.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A certificate chain file and its private key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The raw contents of the two files (`None`: unreadable).
type Stamp = [Option<Vec<u8>>; 2];

/// A key pair re-read from its files when they change.
#[derive(Debug)]
pub struct ReloadingKeyPair {
    files: KeyPairFiles,
    provider: Arc<CryptoProvider>,
    check_every: Duration,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

fn stamp(files: &KeyPairFiles) -> Stamp {
    [
        std::fs::read(&files.cert).ok(),
        std::fs::read(&files.key).ok(),
    ]
}

fn load_pair(files: &KeyPairFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::KeyPair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        detail: e.to_string(),
    })
}

impl ReloadingKeyPair {
    /// Loads the pair now; fails if it does not load.
    pub fn load(files: KeyPairFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        Self::load_checking_every(files, provider, CHECK_EVERY)
    }

    /// Like [`load`](Self::load), looking at the files every `check_every`
    /// (tests use zero).
    pub fn load_checking_every(
        files: KeyPairFiles,
        provider: Arc<CryptoProvider>,
        check_every: Duration,
    ) -> Result<Self, TlsError> {
        let before = stamp(&files);
        let key = Arc::new(load_pair(&files, &provider)?);
        Ok(ReloadingKeyPair {
            files,
            provider,
            check_every,
            state: Mutex::new(Loaded {
                key,
                stamp: before,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to present now, re-read first if its files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        // A panic while holding the lock cannot leave a half-made pair (it
        // is swapped in whole), so a poisoned lock still holds a good one.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() < self.check_every {
            return state.key.clone();
        }
        state.checked = Instant::now();
        let now = stamp(&self.files);
        if now != state.stamp {
            match load_pair(&self.files, &self.provider) {
                Ok(key) => {
                    info!(cert = %self.files.cert.display(), "reloaded a changed TLS certificate");
                    state.key = Arc::new(key);
                    state.stamp = now;
                }
                Err(e) => warn!(
                    error = %e,
                    "a changed TLS certificate does not load; still serving the previous one"
                ),
            }
        }
        state.key.clone()
    }
}

/// Serves the current pair of a [`ReloadingKeyPair`] to TLS clients.
#[derive(Debug)]
pub(crate) struct ServerCertResolver(pub Arc<ReloadingKeyPair>);

impl rustls::server::ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// Presents the current pair of a [`ReloadingKeyPair`] to TLS servers that
/// ask for a client certificate.
#[derive(Debug)]
pub(crate) struct ClientCertResolver(pub Arc<ReloadingKeyPair>);

impl rustls::client::ResolvesClientCert for ClientCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
