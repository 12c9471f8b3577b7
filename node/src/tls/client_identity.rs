//! The user a client certificate stands for: its subject's common name, as
//! etcd takes it with `--client-cert-auth` when a request carries no token.
//! The handshake already verified the chain against the trusted CA; this
//! only reads the name.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The first common name of `cert`'s subject; `None` for a certificate that
/// does not parse or names none.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::local_ca::LocalCa;

    #[test]
    fn the_common_name_of_an_issued_certificate_is_read_back() {
        let ca = LocalCa::new("test ca").unwrap();
        let issued = ca.issue("alice", &["localhost"]).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert.as_bytes()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
        assert_eq!(common_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
