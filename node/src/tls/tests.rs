//! TLS set-up, rotation and refusal, over real loopback handshakes.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::config::load_certs;
use super::local_ca::LocalCa;
use super::reload::{ClientCertResolver, KeyPairFiles, ReloadingKeyPair, ServerCertResolver};
use super::trust::{TrustedClients, TrustedServers};
use super::{ClientTls, ServerTls, peer_identity, provider};

/// One handshake: the server writes "ok" once its side completed. Returns
/// the certificate the server presented, or why the exchange failed.
async fn exchange(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await {
            let _ = tls.write_all(b"ok").await;
            let _ = tls.shutdown().await;
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let result = async {
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
        if got != b"ok" {
            return Err(format!("the server said {got:?}"));
        }
        Ok(leaf)
    }
    .await;
    server_task.await.unwrap();
    result
}

fn client(ca: &std::path::Path, key_pair: Option<KeyPairFiles>) -> Arc<rustls::ClientConfig> {
    ClientTls {
        trusted_ca: Some(ca.to_path_buf()),
        key_pair,
    }
    .client_config()
    .unwrap()
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("test CA").unwrap();
    let ca_path = ca.write_ca(dir.path()).unwrap();
    let files = ca
        .issue("first", &["127.0.0.1"])
        .unwrap()
        .write(dir.path(), "server")
        .unwrap();
    let key_pair = Arc::new(
        ReloadingKeyPair::load_checking_every(files.clone(), provider(), Duration::ZERO).unwrap(),
    );
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ServerCertResolver(key_pair))),
    );
    let first = load_certs(&files.cert).unwrap()[0].clone();
    let seen = exchange(server.clone(), client(&ca_path, None))
        .await
        .unwrap();
    assert_eq!(seen, first);

    // Rotate: a new certificate and key in place of the old ones.
    let second = ca.issue("second", &["127.0.0.1"]).unwrap();
    second.write(dir.path(), "server").unwrap();
    let second_der = load_certs(&files.cert).unwrap()[0].clone();
    assert_ne!(first, second_der);
    let seen = exchange(server.clone(), client(&ca_path, None))
        .await
        .unwrap();
    assert_eq!(seen, second_der, "the new certificate is served");

    // A half-written rotation (garbage) keeps the last good pair serving.
    std::fs::write(&files.cert, b"-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
    let seen = exchange(server.clone(), client(&ca_path, None))
        .await
        .unwrap();
    assert_eq!(
        seen, second_der,
        "a broken file does not replace a good pair"
    );
    // A certificate that does not match the key is not taken either.
    let third = ca.issue("third", &["127.0.0.1"]).unwrap();
    std::fs::write(&files.cert, third.cert.as_bytes()).unwrap();
    let seen = exchange(server.clone(), client(&ca_path, None))
        .await
        .unwrap();
    assert_eq!(
        seen, second_der,
        "a mismatched pair does not replace a good pair"
    );
    // Once the key follows, the pair is taken.
    std::fs::write(&files.key, third.key.as_bytes()).unwrap();
    let seen = exchange(server, client(&ca_path, None)).await.unwrap();
    assert_ne!(seen, second_der);
}

#[tokio::test]
async fn client_cert_auth_refuses_clients_without_a_certificate_from_the_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("cluster CA").unwrap();
    let ca_path = ca.write_ca(dir.path()).unwrap();
    let server_files = ca
        .issue("server", &["127.0.0.1"])
        .unwrap()
        .write(dir.path(), "server")
        .unwrap();
    let good = ca
        .issue("alice", &[])
        .unwrap()
        .write(dir.path(), "alice")
        .unwrap();
    let other_ca = LocalCa::new("another CA").unwrap();
    let stranger = other_ca
        .issue("mallory", &[])
        .unwrap()
        .write(dir.path(), "mallory")
        .unwrap();
    let (server, _) = ServerTls {
        key_pair: server_files,
        trusted_ca: Some(ca_path.clone()),
        client_cert_auth: true,
    }
    .server_config(&[super::ALPN_H2])
    .unwrap();

    exchange(server.clone(), client(&ca_path, Some(good)))
        .await
        .expect("a certificate from the trusted CA is accepted");
    let err = exchange(server.clone(), client(&ca_path, None))
        .await
        .expect_err("no certificate");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    exchange(server.clone(), client(&ca_path, Some(stranger)))
        .await
        .expect_err("a certificate from another CA");

    // And the client refuses a server whose certificate it does not trust.
    let other_ca_path = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_path, other_ca.pem()).unwrap();
    exchange(server, client(&other_ca_path, None))
        .await
        .expect_err("a server from another CA");
}

