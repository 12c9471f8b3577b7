//! TLS handshakes for the gRPC listeners (client and peer ports).
//!
//! tonic serves any stream of connections; this one accepts TCP, and runs
//! each handshake in its own task under a deadline, so that a client that
//! stalls mid-handshake, speaks plaintext or sends garbage costs one task
//! for a few seconds and never holds up the accept loop. Failed handshakes
//! are logged at debug level, counted in
//! `raftkv_tls_handshake_failures_total` and the connection dropped: they
//! are an everyday event on a port the internet can reach, not a node
//! fault, but a rising count (a client with the wrong CA, an expired
//! certificate) is worth a look.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use prometheus::IntCounter;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// An accepted connection after its TLS handshake.
#[derive(Debug)]
pub struct TlsConnection(Box<TlsStream<TcpStream>>);

/// What a request served on a [`TlsConnection`] carries in its extensions:
/// the certificate chain the client presented (already verified against the
/// trusted CA by the handshake), if any.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub tcp: TcpConnectInfo,
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        let (tcp, session) = self.0.get_ref();
        TlsPeer {
            tcp: tcp.connect_info(),
            certificates: session
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A TLS server configuration and where its failed handshakes are counted.
#[derive(Clone)]
pub struct TlsListener {
    pub config: Arc<rustls::ServerConfig>,
    pub failures: HandshakeFailures,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsListener(..)")
    }
}

/// The failed-handshake counters of one listener (none for a server
/// without metrics).
#[derive(Clone, Debug, Default)]
pub struct HandshakeFailures {
    counters: Option<(IntCounter, IntCounter)>,
}

impl HandshakeFailures {
    /// The counters of `listener` (`client`, `peer`, `http`) in `metrics`.
    pub fn of(metrics: &Metrics, listener: &str) -> HandshakeFailures {
        let m = &metrics.tls_handshake_failures_total;
        HandshakeFailures {
            counters: Some((
                m.with_label_values(&[listener, "error"]),
                m.with_label_values(&[listener, "timeout"]),
            )),
        }
    }

    /// Logs and counts a handshake that did not complete in time (`None`)
    /// or failed.
    pub fn record(&self, from: Option<SocketAddr>, outcome: Option<std::io::Error>) {
        match outcome {
            Some(e) => {
                debug!(?from, error = %e, "TLS handshake failed");
                if let Some((error, _)) = &self.counters {
                    error.inc();
                }
            }
            None => {
                debug!(?from, "TLS handshake timed out");
                if let Some((_, timeout)) = &self.counters {
                    timeout.inc();
                }
            }
        }
    }
}

/// A handshake must complete within this time of the TCP accept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond it, accepting waits.
const MAX_HANDSHAKES: usize = 1024;
/// Pause after a failed accept (out of file descriptors, say) so that the
/// loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connections of `listener` that completed a TLS handshake under
/// `config`, as a stream for tonic's `serve_with_incoming`. The accept task
/// ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: TlsListener,
) -> impl Stream<Item = Result<TlsConnection, std::io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls.config);
    let failures = tls.failures;
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            // Small answers must not wait for Nagle + delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConnection(Box::new(stream)))).await;
                    }
                    Ok(Err(e)) => failures.record(Some(from), Some(e)),
                    Err(_) => failures.record(Some(from), None),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
