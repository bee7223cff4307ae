//! [`Authenticator`]: from a call's headers to a verified [`Identity`].
//!
//! ```text
//! peer over its failure budget? ──yes──▶ refused (too many failures)
//!        │ no
//! authorization: Bearer am_…  ──▶ API keys ─┐
//! authorization: Bearer <a.b.c> ─▶ JWT ─────┼─▶ caller's identity ─▶ forwarded identity?
//! authorization: Bearer <other> ─▶ JWT ─────┼─▶ caller's identity ─▶ forwarded identity?
//! no bearer, verified client certificate ─▶ mTLS principals ─┤
//! no credential, method none ─▶ labels ─────┘         │                 (x-agentmesh-*)
//!                                                    │  from a service: the end user's, with the service as actor
//!                                                    │  from anyone else: refused (PERMISSION_DENIED)
//! ```
//!
//! A refusal says to the caller only what it can act on: no credential, a
//! credential that is not valid here, or a header it may not send. Whether
//! a key exists, was revoked or expired is told apart only in the audit
//! trail and the metrics ([`Refusal::reason`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;

use crate::config::{AuthConfig, AuthConfigError, Method};
use crate::identity::{self, Actor, AllowLists, Identity, Mechanism};
use crate::jwt::{self, JwtVerifier};
use crate::keys::ApiKey;
use crate::keys::file::KeysFile;
use crate::keys::store::{InMemoryKeys, KeyStore, KeyStoreError};
use crate::mtls::{CertificateNames, MtlsPrincipals, Peer};
use crate::scope::{Scope, ScopeSet};

/// The longest credential looked at.
const MAX_CREDENTIAL_BYTES: usize = 8192;
/// Peers remembered as over their failure budget before old ones are
/// dropped.
const MAX_BLOCKED_PEERS: usize = 10_000;

/// What the refused caller is told, as a gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// No credential, or one that is not valid here.
    Unauthenticated,
    /// A valid credential that may not do this.
    PermissionDenied,
    /// Too many failed authentications from this peer.
    TooManyFailures {
        /// When the peer may try again.
        retry_after: Duration,
    },
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code for the caller.
    pub code: RefusalCode,
    /// The reason for audit and metrics (a fixed set of names).
    pub reason: &'static str,
    /// The message for the caller: never says whether a key exists.
    pub message: &'static str,
    /// The presented credential's id, when it has one (never the secret).
    pub credential_id: String,
    /// How the caller tried to authenticate.
    pub mechanism: Mechanism,
}

impl Refusal {
    fn unauthenticated(reason: &'static str, mechanism: Mechanism, credential_id: String) -> Self {
        Self {
            code: RefusalCode::Unauthenticated,
            reason,
            message: INVALID_CREDENTIAL,
            credential_id,
            mechanism,
        }
    }
}

const INVALID_CREDENTIAL: &str = "the credential is not valid for this service (unknown, revoked, expired or malformed): check the API key or token";
const NO_CREDENTIAL: &str = "no credential: send `authorization: Bearer <API key or JWT>` (agentmesh CLI: --api-key or AGENTMESH_API_KEY)";
const FORWARDED_FROM_OUTSIDE: &str = "x-agentmesh-* identity headers may only be sent by services of the mesh: your tenant and subject come from your credential";
const TOO_MANY_FAILURES: &str =
    "too many failed authentications from this address: wait before trying again";

/// The authenticators of a service, and the failure budget of its peers.
#[derive(Debug)]
pub struct Authenticator {
    none: bool,
    keys: Option<KeyStore>,
    jwt: Option<JwtVerifier>,
    mtls: MtlsPrincipals,
    failures: FailureBudget,
}

