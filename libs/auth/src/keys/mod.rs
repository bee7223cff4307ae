//! API keys: `am_<env>_<random>`, stored only as SHA-256 hashes.
//!
//! A key is 32 random base62 characters after a prefix that names it as an
//! agentmesh key (so secret scanners can recognise a leaked one) and the
//! environment it was made for (`live`, `test`, …). Its *id* is the prefix
//! and the first 8 random characters (`am_live_4fT9qLx2`): public, shown in
//! `agentmesh keys list`, audit events and logs, and used to find the key's
//! entry; the other 24 characters (143 bits) stay secret. The keys file
//! ([`file`]) holds the id, the hash of the whole key and what the key may
//! do; [`store`] loads it, reloads it when it changes and checks presented
//! keys against it in constant time.

pub mod file;
pub mod store;

use std::fmt;

use sha2::{Digest, Sha256};

/// Every API key starts with this.
pub const PREFIX: &str = "am_";
/// Random characters in a key.
const RANDOM_CHARS: usize = 32;
/// Random characters that are part of the public id.
const ID_CHARS: usize = 8;
/// The longest environment name.
const MAX_ENV_CHARS: usize = 16;
/// The base62 alphabet of the random part.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// An API key in plain text: exists only while being made or presented.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret, even in debug output.
        write!(f, "ApiKey({}…)", self.id())
    }
}

/// Why a text is not an API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// The environment name is not 1–16 lowercase letters or digits.
    #[error(
        "the environment must be 1 to {MAX_ENV_CHARS} lowercase letters or digits, e.g. `live` or `test`"
    )]
    Env,
    /// The text does not have the shape of a key.
    #[error("not an agentmesh API key (am_<env>_<32 letters and digits>)")]
    Shape,
    /// The operating system gave no randomness.
    #[error("the operating system's random number generator failed")]
    Random,
}

impl ApiKey {
    /// A new random key for `env`.
    pub fn generate(env: &str) -> Result<Self, KeyFormatError> {
        if !valid_env(env) {
            return Err(KeyFormatError::Env);
        }
        let random = ring::rand::SystemRandom::new();
        let mut text = format!("{PREFIX}{env}_");
        while text.len() < PREFIX.len() + env.len() + 1 + RANDOM_CHARS {
            let byte: [u8; 1] = ring::rand::generate(&random)
                .map_err(|_| KeyFormatError::Random)?
                .expose();
            // 62 * 4 = 248: bytes at or above it are skipped so every
            // character is equally likely.
            if let Some(char) = byte
                .first()
                .filter(|byte| **byte < 248)
                .and_then(|byte| ALPHABET.get(usize::from(*byte % 62)))
            {
                text.push(char::from(*char));
            }
        }
        Ok(Self(text))
    }

    /// Checks the shape of a presented key.
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        let rest = text.strip_prefix(PREFIX).ok_or(KeyFormatError::Shape)?;
        let (env, random) = rest.split_once('_').ok_or(KeyFormatError::Shape)?;
        if !valid_env(env)
            || random.len() != RANDOM_CHARS
            || !random.bytes().all(|byte| byte.is_ascii_alphanumeric())
        {
            return Err(KeyFormatError::Shape);
        }
        Ok(Self(text.to_owned()))
    }

    /// The public id: prefix, environment and the first random characters.
    pub fn id(&self) -> &str {
        let random_start = self.0.len().saturating_sub(RANDOM_CHARS);
        self.0
            .get(..random_start.saturating_add(ID_CHARS))
            .unwrap_or_default()
    }

    /// The key's SHA-256, as stored in the keys file.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The plain key, to print once when it is made.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn valid_env(env: &str) -> bool {
    (1..=MAX_ENV_CHARS).contains(&env.len())
        && env
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}

/// Whether `id` has the shape of a key id.
pub fn is_key_id(id: &str) -> bool {
    id.strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(env, random)| {
            valid_env(env)
                && random.len() == ID_CHARS
                && random.bytes().all(|byte| byte.is_ascii_alphanumeric())
        })
}

/// A key's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Compares in constant time, so the time a check takes says nothing
    /// about how much of a guessed key was right.
    pub fn matches(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }

    /// Lowercase hex, as written in the keys file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let key = ApiKey::generate("live").unwrap();
        assert!(key.expose().starts_with("am_live_"));
        assert_eq!(key.expose().len(), "am_live_".len() + 32);
        assert_eq!(ApiKey::parse(key.expose()), Ok(key.clone()));
        assert_eq!(key.id().len(), "am_live_".len() + 8);
        assert!(is_key_id(key.id()));
        assert_ne!(key, ApiKey::generate("live").unwrap());
        assert!(!format!("{key:?}").contains(key.expose()));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "am_live_",
            "sk_live_0123456789abcdefghijABCDEFGHIJKL",
            "am_Live_0123456789abcdefghijABCDEFGHIJKL",
            "am_live_0123456789abcdefghijABCDEFGHIJK",
            "am_live_0123456789abcdefghijABCDEFGHIJ-L",
        ] {
            assert_eq!(ApiKey::parse(bad), Err(KeyFormatError::Shape), "{bad}");
        }
        assert_eq!(ApiKey::generate("Prod"), Err(KeyFormatError::Env));
        assert_eq!(ApiKey::generate(""), Err(KeyFormatError::Env));
    }

    #[test]
    fn hashes_match_only_the_same_key() {
        let key = ApiKey::generate("test").unwrap();
        let hash = key.hash();
        assert!(hash.matches(&KeyHash::from_hex(&hash.to_hex()).unwrap()));
        assert!(!hash.matches(&ApiKey::generate("test").unwrap().hash()));
        assert_eq!(KeyHash::from_hex("abc"), None);
    }
}
