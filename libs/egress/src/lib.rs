//! The outbound-URL guard: every URL the mesh fetches on behalf of a tenant
//! (a model's `http_request` tool call today) goes through an
//! [`EgressClient`], which can only reach what its [`EgressPolicy`] allows.
//!
//! * [`policy`]: the operator's rules ([`EgressConfig`]): host allow and
//!   deny lists (exact names and `*.domain`), schemes (http, https), ports,
//!   address ranges allowed or denied by CIDR, redirects followed.
//! * [`address`]: the special-purpose address ranges refused unless a CIDR
//!   allows them: loopback, private (RFC 1918), carrier-grade NAT,
//!   link-local with the cloud metadata service, unique-local, multicast,
//!   broadcast, unspecified, documentation, benchmarking, reserved, and the
//!   IPv6 forms that carry an IPv4 address.
//! * [`client`]: the reqwest client enforcing it. The URL is checked before
//!   anything is sent; a host name is resolved once by the client's own
//!   resolver, which hands reqwest only addresses that pass, so the
//!   connection goes to exactly the checked address (no DNS rebinding
//!   between check and connect); every redirect is checked again, up to a
//!   bounded number of hops; credentials never follow a redirect to another
//!   origin; bodies are read up to a cap.
//!
//! The orchestrator's run callbacks (a URL the tenant gives at StartRun)
//! go through it too. Provider base URLs, the JWKS URL and alert
//! receivers' webhooks come from the operator's configuration and use
//! plain clients. Any future fetch of a URL a tenant or a model supplies
//! (webhooks configured per tenant, MCP servers over HTTP) must go through
//! an [`EgressClient`].

pub mod address;
pub mod client;
pub mod policy;

pub use address::{AddressClass, classify};
pub use client::{CappedBody, ClientOptions, EgressClient, EgressError, read_capped};
pub use policy::{EgressConfig, EgressPolicy, MAX_REDIRECTS, Refusal, Rule};
