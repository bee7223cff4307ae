//! [`KeyStore`]: the keys file in memory, reloaded when it changes.
//!
//! A check looks the presented key's id up, hashes the key and compares the
//! hashes in constant time. The loaded file is swapped in whole on reload
//! (readers never wait for a reload, and never see half a file); a reload
//! that fails keeps the last good file and logs why.
//!
//! Keys known only in memory ([`InMemoryKeys`]: the embedded mesh's own
//! service keys, made at start and never written anywhere) are added to the
//! file's on every load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::file_stamp::FileStamp;
use crate::identity::{AllowLists, Identity, Mechanism};
use crate::keys::file::{KeyEntry, KeysFile, KeysFileError};
use crate::keys::{ApiKey, KeyHash};
use crate::scope::ScopeSet;

/// Why a presented key was not accepted. All of them look the same to the
/// caller (a message must not reveal whether a key exists); the audit trail
/// and the metrics tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No entry has the key's id.
    Unknown,
    /// An entry has the id, but not the key's hash.
    Mismatch,
    /// The key expired.
    Expired,
    /// The key was revoked.
    Revoked,
}

impl KeyRefusal {
    /// The reason's name in audit events and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown_key",
            Self::Mismatch => "wrong_key",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// One usable key.
#[derive(Debug)]
struct Loaded {
    hash: KeyHash,
    tenant: String,
    subject: String,
    scopes: ScopeSet,
    allow: AllowLists,
    expires: Option<jiff::Timestamp>,
    revoked: bool,
}

/// A keys file ready for checks.
#[derive(Debug, Default)]
struct Index {
    keys: HashMap<String, Loaded>,
    /// The `[tenants.<name>]` allow-lists, which bind every credential of
    /// the tenant (tokens too, not only the file's keys).
    tenants: HashMap<String, AllowLists>,
}

impl Index {
    /// The keys of `file` and the `extra` entries (checked together, so an
    /// extra id that clashes with the file's is an error).
    fn with_extra(file: &KeysFile, extra: &[KeyEntry]) -> Result<Self, KeysFileError> {
        if extra.is_empty() {
            return Self::from_file(file);
        }
        let mut file = file.clone();
        file.keys.extend(extra.iter().cloned());
        Self::from_file(&file)
    }

    fn from_file(file: &KeysFile) -> Result<Self, KeysFileError> {
        file.check()?;
        let mut keys = HashMap::with_capacity(file.keys.len());
        for (index, entry) in file.keys.iter().enumerate() {
            let checked = entry.checked().map_err(|(field, problem)| KeysFileError {
                at: format!("keys[{index}].{field}"),
                problem,
            })?;
            let tenant_allow = file
                .tenants
                .get(&entry.tenant)
                .map(|policy| policy.allow_lists())
                .unwrap_or_default();
            keys.insert(
                entry.id.clone(),
                Loaded {
                    hash: checked.hash,
                    tenant: entry.tenant.clone(),
                    subject: entry.subject.clone(),
                    scopes: checked.scopes,
                    allow: checked.allow.intersect(&tenant_allow),
                    expires: entry.expires,
                    revoked: entry.revoked,
                },
            );
        }
        let tenants = file
            .tenants
            .iter()
            .map(|(tenant, policy)| (tenant.clone(), policy.allow_lists()))
            .collect();
        Ok(Self { keys, tenants })
    }
}

/// A keys file that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The file cannot be read.
    #[error("cannot read the keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content is wrong.
    #[error("the keys file {path} is invalid at {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where and what.
        error: KeysFileError,
    },
}

/// The embedded mesh's service keys: made when it starts, known only to
/// this process, never written anywhere. Every service accepts all of them
/// (on top of its keys file's) and presents its own to its peers.
#[derive(Clone, PartialEq)]
pub struct InMemoryKeys {
    own: ApiKey,
    accepted: Arc<[KeyEntry]>,
}

impl InMemoryKeys {
    /// A service's own key and the entries of every service's key.
    pub fn new(own: ApiKey, accepted: Arc<[KeyEntry]>) -> Self {
        Self { own, accepted }
    }

    /// The key this service presents.
    pub fn own(&self) -> &ApiKey {
        &self.own
    }

    /// The entries every service accepts.
    pub fn accepted(&self) -> &[KeyEntry] {
        &self.accepted
    }
}

