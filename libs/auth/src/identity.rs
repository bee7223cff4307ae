//! [`Identity`]: who a call is for, as verified by an authenticator, and
//! the headers that carry it from one service to the next.
//!
//! An identity is the end user's (tenant, subject, scopes, allow-lists and
//! the id of the credential they presented) plus, when a service of the mesh
//! makes the call for them, that service as the [`Actor`]. Between services
//! the end user's part travels in the `x-agentmesh-*` headers of
//! [`FORWARDED`]; a receiving service believes those headers only when the
//! caller itself authenticated as a service (see `crate::authenticate`).

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::scope::{Scope, ScopeSet};

/// The longest tenant name the mesh accepts.
pub const MAX_TENANT_BYTES: usize = 256;

/// Whether `name` may be a tenant: at most [`MAX_TENANT_BYTES`] visible
/// ASCII characters, no spaces ("" means no tenant). Tenants travel in
/// headers, label audit chains and name workspace directories, where a
/// newline, NUL or other control character would forge lines or paths.
pub fn is_tenant_name(name: &str) -> bool {
    name.len() <= MAX_TENANT_BYTES && name.bytes().all(|byte| byte.is_ascii_graphic())
}

/// The tenant header.
pub const TENANT: &str = "x-agentmesh-tenant";
/// The subject header.
pub const SUBJECT: &str = "x-agentmesh-subject";
/// The end user's scopes, space-separated.
pub const SCOPES: &str = "x-agentmesh-scopes";
/// The id of the credential the end user presented (never the secret).
pub const CREDENTIAL: &str = "x-agentmesh-credential";
/// The end user's allow-lists, `agents=a,b;routes=r;tools=t` (absent: no
/// restriction).
pub const ALLOW: &str = "x-agentmesh-allow";

/// The identity headers, in the order they are written.
pub const FORWARDED: [&str; 5] = [TENANT, SUBJECT, SCOPES, CREDENTIAL, ALLOW];

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Nobody was asked: the embedded single-user mode.
    None,
    /// An agentmesh API key (`authorization: Bearer am_…`).
    ApiKey,
    /// A JSON Web Token (`authorization: Bearer eyJ…`).
    Jwt,
    /// A client certificate.
    Mtls,
}

impl Mechanism {
    /// The name in audit events and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
            Self::Mtls => "mtls",
        }
    }
}

/// Names a credential may use; `None` allows every name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AllowList(Option<Arc<[String]>>);

impl AllowList {
    /// Allows every name.
    pub const fn any() -> Self {
        Self(None)
    }

    /// Allows only `names`.
    pub fn only(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(Some(names.into_iter().map(Into::into).collect()))
    }

    /// Whether `name` is allowed.
    pub fn allows(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|names| names.iter().any(|allowed| allowed == name))
    }

    /// Whether every name is allowed.
    pub fn is_any(&self) -> bool {
        self.0.is_none()
    }

    /// The names, when restricted.
    pub fn names(&self) -> Option<&[String]> {
        self.0.as_deref()
    }

    /// The names both lists allow.
    #[must_use]
    pub fn intersect(&self, other: &Self) -> Self {
        match (&self.0, &other.0) {
            (None, _) => other.clone(),
            (_, None) => self.clone(),
            (Some(mine), Some(theirs)) => Self::only(
                mine.iter()
                    .filter(|name| theirs.contains(name))
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

/// What an identity may use beyond its scopes: agent profiles, gateway
/// routes (and `provider/model` targets), tools.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AllowLists {
    /// Agent profiles runs may be started with.
    #[serde(default)]
    pub agents: AllowList,
    /// Gateway routes (or `provider/model` names) that may be called.
    #[serde(default)]
    pub routes: AllowList,
    /// Tools that may be called, directly or by a model during a run.
    #[serde(default)]
    pub tools: AllowList,
}

impl AllowLists {
    /// No restriction.
    pub fn any() -> Self {
        Self::default()
    }

    /// What both allow.
    #[must_use]
    pub fn intersect(&self, other: &Self) -> Self {
        Self {
            agents: self.agents.intersect(&other.agents),
            routes: self.routes.intersect(&other.routes),
            tools: self.tools.intersect(&other.tools),
        }
    }

    /// Whether nothing is restricted.
    pub fn is_any(&self) -> bool {
        self.agents.is_any() && self.routes.is_any() && self.tools.is_any()
    }

    /// The `x-agentmesh-allow` value; `None` when nothing is restricted.
    pub fn to_header(&self) -> Option<String> {
        let parts: Vec<String> = [
            ("agents", &self.agents),
            ("routes", &self.routes),
            ("tools", &self.tools),
        ]
        .into_iter()
        .filter_map(|(kind, list)| Some(format!("{kind}={}", list.names()?.join(","))))
        .collect();
        (!parts.is_empty()).then(|| parts.join(";"))
    }

    /// Reads an `x-agentmesh-allow` value; `None` when it is malformed.
    pub fn from_header(value: &str) -> Option<Self> {
        let mut lists = Self::any();
        for part in value.split(';').filter(|part| !part.is_empty()) {
            let (kind, names) = part.split_once('=')?;
            let list = AllowList::only(names.split(',').filter(|name| !name.is_empty()));
            match kind {
                "agents" => lists.agents = list,
                "routes" => lists.routes = list,
                "tools" => lists.tools = list,
                _ => return None,
            }
        }
        Some(lists)
    }
}

/// The service of the mesh that makes a call for an end user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The service credential's id.
    pub credential_id: String,
    /// The service's subject (e.g. `orchestrator`).
    pub subject: String,
    /// The service credential's own scopes.
    pub scopes: ScopeSet,
    /// How the service authenticated.
    pub mechanism: Mechanism,
}

/// Who a call is for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The tenant whose data the call may touch ("" for none).
    pub tenant: String,
    /// The user or workload, as the credential names it.
    pub subject: String,
    /// The end user's scopes.
    pub scopes: ScopeSet,
    /// The end user's allow-lists (the credential's and the tenant's, both
    /// applied).
    pub allow: AllowLists,
    /// The id of the end user's credential (an API key's id,
    /// `jwt:<iss>#<sub>`, `none`), never the secret.
    pub credential_id: String,
    /// How the end user authenticated.
    pub mechanism: Mechanism,
    /// The service making the call for the end user, if one is.
    pub actor: Option<Actor>,
}

