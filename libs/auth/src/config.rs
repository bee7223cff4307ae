//! `[<service>.auth]` (and `[auth]` for the embedded mesh): which
//! authenticators run, where the keys file is, the service's own credential
//! for its calls to peers, and how decisions are audited.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::jwt::JwtConfig;
use crate::keys::store::InMemoryKeys;
use crate::mtls::{MtlsPrincipal, MtlsPrincipals};

/// An authenticator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Nobody is asked: the embedded single-user mode. Only on loopback
    /// unless `allow_none_off_loopback` forces it.
    None,
    /// API keys from the keys file.
    ApiKey,
    /// JWTs signed by a configured issuer.
    Jwt,
    /// Client certificates verified by the TLS listener, mapped to
    /// identities by `mtls_principals`.
    Mtls,
}

impl Method {
    /// The name in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
            Self::Mtls => "mtls",
        }
    }
}

/// Which successful authentications are audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSuccesses {
    /// The first use of each credential in each `audit_interval`.
    FirstUse,
    /// None: only failures and denials.
    Never,
}

/// The auth settings of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Authenticators, chosen by the credential's kind (an `am_…` bearer
    /// goes to `api_key`, a bearer shaped like a JWT — three base64url
    /// parts — to `jwt`, any other bearer is malformed). `none` stands
    /// alone.
    pub methods: Vec<Method>,
    /// The keys file (`api_key`).
    pub keys_file: Option<PathBuf>,
    /// How often the keys file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// JWT verification (`jwt`).
    pub jwt: JwtConfig,
    /// Whether gRPC server reflection answers without credentials (it
    /// reveals only the public contract).
    pub reflection_exempt: bool,
    /// Runs `none` on a non-loopback address anyway: anyone who can reach
    /// the port acts as any tenant. For a network you fully control only.
    pub allow_none_off_loopback: bool,
    /// A file holding this service's own credential (an API key with the
    /// `service` scope, or a JWT), presented on its calls to other services.
    /// Unset: the `AGENTMESH_SERVICE_CREDENTIAL` environment variable, if
    /// set. Re-read when it changes.
    pub credential_file: Option<PathBuf>,
    /// Which successes are audited.
    pub audit_successes: AuditSuccesses,
    /// Failed authentications of one credential from one peer within this
    /// interval are recorded as one audit event with a count.
    #[serde(with = "humantime_serde")]
    pub audit_interval: Duration,
    /// Failed authentications one peer address may make per minute; beyond
    /// them its calls are refused unchecked until the minute has passed.
    pub max_failures_per_minute: u32,
    /// Service keys known only in memory (the embedded mesh makes them at
    /// start): accepted on top of the keys file's, and the own one presented
    /// to peers instead of `credential_file`. Never read from or written to
    /// configuration.
    #[serde(skip)]
    pub in_memory_keys: Option<InMemoryKeys>,
    /// Client certificate names and the identities they stand for (`mtls`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mtls_principals: Vec<MtlsPrincipal>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            methods: vec![Method::None],
            keys_file: None,
            reload_interval: Duration::from_secs(5),
            jwt: JwtConfig::default(),
            reflection_exempt: true,
            allow_none_off_loopback: false,
            credential_file: None,
            audit_successes: AuditSuccesses::FirstUse,
            audit_interval: Duration::from_secs(10),
            max_failures_per_minute: 30,
            in_memory_keys: None,
            mtls_principals: Vec::new(),
        }
    }
}

/// A setting that cannot work, naming it (relative to the auth section).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth.{setting}: {problem}")]
pub struct AuthConfigError {
    /// The setting, e.g. `keys_file`.
    pub setting: String,
    /// What is wrong and what to do.
    pub problem: String,
}

impl AuthConfigError {
    fn new(setting: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.to_owned(),
            problem: problem.into(),
        }
    }
}

/// The name of the environment variable holding a service's credential when
/// no `credential_file` is set.
pub const CREDENTIAL_ENV: &str = "AGENTMESH_SERVICE_CREDENTIAL";

impl AuthConfig {
    /// Whether nobody is asked.
    pub fn is_none(&self) -> bool {
        self.methods == [Method::None]
    }

