//! The agentmesh service kit: everything a service needs besides its own
//! handlers, so that each service's `main` is a few lines and every service
//! behaves the same at the edges.
//!
//! # Layout
//!
//! * [`config`]: layered, validated configuration (defaults → TOML file →
//!   `AGENTMESH_<SERVICE>__*` environment → flags); a bad value is one line
//!   naming the setting.
//! * [`server`]: [`ServiceHost`] binds the gRPC and admin listeners, adds
//!   health and reflection, wraps every call in the layers below, and runs the
//!   life cycle (NOT_SERVING → start-up → SERVING → drain → stop).
//! * Layers, each a tower `Layer` + `Service` pair: [`propagation`] (request
//!   context and metadata forwarding, both directions), [`trace`] (a span per
//!   call, server and client side), [`metrics`] (gRPC
//!   server and client metrics), [`limits`] (load shedding), [`drain`] (ending streams
//!   at shutdown), [`bounded_status`] (every answered status cut to size),
//!   [`grpc_timeout`] (a malformed `grpc-timeout` is INVALID_ARGUMENT, a
//!   passed deadline DEADLINE_EXCEEDED), [`request_frames`] (an oversized
//!   request message is RESOURCE_EXHAUSTED). [`body`] holds the
//!   response-body wrapper they share.
//! * [`connections`]: transport limits of every listener (a cap on the
//!   connections held, derived from the descriptor limit; handshake and
//!   idle timeouts; the listen backlog) with their metrics; [`listen`] binds
//!   a service's two listeners under them and serves the gRPC one;
//!   [`serve_error`] is the error of a service that cannot serve.
//! * [`grpc_web`]: optional gRPC-Web (browsers) on the gRPC listener, with
//!   HTTP/1.1 beside HTTP/2 and CORS closed unless origins are configured;
//!   its calls become gRPC calls before any other layer sees them.
//! * [`tls`]: optional TLS on the gRPC listener (certificates reloaded on
//!   change, client certificates verified for mTLS) and on channels to
//!   `https://` peers.
//! * [`auth`]: the layer that authenticates and authorizes every call (the
//!   rules are `agentmesh_auth`'s), and the credential a service presents to
//!   its peers.
//! * [`request_context`]: the [`RequestContext`] a call carries (forwarded
//!   headers, deadline, verified identity), read by [`propagation`],
//!   [`trace`] and the handlers.
//! * [`telemetry`]: the OpenTelemetry exporters (one per hosted service, so
//!   each exports under its own `service.name`) and W3C trace propagation.
//! * [`health`] (with its dependency checks), [`admin`] (`/metrics`,
//!   `/livez`, `/readyz`), [`logging`], [`shutdown`] (signals), [`client`]
//!   (channels to other services), [`status`] (errors a person can act on),
//!   [`main_support`] (a service binary's `main`), [`config_error`] (the
//!   error every setting check returns).
//! * What every service does the same way: [`paging`] (page tokens and page
//!   sizes of the List RPCs), [`time`] (timestamps and stored microseconds),
//!   [`duration`] (a request's Durations checked),
//!   [`ident`] (the contract's identifier rule), [`text`] (cutting text at
//!   character boundaries).
//!
//! # Data flow of a call
//!
//! Where gRPC-Web is on, [`grpc_web::GrpcWebLayer`] first answers CORS
//! preflights and turns a gRPC-Web call into the gRPC call it carries, so
//! that what follows is the same for both. An incoming call then passes
//! [`propagation::PropagationLayer`] (its headers and
//! deadline become the current [`RequestContext`]), is counted by
//! [`metrics::GrpcMetricsLayer`], authenticated and authorized by
//! [`auth::AuthLayer`] (which makes the verified identity part of the
//! context), refused by [`limits::InFlightLimitLayer`]
//! if the server is full, and reaches its handler; the response body is
//! watched by [`drain::DrainLayer`] so shutdown can end it cleanly. Calls the
//! handler makes through a [`client::channel`] carry the same context on,
//! each in a client span whose context they carry as `traceparent`.

pub mod admin;
pub mod auth;
pub mod body;
pub mod bounded_status;
pub mod client;
pub mod config;
pub mod config_error;
pub mod connections;
pub mod drain;
pub mod duration;
pub mod grpc_timeout;
pub mod grpc_web;
pub mod health;
pub mod heap;
pub mod ident;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod main_support;
pub mod metrics;
pub mod paging;
pub mod profiling;
pub mod propagation;
pub mod request_context;
pub mod request_frames;
pub mod retry_after;
pub mod serve_error;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod tls;
pub mod trace;

pub use config::{ConfigError, LogConfig, ServerConfig, ServiceConfig};
pub use drain::Drain;
pub use request_context::RequestContext;
pub use server::{Listeners, ServeError, ServiceHost, StartupError};
