//! Identity and access of the embedded mesh.
//!
//! * One `[auth]` section of the mesh's file applies to all five services:
//!   a service takes it unless its own `[<service>.auth]` (or an
//!   `AGENTMESH_<SERVICE>__AUTH__…` variable) says otherwise
//!   ([`apply_shared`]). A file without service sections is every
//!   service's own already, `[auth]` included.
//! * When any service asks for credentials, the services must show one to
//!   each other: [`issue_service_keys`] makes a key for each service at
//!   start, with the scopes its calls need, known only to this process
//!   (never written to a file or printed). Every service accepts all five
//!   on top of its keys file, and presents its own to its peers.
//! * The command line's own calls then need the user's key
//!   ([`require_credential`]).

use std::path::Path;
use std::sync::Arc;

use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::KeyEntry;
use agentmesh_auth::keys::store::InMemoryKeys;
use agentmesh_auth::{AuthConfig, Scope, ScopeSet};
use agentmesh_kit::ConfigError;
use agentmesh_kit::config::{self, ServiceConfig};

use super::MeshConfigs;
use crate::credential::Credential;

/// The environment name of the embedded mesh's service keys
/// (`am_embedded_…`), so that one seen anywhere is recognised as such.
const SERVICE_KEY_ENV: &str = "embedded";

/// The shared `[auth]` table of a sectioned mesh file, if it has one,
/// checked. `None` for a file without one, or a flat file (whose `[auth]`
/// every service reads as its own anyway).
pub(super) fn shared(file: Option<&Path>) -> Result<Option<AuthConfig>, ConfigError> {
    let Some(path) = file else { return Ok(None) };
    if !config::has_service_section(path) {
        return Ok(None);
    }
    let Some(table) = read_table(path)?.remove("auth") else {
        return Ok(None);
    };
    let shared: AuthConfig = table.try_into().map_err(|err: toml::de::Error| {
        ConfigError::new(
            "auth",
            format!("{} (in {})", err.message().trim(), path.display()),
        )
    })?;
    shared
        .validate()
        .map_err(|err| ConfigError::new(format!("auth.{}", err.setting), err.problem))?;
    Ok(Some(shared))
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new("config", format!("cannot read {}: {err}", path.display()))
    })?;
    text.parse::<toml::Table>().map_err(|err| {
        ConfigError::new(
            "config",
            format!("{} is not valid TOML: {}", path.display(), err.message()),
        )
    })
}

/// Gives `config` the shared auth settings unless its own section of
/// `file` or its environment sets `auth`; then checks it again (the shared
/// `none` may not be served off loopback, for one).
pub(super) fn apply_shared<C: ServiceConfig>(
    config: &mut C,
    auth: impl FnOnce(&mut C) -> &mut AuthConfig,
    file: Option<&Path>,
    shared: Option<&AuthConfig>,
) -> Result<(), ConfigError> {
    let Some(shared) = shared else { return Ok(()) };
    let own_in_file = match file {
        Some(path) => read_table(path)?
            .get(C::SECTION)
            .and_then(toml::Value::as_table)
            .is_some_and(|section| section.contains_key("auth")),
        None => false,
    };
    let env_prefix = format!("{}AUTH__", config::env_prefix::<C>());
    let own_in_env = std::env::vars_os().any(|(name, _)| {
        name.to_str()
            .is_some_and(|name| name.starts_with(&env_prefix))
    });
    if own_in_file || own_in_env {
        return Ok(());
    }
    *auth(config) = shared.clone();
    config::validate(config)
}

/// What each service's own key may do: the calls it makes to its peers.
fn service_scopes(service: &str) -> ScopeSet {
    let scopes: &[Scope] = match service {
        // Model and tool calls of runs, the tool list, its audit events.
        "orchestrator" => &[
            Scope::LlmGenerate,
            Scope::ToolsRead,
            Scope::ToolsExecute,
            Scope::AuditWrite,
        ],
        // Rules read every tenant's audit trail; alerts are audited.
        "alerting" => &[Scope::AuditRead, Scope::Admin, Scope::AuditWrite],
        // The audit service calls nobody.
        "audit" => &[],
        // The gateway and the tool runner send audit events.
        _ => &[Scope::AuditWrite],
    };
    scopes.iter().copied().chain([Scope::Service]).collect()
}

/// Makes the services' in-memory keys when any service asks for
/// credentials; does nothing when none does (the default `none`).
pub(super) fn issue_service_keys(configs: &mut MeshConfigs) -> anyhow::Result<()> {
    let mut auths = configs.auths();
    if auths.iter().all(|(_, auth)| auth.is_none()) {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(auths.len());
    for (service, _) in &auths {
        let key = ApiKey::generate(SERVICE_KEY_ENV)
            .map_err(|err| anyhow::anyhow!("cannot make the embedded service keys: {err}"))?;
        let mut entry = KeyEntry::new(&key, "", service, service_scopes(service));
        entry.label = "embedded mesh service key (in memory only)".to_owned();
        keys.push((key, entry));
    }
    let accepted: Arc<[KeyEntry]> = keys.iter().map(|(_, entry)| entry.clone()).collect();
    for ((_, auth), (key, _)) in auths.iter_mut().zip(keys) {
        auth.in_memory_keys = Some(InMemoryKeys::new(key, Arc::clone(&accepted)));
    }
    Ok(())
}

/// Refuses to call a service that asks for credentials without one, with
/// what to do.
pub(crate) fn require_credential(auth: &AuthConfig, credential: &Credential) -> anyhow::Result<()> {
    if auth.is_none() || credential.is_some() {
        return Ok(());
    }
    let methods: Vec<&str> = auth.methods.iter().map(|method| method.as_str()).collect();
    anyhow::bail!(
        "the embedded mesh asks for credentials (auth.methods = {methods:?}): pass --api-key \
         (or set AGENTMESH_API_KEY) with a key of its keys file{}, or --token with a JWT",
        auth.keys_file
            .as_ref()
            .map(|path| format!(" {}", path.display()))
            .unwrap_or_default()
    )
}

impl MeshConfigs {
    /// Each service's name and auth settings.
    fn auths(&mut self) -> [(&'static str, &mut AuthConfig); 5] {
        [
            ("orchestrator", &mut self.orchestrator.auth),
            ("llm-gateway", &mut self.llm_gateway.auth),
            ("tool-runner", &mut self.tool_runner.auth),
            ("audit", &mut self.audit.auth),
            ("alerting", &mut self.alerting.auth),
        ]
    }

    /// Refuses to run the command line's calls without a credential when
    /// the orchestrator asks for one.
    pub(crate) fn require_credential(&self, credential: &Credential) -> anyhow::Result<()> {
        require_credential(&self.orchestrator.auth, credential)
    }
}
