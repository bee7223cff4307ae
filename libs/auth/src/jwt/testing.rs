//! Test support: tokens signed with the fixture keys (and keys made on the
//! spot) by ring, built by hand so tests can also make the tokens no
//! library would (`alg: none`, HMAC with a public key as the secret).
//!
//! Built for this crate's tests and, behind the `testing` feature, for the
//! mesh's cross-service tests and benchmarks; the keys are the public test
//! fixtures under `tests/fixtures`, never anything a deployment trusts.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test support: a broken fixture fails the test that uses it"
)]

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, KeyPair as _};
use serde_json::{Value, json};

use super::JwtConfig;

/// The test issuer.
pub const ISSUER: &str = "https://idp.example.test/realms/agentmesh";
/// The test audience.
pub const AUDIENCE: &str = "agentmesh";

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap()
}

/// The DER inside a PEM file.
pub fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    super::unix_now()
}

#[derive(Debug)]
enum Pair {
    Rsa(ring_sig::RsaKeyPair),
    Ec(ring_sig::EcdsaKeyPair),
}

/// A private key that signs tokens with its kid in the header.
#[derive(Debug)]
pub struct Signer {
    pair: Pair,
    pub kid: String,
    pub alg: &'static str,
}

/// The fixture RSA key (`rsa-1`, RS256).
pub fn rsa() -> Signer {
    let der = pem_der(&fixture("rsa-private.pem"));
    Signer {
        pair: Pair::Rsa(ring_sig::RsaKeyPair::from_pkcs8(&der).unwrap()),
        kid: "rsa-1".to_owned(),
        alg: "RS256",
    }
}

/// The fixture EC P-256 key (`ec-1`, ES256).
pub fn ec() -> Signer {
    let der = pem_der(&fixture("ec-private.pem"));
    let pair = ring_sig::EcdsaKeyPair::from_pkcs8(
        &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
        &SystemRandom::new(),
    )
    .unwrap();
    Signer {
        pair: Pair::Ec(pair),
        kid: "ec-1".to_owned(),
        alg: "ES256",
    }
}

/// A new EC P-256 key named `kid`.
pub fn fresh_ec(kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let alg = &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring_sig::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    Signer {
        pair: Pair::Ec(ring_sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()),
        kid: kid.to_owned(),
        alg: "ES256",
    }
}

impl Signer {
    /// The public JWK.
    pub fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Rsa(pair) => {
                let parts = ring_sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": self.alg,
                       "n": b64(&parts.n), "e": b64(&parts.e)})
            }
            Pair::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "use": "sig", "alg": self.alg, "crv": "P-256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
        }
    }

    /// A token with `header` and `claims`, signed by this key.
    pub fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring_sig::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut signature,
                )
                .unwrap();
                signature
            }
            Pair::Ec(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }

    /// A token with `claims`, its header naming this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(
            &json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

/// A JWKS document of `signers`.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|signer| signer.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Good claims for alice of acme, valid for ten minutes.
pub fn claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "account"],
        "sub": "alice",
        "tenant": "acme",
        "scope": "openid runs:read runs:write",
        "iat": now,
        "exp": now + 600,
    })
}

/// `claims()` with `changes` applied (a null removes a claim).
pub fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// An HS256 token whose HMAC secret is `secret`.
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// The settings for tokens of the test issuer, keys from `jwks_file`.
pub fn config(jwks_file: PathBuf) -> JwtConfig {
    JwtConfig {
        issuer: ISSUER.to_owned(),
        audiences: vec![AUDIENCE.to_owned()],
        algorithms: vec!["RS256".to_owned(), "ES256".to_owned()],
        jwks_file: Some(jwks_file),
        leeway: std::time::Duration::ZERO,
        ..JwtConfig::default()
    }
}