impl std::fmt::Debug for InMemoryKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The id only: the ApiKey's own Debug never shows the secret either.
        f.debug_struct("InMemoryKeys")
            .field("own", &self.own.id())
            .field("accepted", &self.accepted.len())
            .finish()
    }
}

/// The keys of one keys file, shared by every call of a service.
#[derive(Debug, Clone)]
pub struct KeyStore {
    index: Arc<ArcSwap<Index>>,
    path: Option<PathBuf>,
    /// The file's stamp when it was read: taken before reading, so a change
    /// made while reading is seen by the next check.
    loaded: Option<FileStamp>,
    /// Entries added to the file's on every load.
    extra: Arc<[KeyEntry]>,
}

impl KeyStore {
    /// The allow-lists the keys file sets for `tenant` (none: no limit).
    pub fn tenant_allow(&self, tenant: &str) -> Option<AllowLists> {
        self.index.load().tenants.get(tenant).cloned()
    }

    /// The keys of a file, read now.
    pub fn open(path: &Path) -> Result<Self, KeyStoreError> {
        Self::open_with(path, &[])
    }

    /// The keys of a file, read now, and `extra` entries known only in
    /// memory, kept on every reload (the embedded mesh's service keys).
    pub fn open_with(path: &Path, extra: &[KeyEntry]) -> Result<Self, KeyStoreError> {
        let loaded = FileStamp::of(path);
        let extra: Arc<[KeyEntry]> = extra.into();
        let index = read(path, &extra)?;
        Ok(Self {
            index: Arc::new(ArcSwap::from_pointee(index)),
            path: Some(path.to_owned()),
            loaded,
            extra,
        })
    }

    /// The keys of a file already in memory (tests, the embedded mesh's own
    /// service key).
    pub fn from_file(file: &KeysFile) -> Result<Self, KeysFileError> {
        Ok(Self {
            index: Arc::new(ArcSwap::from_pointee(Index::from_file(file)?)),
            path: None,
            loaded: None,
            extra: Arc::new([]),
        })
    }

    /// The identity of a presented key, or why it is refused.
    pub fn verify(&self, key: &ApiKey, now: jiff::Timestamp) -> Result<Identity, KeyRefusal> {
        let index = self.index.load();
        let loaded = index.keys.get(key.id()).ok_or(KeyRefusal::Unknown)?;
        // The hash comparison comes first and always runs, so that a
        // revoked or expired key takes as long as any other.
        if !loaded.hash.matches(&key.hash()) {
            return Err(KeyRefusal::Mismatch);
        }
        if loaded.revoked {
            return Err(KeyRefusal::Revoked);
        }
        if loaded.expires.is_some_and(|expires| expires <= now) {
            return Err(KeyRefusal::Expired);
        }
        Ok(Identity {
            tenant: loaded.tenant.clone(),
            subject: loaded.subject.clone(),
            scopes: loaded.scopes,
            allow: loaded.allow.clone(),
            credential_id: key.id().to_owned(),
            mechanism: Mechanism::ApiKey,
            actor: None,
        })
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.index.load().keys.len()
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the file when it changed on disk, every `interval`, until the
    /// returned task is aborted. A file that became unreadable or invalid
    /// keeps the last good keys, with a warning naming the problem.
    pub fn watch(&self, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.path.clone()?;
        let index = Arc::clone(&self.index);
        let extra = Arc::clone(&self.extra);
        let mut last = self.loaded;
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = FileStamp::of(&path);
                if now == last {
                    continue;
                }
                last = now;
                // A writer may not be done yet: the next change of the stamp
                // reads the file again.
                match read(&path, &extra) {
                    Ok(fresh) => {
                        tracing::info!(path = %path.display(), keys = fresh.keys.len(), "reloaded the keys file");
                        index.store(Arc::new(fresh));
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "keeping the keys loaded before: the keys file changed but cannot be used");
                    }
                }
            }
        }))
    }
}

