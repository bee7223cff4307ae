//! The gateway's own Prometheus metrics (the kit adds the gRPC ones): the
//! OpenTelemetry GenAI semantic-convention client metrics in Prometheus form,
//! and the estimated cost.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `gen_ai_client_token_usage` | histogram (tokens) | common + `gen_ai_token_type` (`input`, `output`) |
//! | `gen_ai_client_operation_duration_seconds` | histogram | common + `error_type` (`""` on success, else the gRPC code, e.g. `UNAVAILABLE`) |
//! | `gen_ai_server_time_to_first_token_seconds` | histogram | common |
//! | `gen_ai_server_time_per_output_token_seconds` | histogram | common |
//! | `agentmesh_llm_cost_usd_total` | counter (USD) | `gen_ai_provider_name`, `gen_ai_request_model`, `route` |
//!
//! The common labels are `gen_ai_operation_name` (`chat`),
//! `gen_ai_provider_name` (the provider's kind as the conventions name it:
//! `openai`, `anthropic`, `agentmesh.scripted` — as on the call's span),
//! `gen_ai_request_model` (the provider's model name) and `route`. Their values are bounded by the
//! configuration, never by traffic: a model addressed directly
//! (`provider/model`) that no route targets and no price names is `other`,
//! and such a call's `route` is empty. A call refused before it was resolved
//! (a bad request, an unknown route) is recorded with empty provider, model
//! and route. Calls are never labelled by user, tenant or run.
//!
//! # Data flow
//!
//! [`GatewayMetrics::new`] registers the families and resolves the children
//! of every configured route once. Each call's audit record
//! ([`crate::audit::LlmCallRecord`]) picks its [`CallSeries`] when the call
//! is resolved and, at the single place a call ends (success, failure or the
//! caller going away), records a [`CallOutcome`] — so metrics and the
//! LLM_CALL audit event always agree. Nothing is recorded per token.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_kit::metrics::prometheus::{
    self, Counter, CounterVec, Histogram, HistogramOpts, HistogramVec, Opts, Registry,
};

use crate::config::{Config, split_target};
use crate::gateway::Resolved;

/// The only operation the gateway performs, as the GenAI conventions name it.
const OPERATION: &str = "chat";
/// The label value of a model the configuration does not name.
const OTHER: &str = "other";

/// Token-count buckets (the GenAI conventions' advice).
const TOKEN_BUCKETS: [f64; 12] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
];
/// Operation-duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Time-to-first-token buckets, in seconds.
const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Time-per-output-token buckets, in seconds.
const TPOT_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// The label names every GenAI metric starts with.
const COMMON: [&str; 4] = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "route",
];

/// The families, and the series of every configured route.
#[derive(Debug)]
pub(crate) struct GatewayMetrics {
    families: Families,
    /// Series by (route, instance, model) for every target of every route,
    /// so a call answered by a fallback is counted under that target.
    by_route: HashMap<(String, String, String), Arc<CallSeries>>,
    /// `(instance, model)` pairs the configuration names: route targets and
    /// `provider/model` prices.
    known_targets: HashSet<(String, String)>,
    /// Models priced on any provider (bare price keys).
    known_models: HashSet<String>,
    unresolved: Arc<CallSeries>,
}

#[derive(Debug, Clone)]
struct Families {
    token_usage: HistogramVec,
    duration: HistogramVec,
    ttft: HistogramVec,
    tpot: HistogramVec,
    cost: CounterVec,
}

/// The children of one (provider, model, route), resolved once.
#[derive(Debug)]
pub(crate) struct CallSeries {
    labels: [String; 4],
    input_tokens: Histogram,
    output_tokens: Histogram,
    succeeded: Histogram,
    ttft: Histogram,
    tpot: Histogram,
    cost: Counter,
    /// For the duration of failed calls, by error type (rare: resolved when
    /// they happen).
    duration: HistogramVec,
}

/// How one call ended, as far as metrics are concerned.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallOutcome {
    /// From the call's arrival to its end.
    pub duration: Duration,
    /// From the call's arrival to the first output (streams).
    pub first_token: Option<Duration>,
    /// Input and output tokens, when known (reported or estimated).
    pub tokens: Option<(i32, i32)>,
    /// The estimated cost, when the model has a price.
    pub cost_usd: Option<f64>,
    /// `None` on success; else a low-cardinality error type (a gRPC code name).
    pub error_type: Option<&'static str>,
}

