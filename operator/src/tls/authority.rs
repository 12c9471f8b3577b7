//! The certificate authority of a cluster with `tls.mode: auto`: made
//! once, kept in the Secret `<name>-ca`, and used to issue the members',
//! the operator's and the users' certificates.
//!
//! Certificates are issued for [`LEAF_LIFETIME`] and renewed once less
//! than a third of their lifetime is left ([`needs_renewal`]), so a
//! reconcile pass that runs every half minute renews a certificate weeks
//! before it expires, and a member picks the new files up from its
//! mounted Secret without a restart. The CA itself lives for
//! [`CA_LIFETIME`] and is not rotated by the operator.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// How long a member's, the operator's or a user's certificate is valid.
pub const LEAF_LIFETIME: Duration = Duration::days(90);
/// How long the CA is valid.
pub const CA_LIFETIME: Duration = Duration::days(3650);
/// Certificates are valid from a little before they are made, so that a
/// node whose clock is slightly behind the operator's accepts them.
const BACKDATE: Duration = Duration::minutes(5);

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CA in Secret {secret} cannot be used: {detail}")]
    BadCa { secret: String, detail: String },
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A member: serves its ports and dials its peers.
    Member,
    /// A client (the operator, a user): only authenticates itself.
    Client,
}

/// A certificate and its key, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedPem {
    pub cert: String,
    pub key: String,
}

/// A CA held in memory, able to sign.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(..)")
    }
}

impl Authority {
    /// A new CA named `common_name`, valid from `now` for [`CA_LIFETIME`].
    pub fn new(common_name: &str, now: OffsetDateTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA kept in Secret `secret`, from its certificate and key.
    pub fn load(secret: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let bad = |detail: String| PkiError::BadCa {
            secret: secret.to_string(),
            detail,
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| bad(format!("certificate: {e}")))?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA certificate (what members and clients trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `common_name`, valid for `hosts` (DNS names or IP
    /// addresses), from `now` for [`LEAF_LIFETIME`].
    pub fn issue(
        &self,
        common_name: &str,
        hosts: &[String],
        usage: Usage,
        now: OffsetDateTime,
    ) -> Result<IssuedPem, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Member => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Whether a certificate must be issued again at `now`: it cannot be read,
/// or less than a third of its lifetime is left.
pub fn needs_renewal(cert_pem: &[u8], now: OffsetDateTime) -> bool {
    let Some((not_before, not_after)) = validity(cert_pem) else {
        return true;
    };
    let lifetime = not_after - not_before;
    not_after - now.unix_timestamp() < lifetime / 3
}

/// The validity period of a PEM certificate, in Unix seconds.
fn validity(cert_pem: &[u8]) -> Option<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    /// Verifies `leaf` against `ca` for `host` the way a TLS client does.
    fn verify(ca: &str, leaf: &str, host: &str, at: OffsetDateTime) -> Result<(), String> {
        let ca = CertificateDer::from_pem_slice(ca.as_bytes()).unwrap();
        let leaf = CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(at.unix_timestamp()).unwrap(),
        ));
        verifier
            .verify_server_cert(&leaf, &[], &ServerName::try_from(host).unwrap(), &[], at)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_member_certificate_chains_to_the_ca_and_names_its_hosts() {
        let ca = Authority::new("prod/kv", now()).unwrap();
        let hosts = vec![
            "kv-0.kv-peers.prod.svc".to_string(),
            "127.0.0.1".to_string(),
        ];
        let leaf = ca.issue("kv-0", &hosts, Usage::Member, now()).unwrap();
        verify(ca.cert_pem(), &leaf.cert, "kv-0.kv-peers.prod.svc", now()).unwrap();
        verify(ca.cert_pem(), &leaf.cert, "127.0.0.1", now()).unwrap();
        let other = verify(ca.cert_pem(), &leaf.cert, "kv-1.kv-peers.prod.svc", now());
        assert!(other.is_err(), "a member's certificate names only itself");
        let expired = verify(
            ca.cert_pem(),
            &leaf.cert,
            "kv-0.kv-peers.prod.svc",
            now() + LEAF_LIFETIME + Duration::days(1),
        );
        assert!(expired.is_err());
    }

    #[test]
    fn a_ca_read_back_from_its_secret_issues_certificates_it_verifies() {
        let made = Authority::new("prod/kv", now()).unwrap();
        let loaded = Authority::load("kv-ca", made.cert_pem(), made.key_pem()).unwrap();
        let leaf = loaded
            .issue(
                "kv-1",
                &["kv-1.kv-peers.prod.svc".into()],
                Usage::Member,
                now(),
            )
            .unwrap();
        verify(made.cert_pem(), &leaf.cert, "kv-1.kv-peers.prod.svc", now()).unwrap();
        let other = Authority::new("prod/kv", now()).unwrap();
        assert!(
            verify(
                other.cert_pem(),
                &leaf.cert,
                "kv-1.kv-peers.prod.svc",
                now()
            )
            .is_err(),
            "another cluster's CA does not vouch for it"
        );
    }

    #[test]
    fn a_damaged_ca_secret_is_an_error_naming_the_secret() {
        let made = Authority::new("prod/kv", now()).unwrap();
        let err = Authority::load("kv-ca", made.cert_pem(), "garbage").unwrap_err();
        assert!(err.to_string().contains("kv-ca"), "{err}");
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        assert!(Authority::load("kv-ca", "not a certificate", &other_key).is_err());
    }

    #[test]
    fn certificates_are_renewed_when_a_third_of_their_lifetime_is_left() {
        let ca = Authority::new("prod/kv", now()).unwrap();
        let leaf = ca.issue("kv-0", &[], Usage::Client, now()).unwrap();
        let cert = leaf.cert.as_bytes();
        assert!(!needs_renewal(cert, now()));
        // Lifetime 90 days (+5 minutes back-dated): renew after day 60.
        assert!(!needs_renewal(cert, now() + Duration::days(59)));
        assert!(needs_renewal(cert, now() + Duration::days(61)));
        assert!(needs_renewal(cert, now() + Duration::days(365)));
        assert!(needs_renewal(b"not a certificate", now()));
    }
}
