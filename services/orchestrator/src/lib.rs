//! The orchestrator service: runs agents by looping over the LLM gateway and
//! the tool runner, and streams their progress to clients.
//!
//! The service owns runs, their events and checkpoints, agent profiles and
//! sessions.
//!
//! # Layout
//!
//! ```text
//! service ──▶ validate          the request alone (INVALID_ARGUMENT)
//!    │   └──▶ service::start    profile, session, admission, create the
//!    │             │            run (QUEUED) in a task the call awaits
//!    │             └──▶ admission   a place: instance cap, tenant share,
//!    │                              fair queue across tenants
//!    ▼
//! engine ──▶ drive  (one task per run: wait for its place, the
//!    │               loop over steps, deadlines, cancel, the run's end)
//!    │         └──▶ step   (GenerateStream, the tool calls, checkpoint)
//!    │                └──▶ peers  (LLM gateway, tool runner)
//!    ├──▶ active   (a run's live event buffer: numbers, broadcast, pending)
//!    ├──▶ persist  (one transaction per step; the run's end, retried)
//!    ├──▶ follow   (StreamRun/Run: stored events, then the live ones)
//!    ├──▶ audit_events, metrics
//!    └──▶ maintain (claims renewed, orphaned runs resumed)
//! store  (runs, events, checkpoints, sessions; store::row maps them;
//!         store::outbox: the run callbacks to deliver)
//! callbacks ──▶ target (StartRun's check), payload (stored with a step
//!               or end), deliver (one task: claim, sign, POST, retry)
//! memory ──▶ fulltext (long-term notes per tenant: remember, recall by
//!            full text, forget, prune; SQL in store::memory), query
//! ```
//!
//! # Data flow
//!
//! * `service` answers every RPC. `StartRun`/`Run` go through
//!   `validate` (every field violation in one BadRequest), then
//!   `service::start`: the agent profile and the session must exist, this
//!   instance must have room (RESOURCE_EXHAUSTED otherwise), the session
//!   must have no run in progress, and the run is admitted through its
//!   instance's admission (`admission`: a place held or a turn in a
//!   queue served fairly across tenants, RESOURCE_EXHAUSTED when the
//!   instance's, the tenant's or the profile's queue is full). The run is
//!   stored QUEUED (or the run its idempotency key names is returned),
//!   audited (RUN_STARTED) and handed to the `engine`.
//! * The engine drives each run in a task of its own once it holds its
//!   place. The loop over steps is the run's
//!   strategy, separate from what one step does — `GenerateStream` on the
//!   gateway (text relayed live as `token_delta` events), `ExecuteToolStream`
//!   on the tool runner for each tool call (in parallel; what a tool
//!   reports while it runs becomes `progress` events naming the call), and
//!   one transaction in the `store` (the step's events, the run row, the
//!   checkpoint) — so
//!   another strategy can drive the same steps differently.
//! * Every event is numbered in the run's live buffer and broadcast at once;
//!   `StreamRun`/`Run` followers replay stored events, then tail the live
//!   ones, with no gap or duplicate; a client that leaves does not stop the
//!   run. A run started by `Run` ends at its caller's deadline
//!   (`grpc-timeout`), DEADLINE_EXCEEDED.
//! * Identity: a run belongs to the verified identity that started it (its
//!   tenant; in the embedded mode the tenant header's label), which is
//!   stored with the run and acted for on every call the run makes to the
//!   gateway and the tool runner (this service's credential plus the end
//!   user's identity headers), also after a resume. Reads see only the
//!   caller's tenant (another tenant's run is NOT_FOUND) unless the caller
//!   authenticated as `admin`; agents, and the tools offered to the model,
//!   are bounded by the end user's allow-lists.
//! * Every instance claims the runs it drives for a lease it keeps renewing;
//!   an unfinished run whose lease ran out (its instance died) is claimed by
//!   another instance and resumed from its last checkpoint. Replicas on one
//!   PostgreSQL database cooperate (docs/scale-out.md): a follower on any
//!   replica is served live by the one driving the run, a cancel recorded
//!   on any replica reaches the driver at once (NOTIFY), and a replica
//!   shutting down hands its runs over at their next checkpoint.
//! * Run callbacks (`callbacks`, docs/callbacks.md): a run started with a
//!   `callback` has its end (or every stored step) POSTed to the client's
//!   URL, signed with its tenant's secret (HMAC-SHA256), the row stored in
//!   the step's or end's transaction (an outbox) and delivered by a task
//!   on any replica, retried with backoff, each outcome audited
//!   (RUN_CALLBACK). Destinations pass the outbound-URL guard
//!   (`agentmesh-egress`) at StartRun and again at each delivery.
//! * Long-term memory (`memory`): notes per tenant (and optionally per
//!   agent) kept in this database, redacted before they are stored, and
//!   recalled by full-text search (FTS5 on SQLite, `tsvector` on
//!   PostgreSQL), behind the `MemoryIndex` trait; not used by runs yet.
//! * Health: ready (SERVING) only while the LLM gateway, the tool runner
//!   (their own health) and the database answer; the audit service is
//!   reported but optional (events are spooled while it is away).
//! * Audit events: RUN_STARTED when StartRun/Run creates a run; exactly one
//!   of RUN_FINISHED, RUN_FAILED or RUN_CANCELLED once the run's end is
//!   stored, by the instance that stored it; ERROR for store failures
//!   (CONFIG_LOADED at start).
//! * Metrics (`metrics`): runs started, active, queued and finished by
//!   state, run and step durations, by agent profile; the calls to the peers
//!   are counted in the kit's `grpc_client_*` metrics; admission gauges by
//!   configured tenant (`agentmesh_admission_*`, others under `other`);
//!   refusals and retries in the shared resilience metrics
//!   (`agentmesh_rate_limited_total`,
//!   `agentmesh_retries_total`).
//!
//! [`serve`] binds the listeners and hands the service to the kit's
//! [`ServiceHost`] (health, reflection, metrics, limits, metadata forwarding,
//! graceful shutdown); start-up opens the database and starts the engine.
//! `main.rs` only calls [`serve`]. The library exposes only [`Config`]
//! (with [`AgentProfile`], [`CallbacksConfig`], [`MemoryConfig`] and
//! [`AuditConfig`]), [`serve`],
//! [`serve_with_listeners`], [`SERVICE`] and [`DEFAULT_PORT`].

