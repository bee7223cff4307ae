//! The keys file: every API key's hash and what it may do, and the
//! allow-lists of each tenant. Every service reads the same file (a
//! Kubernetes Secret in a cluster), because the gateway and the tool runner
//! have no database.
//!
//! ```toml
//! [[keys]]
//! id = "am_live_4fT9qLx2"
//! sha256 = "9f86d081…"            # of the whole key; the key itself is never stored
//! tenant = "acme"
//! subject = "ci-pipeline"
//! scopes = ["runs:read", "runs:write"]
//! label = "CI of the support bot"
//! expires = "2027-06-01T00:00:00Z"  # optional
//! agents = ["support"]              # optional allow-lists: absent = all
//! routes = ["fast"]
//! tools = ["calculator"]
//! revoked = false                   # `agentmesh keys revoke` sets it
//!
//! [tenants.acme]                    # optional: bounds every key of the tenant
//! tools = ["calculator", "current_time"]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{AllowList, AllowLists};
use crate::keys::{ApiKey, KeyHash, is_key_id};
use crate::scope::{Scope, ScopeSet};

/// The whole keys file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
    /// Allow-lists per tenant, applied on top of each key's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantPolicy>,
}

/// One key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The key's public id (`am_<env>_<8 characters>`).
    pub id: String,
    /// SHA-256 of the whole key, 64 hex digits.
    pub sha256: String,
    /// The tenant the key acts in ("" for platform keys: services, admins).
    #[serde(default)]
    pub tenant: String,
    /// Who or what holds the key.
    pub subject: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// A note for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// When it stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<jiff::Timestamp>,
    /// Agent profiles it may start runs with (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// Gateway routes it may call (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// Tools it may call (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Whether it was revoked (kept in the file so the audit trail can say so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// A tenant's allow-lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    /// Agent profiles the tenant's keys may use (absent: all).
    #[serde(default)]
    pub agents: Option<Vec<String>>,
    /// Gateway routes (absent: all).
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Tools (absent: all).
    #[serde(default)]
    pub tools: Option<Vec<String>>,
}

impl TenantPolicy {
    /// The policy as allow-lists.
    pub fn allow_lists(&self) -> AllowLists {
        AllowLists {
            agents: list(self.agents.as_ref()),
            routes: list(self.routes.as_ref()),
            tools: list(self.tools.as_ref()),
        }
    }
}

fn list(names: Option<&Vec<String>>) -> AllowList {
    names.map_or_else(AllowList::any, |names| {
        AllowList::only(names.iter().cloned())
    })
}

/// A keys file that cannot be used, naming the entry and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct KeysFileError {
    /// Where, e.g. `keys[2].scopes` or `line 7`.
    pub at: String,
    /// What is wrong.
    pub problem: String,
}

/// A key entry checked and ready to match against.
#[derive(Debug, Clone)]
pub(crate) struct CheckedKey {
    pub(crate) hash: KeyHash,
    pub(crate) scopes: ScopeSet,
    pub(crate) allow: AllowLists,
}

impl KeysFile {
    /// Parses and checks the text of a keys file.
    pub fn parse(text: &str) -> Result<Self, KeysFileError> {
        let file: Self = toml::from_str(text).map_err(|err| KeysFileError {
            at: err
                .span()
                .map(|span| format!("line {}", line_of(text, span.start)))
                .unwrap_or_else(|| "the file".to_owned()),
            problem: err.message().to_owned(),
        })?;
        file.check()?;
        Ok(file)
    }

