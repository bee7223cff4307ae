//! [`KeySet`]: an issuer's JWKS, reduced to the keys that can verify a
//! token here, and the choice of the key for a token.
//!
//! A JWKS document is read key by key: a key that is for encryption, is
//! symmetric (`oct`: a shared secret is never a verification key here), has
//! an unknown type or curve, or is too short is skipped with a warning
//! naming its `kid`, so one odd key does not cost the others. A key's type
//! fixes the algorithms it verifies (RSA: RS*/PS*; EC P-256: ES256; P-384:
//! ES384; Ed25519: EdDSA), narrowed to its `alg` when the JWK names one; a
//! token's header must name one of those.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// The shortest RSA modulus accepted, in bytes (2048 bits, as ring needs).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// The most keys kept from one document.
const MAX_KEYS: usize = 100;

/// One verification key.
#[derive(Debug)]
pub(crate) struct Key {
    /// The key's id, when the JWK has one.
    pub(crate) kid: Option<String>,
    /// The algorithm family its type allows.
    family: AlgorithmFamily,
    /// For EC keys, the one algorithm of its curve.
    curve_alg: Option<Algorithm>,
    /// The JWK's `alg`, when it names one.
    alg: Option<Algorithm>,
    /// The key for jsonwebtoken.
    pub(crate) decoding: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.family
            && self.curve_alg.is_none_or(|only| only == alg)
            && self.alg.is_none_or(|only| only == alg)
    }
}

/// Why no key verifies a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoKey {
    /// No key has the token's `kid` (or, without one, there is not exactly
    /// one key): perhaps the issuer rotated its keys.
    Unknown,
    /// The key exists but its type or `alg` does not fit the header's alg.
    WrongAlgorithm,
}

/// The usable keys of a JWKS document.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`.
    anonymous: Vec<Key>,
}

/// Why a JWKS document cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeySetError {
    /// Not JSON, or no `keys` array.
    #[error("not a JWKS document (a JSON object with a \"keys\" array): {0}")]
    Shape(String),
    /// No key in it can verify tokens.
    #[error("no usable signature key in the JWKS ({0})")]
    NoUsableKey(String),
}

#[derive(serde::Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Reads a JWKS document.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, KeySetError> {
        let document: Document =
            serde_json::from_slice(bytes).map_err(|err| KeySetError::Shape(err.to_string()))?;
        let mut set = Self::default();
        let mut skipped = Vec::new();
        for (index, value) in document.keys.into_iter().enumerate().take(MAX_KEYS) {
            let kid = value
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            let name = kid.clone().unwrap_or_else(|| format!("keys[{index}]"));
            match usable(value) {
                Ok(key) => set.add(key),
                Err(why) => {
                    tracing::warn!(key = %name, reason = why, "skipping a JWKS key");
                    skipped.push(format!("{name}: {why}"));
                }
            }
        }
        if set.is_empty() {
            let why = if skipped.is_empty() {
                "the keys array is empty".to_owned()
            } else {
                skipped.join("; ")
            };
            return Err(KeySetError::NoUsableKey(why));
        }
        Ok(set)
    }

    fn add(&mut self, key: Key) {
        match key.kid.clone() {
            // A repeated kid is ambiguous; the first one is kept, as most
            // libraries do.
            Some(kid) => {
                self.by_kid.entry(kid).or_insert(key);
            }
            None => self.anonymous.push(key),
        }
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    /// Whether there is no key.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token whose header names `kid` and `alg`: the key of
    /// that id or, for a token without a `kid`, the only key there is.
    pub(crate) fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Key, NoKey> {
        let key = match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.len() == 1 => self.by_kid.values().chain(&self.anonymous).next(),
            None => None,
        }
        .ok_or(NoKey::Unknown)?;
        if key.accepts(alg) {
            Ok(key)
        } else {
            Err(NoKey::WrongAlgorithm)
        }
    }
}

/// A JWK as a verification key, or why it is not one.
fn usable(value: serde_json::Value) -> Result<Key, &'static str> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "not a valid JWK")?;
    if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature) {
        return Err("its \"use\" is not \"sig\"");
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("its \"key_ops\" do not include \"verify\"");
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512) => {
            return Err("HMAC keys are shared secrets, never accepted");
        }
        Some(alg) => {
            Some(Algorithm::try_from(alg).map_err(|_| "its \"alg\" is not a signature algorithm")?)
        }
    };
    let (family, curve_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            let n = URL_SAFE_NO_PAD
                .decode(params.n.trim_end_matches('='))
                .map_err(|_| "its \"n\" is not base64url")?;
            let significant = n.iter().skip_while(|byte| **byte == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err("RSA keys shorter than 2048 bits are not accepted");
            }
            (AlgorithmFamily::Rsa, None)
        }
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return Err("its curve is not P-256 or P-384"),
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, None),
            _ => return Err("its curve is not Ed25519"),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are shared secrets, never accepted");
        }
        _ => return Err("its key type is not RSA, EC or OKP"),
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| "its key material is malformed")?;
    let key = Key {
        kid: jwk.common.key_id.clone(),
        family,
        curve_alg,
        alg,
        decoding,
    };
    if let Some(alg) = alg
        && !key.accepts(alg)
    {
        return Err("its \"alg\" does not fit its key type");
    }
    Ok(key)
}