mod admission;
mod callbacks;
mod config;
mod engine;
mod memory;
mod metrics;
mod retention;
mod service;
mod store;
mod validate;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_audit_client::{AuditClient, without_password};
use agentmesh_kit::auth::{Scope, ScopeTable};
use agentmesh_kit::client::Clients;
use agentmesh_kit::health::DependencyCheck;
use agentmesh_kit::{Listeners, ServeError, ServiceHost, StartupError};
use agentmesh_proto::orchestrator::v1::orchestrator_service_server::OrchestratorServiceServer;
use agentmesh_storage::LazyDatabase;
use tokio::task::JoinHandle;

pub use agentmesh_audit_client::AuditConfig;
pub use config::{
    AgentProfile, CallbacksConfig, Config, EvaluatorSettings, MemoryConfig, MemoryProfile,
    MemoryScope, PlanSettings, PromptSettings, RetentionConfig, RouterSettings, Strategy,
    WorkerSettings,
};
use engine::Engine;

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "orchestrator";
/// The scope each RPC needs (`agentmesh auth scopes` prints every
/// service's table). A new RPC must be added here: the access matrix test
/// fails for a method no table lists.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "agentmesh.orchestrator.v1.OrchestratorService",
    methods: &[
        ("StartRun", Scope::RunsWrite),
        ("StreamRun", Scope::RunsRead),
        ("Run", Scope::RunsWrite),
        ("GetRun", Scope::RunsRead),
        ("ListRuns", Scope::RunsRead),
        ("CancelRun", Scope::RunsWrite),
        ("ListAgents", Scope::AgentsRead),
        ("GetAgent", Scope::AgentsRead),
    ],
};

/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50051;

/// Serves on the configured ports until `shutdown` resolves, then drains.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config.server).await?;
    serve_with_listeners(config, listeners, shutdown).await
}

