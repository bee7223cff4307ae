//! Makes resilience decisions visible: every circuit change, rate-limit or
//! bulkhead refusal, retry and bulkhead wait becomes a metric, and the ones
//! an operator must be able to reconstruct later (circuits opening and
//! closing, callers refused) also an audit event.
//!
//! ```text
//! CircuitBreaker ── on_transition ──▶ ResilienceReporter::circuit ──▶ CIRCUIT_OPENED / CIRCUIT_CLOSED
//!                                                                    agentmesh_circuit_state{target}
//!                                                                    agentmesh_circuit_transitions_total
//! limiter / bulkhead refusal ──────▶ ResilienceReporter::refused ──▶ RATE_LIMITED
//!                                                                    agentmesh_rate_limited_total
//! retry made ──────────────────────▶ ResilienceReporter::retried ──▶ agentmesh_retries_total
//! Bulkhead ── on_change ─────────▶ ResilienceReporter::watch_bulkhead ▶ agentmesh_bulkhead_in_use / _queue_depth
//! SharedRateLimiter ── on_event ─▶ ResilienceReporter::watch_rate_limiter ▶ agentmesh_rate_limit_mode{scope,mode}
//!                                                                    agentmesh_rate_limit_leases_total{scope,outcome}
//!                                                                    a log line per change of mode
//! ```
//!
//! One reporter per service; its families live in the service's registry.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::audit::v1::{
    CircuitDetails, EventType, Outcome, RateLimitDetails, audit_event::Details,
};
use agentmesh_resilience::{
    Bulkhead, CircuitBreaker, CircuitState, LimiterEvent, LimiterMode, SharedRateLimiter,
    Transition,
};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::{AuditClient, duration};

/// A refusal to report (a rate limit or a full bulkhead).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal<'a> {
    /// What the limit applies to: `tenant`, `route`, `tool`, `agent`.
    pub scope: &'a str,
    /// The limited entity: the tenant, route, tool or agent name.
    pub key: &'a str,
    /// What is counted: `requests`, `tokens`, `concurrency`.
    pub resource: &'a str,
    /// The configured limit (per `period`, or a concurrency).
    pub limit: f64,
    /// The limit's period; none for concurrency limits.
    pub period: Option<Duration>,
    /// The delay the caller was told to wait.
    pub retry_after: Duration,
    /// The gRPC method refused.
    pub method: &'a str,
}

/// Reports resilience decisions of one service as audit events and metrics.
#[derive(Debug, Clone)]
pub struct ResilienceReporter {
    audit: AuditClient,
    metrics: Option<Arc<Families>>,
}

#[derive(Debug)]
struct Families {
    circuit_state: IntGaugeVec,
    transitions: IntCounterVec,
    refused: IntCounterVec,
    retries: IntCounterVec,
    bulkhead_in_use: IntGaugeVec,
    bulkhead_queued: IntGaugeVec,
    limiter_mode: IntGaugeVec,
    leases: IntCounterVec,
}

impl ResilienceReporter {
    /// A reporter sending events to `audit`, with its metric families
    /// registered in `registry` (without metrics, with a log line, should
    /// that fail).
    pub fn new(audit: AuditClient, registry: &Registry) -> Self {
        let metrics = match Families::register(registry) {
            Ok(families) => Some(Arc::new(families)),
            Err(err) => {
                tracing::warn!(%err, "resilience metrics unavailable");
                None
            }
        };
        Self { audit, metrics }
    }

    /// A reporter that only emits audit events (tests, tools).
    pub fn without_metrics(audit: AuditClient) -> Self {
        Self {
            audit,
            metrics: None,
        }
    }

    /// Watches `breaker`: its state gauge from now on, and an event and
    /// counter per change.
    pub fn watch_circuit(&self, breaker: &CircuitBreaker) {
        if let Some(metrics) = &self.metrics {
            metrics
                .circuit_state
                .with_label_values(&[breaker.target()])
                .set(CircuitState::Closed.gauge_value());
        }
        let reporter = self.clone();
        breaker.on_transition(move |transition| reporter.circuit(transition));
    }

