//! One way to serve every agentmesh service.
//!
//! A service builds a [`ServiceHost`], adds its tonic services, and calls
//! [`ServiceHost::serve`]. The host does all the cross-cutting wiring:
//!
//! ```text
//!  client ─▶ [GrpcWeb] ─▶ Propagation ─▶ ServerTrace ─▶ GrpcMetrics ─▶ Auth ─▶ InFlightLimit ─▶ Drain ─▶ routes
//!            (context,       (the call's   (count,        (who,   (shed load      (end     ├─ the service
//!             request id)     span)         time)          may     at the limit)   streams ├─ grpc.health.v1.Health
//!                                                          they?)                  on      └─ reflection v1 + v1alpha
//!                                                                                  shutdown)
//! ```
//!
//! Both listeners are bound and limited by [`crate::listen`]: a cap on the
//! connections each holds, handshake and idle deadlines
//! ([`crate::connections`], whose `StreamCountLayer` is outermost above).
//! Between GrpcMetrics and Auth, three more guard the edge:
//! [`crate::bounded_status`] cuts every answered status to size,
//! [`crate::grpc_timeout`] checks the caller's `grpc-timeout` and
//! [`crate::request_frames`] the size and framing of request messages.
//!
//! With `[server.grpc_web] enabled` the gRPC listener also accepts HTTP/1.1
//! and the outermost layer, [`crate::grpc_web`], turns gRPC-Web calls into
//! gRPC calls (and answers CORS preflights), so every layer after it
//! treats both protocols alike: the same metrics, auth, limits and drain.
//!
//! With `[server.tls]` the gRPC listener speaks TLS ([`crate::tls`]): the
//! certificate files are reloaded when they change, and a verified client
//! certificate reaches the auth layer with every call of its connection.
//!
//! plus the admin HTTP server (`/metrics`, `/livez`, `/readyz`,
//! `/health/deep` unless `server.deep_health = false`), and the life cycle: health is NOT_SERVING while the
//! service's start-up work runs (retried with backoff until it succeeds),
//! SERVING after while its required dependency checks pass (see
//! [`crate::health`]), and NOT_SERVING again the moment shutdown begins.
//! Shutdown then waits `drain_delay`, stops accepting, ends endless streams,
//! lets other calls finish until the grace period is nearly over, ends what
//! is left cleanly, and returns.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use agentmesh_auth::ScopeTable;

use crate::auth::{AccessControl, AuthLayer, ServiceCredential};
use crate::client::Clients;
use crate::config::{ServerConfig, ServiceConfig};
use crate::connections::StreamCountLayer;
use crate::drain::{Drain, DrainLayer, DrainPhase};
use crate::grpc_web::GrpcWebLayer;
use crate::health::{DependencyCheck, Health, STARTUP};
use crate::limits::InFlightLimitLayer;
pub use crate::listen::Listeners;
use crate::listen::{AbortOnDrop, grpc_server, serve_grpc};
use crate::metrics::{GrpcMetricsLayer, GrpcServerMetrics, KnownMethods, Metrics};
use crate::propagation::PropagationLayer;
pub use crate::serve_error::ServeError;
use crate::tls::{ClientTlsFiles, ReloadingAcceptor};
use crate::trace::ServerTraceLayer;

/// A boxed error from a service's start-up work.
pub type StartupError = Box<dyn std::error::Error + Send + Sync>;

/// Builds and runs one service's servers.
#[derive(Debug)]
pub struct ServiceHost {
    service: &'static str,
    config: ServerConfig,
    routes: RoutesBuilder,
    names: Vec<String>,
    end_on_drain: HashSet<String>,
    checks: Vec<DependencyCheck>,
    metrics: Metrics,
    drain: Drain,
    access: Arc<AccessControl>,
    clients: Clients,
    tls: Option<Arc<ReloadingAcceptor>>,
}

/// Fully-qualified name of the health service.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

