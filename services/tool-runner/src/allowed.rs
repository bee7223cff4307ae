//! Which tools a caller may use: the `tools` allow-list of the verified
//! identity (its key's and its tenant's), checked where the call is made.
//!
//! ExecuteTool and ExecuteToolStream ask [`ToolAccess::check`] before the
//! call is admitted, so a refused tool never runs: PERMISSION_DENIED naming
//! the tool, counted in `agentmesh_auth_decisions_total{result="refused",
//! reason="tool_not_allowed"}` and audited as an AUTHORIZATION denial by
//! the host's access control (its decision sink is the audit producer).
//! ListTools shows only the tools the caller may use ([`ToolAccess::allows`]).
//! A call with no identity (no access control in front, as in unit tests)
//! is not restricted.

use std::net::SocketAddr;
use std::sync::Arc;

use agentmesh_auth::Identity;
use agentmesh_kit::RequestContext;
use agentmesh_kit::auth::AccessControl;
use tonic::Status;

/// Longest tool name recorded in an audit event (a longer one is unknown
/// anyway, and is cut).
pub(crate) const MAX_AUDITED_NAME: usize = 128;

/// The reason a refusal is counted and audited under.
const TOOL_NOT_ALLOWED: &str = "tool_not_allowed";

/// The allow-list check, with where its refusals are recorded.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolAccess {
    access: Option<Arc<AccessControl>>,
}

/// Who a call is for, as the auth layer verified it.
pub(crate) fn identity_of<T>(request: &tonic::Request<T>) -> Option<Identity> {
    RequestContext::from_request(request)
        .or_else(RequestContext::current)
        .and_then(|context| context.identity().cloned())
}

impl ToolAccess {
    /// Records refusals through `access` (the host's).
    pub(crate) fn new(access: Arc<AccessControl>) -> Self {
        Self {
            access: Some(access),
        }
    }

    /// Whether `identity` may use `tool`.
    pub(crate) fn allows(identity: Option<&Identity>, tool: &str) -> bool {
        identity.is_none_or(|identity| identity.allow.tools.allows(tool))
    }

    /// PERMISSION_DENIED naming `tool` when `identity` may not use it (the
    /// refusal counted and audited); whether the tool exists is not said.
    pub(crate) fn check(
        &self,
        identity: Option<&Identity>,
        tool: &str,
        method: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(), Status> {
        let Some(identity) = identity.filter(|identity| !Self::allows(Some(identity), tool)) else {
            return Ok(());
        };
        // The name is the caller's input: cut before it is recorded.
        let name = agentmesh_kit::text::truncate_bytes(tool, MAX_AUDITED_NAME);
        if let Some(access) = &self.access {
            access.refuse_resource(identity, method, TOOL_NOT_ALLOWED, &name, peer);
        }
        let allowed = identity
            .allow
            .tools
            .names()
            .map(|names| names.join(", "))
            .unwrap_or_default();
        Err(Status::permission_denied(format!(
            "tool {name:?} is not allowed for this tenant or key ({}); allowed tools: {}",
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
    fn only_listed_tools_pass_and_a_refusal_names_the_tool() {
        let mut identity = Identity::unauthenticated("acme", "alice");
        let access = ToolAccess::default();
        access
            .check(Some(&identity), "read_file", "/m", None)
            .unwrap();
        access.check(None, "read_file", "/m", None).unwrap();
        identity.allow = AllowLists {
            tools: AllowList::only(["calculator"]),
            ..AllowLists::any()
        };
        access
            .check(Some(&identity), "calculator", "/m", None)
            .unwrap();
        let refused = access
            .check(Some(&identity), "read_file", "/m", None)
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("\"read_file\""),
            "{}",
            refused.message()
        );
        assert!(refused.message().contains("allowed tools: calculator"));
        assert!(!ToolAccess::allows(Some(&identity), "read_file"));
    }
}
