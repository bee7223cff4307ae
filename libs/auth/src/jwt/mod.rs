//! JWT authentication: tokens of a configured issuer, verified against its
//! published keys (JWKS), mapped onto an [`Identity`].
//!
//! ```text
//! Bearer eyJ… ─▶ cache (SHA-256 of the token) ──hit──▶ identity
//!                  │ miss
//!                  ▼
//!   header: alg in `algorithms`? ─no─▶ algorithm_not_allowed
//!   key of its kid in the JWKS?  ─no─▶ unknown_key (and a refetch of the URL, rate limited)
//!   key type/alg fits the alg?   ─no─▶ algorithm_not_allowed
//!   signature (ring), exp, nbf, iss, aud, leeway ─▶ bad_signature, expired, …
//!   tenant, subject, scopes from the configured claims ─▶ missing_tenant, …
//!                  ▼
//!   identity (credential id `jwt:<iss>#<sub>`) ─▶ cache until min(exp, now + 1 min)
//! ```
//!
//! Only asymmetric algorithms are ever accepted, and a key's type decides
//! which of them it verifies: an HS256 token "signed" with an issuer's
//! public key as the HMAC secret (the HS/RS confusion) and `alg: none`
//! tokens fail before any key is used. Keys come from [`source`] (a file
//! or a URL, kept current in the background), checks from jsonwebtoken with
//! ring doing the crypto ([`provider`]).

mod cache;
mod claims;
mod keyset;
mod provider;
mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use self::cache::TokenCache;
use self::claims::{ClaimError, ClaimNames};
use self::keyset::NoKey;
use self::source::KeySource;
use crate::identity::Identity;

/// `[auth.jwt]`: whose tokens are accepted and how their claims map onto an
/// identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// Accepted `aud` values: a token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (asymmetric only: RS256, RS384,
    /// RS512, PS256, PS384, PS512, ES256, ES384, EdDSA).
    pub algorithms: Vec<String>,
    /// A JWKS file with the issuer's public keys (re-read when it changes).
    pub jwks_file: Option<PathBuf>,
    /// The issuer's JWKS URL (fetched at start, refreshed every
    /// `jwks_refresh` and when a token names an unknown `kid`).
    pub jwks_url: Option<String>,
    /// How often the JWKS is refreshed.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim holding the tenant (a dotted path for nested claims).
    pub tenant_claim: String,
    /// The claim holding the subject.
    pub subject_claim: String,
    /// The claim holding the scopes: a space-separated string or an array.
    pub scopes_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audiences: Vec::new(),
            algorithms: vec!["RS256".to_owned()],
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            leeway: Duration::from_secs(60),
            tenant_claim: "tenant".to_owned(),
            subject_claim: "sub".to_owned(),
            scopes_claim: "scope".to_owned(),
        }
    }
}

/// The algorithms that may be configured: asymmetric ones only.
const ASYMMETRIC: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// The most clock skew that may be tolerated.
const MAX_LEEWAY: Duration = Duration::from_secs(600);
/// Bounds of `jwks_refresh`.
const REFRESH_BOUNDS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));

impl JwtConfig {
    /// Checks the settings: `(setting, problem)` when one cannot work.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.issuer.trim().is_empty() {
            return Err((
                "issuer",
                "set the `iss` your identity provider writes into its tokens, e.g. \"https://keycloak.example.com/realms/agentmesh\"".to_owned(),
            ));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|aud| aud.trim().is_empty()) {
            return Err((
                "audiences",
                "name at least one accepted `aud`, none empty, e.g. [\"agentmesh\"]: tokens issued for other services must not be accepted here".to_owned(),
            ));
        }
        self.accepted_algorithms()?;
        self.jwks_origin()?;
        if self.jwks_refresh < REFRESH_BOUNDS.0 || self.jwks_refresh > REFRESH_BOUNDS.1 {
            return Err(("jwks_refresh", "must be between 1s and 24h".to_owned()));
        }
        if self.leeway > MAX_LEEWAY {
            return Err((
                "leeway",
                "must be at most 10m: it extends every token's life by as much".to_owned(),
            ));
        }
        for (setting, name) in [
            ("tenant_claim", &self.tenant_claim),
            ("subject_claim", &self.subject_claim),
            ("scopes_claim", &self.scopes_claim),
        ] {
            if name.trim().is_empty() {
                return Err((
                    setting,
                    "name the claim (a top-level name, or a dotted path such as realm_access.roles)".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The accepted algorithms, checked.
    fn accepted_algorithms(&self) -> Result<Vec<Algorithm>, (&'static str, String)> {
        let list = ASYMMETRIC.join(", ");
        if self.algorithms.is_empty() {
            return Err((
                "algorithms",
                format!("name at least one of {list}, e.g. [\"RS256\"]"),
            ));
        }
        self.algorithms
            .iter()
            .map(|name| {
                if name.eq_ignore_ascii_case("none") {
                    return Err((
                        "algorithms",
                        "\"none\" is never accepted: an unsigned token proves nothing".to_owned(),
                    ));
                }
                if name.to_ascii_uppercase().starts_with("HS") {
                    return Err((
                        "algorithms",
                        format!(
                            "{name} is refused: HMAC needs a secret shared with the issuer, and accepting it beside public keys \
                             opens the HS/RS confusion (a token signed with the public key as the secret); use one of {list}"
                        ),
                    ));
                }
                ASYMMETRIC
                    .contains(&name.as_str())
                    .then(|| Algorithm::from_str(name).ok())
                    .flatten()
                    .ok_or_else(|| {
                        (
                            "algorithms",
                            format!("unknown algorithm {name:?}: use one of {list}"),
                        )
                    })
            })
            .collect()
    }

    /// Where the keys come from, checked.
    fn jwks_origin(&self) -> Result<Origin<'_>, (&'static str, String)> {
        match (&self.jwks_file, &self.jwks_url) {
            (None, None) => Err((
                "jwks_file",
                "set jwks_file or jwks_url: where the issuer's public keys (JWKS) are".to_owned(),
            )),
            (Some(_), Some(_)) => Err((
                "jwks_url",
                "set only one of jwks_file and jwks_url".to_owned(),
            )),
            (Some(path), None) if path.as_os_str().is_empty() => {
                Err(("jwks_file", "is empty: name the JWKS file".to_owned()))
            }
            (Some(path), None) => Ok(Origin::File(path)),
            (None, Some(url)) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|err| ("jwks_url", format!("{url:?} is not a URL: {err}")))?;
                if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
                    return Err((
                        "jwks_url",
                        format!(
                            "{url:?} must be an https:// (or, inside a trusted network, http://) URL with a host"
                        ),
                    ));
                }
                Ok(Origin::Url(parsed))
            }
        }
    }
}

