//! The gateway's state: provider instances, routes with their chains of
//! targets (each with its circuit breaker), prices, the retry settings with
//! their shared budget, the resilience reporter and the rate limits, built
//! once from the configuration.
//!
//! [`Gateway::resolve`] turns a request's `model` (empty = the default
//! route, a route name, or `instance/model`) into a [`Resolved`]: where the
//! call goes first and the chain it may fall back along. The audit record,
//! the metrics and both call paths read that one type; nothing here depends
//! on them. ListModels is answered here too, from the routes, paged in name
//! order.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentmesh_audit_client::AuditClient;
use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_kit::ConfigError;
use agentmesh_kit::paging::{FilterHash, Page, PageLimits};
use agentmesh_kit::status::{invalid_argument, quote};
use agentmesh_proto::llm::v1::{
    self, ListModelsRequest, ListModelsResponse, Model, ModelTarget, Usage,
};
use agentmesh_resilience::{CircuitBreaker, CircuitState, Retries};
use tonic::Status;

use crate::budget::Budgets;
use crate::config::{Config, FailureClass, Price, join_names, price_of, split_target};
use crate::limits::Limits;
use crate::providers::ProviderInstance;
use crate::resilience::{Circuits, Target};

/// ListModels page sizes: 50 when the request gives 0, at most 1,000.
const MODEL_PAGES: PageLimits = PageLimits::new(50, 1000);

/// Routes and provider instances: everything a call needs.
#[derive(Debug)]
pub struct Gateway {
    default_route: String,
    routes: BTreeMap<String, Route>,
    providers: BTreeMap<String, ProviderInstance>,
    prices: BTreeMap<String, Price>,
    circuits: Circuits,
    retries: Retries,
    reporter: ResilienceReporter,
    limits: Arc<Limits>,
    budgets: Arc<Budgets>,
    /// Successful calls at least this slow are logged at info.
    slow_call: std::time::Duration,
}

#[derive(Debug, Clone)]
struct Route {
    /// The targets in fallback order, with their circuits; never empty.
    chain: Arc<[Target]>,
    fallback_on: Arc<[FailureClass]>,
    description: String,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The route name; empty when addressed as `provider/model`.
    pub route: String,
    /// The provider instance name (of the target being tried).
    pub instance: String,
    /// The provider's model name (of the target being tried).
    pub model: String,
    /// The target's metric label (see [`Target::label`]).
    pub label: Arc<str>,
    /// The instance.
    pub provider: ProviderInstance,
    /// Every target of the route, in fallback order.
    pub chain: Arc<[Target]>,
    /// The failure classes that hand over to the next target.
    pub fallback_on: Arc<[FailureClass]>,
}

impl Resolved {
    /// `instance/model` of the target being tried, as retries are counted.
    pub(crate) fn target_name(&self) -> String {
        format!("{}/{}", self.instance, self.model)
    }

    /// This resolution, at `target` of its chain.
    pub(crate) fn at(&self, target: &Target) -> Self {
        Self {
            instance: target.instance.clone(),
            model: target.model.clone(),
            label: Arc::clone(&target.label),
            provider: target.provider.clone(),
            ..self.clone()
        }
    }
}

