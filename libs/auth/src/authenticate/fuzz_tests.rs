//! Fuzz targets of credential parsing: arbitrary `authorization` values,
//! API-key-shaped and JWT-shaped text, and valid keys and tokens with one
//! character changed, against an authenticator that accepts both API keys
//! and JWTs. Nothing panics; everything but the valid credentials is
//! refused as UNAUTHENTICATED; a refusal never carries the secret.

use agentmesh_testkit::fuzz::check;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::json;

use super::{Authenticator, Refusal, RefusalCode};
use crate::jwt::{JwtVerifier, testing};
use crate::keys::ApiKey;
use crate::keys::file::{KeyEntry, KeysFile};
use crate::keys::store::KeyStore;
use crate::scope::{Scope, ScopeSet};

struct Fixture {
    auth: Authenticator,
    key: ApiKey,
    token: String,
}

fn fixture() -> Fixture {
    let key = match ApiKey::generate("test") {
        Ok(key) => key,
        Err(err) => panic!("cannot make a key: {err}"),
    };
    let file = KeysFile {
        keys: vec![KeyEntry::new(
            &key,
            "acme",
            "alice",
            ScopeSet::EMPTY.with(Scope::RunsRead),
        )],
        ..KeysFile::default()
    };
    let store = match KeyStore::from_file(&file) {
        Ok(store) => store,
        Err(err) => panic!("the keys file is valid: {err:?}"),
    };
    let verifier =
        match JwtVerifier::from_config(&testing::config(testing::fixture_path("jwks.json"))) {
            Ok(verifier) => verifier,
            Err(err) => panic!("the JWT fixture is valid: {err:?}"),
        };
    let token = testing::rsa().sign(&testing::claims());
    Fixture {
        // No peer address is given, so failures are not counted and no
        // caller gets blocked between cases.
        auth: Authenticator::with_keys(store, 1_000_000).with_jwt(verifier),
        key,
        token,
    }
}

/// Authenticates one `authorization` value; `None` when the bytes cannot be
/// a header value at all (HTTP never delivers those).
fn authenticate(auth: &Authenticator, value: &[u8]) -> Option<Result<crate::Identity, Refusal>> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    Some(auth.authenticate(&headers, None))
}

/// Checks a refusal: UNAUTHENTICATED, and no secret part of `presented`
/// (its API-key secret, its JWT signature) in what the refusal says.
fn refused(
    result: Result<crate::Identity, Refusal>,
    presented: &[u8],
) -> Result<(), TestCaseError> {
    let refusal = match result {
        Ok(identity) => {
            return Err(TestCaseError::fail(format!(
                "{:?} was accepted as {}/{}",
                String::from_utf8_lossy(presented),
                identity.tenant,
                identity.subject
            )));
        }
        Err(refusal) => refusal,
    };
    prop_assert_eq!(refusal.code, RefusalCode::Unauthenticated);
    prop_assert!(refusal.credential_id.len() <= 8192);
    let text = String::from_utf8_lossy(presented);
    let token = text
        .split_once(' ')
        .map_or(text.as_ref(), |(_, token)| token.trim());
    // The secret: a key's random part after its id, a JWT's signature.
    let secret = token.rsplit_once('.').map_or_else(
        || token.get(16..).unwrap_or_default(),
        |(_, signature)| signature,
    );
    if secret.len() >= 8 {
        prop_assert!(
            !refusal.credential_id.contains(secret) && !refusal.message.contains(secret),
            "the refusal repeats the secret: {refusal:?}"
        );
    }
    Ok(())
}

fn schemes() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "Bearer ", "bearer ", "BEARER  ", "Basic ", "Bearer", "",
    ])
    .prop_map(str::to_owned)
}

#[test]
fn fuzz_auth_arbitrary_bearer() {
    let fixture = fixture();
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (schemes(), any::<String>())
            .prop_map(|(scheme, token)| format!("{scheme}{token}").into_bytes()),
        // API-key shapes: the prefix, an environment, random parts of any length.
        (schemes(), "am_[a-z0-9_]{0,20}_[A-Za-z0-9_]{0,40}")
            .prop_map(|(scheme, token)| format!("{scheme}{token}").into_bytes()),
        // JWT shapes: three dot-separated base64url parts.
        (
            schemes(),
            "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}"
        )
            .prop_map(|(scheme, token)| format!("{scheme}{token}").into_bytes()),
        (1_usize..20_000).prop_map(|n| format!("Bearer {}", "a".repeat(n)).into_bytes()),
    ];
    check("auth_arbitrary_bearer", value, |value| {
        if let Some(result) = authenticate(&fixture.auth, &value) {
            refused(result, &value)?;
        }
        Ok(())
    });
}

/// JWTs whose header and claims are arbitrary JSON (well-formed base64url),
/// with a signature that is not the key's: always refused.
#[test]
fn fuzz_auth_forged_jwts() {
    let fixture = fixture();
    let header = prop_oneof![
        Just(json!({"alg": "RS256"})),
        Just(json!({"alg": "none"})),
        Just(json!({"alg": "HS256"})),
        Just(json!({"alg": "ES256", "kid": "../../etc/passwd"})),
        ".{0,30}".prop_map(|alg| json!({"alg": alg, "typ": "JWT"})),
    ];
    let claims = prop_oneof![
        Just(testing::claims()),
        (".{0,20}", ".{0,20}", any::<i64>()).prop_map(|(sub, tenant, exp)| json!({
            "iss": testing::ISSUER, "aud": testing::AUDIENCE, "sub": sub, "tenant": tenant, "exp": exp
        })),
        ".{0,40}".prop_map(|text| json!(text)),
    ];
    let signature = prop::collection::vec(any::<u8>(), 0..300);
    check(
        "auth_forged_jwts",
        (header, claims, signature),
        |(header, claims, signature)| {
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string()),
                URL_SAFE_NO_PAD.encode(&signature)
            );
            let value = format!("Bearer {token}");
            if let Some(result) = authenticate(&fixture.auth, value.as_bytes()) {
                refused(result, value.as_bytes())?;
            }
            Ok(())
        },
    );
}

/// The valid key and the valid token are accepted; with any one character
/// changed (to any other character a header can carry), refused.
#[test]
fn fuzz_auth_one_character_changed() {
    let fixture = fixture();
    for valid in [fixture.key.expose(), fixture.token.as_str()] {
        let value = format!("Bearer {valid}");
        let accepted = authenticate(&fixture.auth, value.as_bytes());
        assert!(matches!(accepted, Some(Ok(_))), "{accepted:?}");
    }
    let input = (any::<bool>(), any::<prop::sample::Index>(), 0x21_u8..0x7f);
    check(
        "auth_one_character_changed",
        input,
        |(use_key, index, replacement)| {
            let valid = if use_key {
                fixture.key.expose()
            } else {
                fixture.token.as_str()
            };
            let mut bytes = valid.as_bytes().to_vec();
            let at = index.index(bytes.len());
            if let Some(byte) = bytes.get_mut(at) {
                // Another printable character than the one there.
                *byte = if *byte == replacement {
                    0x21 + (replacement - 0x20) % 0x5e
                } else {
                    replacement
                };
            }
            let value = [b"Bearer ".as_slice(), &bytes].concat();
            if let Some(result) = authenticate(&fixture.auth, &value) {
                refused(result, &value)?;
            }
            Ok(())
        },
    );
}
