//! Authorization by RPC: each service declares one [`ScopeTable`] saying
//! which scope each of its methods needs; a [`Policy`] holds the tables of
//! the services a process serves and answers, for a call's path, what it
//! requires.
//!
//! What a table cannot say (whose run it is, which tenant's events, which
//! tool or route) is checked by the handlers against the [`Identity`]
//! (`crate::identity`): tenant isolation and allow-lists live where the
//! resource is.
//!
//! [`Identity`]: crate::identity::Identity

use crate::scope::Scope;

/// The scope each method of one gRPC service needs.
#[derive(Debug, Clone, Copy)]
pub struct ScopeTable {
    /// The full service name, e.g. `agentmesh.audit.v1.AuditService`.
    pub service: &'static str,
    /// `(method, scope)` for every method of the service.
    pub methods: &'static [(&'static str, Scope)],
}

impl ScopeTable {
    /// The scope `method` (its bare name) needs, if the table lists it.
    pub fn scope_of(&self, method: &str) -> Option<Scope> {
        self.methods
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, scope)| *scope)
    }
}

/// What a call must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Nothing: health checks (kubelet probes carry no credentials), and
    /// reflection when exempt.
    Exempt,
    /// A valid credential with this scope.
    Scope(Scope),
    /// A valid credential: a service no table lists (the server answers
    /// UNIMPLEMENTED to it, but only to a caller it knows).
    Authenticated,
}

/// The tables of the services one process serves.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    tables: Vec<ScopeTable>,
    reflection_exempt: bool,
}

/// The health service: always exempt.
const HEALTH: &str = "grpc.health.v1.Health";
/// The reflection services (v1 and v1alpha share the prefix).
const REFLECTION: &str = "grpc.reflection.";

impl Policy {
    /// A policy over `tables`.
    pub fn new(tables: impl IntoIterator<Item = ScopeTable>, reflection_exempt: bool) -> Self {
        Self {
            tables: tables.into_iter().collect(),
            reflection_exempt,
        }
    }

    /// Adds a table.
    pub fn add(&mut self, table: ScopeTable) {
        self.tables.push(table);
    }

    /// What a call to `path` (`/package.Service/Method`) must show.
    pub fn requirement(&self, path: &str) -> Requirement {
        let Some((service, method)) = path.strip_prefix('/').and_then(|path| path.split_once('/'))
        else {
            return Requirement::Authenticated;
        };
        if service == HEALTH || (self.reflection_exempt && service.starts_with(REFLECTION)) {
            return Requirement::Exempt;
        }
        match self.tables.iter().find(|table| table.service == service) {
            // A method the service's table forgot fails closed: only an
            // admin may call it until the table says otherwise.
            Some(table) => Requirement::Scope(table.scope_of(method).unwrap_or(Scope::Admin)),
            None => Requirement::Authenticated,
        }
    }

    /// The tables, for `agentmesh auth scopes` and the docs.
    pub fn tables(&self) -> &[ScopeTable] {
        &self.tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: ScopeTable = ScopeTable {
        service: "agentmesh.audit.v1.AuditService",
        methods: &[("Query", Scope::AuditRead), ("Record", Scope::AuditWrite)],
    };

    #[test]
    fn paths_map_to_their_requirement() {
        let policy = Policy::new([TABLE], true);
        assert_eq!(
            policy.requirement("/agentmesh.audit.v1.AuditService/Query"),
            Requirement::Scope(Scope::AuditRead)
        );
        assert_eq!(
            policy.requirement("/agentmesh.audit.v1.AuditService/Nope"),
            Requirement::Scope(Scope::Admin),
            "a method missing from its service's table fails closed"
        );
        assert_eq!(
            policy.requirement("/agentmesh.other.v1.Other/Call"),
            Requirement::Authenticated
        );
        assert_eq!(
            policy.requirement("/grpc.health.v1.Health/Check"),
            Requirement::Exempt
        );
        assert_eq!(
            policy.requirement("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Requirement::Exempt
        );
        assert_eq!(policy.requirement("garbage"), Requirement::Authenticated);
        let strict = Policy::new([TABLE], false);
        assert_eq!(
            strict.requirement("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Requirement::Authenticated
        );
    }
}