impl Gateway {
    /// Builds routes and provider instances from a configuration that passed
    /// [`Config::validate`]; fails on a rules file that cannot be loaded.
    /// Circuit changes, retries and refusals are reported nowhere (the server
    /// builds its gateway with a reporter).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Self::build(
            config,
            ResilienceReporter::without_metrics(AuditClient::disabled(crate::SERVICE)),
        )
    }

    /// As [`Self::from_config`], reporting circuit changes, retries and
    /// rate-limit refusals to `reporter`.
    pub(crate) fn build(
        config: &Config,
        reporter: ResilienceReporter,
    ) -> Result<Self, ConfigError> {
        let providers = crate::providers::build_all(&config.providers)?;
        let mut routes = BTreeMap::new();
        let circuits = Circuits::new(config.circuit_breaker.clone(), reporter.clone());
        for (name, route) in &config.routes {
            let mut chain = Vec::new();
            for (field, target) in route.chain() {
                let (instance, model) = split_target(target).ok_or_else(|| {
                    ConfigError::new(
                        format!("routes.{name}.{field}"),
                        format!("`{target}` is not `provider/model`"),
                    )
                })?;
                let provider = providers.get(instance).cloned().ok_or_else(|| {
                    ConfigError::new(
                        format!("routes.{name}.{field}"),
                        format!("provider `{instance}` is not configured"),
                    )
                })?;
                // Made now, so their state shows before the first call.
                let (circuit, label) = circuits.of(instance, model, true);
                chain.push(Target {
                    circuit,
                    label,
                    instance: instance.to_owned(),
                    model: model.to_owned(),
                    provider,
                });
            }
            routes.insert(
                name.clone(),
                Route {
                    chain: chain.into(),
                    fallback_on: route.fallback_on.clone().into(),
                    description: route.description.clone(),
                },
            );
        }
        Ok(Self {
            default_route: config.default_route.clone(),
            routes,
            providers,
            prices: config.prices.clone(),
            circuits,
            retries: Retries::new(&config.retry),
            slow_call: config.log.slow_call_threshold,
            limits: Arc::new(Limits::new(config, reporter.clone())),
            budgets: Arc::new(Budgets::new(
                &config.budgets,
                &config.storage,
                reporter.clone(),
            )),
            reporter,
        })
    }

    /// The provider instances.
    pub(crate) fn providers(&self) -> impl Iterator<Item = &ProviderInstance> {
        self.providers.values()
    }

    /// The price of a call resolved to `resolved`: by the model requested,
    /// else by the model the provider reported.
    fn price(&self, resolved: &Resolved, reported_model: &str) -> Option<Price> {
        price_of(&self.prices, &resolved.instance, &resolved.model)
            .or_else(|| price_of(&self.prices, &resolved.instance, reported_model))
    }

    /// The retry settings every call's attempt loop follows, and the
    /// budget they share.
    pub(crate) fn retries(&self) -> &Retries {
        &self.retries
    }

    /// Where retries and fallbacks are counted (with circuit changes and
    /// rate-limit refusals).
    pub(crate) fn reporter(&self) -> &ResilienceReporter {
        &self.reporter
    }

    /// Successful calls that took at least this long are logged at info.
    pub(crate) fn slow_call(&self) -> std::time::Duration {
        self.slow_call
    }

    /// The token and cost budgets per tenant and key.
    pub(crate) fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    /// The rate limits per tenant and route.
    pub(crate) fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// `usage` with its estimated cost (absent when the model has no price).
    pub(crate) fn priced(
        &self,
        resolved: &Resolved,
        reported_model: &str,
        mut usage: Usage,
    ) -> Usage {
        usage.estimated_cost_usd = self
            .price(resolved, reported_model)
            .map(|price| price.cost_usd(usage.input_tokens, usage.output_tokens));
        usage
    }

    /// Resolves a request's `model`: empty = the default route; a route name;
    /// or `instance/model`.
    pub(crate) fn resolve(&self, requested: &str) -> Result<Resolved, Status> {
        let requested = if requested.is_empty() {
            self.default_route.as_str()
        } else {
            requested
        };
        let (route, chain, fallback_on) = if let Some(route) = self.routes.get(requested) {
            (
                requested.to_owned(),
                Arc::clone(&route.chain),
                Arc::clone(&route.fallback_on),
            )
        } else if let Some((instance, model)) = split_target(requested) {
            let Some(provider) = self.providers.get(instance) else {
                return Err(Status::not_found(format!(
                    "provider {} (from model {}) is not configured; configured providers: {}",
                    quote(instance),
                    quote(requested),
                    join_names(self.providers.keys())
                )));
            };
            if model.is_empty() {
                return Err(invalid_argument([(
                    "model",
                    format!(
                        "{} names no model after `{}/`",
                        quote(requested),
                        quote(instance)
                    ),
                )]));
            }
            let (circuit, label) = self.circuits.of(instance, model, false);
            let target = Target {
                circuit,
                label,
                instance: instance.to_owned(),
                model: model.to_owned(),
                provider: provider.clone(),
            };
            (String::new(), Arc::from([target]), Arc::from([]))
        } else {
            return Err(Status::not_found(format!(
                "model route {} is not configured; routes: {}; or address a provider directly as `provider/model` with provider one of: {}",
                quote(requested),
                join_names(self.routes.keys()),
                join_names(self.providers.keys())
            )));
        };
        let first = chain
            .first()
            .cloned()
            .ok_or_else(|| Status::internal(format!("route `{route}` has no target")))?;
        Ok(Resolved {
            route,
            instance: first.instance,
            model: first.model,
            label: first.label,
            provider: first.provider,
            chain,
            fallback_on,
        })
    }

    /// One page of ListModels: the routes `allowed` lets through, in name
    /// order, after the page token's route.
    pub(crate) fn list_models(
        &self,
        request: &ListModelsRequest,
        allowed: impl Fn(&str) -> bool,
    ) -> Result<ListModelsResponse, Status> {
        // ListModels has no filters: every token is bound to the same
        // (empty) filter, and its position is the last route name served.
        let page = Page::<String>::from_request(
            MODEL_PAGES,
            request.page_size,
            &request.page_token,
            FilterHash::hasher().finish(),
        )?;
        let after = page.after().map_or(std::ops::Bound::Unbounded, |after| {
            std::ops::Bound::Excluded(after.clone())
        });
        let mut models = self
            .routes
            .range::<String, _>((after, std::ops::Bound::Unbounded))
            .filter(|(name, _)| allowed(name))
            .take(page.fetch_size())
            .map(|(name, route)| self.model(name, route))
            .collect::<Vec<_>>();
        let next_page_token = page.finish(&mut models, |model| model.name.clone());
        Ok(ListModelsResponse {
            models,
            next_page_token,
        })
    }

    fn model(&self, name: &str, route: &Route) -> Model {
        let targets: Vec<ModelTarget> = route
            .chain
            .iter()
            .map(|target| {
                let (instance_name, model) = (&target.instance, &target.model);
                let instance = Some(&target.provider);
                let price = price_of(&self.prices, instance_name, model);
                let state = target
                    .circuit
                    .as_ref()
                    .map_or(CircuitState::Closed, CircuitBreaker::state);
                let circuit_state = match state {
                    CircuitState::Closed => v1::CircuitState::Closed,
                    CircuitState::Open => v1::CircuitState::Open,
                    CircuitState::HalfOpen => v1::CircuitState::HalfOpen,
                };
                ModelTarget {
                    provider: instance_name.clone(),
                    provider_kind: instance
                        .map(|instance| instance.config.kind.as_str().to_owned())
                        .unwrap_or_default(),
                    model: model.clone(),
                    circuit_state: circuit_state.into(),
                    supports_tools: true,
                    context_window_tokens: 0,
                    input_usd_per_million_tokens: price.map(|price| price.input_per_million_usd),
                    output_usd_per_million_tokens: price.map(|price| price.output_per_million_usd),
                }
            })
            .collect();
        let available = targets.iter().any(|target| {
            target.circuit_state != v1::CircuitState::Open as i32
                && self
                    .providers
                    .get(&target.provider)
                    .is_some_and(|instance| instance.config.key_available())
        });
        Model {
            name: name.to_owned(),
            description: route.description.clone(),
            targets,
            is_default: name == self.default_route,
            available,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    fn gateway(routes: usize) -> Gateway {
        let mut config = Config::default();
        for index in 0..routes {
            config.routes.insert(
                format!("r{index:02}"),
                RouteConfig::new("scripted/demo", ""),
            );
        }
        Gateway::from_config(&config).unwrap()
    }

    #[test]
    fn models_resolve_by_route_or_directly() {
        let gateway = gateway(0);
        let resolved = gateway.resolve("").unwrap();
        assert_eq!(
            (
                resolved.route.as_str(),
                resolved.instance.as_str(),
                resolved.model.as_str()
            ),
            ("default", "scripted", "demo")
        );
        let resolved = gateway.resolve("openai/gpt-4o-mini").unwrap();
        assert_eq!(
            (
                resolved.route.as_str(),
                resolved.instance.as_str(),
                resolved.model.as_str()
            ),
            ("", "openai", "gpt-4o-mini")
        );
        let err = gateway.resolve("nope/x").unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(
            err.message().contains("anthropic, openai, scripted"),
            "{}",
            err.message()
        );
        let err = gateway.resolve("gpt-5").unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains("default, fast"), "{}", err.message());
        assert_eq!(
            gateway.resolve("openai/").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn list_models_pages_in_name_order() {
        let gateway = gateway(5);
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let page = gateway
                .list_models(
                    &ListModelsRequest {
                        page_size: 3,
                        page_token: token.clone(),
                    },
                    |_| true,
                )
                .unwrap();
            assert!(page.models.len() <= 3);
            names.extend(page.models.into_iter().map(|model| model.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            names,
            ["default", "fast", "r00", "r01", "r02", "r03", "r04"]
        );

        let allowed = gateway
            .list_models(&ListModelsRequest::default(), |route| {
                ["fast", "r03"].contains(&route)
            })
            .unwrap();
        let names: Vec<_> = allowed.models.into_iter().map(|model| model.name).collect();
        assert_eq!(names, ["fast", "r03"]);

        let err = gateway
            .list_models(
                &ListModelsRequest {
                    page_size: -1,
                    page_token: String::new(),
                },
                |_| true,
            )
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = gateway
            .list_models(
                &ListModelsRequest {
                    page_size: 0,
                    page_token: "garbage".into(),
                },
                |_| true,
            )
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