impl GatewayMetrics {
    /// Creates and registers the metrics, with the series of every route in
    /// `config` resolved (and exported, at zero) at once.
    pub(crate) fn new(registry: &Registry, config: &Config) -> prometheus::Result<Self> {
        let families = Families::register(registry)?;
        let mut known_targets: HashSet<(String, String)> = HashSet::new();
        let mut known_models = HashSet::new();
        for key in config.prices.keys() {
            match split_target(key) {
                Some((instance, model)) => {
                    known_targets.insert((instance.to_owned(), model.to_owned()));
                }
                None => {
                    known_models.insert(key.clone());
                }
            }
        }
        let mut by_route = HashMap::new();
        for (name, route) in &config.routes {
            for (_, target) in route.chain() {
                if let Some((instance, model)) = split_target(target) {
                    known_targets.insert((instance.to_owned(), model.to_owned()));
                    // Validation guarantees the instance exists.
                    let provider = config
                        .providers
                        .get(instance)
                        .map_or(OTHER, |provider| provider.kind.semconv_name());
                    by_route.insert(
                        (name.clone(), instance.to_owned(), model.to_owned()),
                        Arc::new(CallSeries::new(&families, provider, model, name)),
                    );
                }
            }
        }
        let unresolved = Arc::new(CallSeries::new(&families, "", "", ""));
        Ok(Self {
            families,
            by_route,
            known_targets,
            known_models,
            unresolved,
        })
    }

    /// The series of a resolved call: its route's, cached; for a model
    /// addressed directly, resolved now (the model is `other` unless the
    /// configuration names it).
    pub(crate) fn series(&self, resolved: &Resolved) -> Arc<CallSeries> {
        let key = (
            resolved.route.clone(),
            resolved.instance.clone(),
            resolved.model.clone(),
        );
        if let Some(series) = self.by_route.get(&key) {
            return Arc::clone(series);
        }
        let target = (resolved.instance.clone(), resolved.model.clone());
        let model = if self.known_targets.contains(&target)
            || self.known_models.contains(&resolved.model)
        {
            resolved.model.as_str()
        } else {
            OTHER
        };
        // The provider label is one of the kinds; the route of a direct
        // call is empty.
        Arc::new(CallSeries::new(
            &self.families,
            resolved.provider.config.kind.semconv_name(),
            model,
            "",
        ))
    }

    /// The series of calls refused before they were resolved.
    pub(crate) fn unresolved(&self) -> Arc<CallSeries> {
        Arc::clone(&self.unresolved)
    }

    /// Routes with cached series.
    #[cfg(test)]
    fn routes(&self) -> std::collections::BTreeMap<&str, &CallSeries> {
        self.by_route
            .iter()
            .map(|((name, _, _), series)| (name.as_str(), series.as_ref()))
            .collect()
    }
}

