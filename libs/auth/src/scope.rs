//! Scopes: what a credential may do, one per group of RPCs.
//!
//! The names are the contract's (DESIGN: "Identity"). A [`ScopeSet`] is a
//! bit set, so checking a scope on every call costs one AND.

use std::fmt;
use std::str::FromStr;

/// One permission a credential can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read runs and their events.
    RunsRead,
    /// Start and cancel runs.
    RunsWrite,
    /// Read agent profiles.
    AgentsRead,
    /// Call models through the gateway directly.
    LlmGenerate,
    /// List tools.
    ToolsRead,
    /// Call tools directly on the tool runner.
    ToolsExecute,
    /// Read the audit trail (own tenant; every tenant with `admin`).
    AuditRead,
    /// Record audit events (services only).
    AuditWrite,
    /// Read alerts, silences and rules (operators).
    AlertsRead,
    /// Fire alerts and manage silences (operators).
    AlertsWrite,
    /// Everything, across tenants.
    Admin,
    /// A service of the mesh: may act for the end user whose identity it
    /// forwards.
    Service,
}

impl Scope {
    /// Every scope, in the order of the contract.
    pub const ALL: [Self; 12] = [
        Self::RunsRead,
        Self::RunsWrite,
        Self::AgentsRead,
        Self::LlmGenerate,
        Self::ToolsRead,
        Self::ToolsExecute,
        Self::AuditRead,
        Self::AuditWrite,
        Self::AlertsRead,
        Self::AlertsWrite,
        Self::Admin,
        Self::Service,
    ];

    /// The scope's name, e.g. `runs:read`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RunsRead => "runs:read",
            Self::RunsWrite => "runs:write",
            Self::AgentsRead => "agents:read",
            Self::LlmGenerate => "llm:generate",
            Self::ToolsRead => "tools:read",
            Self::ToolsExecute => "tools:execute",
            Self::AuditRead => "audit:read",
            Self::AuditWrite => "audit:write",
            Self::AlertsRead => "alerts:read",
            Self::AlertsWrite => "alerts:write",
            Self::Admin => "admin",
            Self::Service => "service",
        }
    }

    /// What the scope allows, for `agentmesh auth scopes` and the docs.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::RunsRead => "read runs and follow their events",
            Self::RunsWrite => "start and cancel runs",
            Self::AgentsRead => "list and read agent profiles",
            Self::LlmGenerate => "call models through the gateway directly",
            Self::ToolsRead => "list tools",
            Self::ToolsExecute => "call tools directly on the tool runner",
            Self::AuditRead => "read the audit trail of the own tenant",
            Self::AuditWrite => "record audit events (services of the mesh)",
            Self::AlertsRead => "read alerts, silences and rules (operators)",
            Self::AlertsWrite => "fire alerts, create and delete silences (operators)",
            Self::Admin => "every scope, and reads across tenants",
            Self::Service => "a service of the mesh: may forward the identity it acts for",
        }
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of [`Scope::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: use one of {known}", known = known_scopes())]
pub struct UnknownScope(pub String);

fn known_scopes() -> String {
    Scope::ALL
        .iter()
        .map(|scope| scope.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == name)
            .ok_or_else(|| UnknownScope(name.to_owned()))
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet(u16);

impl ScopeSet {
    /// No scope.
    pub const EMPTY: Self = Self(0);

    /// Every scope (the embedded single-user mode, where nobody is asked).
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    /// The set with `scope` added.
    #[must_use]
    pub const fn with(self, scope: Scope) -> Self {
        Self(self.0 | scope.bit())
    }

    /// Whether the set holds `scope` itself (`admin` is not expanded: see
    /// [`Self::allows`]).
    pub const fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether the set allows what `scope` guards: it holds `scope`, or
    /// `admin` (which allows everything but acting as a service).
    pub const fn allows(self, scope: Scope) -> bool {
        self.contains(scope) || (self.contains(Scope::Admin) && !matches!(scope, Scope::Service))
    }

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in contract order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |scope| self.contains(*scope))
    }

    /// Parses a space- or comma-separated list (the OAuth `scope` claim, the
    /// `x-agentmesh-scopes` header); unknown names are errors.
    pub fn parse_list(text: &str) -> Result<Self, UnknownScope> {
        text.split([' ', ','])
            .filter(|name| !name.is_empty())
            .try_fold(Self::EMPTY, |set, name| Ok(set.with(name.parse()?)))
    }

    /// Parses a list, skipping names that are not scopes of agentmesh (a
    /// JWT from a shared identity provider carries other services' scopes).
    pub fn parse_list_lenient(text: &str) -> Self {
        text.split([' ', ','])
            .filter_map(|name| name.parse::<Scope>().ok())
            .fold(Self::EMPTY, Self::with)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Self {
        scopes.into_iter().fold(Self::EMPTY, Self::with)
    }
}

impl fmt::Display for ScopeSet {
    /// Space-separated, as the OAuth `scope` claim.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, scope) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

/// Stored and sent as the space-separated list.
impl serde::Serialize for ScopeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ScopeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_list(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeSet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        let err = "runs:delete".parse::<Scope>().unwrap_err();
        assert!(err.to_string().contains("runs:read"), "{err}");
    }

    #[test]
    fn lists_parse_with_spaces_or_commas() {
        let set = ScopeSet::parse_list("runs:read runs:write,audit:read").unwrap();
        assert!(set.contains(Scope::RunsRead) && set.contains(Scope::AuditRead));
        assert!(!set.contains(Scope::Admin));
        assert_eq!(set.to_string(), "runs:read runs:write audit:read");
        assert!(ScopeSet::parse_list("runs:read openid").is_err());
        assert_eq!(
            ScopeSet::parse_list_lenient("openid runs:read email"),
            ScopeSet::EMPTY.with(Scope::RunsRead)
        );
        assert_eq!(ScopeSet::parse_list("").unwrap(), ScopeSet::EMPTY);
    }

    #[test]
    fn admin_allows_everything_but_acting_as_a_service() {
        let admin = ScopeSet::EMPTY.with(Scope::Admin);
        assert!(admin.allows(Scope::AuditWrite));
        assert!(!admin.allows(Scope::Service));
        assert!(
            !ScopeSet::EMPTY
                .with(Scope::RunsRead)
                .allows(Scope::RunsWrite)
        );
        assert_eq!(ScopeSet::all().iter().count(), Scope::ALL.len());
    }
}
