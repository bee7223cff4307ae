//! The error of a service that cannot serve (re-exported by
//! [`crate::server`]); its own module so that the listeners
//! ([`crate::listen`]) and the host share it.

use std::net::SocketAddr;

/// Why a service could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what} (setting `{setting}`): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `gRPC` or `admin HTTP`.
        what: &'static str,
        /// The setting that chose the address.
        setting: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Metrics could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Another I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The auth settings cannot be used (the keys file, the credential).
    #[error("{0}")]
    Auth(String),
    /// A TLS file cannot be used (`server.tls.*`, `server.client_tls.*`).
    #[error("{0}")]
    Tls(String),
    /// A setting cannot be used (checked at load for configured services;
    /// here for hosts built in code).
    #[error("{0}")]
    Setting(#[from] crate::config_error::ConfigError),
}