impl Families {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let with = |extra: &'static str| -> Vec<&'static str> {
            let mut labels = COMMON.to_vec();
            labels.push(extra);
            labels
        };
        let token_usage = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_client_token_usage",
                "Tokens used per model call, by token type (input or output).",
            )
            .buckets(TOKEN_BUCKETS.to_vec()),
            &with("gen_ai_token_type"),
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_client_operation_duration_seconds",
                "Duration of model calls, from arrival at the gateway to the last token or the error; error_type is empty on success.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &with("error_type"),
        )?;
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_server_time_to_first_token_seconds",
                "Time from arrival of a successful streaming call to its first output.",
            )
            .buckets(TTFT_BUCKETS.to_vec()),
            &COMMON,
        )?;
        let tpot = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_server_time_per_output_token_seconds",
                "Time per output token after the first, of successful streaming calls.",
            )
            .buckets(TPOT_BUCKETS.to_vec()),
            &COMMON,
        )?;
        let cost = CounterVec::new(
            Opts::new(
                "agentmesh_llm_cost_usd_total",
                "Estimated cost of model calls in US dollars, from the configured prices.",
            ),
            &COMMON[1..],
        )?;
        registry.register(Box::new(token_usage.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(tpot.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        Ok(Self {
            token_usage,
            duration,
            ttft,
            tpot,
            cost,
        })
    }
}

impl CallSeries {
    fn new(families: &Families, provider: &str, model: &str, route: &str) -> Self {
        let common = [OPERATION, provider, model, route];
        let token = |token_type: &str| {
            families
                .token_usage
                .with_label_values(&[OPERATION, provider, model, route, token_type])
        };
        Self {
            labels: common.map(str::to_owned),
            input_tokens: token("input"),
            output_tokens: token("output"),
            succeeded: families
                .duration
                .with_label_values(&[OPERATION, provider, model, route, ""]),
            ttft: families.ttft.with_label_values(&common),
            tpot: families.tpot.with_label_values(&common),
            cost: families.cost.with_label_values(&[provider, model, route]),
            duration: families.duration.clone(),
        }
    }

    /// Records one call's end.
    pub(crate) fn record(&self, outcome: &CallOutcome) {
        let seconds = outcome.duration.as_secs_f64();
        match outcome.error_type {
            None => self.succeeded.observe(seconds),
            Some(error_type) => {
                let [operation, provider, model, route] = &self.labels;
                self.duration
                    .with_label_values(&[operation, provider, model, route, error_type])
                    .observe(seconds);
            }
        }
        if let Some((input, output)) = outcome.tokens {
            self.input_tokens.observe(f64::from(input.max(0)));
            self.output_tokens.observe(f64::from(output.max(0)));
        }
        if let Some(cost) = outcome.cost_usd
            && cost.is_finite()
            && cost > 0.0
        {
            self.cost.inc_by(cost);
        }
        if outcome.error_type.is_some() {
            return;
        }
        if let Some(first) = outcome.first_token {
            self.ttft.observe(first.as_secs_f64());
            if let Some((_, output)) = outcome.tokens
                && output > 1
            {
                let after_first = outcome.duration.saturating_sub(first).as_secs_f64();
                self.tpot.observe(after_first / f64::from(output - 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Price;

    fn metrics() -> (Registry, GatewayMetrics) {
        let registry = Registry::new();
        let mut config = Config::default();
        config.prices.insert(
            "openai/gpt-4o-mini".to_owned(),
            Price {
                input_per_million_usd: 1.0,
                output_per_million_usd: 2.0,
            },
        );
        let metrics = GatewayMetrics::new(&registry, &config).unwrap();
        (registry, metrics)
    }

    fn resolved(model: &str) -> Resolved {
        crate::Gateway::from_config(&Config::default())
            .unwrap()
            .resolve(model)
            .unwrap()
    }

    #[test]
    fn a_successful_stream_records_tokens_duration_first_token_and_cost() {
        let (registry, metrics) = metrics();
        let series = metrics.series(&resolved("default"));
        series.record(&CallOutcome {
            duration: Duration::from_millis(1100),
            first_token: Some(Duration::from_millis(100)),
            tokens: Some((40, 11)),
            cost_usd: Some(0.25),
            error_type: None,
        });
        assert_eq!(series.input_tokens.get_sample_count(), 1);
        assert_eq!(series.input_tokens.get_sample_sum(), 40.0);
        assert_eq!(series.output_tokens.get_sample_sum(), 11.0);
        assert_eq!(series.succeeded.get_sample_count(), 1);
        assert_eq!(series.ttft.get_sample_count(), 1);
        // (1.1 s - 0.1 s) / (11 - 1) tokens.
        assert!((series.tpot.get_sample_sum() - 0.1).abs() < 1e-9);
        assert!((series.cost.get() - 0.25).abs() < 1e-12);

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(
                r#"gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_provider_name="agentmesh.scripted",gen_ai_request_model="demo",gen_ai_token_type="input",route="default"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"agentmesh_llm_cost_usd_total{gen_ai_provider_name="agentmesh.scripted",gen_ai_request_model="demo",route="default"} 0.25"#),
            "{text}"
        );
        // Every route is exported from the start, at zero.
        assert!(text.contains(r#"route="fast""#), "{text}");
    }

    #[test]
    fn a_failure_records_its_error_type_and_no_latency_per_token() {
        let (_, metrics) = metrics();
        let series = metrics.series(&resolved("fast"));
        series.record(&CallOutcome {
            duration: Duration::from_millis(30),
            first_token: Some(Duration::from_millis(10)),
            tokens: Some((5, 3)),
            cost_usd: Some(-1.0),
            error_type: Some("UNAVAILABLE"),
        });
        assert_eq!(series.succeeded.get_sample_count(), 0);
        let failed = metrics.families.duration.with_label_values(&[
            "chat",
            "agentmesh.scripted",
            "demo",
            "fast",
            "UNAVAILABLE",
        ]);
        assert_eq!(failed.get_sample_count(), 1);
        assert_eq!(series.ttft.get_sample_count(), 0);
        assert_eq!(series.tpot.get_sample_count(), 0);
        assert_eq!(series.output_tokens.get_sample_count(), 1);
        assert_eq!(series.cost.get(), 0.0);
    }

    #[test]
    fn models_the_configuration_does_not_name_are_other() {
        let (_, metrics) = metrics();
        let priced = metrics.series(&resolved("openai/gpt-4o-mini"));
        assert_eq!(priced.labels[2], "gpt-4o-mini");
        assert_eq!(priced.labels[3], "");
        let targeted = metrics.series(&resolved("scripted/demo"));
        assert_eq!(targeted.labels[2], "demo");
        let anything = metrics.series(&resolved("openai/a-model-nobody-configured"));
        assert_eq!(anything.labels[1], "openai");
        assert_eq!(anything.labels[2], "other");
        assert_eq!(metrics.unresolved().labels, ["chat", "", "", ""]);
        assert_eq!(
            metrics.routes().keys().copied().collect::<Vec<_>>(),
            ["default", "fast"]
        );
    }
}
