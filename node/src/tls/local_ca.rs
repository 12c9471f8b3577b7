//! A throwaway certificate authority for `raftkv dev --tls` and for tests:
//! a self-signed CA and certificates it issues for given host names, as PEM.
//! Not for production, where certificates come from cert-manager or an
//! operator's own CA: keys are written unencrypted and never revoked.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::TlsError;
use super::reload::KeyPairFiles;

/// A certificate authority held in memory.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalCa(..)")
    }
}

/// A certificate and its key, as PEM.
#[derive(Clone, Debug)]
pub struct IssuedPem {
    pub cert: String,
    pub key: String,
}

fn rcgen_error(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("cannot make a certificate: {e}"))
}

impl LocalCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(LocalCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, as PEM (what clients and peers trust).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `common_name` valid for `hosts` (DNS names or IP
    /// addresses), usable by servers and clients alike.
    pub fn issue(&self, common_name: &str, hosts: &[&str]) -> Result<IssuedPem, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(rcgen_error)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
        Ok(IssuedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf, TlsError> {
        let path = dir.join("ca.pem");
        write(&path, self.pem.as_bytes())?;
        Ok(path)
    }
}

impl IssuedPem {
    /// Writes `dir/<stem>.pem` and `dir/<stem>-key.pem` (the key readable by
    /// its owner only).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<KeyPairFiles, TlsError> {
        let files = KeyPairFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        write(&files.cert, self.cert.as_bytes())?;
        write(&files.key, self.key.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| TlsError::Io {
                    path: files.key.clone(),
                    source,
                },
            )?;
        }
        Ok(files)
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    std::fs::write(path, bytes).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}
