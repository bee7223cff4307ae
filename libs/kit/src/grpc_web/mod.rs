//! gRPC-Web on the gRPC listener: browsers (and other HTTP/1.1 clients)
//! call a service's RPCs with the gRPC-Web protocol, on the same port as
//! gRPC, through the same layers.
//!
//! ```text
//!  StreamCount ─▶ GrpcWeb ─┬─ preflight (OPTIONS + Origin + Access-Control-Request-Method)
//!                          │    origin allowed ─▶ answered by tower-http's Cors (allow headers, max age)
//!                          │    otherwise      ─▶ 403, no Access-Control-* header
//!                          └─ any other call ─▶ [Cors: allow-origin, expose grpc-status… when the
//!                                                 origin is allowed] ─▶ tonic-web translation
//!                                                 (gRPC-Web ⇄ gRPC; plain gRPC on HTTP/2 passes;
//!                                                  other HTTP/1.1 requests get 400)
//!                                              ─▶ Propagation ─▶ … ─▶ Auth ─▶ … ─▶ routes
//! ```
//!
//! The translation sits outside every other layer but the connection
//! count, so propagation, tracing, metrics, auth, limits and the drain see
//! a gRPC-Web call as the gRPC call it becomes: a call without a
//! credential is refused by auth exactly as over gRPC (the status reaches
//! the browser in the `grpc-status` header, which CORS exposes).
//!
//! Over HTTP/1.1 a gRPC-Web request's body is read before the call goes
//! on ([`whole_body`]), so that a call refused at once still gets its
//! status to the client rather than a closed connection.
//!
//! CORS is closed unless configured ([`GrpcWebConfig`]). Without an
//! `Origin` header (non-browser clients, same-origin pages) CORS does not
//! apply and nothing is added. With gRPC-Web off (the default of every
//! service but the orchestrator) the layer passes every call straight
//! through and the listener speaks HTTP/2 only.

mod settings;
mod whole_body;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use http::{Method, Request, Response, StatusCode, header};
use tonic::body::Body;
use tower::Layer as _;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config_error::ConfigError;
use settings::Origins;
pub use settings::{ALLOWED_HEADERS, EXPOSED_HEADERS, GrpcWebConfig};

/// The layer (see the module doc): pass-through when gRPC-Web is off.
#[derive(Debug, Clone)]
pub struct GrpcWebLayer {
    web: Option<Arc<Web>>,
}

/// What an enabled layer holds.
#[derive(Debug)]
struct Web {
    origins: Origins,
    cors: CorsLayer,
    /// How much of an HTTP/1.1 request body is read before the call goes
    /// on (see [`whole_body`]).
    body_limit: usize,
}

impl GrpcWebLayer {
    /// The layer `config` describes, for request messages of up to
    /// `max_message_bytes`; an invalid setting is named.
    pub fn new(config: &GrpcWebConfig, max_message_bytes: usize) -> Result<Self, ConfigError> {
        if !config.enabled {
            return Ok(Self::off());
        }
        let origins = config.origins()?;
        let allow_origin = match &origins {
            Origins::Any => AllowOrigin::any(),
            Origins::Exactly(list) => AllowOrigin::list(list.iter().cloned()),
            // Never consulted: a closed layer answers no request with CORS.
            Origins::Closed => AllowOrigin::list([]),
        };
        let cors = CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::POST])
            .allow_headers(config.allowed_headers()?)
            .expose_headers(EXPOSED_HEADERS.map(header::HeaderName::from_static))
            .max_age(config.max_age);
        Ok(Self {
            web: Some(Arc::new(Web {
                origins,
                cors,
                body_limit: whole_body::limit_for(max_message_bytes),
            })),
        })
    }

    /// A layer that passes every call through (gRPC-Web off).
    pub fn off() -> Self {
        Self { web: None }
    }

    /// Whether gRPC-Web is on (the listener must then accept HTTP/1.1).
    pub fn enabled(&self) -> bool {
        self.web.is_some()
    }
}

impl<S> tower::Layer<S> for GrpcWebLayer {
    type Service = GrpcWeb<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWeb {
            inner,
            web: self.web.clone(),
        }
    }
}

/// The service made by [`GrpcWebLayer`].
#[derive(Debug, Clone)]
pub struct GrpcWeb<S> {
    inner: S,
    web: Option<Arc<Web>>,
}

/// How an enabled layer answers one request.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// A preflight from an origin CORS does not allow: refused.
    RefusePreflight,
    /// From an allowed origin: through CORS, then the translation.
    Cors,
    /// No CORS (no `Origin`, or one not allowed): the translation alone;
    /// a browser will not let the page read the answer of a foreign origin.
    Plain,
}

impl Web {
    fn route<B>(&self, request: &Request<B>) -> Route {
        let Some(origin) = request.headers().get(header::ORIGIN) else {
            return Route::Plain;
        };
        let allowed = self.origins.allows(origin);
        let preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (allowed, preflight) {
            (true, _) => Route::Cors,
            (false, true) => Route::RefusePreflight,
            (false, false) => Route::Plain,
        }
    }
}

impl<S> tower::Service<Request<Body>> for GrpcWeb<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(web) = &self.web else {
            return Either::Left(self.inner.call(request));
        };
        // The inner service polled ready is the one called; a fresh clone
        // stays for the next call.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let translated = tonic_web::GrpcWebLayer::new().layer(inner);
        let read_first = whole_body::wanted(&request).then_some(web.body_limit);
        match web.route(&request) {
            Route::RefusePreflight => Either::Right(Box::pin(async {
                let mut refused = Response::new(Body::empty());
                *refused.status_mut() = StatusCode::FORBIDDEN;
                Ok(refused)
            })),
            Route::Cors => Either::Right(Box::pin(call_after_read(
                web.cors.layer(translated),
                request,
                read_first,
            ))),
            Route::Plain => {
                Either::Right(Box::pin(call_after_read(translated, request, read_first)))
            }
        }
    }
}

/// Calls `service` with `request`, its body read first when `read_first`
/// gives a limit.
async fn call_after_read<S>(
    mut service: S,
    request: Request<Body>,
    read_first: Option<usize>,
) -> Result<S::Response, S::Error>
where
    S: tower::Service<Request<Body>>,
{
    let request = match read_first {
        Some(limit) => whole_body::read_first(request, limit).await,
        None => request,
    };
    service.call(request).await
}

#[cfg(test)]
mod tests;
