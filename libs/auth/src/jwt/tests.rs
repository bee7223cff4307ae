//! Tests of JWT verification with real keys and real signatures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::testing::{self, AUDIENCE, ISSUER};
use super::*;
use crate::identity::Mechanism;
use crate::scope::{Scope, ScopeSet};

fn fixture_verifier(algorithms: &[&str]) -> JwtVerifier {
    let mut config = testing::config(testing::fixture_path("jwks.json"));
    config.algorithms = algorithms.iter().map(|alg| (*alg).to_owned()).collect();
    JwtVerifier::from_config(&config).unwrap()
}

fn reason(verifier: &JwtVerifier, token: &str) -> JwtRefusal {
    verifier.verify(token).unwrap_err().reason
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn the_checked_in_jwks_holds_the_public_halves_of_the_pem_keys() {
    let jwks: serde_json::Value = serde_json::from_str(&testing::fixture("jwks.json")).unwrap();
    assert_eq!(jwks["keys"][0], testing::rsa().jwk());
    assert_eq!(jwks["keys"][1], testing::ec().jwk());
}

#[test]
fn tokens_of_both_fixture_keys_are_accepted_and_mapped() {
    let verifier = fixture_verifier(&["RS256", "ES256"]);
    assert_eq!(verifier.key_count(), 2);
    for signer in [testing::rsa(), testing::ec()] {
        let identity = verifier.verify(&signer.sign(&testing::claims())).unwrap();
        assert_eq!(
            (identity.tenant.as_str(), identity.subject.as_str()),
            ("acme", "alice")
        );
        assert_eq!(
            identity.scopes,
            ScopeSet::EMPTY.with(Scope::RunsRead).with(Scope::RunsWrite)
        );
        assert_eq!(identity.mechanism, Mechanism::Jwt);
        assert_eq!(identity.credential_id, format!("jwt:{ISSUER}#alice"));
        assert!(identity.actor.is_none());
    }
    // A single audience as a string, scopes as an array, no kid with a
    // one-key set are all fine too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let rsa = testing::rsa();
    std::fs::write(&path, testing::jwks(&[&rsa])).unwrap();
    let mut config = testing::config(path);
    config.scopes_claim = "roles".to_owned();
    let verifier = JwtVerifier::from_config(&config).unwrap();
    let token = rsa.sign_with(
        &json!({"alg": "RS256"}),
        &testing::claims_with(json!({"aud": AUDIENCE, "roles": ["admin", "uma_authorization"]})),
    );
    assert_eq!(
        verifier.verify(&token).unwrap().scopes,
        ScopeSet::EMPTY.with(Scope::Admin)
    );
}

#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let verifier = fixture_verifier(&["RS256", "ES256"]);
    let rsa = testing::rsa();
    let now = testing::now();
    let cases = [
        (
            "expired",
            rsa.sign(&testing::claims_with(
                json!({"exp": now - 3600, "iat": now - 7200}),
            )),
            JwtRefusal::Expired,
        ),
        (
            "not yet valid",
            rsa.sign(&testing::claims_with(json!({"nbf": now + 3600}))),
            JwtRefusal::NotYetValid,
        ),
        (
            "wrong audience",
            rsa.sign(&testing::claims_with(json!({"aud": "another-service"}))),
            JwtRefusal::WrongAudience,
        ),
        (
            "no audience",
            rsa.sign(&testing::claims_with(json!({"aud": null}))),
            JwtRefusal::MissingClaim,
        ),
        (
            "wrong issuer",
            rsa.sign(&testing::claims_with(
                json!({"iss": "https://evil.example"}),
            )),
            JwtRefusal::WrongIssuer,
        ),
        (
            "no exp",
            rsa.sign(&testing::claims_with(json!({"exp": null}))),
            JwtRefusal::MissingClaim,
        ),
        (
            "no tenant",
            rsa.sign(&testing::claims_with(json!({"tenant": null}))),
            JwtRefusal::MissingTenant,
        ),
        (
            "no subject",
            rsa.sign(&testing::claims_with(json!({"sub": null}))),
            JwtRefusal::MissingSubject,
        ),
    ];
    for (what, token, expected) in cases {
        assert_eq!(reason(&verifier, &token), expected, "{what}");
    }
    // Refusals after the signature verified name the holder.
    let refused = verifier
        .verify(&rsa.sign(&testing::claims_with(json!({"aud": "x"}))))
        .unwrap_err();
    assert_eq!(refused.credential_id, format!("jwt:{ISSUER}#alice"));
}

