//! Identity and access on the wire: the server layer that authenticates and
//! authorizes every call, and the credential a service presents to its
//! peers. The rules themselves are `agentmesh_auth`'s.
//!
//! # Data flow of a call
//!
//! [`AuthLayer`] sits after the request context, the span and the gRPC
//! metrics (so a refusal is traced and counted like any other answer) and
//! before load shedding (so unauthenticated floods cost no place):
//!
//! 1. the [`Policy`] says what the path requires; health checks (and
//!    reflection, unless configured otherwise) pass untouched;
//! 2. the [`Authenticator`] verifies the credential (the bearer, or the
//!    client certificate the TLS listener verified, from the connection's
//!    [`TlsPeer`](crate::tls::TlsPeer)): UNAUTHENTICATED,
//!    PERMISSION_DENIED (identity headers from a non-service caller) or
//!    RESOURCE_EXHAUSTED (a peer over its failure budget) on refusal;
//! 3. the method's scope is checked: PERMISSION_DENIED naming it;
//! 4. the verified identity replaces the call's `x-agentmesh-*` headers, so
//!    the [`RequestContext`] the handler sees, and every call it makes,
//!    carries the verified identity and never one the caller wrote;
//!    handlers read it with [`RequestContext::identity`];
//! 5. every refusal, and a credential's first success in an interval, goes
//!    to the [`DecisionLog`] (the audit trail) and to
//!    `agentmesh_auth_decisions_total{result,reason}`.

pub mod credential;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agentmesh_auth::decision::{Decision, DecisionKind, DecisionLog, DecisionSink};
use agentmesh_auth::{
    AuthConfig, Authenticator, CertificateNames, Mechanism, Peer, Policy, Refusal, RefusalCode,
    Requirement,
};
use http::{Request, Response};
use tonic::body::Body;
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::request_context::{CURRENT, RequestContext};

pub use agentmesh_auth::identity::FORWARDED as FORWARDED_IDENTITY;
pub use agentmesh_auth::{Identity, Scope, ScopeTable};
pub use credential::ServiceCredential;

/// Decision sinks are set after the host is built (the audit producer needs
/// the host's metrics); until then, and without one, decisions go nowhere.
#[derive(Debug, Default)]
struct LateSink(OnceLock<Arc<dyn DecisionSink>>);

impl DecisionSink for LateSink {
    fn record(&self, decision: Decision) {
        if let Some(sink) = self.0.get() {
            sink.record(decision);
        }
    }
}

/// `agentmesh_auth_decisions_total`.
#[derive(Debug, Clone)]
struct AuthMetrics {
    decisions: prometheus::IntCounterVec,
    allowed: prometheus::IntCounter,
}

impl AuthMetrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let decisions = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "agentmesh_auth_decisions_total",
                "Authentication and authorization decisions: result is allowed or refused; reason is ok, missing, malformed, unknown_key, unknown_certificate, wrong_key, expired, revoked, method_off, invalid_token, forwarded_identity_from_non_service, malformed_forwarded_identity, too_many_failures, missing_scope, or (refused by a handler's allow-list) agent_not_allowed, route_not_allowed, tool_not_allowed.",
            ),
            &["result", "reason"],
        )?;
        registry.register(Box::new(decisions.clone()))?;
        let allowed = decisions.with_label_values(&["allowed", "ok"]);
        Ok(Self { decisions, allowed })
    }
}

/// What the auth layer of one service needs, shared by its calls.
#[derive(Debug)]
pub struct AccessControl {
    authenticator: Authenticator,
    policy: Policy,
    log: Arc<DecisionLog>,
    sink: Arc<LateSink>,
    metrics: Option<AuthMetrics>,
    config: AuthConfig,
}

/// The auth settings could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthSetupError(String);

impl AccessControl {
    /// Access control as `config` says, over the services of `tables`.
    pub fn new(config: &AuthConfig, tables: &[ScopeTable]) -> Result<Self, AuthSetupError> {
        let authenticator =
            Authenticator::from_config(config).map_err(|err| AuthSetupError(err.to_string()))?;
        let sink = Arc::new(LateSink::default());
        Ok(Self {
            authenticator,
            policy: Policy::new(tables.iter().copied(), config.reflection_exempt),
            log: Arc::new(DecisionLog::new(sink.clone(), config.audit_successes)),
            sink,
            metrics: None,
            config: config.clone(),
        })
    }

    /// Access control by `authenticator` over the services of `tables`,
    /// with the rest of `config` (tests, and hosts that build their
    /// authenticator themselves).
    pub fn with_authenticator(
        authenticator: Authenticator,
        tables: &[ScopeTable],
        config: &AuthConfig,
    ) -> Self {
        let sink = Arc::new(LateSink::default());
        Self {
            authenticator,
            policy: Policy::new(tables.iter().copied(), config.reflection_exempt),
            log: Arc::new(DecisionLog::new(sink.clone(), config.audit_successes)),
            sink,
            metrics: None,
            config: config.clone(),
        }
    }

