//! The edge's life cycle, as the kit's `ServiceHost` runs a gRPC service's:
//! both listeners under the kit's connection limits, the admin server
//! (`/metrics`, `/livez`, `/readyz`, `/health/deep`), dependency checks on
//! the services the edge fronts, and a drain at shutdown (NOT_SERVING,
//! `drain_delay` still accepting, then the event streams end — their
//! clients resume elsewhere from their last event id — and the calls left
//! get the rest of the grace period).

use std::future::Future;
use std::time::Duration;

use agentmesh_kit::auth::ServiceCredential;
use agentmesh_kit::client::Clients;
use agentmesh_kit::health::{DependencyCheck, Health};
use agentmesh_kit::metrics::Metrics;
use agentmesh_kit::tls::ClientTlsFiles;
use agentmesh_kit::{Listeners, ServeError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::app;
use crate::state::Peers;

/// Serves the edge on `listeners` until `shutdown` resolves, then drains.
/// Kept whole: the life cycle reads best top to bottom.
pub(crate) async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let service = crate::SERVICE;
    let (main_addr, admin_addr) = (listeners.grpc_addr()?, listeners.admin_addr()?);
    let metrics = Metrics::new(service);
    let client_tls = ClientTlsFiles::load(&config.server.client_tls)
        .map_err(|err| ServeError::Tls(format!("edge.{err}")))?;
    // No credential of its own: every call carries its caller's.
    let clients = Clients::new(metrics.grpc_client().clone(), ServiceCredential::none())
        .with_tls(client_tls.clone());
    let (health, _grpc_health) = Health::new(service, Vec::new(), metrics.registry()).await?;
    let checks = [
        DependencyCheck::grpc_peer("orchestrator", &config.orchestrator_url, true),
        DependencyCheck::grpc_peer("llm-gateway", &config.llm_gateway_url, true),
        DependencyCheck::grpc_peer("tool-runner", &config.tool_runner_url, false),
        DependencyCheck::grpc_peer("audit", &config.audit_url, false),
        DependencyCheck::grpc_peer("alerting", &config.alerting_url, false),
    ];
    for check in &checks {
        check.use_client_tls(&client_tls);
    }
    let _checks = health.spawn_checks(
        checks.into(),
        config.server.health_check_interval,
        config.server.health_check_timeout,
    );
    let (main_listener, admin_listener) =
        listeners.limited_http(service, &config.server.connections, metrics.registry())?;

    let streams_end = CancellationToken::new();
    let peers = Peers::connect(&clients, &config)?;
    let router = app::router(
        &config,
        peers,
        metrics.registry(),
        health.clone(),
        streams_end.clone(),
    )?;
    let stop_accepting = CancellationToken::new();
    let server = axum::serve(main_listener, router)
        .with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
    let mut server = Box::pin(server.into_future());

    let stop_admin = CancellationToken::new();
    let admin = tokio::spawn(agentmesh_kit::admin::serve(
        admin_listener,
        agentmesh_kit::admin::router(metrics.clone(), health.clone(), &config.server),
        stop_admin.clone().cancelled_owned(),
    ));
    agentmesh_kit::heap::spawn_trimmer(config.server.heap_trim_interval, stop_admin.clone());
    health.mark_started().await;
    tracing::info!(%service, http = %main_addr, admin = %admin_addr, "listening");

    tokio::select! {
        result = &mut server => {
            stop_admin.cancel();
            return result.map_err(ServeError::Io);
        }
        () = shutdown => {}
    }

    let begun = Instant::now();
    health.begin_drain().await;
    let grace = config.server.grace_period;
    tracing::info!(%service, grace_period = ?grace, drain_delay = ?config.server.drain_delay, "shutting down: NOT_SERVING");
    let result = tokio::select! {
        result = &mut server => Some(result),
        () = tokio::time::sleep_until(begun + config.server.drain_delay) => None,
    };
    let result = match result {
        Some(result) => result,
        None => {
            stop_accepting.cancel();
            // Event streams never end by themselves: they end now, and their
            // clients resume on another replica from their last event id.
            streams_end.cancel();
            match tokio::time::timeout_at(begun + grace, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(%service, "connections still open at the end of the grace period; closing them");
                    Ok(())
                }
            }
        }
    };
    stop_admin.cancel();
    if tokio::time::timeout(Duration::from_secs(1), admin)
        .await
        .is_err()
    {
        tracing::warn!(%service, "admin server did not stop within 1s");
    }
    tracing::info!(%service, took = ?begun.elapsed(), "stopped");
    result.map_err(ServeError::Io)
}
