//! The orchestrator service: runs agents by looping over the LLM gateway and
//! the tool runner, and streams their progress to clients.
//!
//! The service owns runs, their events and checkpoints, agent profiles and
//! sessions. Data flows like this:
//!
//! * [`service`] validates each call. `StartRun`/`Run` admit the run
//!   through its tenant's and its profile's bulkheads ([`admission`]:
//!   RESOURCE_EXHAUSTED when their queues are full), store it (QUEUED) and
//!   hand it to the [`engine`], which drives it in a task of its own once it
//!   holds its places and a slot of this instance: `GenerateStream` on the gateway (text relayed live as
//!   `token_delta` events), `ExecuteTool` on the tool runner for each tool
//!   call (in parallel), and one transaction per step in the [`store`]
//!   (the step's events, the run row, the checkpoint).
//! * `StreamRun`/`Run` followers replay stored events, then tail the live
//!   ones; a client that leaves does not stop the run. A run started by
//!   `Run` ends at its caller's deadline (`grpc-timeout`), DEADLINE_EXCEEDED.
//! * Every instance claims the runs it drives for a lease it keeps renewing;
//!   an unfinished run whose lease ran out (its instance died) is claimed by
//!   another instance and resumed from its last checkpoint.
//! * Health: ready (SERVING) only while the LLM gateway, the tool runner
//!   (their own health) and the database answer; the audit service is
//!   reported but optional (events are spooled while it is away).
//! * Audit events: RUN_STARTED when StartRun/Run creates a run; exactly one
//!   of RUN_FINISHED, RUN_FAILED or RUN_CANCELLED once the run's end is
//!   stored, by the instance that stored it; ERROR for store failures
//!   (CONFIG_LOADED at start).
//! * Metrics ([`metrics`]): runs started, active, queued and finished by
//!   state, run and step durations, by agent profile; the calls to the peers
//!   are counted in the kit's `grpc_client_*` metrics; bulkhead gauges,
//!   refusals and retries in the shared resilience metrics
//!   (`agentmesh_bulkhead_*`, `agentmesh_rate_limited_total`,
//!   `agentmesh_retries_total`).
//!
//! [`serve`] binds the listeners and hands the service to the kit's
//! [`ServiceHost`] (health, reflection, metrics, limits, metadata forwarding,
//! graceful shutdown); `main.rs` only calls it.

pub mod admission;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_audit_client::without_password;
use agentmesh_kit::health::DependencyCheck;
use agentmesh_kit::{Listeners, ServeError, ServiceHost, StartupError};
use agentmesh_proto::orchestrator::v1::orchestrator_service_server::OrchestratorServiceServer;
use agentmesh_storage::LazyDatabase;

pub use agentmesh_audit_client::AuditConfig;
pub use config::{AgentProfile, Config};
use engine::Engine;

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "orchestrator";
/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50051;

/// Serves on the configured ports until `shutdown` resolves, then drains.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config.server).await?;
    serve_with_listeners(config, listeners, shutdown).await
}

/// Serves on listeners bound by the caller (tests bind port 0).
pub async fn serve_with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let mut host = ServiceHost::new(SERVICE, &config.server);
    let mut effective = (*config).clone();
    effective.storage.url = effective.storage.url.as_deref().map(without_password);
    let audit = agentmesh_audit_client::start_service::<Config>(
        &config.audit,
        SERVICE,
        host.metrics(),
        &effective,
    )?;
    let run_metrics = metrics::RunMetrics::new(
        host.metrics().registry(),
        config.agents.keys().map(String::as_str),
    )?;
    let client_metrics = host.metrics().grpc_client().clone();
    let reporter = ResilienceReporter::new(audit.clone(), host.metrics().registry());
    let limit = config.server.max_message_bytes;
    let engine: Arc<OnceLock<Arc<Engine>>> = Arc::default();
    host.add_service(
        OrchestratorServiceServer::new(service::OrchestratorServiceImpl::new(
            Arc::clone(&config),
            Arc::clone(&engine),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
    );
    let database =
        LazyDatabase::new(config.storage.clone(), SERVICE).with_migrations(&store::MIGRATIONS);
    // Ready only while both peers of a run and the database are; audit
    // events are spooled meanwhile, so the audit service is optional.
    host.add_check(DependencyCheck::grpc_peer(
        "llm-gateway",
        &config.llm_gateway_url,
        true,
    ))
    .add_check(DependencyCheck::grpc_peer(
        "tool-runner",
        &config.tool_runner_url,
        true,
    ))
    .add_check(database.health_check())
    .add_check(audit.health_check());
    let maintenance: Arc<OnceLock<tokio::task::JoinHandle<()>>> = Arc::default();
    let result = host
        .serve(
            listeners,
            || async {
                database.open().await.map_err(StartupError::from)?;
                if engine.get().is_none() {
                    let db = database
                        .get()
                        .cloned()
                        .ok_or_else(|| StartupError::from("the database did not open"))?;
                    let started = Engine::new(
                        Arc::clone(&config),
                        store::Store::new(db),
                        audit.clone(),
                        run_metrics.clone(),
                        &client_metrics,
                        admission::Admission::new(&config, reporter.clone()),
                    )
                    .map_err(|err| StartupError::from(err.to_string()))?;
                    let _ = engine.set(Arc::clone(&started));
                    let _ = maintenance.set(tokio::spawn(maintain(started, Arc::clone(&config))));
                }
                Ok(())
            },
            shutdown,
        )
        .await;
    if let Some(task) = maintenance.get() {
        task.abort();
    }
    database.close().await;
    // The drain is over: send what is queued, or spool it. (Runs still
    // being driven record their end in the spool.)
    audit.shutdown().await;
    result
}

/// Keeps this instance's claims on its runs alive, and resumes runs whose
/// instance died (their claim ran out), from their last checkpoint.
async fn maintain(engine: Arc<Engine>, config: Arc<Config>) {
    let period = config.run_lease / 3;
    loop {
        if let Err(err) = engine
            .store()
            .renew_leases(engine.owner(), engine.lease_until())
            .await
        {
            tracing::warn!(error = %err, "cannot renew the claims on this instance's runs");
        }
        match engine
            .store()
            .claim_orphans(engine.owner(), engine.lease_until(), 16)
            .await
        {
            Ok(runs) => {
                for run in runs {
                    let checkpoint = match engine.store().checkpoint(&run.run_id).await {
                        Ok(checkpoint) => checkpoint,
                        Err(err) => {
                            tracing::warn!(run_id = %run.run_id, error = %err, "cannot read the checkpoint of an orphaned run");
                            continue;
                        }
                    };
                    tracing::info!(run_id = %run.run_id, step = checkpoint.as_ref().map_or(0, |c| c.step), "resuming a run whose instance stopped");
                    // Resumed runs take their places too, but wait for them
                    // rather than being refused.
                    let places = engine.admission().later(&run.tenant, &run.agent);
                    engine.spawn(
                        run,
                        checkpoint,
                        agentmesh_kit::RequestContext::default(),
                        places,
                        None,
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot look for orphaned runs"),
        }
        tokio::time::sleep(period).await;
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