impl Authenticator {
    /// Builds the authenticators `config` names (reads the keys file).
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        config.validate()?;
        let extra = config
            .in_memory_keys
            .as_ref()
            .map(InMemoryKeys::accepted)
            .unwrap_or_default();
        let keys = match (&config.keys_file, config.methods.contains(&Method::ApiKey)) {
            (Some(path), true) => {
                Some(
                    KeyStore::open_with(path, extra).map_err(|err| AuthConfigError {
                        setting: "keys_file".to_owned(),
                        problem: match err {
                            KeyStoreError::Read { source, .. } => {
                                format!("cannot read {}: {source}", path.display())
                            }
                            KeyStoreError::Invalid { error, .. } => {
                                format!("{} is invalid at {error}", path.display())
                            }
                        },
                    })?,
                )
            }
            // The embedded mesh's service keys work without a keys file.
            _ if !extra.is_empty() && !config.is_none() => Some(
                KeyStore::from_file(&KeysFile {
                    keys: extra.to_vec(),
                    ..KeysFile::default()
                })
                .map_err(|err| AuthConfigError {
                    setting: "in_memory_keys".to_owned(),
                    problem: err.to_string(),
                })?,
            ),
            _ => None,
        };
        let jwt = config
            .methods
            .contains(&Method::Jwt)
            .then(|| JwtVerifier::from_config(&config.jwt))
            .transpose()
            .map_err(|(setting, problem)| AuthConfigError {
                setting: format!("jwt.{setting}"),
                problem,
            })?;
        let mtls =
            MtlsPrincipals::new(&config.mtls_principals).map_err(|(index, setting, problem)| {
                AuthConfigError {
                    setting: format!("mtls_principals[{index}].{setting}"),
                    problem,
                }
            })?;
        Ok(Self {
            none: config.is_none(),
            keys,
            jwt,
            mtls,
            failures: FailureBudget::new(config.max_failures_per_minute),
        })
    }

    /// Nobody is asked: the embedded single-user mode.
    pub fn none() -> Self {
        Self {
            none: true,
            keys: None,
            jwt: None,
            mtls: MtlsPrincipals::default(),
            failures: FailureBudget::new(30),
        }
    }

    /// API keys from `store` (tests, the embedded mesh).
    pub fn with_keys(store: KeyStore, max_failures_per_minute: u32) -> Self {
        Self {
            none: false,
            keys: Some(store),
            jwt: None,
            mtls: MtlsPrincipals::default(),
            failures: FailureBudget::new(max_failures_per_minute),
        }
    }

    /// Also accepts the JWTs `verifier` checks (tests, the embedded mesh).
    #[must_use]
    pub fn with_jwt(mut self, verifier: JwtVerifier) -> Self {
        self.none = false;
        self.jwt = Some(verifier);
        self
    }

    /// Also accepts client certificates mapped by `principals` (tests, the
    /// embedded mesh).
    #[must_use]
    pub fn with_mtls(mut self, principals: MtlsPrincipals) -> Self {
        self.mtls = principals;
        self
    }

    /// Whether nobody is asked.
    pub fn is_none(&self) -> bool {
        self.none
    }

    /// Reloads the keys file and a JWKS file when they change, every
    /// `interval`, and fetches a JWKS URL; the tasks end when the returned
    /// handles are aborted.
    pub fn watch(&self, interval: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        self.keys
            .iter()
            .filter_map(|keys| keys.watch(interval))
            .chain(self.jwt.iter().map(|jwt| jwt.watch(interval)))
            .collect()
    }

    /// The identity a call is for, or why it is refused. `peer` is the
    /// caller's address, or a [`Peer`] with its verified client certificate.
    pub fn authenticate<'peer>(
        &self,
        headers: &HeaderMap,
        peer: impl Into<Peer<'peer>>,
    ) -> Result<Identity, Refusal> {
        let Peer {
            ip: peer,
            certificate,
        } = peer.into();
        if self.none {
            return Ok(unauthenticated(headers));
        }
        if let Some(retry_after) = peer.and_then(|peer| self.failures.blocked(peer)) {
            return Err(Refusal {
                code: RefusalCode::TooManyFailures { retry_after },
                reason: "too_many_failures",
                message: TOO_MANY_FAILURES,
                credential_id: String::new(),
                mechanism: Mechanism::None,
            });
        }
        let result = self
            .verify(headers, certificate)
            .and_then(|caller| with_forwarded(caller, headers));
        if let (Err(refusal), Some(peer)) = (&result, peer)
            && refusal.code == RefusalCode::Unauthenticated
        {
            self.failures.fail(peer);
        }
        result
    }

    /// The caller's own identity, from its credential.
    fn verify(
        &self,
        headers: &HeaderMap,
        certificate: Option<&CertificateNames>,
    ) -> Result<Identity, Refusal> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            // A bearer, when sent, wins over the connection's certificate.
            if let Some(result) = certificate.and_then(|names| self.mtls.authenticate(names)) {
                return result.map_err(|credential_id| {
                    Refusal::unauthenticated("unknown_certificate", Mechanism::Mtls, credential_id)
                });
            }
            return Err(Refusal {
                message: NO_CREDENTIAL,
                ..Refusal::unauthenticated("missing", Mechanism::None, String::new())
            });
        };
        let token = value
            .to_str()
            .ok()
            .filter(|value| value.len() <= MAX_CREDENTIAL_BYTES)
            .and_then(bearer)
            .ok_or_else(|| Refusal::unauthenticated("malformed", Mechanism::None, String::new()))?;
        if token.starts_with(crate::keys::PREFIX) {
            let keys = self.keys.as_ref().ok_or_else(|| {
                Refusal::unauthenticated("method_off", Mechanism::ApiKey, String::new())
            })?;
            let key = ApiKey::parse(token).map_err(|_| {
                Refusal::unauthenticated("malformed", Mechanism::ApiKey, String::new())
            })?;
            return keys
                .verify(&key, jiff::Timestamp::now())
                .map_err(|refusal| {
                    Refusal::unauthenticated(
                        refusal.as_str(),
                        Mechanism::ApiKey,
                        key.id().to_owned(),
                    )
                });
        }
        if jwt::looks_like_jwt(token) {
            let verifier = self.jwt.as_ref().ok_or_else(|| {
                Refusal::unauthenticated("method_off", Mechanism::Jwt, String::new())
            })?;
            let mut identity = verifier.verify(token).map_err(|refused| {
                Refusal::unauthenticated(
                    refused.reason.as_str(),
                    Mechanism::Jwt,
                    refused.credential_id,
                )
            })?;
            // A tenant's allow-lists in the keys file bind its token users
            // as they bind its keys.
            if let Some(tenant_allow) = self
                .keys
                .as_ref()
                .and_then(|keys| keys.tenant_allow(&identity.tenant))
            {
                identity.allow = identity.allow.intersect(&tenant_allow);
            }
            return Ok(identity);
        }
        Err(Refusal::unauthenticated(
            "malformed",
            Mechanism::None,
            String::new(),
        ))
    }
}