/// Where the keys come from.
enum Origin<'a> {
    File(&'a std::path::Path),
    Url(reqwest::Url),
}

/// Why a token was refused, for audit events and metrics; the caller is
/// only told its credential is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtRefusal {
    /// Not a JWT, or its parts do not decode.
    Malformed,
    /// The header's algorithm is not accepted, or not the one of its key.
    AlgorithmNotAllowed,
    /// No key of the issuer has the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// Another `iss`.
    WrongIssuer,
    /// No accepted `aud`.
    WrongAudience,
    /// `exp`, `iss` or `aud` is missing or not of its type.
    MissingClaim,
    /// No tenant claim.
    MissingTenant,
    /// A tenant claim that is not a short string of visible characters.
    InvalidTenant,
    /// No usable subject claim.
    MissingSubject,
}

impl JwtRefusal {
    /// The reason's name in audit events and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::MissingTenant => "missing_tenant",
            Self::InvalidTenant => "invalid_tenant",
            Self::MissingSubject => "missing_subject",
        }
    }
}

/// A refused token: why, and whose it was when its signature verified
/// (`jwt:<iss>#<sub>`; empty before that, since unverified claims are the
/// sender's invention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: JwtRefusal,
    /// The credential id, when known.
    pub credential_id: String,
}

impl From<JwtRefusal> for Refused {
    fn from(reason: JwtRefusal) -> Self {
        Self {
            reason,
            credential_id: String::new(),
        }
    }
}

/// Tokens remembered after verification.
const CACHE_CAPACITY: usize = 10_000;
/// The longest encoded header read before verification.
const MAX_HEADER_CHARS: usize = 4096;
/// The longest issuer or subject put into a credential id.
const MAX_LABEL_CHARS: usize = 256;

/// Verifies the tokens of one issuer. Cheap to clone (shared).
///
/// Keys from a URL arrive only once the task of [`JwtVerifier::watch`]
/// runs: until then every token is refused as `unknown_key`.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    issuer: String,
    /// One validation per accepted algorithm: jsonwebtoken checks a token
    /// against a validation of its own algorithm's family.
    validations: Vec<(Algorithm, Validation)>,
    names: ClaimNames,
    keys: KeySource,
    cache: Arc<TokenCache>,
}