    /// No access control: the embedded single-user mode (and tests).
    pub fn none() -> Self {
        let sink = Arc::new(LateSink::default());
        let config = AuthConfig::default();
        Self {
            authenticator: Authenticator::none(),
            policy: Policy::new([], config.reflection_exempt),
            log: Arc::new(DecisionLog::new(sink.clone(), config.audit_successes)),
            sink,
            metrics: None,
            config,
        }
    }

    /// Counts decisions in `registry`.
    pub fn counted(mut self, registry: &prometheus::Registry) -> prometheus::Result<Self> {
        self.metrics = Some(AuthMetrics::register(registry)?);
        Ok(self)
    }

    /// Sends decisions to `sink` (once; later calls are ignored).
    pub fn set_sink(&self, sink: Arc<dyn DecisionSink>) {
        let _ = self.sink.0.set(sink);
    }

    /// Whether nobody is asked (the embedded mode).
    pub fn is_none(&self) -> bool {
        self.authenticator.is_none()
    }

    /// The policy, for listings of scopes.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Starts the background work: reloading the keys file, flushing the
    /// aggregated decisions. The tasks end when the handles are aborted.
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = self.authenticator.watch(self.config.reload_interval);
        tasks.push(self.log.spawn_flush(self.config.audit_interval));
        tasks
    }

    /// The decision for a call to `path` with `headers` from `peer` (with
    /// the names of its verified client certificate, if any): the identity,
    /// or the status to answer with.
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<SocketAddr>,
        certificate: Option<&CertificateNames>,
    ) -> Result<Option<Identity>, tonic::Status> {
        let requirement = self.policy.requirement(path);
        if requirement == Requirement::Exempt {
            return Ok(None);
        }
        let identity = self
            .authenticator
            .authenticate(
                headers,
                Peer {
                    ip: peer.map(|peer| peer.ip()),
                    certificate,
                },
            )
            .map_err(|refusal| self.refuse(&refusal, path, peer))?;
        if let Requirement::Scope(scope) = requirement
            && !identity.allows(scope)
        {
            return Err(self.deny(&identity, scope, path, peer));
        }
        if let Some(metrics) = &self.metrics {
            metrics.allowed.inc();
        }
        if identity.mechanism != Mechanism::None {
            let credential = identity
                .actor
                .as_ref()
                .map_or(&identity.credential_id, |actor| &actor.credential_id);
            self.log.allowed(
                || {
                    decision(
                        DecisionKind::Authentication,
                        true,
                        "ok",
                        &identity,
                        path,
                        peer,
                    )
                },
                credential,
            );
        }
        Ok(Some(identity))
    }

    /// Records a refusal a handler made where the scope tables cannot see:
    /// a resource (agent, route, tool) outside the identity's allow-lists.
    /// Counted as `agentmesh_auth_decisions_total{result="refused",reason}`
    /// and audited as an AUTHORIZATION denial naming the resource.
    pub fn refuse_resource(
        &self,
        identity: &Identity,
        method: &str,
        reason: &'static str,
        resource: &str,
        peer: Option<SocketAddr>,
    ) {
        self.count(reason);
        let mut denial = decision(
            DecisionKind::Authorization,
            false,
            reason,
            identity,
            method,
            peer,
        );
        denial.resource = resource.to_owned();
        self.log.refused(denial);
    }

    fn count(&self, reason: &str) {
        if let Some(metrics) = &self.metrics {
            metrics
                .decisions
                .with_label_values(&["refused", reason])
                .inc();
        }
    }

    fn refuse(&self, refusal: &Refusal, path: &str, peer: Option<SocketAddr>) -> tonic::Status {
        self.count(refusal.reason);
        self.log.refused(Decision {
            kind: match refusal.code {
                RefusalCode::PermissionDenied => DecisionKind::Authorization,
                _ => DecisionKind::Authentication,
            },
            allowed: false,
            method: path.to_owned(),
            mechanism: refusal.mechanism,
            credential_id: refusal.credential_id.clone(),
            peer: peer.map(|peer| peer.ip().to_string()).unwrap_or_default(),
            reason: refusal.reason,
            permission: String::new(),
            resource: String::new(),
            tenant: String::new(),
            subject: String::new(),
            actor: String::new(),
            count: 1,
        });
        match refusal.code {
            RefusalCode::Unauthenticated => tonic::Status::unauthenticated(refusal.message),
            RefusalCode::PermissionDenied => tonic::Status::permission_denied(refusal.message),
            RefusalCode::TooManyFailures { retry_after } => {
                let mut details = ErrorDetails::new();
                details.set_retry_info(Some(retry_after.max(Duration::from_secs(1))));
                tonic::Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    refusal.message,
                    details,
                )
            }
        }
    }

    fn deny(
        &self,
        identity: &Identity,
        scope: Scope,
        path: &str,
        peer: Option<SocketAddr>,
    ) -> tonic::Status {
        self.count("missing_scope");
        let mut denial = decision(
            DecisionKind::Authorization,
            false,
            "missing_scope",
            identity,
            path,
            peer,
        );
        denial.permission = scope.as_str().to_owned();
        self.log.refused(denial);
        tonic::Status::permission_denied(format!(
            "this call needs the scope `{scope}`; the credential {} has: {}",
            identity.credential_id,
            if identity.scopes.is_empty() {
                "none".to_owned()
            } else {
                identity.scopes.to_string()
            }
        ))
    }
}