/// A client configuration trusting the bundle at `ca`, looked at on
/// every handshake, presenting `key_pair`.
fn client_following(ca: &std::path::Path, key_pair: KeyPairFiles) -> Arc<rustls::ClientConfig> {
    let trusted =
        TrustedServers::load_checking_every(ca.to_path_buf(), provider(), Duration::ZERO).unwrap();
    let key_pair = Arc::new(ReloadingKeyPair::load(key_pair, provider()).unwrap());
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(trusted))
        .with_client_cert_resolver(Arc::new(ClientCertResolver(key_pair)));
    // Every exchange a full handshake: a resumed session checks no
    // certificate at all.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

#[tokio::test]
async fn a_changed_trusted_ca_is_taken_on_both_sides_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = LocalCa::new("old CA").unwrap();
    let new_ca = LocalCa::new("new CA").unwrap();
    let server_ca = dir.path().join("server-trusts.pem");
    let client_ca = dir.path().join("client-trusts.pem");
    std::fs::write(&server_ca, old_ca.pem()).unwrap();
    std::fs::write(&client_ca, old_ca.pem()).unwrap();
    let server_files = old_ca
        .issue("server", &["127.0.0.1"])
        .unwrap()
        .write(dir.path(), "server")
        .unwrap();
    // The client already holds a certificate from the new CA.
    let client_files = new_ca
        .issue("client", &[])
        .unwrap()
        .write(dir.path(), "client")
        .unwrap();
    let trusted =
        TrustedClients::load_checking_every(server_ca.clone(), true, provider(), Duration::ZERO)
            .unwrap();
    let key_pair = Arc::new(
        ReloadingKeyPair::load_checking_every(server_files, provider(), Duration::ZERO).unwrap(),
    );
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(trusted))
            .with_cert_resolver(Arc::new(ServerCertResolver(key_pair.clone()))),
    );
    let client = client_following(&client_ca, client_files);

    exchange(server.clone(), client.clone())
        .await
        .expect_err("the server does not trust the new CA yet");
    // The server's bundle gains the new CA next to the old one.
    std::fs::write(&server_ca, format!("{}{}", old_ca.pem(), new_ca.pem())).unwrap();
    exchange(server.clone(), client.clone())
        .await
        .expect("the server trusts the new CA once its bundle says so");

    // A bundle half written keeps the last good roots in force.
    std::fs::write(&server_ca, b"-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
    exchange(server.clone(), client.clone())
        .await
        .expect("a broken bundle does not replace a good one");

    // The client side: the server moves to a certificate from the new CA,
    // which the client refuses until its own bundle names that CA.
    new_ca
        .issue("server", &["127.0.0.1"])
        .unwrap()
        .write(dir.path(), "server")
        .unwrap();
    let err = exchange(server.clone(), client.clone())
        .await
        .expect_err("the client does not trust the new CA yet");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    std::fs::write(&client_ca, new_ca.pem()).unwrap();
    exchange(server, client)
        .await
        .expect("the client trusts the new CA once its bundle says so");
}

#[test]
fn client_cert_auth_without_a_trusted_ca_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("CA").unwrap();
    let files = ca
        .issue("s", &["127.0.0.1"])
        .unwrap()
        .write(dir.path(), "s")
        .unwrap();
    let tls = ServerTls {
        key_pair: files.clone(),
        trusted_ca: None,
        client_cert_auth: true,
    };
    assert!(tls.server_config(&[]).is_err());
    let missing = ServerTls {
        key_pair: KeyPairFiles {
            cert: dir.path().join("absent.pem"),
            key: files.key,
        },
        trusted_ca: None,
        client_cert_auth: false,
    };
    let err = missing.server_config(&[]).unwrap_err().to_string();
    assert!(err.contains("absent.pem"), "{err}");
}

#[test]
fn a_peer_certificate_must_name_the_host_of_the_member_it_claims_to_be() {
    let ca = LocalCa::new("peer CA").unwrap();
    let pem = ca.issue("node-2", &["127.0.0.2", "node-2.peers"]).unwrap();
    let der = CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap();
    let chain = [der];
    assert_eq!(
        peer_identity::check(Some(&chain), "https://127.0.0.2:2380"),
        Ok(())
    );
    assert_eq!(
        peer_identity::check(Some(&chain), "https://node-2.peers:2380"),
        Ok(())
    );
    assert!(matches!(
        peer_identity::check(Some(&chain), "https://127.0.0.3:2380"),
        Err(peer_identity::IdentityError::WrongHost { .. })
    ));
    assert!(matches!(
        peer_identity::check(Some(&chain), "https://node-1.peers:2380"),
        Err(peer_identity::IdentityError::WrongHost { .. })
    ));
    assert_eq!(
        peer_identity::check(None, "https://127.0.0.2:2380"),
        Err(peer_identity::IdentityError::NoCertificate)
    );
}
