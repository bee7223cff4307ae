//! [`ReloadingAcceptor`]: the rustls server configuration of the gRPC
//! listener, rebuilt from the certificate, key and client CA files whenever
//! one of them changes.
//!
//! The three files are read together and the whole configuration is
//! swapped at once (an [`ArcSwap`]), so a rotation that changes the
//! certificate and the CA it chains to lands as one. Every new connection
//! takes the configuration current at its accept; connections already open
//! keep theirs. A change that does not load (a half-written file, a key
//! that does not match the certificate) is logged and ignored: the last
//! good configuration stays until the files are right again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_auth::file_stamp::FileStamp;
use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::settings::{ClientAuth, ServerTls};

/// The ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

/// A TLS file that cannot be used, naming its setting (never the key's
/// contents).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{setting} {path}: {problem}")]
pub struct TlsFileError {
    /// The setting, e.g. `server.tls.cert_file`.
    pub setting: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
}

/// The server side of the listener's TLS, current as of the last check.
#[derive(Debug)]
pub struct ReloadingAcceptor {
    settings: ServerTls,
    current: ArcSwap<rustls::ServerConfig>,
    /// The stamps of the files as last looked at (loaded or not).
    seen: Mutex<Vec<Option<FileStamp>>>,
}

impl ReloadingAcceptor {
    /// Reads the files `settings` name and builds the configuration.
    pub fn load(settings: &ServerTls) -> Result<Self, TlsFileError> {
        let seen = stamps(settings);
        let config = build(settings)?;
        Ok(Self {
            settings: settings.clone(),
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
        })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// Reloads when a file changed since the last look: `Ok(true)` when a
    /// new configuration is in place, `Ok(false)` when nothing changed, the
    /// error when the change does not load (the old configuration stays).
    pub fn reload_if_changed(&self) -> Result<bool, TlsFileError> {
        let now = stamps(&self.settings);
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return Ok(false);
            }
            // Remembered even if loading fails, so one bad file is reported
            // once, not at every check.
            *seen = now;
        }
        let config = build(&self.settings)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }

    /// Checks the files every `reload_interval` until the task is aborted.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(this.settings.reload_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // The files are small; reading them off the runtime's
                // threads keeps a slow disk from stalling calls.
                let reloader = Arc::clone(&this);
                let outcome =
                    tokio::task::spawn_blocking(move || reloader.reload_if_changed()).await;
                match outcome {
                    Ok(Ok(true)) => tracing::info!(
                        cert_file = %this.settings.cert_file.display(),
                        "reloaded the TLS certificate, key and client CA for new connections"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(err)) => tracing::warn!(
                        error = %err,
                        "the changed TLS files do not load; new connections keep the certificate loaded before"
                    ),
                    Err(err) => tracing::warn!(error = %err, "the TLS reload check failed"),
                }
            }
        })
    }
}

fn stamps(settings: &ServerTls) -> Vec<Option<FileStamp>> {
    [
        Some(settings.cert_file.as_path()),
        Some(settings.key_file.as_path()),
        settings.client_ca_file.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(FileStamp::of)
    .collect()
}

/// The rustls configuration the files make: rustls on ring, TLS 1.2 and
/// 1.3, ALPN `h2`, and the client verifier `client_auth` asks for.
fn build(settings: &ServerTls) -> Result<rustls::ServerConfig, TlsFileError> {
    let chain = read_certificates("server.tls.cert_file", &settings.cert_file)?;
    let key = read_key("server.tls.key_file", &settings.key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match (settings.client_auth, &settings.client_ca_file) {
        (ClientAuth::None, _) | (_, None) => WebPkiClientVerifier::no_client_auth(),
        (auth, Some(path)) => {
            let setting = "server.tls.client_ca_file";
            let roots = read_roots(setting, path)?;
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let builder = if auth == ClientAuth::Optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder.build().map_err(|err| TlsFileError {
                setting,
                path: path.clone(),
                problem: err.to_string(),
            })?
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsFileError {
            setting: "server.tls",
            path: PathBuf::new(),
            problem: err.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| TlsFileError {
            setting: "server.tls.key_file",
            path: settings.key_file.clone(),
            problem: format!("does not go with server.tls.cert_file: {err}"),
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The certificates of a PEM file, in order; at least one.
pub(crate) fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let error = |problem: String| TlsFileError {
        setting,
        path: path.to_owned(),
        problem,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| error(describe(&err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| error(format!("is not a PEM certificate file: {}", describe(&err))))?;
    if certificates.is_empty() {
        return Err(error(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certificates)
}

/// The private key of a PEM file.
pub(crate) fn read_key(
    setting: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| TlsFileError {
        setting,
        path: path.to_owned(),
        problem: format!(
            "holds no usable private key (PEM: PKCS#8, PKCS#1 or SEC1): {}",
            describe(&err)
        ),
    })
}

/// The certificates of a PEM bundle as trust anchors.
pub(crate) fn read_roots(
    setting: &'static str,
    path: &Path,
) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(setting, path)? {
        roots.add(certificate).map_err(|err| TlsFileError {
            setting,
            path: path.to_owned(),
            problem: format!("holds a certificate that cannot be a trust anchor: {err}"),
        })?;
    }
    Ok(roots)
}

/// A PEM error in words, without any of the file's contents.
fn describe(err: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match err {
        Error::Io(err) => format!("cannot read: {err}"),
        Error::NoItemsFound => "no PEM section of the expected kind".to_owned(),
        Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_owned(),
        Error::IllegalSectionStart { .. } => "a PEM section has a malformed BEGIN line".to_owned(),
        Error::Base64Decode(_) => "a PEM section is not valid base64".to_owned(),
        _ => "malformed PEM".to_owned(),
    }
}