fn decision(
    kind: DecisionKind,
    allowed: bool,
    reason: &'static str,
    identity: &Identity,
    path: &str,
    peer: Option<SocketAddr>,
) -> Decision {
    Decision {
        kind,
        allowed,
        method: path.to_owned(),
        mechanism: identity.mechanism,
        credential_id: identity.credential_id.clone(),
        peer: peer.map(|peer| peer.ip().to_string()).unwrap_or_default(),
        reason,
        permission: String::new(),
        resource: String::new(),
        tenant: identity.tenant.clone(),
        subject: identity.subject.clone(),
        actor: identity
            .actor
            .as_ref()
            .map(|actor| actor.subject.clone())
            .unwrap_or_default(),
        count: 1,
    }
}

/// Checks a call one replica forwarded to another for its caller: the auth
/// layer accepted the forwarding replica's service credential acting for
/// the caller, and that credential's own scopes may allow anything; the
/// end user's own scopes must allow `scope` too. Calls nobody checked
/// (auth off) pass.
pub fn forwarded_caller_allows<T>(
    request: &tonic::Request<T>,
    scope: Scope,
) -> Result<(), tonic::Status> {
    let context = RequestContext::from_request(request);
    match context.as_ref().and_then(RequestContext::identity) {
        Some(identity) if !identity.scopes.allows(scope) => Err(tonic::Status::permission_denied(
            format!("the caller this call was forwarded for lacks the scope {scope}"),
        )),
        _ => Ok(()),
    }
}

/// The peer address tonic put in a request's extensions (a plain TCP or a
/// TLS connection's).
pub fn peer_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<crate::tls::TlsPeer>()
                .and_then(|peer| peer.remote_addr)
        })
}

/// The verified client certificate of a request's TLS connection, if any.
pub fn peer_certificate<B>(request: &Request<B>) -> Option<Arc<crate::tls::ClientCertificate>> {
    request
        .extensions()
        .get::<crate::tls::TlsPeer>()
        .and_then(|peer| peer.certificate.clone())
}

// === impl AuthLayer ===

/// Authenticates and authorizes every call (see the module docs).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    access: Arc<AccessControl>,
}

impl AuthLayer {
    /// The layer over `access`.
    pub fn new(access: Arc<AccessControl>) -> Self {
        Self { access }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            access: Arc::clone(&self.access),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    access: Arc<AccessControl>,
}

impl<S, ReqBody> tower::Service<Request<ReqBody>> for Auth<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        std::future::Ready<Result<Response<Body>, S::Error>>,
        futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        use futures::future::Either;
        let peer = peer_addr(&request);
        let certificate = peer_certificate(&request);
        let identity = match self.access.check(
            request.uri().path(),
            request.headers(),
            peer,
            certificate.as_ref().map(|certificate| &certificate.names),
        ) {
            Ok(Some(identity)) => identity,
            Ok(None) => return Either::Right(Box::pin(self.inner.call(request))),
            Err(status) => return Either::Left(std::future::ready(Ok(status.into_http()))),
        };
        if identity.mechanism != Mechanism::None || identity.actor.is_some() {
            identity.write_headers(request.headers_mut());
        }
        let identity = Arc::new(identity);
        let context = request
            .extensions()
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| RequestContext::from_incoming(request.headers_mut(), Instant::now()))
            .with_identity(Arc::clone(&identity), Some(request.headers()));
        request.extensions_mut().insert(context.clone());
        request.extensions_mut().insert(identity);
        let future = CURRENT.sync_scope(context.clone(), || self.inner.call(request));
        Either::Right(Box::pin(CURRENT.scope(context, future)))
    }
}

#[cfg(test)]
mod tests;
