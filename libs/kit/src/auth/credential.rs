//! [`ServiceCredential`]: what a service presents on its calls to its peers
//! (`authorization: Bearer <API key or JWT>`), read from
//! `auth.credential_file` (re-read when it changes, so a rotated Secret is
//! picked up without a restart) or from `AGENTMESH_SERVICE_CREDENTIAL`; in
//! the embedded mesh, the service key it made in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_auth::config::{AuthConfig, CREDENTIAL_ENV};
use agentmesh_auth::file_stamp::FileStamp;
use arc_swap::ArcSwapOption;
use http::header::HeaderValue;

/// The credential of a service, shared by its channels.
#[derive(Clone, Default)]
pub struct ServiceCredential {
    header: Arc<ArcSwapOption<HeaderValue>>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("ServiceCredential")
            .field("present", &self.header.load().is_some())
            .field("file", &self.file)
            .finish()
    }
}

/// A credential file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.credential_file {path}: {problem}")]
pub struct CredentialError {
    path: PathBuf,
    problem: String,
}

impl ServiceCredential {
    /// No credential: calls go out without `authorization` (the embedded
    /// mode, or a mesh whose sidecars authenticate the services).
    pub fn none() -> Self {
        Self::default()
    }

    /// A fixed credential (tests, the embedded mesh's own service key).
    pub fn fixed(credential: &str) -> Option<Self> {
        let header = bearer(credential)?;
        Some(Self {
            header: Arc::new(ArcSwapOption::from_pointee(header)),
            file: None,
        })
    }

    /// The credential `config` names: its file, else the environment
    /// variable, else none.
    pub fn from_config(config: &AuthConfig) -> Result<Self, CredentialError> {
        // The embedded mesh's own key: every peer in this process accepts it.
        if let Some(own) = config
            .in_memory_keys
            .as_ref()
            .and_then(|keys| Self::fixed(keys.own().expose()))
        {
            return Ok(own);
        }
        if let Some(path) = &config.credential_file {
            let header = read(path)?;
            return Ok(Self {
                header: Arc::new(ArcSwapOption::from_pointee(header)),
                file: Some(path.clone()),
            });
        }
        Ok(std::env::var(CREDENTIAL_ENV)
            .ok()
            .and_then(|value| Self::fixed(&value))
            .unwrap_or_default())
    }

    /// The `authorization` value to send, if any.
    pub fn header(&self) -> Option<Arc<HeaderValue>> {
        self.header.load_full()
    }

    /// Re-reads the file when it changes, every `interval`, until the task
    /// is aborted; a file that became unusable keeps the last credential.
    pub fn watch(&self, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.file.clone()?;
        let header = Arc::clone(&self.header);
        Some(tokio::spawn(async move {
            let mut last = FileStamp::of(&path);
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                let now = FileStamp::of(&path);
                if now == last {
                    continue;
                }
                last = now;
                match read(&path) {
                    Ok(fresh) => {
                        tracing::info!(path = %path.display(), "reloaded the service credential");
                        header.store(Some(Arc::new(fresh)));
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "keeping the service credential loaded before")
                    }
                }
            }
        }))
    }
}

fn read(path: &Path) -> Result<HeaderValue, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|err| CredentialError {
        path: path.to_owned(),
        problem: err.to_string(),
    })?;
    bearer(text.trim()).ok_or_else(|| CredentialError {
        path: path.to_owned(),
        problem: "must hold one API key or token on one line".to_owned(),
    })
}

fn bearer(credential: &str) -> Option<HeaderValue> {
    let credential = credential.trim();
    if credential.is_empty() {
        return None;
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {credential}")).ok()?;
    // Kept out of HPACK's dynamic table and out of debug output.
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_credential_is_read_and_its_problems_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential");
        std::fs::write(&path, "am_test_0123456789abcdefghijABCDEFGHIJKL\n").unwrap();
        let config = AuthConfig {
            credential_file: Some(path.clone()),
            ..AuthConfig::default()
        };
        let credential = ServiceCredential::from_config(&config).unwrap();
        let header = credential.header().unwrap();
        assert_eq!(
            header.to_str().unwrap(),
            "Bearer am_test_0123456789abcdefghijABCDEFGHIJKL"
        );
        assert!(header.is_sensitive());
        assert!(!format!("{credential:?}").contains("am_test_"));

        std::fs::write(&path, "").unwrap();
        let err = ServiceCredential::from_config(&config).unwrap_err();
        assert!(err.to_string().contains("auth.credential_file"), "{err}");
        assert!(ServiceCredential::none().header().is_none());
    }

    #[test]
    fn an_in_memory_key_is_presented_before_the_file() {
        use agentmesh_auth::keys::ApiKey;
        use agentmesh_auth::keys::store::InMemoryKeys;
        let key = ApiKey::generate("embedded").unwrap();
        let config = AuthConfig {
            credential_file: Some("/nonexistent/credential".into()),
            in_memory_keys: Some(InMemoryKeys::new(key.clone(), std::sync::Arc::new([]))),
            ..AuthConfig::default()
        };
        let credential = ServiceCredential::from_config(&config).unwrap();
        assert_eq!(
            credential.header().unwrap().to_str().unwrap(),
            format!("Bearer {}", key.expose())
        );
    }
}