#[test]
fn unsigned_confused_foreign_and_tampered_tokens_are_refused() {
    let verifier = fixture_verifier(&["RS256", "ES256"]);
    let claims = testing::claims();

    // alg: none, built by hand, with and without a signature part.
    let none = format!(
        "{}.{}.",
        testing::b64(br#"{"alg":"none","typ":"JWT"}"#),
        testing::b64(claims.to_string().as_bytes())
    );
    assert_eq!(reason(&verifier, &none), JwtRefusal::AlgorithmNotAllowed);
    let none_kid = format!(
        "{}.{}.",
        testing::b64(br#"{"alg":"none","kid":"rsa-1"}"#),
        testing::b64(claims.to_string().as_bytes())
    );
    assert_eq!(
        reason(&verifier, &none_kid),
        JwtRefusal::AlgorithmNotAllowed
    );

    // HS256 "signed" with the RSA public key as the HMAC secret.
    let public_pem = testing::fixture("rsa-public.pem");
    for secret in [public_pem.as_bytes(), &testing::pem_der(&public_pem)] {
        let confused = testing::hs256(&json!({"alg": "HS256", "kid": "rsa-1"}), &claims, secret);
        let refused = verifier.verify(&confused).unwrap_err();
        assert_eq!(refused.reason, JwtRefusal::AlgorithmNotAllowed);
        assert_eq!(
            refused.credential_id, "",
            "an unverified token named a holder"
        );
    }

    // A key that is not the issuer's: under a kid the issuer uses, and
    // under one of its own.
    let stranger = testing::fresh_ec("ec-1");
    assert_eq!(
        reason(&verifier, &stranger.sign(&claims)),
        JwtRefusal::BadSignature
    );
    let stranger = testing::fresh_ec("elsewhere");
    assert_eq!(
        reason(&verifier, &stranger.sign(&claims)),
        JwtRefusal::UnknownKey
    );

    // A payload changed after signing.
    let token = testing::rsa().sign(&claims);
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = testing::b64(
        testing::claims_with(json!({"tenant": "globex"}))
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged;
    assert_eq!(
        reason(&verifier, &parts.join(".")),
        JwtRefusal::BadSignature
    );
    // The signature of other claims.
    let other = testing::rsa().sign(&testing::claims_with(json!({"sub": "bob"})));
    let spliced = format!(
        "{}.{}",
        token.rsplit_once('.').unwrap().0,
        other.rsplit_once('.').unwrap().1
    );
    assert_eq!(reason(&verifier, &spliced), JwtRefusal::BadSignature);

    for garbage in ["a.b.c", "e30.e30.", "....", "eyJhbGciOiJSUzI1NiJ9"] {
        assert_eq!(
            reason(&verifier, garbage),
            JwtRefusal::Malformed,
            "{garbage}"
        );
    }
}

#[test]
fn the_algorithm_must_be_allowed_and_fit_the_key() {
    // Only RS256 allowed: a good ES256 token of a JWKS key is refused.
    let verifier = fixture_verifier(&["RS256"]);
    let claims = testing::claims();
    assert_eq!(
        reason(&verifier, &testing::ec().sign(&claims)),
        JwtRefusal::AlgorithmNotAllowed
    );
    assert!(verifier.verify(&testing::rsa().sign(&claims)).is_ok());

    // RS256 and ES256 allowed: an RS256 header naming the EC key, and an
    // RS384 header naming the RSA key whose JWK says RS256, are refused.
    let verifier = fixture_verifier(&["RS256", "RS384", "ES256"]);
    let rsa = testing::rsa();
    let mixed = rsa.sign_with(&json!({"alg": "RS256", "kid": "ec-1"}), &claims);
    assert_eq!(reason(&verifier, &mixed), JwtRefusal::AlgorithmNotAllowed);
    let other = rsa.sign_with(&json!({"alg": "RS384", "kid": "rsa-1"}), &claims);
    assert_eq!(reason(&verifier, &other), JwtRefusal::AlgorithmNotAllowed);
}

#[test]
fn the_crypto_provider_never_verifies_hmac_or_a_key_of_another_family() {
    use jsonwebtoken::{Algorithm, DecodingKey};
    assert!(provider::install());
    let jwk = testing::rsa().jwk();
    let rsa =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .unwrap();
    // Even if the checks before it were gone, decode would fail here.
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    let confused = testing::hs256(
        &json!({"alg": "HS256"}),
        &testing::claims(),
        testing::fixture("rsa-public.pem").as_bytes(),
    );
    assert!(jsonwebtoken::decode::<serde_json::Value>(&confused, &rsa, &validation).is_err());
    let secret = DecodingKey::from_secret(b"a shared secret").unwrap();
    let hmac = testing::hs256(
        &json!({"alg": "HS256"}),
        &testing::claims(),
        b"a shared secret",
    );
    assert!(jsonwebtoken::decode::<serde_json::Value>(&hmac, &secret, &validation).is_err());
    let ec = testing::ec().sign(&testing::claims());
    let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
    validation.validate_aud = false;
    assert!(jsonwebtoken::decode::<serde_json::Value>(&ec, &rsa, &validation).is_err());
}

#[test]
fn unusable_jwks_keys_are_skipped_and_an_empty_set_refused() {
    let rsa = testing::rsa().jwk();
    let mut enc = rsa.clone();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    let short = json!({"kty": "RSA", "kid": "short", "n": testing::b64(&[0xc5; 128]), "e": "AQAB"});
    let oct = json!({"kty": "oct", "kid": "secret", "k": testing::b64(b"shared")});
    let mut hs = rsa.clone();
    hs["kid"] = json!("hs");
    hs["alg"] = json!("HS256");
    let weird = json!({"kty": "XYZ", "kid": "weird"});
    let document = json!({"keys": [enc, short, oct, hs, weird, rsa]}).to_string();
    let set = keyset::KeySet::parse(document.as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    assert!(
        set.key_for(Some("rsa-1"), jsonwebtoken::Algorithm::RS256)
            .is_ok()
    );
    for kid in ["enc", "short", "secret", "hs", "weird"] {
        assert_eq!(
            set.key_for(Some(kid), jsonwebtoken::Algorithm::RS256)
                .unwrap_err(),
            keyset::NoKey::Unknown
        );
    }
    let only_bad = json!({"keys": [{"kty": "oct", "k": "c2hhcmVk"}]}).to_string();
    assert!(matches!(
        keyset::KeySet::parse(only_bad.as_bytes()),
        Err(keyset::KeySetError::NoUsableKey(_))
    ));
    assert!(keyset::KeySet::parse(b"[]").is_err());
}

#[test]
fn settings_that_cannot_be_safe_are_refused_naming_the_setting() {
    let good = testing::config(testing::fixture_path("jwks.json"));
    good.validate().unwrap();
    let check = |change: &dyn Fn(&mut JwtConfig)| {
        let mut config = good.clone();
        change(&mut config);
        config.validate().unwrap_err()
    };
    let (setting, problem) = check(&|c| c.algorithms = vec!["none".into()]);
    assert_eq!(setting, "algorithms");
    assert!(problem.contains("never"), "{problem}");
    let (_, problem) = check(&|c| c.algorithms = vec!["RS256".into(), "HS256".into()]);
    assert!(problem.contains("HS/RS confusion"), "{problem}");
    assert_eq!(
        check(&|c| c.algorithms = vec!["RS1".into()]).0,
        "algorithms"
    );
    assert_eq!(check(&|c| c.algorithms.clear()).0, "algorithms");
    assert_eq!(check(&|c| c.issuer.clear()).0, "issuer");
    assert_eq!(check(&|c| c.audiences.clear()).0, "audiences");
    assert_eq!(check(&|c| c.audiences = vec![" ".into()]).0, "audiences");
    assert_eq!(check(&|c| c.jwks_file = None).0, "jwks_file");
    assert_eq!(
        check(&|c| c.jwks_url = Some("https://idp/jwks".into())).0,
        "jwks_url"
    );
    assert_eq!(
        check(&|c| {
            c.jwks_file = None;
            c.jwks_url = Some("ftp://idp/jwks".into());
        })
        .0,
        "jwks_url"
    );
    assert_eq!(check(&|c| c.tenant_claim.clear()).0, "tenant_claim");
    assert_eq!(check(&|c| c.subject_claim = " ".into()).0, "subject_claim");
    assert_eq!(check(&|c| c.scopes_claim.clear()).0, "scopes_claim");
    assert_eq!(
        check(&|c| c.jwks_refresh = Duration::from_millis(10)).0,
        "jwks_refresh"
    );
    assert_eq!(check(&|c| c.leeway = Duration::from_secs(3600)).0, "leeway");

    let mut missing = good.clone();
    missing.jwks_file = Some("/nonexistent/jwks.json".into());
    let (setting, problem) = JwtVerifier::from_config(&missing).unwrap_err();
    assert_eq!(setting, "jwks_file");
    assert!(problem.contains("/nonexistent/jwks.json"), "{problem}");
}

#[test]
fn a_repeated_token_is_answered_from_the_cache_until_it_expires() {
    let verifier = fixture_verifier(&["RS256"]);
    let token = testing::rsa().sign(&testing::claims());
    assert!(verifier.verify(&token).is_ok());
    assert_eq!(verifier.cache_hits(), 0);
    let cached = verifier.verify(&token).unwrap();
    assert_eq!(verifier.cache_hits(), 1);
    assert_eq!(cached.tenant, "acme");
    // A refused token is never cached.
    let bad = testing::fresh_ec("ec-1").sign(&testing::claims());
    for _ in 0..2 {
        assert!(verifier.verify(&bad).is_err());
    }
    assert_eq!(verifier.cache_hits(), 1);
}

#[test]
fn a_cached_token_is_refused_once_it_expired() {
    let verifier = fixture_verifier(&["RS256"]);
    let exp = testing::now() + 1;
    let token = testing::rsa().sign(&testing::claims_with(json!({"exp": exp})));
    assert!(verifier.verify(&token).is_ok());
    assert!(verifier.verify(&token).is_ok());
    let hits = verifier.cache_hits();
    assert_eq!(hits, 1);
    while testing::now() <= exp {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(reason(&verifier, &token), JwtRefusal::Expired);
    assert_eq!(
        verifier.cache_hits(),
        hits,
        "an expired token came from the cache"
    );
}

#[tokio::test]
async fn a_rewritten_jwks_file_brings_new_keys_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let rsa = testing::rsa();
    std::fs::write(&path, testing::jwks(&[&rsa])).unwrap();
    let verifier = JwtVerifier::from_config(&testing::config(path.clone())).unwrap();
    let watch = verifier.watch(Duration::from_millis(10));
    let old_token = rsa.sign(&testing::claims());
    assert!(verifier.verify(&old_token).is_ok());

    let rotated = testing::fresh_ec("ec-2");
    let new_token = rotated.sign(&testing::claims());
    assert_eq!(reason(&verifier, &new_token), JwtRefusal::UnknownKey);
    // The issuer rotates: the new key joins, the old one leaves.
    std::fs::write(&path, testing::jwks(&[&rotated])).unwrap();
    eventually("the new key was loaded", || {
        verifier.verify(&new_token).is_ok()
    })
    .await;
    // The cache went with the old keys: the old key's token is refused now.
    assert_eq!(reason(&verifier, &old_token), JwtRefusal::UnknownKey);

    std::fs::write(&path, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(verifier.key_count(), 1, "a broken file replaced good keys");
    watch.abort();
}

/// A JWKS server on loopback: answers every request with the current
/// document and counts the requests.
struct JwksServer {
    url: String,
    document: Arc<std::sync::Mutex<String>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let document = Arc::new(std::sync::Mutex::new(document));
        let requests = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&document), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buf[..read]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Self {
            url,
            document,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_refetched_when_a_token_names_an_unknown_key() {
    let rsa = testing::rsa();
    let server = JwksServer::start(testing::jwks(&[&rsa])).await;
    let mut config = testing::config(testing::fixture_path("jwks.json"));
    config.jwks_file = None;
    config.jwks_url = Some(server.url.clone());
    config.jwks_refresh = Duration::from_secs(3600);
    let verifier = JwtVerifier::from_config(&config).unwrap();
    let token = rsa.sign(&testing::claims());
    // Before the first fetch there is no key.
    assert_eq!(verifier.key_count(), 0);
    let watch = verifier.watch(Duration::from_secs(5));
    eventually("the JWKS was fetched", || verifier.key_count() == 1).await;
    assert!(verifier.verify(&token).is_ok());
    assert_eq!(server.requests(), 1);

    // The issuer rotates in a new key; a token of it asks for a refetch.
    let rotated = testing::fresh_ec("ec-2");
    *server.document.lock().unwrap() = testing::jwks(&[&rsa, &rotated]);
    let new_token = rotated.sign(&testing::claims());
    assert_eq!(reason(&verifier, &new_token), JwtRefusal::UnknownKey);
    eventually("the refetched key was used", || {
        verifier.verify(&new_token).is_ok()
    })
    .await;
    assert_eq!(server.requests(), 2);

    // Another unknown kid right after: no third fetch (rate limited).
    let unknown = testing::fresh_ec("ec-3").sign(&testing::claims());
    for _ in 0..5 {
        assert_eq!(reason(&verifier, &unknown), JwtRefusal::UnknownKey);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.requests(), 2, "refetches were not rate limited");
    watch.abort();
    server.task.abort();
}

#[test]
fn only_jwt_shaped_bearers_look_like_jwts() {
    let token = testing::rsa().sign(&testing::claims());
    assert!(looks_like_jwt(&token));
    assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.e30."));
    for not in [
        "",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a+b.c.d",
        "am_live_x",
        "a.b.c=",
    ] {
        assert!(!looks_like_jwt(not), "{not}");
    }
}
