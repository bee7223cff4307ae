//! [`ClientTlsFiles`]: tonic's client TLS settings for `https://` peers,
//! from `[server.client_tls]`. The files are read when the service starts
//! (a bad one stops it there, naming the setting) and read again when a
//! channel is made after they changed, so new channels pick up rotated
//! certificates; a change that does not load keeps the last good one.

use std::path::Path;
use std::sync::{Arc, Mutex};

use agentmesh_auth::file_stamp::FileStamp;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::acceptor::TlsFileError;
use super::settings::ClientTls;

/// The client TLS of a service's channels.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles {
    settings: ClientTls,
    loaded: Arc<Mutex<Loaded>>,
}

#[derive(Debug, Default)]
struct Loaded {
    stamps: Vec<Option<FileStamp>>,
    config: Option<ClientTlsConfig>,
}

impl ClientTlsFiles {
    /// Reads the files `settings` name.
    pub fn load(settings: &ClientTls) -> Result<Self, TlsFileError> {
        let config = build(settings)?;
        Ok(Self {
            settings: settings.clone(),
            loaded: Arc::new(Mutex::new(Loaded {
                stamps: stamps(settings),
                config: Some(config),
            })),
        })
    }

    /// The TLS settings for a new channel, re-read first when a file
    /// changed.
    pub fn config(&self) -> ClientTlsConfig {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = stamps(&self.settings);
        if loaded.config.is_none() || loaded.stamps != now {
            loaded.stamps = now;
            match build(&self.settings) {
                Ok(config) => loaded.config = Some(config),
                Err(err) => tracing::warn!(
                    error = %err,
                    "the changed client TLS files do not load; new channels keep the ones loaded before"
                ),
            }
        }
        loaded
            .config
            .clone()
            .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots())
    }
}

fn stamps(settings: &ClientTls) -> Vec<Option<FileStamp>> {
    [&settings.ca_file, &settings.cert_file, &settings.key_file]
        .into_iter()
        .flatten()
        .map(|path| FileStamp::of(path))
        .collect()
}

fn build(settings: &ClientTls) -> Result<ClientTlsConfig, TlsFileError> {
    let mut config = ClientTlsConfig::new();
    config = match &settings.ca_file {
        Some(path) => {
            // Parsed here so a bad bundle is named now, not at connect.
            super::acceptor::read_roots("server.client_tls.ca_file", path)?;
            config.ca_certificate(Certificate::from_pem(read(
                "server.client_tls.ca_file",
                path,
            )?))
        }
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
        super::acceptor::read_certificates("server.client_tls.cert_file", cert)?;
        super::acceptor::read_key("server.client_tls.key_file", key)?;
        config = config.identity(Identity::from_pem(
            read("server.client_tls.cert_file", cert)?,
            read("server.client_tls.key_file", key)?,
        ));
    }
    if let Some(name) = &settings.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|err| TlsFileError {
        setting,
        path: path.to_owned(),
        problem: format!("cannot read: {err}"),
    })
}