impl JwtVerifier {
    /// A verifier as `config` says; a JWKS file is read now.
    pub fn from_config(config: &JwtConfig) -> Result<Self, (&'static str, String)> {
        config.validate()?;
        if !provider::install() {
            return Err((
                "algorithms",
                "no JWT crypto provider could be installed".to_owned(),
            ));
        }
        let keys = match config.jwks_origin()? {
            Origin::File(path) => {
                KeySource::file(path).map_err(|err| ("jwks_file", err.to_string()))?
            }
            Origin::Url(url) => KeySource::url(url, config.jwks_refresh),
        };
        let validations = config
            .accepted_algorithms()?
            .into_iter()
            .map(|alg| (alg, validation(config, alg)))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                issuer: config.issuer.clone(),
                validations,
                names: ClaimNames {
                    tenant: config.tenant_claim.clone(),
                    subject: config.subject_claim.clone(),
                    scopes: config.scopes_claim.clone(),
                },
                keys,
                cache: Arc::new(TokenCache::new(CACHE_CAPACITY)),
            }),
        })
    }

    /// Keeps the keys current (the file checked every `interval`, the URL
    /// fetched now and every `jwks_refresh`) until the task is aborted.
    pub fn watch(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let cache = Arc::clone(&self.inner.cache);
        self.inner.keys.watch(interval, move || cache.clear())
    }

    /// The identity `token` stands for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, Refused> {
        let now = unix_now();
        let hash = cache::hash(token);
        if let Some(identity) = self.inner.cache.get(&hash, now) {
            return Ok(identity);
        }
        let (identity, exp) = self.verify_uncached(token)?;
        self.inner.cache.insert(hash, identity.clone(), exp, now);
        Ok(identity)
    }

    /// How many verifications were answered from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.inner.cache.hits()
    }

    /// How many keys are loaded.
    pub fn key_count(&self) -> usize {
        self.inner.keys.current().len()
    }

    /// The full check; the identity and the token's `exp`.
    fn verify_uncached(&self, token: &str) -> Result<(Identity, u64), Refused> {
        let header = looks_like_jwt(token)
            .then(|| peek_header(token))
            .flatten()
            .ok_or(JwtRefusal::Malformed)?;
        let (alg, validation) = Algorithm::from_str(&header.alg)
            .ok()
            .and_then(|alg| {
                self.inner
                    .validations
                    .iter()
                    .find(|(accepted, _)| *accepted == alg)
            })
            .ok_or(JwtRefusal::AlgorithmNotAllowed)?;
        let keys = self.inner.keys.current();
        let key = keys
            .key_for(header.kid.as_deref(), *alg)
            .map_err(|no_key| match no_key {
                NoKey::Unknown => {
                    self.inner.keys.unknown_key();
                    JwtRefusal::UnknownKey
                }
                NoKey::WrongAlgorithm => JwtRefusal::AlgorithmNotAllowed,
            })?;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, validation)
            .map_err(|err| refusal(token, err.kind()))?;
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|exp| exp as u64)))
            .unwrap_or_default();
        let identity =
            claims::identity(&claims, &self.inner.names, &self.inner.issuer).map_err(|err| {
                Refused {
                    reason: match err {
                        ClaimError::MissingTenant => JwtRefusal::MissingTenant,
                        ClaimError::InvalidTenant => JwtRefusal::InvalidTenant,
                        ClaimError::MissingSubject => JwtRefusal::MissingSubject,
                    },
                    credential_id: signed_credential_id(&claims),
                }
            })?;
        Ok((identity, exp))
    }
}

/// jsonwebtoken's checks for tokens signed with `alg`.
fn validation(config: &JwtConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&config.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.leeway = config.leeway.as_secs();
    validation
}

/// The refusal for a failed check. The claim checks run after the
/// signature verified, so their claims name the token's holder.
fn refusal(token: &str, kind: &ErrorKind) -> Refused {
    let reason = match kind {
        ErrorKind::InvalidSignature => JwtRefusal::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            JwtRefusal::AlgorithmNotAllowed
        }
        ErrorKind::ExpiredSignature => JwtRefusal::Expired,
        ErrorKind::ImmatureSignature => JwtRefusal::NotYetValid,
        ErrorKind::InvalidIssuer => JwtRefusal::WrongIssuer,
        ErrorKind::InvalidAudience => JwtRefusal::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            JwtRefusal::MissingClaim
        }
        _ => JwtRefusal::Malformed,
    };
    let signed = matches!(
        reason,
        JwtRefusal::Expired
            | JwtRefusal::NotYetValid
            | JwtRefusal::WrongIssuer
            | JwtRefusal::WrongAudience
            | JwtRefusal::MissingClaim
    );
    Refused {
        reason,
        credential_id: if signed {
            jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token)
                .map(|claims| signed_credential_id(&claims))
                .unwrap_or_default()
        } else {
            String::new()
        },
    }
}

/// `jwt:<iss>#<sub>` from claims whose signature verified, shortened and
/// stripped of control characters (they end up in audit events).
fn signed_credential_id(claims: &serde_json::Value) -> String {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .chars()
            .filter(|char| !char.is_control())
            .take(MAX_LABEL_CHARS)
            .collect::<String>()
    };
    claims::credential_id(&text("iss"), &text("sub"))
}

/// The header fields read before the signature is checked (only to choose
/// the key and refuse early).
#[derive(Deserialize)]
struct PeekedHeader {
    alg: String,
    kid: Option<String>,
}

fn peek_header(token: &str) -> Option<PeekedHeader> {
    let encoded = token.split('.').next()?;
    if encoded.len() > MAX_HEADER_CHARS {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a bearer token has the shape of a JWS in compact form: three
/// base64url parts, the first two non-empty.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let base64url = |part: &str| {
        part.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    };
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty()
                && !payload.is_empty()
                && base64url(header)
                && base64url(payload)
                && base64url(signature)
        }
        _ => false,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default()
}