    /// Watches `breaker` of a target no configuration lists (a model a
    /// caller named): audit events as for any circuit, its changes counted
    /// under `label` — a bounded name shared by all such targets, e.g.
    /// `openai/other` — and no state gauge (one series cannot hold the
    /// state of several circuits). Label values never come from a request.
    pub fn watch_unlisted_circuit(&self, breaker: &CircuitBreaker, label: &str) {
        let reporter = self.clone();
        let label = label.to_owned();
        breaker.on_transition(move |transition| {
            if let Some(metrics) = &reporter.metrics {
                metrics
                    .transitions
                    .with_label_values(&[label.as_str(), transition.to.as_str()])
                    .inc();
            }
            reporter.audit_circuit(transition);
        });
    }

    /// Reports one circuit change: gauge and counter always; an audit
    /// event for changes to OPEN (CIRCUIT_OPENED) and to CLOSED
    /// (CIRCUIT_CLOSED). OPEN → HALF_OPEN is only a metric.
    pub fn circuit(&self, transition: &Transition) {
        if let Some(metrics) = &self.metrics {
            metrics
                .circuit_state
                .with_label_values(&[transition.target.as_str()])
                .set(transition.to.gauge_value());
            metrics
                .transitions
                .with_label_values(&[transition.target.as_str(), transition.to.as_str()])
                .inc();
        }
        self.audit_circuit(transition);
    }

    /// The log line and audit event of a circuit change (CIRCUIT_OPENED,
    /// CIRCUIT_CLOSED; none for OPEN → HALF_OPEN).
    fn audit_circuit(&self, transition: &Transition) {
        let event_type = match transition.to {
            CircuitState::Open => EventType::CircuitOpened,
            CircuitState::Closed => EventType::CircuitClosed,
            CircuitState::HalfOpen => return,
        };
        if transition.to == CircuitState::Open {
            tracing::warn!(
                target_name = %transition.target,
                from = %transition.from,
                consecutive_failures = transition.consecutive_failures,
                failure_ratio = transition.failure_ratio,
                open_for = ?transition.open_for,
                last_error = %transition.last_error,
                "circuit opened"
            );
        } else {
            tracing::info!(target_name = %transition.target, from = %transition.from, "circuit closed");
        }
        let mut event = self.audit.event(event_type);
        if transition.to == CircuitState::Open {
            event.outcome = Outcome::Failure as i32;
            event.reason = transition.last_error.clone();
        }
        event.details = Some(Details::Circuit(CircuitDetails {
            target: transition.target.clone(),
            from_state: transition.from.as_str().to_owned(),
            to_state: transition.to.as_str().to_owned(),
            consecutive_failures: i32::try_from(transition.consecutive_failures)
                .unwrap_or(i32::MAX),
            failure_ratio: transition.failure_ratio,
            open_duration: (transition.to == CircuitState::Open)
                .then(|| duration(transition.open_for)),
            last_error: transition.last_error.clone(),
        }));
        self.audit.emit(event);
    }

    /// Reports a refused call: counter and RATE_LIMITED event (with the
    /// caller's identity when called while handling its request).
    pub fn refused(&self, refusal: &Refusal<'_>) {
        if let Some(metrics) = &self.metrics {
            metrics
                .refused
                .with_label_values(&[refusal.scope, refusal.resource])
                .inc();
        }
        let mut event = self.audit.event(EventType::RateLimited);
        event.outcome = Outcome::Denied as i32;
        event.reason = format!(
            "{} limit of {} {} reached; retry after {:?}",
            refusal.scope, refusal.limit, refusal.resource, refusal.retry_after
        );
        event.details = Some(Details::RateLimit(RateLimitDetails {
            scope: refusal.scope.to_owned(),
            key: refusal.key.to_owned(),
            resource: refusal.resource.to_owned(),
            limit: refusal.limit,
            period: refusal.period.map(duration),
            retry_after: Some(duration(refusal.retry_after)),
            method: refusal.method.to_owned(),
        }));
        self.audit.emit(event);
    }

