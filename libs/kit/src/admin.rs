//! The admin HTTP server beside each gRPC server, and a client for its health
//! report.
//!
//! Routes:
//!
//! * `/metrics`: Prometheus text format.
//! * `/livez` (and `/healthz`, its older name): 200 for as long as the
//!   process answers, draining included — liveness never depends on
//!   anything else, so an outage elsewhere does not get pods restarted.
//! * `/readyz`: 200 when the service reports SERVING, else 503 with the
//!   failing components. `/readyz?verbose` lists every component the way
//!   Kubernetes components do (`[+]database ok`, `[-]tool-runner failed:
//!   …`, then `readyz check passed|failed`).
//! * `/health/deep`: the whole [`DeepHealth`] report as JSON (always 200:
//!   the body says whether the service is ready). It names internal
//!   addresses, so `server.deep_health = false` leaves it out (404).
//! * `/debug/…`: profiles and heap figures, only with
//!   `server.profiling = true` ([`crate::profiling`]).
//!
//! Everything comes from the service's [`Health`]; this module only renders
//! it. [`fetch_deep_health`] reads `/health/deep` of another process (for
//! `agentmesh health --deep`).

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::config::ServerConfig;
use crate::health::{DeepHealth, Health};
use crate::metrics::Metrics;
use crate::status::error_chain;

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    health: Health,
}

/// The admin routes for a service: `/health/deep` only with
/// `server.deep_health`, the profiling routes only with `server.profiling`.
pub fn router(metrics: Metrics, health: Health, config: &ServerConfig) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .route("/readyz", get(ready));
    if config.deep_health {
        router = router.route("/health/deep", get(deep));
    }
    if config.profiling {
        router = router.merge(crate::profiling::router());
    }
    router.with_state(AdminState { metrics, health })
}

/// Serves the admin routes on `listener` (under its connection limits)
/// until `shutdown` resolves.
pub async fn serve(
    listener: crate::connections::LimitedListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Whether the query asks for the verbose form (`?verbose`, `?verbose=true`,
/// as Kubernetes spells it).
fn verbose(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        query.split('&').any(|pair| match pair.split_once('=') {
            None => pair == "verbose",
            Some((key, value)) => key == "verbose" && !matches!(value, "false" | "0"),
        })
    })
}

const TEXT: (header::HeaderName, &str) = (header::CONTENT_TYPE, "text/plain; charset=utf-8");

async fn live(uri: Uri) -> impl IntoResponse {
    let body = if verbose(&uri) {
        "[+]ping ok\nlivez check passed\n"
    } else {
        "ok\n"
    };
    ([TEXT], body)
}

async fn ready(State(state): State<AdminState>, uri: Uri) -> impl IntoResponse {
    let report = state.health.report();
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // As Kubernetes does: a short answer when ready, the list when asked
    // for or when something fails (that is when someone reads it).
    let body = if report.ready && !verbose(&uri) {
        "ok\n".to_owned()
    } else {
        readyz_lines(&report)
    };
    (code, [TEXT], body)
}

/// The verbose `/readyz` text of a report.
pub fn readyz_lines(report: &DeepHealth) -> String {
    let mut text = String::new();
    for component in &report.components {
        let _ = match (component.ok, component.required) {
            (true, _) => writeln!(text, "[+]{} ok", component.name),
            (false, required) => writeln!(
                text,
                "[-]{} failed: {}{}",
                component.name,
                component.reason.as_deref().unwrap_or("failing"),
                if required {
                    ""
                } else {
                    " (optional: readiness unaffected)"
                }
            ),
        };
    }
    let _ = if report.draining {
        writeln!(text, "[-]shutdown failed: the service is shutting down")
    } else {
        writeln!(text, "[+]shutdown ok")
    };
    let verdict = if report.ready { "passed" } else { "failed" };
    let _ = writeln!(text, "readyz check {verdict}");
    text
}

async fn deep(State(state): State<AdminState>) -> impl IntoResponse {
    let report = state.health.report();
    let body = serde_json::to_string_pretty(&report)
        .unwrap_or_else(|err| format!("{{\"error\": \"cannot render the report: {err}\"}}"));
    ([(header::CONTENT_TYPE, "application/json")], body + "\n")
}

// === client ===

