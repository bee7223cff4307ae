//! Channels from one service to another.
//!
//! Connections are made lazily (a service starts even when its peers are not
//! up yet), reused for every call, with TCP_NODELAY (small streamed messages
//! otherwise stall ~40 ms behind Nagle's algorithm) and HTTP/2 keep-alive, and
//! wrapped in [`ForwardingLayer`] so every call forwards the current request's
//! metadata and deadline.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::propagation::{Forwarding, ForwardingLayer};

/// A channel that forwards request metadata; generated clients take it as is
/// (`FooClient::new(channel)`).
pub type MeshChannel = Forwarding<Channel>;

/// A lazily-connecting channel to `uri` (e.g. `http://127.0.0.1:50052`).
pub fn channel(uri: &str) -> Result<MeshChannel, tonic::transport::Error> {
    Ok(tower::Layer::layer(&ForwardingLayer, plain_channel(uri)?))
}

/// A lazily-connecting channel without metadata forwarding, for tools that
/// are themselves the edge (the CLI).
pub fn plain_channel(uri: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}
