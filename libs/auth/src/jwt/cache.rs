//! [`TokenCache`]: tokens already verified, so that a client presenting the
//! same token on every call pays a SHA-256 and a map lookup instead of a
//! signature check and claim validation.
//!
//! Entries are keyed by the token's SHA-256 (the cache never holds a
//! token), hold the identity the token was mapped to, and expire at the
//! token's `exp` or a minute after they were added, whichever is first; a
//! token past its `exp` is therefore always verified again, and refused.
//! Only tokens that passed every check are added, so the size bound is
//! reached only by real tokens; when a shard is full its expired entries
//! go, then an arbitrary one. The whole cache is dropped when the issuer's
//! keys change, so a token of a withdrawn key stops working at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::identity::Identity;

/// Shards, each behind its own lock, so concurrent calls rarely wait.
const SHARDS: usize = 16;
/// The longest an entry is trusted without verifying the token again.
pub(crate) const MAX_AGE_SECS: u64 = 60;

/// A token's SHA-256.
pub(crate) type TokenHash = [u8; 32];

/// The hash a token is cached under.
pub(crate) fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    /// Unix seconds: the entry is used while now is before this.
    until: u64,
}

/// Verified tokens, bounded in number.
#[derive(Debug)]
pub(crate) struct TokenCache {
    shards: [Mutex<HashMap<TokenHash, Entry>>; SHARDS],
    per_shard: usize,
    hits: AtomicU64,
}

impl TokenCache {
    /// A cache of at most about `capacity` tokens.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hits: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: &TokenHash) -> std::sync::MutexGuard<'_, HashMap<TokenHash, Entry>> {
        let index = usize::from(hash[0]) % SHARDS;
        // The index is below SHARDS by construction; `get` keeps the
        // indexing lint satisfied without a second code path.
        let shard = self.shards.get(index).unwrap_or(&self.shards[0]);
        shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The identity of a token verified before, if its entry is still good
    /// at `now` (Unix seconds).
    pub(crate) fn get(&self, hash: &TokenHash, now: u64) -> Option<Identity> {
        let mut shard = self.shard(hash);
        let entry = shard.get(hash)?;
        if now >= entry.until {
            shard.remove(hash);
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.identity.clone())
    }

    /// Remembers a token verified at `now` that expires at `exp`.
    pub(crate) fn insert(&self, hash: TokenHash, identity: Identity, exp: u64, now: u64) {
        let until = exp.min(now.saturating_add(MAX_AGE_SECS));
        if until <= now {
            return;
        }
        let mut shard = self.shard(&hash);
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            shard.retain(|_, entry| now < entry.until);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(hash, Entry { identity, until });
    }

    /// Forgets every token.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }

    /// How many lookups found a good entry.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// How many entries there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn someone(tenant: &str) -> Identity {
        Identity::unauthenticated(tenant, "alice")
    }

    #[test]
    fn an_entry_is_good_until_the_token_expires_or_a_minute_passes() {
        let cache = TokenCache::new(100);
        let now = 1_000_000;
        let short = hash("short");
        cache.insert(short, someone("a"), now + 5, now);
        assert_eq!(cache.get(&short, now + 4).unwrap().tenant, "a");
        assert!(cache.get(&short, now + 5).is_none(), "served past exp");
        let long = hash("long");
        cache.insert(long, someone("b"), now + 3600, now);
        assert!(cache.get(&long, now + MAX_AGE_SECS - 1).is_some());
        assert!(
            cache.get(&long, now + MAX_AGE_SECS).is_none(),
            "kept past a minute"
        );
        assert_eq!(cache.hits(), 2);
        cache.insert(hash("expired"), someone("c"), now, now);
        assert!(cache.get(&hash("expired"), now).is_none());
    }

    #[test]
    fn the_size_stays_bounded_and_clear_empties_it() {
        let cache = TokenCache::new(64);
        let now = 1_000;
        for index in 0..1000 {
            cache.insert(hash(&index.to_string()), someone("a"), now + 30, now);
        }
        assert!(cache.len() <= 64, "{} entries", cache.len());
        // The newest entry is always there.
        assert!(cache.get(&hash("999"), now).is_some());
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
