//! The object store client's HTTP: hyper with rustls on ring.
//!
//! object_store's own client is reqwest, whose TLS would bring aws-lc in,
//! or (without a built-in provider) make every reqwest client of this
//! workspace depend on a process-wide rustls provider being installed
//! first. Its `HttpConnector` hook lets us hand it hyper with the same
//! rustls provider every other connection here uses, and the system's
//! trusted roots.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse,
    HttpResponseBody, HttpService,
};

/// Giving up on a TCP connection after this long (object_store retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request whose response has not begun after this long fails (and is
/// retried): a 16 MiB part needs well under this on any working link.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds the hyper client object_store sends its requests through.
#[derive(Debug, Clone, Copy)]
pub struct HyperConnector;

impl object_store::client::HttpConnector for HyperConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |e: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
            store: "S3",
            source: e,
        };
        let versions = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| generic(Box::new(e)))?;
        // Without any system roots (a minimal image), plain-HTTP endpoints
        // still work and HTTPS ones fail on the unknown issuer, which says
        // what is wrong.
        let tls = match versions.clone().with_native_roots() {
            Ok(b) => b.with_no_client_auth(),
            Err(_) => versions
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(HttpClient::new(Hyper {
            client: Client::builder(TokioExecutor::new()).build(https),
        }))
    }
}

#[derive(Debug)]
struct Hyper {
    client: Client<HttpsConnector<HttpConnector>, HttpRequestBody>,
}

#[async_trait::async_trait]
impl HttpService for Hyper {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(req))
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Timeout, e))?
            .map_err(|e| {
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                HttpError::new(kind, e)
            })?;
        let (parts, body) = response.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}
