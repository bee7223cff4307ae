//! The callback signing secrets: `callbacks.secrets_file`, read at start
//! (an unusable file stops the service, naming the setting) and re-read
//! when it changes (a rotated Kubernetes Secret), keeping the last good
//! secrets when a new version is unusable.
//!
//! ```toml
//! default = "a secret for every tenant not listed (the embedded mode's too)"
//! [tenants]
//! acme = "whsec_…"
//! globex = ["the new secret", "the old one"]   # during a rotation: signed with both
//! ```
//!
//! A secret never appears in a log line, an error, a metric or an audit
//! event: errors name the entry (`tenants.acme[1]`), never its value, and
//! [`Secret`]'s `Debug` hides it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use agentmesh_auth::file_stamp::FileStamp;
use serde::Deserialize;

/// Shortest secret accepted, in bytes.
const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted, in bytes.
const MAX_SECRET_BYTES: usize = 1024;
/// Secrets per tenant (a rotation needs two).
const MAX_SECRETS_PER_TENANT: usize = 4;

/// One signing secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(Vec<u8>);

impl Secret {
    #[cfg(test)]
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The key bytes, for signing only.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    default: Option<OneOrMany>,
    #[serde(default)]
    tenants: BTreeMap<String, OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The secrets of one entry, checked; errors name `at`.
    fn secrets(self, at: &str) -> Result<Arc<[Secret]>, String> {
        let list = match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        };
        if list.is_empty() || list.len() > MAX_SECRETS_PER_TENANT {
            return Err(format!("{at}: give 1 to {MAX_SECRETS_PER_TENANT} secrets"));
        }
        list.into_iter()
            .enumerate()
            .map(|(index, secret)| {
                let len = secret.len();
                if (MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&len) {
                    Ok(Secret(secret.into_bytes()))
                } else {
                    Err(format!(
                        "{at}[{index}]: a secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} \
                         bytes (this one has {len})"
                    ))
                }
            })
            .collect()
    }
}

/// The secrets in memory.
#[derive(Debug, Default)]
struct Loaded {
    default: Option<Arc<[Secret]>>,
    tenants: HashMap<String, Arc<[Secret]>>,
}

/// Reads and checks the secrets file; the error never quotes the file.
fn load(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let file: SecretsFile = toml::from_str(&text).map_err(|err| {
        // The parser's own message may quote the offending value (a
        // secret): say where, never what.
        let line = err.span().map_or(0, |span| {
            text.get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1
        });
        format!(
            "{} is not a secrets file (line {line}): expected `default = \"…\"` and a \
             `[tenants]` table of strings or lists of strings",
            path.display()
        )
    })?;
    let default = file
        .default
        .map(|entry| entry.secrets("default"))
        .transpose()?;
    let mut tenants = HashMap::with_capacity(file.tenants.len());
    for (tenant, entry) in file.tenants {
        if tenant.is_empty() {
            return Err("tenants: a tenant name must not be empty".to_owned());
        }
        let secrets = entry.secrets(&format!("tenants.{tenant}"))?;
        tenants.insert(tenant, secrets);
    }
    Ok(Loaded { default, tenants })
}

/// The secrets, shared by StartRun's check and the deliveries.
#[derive(Debug, Default)]
pub(crate) struct Secrets {
    path: Option<PathBuf>,
    /// The file's stamp when last read, and what it held.
    loaded: Mutex<(Option<FileStamp>, Arc<Loaded>)>,
}