/// Reads `/health/deep` from the admin server at `address` (`host:port`),
/// within `timeout`.
pub async fn fetch_deep_health(address: &str, timeout: Duration) -> Result<DeepHealth, String> {
    crate::client::install_tls_crypto();
    let url = format!("http://{address}/health/deep");
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()
        .map_err(|err| format!("cannot make an HTTP client: {}", error_chain(&err)))?;
    let response = client.get(&url).send().await.map_err(|err| {
        if err.is_timeout() {
            format!(
                "no answer within {}",
                humantime_serde::re::humantime::format_duration(timeout)
            )
        } else {
            format!("cannot connect: {}", error_chain(&err))
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}"));
    }
    let body = response.bytes().await.map_err(|err| {
        format!(
            "GET {url}: reading the answer failed: {}",
            error_chain(&err)
        )
    })?;
    serde_json::from_slice(&body).map_err(|err| format!("not a health report: {err}"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    async fn get_text(router: &Router, path: &str) -> (u16, String) {
        let response = router
            .clone()
            .oneshot(http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn service() -> (Router, Health) {
        let metrics = Metrics::new("test");
        let (health, _server) = Health::new("test", Vec::new(), metrics.registry())
            .await
            .unwrap();
        health.add_component("tool-runner", true);
        health.add_component("audit", false);
        let config = ServerConfig {
            profiling: true,
            ..ServerConfig::default()
        };
        (router(metrics, health.clone(), &config), health)
    }

    #[tokio::test]
    async fn deep_health_can_be_turned_off() {
        let metrics = Metrics::new("test");
        let (health, _server) = Health::new("test", Vec::new(), metrics.registry())
            .await
            .unwrap();
        let config = ServerConfig {
            deep_health: false,
            ..ServerConfig::default()
        };
        let without = router(metrics, health, &config);
        assert_eq!(get_text(&without, "/health/deep").await.0, 404);
        // Profiling is off unless asked for.
        assert_eq!(get_text(&without, "/debug/heap").await.0, 404);
        assert_eq!(get_text(&without, "/livez").await.0, 200);
        let (with, _health) = service().await;
        assert_eq!(get_text(&with, "/health/deep").await.0, 200);
        assert_eq!(get_text(&with, "/debug/heap").await.0, 200);
    }

    #[tokio::test]
    async fn readyz_lists_components_and_livez_stays_up() {
        let (router, health) = service().await;
        let (code, text) = get_text(&router, "/readyz").await;
        assert_eq!(code, 503);
        assert!(text.contains("[-]startup failed: starting\n"), "{text}");
        assert!(text.ends_with("readyz check failed\n"), "{text}");

        health.mark_started().await;
        health
            .record(
                "tool-runner",
                Err("peer 127.0.0.1:50053 unreachable: connection refused".into()),
            )
            .await;
        health.record("audit", Err("spooling".into())).await;
        let (code, text) = get_text(&router, "/readyz?verbose").await;
        assert_eq!(code, 503);
        assert!(text.contains("[+]startup ok\n"), "{text}");
        assert!(
            text.contains(
                "[-]tool-runner failed: peer 127.0.0.1:50053 unreachable: connection refused\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("[-]audit failed: spooling (optional"),
            "{text}"
        );
        assert!(text.ends_with("readyz check failed\n"), "{text}");
        for path in ["/livez", "/healthz"] {
            assert_eq!(get_text(&router, path).await, (200, "ok\n".to_owned()));
        }

        health.record("tool-runner", Ok(())).await;
        assert_eq!(get_text(&router, "/readyz").await, (200, "ok\n".to_owned()));
        let (code, text) = get_text(&router, "/readyz?verbose=true").await;
        assert_eq!(code, 200);
        assert!(text.contains("[+]tool-runner ok\n"), "{text}");
        assert!(
            text.ends_with("[+]shutdown ok\nreadyz check passed\n"),
            "{text}"
        );

        health.begin_drain().await;
        let (code, text) = get_text(&router, "/readyz?verbose").await;
        assert_eq!(code, 503);
        assert!(text.contains("[-]shutdown failed"), "{text}");
        assert_eq!(get_text(&router, "/livez?verbose").await.0, 200);
    }

    #[tokio::test]
    async fn health_deep_is_json_with_every_component() {
        let (router, health) = service().await;
        health.mark_started().await;
        health.record("tool-runner", Err("down".into())).await;
        let (code, text) = get_text(&router, "/health/deep").await;
        assert_eq!(code, 200);
        let report: DeepHealth = serde_json::from_str(&text).unwrap();
        assert_eq!(report.service, "test");
        assert!(!report.ready && report.live);
        let names: Vec<&str> = report.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["startup", "tool-runner", "audit"]);
        let tools = &report.components[1];
        assert!(tools.required && !tools.ok);
        assert_eq!(tools.reason.as_deref(), Some("down"));
        assert!(tools.checked_at.is_some() && tools.last_ok_at.is_none());
        assert_eq!(tools.consecutive_failures, 1);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in [
            "name",
            "required",
            "ok",
            "reason",
            "checked_at",
            "last_ok_at",
            "consecutive_failures",
        ] {
            assert!(
                json["components"][0].get(key).is_some(),
                "{key} missing: {json}"
            );
        }
    }

    #[tokio::test]
    async fn the_report_can_be_fetched_over_the_network() {
        let (router, health) = service().await;
        health.mark_started().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let metrics =
            crate::connections::ConnectionMetrics::register(&prometheus::Registry::new()).unwrap();
        let settings = crate::connections::ConnectionSettings::default();
        let shared =
            crate::connections::ListenerShared::new("test", "admin", 4, &settings, &metrics);
        let listener = crate::connections::LimitedListener::new(
            listener,
            shared,
            crate::connections::Protocol::Http1,
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, stop.clone().cancelled_owned()));
        let report = fetch_deep_health(&address, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(report.service, "test");
        assert_eq!(report.components.len(), 3);
        stop.cancel();
        server.await.unwrap().unwrap();

        let err = fetch_deep_health(&address, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