/// The token of an `authorization: Bearer <token>` value (scheme
/// case-insensitive, as RFC 9110 says).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The embedded mode's identity: the headers are labels nobody checked.
fn unauthenticated(headers: &HeaderMap) -> Identity {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    Identity::unauthenticated(text(identity::TENANT), text(identity::SUBJECT))
}

/// Applies the `x-agentmesh-*` headers: from a service, the identity it
/// acts for; from anyone else, a refusal unless they merely repeat the
/// caller's own tenant and subject.
fn with_forwarded(caller: Identity, headers: &HeaderMap) -> Result<Identity, Refusal> {
    if !Identity::has_forwarded_headers(headers) {
        return Ok(caller);
    }
    let text = |name: &str| headers.get(name).map(|value| value.to_str().ok());
    if !caller.scopes.contains(Scope::Service) {
        let repeats_own = text(identity::TENANT)
            .is_none_or(|tenant| tenant == Some(caller.tenant.as_str()))
            && text(identity::SUBJECT)
                .is_none_or(|subject| subject == Some(caller.subject.as_str()))
            && [identity::SCOPES, identity::CREDENTIAL, identity::ALLOW]
                .iter()
                .all(|name| !headers.contains_key(*name));
        if repeats_own {
            return Ok(caller);
        }
        return Err(Refusal {
            code: RefusalCode::PermissionDenied,
            reason: "forwarded_identity_from_non_service",
            message: FORWARDED_FROM_OUTSIDE,
            credential_id: caller.credential_id,
            mechanism: caller.mechanism,
        });
    }
    let malformed = || Refusal {
        code: RefusalCode::PermissionDenied,
        reason: "malformed_forwarded_identity",
        message: "the forwarded x-agentmesh-* identity headers are malformed",
        credential_id: caller.credential_id.clone(),
        mechanism: caller.mechanism,
    };
    let field = |name: &str| match text(name) {
        None => Ok(""),
        Some(Some(value)) => Ok(value),
        Some(None) => Err(malformed()),
    };
    let scopes = ScopeSet::parse_list(field(identity::SCOPES)?).map_err(|_| malformed())?;
    let allow = match field(identity::ALLOW)? {
        "" => AllowLists::any(),
        value => AllowLists::from_header(value).ok_or_else(malformed)?,
    };
    let credential_id = field(identity::CREDENTIAL)?.to_owned();
    let tenant = field(identity::TENANT)?;
    if !identity::is_tenant_name(tenant) {
        return Err(malformed());
    }
    Ok(Identity {
        tenant: tenant.to_owned(),
        subject: field(identity::SUBJECT)?.to_owned(),
        // A service cannot lend itself the right to act as a service.
        scopes: ScopeSet::iter(scopes)
            .filter(|scope| *scope != Scope::Service)
            .collect(),
        allow,
        mechanism: mechanism_of(&credential_id),
        credential_id,
        actor: Some(Actor {
            credential_id: caller.credential_id,
            subject: caller.subject,
            scopes: caller.scopes,
            mechanism: caller.mechanism,
        }),
    })
}

