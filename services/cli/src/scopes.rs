//! `agentmesh auth scopes`: what each RPC of each service asks of its
//! caller.
//!
//! Every method of every service comes from the built-in proto
//! descriptors, and its scope from the service's own table (`SCOPES` in
//! each service's crate, the one its server enforces), so a new RPC shows
//! up here, as `authenticated` until its table names a scope. Health checks
//! are always exempt, server reflection by default. Then the scopes
//! themselves, with what each allows. As a table, JSON (one document) or
//! Markdown (for the docs).

use std::io::Write as _;
use std::process::ExitCode;

use agentmesh_auth::{Scope, ScopeTable};
use anyhow::Context as _;
use prost_reflect::DescriptorPool;
use serde_json::json;

use crate::output::table;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuthCommand {
    /// Print the scope each RPC of each service needs.
    Scopes {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
}

/// How the listing is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// One JSON document: `methods` and `scopes`.
    Json,
    /// Markdown tables.
    Markdown,
}

/// Every service's table, in port order.
const TABLES: [ScopeTable; 5] = [
    agentmesh_orchestrator::SCOPES,
    agentmesh_llm_gateway::SCOPES,
    agentmesh_tool_runner::SCOPES,
    agentmesh_audit::SCOPES,
    agentmesh_alerting::SCOPES,
];

/// What one method asks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    service: String,
    method: String,
    /// The scope, `none` or `authenticated`.
    requires: String,
    note: &'static str,
}

fn rows() -> anyhow::Result<Vec<Row>> {
    let pool = DescriptorPool::decode(agentmesh_proto::FILE_DESCRIPTOR_SET)
        .context("the built-in proto descriptors do not load")?;
    let mut rows = Vec::new();
    for scopes in TABLES {
        let service = pool
            .get_service_by_name(scopes.service)
            .with_context(|| format!("{} is missing from the descriptors", scopes.service))?;
        for method in service.methods() {
            let (requires, note) = match scopes.scope_of(method.name()) {
                Some(scope) => (scope.as_str().to_owned(), ""),
                None => (
                    "authenticated".to_owned(),
                    "no scope declared: any valid credential",
                ),
            };
            rows.push(Row {
                service: scopes.service.to_owned(),
                method: method.name().to_owned(),
                requires,
                note,
            });
        }
    }
    for (service, method, note) in [
        (
            "grpc.health.v1.Health",
            "*",
            "always exempt (probes carry no credentials)",
        ),
        (
            "grpc.reflection.v1.ServerReflection",
            "*",
            "exempt by default (auth.reflection_exempt)",
        ),
    ] {
        rows.push(Row {
            service: service.to_owned(),
            method: method.to_owned(),
            requires: "none".to_owned(),
            note,
        });
    }
    Ok(rows)
}

pub(crate) fn auth(command: AuthCommand) -> anyhow::Result<ExitCode> {
    let AuthCommand::Scopes { output } = command;
    let rows = rows()?;
    let text = match output {
        Format::Table => {
            let methods: Vec<Vec<String>> = rows
                .iter()
                .map(|row| {
                    vec![
                        row.service.clone(),
                        row.method.clone(),
                        row.requires.clone(),
                        row.note.to_owned(),
                    ]
                })
                .collect();
            let scopes: Vec<Vec<String>> = Scope::ALL
                .iter()
                .map(|scope| vec![scope.as_str().to_owned(), scope.describe().to_owned()])
                .collect();
            format!(
                "{}\n{}",
                table(&["SERVICE", "METHOD", "REQUIRES", "NOTE"], &methods),
                table(&["SCOPE", "ALLOWS"], &scopes)
            )
        }
        Format::Json => {
            let methods: Vec<_> = rows
                .iter()
                .map(|row| {
                    json!({
                        "service": row.service,
                        "method": row.method,
                        "requires": row.requires,
                        "note": row.note,
                    })
                })
                .collect();
            let scopes: Vec<_> = Scope::ALL
                .iter()
                .map(|scope| json!({"scope": scope.as_str(), "allows": scope.describe()}))
                .collect();
            format!("{}\n", json!({"methods": methods, "scopes": scopes}))
        }
        Format::Markdown => markdown(&rows),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn markdown(rows: &[Row]) -> String {
    let mut text = String::from("| Service | Method | Requires | Note |\n|---|---|---|---|\n");
    for row in rows {
        text.push_str(&format!(
            "| `{}` | `{}` | `{}` | {} |\n",
            row.service, row.method, row.requires, row.note
        ));
    }
    text.push_str("\n| Scope | Allows |\n|---|---|\n");
    for scope in Scope::ALL {
        text.push_str(&format!(
            "| `{}` | {} |\n",
            scope.as_str(),
            scope.describe()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_every_service_has_a_declared_scope() {
        let rows = rows().unwrap();
        let undeclared: Vec<String> = rows
            .iter()
            .filter(|row| row.requires == "authenticated")
            .map(|row| format!("{}/{}", row.service, row.method))
            .collect();
        assert!(
            undeclared.is_empty(),
            "methods without a scope: {undeclared:?}"
        );
        assert!(
            rows.iter()
                .any(|row| row.service == "agentmesh.audit.v1.AuditService"
                    && row.method == "Record"
                    && row.requires == "audit:write")
        );
        // Every table names only methods the contract has.
        for scopes in TABLES {
            for (method, _) in scopes.methods {
                assert!(
                    rows.iter()
                        .any(|row| row.service == scopes.service && row.method == *method),
                    "{}/{method} is not in the contract",
                    scopes.service
                );
            }
        }
    }
}