    /// Counts one retry (or fallback) against `target` for `reason`.
    pub fn retried(&self, target: &str, reason: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.retries.with_label_values(&[target, reason]).inc();
        }
    }

    /// Exports the gauges of `bulkhead` from now on: set now, and after
    /// every change of its places or queue.
    pub fn watch_bulkhead(&self, bulkhead: &Bulkhead) {
        self.bulkhead(bulkhead);
        let reporter = self.clone();
        bulkhead.on_change(move |bulkhead| reporter.bulkhead(bulkhead));
    }

    /// Watches a rate limiter shared by replicas: its mode gauge from now on
    /// (1 for the mode in effect, 0 for the other), its leases counted by
    /// outcome (`granted`, `empty`: the row had no room, `failed`), and a
    /// log line at each change of mode — a warning when it falls back to
    /// local limits, so an outage is logged once, not per call.
    pub fn watch_rate_limiter(&self, limiter: &SharedRateLimiter) {
        let scope = limiter.scope().to_owned();
        self.limiter_mode(&scope, limiter.mode());
        let reporter = self.clone();
        limiter.on_event(move |event| match event {
            LimiterEvent::Mode { mode, reason } => {
                reporter.limiter_mode(&scope, *mode);
                match (mode, reason) {
                    (LimiterMode::Local, reason) => tracing::warn!(
                        scope = %scope,
                        reason = reason.as_deref().unwrap_or(""),
                        "the shared rate-limit store is unreachable: each replica now enforces its share (1/N) of every limit on its own"
                    ),
                    (LimiterMode::Shared, _) => tracing::info!(
                        scope = %scope,
                        "the shared rate-limit store answers again: rate limits are shared"
                    ),
                }
            }
            LimiterEvent::Leased { granted } => {
                reporter.lease(&scope, if *granted > 0 { "granted" } else { "empty" });
            }
            LimiterEvent::LeaseFailed => reporter.lease(&scope, "failed"),
        });
    }

    fn limiter_mode(&self, scope: &str, mode: LimiterMode) {
        if let Some(metrics) = &self.metrics {
            for each in [LimiterMode::Shared, LimiterMode::Local] {
                metrics
                    .limiter_mode
                    .with_label_values(&[scope, each.as_str()])
                    .set(i64::from(each == mode));
            }
        }
    }

    fn lease(&self, scope: &str, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.leases.with_label_values(&[scope, outcome]).inc();
        }
    }

    /// Sets the gauges of `bulkhead` to what it holds now.
    fn bulkhead(&self, bulkhead: &Bulkhead) {
        if let Some(metrics) = &self.metrics {
            let in_use = i64::try_from(bulkhead.in_use()).unwrap_or(i64::MAX);
            let queued = i64::try_from(bulkhead.queued()).unwrap_or(i64::MAX);
            metrics
                .bulkhead_in_use
                .with_label_values(&[bulkhead.name()])
                .set(in_use);
            metrics
                .bulkhead_queued
                .with_label_values(&[bulkhead.name()])
                .set(queued);
        }
    }
}

