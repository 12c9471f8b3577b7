//! Dialling `https://` URLs for tonic channels.
//!
//! tonic's own TLS support takes a fixed certificate when the channel is
//! built; a node's peer certificate is rotated on disk, so this connector
//! does the handshake itself with a rustls configuration whose client
//! certificate follows its files (see [`super::reload`]). Plain `http://`
//! URLs are dialled without TLS, so one connector serves both.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// A connection that may or may not be encrypted, as hyper wants it.
pub type MaybeTls = TokioIo<Dialed>;

/// A plain or a TLS client stream.
#[derive(Debug)]
pub enum Dialed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Dialed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Dialed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_flush(cx),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Dials `http://` plainly and `https://` with TLS under its configuration.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Connector {
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Connector { tls }
    }

    /// Connects `endpoint` through this connector.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self.clone()).await
    }

    /// A channel that connects (and reconnects) on first use.
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.clone())
    }
}

fn io_error(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

async fn dial(tls: Option<Arc<rustls::ClientConfig>>, uri: Uri) -> std::io::Result<MaybeTls> {
    let host = uri
        .host()
        .ok_or_else(|| io_error(format!("{uri} has no host")))?;
    // An IPv6 literal comes bracketed in a URI, not in a socket address.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    if !https {
        return Ok(TokioIo::new(Dialed::Plain(tcp)));
    }
    let config = tls.ok_or_else(|| {
        io_error(format!(
            "{uri} is https but no trusted CA is configured for it"
        ))
    })?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| io_error(format!("{host} is not a valid TLS server name: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(Dialed::Tls(Box::new(stream))))
}

impl tower::Service<Uri> for Connector {
    type Response = MaybeTls;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<MaybeTls, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(dial(self.tls.clone(), uri))
    }
}