    /// The file as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every entry: ids well-formed and unique, hashes 64 hex digits,
    /// scopes known, allow-list names usable in a header.
    pub fn check(&self) -> Result<(), KeysFileError> {
        let mut seen = std::collections::HashSet::new();
        for (index, key) in self.keys.iter().enumerate() {
            let at = |field: &str| format!("keys[{index}].{field}");
            if !is_key_id(&key.id) {
                return Err(KeysFileError {
                    at: at("id"),
                    problem: format!(
                        "{:?} is not a key id (am_<env>_<8 letters and digits>)",
                        key.id
                    ),
                });
            }
            if !seen.insert(key.id.as_str()) {
                return Err(KeysFileError {
                    at: at("id"),
                    problem: format!("{} appears twice", key.id),
                });
            }
            if !crate::identity::is_tenant_name(&key.tenant) {
                return Err(KeysFileError {
                    at: at("tenant"),
                    problem: tenant_problem(),
                });
            }
            key.checked().map_err(|(field, problem)| KeysFileError {
                at: at(field),
                problem,
            })?;
            for (field, names) in [
                ("agents", &key.agents),
                ("routes", &key.routes),
                ("tools", &key.tools),
            ] {
                check_names(names.as_ref()).map_err(|problem| KeysFileError {
                    at: at(field),
                    problem,
                })?;
            }
        }
        for (tenant, policy) in &self.tenants {
            if tenant.is_empty() || !crate::identity::is_tenant_name(tenant) {
                return Err(KeysFileError {
                    at: format!("tenants.{}", tenant.escape_debug()),
                    problem: tenant_problem(),
                });
            }
            for (field, names) in [
                ("agents", &policy.agents),
                ("routes", &policy.routes),
                ("tools", &policy.tools),
            ] {
                check_names(names.as_ref()).map_err(|problem| KeysFileError {
                    at: format!("tenants.{tenant}.{field}"),
                    problem,
                })?;
            }
        }
        Ok(())
    }
}

/// Where a key stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// It works.
    Active,
    /// Its `expires` has passed.
    Expired,
    /// It was revoked.
    Revoked,
}

impl KeyState {
    /// The state's name in listings.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl KeyEntry {
    /// The entry of `key` (its id and hash), with no label, expiry or
    /// allow-lists.
    pub fn new(key: &ApiKey, tenant: &str, subject: &str, scopes: ScopeSet) -> Self {
        Self {
            id: key.id().to_owned(),
            sha256: key.hash().to_hex(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            scopes: scopes
                .iter()
                .map(|scope| scope.as_str().to_owned())
                .collect(),
            label: String::new(),
            expires: None,
            agents: None,
            routes: None,
            tools: None,
            revoked: false,
        }
    }

    /// The entry as a `[[keys]]` block of a keys file, to append to one.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct One<'a> {
            keys: [&'a KeyEntry; 1],
        }
        toml::to_string(&One { keys: [self] }).unwrap_or_default()
    }

