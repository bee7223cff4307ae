//! Optional TLS on every gRPC server and client of the mesh (rustls on
//! ring), for deployments without a service mesh doing it for them.
//!
//! * Server: `[server.tls]` ([`ServerTls`]) turns the gRPC listener into a
//!   TLS one. [`ReloadingAcceptor`] holds the rustls configuration built
//!   from the certificate, key and client CA files and rebuilds it when one
//!   of them changes (rotation without restart); [`incoming`] accepts
//!   connections, runs the handshakes (bounded in time and number) and
//!   hands tonic the finished ones, each with a [`TlsPeer`] in its
//!   requests' extensions. With `client_auth`, client certificates are
//!   verified against `client_ca_file`; the auth layer hands the verified
//!   certificate's names to the authenticator, which maps them to an
//!   identity through `[[auth.mtls_principals]]`.
//! * Client: `[server.client_tls]` ([`ClientTls`]) says how the service's
//!   channels to `https://` peers verify them (a CA bundle or the
//!   platform's roots) and which client certificate they present;
//!   [`ClientTlsFiles`] re-reads the files for new channels when they
//!   change. `http://` peers stay plain.
//!
//! The admin HTTP server stays plain: it listens on loopback by default.

mod acceptor;
mod client;
mod incoming;
mod settings;

pub use acceptor::{ReloadingAcceptor, TlsFileError};
pub use client::ClientTlsFiles;
pub use incoming::{ClientCertificate, TlsConnection, TlsPeer, incoming, names_of};
pub use settings::{ClientAuth, ClientTls, ServerTls};

#[cfg(test)]
mod tests;
