//! What the access tests share: a keys file with fresh API keys, made the
//! way `agentmesh keys create` makes them, and requests carrying a key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::{KeyEntry, KeysFile};

/// The keys of a test, by name, and the file holding their hashes.
pub(crate) struct Keys {
    /// The keys file.
    pub(crate) path: PathBuf,
    plain: BTreeMap<String, ApiKey>,
}

impl Keys {
    /// Makes a key per `(name, tenant, subject, scopes)` and writes their
    /// hashes into `<dir>/keys.toml`.
    pub(crate) fn write(dir: &Path, specs: &[(&str, &str, &str, &[&str])]) -> Self {
        let mut plain = BTreeMap::new();
        let mut file = KeysFile::default();
        for (name, tenant, subject, scopes) in specs {
            let key = ApiKey::generate("test").unwrap();
            file.keys.push(KeyEntry {
                id: key.id().to_owned(),
                sha256: key.hash().to_hex(),
                tenant: (*tenant).to_owned(),
                subject: (*subject).to_owned(),
                scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
                label: format!("test key {name}"),
                expires: None,
                agents: None,
                routes: None,
                tools: None,
                revoked: false,
            });
            plain.insert((*name).to_owned(), key);
        }
        file.check().unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, file.to_toml()).unwrap();
        Self { path, plain }
    }

    /// The plain key called `name`.
    pub(crate) fn key(&self, name: &str) -> &str {
        self.plain[name].expose()
    }
}

/// A well-formed key that is in no keys file.
pub(crate) fn unknown_key() -> String {
    ApiKey::generate("test").unwrap().expose().to_owned()
}

/// The public id of a plain key.
pub(crate) fn id_of(key: &str) -> String {
    ApiKey::parse(key).unwrap().id().to_owned()
}

/// `message` with `authorization: Bearer <key>`.
pub(crate) fn bearer<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}