    /// Whether the key works at `now`.
    pub fn state(&self, now: jiff::Timestamp) -> KeyState {
        if self.revoked {
            KeyState::Revoked
        } else if self.expires.is_some_and(|expires| expires <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// The entry's hash, scopes and allow-lists, or the field that is wrong.
    pub(crate) fn checked(&self) -> Result<CheckedKey, (&'static str, String)> {
        let hash = KeyHash::from_hex(&self.sha256).ok_or((
            "sha256",
            "must be 64 hex digits (the SHA-256 of the key)".to_owned(),
        ))?;
        let scopes = self
            .scopes
            .iter()
            .map(|name| name.parse::<Scope>())
            .collect::<Result<ScopeSet, _>>()
            .map_err(|err| ("scopes", err.to_string()))?;
        Ok(CheckedKey {
            hash,
            scopes,
            allow: AllowLists {
                agents: list(self.agents.as_ref()),
                routes: list(self.routes.as_ref()),
                tools: list(self.tools.as_ref()),
            },
        })
    }
}

/// Why a tenant name was refused.
fn tenant_problem() -> String {
    format!(
        "a tenant is at most {} visible ASCII characters: no spaces, newlines, NUL or other control characters",
        crate::identity::MAX_TENANT_BYTES
    )
}

/// Allow-list names travel in the `x-agentmesh-allow` header: no separators
/// of its syntax, no control characters.
fn check_names(names: Option<&Vec<String>>) -> Result<(), String> {
    for name in names.into_iter().flatten() {
        if name.is_empty()
            || name.len() > 256
            || name
                .chars()
                .any(|char| matches!(char, ';' | '=' | ',') || !char.is_ascii_graphic())
        {
            return Err(format!(
                "{name:?} is not a usable name (1 to 256 visible ASCII characters, without ; = ,)"
            ));
        }
    }
    Ok(())
}

fn line_of(text: &str, byte: usize) -> usize {
    text.get(..byte)
        .map_or(0, |before| before.matches('\n').count())
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &ApiKey) -> String {
        format!(
            "[[keys]]\nid = \"{}\"\nsha256 = \"{}\"\ntenant = \"acme\"\nsubject = \"ci\"\nscopes = [\"runs:read\"]\ntools = [\"calculator\"]\n",
            key.id(),
            key.hash().to_hex()
        )
    }

    #[test]
    fn a_valid_file_parses_and_round_trips() {
        let key = ApiKey::generate("live").unwrap();
        let text = format!("{}\n[tenants.acme]\nroutes = [\"fast\"]\n", entry(&key));
        let file = KeysFile::parse(&text).unwrap();
        assert_eq!(file.keys.len(), 1);
        assert_eq!(KeysFile::parse(&file.to_toml()).unwrap(), file);
        let checked = file.keys[0].checked().unwrap();
        assert!(checked.hash.matches(&key.hash()));
        assert!(checked.allow.tools.allows("calculator"));
        assert!(!checked.allow.tools.allows("run_command"));
        assert!(file.tenants["acme"].allow_lists().agents.is_any());
    }

    #[test]
    fn problems_name_the_entry_and_field() {
        let key = ApiKey::generate("live").unwrap();
        let err = KeysFile::parse(&entry(&key).replace("runs:read", "runs:erase")).unwrap_err();
        assert_eq!(err.at, "keys[0].scopes");
        let err = KeysFile::parse(&entry(&key).replace(&key.hash().to_hex(), "abc")).unwrap_err();
        assert_eq!(err.at, "keys[0].sha256");
        let twice = format!("{}{}", entry(&key), entry(&key));
        assert!(
            KeysFile::parse(&twice)
                .unwrap_err()
                .problem
                .contains("twice")
        );
        let err = KeysFile::parse(&entry(&key).replace("calculator", "a;b")).unwrap_err();
        assert_eq!(err.at, "keys[0].tools");
        let err = KeysFile::parse("[[keys]]\nid = 3\n").unwrap_err();
        assert!(err.at.starts_with("line 2"), "{err}");
        let err = KeysFile::parse(&entry(&key).replace(key.id(), "am_live_x")).unwrap_err();
        assert_eq!(err.at, "keys[0].id");
        for tenant in ["ac\\nme", "ac\\u0000me", "acme corp"] {
            let text = entry(&key).replace("tenant = \"acme\"", &format!("tenant = \"{tenant}\""));
            let err = KeysFile::parse(&text).unwrap_err();
            assert_eq!(err.at, "keys[0].tenant", "{tenant}");
            assert!(err.problem.contains("control characters"), "{err}");
        }
        let err = KeysFile::parse("[tenants.\"a\\nb\"]\ntools = []\n").unwrap_err();
        assert_eq!(err.at, "tenants.a\\nb", "{err}");
    }

    #[test]
    fn a_new_entry_is_a_block_that_appends_to_a_file() {
        let key = ApiKey::generate("test").unwrap();
        let mut entry = KeyEntry::new(
            &key,
            "acme",
            "ci",
            ScopeSet::parse_list("runs:write runs:read").unwrap(),
        );
        entry.expires = Some("2030-01-02T03:04:05Z".parse().unwrap());
        entry.tools = Some(vec!["calculator".to_owned()]);
        let block = entry.to_toml();
        assert!(block.starts_with("[[keys]]\n"), "{block}");
        assert!(
            block.contains("scopes = [\"runs:read\", \"runs:write\"]"),
            "{block}"
        );
        let other = ApiKey::generate("test").unwrap();
        let text = format!(
            "# keys of acme\n[tenants.acme]\ntools = [\"calculator\"]\n\n{}\n{block}",
            KeyEntry::new(&other, "acme", "bob", ScopeSet::EMPTY).to_toml()
        );
        let file = KeysFile::parse(&text).unwrap();
        assert_eq!(file.keys.len(), 2);
        assert_eq!(file.keys[1], entry);
        assert!(file.keys[1].checked().unwrap().hash.matches(&key.hash()));
    }

    #[test]
    fn the_state_says_revoked_before_expired() {
        let key = ApiKey::generate("test").unwrap();
        let mut entry = KeyEntry::new(&key, "acme", "ci", ScopeSet::EMPTY);
        let now: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(entry.state(now), KeyState::Active);
        entry.expires = Some(now);
        assert_eq!(entry.state(now), KeyState::Expired);
        entry.revoked = true;
        assert_eq!(entry.state(now), KeyState::Revoked);
    }
}