impl Secrets {
    /// The secrets of `path` (none configured: no tenant has one), read now.
    pub(crate) fn open(path: Option<&Path>) -> Result<Self, String> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let stamp = FileStamp::of(path);
        let loaded = load(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            loaded: Mutex::new((stamp, Arc::new(loaded))),
        })
    }

    /// Whether callbacks can be signed at all (a secrets file is set).
    pub(crate) fn configured(&self) -> bool {
        self.path.is_some()
    }

    /// The secrets `tenant`'s callbacks are signed with: its own, else the
    /// default; `None` when it has neither.
    pub(crate) fn for_tenant(&self, tenant: &str) -> Option<Arc<[Secret]>> {
        let loaded = Arc::clone(&self.lock().1);
        loaded
            .tenants
            .get(tenant)
            .or(loaded.default.as_ref())
            .cloned()
    }

    /// Re-reads the file if it changed since it was read; a version that
    /// cannot be used is logged (never its content) and the last good
    /// secrets stay.
    pub(crate) fn refresh(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let stamp = FileStamp::of(path);
        if stamp == self.lock().0 {
            return;
        }
        match load(path) {
            Ok(fresh) => {
                tracing::info!(path = %path.display(), "reloaded the callback secrets");
                *self.lock() = (stamp, Arc::new(fresh));
            }
            Err(problem) => {
                tracing::warn!(%problem, "keeping the callback secrets loaded before");
                // Not tried again until the file changes again.
                self.lock().0 = stamp;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<FileStamp>, Arc<Loaded>)> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_tenant_has_its_own_secrets_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
            default = "the default secret, long enough"
            [tenants]
            acme = "acme's secret, long enough"
            globex = ["globex's new secret", "globex's old secret"]
            "#,
        );
        let secrets = Secrets::open(Some(&path)).unwrap();
        assert!(secrets.configured());
        let of = |tenant: &str| -> Vec<Vec<u8>> {
            secrets
                .for_tenant(tenant)
                .unwrap()
                .iter()
                .map(|s| s.expose().to_vec())
                .collect()
        };
        assert_eq!(of("acme"), [b"acme's secret, long enough".to_vec()]);
        assert_eq!(of("globex").len(), 2);
        assert_eq!(
            of("someone else"),
            [b"the default secret, long enough".to_vec()]
        );
        assert_eq!(of(""), of("someone else"));
    }

    #[test]
    fn without_a_default_only_listed_tenants_have_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[tenants]\nacme = \"acme's secret, long enough\"\n");
        let secrets = Secrets::open(Some(&path)).unwrap();
        assert!(secrets.for_tenant("acme").is_some());
        assert!(secrets.for_tenant("globex").is_none());
        let none = Secrets::open(None).unwrap();
        assert!(!none.configured());
        assert!(none.for_tenant("acme").is_none());
    }

    #[test]
    fn errors_name_the_entry_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        for (text, named) in [
            ("[tenants]\nacme = \"short-secret\"\n", "tenants.acme[0]"),
            ("[tenants]\nacme = []\n", "tenants.acme"),
            (
                "default = [\"long enough secret 1\", \"tiny-secret\"]\n",
                "default[1]",
            ),
            ("[tenants]\nacme = 5\n", "line"),
            ("nonsense = \"my-precious-secret-value\"\n", "line 1"),
            ("default = \"unterminated-secret-value\n", "line"),
        ] {
            let path = write(&dir, text);
            let err = Secrets::open(Some(&path)).unwrap_err();
            assert!(err.contains(named), "{text:?}: {err}");
            for secret in [
                "short-secret",
                "tiny-secret",
                "my-precious",
                "unterminated-secret",
            ] {
                assert!(!err.contains(secret), "{text:?}: {err}");
            }
        }
        let missing = Secrets::open(Some(&dir.path().join("missing.toml"))).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "default = \"the first secret, long enough\"\n");
        let secrets = Secrets::open(Some(&path)).unwrap();
        std::fs::write(&path, "default = \"the second secret, a bit longer\"\n").unwrap();
        secrets.refresh();
        assert_eq!(
            secrets.for_tenant("t").unwrap()[0].expose(),
            b"the second secret, a bit longer"
        );
        std::fs::write(&path, "default = \"short\"\n").unwrap();
        secrets.refresh();
        assert_eq!(
            secrets.for_tenant("t").unwrap()[0].expose(),
            b"the second secret, a bit longer"
        );
        assert_eq!(
            format!("{:?}", secrets.for_tenant("t").unwrap()),
            "[Secret(..)]"
        );
    }
}