    /// Checks the settings that do not need the network address.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if self.methods.is_empty() {
            return Err(AuthConfigError::new(
                "methods",
                "name at least one of \"api_key\", \"jwt\", or [\"none\"] for the embedded single-user mode",
            ));
        }
        if self.methods.contains(&Method::None) && self.methods.len() > 1 {
            return Err(AuthConfigError::new(
                "methods",
                "\"none\" cannot be combined with other methods: a call without credentials would pass anyway",
            ));
        }
        if self.methods.contains(&Method::ApiKey) && self.keys_file.is_none() {
            return Err(AuthConfigError::new(
                "keys_file",
                "the api_key method needs a keys file (make one with `agentmesh keys create --file <path>`)",
            ));
        }
        if self.methods.contains(&Method::Jwt) {
            self.jwt.validate().map_err(|(setting, problem)| {
                AuthConfigError::new(&format!("jwt.{setting}"), problem)
            })?;
        }
        self.validate_mtls()?;
        if self.reload_interval < Duration::from_millis(100) {
            return Err(AuthConfigError::new(
                "reload_interval",
                "must be at least 100ms",
            ));
        }
        if self.audit_interval.is_zero() || self.audit_interval > Duration::from_secs(3600) {
            return Err(AuthConfigError::new(
                "audit_interval",
                "must be between 1ms and 1h",
            ));
        }
        if self.max_failures_per_minute == 0 {
            return Err(AuthConfigError::new(
                "max_failures_per_minute",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The `mtls` method needs principals, and principals need the method.
    fn validate_mtls(&self) -> Result<(), AuthConfigError> {
        MtlsPrincipals::new(&self.mtls_principals).map_err(|(index, setting, problem)| {
            AuthConfigError::new(&format!("mtls_principals[{index}].{setting}"), problem)
        })?;
        match (
            self.methods.contains(&Method::Mtls),
            self.mtls_principals.is_empty(),
        ) {
            (true, true) => Err(AuthConfigError::new(
                "mtls_principals",
                "the mtls method needs at least one [[auth.mtls_principals]] entry mapping a certificate name to an identity",
            )),
            (false, false) => Err(AuthConfigError::new(
                "methods",
                "[[auth.mtls_principals]] is set but \"mtls\" is not in auth.methods: add it, or remove the principals",
            )),
            _ => Ok(()),
        }
    }

    /// Checks that `none` is not served to the network unless forced; a
    /// forced one is logged loudly.
    pub fn check_listen_address(&self, host: std::net::IpAddr) -> Result<(), AuthConfigError> {
        if !self.is_none() || host.is_loopback() {
            return Ok(());
        }
        if self.allow_none_off_loopback {
            tracing::warn!(%host, "auth.methods is [\"none\"] on a non-loopback address: anyone who can reach this port acts as any tenant (auth.allow_none_off_loopback is set)");
            return Ok(());
        }
        Err(AuthConfigError::new(
            "methods",
            format!(
                "is [\"none\"] (nobody is asked who they are) while the service listens on {host}, which is not loopback: \
                 configure api_key or jwt, listen on 127.0.0.1, or set auth.allow_none_off_loopback = true to accept the risk"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_none_and_valid() {
        let config = AuthConfig::default();
        assert!(config.is_none());
        config.validate().unwrap();
        config
            .check_listen_address("127.0.0.1".parse().unwrap())
            .unwrap();
        config.check_listen_address("::1".parse().unwrap()).unwrap();
    }

    #[test]
    fn none_off_loopback_is_refused_unless_forced() {
        let mut config = AuthConfig::default();
        let err = config
            .check_listen_address("0.0.0.0".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.setting, "methods");
        assert!(err.problem.contains("allow_none_off_loopback"), "{err}");
        config.allow_none_off_loopback = true;
        config
            .check_listen_address("0.0.0.0".parse().unwrap())
            .unwrap();
    }

    #[test]
    fn inconsistent_methods_name_the_setting() {
        let config = AuthConfig {
            methods: vec![Method::None, Method::ApiKey],
            ..AuthConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "methods");
        let config = AuthConfig {
            methods: vec![Method::ApiKey],
            ..AuthConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "keys_file");
        let config = AuthConfig {
            methods: vec![Method::ApiKey, Method::Jwt],
            keys_file: Some("keys.toml".into()),
            ..AuthConfig::default()
        };
        // JWT settings are checked only when the method is on.
        assert_eq!(config.validate().unwrap_err().setting, "jwt.issuer");
        let config = AuthConfig {
            methods: vec![],
            ..AuthConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "methods");
    }
}