impl ServiceHost {
    /// A host for the service called `service` (e.g. `orchestrator`)
    /// without access control: for tests and benchmarks. Services use
    /// [`Self::for_config`], which applies their `auth` settings.
    pub fn new(service: &'static str, config: &ServerConfig) -> Self {
        let metrics = Metrics::new(service);
        let client_tls = ClientTlsFiles::load(&config.client_tls).unwrap_or_else(|err| {
            // `for_config` refuses this at start; here the platform's roots
            // stand in, and `https://` peers with a private CA fail to verify.
            tracing::warn!(%service, error = %err, "client TLS files not loaded");
            ClientTlsFiles::default()
        });
        let clients = Clients::new(metrics.grpc_client().clone(), ServiceCredential::none())
            .with_tls(client_tls);
        Self {
            service,
            config: config.clone(),
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            end_on_drain: HashSet::from([format!("/{HEALTH_SERVICE}/Watch")]),
            checks: Vec::new(),
            metrics,
            drain: Drain::new(),
            access: Arc::new(AccessControl::none()),
            clients,
            tls: None,
        }
    }

    /// The host of a service as its configuration says: its server
    /// settings, and access control over the methods of `tables` by its
    /// `auth` settings (the keys file is read now; the service's own
    /// credential for its peers too).
    pub fn for_config<C: ServiceConfig>(
        config: &C,
        tables: &[ScopeTable],
    ) -> Result<Self, ServeError> {
        let mut host = Self::new(C::SERVICE, config.server());
        let auth = config.auth();
        let setting =
            |err: &dyn std::fmt::Display| ServeError::Auth(format!("{}.{err}", C::SECTION));
        let access = AccessControl::new(auth, tables)
            .map_err(|err| setting(&err))?
            .counted(host.metrics.registry())?;
        let credential = ServiceCredential::from_config(auth).map_err(|err| setting(&err))?;
        let client_tls = ClientTlsFiles::load(&config.server().client_tls)
            .map_err(|err| tls_error(C::SECTION, &err))?;
        host.clients =
            Clients::new(host.metrics.grpc_client().clone(), credential).with_tls(client_tls);
        host.access = Arc::new(access);
        // Read now, so a bad file stops the service before it listens.
        host.tls = config
            .server()
            .tls
            .as_ref()
            .map(|tls| ReloadingAcceptor::load(tls).map(Arc::new))
            .transpose()
            .map_err(|err| tls_error(C::SECTION, &err))?;
        Ok(host)
    }

    /// The service's name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Channels to other services: counted in this service's metrics,
    /// presenting its credential.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The service's access control, to give it a decision sink (the audit
    /// producer).
    pub fn access(&self) -> &Arc<AccessControl> {
        &self.access
    }