/// Failed authentications per peer address per minute: past the budget, the
/// peer is refused unchecked until it has one again.
struct FailureBudget {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for FailureBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureBudget").finish_non_exhaustive()
    }
}

impl FailureBudget {
    fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// How long `peer` must still wait, if it is over its budget.
    fn blocked(&self, peer: IpAddr) -> Option<Duration> {
        let mut blocked = self
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if blocked.is_empty() {
            return None;
        }
        let until = *blocked.get(&peer)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            blocked.remove(&peer);
            return None;
        }
        Some(left)
    }

    /// Counts a failure of `peer`; past the budget it is blocked.
    fn fail(&self, peer: IpAddr) {
        let Err(not_until) = self.limiter.check_key(&peer) else {
            return;
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut blocked = self
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if blocked.len() >= MAX_BLOCKED_PEERS {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            self.limiter.retain_recent();
        }
        if blocked.len() < MAX_BLOCKED_PEERS {
            blocked.insert(peer, Instant::now() + wait);
        }
    }
}

/// The mechanism a credential id was made by (`am_…` keys, `jwt:…`,
/// `mtls:…`, anything else none), for identities forwarded by services.
fn mechanism_of(credential_id: &str) -> Mechanism {
    if credential_id.starts_with(crate::keys::PREFIX) {
        Mechanism::ApiKey
    } else if credential_id.starts_with("jwt:") {
        Mechanism::Jwt
    } else if credential_id.starts_with("mtls:") {
        Mechanism::Mtls
    } else {
        Mechanism::None
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;
    use crate::keys::file::{KeyEntry, KeysFile};

    fn key_entry(key: &ApiKey, tenant: &str, subject: &str, scopes: &[&str]) -> KeyEntry {
        KeyEntry {
            id: key.id().to_owned(),
            sha256: key.hash().to_hex(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            label: String::new(),
            expires: None,
            agents: None,
            routes: None,
            tools: Some(vec!["calculator".to_owned()]),
            revoked: false,
        }
    }

    struct Fixture {
        auth: Authenticator,
        user: ApiKey,
        service: ApiKey,
    }

    fn fixture(max_failures: u32) -> Fixture {
        let user = ApiKey::generate("test").unwrap();
        let service = ApiKey::generate("test").unwrap();
        let file = KeysFile {
            keys: vec![
                key_entry(&user, "acme", "alice", &["runs:read", "runs:write"]),
                key_entry(&service, "", "orchestrator", &["service", "llm:generate"]),
            ],
            ..KeysFile::default()
        };
        Fixture {
            auth: Authenticator::with_keys(KeyStore::from_file(&file).unwrap(), max_failures),
            user,
            service,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn bearer_of(key: &ApiKey) -> String {
        format!("Bearer {}", key.expose())
    }

    const PEER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn a_key_gives_its_identity_and_missing_or_bad_ones_are_refused() {
        let f = fixture(100);
        let identity = f
            .auth
            .authenticate(&headers(&[("authorization", &bearer_of(&f.user))]), PEER)
            .unwrap();
        assert_eq!(
            (identity.tenant.as_str(), identity.subject.as_str()),
            ("acme", "alice")
        );
        assert_eq!(identity.mechanism, Mechanism::ApiKey);

        let refusal = f.auth.authenticate(&HeaderMap::new(), PEER).unwrap_err();
        assert_eq!(
            (refusal.code, refusal.reason),
            (RefusalCode::Unauthenticated, "missing")
        );
        assert!(refusal.message.contains("authorization: Bearer"));

        let unknown = ApiKey::generate("test").unwrap();
        let refusal = f
            .auth
            .authenticate(&headers(&[("authorization", &bearer_of(&unknown))]), PEER)
            .unwrap_err();
        assert_eq!(refusal.reason, "unknown_key");
        assert_eq!(refusal.credential_id, unknown.id());
        let wrong = ApiKey::parse(&format!("{}{}", f.user.id(), "Z".repeat(24))).unwrap();
        let mismatch = f
            .auth
            .authenticate(&headers(&[("authorization", &bearer_of(&wrong))]), PEER)
            .unwrap_err();
        // The caller cannot tell an existing id from an unknown one.
        assert_eq!(mismatch.message, refusal.message);
        assert_eq!(mismatch.reason, "wrong_key");

        for bad in [
            "Basic abc",
            "Bearer",
            "am_test_x",
            "Bearer eyJhbGciOiJub25lIn0.e30.",
        ] {
            let refusal = f
                .auth
                .authenticate(&headers(&[("authorization", bad)]), PEER)
                .unwrap_err();
            assert_eq!(refusal.code, RefusalCode::Unauthenticated, "{bad}");
        }
    }

    #[test]
    fn identity_headers_are_believed_only_from_services() {
        let f = fixture(100);
        let forged = headers(&[
            ("authorization", &bearer_of(&f.user)),
            ("x-agentmesh-tenant", "globex"),
        ]);
        let refusal = f.auth.authenticate(&forged, PEER).unwrap_err();
        assert_eq!(refusal.code, RefusalCode::PermissionDenied);
        assert_eq!(refusal.reason, "forwarded_identity_from_non_service");
        let own = headers(&[
            ("authorization", &bearer_of(&f.user)),
            ("x-agentmesh-tenant", "acme"),
        ]);
        assert_eq!(f.auth.authenticate(&own, PEER).unwrap().tenant, "acme");

        let forwarded = headers(&[
            ("authorization", &bearer_of(&f.service)),
            ("x-agentmesh-tenant", "globex"),
            ("x-agentmesh-subject", "bob"),
            ("x-agentmesh-scopes", "runs:read service"),
            ("x-agentmesh-credential", "am_live_abcdefgh"),
            ("x-agentmesh-allow", "tools=calculator"),
        ]);
        let identity = f.auth.authenticate(&forwarded, PEER).unwrap();
        assert_eq!(
            (identity.tenant.as_str(), identity.subject.as_str()),
            ("globex", "bob")
        );
        assert!(
            !identity.scopes.contains(Scope::Service),
            "a service lent itself the service scope"
        );
        assert!(
            identity.allows(Scope::LlmGenerate),
            "the service's own scopes lend to the call"
        );
        assert!(!identity.allow.tools.allows("run_command"));
        assert_eq!(identity.mechanism, Mechanism::ApiKey);
        assert_eq!(identity.actor.unwrap().subject, "orchestrator");

        let service_alone = headers(&[("authorization", &bearer_of(&f.service))]);
        assert!(
            f.auth
                .authenticate(&service_alone, PEER)
                .unwrap()
                .is_service()
        );
    }

    #[test]
    fn a_peer_past_its_failure_budget_is_refused_unchecked() {
        let f = fixture(3);
        let bad = headers(&[(
            "authorization",
            "Bearer am_test_00000000000000000000000000000000",
        )]);
        for _ in 0..3 {
            assert_eq!(
                f.auth.authenticate(&bad, PEER).unwrap_err().code,
                RefusalCode::Unauthenticated
            );
        }
        // The fourth failure is over the budget; from then on even a good
        // key from that address waits.
        let _ = f.auth.authenticate(&bad, PEER);
        let good = headers(&[("authorization", &bearer_of(&f.user))]);
        let refusal = f.auth.authenticate(&good, PEER).unwrap_err();
        assert!(
            matches!(refusal.code, RefusalCode::TooManyFailures { retry_after } if retry_after > Duration::ZERO)
        );
        let elsewhere = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));
        assert!(f.auth.authenticate(&good, elsewhere).is_ok());
    }

    fn jwt_fixture(max_failures: u32) -> (Fixture, tempfile::TempDir) {
        use crate::jwt::testing;
        let dir = tempfile::tempdir().unwrap();
        let keys_file = dir.path().join("keys.toml");
        let f = fixture(max_failures);
        let user = f.user.clone();
        std::fs::write(
            &keys_file,
            KeysFile {
                keys: vec![key_entry(&user, "acme", "alice", &["runs:read"])],
                ..KeysFile::default()
            }
            .to_toml(),
        )
        .unwrap();
        let config = AuthConfig {
            methods: vec![Method::ApiKey, Method::Jwt],
            keys_file: Some(keys_file),
            jwt: testing::config(testing::fixture_path("jwks.json")),
            max_failures_per_minute: max_failures,
            ..AuthConfig::default()
        };
        let auth = Authenticator::from_config(&config).unwrap();
        (Fixture { auth, ..f }, dir)
    }

    #[test]
    fn a_tenants_allow_lists_in_the_keys_file_bind_its_token_users_too() {
        use crate::jwt::testing;
        use crate::keys::file::TenantPolicy;
        let dir = tempfile::tempdir().unwrap();
        let keys_file = dir.path().join("keys.toml");
        let mut file = KeysFile::default();
        file.tenants.insert(
            "acme".to_owned(),
            TenantPolicy {
                tools: Some(vec!["calculator".to_owned()]),
                ..TenantPolicy::default()
            },
        );
        std::fs::write(&keys_file, file.to_toml()).unwrap();
        let auth = Authenticator::from_config(&AuthConfig {
            methods: vec![Method::ApiKey, Method::Jwt],
            keys_file: Some(keys_file),
            jwt: testing::config(testing::fixture_path("jwks.json")),
            ..AuthConfig::default()
        })
        .unwrap();
        let bearer = |claims| format!("Bearer {}", testing::rsa().sign(&claims));
        let acme = auth
            .authenticate(
                &headers(&[("authorization", &bearer(testing::claims()))]),
                PEER,
            )
            .unwrap();
        assert!(acme.allow.tools.allows("calculator"));
        assert!(!acme.allow.tools.allows("http_get"), "{:?}", acme.allow);
        let globex = auth
            .authenticate(
                &headers(&[(
                    "authorization",
                    &bearer(testing::claims_with(
                        serde_json::json!({"tenant": "globex"}),
                    )),
                )]),
                PEER,
            )
            .unwrap();
        assert!(globex.allow.tools.allows("http_get"));
    }

    #[test]
    fn bearers_go_to_the_api_keys_or_the_jwt_verifier_by_their_shape() {
        use crate::jwt::testing;
        let (f, _dir) = jwt_fixture(100);
        let key = f
            .auth
            .authenticate(&headers(&[("authorization", &bearer_of(&f.user))]), PEER)
            .unwrap();
        assert_eq!(key.mechanism, Mechanism::ApiKey);
        let token = testing::rsa().sign(&testing::claims());
        let jwt = f
            .auth
            .authenticate(
                &headers(&[("authorization", &format!("Bearer {token}"))]),
                PEER,
            )
            .unwrap();
        assert_eq!(
            (jwt.tenant.as_str(), jwt.mechanism),
            ("acme", Mechanism::Jwt)
        );
        assert!(jwt.credential_id.starts_with("jwt:"));

        let expired = testing::rsa().sign(&testing::claims_with(serde_json::json!({"exp": 1})));
        let refusal = f
            .auth
            .authenticate(
                &headers(&[("authorization", &format!("Bearer {expired}"))]),
                PEER,
            )
            .unwrap_err();
        assert_eq!(
            (refusal.code, refusal.reason, refusal.mechanism),
            (RefusalCode::Unauthenticated, "expired", Mechanism::Jwt)
        );
        // The caller hears what an unknown API key hears.
        assert_eq!(refusal.message, INVALID_CREDENTIAL);
        assert!(!refusal.credential_id.contains(&expired));

        let refusal = f
            .auth
            .authenticate(&headers(&[("authorization", "Bearer opaque-token")]), PEER)
            .unwrap_err();
        assert_eq!(refusal.reason, "malformed");

        // Without the jwt method, a JWT is refused as such.
        let keys_only = fixture(100);
        let refusal = keys_only
            .auth
            .authenticate(
                &headers(&[("authorization", &format!("Bearer {token}"))]),
                PEER,
            )
            .unwrap_err();
        assert_eq!(
            (refusal.reason, refusal.mechanism),
            ("method_off", Mechanism::Jwt)
        );
    }

    #[test]
    fn a_service_token_may_forward_an_identity_and_bad_tokens_spend_the_budget() {
        use crate::jwt::testing;
        let (f, _dir) = jwt_fixture(2);
        let service = testing::rsa().sign(&testing::claims_with(serde_json::json!({
            "sub": "orchestrator", "tenant": "platform", "scope": "service llm:generate"
        })));
        let forwarded = headers(&[
            ("authorization", &format!("Bearer {service}")),
            ("x-agentmesh-tenant", "globex"),
            ("x-agentmesh-subject", "bob"),
        ]);
        let identity = f.auth.authenticate(&forwarded, PEER).unwrap();
        assert_eq!(identity.tenant, "globex");
        assert_eq!(identity.actor.unwrap().mechanism, Mechanism::Jwt);

        let forged = testing::fresh_ec("ec-1").sign(&testing::claims());
        let bad = headers(&[("authorization", &format!("Bearer {forged}"))]);
        for _ in 0..3 {
            let _ = f.auth.authenticate(&bad, PEER);
        }
        let good = testing::rsa().sign(&testing::claims());
        let refusal = f
            .auth
            .authenticate(
                &headers(&[("authorization", &format!("Bearer {good}"))]),
                PEER,
            )
            .unwrap_err();
        assert!(matches!(refusal.code, RefusalCode::TooManyFailures { .. }));
    }

    #[test]
    fn a_jwt_method_without_usable_settings_names_the_setting() {
        let config = AuthConfig {
            methods: vec![Method::Jwt],
            ..AuthConfig::default()
        };
        let err = Authenticator::from_config(&config).unwrap_err();
        assert_eq!(err.setting, "jwt.issuer");
    }

    #[test]
    fn the_embedded_mode_takes_the_headers_as_labels() {
        let auth = Authenticator::none();
        let identity = auth
            .authenticate(&headers(&[("x-agentmesh-tenant", "acme")]), PEER)
            .unwrap();
        assert_eq!(identity.tenant, "acme");
        assert!(identity.is_admin());
    }
}
