//! `agentmesh_http_server_requests_total{method,route,code}` and
//! `agentmesh_http_server_request_duration_seconds{method,route}`: every
//! request the edge answers, by route template (never by raw path, so a run
//! id cannot grow the series). The calls the edge makes are counted by the
//! kit's `grpc_client_*` metrics.

use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The edge's HTTP metrics.
#[derive(Debug, Clone)]
pub(crate) struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "agentmesh_http_server_requests_total",
                "HTTP requests answered by the edge, by method, route template and status code.",
            ),
            &["method", "route", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "agentmesh_http_server_request_duration_seconds",
                "Time until the edge's response headers were sent (streams: until they began), by method and route template.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    /// Counts one answered request.
    pub(crate) fn observe(
        &self,
        method: &Method,
        route: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        self.requests
            .with_label_values(&[method, route, status.as_str()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }
}

/// A method as a label: the standard ones by name, any other as `other`
/// (a client cannot grow the series with made-up methods).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_template() {
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry).ok();
        let Some(metrics) = metrics else {
            panic!("metrics register");
        };
        metrics.observe(
            &Method::GET,
            "/v1/runs/{run_id}",
            StatusCode::NOT_FOUND,
            Duration::from_millis(2),
        );
        metrics.observe(
            &Method::from_bytes(b"BREW").unwrap_or(Method::GET),
            "/v1/runs",
            StatusCode::METHOD_NOT_ALLOWED,
            Duration::ZERO,
        );
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap_or_default();
        assert!(text.contains(
            r#"agentmesh_http_server_requests_total{code="404",method="GET",route="/v1/runs/{run_id}"} 1"#
        ));
        assert!(text.contains(r#"method="other""#));
    }
}