    /// Adds a tonic service; its name gets a health status and is listed by
    /// reflection.
    pub fn add_service<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME.to_owned());
        self.routes.add_service(service);
        self
    }

    /// Marks a streaming method (`/pkg.Service/Method`) whose streams never end
    /// by themselves, so they end as soon as a shutdown begins.
    pub fn end_on_drain(&mut self, path: impl Into<String>) -> &mut Self {
        self.end_on_drain.insert(path.into());
        self
    }

    /// Adds a dependency check: run in the background every
    /// `server.health_check_interval`; while a required one fails, health
    /// says NOT_SERVING. Names must differ from each other and from
    /// `startup`.
    pub fn add_check(&mut self, check: DependencyCheck) -> &mut Self {
        check.use_client_tls(self.clients.tls());
        self.checks.push(check);
        self
    }

    /// The service's metrics, for it to register its own.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The shutdown phase, for handlers of long streams.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    ///
    /// `startup` is the service's start-up work (connecting to its database,
    /// say): it runs while health says NOT_SERVING and is retried with backoff
    /// until it succeeds; then health says SERVING, as long as every required
    /// dependency check passes. Spans opened while serving (the calls', the
    /// start-up's) are exported as this service's
    /// ([`crate::telemetry::service_context`]).
    pub async fn serve<Start, StartFuture>(
        self,
        listeners: Listeners,
        startup: Start,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError>
    where
        Start: FnMut() -> StartFuture,
        StartFuture: Future<Output = Result<(), StartupError>>,
    {
        let trace_scope = crate::telemetry::service_context(self.service);
        Box::pin(self.serve_within(listeners, startup, shutdown, trace_scope.clone()))
            .with_context(trace_scope)
            .await
    }

    /// [`Self::serve`], its spans in `trace_scope`: wires health, reflection
    /// and the layers, serves, and drains at shutdown. Kept whole: the
    /// layers' order and the life cycle read best top to bottom.
    async fn serve_within<Start, StartFuture>(
        mut self,
        listeners: Listeners,
        startup: Start,
        shutdown: impl Future<Output = ()>,
        trace_scope: opentelemetry::Context,
    ) -> Result<(), ServeError>
    where
        Start: FnMut() -> StartFuture,
        StartFuture: Future<Output = Result<(), StartupError>>,
    {
        let service = self.service;
        let (grpc_addr, admin_addr) = (listeners.grpc_addr()?, listeners.admin_addr()?);

        let (health, _checks) = self.add_health_and_reflection().await?;
        let _auth_tasks = self.spawn_auth_tasks();
        let methods = Arc::new(KnownMethods::mesh());
        let grpc_metrics = GrpcServerMetrics::register(self.metrics.registry())?;
        let grpc_web = GrpcWebLayer::new(&self.config.grpc_web, self.config.max_message_bytes)
            .map_err(ServeError::from)?;
        let (grpc_listener, admin_listener) = listeners.limited(
            service,
            &self.config.connections,
            grpc_web.enabled(),
            self.metrics.registry(),
        )?;
        let layers = tower::ServiceBuilder::new()
            .layer(StreamCountLayer)
            .layer(grpc_web)
            .layer(PropagationLayer)
            .layer(ServerTraceLayer::new(trace_scope))
            .layer(GrpcMetricsLayer::new(grpc_metrics, methods))
            .layer(crate::bounded_status::edge_layers(
                self.config.max_message_bytes,
            ))
            .layer(AuthLayer::new(Arc::clone(&self.access)))
            .layer(
                InFlightLimitLayer::new(self.config.max_concurrent_requests)
                    .counted(self.metrics.registry())?,
            )
            .layer(DrainLayer::new(
                self.drain.clone(),
                std::mem::take(&mut self.end_on_drain),
            ))
            .into_inner();
        let stop_accepting = CancellationToken::new();
        let router = grpc_server(&self.config)
            .layer(layers)
            .add_routes(std::mem::take(&mut self.routes).routes());
        let (mut server, _tls_tasks) =
            serve_grpc(router, grpc_listener, self.tls()?, stop_accepting.clone());

        let stop_admin = CancellationToken::new();
        let admin = tokio::spawn(crate::admin::serve(
            admin_listener,
            crate::admin::router(self.metrics.clone(), health.clone(), &self.config),
            stop_admin.clone().cancelled_owned(),
        ));
        crate::heap::spawn_trimmer(self.config.heap_trim_interval, stop_admin.clone());
        tracing::info!(%service, grpc = %grpc_addr, admin = %admin_addr, tls = self.config.tls.is_some(), "listening (NOT_SERVING until started)");

        tokio::select! {
            result = &mut server => {
                stop_admin.cancel();
                result?;
                return Ok(());
            }
            () = shutdown => {}
            () = start_up(service, &health, startup) => {}
        }

        let begun = Instant::now();
        health.begin_drain().await;
        let result = self
            .drain_server(server.as_mut(), stop_accepting, begun)
            .await;
        stop_admin.cancel();
        if tokio::time::timeout(Duration::from_secs(1), admin)
            .await
            .is_err()
        {
            tracing::warn!(%service, "admin server did not stop within 1s");
        }
        tracing::info!(%service, took = ?begun.elapsed(), "stopped");
        result.map_err(ServeError::from)
    }

    /// The listener's TLS: as loaded by [`Self::for_config`], or read now
    /// from `server.tls` (hosts made by [`Self::new`]); `None` for plain.
    fn tls(&self) -> Result<Option<Arc<ReloadingAcceptor>>, ServeError> {
        match (&self.tls, &self.config.tls) {
            (Some(tls), _) => Ok(Some(Arc::clone(tls))),
            (None, Some(settings)) => ReloadingAcceptor::load(settings)
                .map(|tls| Some(Arc::new(tls)))
                .map_err(|err| ServeError::Tls(err.to_string())),
            (None, None) => Ok(None),
        }
    }

    /// Starts what keeps identity current while serving: key reloads, the
    /// decision log's flushes and the service credential's re-reads (they
    /// stop when the returned guard is dropped, with `serve`).
    fn spawn_auth_tasks(&self) -> AbortOnDrop {
        let mut tasks = self.access.spawn_background();
        tasks.extend(self.clients.credential().watch(Duration::from_secs(5)));
        AbortOnDrop(tasks)
    }

    /// Adds the health and reflection services to the routes and starts the
    /// dependency checks, which run from now on, start-up or not (the tasks
    /// end when the returned set is dropped, with `serve`).
    async fn add_health_and_reflection(
        &mut self,
    ) -> Result<(Health, tokio::task::JoinSet<()>), ServeError> {
        let (health, health_server) =
            Health::new(self.service, self.names.clone(), self.metrics.registry()).await?;
        self.routes.add_service(health_server);
        let checks = health.spawn_checks(
            std::mem::take(&mut self.checks),
            self.config.health_check_interval,
            self.config.health_check_timeout,
        );
        let (reflection_v1, reflection_v1alpha) = reflection(&self.names)?;
        self.routes.add_service(reflection_v1);
        self.routes.add_service(reflection_v1alpha);
        Ok((health, checks))
    }

    /// Shutdown, health already NOT_SERVING since `begun`: keeps accepting
    /// for `drain_delay`, then stops accepting and lets calls finish; near
    /// the end of the grace period ends the streams still open, and at its
    /// end stops waiting for connections.
    async fn drain_server<Served>(
        &self,
        mut server: std::pin::Pin<&mut Served>,
        stop_accepting: CancellationToken,
        begun: Instant,
    ) -> Result<(), tonic::transport::Error>
    where
        Served: Future<Output = Result<(), tonic::transport::Error>>,
    {
        let service = self.service;
        let grace = self.config.grace_period;
        tracing::info!(%service, grace_period = ?grace, drain_delay = ?self.config.drain_delay, "shutting down: NOT_SERVING");
        let keep_accepting_until = begun + self.config.drain_delay;
        tokio::select! {
            result = &mut server => return result,
            () = tokio::time::sleep_until(keep_accepting_until) => {}
        }
        stop_accepting.cancel();
        self.drain.advance(DrainPhase::Draining);
        // Leave time at the end of the grace period to end what is still
        // open cleanly rather than cut connections.
        let margin = (grace / 4).min(Duration::from_secs(2));
        let force_at = begun + grace.saturating_sub(margin);
        tokio::select! {
            result = &mut server => return result,
            () = tokio::time::sleep_until(force_at) => {}
        }
        tracing::warn!(%service, "grace period nearly over: ending the streams still open");
        self.drain.advance(DrainPhase::Forced);
        match tokio::time::timeout_at(begun + grace, &mut server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(%service, "connections still open at the end of the grace period; closing them");
                Ok(())
            }
        }
    }
}

