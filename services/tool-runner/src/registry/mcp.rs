//! The registry's part for MCP servers: the servers built (and checked)
//! from `[tool_runner.mcp_servers]`, each with its tools as last listed
//! ([`McpSource`]); each tool a server lists is made a registered tool —
//! its name prefixed, its input schema compiled as a configured tool's is,
//! its own bulkhead and circuit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use agentmesh_kit::ConfigError;
use agentmesh_kit::ident::{MAX_IDENTIFIER_LEN, check_identifier_setting, is_identifier};
use agentmesh_proto::tools::v1::{self, ToolKind};
use agentmesh_resilience::{CircuitBreaker, CircuitConfig};
use serde_json::Value;

use super::{
    Implementation, RegisteredTool, bulkhead, compile, limits, max_concurrency, own_timeout,
    proto_duration,
};
use crate::config::Config;
use crate::mcp::McpServer;

/// Tools taken from one server at most (the rest are left out, logged).
const MAX_TOOLS: usize = 1000;
/// The label naming a tool's MCP server in ListTools.
const SERVER_LABEL: &str = "mcp.server";
/// The label with the server's own name of the tool.
const REMOTE_NAME_LABEL: &str = "mcp.tool";

/// How a tool of an MCP server runs: which server, under which name.
#[derive(Debug)]
pub(crate) struct McpTool {
    pub(crate) server: Arc<McpServer>,
    /// The server's name of the tool.
    pub(crate) remote: String,
}

/// One MCP server as the registry sees it: the server, what each of its
/// tools gets, and its tools as last listed.
#[derive(Debug)]
pub(crate) struct McpSource {
    pub(crate) server: Arc<McpServer>,
    timeout: Duration,
    max_concurrency: u32,
    max_queued: u32,
    circuit_breaker: CircuitConfig,
    /// Names of the configured tools, which its tools may not take.
    reserved: Arc<BTreeSet<String>>,
    /// Its tools by full (prefixed) name.
    tools: RwLock<Arc<BTreeMap<String, Arc<RegisteredTool>>>>,
}

impl McpSource {
    /// Its tools, by full name, as last listed.
    pub(crate) fn tools(&self) -> Arc<BTreeMap<String, Arc<RegisteredTool>>> {
        Arc::clone(&self.tools.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `listed` its tools; a tool listed before keeps its guards
    /// (its circuit's state, its calls in flight), a new one is handed to
    /// `new_tool` (to watch its guards and give it metrics). Tools that
    /// cannot be offered are left out, logged. Answers how many it took.
    pub(crate) fn install(
        &self,
        listed: Vec<rmcp::model::Tool>,
        new_tool: &dyn Fn(&RegisteredTool),
    ) -> usize {
        let before = self.tools();
        let mut tools = BTreeMap::new();
        let mut left_out = Vec::new();
        for remote in &listed {
            let name = format!("{}{}", self.server.prefix, remote.name);
            if tools.len() >= MAX_TOOLS {
                left_out.push(format!("{name}: more than {MAX_TOOLS} tools"));
                continue;
            }
            if self.reserved.contains(&name) {
                left_out.push(format!("{name}: a configured tool has this name"));
                continue;
            }
            match self.tool(&name, remote, before.get(&name).map(|tool| &**tool)) {
                Ok(tool) => {
                    if !before.contains_key(&name) {
                        new_tool(&tool);
                    }
                    tools.insert(name, Arc::new(tool));
                }
                Err(reason) => left_out.push(format!("{name}: {reason}")),
            }
        }
        if !left_out.is_empty() {
            tracing::warn!(server = %self.server.name, left_out = %left_out.join("; "), "MCP server tools left out");
        }
        let count = tools.len();
        *self.tools.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tools);
        count
    }

    /// A tool `remote` of the server, called `name`; `previous` is the tool
    /// of that name from the last list, whose guards it keeps. The error
    /// says why the tool is left out.
    fn tool(
        &self,
        name: &str,
        remote: &rmcp::model::Tool,
        previous: Option<&RegisteredTool>,
    ) -> Result<RegisteredTool, String> {
        let remote_name = remote.name.as_ref();
        // What the gateway and model providers accept as a tool name.
        if !is_identifier(name) {
            return Err(format!(
                "the name is not 1 to {MAX_IDENTIFIER_LEN} ASCII letters, digits, `_` or `-`, which models require"
            ));
        }
        let parameters = Value::Object((*remote.input_schema).clone());
        let arguments =
            compile(&parameters).map_err(|message| format!("input schema {message}"))?;
        let (bulkhead, breaker) = match previous {
            Some(previous) => (previous.bulkhead.clone(), previous.breaker.clone()),
            None => (
                bulkhead(name, self.max_concurrency, self.max_queued),
                CircuitBreaker::new(format!("tool:{name}"), self.circuit_breaker.clone()),
            ),
        };
        Ok(RegisteredTool {
            descriptor: self.descriptor(name, remote, &parameters),
            timeout: self.timeout,
            implementation: Implementation::Mcp(McpTool {
                server: Arc::clone(&self.server),
                remote: remote_name.to_owned(),
            }),
            bulkhead,
            breaker,
            arguments,
            output: None,
        })
    }

    /// What ListTools shows of a tool.
    fn descriptor(&self, name: &str, remote: &rmcp::model::Tool, parameters: &Value) -> v1::Tool {
        let remote_name = remote.name.as_ref();
        let description = remote
            .description
            .as_deref()
            .filter(|text| !text.trim().is_empty())
            .or(remote.title.as_deref())
            .map_or_else(
                || format!("Tool `{remote_name}` of MCP server `{}`", self.server.name),
                str::to_owned,
            );
        v1::Tool {
            name: name.to_owned(),
            description,
            parameters_json: parameters.to_string(),
            output_schema_json: remote
                .output_schema
                .as_ref()
                .map(|schema| Value::Object((**schema).clone()).to_string())
                .unwrap_or_default(),
            kind: ToolKind::Mcp.into(),
            idempotent: remote
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.idempotent_hint)
                .unwrap_or(false),
            // It may report progress.
            streaming: true,
            timeout: proto_duration(self.timeout),
            max_concurrency: max_concurrency(self.max_concurrency),
            labels: [
                (SERVER_LABEL.to_owned(), self.server.name.clone()),
                (REMOTE_NAME_LABEL.to_owned(), remote_name.to_owned()),
            ]
            .into_iter()
            .collect(),
        }
    }
}

