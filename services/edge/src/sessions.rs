//! The console's sessions, sealed into their cookie: what a sign-in made is
//! the `authorization` value it was made with and an expiry, encrypted and
//! authenticated (AES-256-GCM) with the edge's session key, so the edge
//! keeps nothing and any replica with the same key reads any session — no
//! session affinity. A cookie that was altered, made with another key or is
//! past its expiry stands for nothing.
//!
//! ```text
//! cookie = base64url(nonce ‖ AES-256-GCM(key, expiry ‖ authorization))
//! CSRF token = HMAC-SHA256(csrf key, cookie)   (any replica can check it)
//! ```
//!
//! The key comes from `edge.console.session_key_file` (at least 32 bytes;
//! every replica mounts the same file), else is drawn at start: then
//! sessions end when the edge restarts, and hold on its replica only.
//! Signing out clears the cookie; a copy of it stays valid until it expires
//! (`edge.console.session_ttl`), which is why sessions are short.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};

/// The shortest session key file.
pub(crate) const MIN_KEY_BYTES: usize = 32;

/// The longest `authorization` a session holds (a cookie stays under the
/// 4 KiB browsers keep).
pub(crate) const MAX_AUTHORIZATION_BYTES: usize = 2800;

/// What a live session stands for.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) authorization: HeaderValue,
    pub(crate) expires: SystemTime,
}

/// Seals and opens sessions with the edge's key.
pub(crate) struct Sessions {
    ttl: Duration,
    seal: LessSafeKey,
    csrf: hmac::Key,
    random: SystemRandom,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions of `ttl`, sealed with a key derived from `secret`.
    pub(crate) fn new(ttl: Duration, secret: &[u8]) -> Result<Self, String> {
        let derive = |purpose: &str| -> [u8; 32] {
            let mut digest = Sha256::new();
            digest.update(purpose.as_bytes());
            digest.update([0]);
            digest.update(secret);
            digest.finalize().into()
        };
        let unbound = UnboundKey::new(&AES_256_GCM, &derive("agentmesh console seal"))
            .map_err(|_| "the session key cannot be used".to_owned())?;
        Ok(Self {
            ttl,
            seal: LessSafeKey::new(unbound),
            csrf: hmac::Key::new(hmac::HMAC_SHA256, &derive("agentmesh console csrf")),
            random: SystemRandom::new(),
        })
    }