/// Serves on listeners bound by the caller (tests bind port 0).
/// Kept whole: start-up and shutdown of the service and its background
/// tasks, in order, read best in one place.
pub async fn serve_with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let mut host = ServiceHost::for_config(&*config, &[SCOPES])?;
    let mut effective = (*config).clone();
    effective.storage.url = effective.storage.url.as_deref().map(without_password);
    let audit = agentmesh_audit_client::start_service::<Config>(&config.audit, &host, &effective)?;
    let callbacks = callbacks::Callbacks::new(
        &config.callbacks,
        audit.clone(),
        metrics::CallbackMetrics::new(host.metrics().registry())?,
    )
    .map_err(|problem| {
        ServeError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid setting `{SERVICE}.{problem}`"),
        ))
    })?;
    let startup = Startup {
        callbacks: Arc::new(callbacks),
        run_metrics: metrics::RunMetrics::new(
            host.metrics().registry(),
            config.agents.keys().map(String::as_str),
        )?,
        clients: host.clients().clone(),
        reporter: ResilienceReporter::new(audit.clone(), host.metrics().registry()),
        registry: host.metrics().registry().clone(),
        database: LazyDatabase::new(config.storage.clone(), SERVICE)
            .with_migrations(&store::MIGRATIONS),
        engine: Arc::default(),
        maintenance: OnceLock::new(),
        drain: host.drain(),
        audit,
        config,
    };
    let limit = startup.config.server.max_message_bytes;
    host.add_service(
        OrchestratorServiceServer::new(
            service::OrchestratorServiceImpl::new(
                Arc::clone(&startup.config),
                Arc::clone(&startup.engine),
            )
            .with_access(Arc::clone(host.access())),
        )
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
    );
    // A run outlives the replica following it: at shutdown its followers
    // end at once (UNAVAILABLE), to resume on another replica from their
    // last sequence, while the runs are handed over.
    host.end_on_drain("/agentmesh.orchestrator.v1.OrchestratorService/StreamRun")
        .end_on_drain("/agentmesh.orchestrator.v1.OrchestratorService/Run");
    // Ready only while both peers of a run and the database are; audit
    // events are spooled meanwhile, so the audit service is optional.
    host.add_check(DependencyCheck::grpc_peer(
        "llm-gateway",
        &startup.config.llm_gateway_url,
        true,
    ))
    .add_check(DependencyCheck::grpc_peer(
        "tool-runner",
        &startup.config.tool_runner_url,
        true,
    ))
    .add_check(startup.database.health_check())
    .add_check(startup.audit.health_check());
    let result = {
        let startup = &startup;
        host.serve(listeners, || startup.open(), shutdown).await
    };
    startup.close().await;
    result
}

/// What start-up needs to open the database and start the engine, and what
/// it leaves for the drain to close.
struct Startup {
    config: Arc<Config>,
    audit: AuditClient,
    run_metrics: metrics::RunMetrics,
    clients: Clients,
    reporter: ResilienceReporter,
    /// Where admission's metrics go (registered once the engine starts).
    registry: agentmesh_kit::metrics::prometheus::Registry,
    database: LazyDatabase,
    /// Set once the database is open; the handlers answer UNAVAILABLE until.
    engine: Arc<OnceLock<Arc<Engine>>>,
    /// The tasks renewing claims and resuming orphaned runs, listening to
    /// the other replicas, and handing runs over at shutdown.
    maintenance: OnceLock<Background>,
    /// The shutdown's phases (the hand-over starts when draining does).
    drain: agentmesh_kit::drain::Drain,
    /// Run callbacks (checked at StartRun, delivered by a task).
    callbacks: Arc<callbacks::Callbacks>,
}

/// How long after draining begins the runs still in a step are released
/// where they are: the grace period less the drain delay and the margin the
/// server keeps to end its streams (a quarter of the grace period, at most
/// 2 s).
fn until_forced(server: &agentmesh_kit::ServerConfig) -> std::time::Duration {
    let margin = (server.grace_period / 4).min(std::time::Duration::from_secs(2));
    server
        .grace_period
        .saturating_sub(server.drain_delay)
        .saturating_sub(margin)
}

