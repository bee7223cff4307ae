//! Rate limits per tenant and per route: the settings only; the limiters
//! that enforce them are built from these in [`crate::resilience`].

use std::collections::BTreeMap;

use agentmesh_resilience::Limit;
use serde::{Deserialize, Serialize};

/// Rate limits on requests and tokens (input + output) per minute; 0 = none.
///
/// ```toml
/// [llm_gateway.rate_limits.tenant]            # every tenant, each on its own
/// requests_per_minute = 600
/// tokens_per_minute = 2000000
/// [llm_gateway.rate_limits.tenants.acme]      # one tenant's own limit
/// requests_per_minute = 6000
/// [llm_gateway.rate_limits.routes.default]    # one route, all tenants together
/// tokens_per_minute = 10000000
/// ```
///
/// The state is in this process's memory unless `shared_limits` names a
/// database: then replicas share it, and a key's limit holds across them.
/// Without it, with N replicas behind a load balancer a key may get up to N
/// times its limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// The limit of each tenant without its own entry in `tenants`.
    pub tenant: Limit,
    /// Limits of named tenants (the `x-agentmesh-tenant` value; `-` for calls
    /// without a tenant).
    pub tenants: BTreeMap<String, Limit>,
    /// The limit of each route without its own entry in `routes` (calls
    /// addressed as `provider/model` count under that name).
    pub route: Limit,
    /// Limits of named routes.
    pub routes: BTreeMap<String, Limit>,
}
