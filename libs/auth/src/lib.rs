//! Identity and access for agentmesh: who a call is for, and what they may
//! do. No gRPC here; the kit's auth layer puts it on the wire.
//!
//! # Data flow of a call
//!
//! 1. [`authenticate::Authenticator`] turns a call's `authorization` header
//!    into an [`Identity`]: an API key looked up in the keys file
//!    ([`keys`], hashed, compared in constant time, reloaded when the file
//!    changes), a JWT ([`jwt`]), a client certificate the TLS listener
//!    verified ([`mtls`], when no bearer is sent), or, in the embedded single-user mode,
//!    nobody asked (`none`). A service of the mesh may then present the
//!    end user it acts for in the `x-agentmesh-*` headers
//!    ([`identity::FORWARDED`]); anyone else sending them is refused.
//! 2. [`authorize::Policy`] says which [`Scope`] the called method needs,
//!    from the [`authorize::ScopeTable`] each service declares.
//! 3. Handlers check what the tables cannot: the tenant of the resource,
//!    and the allow-lists of agents, routes and tools.
//! 4. Every refusal (and a credential's first success in an interval) is a
//!    [`decision::Decision`] for the audit trail, aggregated by
//!    [`decision::DecisionLog`] so a brute-force flood stays a few events.
//!
//! Settings: [`config::AuthConfig`] (`[<service>.auth]`).

pub mod authenticate;
pub mod authorize;
pub mod config;
pub mod decision;
pub mod file_stamp;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod mtls;
pub mod scope;

pub use authenticate::{Authenticator, Refusal, RefusalCode};
pub use authorize::{Policy, Requirement, ScopeTable};
pub use config::{AuthConfig, Method};
pub use identity::{AllowList, AllowLists, Identity, Mechanism};
pub use mtls::{CertificateNames, Peer};
pub use scope::{Scope, ScopeSet};
