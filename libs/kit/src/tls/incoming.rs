//! The TLS side of the gRPC listener: accepts TCP connections, runs each
//! handshake in its own task (bounded in time and in number), and hands
//! the finished [`TlsConnection`]s to tonic as its incoming stream.
//!
//! ```text
//! LimitedListener ─accept (under the cap)─▶ handshake task (timeout) ─ok─▶ channel ─▶ tonic (serve_with_incoming)
//!                                                 └─ failed / timed out: logged at debug, connection dropped
//! ```
//!
//! Each connection holds its place under the listener's cap from accept
//! on; after the handshake it is [`Guarded`] as a plain one is (HTTP/2
//! opening and idle deadlines).
//!
//! A failed handshake never ends the accept loop. Each connection carries a
//! [`TlsPeer`] (tonic puts it in every request's extensions, as it does
//! `TcpConnectInfo` for plain TCP): the peer's address and, when it
//! presented one that verified, its client certificate with the names the
//! auth layer maps to an identity.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentmesh_auth::CertificateNames;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::acceptor::ReloadingAcceptor;
use crate::connections::{Guarded, LimitedListener, Protocol};

/// Handshakes in progress at once; beyond them new connections are dropped
/// at once (slow or idle handshakes cannot pile up tasks).
const MAX_HANDSHAKES: usize = 512;

/// The verified client certificate of a connection.
#[derive(Debug)]
pub struct ClientCertificate {
    /// The chain as presented, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's URI and DNS subject alternative names.
    pub names: CertificateNames,
}

/// What a TLS connection tells about its peer; in every request's
/// extensions.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// Our address.
    pub local_addr: Option<SocketAddr>,
    /// The client certificate, when one was presented and verified.
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// A connection whose handshake is done.
#[derive(Debug)]
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl TlsConnection {
    fn new(stream: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        let (tcp, session) = stream.get_ref();
        // Parsed once per connection, not per call.
        let certificate = session.peer_certificates().map(|chain| {
            Arc::new(ClientCertificate {
                names: chain.first().map(names_of).unwrap_or_default(),
                chain: chain.to_vec(),
            })
        });
        let peer = TlsPeer {
            remote_addr: tcp.peer_addr().ok(),
            local_addr: tcp.local_addr().ok(),
            certificate,
        };
        Self { stream, peer }
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The URI and DNS subject alternative names of a certificate (DNS names
/// lowercased); none when it cannot be parsed (it was verified before, so
/// that does not happen in practice, and it then maps to nobody).
pub fn names_of(certificate: &CertificateDer<'_>) -> CertificateNames {
    use x509_parser::extensions::GeneralName;
    let mut names = CertificateNames::default();
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
        return names;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return names;
    };
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(uri) => names.uris.push((*uri).to_owned()),
            GeneralName::DNSName(dns) => names.dns_names.push(dns.to_ascii_lowercase()),
            _ => {}
        }
    }
    names
}

/// The stream of TLS connections accepted on `listener` until `stop` is
/// cancelled (or the stream is dropped); the returned task is the accept
/// loop, to abort with the server.
pub fn incoming(
    listener: LimitedListener,
    tls: Arc<ReloadingAcceptor>,
    stop: CancellationToken,
) -> (
    ReceiverStream<Result<Guarded<TlsConnection>, io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    let (sender, receiver) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(listener, tls, sender, stop));
    (ReceiverStream::new(receiver), task)
}

async fn accept_loop(
    mut listener: LimitedListener,
    tls: Arc<ReloadingAcceptor>,
    sender: mpsc::Sender<Result<Guarded<TlsConnection>, io::Error>>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, remote, place) = tokio::select! {
            () = stop.cancelled() => return,
            () = sender.closed() => return,
            accepted = listener.accept_admitted() => accepted,
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::warn!(peer = %remote, "too many TLS handshakes in progress: dropping the connection");
            continue;
        };
        let acceptor = tls.acceptor();
        let timeout = tls.handshake_timeout();
        let sender = sender.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let connection = TlsConnection::new(stream);
                    let guarded = Guarded::new(connection, Protocol::Http2, place);
                    let _ = sender.send(Ok(guarded)).await;
                }
                Ok(Err(err)) => {
                    tracing::debug!(peer = %remote, error = %err, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(peer = %remote, ?timeout, "TLS handshake timed out");
                }
            }
        });
    }
}