/// The engine's background tasks.
struct Background {
    maintain: JoinHandle<()>,
    listen: JoinHandle<()>,
    retention: JoinHandle<()>,
    hand_over: JoinHandle<()>,
    /// Delivers run callbacks from the outbox.
    deliver: JoinHandle<()>,
    /// Deletes aged and surplus long-term memory notes.
    prune_memory: JoinHandle<()>,
}

impl Startup {
    /// After the server stopped: stops the background tasks, gives up this
    /// replica's callback claims, lets the hand-over finish (bounded),
    /// closes the database and flushes the audit queue.
    async fn close(&self) {
        if let Some(tasks) = self.maintenance.get() {
            tasks.maintain.abort();
            tasks.listen.abort();
            tasks.retention.abort();
            tasks.deliver.abort();
            tasks.prune_memory.abort();
        }
        if let Some(engine) = self.engine.get() {
            // Attempts cut short are due again at once, here or elsewhere.
            if let Err(err) = engine
                .store()
                .release_callback_claims(Some(engine.owner()))
                .await
            {
                tracing::warn!(error = %err, "cannot release this replica's callback claims; they are due again once their lease runs out");
            }
        }
        if let Some(tasks) = self.maintenance.get()
            && !tasks.hand_over.is_finished()
        {
            // The server may stop before the runs reach their checkpoints (no
            // call open): the hand-over goes on, bounded by the grace period.
            let hand_over = tasks.hand_over.abort_handle();
            let wait = async {
                while !hand_over.is_finished() {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            };
            let limit = self.config.server.grace_period + std::time::Duration::from_secs(2);
            if tokio::time::timeout(limit, wait).await.is_err() {
                tracing::warn!(
                    "runs still being handed over at exit; they resume once their claim runs out"
                );
            }
        }
        self.database.close().await;
        // The drain is over: send what is queued, or spool it. (Runs still
        // being driven record their end in the spool.)
        self.audit.shutdown().await;
    }

    /// Opens the database, then starts the engine and its maintenance task
    /// (once; start-up is retried until the database opens).
    async fn open(&self) -> Result<(), StartupError> {
        self.database.open().await.map_err(StartupError::from)?;
        if self.engine.get().is_none() {
            let db = self
                .database
                .get()
                .cloned()
                .ok_or_else(|| StartupError::from("the database did not open"))?;
            let started = Engine::new(
                Arc::clone(&self.config),
                store::Store::new(db, self.config.storage.group_commit),
                self.audit.clone(),
                self.run_metrics.clone(),
                &self.clients,
                admission::Admission::new(
                    &self.config,
                    Some(&self.registry),
                    self.reporter.clone(),
                ),
                Arc::clone(&self.callbacks),
            )
            .map_err(|err| StartupError::from(err.to_string()))?;
            let _ = self.engine.set(Arc::clone(&started));
            let _ = self.maintenance.set(Background {
                maintain: tokio::spawn(engine::maintain(
                    Arc::clone(&started),
                    Arc::clone(&self.config),
                )),
                listen: tokio::spawn(engine::listen(Arc::clone(&started))),
                retention: tokio::spawn(retention::run(
                    started.store().clone(),
                    self.config.retention.clone(),
                    self.run_metrics.deleted(),
                )),
                prune_memory: tokio::spawn(memory::prune_periodically(
                    started.memory(),
                    memory::Retention::of(&self.config.memory),
                    self.config.memory.prune_interval,
                )),
                deliver: tokio::spawn(callbacks::deliver(
                    Arc::clone(&self.callbacks),
                    started.store().clone(),
                    started.owner().to_owned(),
                )),
                hand_over: tokio::spawn(engine::hand_over_at_shutdown(
                    started,
                    self.drain.clone(),
                    until_forced(&self.config.server),
                )),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_settings_are_checked() {
        let mut config = Config::default();
        config.audit.url = "ftp://audit".into();
        let err = agentmesh_kit::config::validate(&config).unwrap_err();
        assert_eq!(err.setting, "orchestrator.audit.url");
    }
}
