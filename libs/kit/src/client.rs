//! Channels from one service to another.
//!
//! Connections are made lazily (a service starts even when its peers are not
//! up yet), reused for every call, with TCP_NODELAY (small streamed messages
//! otherwise stall ~40 ms behind Nagle's algorithm) and HTTP/2 keep-alive.
//! A [`MeshChannel`] wraps the connection in two layers:
//!
//! ```text
//! generated client ─▶ ForwardingLayer ─▶ GrpcClientMetricsLayer ─▶ Channel (HTTP/2)
//!                     (metadata,          (grpc_client_* metrics,
//!                      deadline, span)     when the service gave them)
//! ```
//!
//! so every call forwards the current request's metadata and deadline, and
//! is counted in the calling service's `grpc_client_*` metrics.
//!
//! A peer whose URL is `https://` is reached over TLS as
//! `[server.client_tls]` says ([`crate::tls::ClientTlsFiles`]: the CA to
//! trust, the client certificate to present); `http://` stays plain.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::auth::ServiceCredential;
use crate::metrics::{GrpcClientMetrics, GrpcClientMetricsLayer, GrpcClientMetricsService};
use crate::propagation::{Forwarding, ForwardingLayer};
use crate::tls::ClientTlsFiles;

/// What every channel of a service shares: its client metrics, the
/// credential it presents to its peers and its client TLS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Clients {
    metrics: GrpcClientMetrics,
    credential: ServiceCredential,
    tls: ClientTlsFiles,
}

/// Channels counted nowhere, presenting no credential (tests, tools).
impl Default for Clients {
    fn default() -> Self {
        Self::new(GrpcClientMetrics::disabled(), ServiceCredential::none())
    }
}

impl Clients {
    /// Channels counted in `metrics`, presenting `credential`.
    pub fn new(metrics: GrpcClientMetrics, credential: ServiceCredential) -> Self {
        Self {
            metrics,
            credential,
            tls: ClientTlsFiles::default(),
        }
    }

    /// The same, reaching `https://` peers with `tls` (the platform's roots
    /// and no client certificate without it).
    #[must_use]
    pub fn with_tls(mut self, tls: ClientTlsFiles) -> Self {
        self.tls = tls;
        self
    }

    /// A lazily-connecting channel to `uri` (e.g. `http://127.0.0.1:50052`,
    /// or `https://…` for TLS).
    pub fn channel(&self, uri: &str) -> Result<MeshChannel, tonic::transport::Error> {
        let metered = tower::Layer::layer(
            &GrpcClientMetricsLayer::new(self.metrics.clone()),
            tls_channel(uri, Some(&self.tls))?,
        );
        Ok(tower::Layer::layer(
            &ForwardingLayer::with_credential(self.credential.clone()),
            metered,
        ))
    }

    /// The client metrics.
    pub fn metrics(&self) -> &GrpcClientMetrics {
        &self.metrics
    }

    /// The credential.
    pub fn credential(&self) -> &ServiceCredential {
        &self.credential
    }

    /// The client TLS for `https://` peers.
    pub fn tls(&self) -> &ClientTlsFiles {
        &self.tls
    }
}

/// A channel that forwards request metadata and records client metrics;
/// generated clients take it as is (`FooClient::new(channel)`).
pub type MeshChannel = Forwarding<GrpcClientMetricsService<Channel>>;

/// A lazily-connecting channel to `uri` (e.g. `http://127.0.0.1:50052`),
/// without client metrics (for callers that have no registry).
pub fn channel(uri: &str) -> Result<MeshChannel, tonic::transport::Error> {
    channel_with_metrics(uri, &GrpcClientMetrics::disabled())
}

/// A lazily-connecting channel to `uri` whose calls are counted in
/// `metrics` (a service passes `host.metrics().grpc_client()`).
pub fn channel_with_metrics(
    uri: &str,
    metrics: &GrpcClientMetrics,
) -> Result<MeshChannel, tonic::transport::Error> {
    Clients::new(metrics.clone(), ServiceCredential::none()).channel(uri)
}

/// A lazily-connecting channel without metadata forwarding, for tools that
/// are themselves the edge (the CLI). An `https://` peer is verified
/// against the platform's roots.
pub fn plain_channel(uri: &str) -> Result<Channel, tonic::transport::Error> {
    tls_channel(uri, None)
}

/// A lazily-connecting channel without metadata forwarding, reaching an
/// `https://` peer with `tls` (the platform's roots without it).
pub fn tls_channel(
    uri: &str,
    tls: Option<&ClientTlsFiles>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint(uri)?;
    let endpoint = if is_https(&endpoint) {
        endpoint.tls_config(tls.map_or_else(
            || ClientTlsConfig::new().with_native_roots(),
            ClientTlsFiles::config,
        ))?
    } else {
        endpoint
    };
    Ok(endpoint.connect_lazy())
}

/// The settings every channel shares.
fn endpoint(uri: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

fn is_https(endpoint: &Endpoint) -> bool {
    endpoint.uri().scheme() == Some(&http::uri::Scheme::HTTPS)
}

/// Makes rustls on ring the process's TLS crypto provider, unless one is
/// installed already; true when there is one. reqwest (built with
/// `rustls-no-provider`) takes the process default and panics without one.
pub fn install_tls_crypto() -> bool {
    // An Err only means another part of the process installed a provider
    // first, which reqwest then uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default().is_some()
}