impl Families {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "agentmesh_circuit_state",
                "Circuit breaker state per target: 0 closed, 1 open, 2 half-open.",
            ),
            &["target"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "agentmesh_circuit_transitions_total",
                "Circuit breaker state changes per target and new state.",
            ),
            &["target", "to"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "agentmesh_rate_limited_total",
                "Calls refused by a rate limit or a full bulkhead, by scope (tenant, route, tool, agent) and resource (requests, tokens, concurrency).",
            ),
            &["scope", "resource"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "agentmesh_retries_total",
                "Retries and fallbacks made, by target and reason (connect, server_error, rate_limited, timeout, broken, circuit_open, ...).",
            ),
            &["target", "reason"],
        )?;
        let bulkhead_in_use = IntGaugeVec::new(
            Opts::new(
                "agentmesh_bulkhead_in_use",
                "Places taken in a bulkhead (calls running).",
            ),
            &["bulkhead"],
        )?;
        let bulkhead_queued = IntGaugeVec::new(
            Opts::new(
                "agentmesh_bulkhead_queue_depth",
                "Calls waiting for a place in a bulkhead.",
            ),
            &["bulkhead"],
        )?;
        let limiter_mode = IntGaugeVec::new(
            Opts::new(
                "agentmesh_rate_limit_mode",
                "Where a shared rate limiter's decisions come from, per scope: 1 for the mode in effect (shared: the store; local: this replica alone at 1/N, the store being unreachable), 0 for the other.",
            ),
            &["scope", "mode"],
        )?;
        let leases = IntCounterVec::new(
            Opts::new(
                "agentmesh_rate_limit_leases_total",
                "Leases of rate-limit cells from the shared store, per scope and outcome (granted, empty: no room, failed).",
            ),
            &["scope", "outcome"],
        )?;
        registry.register(Box::new(circuit_state.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(bulkhead_in_use.clone()))?;
        registry.register(Box::new(bulkhead_queued.clone()))?;
        registry.register(Box::new(limiter_mode.clone()))?;
        registry.register(Box::new(leases.clone()))?;
        Ok(Self {
            circuit_state,
            transitions,
            refused,
            retries,
            bulkhead_in_use,
            bulkhead_queued,
            limiter_mode,
            leases,
        })
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_resilience::CircuitConfig;

    use super::*;

    #[test]
    fn unlisted_circuits_share_one_bounded_label() {
        let registry = Registry::new();
        let reporter = ResilienceReporter::new(AuditClient::disabled("test"), &registry);
        let config = CircuitConfig {
            consecutive_failures: 1,
            ..CircuitConfig::default()
        };
        for model in ["caller-chose-this", "and-this-one"] {
            let breaker = CircuitBreaker::new(format!("openai/{model}"), config.clone());
            reporter.watch_unlisted_circuit(&breaker, "openai/other");
            breaker.try_acquire().unwrap().failure("HTTP 500");
        }
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            !text.contains("caller-chose-this") && !text.contains("and-this-one"),
            "{text}"
        );
        assert!(
            text.contains(
                "agentmesh_circuit_transitions_total{target=\"openai/other\",to=\"OPEN\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("agentmesh_circuit_state{"), "{text}");
    }

    #[test]
    fn circuit_changes_and_refusals_are_counted() {
        let registry = Registry::new();
        let reporter = ResilienceReporter::new(AuditClient::disabled("test"), &registry);
        let breaker = CircuitBreaker::new(
            "openai/gpt-4o",
            CircuitConfig {
                consecutive_failures: 1,
                ..CircuitConfig::default()
            },
        );
        reporter.watch_circuit(&breaker);
        breaker.try_acquire().unwrap().failure("HTTP 500");
        reporter.refused(&Refusal {
            scope: "tenant",
            key: "acme",
            resource: "requests",
            limit: 60.0,
            period: Some(Duration::from_secs(60)),
            retry_after: Duration::from_secs(1),
            method: "/agentmesh.llm.v1.LlmGatewayService/Generate",
        });
        reporter.retried("openai/gpt-4o", "server_error");
        let bulkhead = Bulkhead::new("tool:sleep", 2, 3);
        reporter.watch_bulkhead(&bulkhead);
        let _place = bulkhead.enter().unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            r#"agentmesh_circuit_state{target="openai/gpt-4o"} 1"#,
            r#"agentmesh_circuit_transitions_total{target="openai/gpt-4o",to="OPEN"} 1"#,
            r#"agentmesh_rate_limited_total{resource="requests",scope="tenant"} 1"#,
            r#"agentmesh_retries_total{reason="server_error",target="openai/gpt-4o"} 1"#,
            r#"agentmesh_bulkhead_in_use{bulkhead="tool:sleep"} 1"#,
            r#"agentmesh_bulkhead_queue_depth{bulkhead="tool:sleep"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
