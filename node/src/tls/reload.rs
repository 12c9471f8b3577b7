//! A certificate and key that follow their files on disk, and the
//! [`Followed`] value underneath that the trusted CAs (`trust.rs`) use too.
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

/// The raw contents of the files (`None`: unreadable).
type Stamp = Vec<Option<Vec<u8>>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// Something built from files (a key pair, a CA's verifier), built again
/// when their contents change; see the module docs.
pub struct Followed<T> {
    files: Vec<PathBuf>,
    /// What the files hold, for the log.
    what: &'static str,
    check_every: Duration,
    build: Build<T>,
    state: Mutex<Loaded<T>>,
}

struct Loaded<T> {
    value: T,
    stamp: Stamp,
    checked: Instant,
}

impl<T> std::fmt::Debug for Followed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followed")
            .field("files", &self.files)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> Followed<T> {
    /// Builds the value now; fails if it does not build.
    pub fn load(
        files: Vec<PathBuf>,
        check_every: Duration,
        what: &'static str,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let before = stamp(&files);
        let value = build()?;
        Ok(Followed {
            files,
            what,
            check_every,
            build: Box::new(build),
            state: Mutex::new(Loaded {
                value,
                stamp: before,
                checked: Instant::now(),
            }),
        })
    }

    /// The value to use now, built again first if its files changed.
    pub fn current(&self) -> T {
        // A panic while holding the lock cannot leave a half-made value
        // (it is swapped in whole), so a poisoned lock still holds a good
        // one.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() < self.check_every {
            return state.value.clone();
        }
        state.checked = Instant::now();
        let now = stamp(&self.files);
        if now != state.stamp {
            let file = self.files.first().map(|f| f.display().to_string());
            match (self.build)() {
                Ok(value) => {
                    info!(file, "reloaded a changed {}", self.what);
                    state.value = value;
                    state.stamp = now;
                }
                Err(e) => warn!(
                    error = %e,
                    "a changed {} does not load; still using the previous one",
                    self.what
                ),
            }
        }
        state.value.clone()
    }
}

/// A key pair re-read from its files when they change.
#[derive(Debug)]
pub struct ReloadingKeyPair(Followed<Arc<CertifiedKey>>);

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
        let paths = vec![files.cert.clone(), files.key.clone()];
        Followed::load(paths, check_every, "TLS certificate", move || {
            load_pair(&files, &provider).map(Arc::new)
        })
        .map(ReloadingKeyPair)
    }

    /// The pair to present now, re-read first if its files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.current()
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
