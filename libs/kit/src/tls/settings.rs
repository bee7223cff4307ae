//! The TLS settings: `[server.tls]` for the gRPC listener and
//! `[server.client_tls]` for the service's calls to `https://` peers. Both
//! are checked here without touching the files; the files are read when
//! the service starts (and again whenever they change).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config_error::ConfigError;

/// Whether the gRPC listener asks callers for a client certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for and, when sent, must chain to
    /// `client_ca_file`; callers without one still connect (and
    /// authenticate with a bearer).
    Optional,
    /// Every caller must present a certificate chaining to
    /// `client_ca_file`; others fail the handshake.
    Required,
}

/// `[server.tls]`: TLS on the gRPC listener. Absent: plain HTTP/2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTls {
    /// The server's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM bundle) that client certificates must chain
    /// to; needed for `client_auth = "optional"` or `"required"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// `none`, `optional` or `required`.
    pub client_auth: ClientAuth,
    /// How often the three files are checked for changes; a change is
    /// loaded for new connections (a broken one is logged and ignored).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// How long a TLS handshake may take before the connection is dropped.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for ServerTls {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: None,
            client_auth: ClientAuth::None,
            reload_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerTls {
    /// Checks the settings (not the files), naming them as `server.tls.*`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        required("server.tls.cert_file", &self.cert_file)?;
        required("server.tls.key_file", &self.key_file)?;
        if let Some(path) = &self.client_ca_file {
            required("server.tls.client_ca_file", path)?;
        }
        match (self.client_auth, &self.client_ca_file) {
            (ClientAuth::Optional | ClientAuth::Required, None) => {
                return Err(ConfigError::new(
                    "server.tls.client_ca_file",
                    "client_auth \"optional\" and \"required\" need the CA bundle client certificates must chain to",
                ));
            }
            (ClientAuth::None, Some(_)) => {
                return Err(ConfigError::new(
                    "server.tls.client_auth",
                    "client_ca_file is set but client_auth is \"none\": set \"optional\" or \"required\" (or remove client_ca_file)",
                ));
            }
            _ => {}
        }
        between(
            "server.tls.reload_interval",
            self.reload_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        between(
            "server.tls.handshake_timeout",
            self.handshake_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )
    }
}

/// `[server.client_tls]`: how the service's calls to `https://` peers are
/// secured (`http://` peers stay plain).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// CA certificates (PEM bundle) peers' certificates must chain to.
    /// Unset: the platform's trusted roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// This service's client certificate chain (PEM), for peers that ask
    /// for one (mTLS). Set with `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name peers' certificates are checked against instead of the
    /// host of their URL (e.g. when peers are called by IP address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Checks the settings (not the files), naming them as
    /// `server.client_tls.*`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (setting, path) in [
            ("server.client_tls.ca_file", &self.ca_file),
            ("server.client_tls.cert_file", &self.cert_file),
            ("server.client_tls.key_file", &self.key_file),
        ] {
            if let Some(path) = path {
                required(setting, path)?;
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "server.client_tls.key_file",
                    "cert_file is set: set the key of the client certificate too",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "server.client_tls.cert_file",
                    "key_file is set: set the client certificate too",
                ));
            }
            _ => {}
        }
        if let Some(name) = &self.server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err(ConfigError::new(
                "server.client_tls.server_name",
                format!("{name:?} is not a DNS name or IP address"),
            ));
        }
        Ok(())
    }
}

fn required(setting: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::new(setting, "must name a PEM file"));
    }
    Ok(())
}

fn between(
    setting: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            setting,
            format!(
                "must be between {} and {}",
                humantime_serde::re::humantime::format_duration(min),
                humantime_serde::re::humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}
