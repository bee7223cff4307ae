//! `GET /v1/health`: the mesh's deep health at a glance, for the console and
//! anyone who cannot reach the admin ports. The edge's own report first,
//! then each service's `/health/deep`, read from its admin port
//! (`Config::admin_address`) concurrently, each bounded by the health check
//! timeout. A service that does not answer is reported as such, never
//! dropped: the answer is a report, so it is 200 whatever it says.
//!
//! The reports name internal addresses, so the route is the operator API's:
//! `crate::access` lets through only callers the alerting service lets
//! list rules (`alerts:read`).

use agentmesh_kit::health::DeepHealth;
use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::state::Edge;

/// The services whose health `/v1/health` reads, as named in
/// `edge.admin_addresses`.
pub(crate) const SERVICES: [&str; 5] = [
    "orchestrator",
    "llm-gateway",
    "tool-runner",
    "audit",
    "alerting",
];

/// The mesh's health.
#[derive(Debug, Serialize)]
pub(crate) struct MeshHealth {
    /// Every service answered and is ready.
    ready: bool,
    /// The edge first, then `SERVICES` in order.
    services: Vec<ServiceHealth>,
}

/// One service's health: its report, or why there is none.
#[derive(Debug, Serialize)]
struct ServiceHealth {
    service: String,
    /// Where its report was read (absent for the edge itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<DeepHealth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The route.
pub(crate) async fn mesh_health(State(edge): State<Edge>) -> Json<MeshHealth> {
    let timeout = edge.config.server.health_check_timeout;
    let reads = SERVICES.iter().map(|service| {
        let address = edge.config.admin_address(service);
        async move {
            let Some(address) = address else {
                return ServiceHealth {
                    service: (*service).to_owned(),
                    admin_address: None,
                    report: None,
                    error: Some("its admin address cannot be told from its URL".to_owned()),
                };
            };
            let read = agentmesh_kit::admin::fetch_deep_health(&address, timeout).await;
            let (report, error) = match read {
                Ok(report) => (Some(report), None),
                Err(error) => (None, Some(error)),
            };
            ServiceHealth {
                service: (*service).to_owned(),
                admin_address: Some(address),
                report,
                error,
            }
        }
    });
    let mut services = vec![ServiceHealth {
        service: crate::SERVICE.to_owned(),
        admin_address: None,
        report: Some(edge.health.report()),
        error: None,
    }];
    services.extend(futures::future::join_all(reads).await);
    let ready = services
        .iter()
        .all(|service| service.report.as_ref().is_some_and(|report| report.ready));
    Json(MeshHealth { ready, services })
}