fn read(path: &Path, extra: &[KeyEntry]) -> Result<Index, KeyStoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyStoreError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file = KeysFile::parse(&text).map_err(|error| KeyStoreError::Invalid {
        path: path.to_owned(),
        error,
    })?;
    Index::with_extra(&file, extra).map_err(|error| KeyStoreError::Invalid {
        path: path.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::file::{KeyEntry, TenantPolicy};
    use crate::scope::Scope;

    fn entry(key: &ApiKey, tenant: &str) -> KeyEntry {
        KeyEntry {
            id: key.id().to_owned(),
            sha256: key.hash().to_hex(),
            tenant: tenant.to_owned(),
            subject: "alice".to_owned(),
            scopes: vec!["runs:read".to_owned()],
            label: String::new(),
            expires: None,
            agents: None,
            routes: None,
            tools: Some(vec!["calculator".to_owned(), "run_command".to_owned()]),
            revoked: false,
        }
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    #[test]
    fn a_known_key_gives_its_identity_with_the_tenant_policy_applied() {
        let key = ApiKey::generate("live").unwrap();
        let mut file = KeysFile {
            keys: vec![entry(&key, "acme")],
            ..KeysFile::default()
        };
        file.tenants.insert(
            "acme".to_owned(),
            TenantPolicy {
                tools: Some(vec!["calculator".to_owned()]),
                ..TenantPolicy::default()
            },
        );
        let store = KeyStore::from_file(&file).unwrap();
        let identity = store.verify(&key, now()).unwrap();
        assert_eq!(identity.tenant, "acme");
        assert_eq!(identity.credential_id, key.id());
        assert!(identity.scopes.contains(Scope::RunsRead));
        assert!(identity.allow.tools.allows("calculator"));
        assert!(!identity.allow.tools.allows("run_command"));
    }

    #[test]
    fn unknown_wrong_expired_and_revoked_keys_are_refused() {
        let key = ApiKey::generate("live").unwrap();
        let other = ApiKey::generate("live").unwrap();
        let mut expired = entry(&other, "acme");
        expired.expires = Some(jiff::Timestamp::UNIX_EPOCH);
        let revoked_key = ApiKey::generate("test").unwrap();
        let mut revoked = entry(&revoked_key, "acme");
        revoked.revoked = true;
        let store = KeyStore::from_file(&KeysFile {
            keys: vec![expired, revoked],
            ..KeysFile::default()
        })
        .unwrap();
        assert_eq!(store.verify(&key, now()), Err(KeyRefusal::Unknown));
        assert_eq!(store.verify(&other, now()), Err(KeyRefusal::Expired));
        assert_eq!(store.verify(&revoked_key, now()), Err(KeyRefusal::Revoked));
        // Same id, another secret.
        let forged = ApiKey::parse(&format!("{}{}", other.id(), "x".repeat(24))).unwrap();
        assert_eq!(store.verify(&forged, now()), Err(KeyRefusal::Mismatch));
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let first = ApiKey::generate("live").unwrap();
        let second = ApiKey::generate("live").unwrap();
        let write = |keys: Vec<KeyEntry>| {
            std::fs::write(
                &path,
                KeysFile {
                    keys,
                    ..KeysFile::default()
                }
                .to_toml(),
            )
            .unwrap();
        };
        write(vec![entry(&first, "acme")]);
        let store = KeyStore::open(&path).unwrap();
        let watch = store.watch(Duration::from_millis(10)).unwrap();
        assert!(store.verify(&first, now()).is_ok());

        write(vec![entry(&first, "acme"), entry(&second, "beta")]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.verify(&second, now()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the new key was never loaded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        std::fs::write(&path, "this is not toml [").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            store.verify(&second, now()).is_ok(),
            "a broken file replaced good keys"
        );
        watch.abort();
    }

    #[tokio::test]
    async fn in_memory_keys_are_kept_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let user = ApiKey::generate("live").unwrap();
        let service = ApiKey::generate("live").unwrap();
        let write = |keys: Vec<KeyEntry>| {
            std::fs::write(
                &path,
                KeysFile {
                    keys,
                    ..KeysFile::default()
                }
                .to_toml(),
            )
            .unwrap();
        };
        write(vec![entry(&user, "acme")]);
        let store = KeyStore::open_with(&path, &[entry(&service, "")]).unwrap();
        let watch = store.watch(Duration::from_millis(10)).unwrap();
        assert!(store.verify(&service, now()).is_ok());
        assert!(store.verify(&user, now()).is_ok());

        write(Vec::new());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.verify(&user, now()).is_ok() {
            assert!(std::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            store.verify(&service, now()).is_ok(),
            "a reload dropped the in-memory key"
        );
        watch.abort();

        // An in-memory id that clashes with the file's is an error.
        write(vec![entry(&user, "acme")]);
        assert!(KeyStore::open_with(&path, &[entry(&user, "")]).is_err());
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = KeyStore::open(Path::new("/nonexistent/keys.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/keys.toml"), "{err}");
    }
}
