//! Which model routes a caller may use: the `routes` allow-list of the
//! verified identity (its key's and its tenant's), checked where the call
//! is made.
//!
//! A call is checked once its `model` is resolved ([`crate::call`]): a
//! route by its name (the default route too, when `model` is empty), a
//! direct `provider/model` address by that text. A refused call is
//! PERMISSION_DENIED naming the route, counted in
//! `agentmesh_auth_decisions_total{result="refused",reason="route_not_allowed"}`
//! and audited as an AUTHORIZATION denial by the host's access control.
//! ListModels shows only allowed routes. A call with no identity (no access
//! control in front, as in unit tests) is not restricted.

use std::net::SocketAddr;
use std::sync::Arc;

use agentmesh_auth::Identity;
use agentmesh_kit::auth::AccessControl;
use tonic::Status;

/// The reason a refusal is counted and audited under.
const ROUTE_NOT_ALLOWED: &str = "route_not_allowed";

/// The allow-list check, with where its refusals are recorded.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteAccess {
    access: Option<Arc<AccessControl>>,
}

impl RouteAccess {
    /// Records refusals through `access` (the host's).
    pub(crate) fn new(access: Arc<AccessControl>) -> Self {
        Self {
            access: Some(access),
        }
    }

    /// Whether `identity` may call `route` (a route name or `provider/model`).
    pub(crate) fn allows(identity: Option<&Identity>, route: &str) -> bool {
        identity.is_none_or(|identity| identity.allow.routes.allows(route))
    }

    /// PERMISSION_DENIED naming `route` when `identity` may not call it
    /// (the refusal counted and audited).
    pub(crate) fn check(
        &self,
        identity: Option<&Identity>,
        route: &str,
        method: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(), Status> {
        let Some(identity) = identity.filter(|identity| !Self::allows(Some(identity), route))
        else {
            return Ok(());
        };
        if let Some(access) = &self.access {
            access.refuse_resource(identity, method, ROUTE_NOT_ALLOWED, route, peer);
        }
        let allowed = identity
            .allow
            .routes
            .names()
            .map(|names| names.join(", "))
            .unwrap_or_default();
        Err(Status::permission_denied(format!(
            "model route `{route}` is not allowed for this tenant or key ({}); allowed routes: {}",
            identity.credential_id,
            if allowed.is_empty() { "none" } else { &allowed }
        )))
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_auth::{AllowList, AllowLists};

    use super::*;

    #[test]
    fn only_listed_routes_pass_and_a_refusal_names_the_route() {
        let mut identity = Identity::unauthenticated("acme", "alice");
        let access = RouteAccess::default();
        access
            .check(Some(&identity), "default", "/m", None)
            .unwrap();
        access.check(None, "default", "/m", None).unwrap();
        identity.allow = AllowLists {
            routes: AllowList::only(["fast"]),
            ..AllowLists::any()
        };
        access.check(Some(&identity), "fast", "/m", None).unwrap();
        let refused = access
            .check(Some(&identity), "scripted/demo", "/m", None)
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("`scripted/demo`")
                && refused.message().contains("allowed routes: fast"),
            "{}",
            refused.message()
        );
    }
}