impl Identity {
    /// The identity of calls in the embedded single-user mode: every scope,
    /// the tenant and subject the caller names (nobody is asked, so they are
    /// labels, not claims).
    pub fn unauthenticated(tenant: &str, subject: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            scopes: ScopeSet::all(),
            allow: AllowLists::any(),
            credential_id: "none".to_owned(),
            mechanism: Mechanism::None,
            actor: None,
        }
    }

    /// Whether the call may do what `scope` guards: the end user's scopes or,
    /// for a call a service makes for them, the service's own. (A run's model
    /// and tool calls are the orchestrator's to make; which models and tools
    /// is still bounded by the end user's allow-lists.)
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.allows(scope)
            || self
                .actor
                .as_ref()
                .is_some_and(|actor| actor.scopes.allows(scope))
    }

    /// Whether the end user may read and act across tenants.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(Scope::Admin)
    }

    /// Whether this is a service acting for itself (no end user forwarded):
    /// its scopes are its own.
    pub fn is_service(&self) -> bool {
        self.actor.is_none() && self.scopes.contains(Scope::Service)
    }

    /// Writes the end user's part into `headers` (replacing what is there),
    /// as a service sends it on.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let allow = self.allow.to_header();
        let scopes = self.scopes.to_string();
        let values = [
            Some(self.tenant.as_str()),
            Some(self.subject.as_str()),
            Some(scopes.as_str()),
            Some(self.credential_id.as_str()),
            allow.as_deref(),
        ];
        for (name, value) in FORWARDED.into_iter().zip(values) {
            headers.remove(name);
            if let Some(value) = value.filter(|value| !value.is_empty())
                && let Ok(value) = HeaderValue::from_str(value)
            {
                headers.insert(name, value);
            }
        }
    }

    /// Whether `headers` carry any identity header.
    pub fn has_forwarded_headers(headers: &HeaderMap) -> bool {
        FORWARDED.iter().any(|name| headers.contains_key(*name))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .field("scopes", &self.scopes)
            .field("credential_id", &self.credential_id)
            .field("mechanism", &self.mechanism)
            .field("actor", &self.actor.as_ref().map(|actor| &actor.subject))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_round_trip_through_the_header() {
        let lists = AllowLists {
            agents: AllowList::only(["support"]),
            routes: AllowList::any(),
            tools: AllowList::only(["calculator", "current_time"]),
        };
        let header = lists.to_header().unwrap();
        assert_eq!(header, "agents=support;tools=calculator,current_time");
        assert_eq!(AllowLists::from_header(&header), Some(lists));
        assert_eq!(AllowLists::any().to_header(), None);
        assert_eq!(AllowLists::from_header("bogus=x"), None);
        assert_eq!(AllowLists::from_header("tools"), None);
        let none = AllowLists::from_header("tools=").unwrap();
        assert!(!none.tools.allows("calculator"));
    }

    #[test]
    fn intersections_keep_what_both_allow() {
        let key = AllowList::only(["a", "b"]);
        let tenant = AllowList::only(["b", "c"]);
        assert_eq!(key.intersect(&tenant), AllowList::only(["b"]));
        assert_eq!(AllowList::any().intersect(&tenant), tenant);
        assert!(key.intersect(&AllowList::any()).allows("a"));
    }

    #[test]
    fn tenant_names_are_short_visible_ascii_without_control_characters() {
        for good in ["", "acme", "team-7_x", "a.b@c"] {
            assert!(is_tenant_name(good), "{good:?}");
        }
        let long = "a".repeat(MAX_TENANT_BYTES + 1);
        for bad in ["a\nb", "a\0b", "a b", "a\tb", "caf\u{e9}", long.as_str()] {
            assert!(!is_tenant_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_service_acting_for_a_user_lends_its_scopes_not_its_tenant() {
        let mut identity = Identity::unauthenticated("acme", "alice");
        identity.scopes = ScopeSet::EMPTY.with(Scope::RunsWrite);
        assert!(!identity.allows(Scope::LlmGenerate));
        identity.actor = Some(Actor {
            credential_id: "am_live_svc".into(),
            subject: "orchestrator".into(),
            scopes: ScopeSet::EMPTY
                .with(Scope::Service)
                .with(Scope::LlmGenerate),
            mechanism: Mechanism::ApiKey,
        });
        assert!(identity.allows(Scope::LlmGenerate));
        assert!(!identity.is_admin() && !identity.is_service());
        let mut headers = HeaderMap::new();
        identity.write_headers(&mut headers);
        assert_eq!(headers[TENANT], "acme");
        assert_eq!(headers[SCOPES], "runs:write");
        assert!(!headers.contains_key(ALLOW));
    }
}
