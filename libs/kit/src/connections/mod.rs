//! Transport limits of every listener a service runs (gRPC and admin
//! HTTP): a cap on the connections each holds, a deadline for a new
//! connection's opening, an idle timeout, and the listen backlog — so that
//! a flood of idle or stalled connections is refused or closed before the
//! process runs out of file descriptors, while the connections already
//! held keep being served.
//!
//! ```text
//! TcpListener (backlog) ─accept─▶ place free? ─no──▶ reset at once (counted, logged ≤ 1 line/10 s)
//!                                      │yes
//!                                      ▼
//!                      Guarded<TcpStream> (holds the place; handshake and idle deadlines)
//!                                      │
//!            tonic / axum serve the connection; StreamCountLayer counts its calls
//!            (a connection with calls open is never idle), puts back the inner
//!            connection's info for remote_addr() and the auth layer
//! ```
//!
//! Over the cap the listener keeps accepting and resets at once (SO_LINGER
//! 0): a client gets a quick failure it can retry elsewhere, rather than a
//! hang in the kernel's queue. Connection pressure never touches health:
//! readiness stays as the service's checks say, so a slow-connection
//! flood cannot take every replica out of service. HTTP/2 settings the
//! server builder enforces itself (keep-alive pings, concurrent streams,
//! header list size) are set in [`crate::server`].

mod guarded;
mod layer;
mod metrics;
mod settings;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use guarded::{Activity, CallGuard, Guarded, GuardedInfo, Protocol};
pub use layer::{StreamCount, StreamCountLayer};
pub use metrics::{CloseReason, ConnectionMetrics};
pub use settings::{ConnectionSettings, derived_caps, descriptor_limit};

use metrics::{ListenerSeries, Throttle};

/// Binds a listener on `addr` with a listen backlog of `backlog`.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's `TcpListener::bind`: a restarted service rebinds its port
    // while old connections linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// What the connections of one listener share: its limits, places and
/// series.
#[derive(Debug)]
pub struct ListenerShared {
    service: &'static str,
    listener: &'static str,
    cap: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    places: Arc<Semaphore>,
    series: ListenerSeries,
    refusals: Throttle,
    closes: Throttle,
}

impl ListenerShared {
    /// The limits of `service`'s `listener` (`grpc` or `admin`), holding at
    /// most `cap` connections.
    pub fn new(
        service: &'static str,
        listener: &'static str,
        cap: usize,
        settings: &ConnectionSettings,
        metrics: &ConnectionMetrics,
    ) -> Arc<Self> {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            service,
            listener,
            cap,
            handshake_timeout: settings.handshake_timeout,
            idle_timeout: settings.idle_timeout,
            places: Arc::new(Semaphore::new(cap)),
            series: metrics.listener(listener, cap),
            refusals: Throttle::new(),
            closes: Throttle::new(),
        })
    }

    /// A place for a connection just accepted, or `None` (counted and
    /// logged) when the listener holds its maximum.
    pub fn admit(self: &Arc<Self>) -> Option<Place> {
        match Arc::clone(&self.places).try_acquire_owned() {
            Ok(permit) => {
                self.series.open.inc();
                Some(Place {
                    shared: Arc::clone(self),
                    _permit: permit,
                })
            }
            Err(_) => {
                self.series.refused.inc();
                if let Some(refused) = self.refusals.note() {
                    tracing::warn!(
                        service = self.service,
                        listener = self.listener,
                        limit = self.cap,
                        refused,
                        "connection limit reached: refusing new connections (setting `server.connections.max_{}`)",
                        self.listener
                    );
                }
                None
            }
        }
    }

    /// Counts (and now and then logs) a connection closed for `reason`.
    fn closed(&self, reason: CloseReason) {
        match reason {
            CloseReason::Handshake => self.series.closed_handshake.inc(),
            CloseReason::Idle => self.series.closed_idle.inc(),
        }
        if let Some(closed) = self.closes.note() {
            tracing::info!(
                service = self.service,
                listener = self.listener,
                closed,
                handshake_timeout = ?self.handshake_timeout,
                idle_timeout = ?self.idle_timeout,
                last_reason = reason.message(),
                "closed stalled or idle connections"
            );
        }
    }
}

/// A connection's place under its listener's cap; given back on drop.
#[derive(Debug)]
pub struct Place {
    shared: Arc<ListenerShared>,
    _permit: OwnedSemaphorePermit,
}

impl Place {
    fn shared(&self) -> &ListenerShared {
        &self.shared
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.shared.series.open.dec();
    }
}

/// A listener whose connections are admitted under [`ListenerShared`]'s
/// limits.
#[derive(Debug)]
pub struct LimitedListener {
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    protocol: Protocol,
}

impl LimitedListener {
    /// `listener`, limited by `shared`, speaking `protocol`.
    pub fn new(listener: TcpListener, shared: Arc<ListenerShared>, protocol: Protocol) -> Self {
        Self {
            listener,
            shared,
            protocol,
        }
    }

    /// The next connection admitted, with its place: connections over the
    /// cap are reset as they come; accept errors (out of descriptors) are
    /// logged and waited out.
    pub async fn accept_admitted(&mut self) -> (TcpStream, SocketAddr, Place) {
        loop {
            let (tcp, remote) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    if let Some(failed) = self.shared.refusals.note() {
                        tracing::warn!(service = self.shared.service, listener = self.shared.listener, error = %err, failed, "cannot accept connections");
                    }
                    // Out of descriptors and the like: wait a little
                    // rather than spin; the kernel queues meanwhile.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            match self.shared.admit() {
                Some(place) => {
                    // Small streamed messages otherwise stall behind Nagle.
                    let _ = tcp.set_nodelay(true);
                    return (tcp, remote, place);
                }
                None => {
                    // A reset, not a FIN: the client's first read fails at
                    // once, and no TIME_WAIT is left behind.
                    let _ = tcp.set_zero_linger();
                    drop(tcp);
                }
            }
        }
    }

    /// The next connection admitted, guarded.
    pub async fn accept_guarded(&mut self) -> (Guarded<TcpStream>, SocketAddr) {
        let (tcp, remote, place) = self.accept_admitted().await;
        (Guarded::new(tcp, self.protocol, place), remote)
    }

    /// The connections admitted, as tonic's incoming stream (dropping it
    /// closes the listener).
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = io::Result<Guarded<TcpStream>>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let (io, _) = listener.accept_guarded().await;
            Some((Ok(io), listener))
        })
    }
}

impl LimitedListener {
    /// The same listener, its connections watched as `protocol` speaks.
    pub(crate) fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.accept_guarded().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests;