    /// Sessions keyed by the file at `path`, or by a key drawn now when
    /// `path` is empty.
    pub(crate) fn from_key_file(ttl: Duration, path: &str) -> Result<Self, String> {
        if path.is_empty() {
            let mut secret = [0_u8; 32];
            SystemRandom::new()
                .fill(&mut secret)
                .map_err(|_| "no random session key could be drawn".to_owned())?;
            return Self::new(ttl, &secret);
        }
        let secret = std::fs::read(path).map_err(|err| format!("cannot read {path}: {err}"))?;
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "{path} holds {} bytes; a session key needs at least {MIN_KEY_BYTES}",
                secret.len()
            ));
        }
        Self::new(ttl, &secret)
    }

    /// How long a session lasts.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session for `authorization`: `(cookie value, CSRF token)`.
    pub(crate) fn open(
        &self,
        authorization: &HeaderValue,
        now: SystemTime,
    ) -> Option<(String, String)> {
        if authorization.len() > MAX_AUTHORIZATION_BYTES {
            return None;
        }
        let expires = now
            .checked_add(self.ttl)?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs();
        let mut nonce = [0_u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = expires.to_be_bytes().to_vec();
        sealed.extend_from_slice(authorization.as_bytes());
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        let mut value = nonce.to_vec();
        value.extend_from_slice(&sealed);
        let cookie = URL_SAFE_NO_PAD.encode(value);
        let csrf = self.csrf_of(&cookie);
        Some((cookie, csrf))
    }

    /// The live session the cookie value `cookie` holds.
    pub(crate) fn find(&self, cookie: &str, now: SystemTime) -> Option<Session> {
        let mut value = URL_SAFE_NO_PAD.decode(cookie).ok()?;
        if value.len() < NONCE_LEN {
            return None;
        }
        let sealed = value.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&value).ok()?;
        let mut sealed = sealed;
        let plain = self
            .seal
            .open_in_place(nonce, Aad::empty(), &mut sealed)
            .ok()?;
        let (expires, authorization) = plain.split_first_chunk::<8>()?;
        let expires = UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(*expires));
        if expires <= now {
            return None;
        }
        let mut authorization = HeaderValue::from_bytes(authorization).ok()?;
        authorization.set_sensitive(true);
        Some(Session {
            authorization,
            expires,
        })
    }

    /// Whether `token` is the CSRF token of the cookie value `cookie`
    /// (compared in constant time).
    pub(crate) fn csrf_matches(&self, cookie: &str, token: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(token)
            .is_ok_and(|tag| hmac::verify(&self.csrf, cookie.as_bytes(), &tag).is_ok())
    }

    /// The CSRF token of the cookie value `cookie`.
    pub(crate) fn csrf_of(&self, cookie: &str) -> String {
        let tag = hmac::sign(&self.csrf, cookie.as_bytes());
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(secret: &[u8]) -> Sessions {
        match Sessions::new(Duration::from_secs(60), secret) {
            Ok(sessions) => sessions,
            Err(err) => panic!("{err}"),
        }
    }

    fn opened(sessions: &Sessions, now: SystemTime) -> (String, String) {
        match sessions.open(&HeaderValue::from_static("Bearer k"), now) {
            Some(opened) => opened,
            None => panic!("no session"),
        }
    }

    #[test]
    fn a_session_opens_with_its_key_until_it_expires() {
        let now = SystemTime::now();
        let sessions = sessions(&[7; 32]);
        let (cookie, csrf) = opened(&sessions, now);
        assert!(!cookie.contains("Bearer"), "the credential is sealed");
        let found = sessions.find(&cookie, now);
        assert_eq!(
            found.as_ref().map(|session| session.authorization.clone()),
            Some(HeaderValue::from_static("Bearer k"))
        );
        assert_eq!(sessions.csrf_of(&cookie), csrf);
        assert!(sessions.csrf_matches(&cookie, &csrf));
        assert!(!sessions.csrf_matches(&cookie, "forged"));
        assert!(!sessions.csrf_matches(&cookie, ""));
        // Another replica with the same key reads it too.
        assert!(self::sessions(&[7; 32]).find(&cookie, now).is_some());
        assert!(
            sessions
                .find(&cookie, now + Duration::from_secs(61))
                .is_none()
        );
        // Two sessions of one key differ (and so do their CSRF tokens).
        let (other, other_csrf) = opened(&sessions, now);
        assert_ne!(cookie, other);
        assert_ne!(csrf, other_csrf);
    }

    #[test]
    fn an_altered_or_foreign_cookie_stands_for_nothing() {
        let now = SystemTime::now();
        let (cookie, _) = opened(&sessions(&[7; 32]), now);
        assert!(sessions(&[8; 32]).find(&cookie, now).is_none());
        let mut bytes = URL_SAFE_NO_PAD.decode(&cookie).unwrap_or_default();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        let altered = URL_SAFE_NO_PAD.encode(bytes);
        assert!(sessions(&[7; 32]).find(&altered, now).is_none());
        for junk in ["", "x", "!!!!", "AAAA"] {
            assert!(sessions(&[7; 32]).find(junk, now).is_none(), "{junk}");
        }
    }

    #[test]
    fn a_short_key_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("edge-session-key-{}", std::process::id()));
        let _ = std::fs::write(&dir, b"short");
        let err = Sessions::from_key_file(Duration::from_secs(60), &dir.display().to_string())
            .err()
            .unwrap_or_default();
        assert!(err.contains("holds 5 bytes") && err.contains("32"), "{err}");
        let _ = std::fs::remove_file(&dir);
        assert!(Sessions::from_key_file(Duration::from_secs(60), "").is_ok());
    }
}
