//! A service's two listeners — gRPC and admin HTTP — bound with their
//! backlog, put under their connection limits ([`crate::connections`]),
//! and the gRPC one served by tonic, plain or TLS.
//!
//! ```text
//! Listeners::bind ─▶ Listeners::limited(service, settings, registry)
//!                      ├─ gRPC:  LimitedListener (Http2, or Http2OrHttp1 with gRPC-Web)
//!                      │           ─▶ serve_grpc ─▶ tonic (plain, or TLS accept loop first)
//!                      └─ admin: LimitedListener (Http1) ─▶ crate::admin::serve (axum)
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;

use crate::config::ServerConfig;
use crate::connections::{
    ConnectionMetrics, ConnectionSettings, LimitedListener, ListenerShared, Protocol,
};
use crate::serve_error::ServeError;
use crate::tls::ReloadingAcceptor;

/// The bound gRPC and admin listeners of a service. Binding before serving
/// lets tests use port 0 and learn the ports.
#[derive(Debug)]
pub struct Listeners {
    grpc: TcpListener,
    admin: TcpListener,
}

impl Listeners {
    /// Binds both listeners as `config` says (with the backlog of
    /// `server.connections.accept_backlog`).
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServeError> {
        let grpc_addr = SocketAddr::new(config.host, config.port);
        let admin_addr = SocketAddr::new(
            config.admin_host.unwrap_or(config.host),
            config.admin_port(),
        );
        let backlog = config.connections.accept_backlog;
        let bind = |addr, what, setting| {
            crate::connections::bind(addr, backlog).map_err(|source| ServeError::Bind {
                addr,
                what,
                setting,
                source,
            })
        };
        let grpc = bind(grpc_addr, "gRPC", "server.port")?;
        let admin = bind(admin_addr, "admin HTTP", "server.admin_port")?;
        // Binding is synchronous; `async` keeps the signature services use.
        tokio::task::yield_now().await;
        Ok(Self { grpc, admin })
    }

    /// The gRPC listener's address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Both listeners under their limits, `(gRPC, admin)`: the caps as
    /// `settings` says or derived from the descriptor limit now, counted
    /// in `registry`; the gRPC one speaking HTTP/1.1 too when `http1`
    /// (gRPC-Web).
    pub(crate) fn limited(
        self,
        service: &'static str,
        settings: &ConnectionSettings,
        http1: bool,
        registry: &Registry,
    ) -> Result<(LimitedListener, LimitedListener), ServeError> {
        let metrics = ConnectionMetrics::register(registry)?;
        let (grpc_cap, admin_cap) = settings.caps();
        tracing::info!(
            %service,
            grpc = grpc_cap,
            admin = admin_cap,
            descriptor_limit = crate::connections::descriptor_limit(),
            handshake_timeout = ?settings.handshake_timeout,
            idle_timeout = ?settings.idle_timeout,
            "connection limits"
        );
        let shared =
            |listener, cap| ListenerShared::new(service, listener, cap, settings, &metrics);
        let grpc_protocol = if http1 {
            Protocol::Http2OrHttp1
        } else {
            Protocol::Http2
        };
        Ok((
            LimitedListener::new(self.grpc, shared("grpc", grpc_cap), grpc_protocol),
            LimitedListener::new(self.admin, shared("admin", admin_cap), Protocol::Http1),
        ))
    }
}

impl Listeners {
    /// Both listeners under their limits for a service whose main port
    /// serves HTTP/1.1 (the edge) rather than gRPC: as [`Self::limited`],
    /// with the main listener's connections watched as HTTP/1 (open once a
    /// request's headers are read, idle while no byte passes).
    pub fn limited_http(
        self,
        service: &'static str,
        settings: &ConnectionSettings,
        registry: &Registry,
    ) -> Result<(LimitedListener, LimitedListener), ServeError> {
        let (main, admin) = self.limited(service, settings, false, registry)?;
        Ok((main.with_protocol(Protocol::Http1), admin))
    }
}

/// The tonic server with the HTTP/2 limits of `config`: keep-alive pings
/// (a peer that does not answer within the timeout is dropped), streams
/// per connection, header list size; HTTP/1.1 accepted too when gRPC-Web
/// is on (browsers without HTTP/2 to the server, and Node's gRPC-Web
/// clients, call over it).
pub(crate) fn grpc_server(config: &ServerConfig) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .accept_http1(config.grpc_web.enabled)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .max_concurrent_streams(Some(config.max_concurrent_streams_per_connection))
        .http2_max_header_list_size(Some(config.max_header_list_bytes))
}

/// Background tasks that end with the server.
pub(crate) struct AbortOnDrop(pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A boxed future of a server.
type Served<F> = std::pin::Pin<Box<F>>;

/// Serves `router` on `listener` until `stop` is cancelled: plain TCP, or
/// TLS when `tls` is given (with the accept loop and the files' watch as
/// the returned tasks). The server is on the heap: its state machine would
/// otherwise make every future that awaits `serve` large to move.
pub(crate) fn serve_grpc<L, ResBody>(
    router: tonic::transport::server::Router<L>,
    listener: LimitedListener,
    tls: Option<Arc<ReloadingAcceptor>>,
    stop: CancellationToken,
) -> (
    Served<impl Future<Output = Result<(), tonic::transport::Error>>>,
    Option<AbortOnDrop>,
)
where
    L: tower::Layer<tonic::service::Routes>,
    L::Service: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<Body>>>::Future: Send,
    <L::Service as tower::Service<http::Request<Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let signal = stop.clone().cancelled_owned();
    match tls {
        None => {
            let server = router.serve_with_incoming_shutdown(listener.into_stream(), signal);
            (Box::pin(futures::future::Either::Left(server)), None)
        }
        Some(tls) => {
            let (incoming, accept) = crate::tls::incoming(listener, Arc::clone(&tls), stop);
            let server = router.serve_with_incoming_shutdown(incoming, signal);
            let tasks = AbortOnDrop(vec![accept, tls.watch()]);
            (
                Box::pin(futures::future::Either::Right(server)),
                Some(tasks),
            )
        }
    }
}