/// A TLS file error, named within the service's section.
fn tls_error(section: &str, err: &crate::tls::TlsFileError) -> ServeError {
    ServeError::Tls(format!("{section}.{err}"))
}

/// Runs the service's start-up work until it succeeds (NOT_SERVING, retried
/// with backoff), then marks the service started (SERVING once every
/// required dependency is up too) and never returns: serving goes on until
/// shutdown.
async fn start_up<Start, StartFuture>(service: &str, health: &Health, mut startup: Start)
where
    Start: FnMut() -> StartFuture,
    StartFuture: Future<Output = Result<(), StartupError>>,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        match startup().await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(%service, error = %err, retry_in = ?backoff, "start-up failed; staying NOT_SERVING");
                health.record(STARTUP, Err(err.to_string())).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    health.mark_started().await;
    let waiting: Vec<String> = health
        .report()
        .failing_required()
        .map(|component| component.name.clone())
        .collect();
    if !waiting.is_empty() {
        tracing::info!(%service, waiting_for = %waiting.join(", "), "started; NOT_SERVING until the dependencies are up");
    }
    std::future::pending::<()>().await;
}

/// Reflection v1 and v1alpha listing exactly the services this process serves.
fn reflection(
    names: &[String],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(agentmesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(HEALTH_SERVICE)
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in names {
            builder = builder.with_service_name(name.clone());
        }
        builder
    };
    let v1 = builder()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = builder()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}