/// The enabled servers, checked: names, settings, and prefixes that no two
/// servers share (nor one begins another's), so a tool name belongs to one
/// server at most. `tools` are the configured tools, whose names a server's
/// tools may not take.
pub(super) fn sources(
    config: &Config,
    tools: &BTreeMap<String, Arc<RegisteredTool>>,
) -> Result<Vec<Arc<McpSource>>, ConfigError> {
    let reserved: Arc<BTreeSet<String>> = Arc::new(tools.keys().cloned().collect());
    let mut sources = Vec::new();
    let mut prefixes: Vec<(String, String)> = Vec::new();
    for (name, server) in &config.mcp_servers {
        let setting = format!("mcp_servers.{name}");
        check_identifier_setting(&setting, name)?;
        let timeout = own_timeout(server.timeout, config, &setting)?;
        let (max_concurrency, max_queued) =
            limits(server.max_concurrency, server.max_queued, config, &setting)?;
        let built = McpServer::new(name, server, config.max_output_bytes, &setting)?;
        if let Some((other, _)) = prefixes.iter().find(|(_, prefix)| {
            prefix.starts_with(built.prefix.as_str()) || built.prefix.starts_with(prefix.as_str())
        }) {
            return Err(ConfigError::new(
                format!("{setting}.prefix"),
                format!(
                    "`{}` overlaps the prefix of MCP server `{other}`: give each server a prefix that does not begin another's",
                    built.prefix
                ),
            ));
        }
        prefixes.push((name.clone(), built.prefix.clone()));
        if server.enabled {
            sources.push(Arc::new(McpSource {
                server: Arc::new(built),
                timeout,
                max_concurrency,
                max_queued,
                circuit_breaker: config.circuit_breaker.clone(),
                reserved: Arc::clone(&reserved),
                tools: RwLock::default(),
            }));
        }
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::mcp::McpServerConfig;
    use crate::registry::{Lookup, Registry};

    fn server(prefix: Option<&str>) -> McpServerConfig {
        McpServerConfig {
            command: "node".into(),
            prefix: prefix.map(str::to_owned),
            ..McpServerConfig::default()
        }
    }

    #[test]
    fn prefixes_must_not_overlap_and_settings_are_named() {
        let mut config = Config::default();
        config.mcp_servers.insert("everything".into(), server(None));
        config
            .mcp_servers
            .insert("more".into(), server(Some("every")));
        let err = Registry::from_config(&config).unwrap_err();
        assert_eq!(err.setting, "mcp_servers.more.prefix");

        let mut config = Config::default();
        config.mcp_servers.insert("bad name".into(), server(None));
        assert_eq!(
            Registry::from_config(&config).unwrap_err().setting,
            "mcp_servers.bad name"
        );
    }

    #[test]
    fn a_name_under_a_down_servers_prefix_is_unavailable() {
        let mut config = Config::default();
        config.mcp_servers.insert("everything".into(), server(None));
        let registry = Registry::from_config(&config).unwrap();
        let Lookup::ServerDown(down) = registry.lookup("everything_echo") else {
            panic!("not down");
        };
        let status = crate::resilience::server_down(&down, "everything_echo").unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("MCP server `everything` is down"),
            "{}",
            status.message()
        );
        assert!(matches!(registry.lookup("calculator"), Lookup::Tool(_)));
        assert!(matches!(registry.lookup("nothing_echo"), Lookup::Missing));
    }
}
