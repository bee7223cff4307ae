//! [`FullTextIndex`]: long-term memory over the orchestrator's own
//! database, searched by full text (see the parent module for the flow).
//!
//! Input is checked here, before anything is stored: a tenant, a text
//! that is not blank and holds no NUL (PostgreSQL refuses it in text), at
//! most [`MAX_TAGS`] short tags, a TTL above zero, and text plus tags
//! within `memory.max_note_bytes`. Then text and tags are redacted, and
//! the note goes to the store with its tenant's limit.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_audit_client::Redactor;
use agentmesh_kit::ConfigError;
use agentmesh_kit::time::now_micros;
use futures::future::BoxFuture;

use super::query::{Search, Terms};
use super::{MemoryError, MemoryIndex, NewNote, Note, Recalled, Retention};
use crate::config::{Config, MAX_TOP_K, MemoryConfig};
use crate::store::Store;

/// Tags per note at most.
pub(crate) const MAX_TAGS: usize = 16;
/// Bytes per tag at most.
pub(crate) const MAX_TAG_BYTES: usize = 64;
/// Bytes of an agent name at most.
const MAX_AGENT_BYTES: usize = 128;
/// Stale notes deleted per statement while pruning.
const PRUNE_BATCH: i64 = 1000;

/// The current time in microseconds (replaced in tests).
type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Long-term memory in the orchestrator's database, full-text searched.
/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct FullTextIndex {
    store: Store,
    config: MemoryConfig,
    redactor: Redactor,
    clock: Clock,
}

impl fmt::Debug for FullTextIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FullTextIndex")
            .field("config", &self.config)
            .field("redactor", &self.redactor)
            .finish_non_exhaustive()
    }
}

impl FullTextIndex {
    /// Memory in `store`, limited by `config`, redacting with `redactor`.
    pub(crate) fn new(store: Store, config: MemoryConfig, redactor: Redactor) -> Self {
        Self {
            store,
            config,
            redactor,
            clock: Arc::new(now_micros),
        }
    }

    /// Memory in `store` as the service's `config` sets it: its
    /// `[orchestrator.memory]` limits, and the redaction its audit events
    /// get (the built-in patterns and `audit.redact_patterns`).
    pub(crate) fn for_config(store: Store, config: &Config) -> Result<Self, ConfigError> {
        let redactor = Redactor::new(&config.audit.redact_patterns)
            .map_err(|err| ConfigError::new("audit.redact_patterns", err.to_string()))?;
        Ok(Self::new(store, config.memory.clone(), redactor))
    }

    /// The same index, telling the time with `clock` (microseconds).
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// What pruning deletes, as configured.
    #[cfg(test)]
    pub(crate) fn retention(&self) -> Retention {
        Retention::of(&self.config)
    }

    async fn remember_note(&self, new: NewNote) -> Result<Note, MemoryError> {
        self.check(&new)?;
        let now = (self.clock)();
        let note = Note {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: new.tenant,
            agent: new.agent,
            text: self.redactor.redact(new.text.trim()).into_owned(),
            tags: tags_of(&new.tags)
                .map(|tag| self.redactor.redact(tag).into_owned())
                .collect(),
            create_time: now,
            expire_time: new.ttl.map(|ttl| now.saturating_add(micros(ttl))),
        };
        let pushed_out = self
            .store
            .insert_note(&note, self.config.max_notes_per_tenant)
            .await?;
        if pushed_out > 0 {
            tracing::debug!(
                tenant = %note.tenant,
                deleted = pushed_out,
                "memory: the tenant's oldest notes made room for a new one"
            );
        }
        Ok(note)
    }

    /// Checks a note before anything of it is stored.
    fn check(&self, new: &NewNote) -> Result<(), MemoryError> {
        let invalid = |why: &str| Err(MemoryError::Invalid(why.to_owned()));
        if new.tenant.is_empty() {
            return invalid("a note needs a tenant");
        }
        if new.agent.len() > MAX_AGENT_BYTES || new.agent.chars().any(char::is_control) {
            return invalid("the agent name is not one an agent profile can have");
        }
        if new.text.trim().is_empty() {
            return invalid("the note's text is empty: say what to remember");
        }
        if new.text.contains('\0') {
            return invalid("the note's text contains a NUL character; remove it");
        }
        if new.tags.len() > MAX_TAGS {
            return Err(MemoryError::Invalid(format!(
                "a note has at most {MAX_TAGS} tags; this one has {}",
                new.tags.len()
            )));
        }
        for tag in &new.tags {
            if tag.len() > MAX_TAG_BYTES || tag.chars().any(char::is_control) {
                return Err(MemoryError::Invalid(format!(
                    "each tag is a word or short phrase of at most {MAX_TAG_BYTES} bytes \
                     without control characters; {:?} is not",
                    agentmesh_kit::text::prefix_within(tag, MAX_TAG_BYTES)
                )));
            }
        }
        if new.ttl.is_some_and(|ttl| ttl.is_zero()) {
            return invalid("the TTL must be above zero (or unset: kept until forgotten)");
        }
        let size = new.text.trim().len() + new.tags.iter().map(String::len).sum::<usize>();
        if size > self.config.max_note_bytes {
            return Err(MemoryError::TooLarge {
                size,
                limit: self.config.max_note_bytes,
            });
        }
        Ok(())
    }

    async fn recall_notes(
        &self,
        tenant: &str,
        agent: &str,
        query: &str,
        k: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let terms = Terms::of(query);
        let now = (self.clock)();
        let limit = if k == 0 { self.config.default_top_k } else { k };
        let search = Search {
            tenant,
            agent,
            terms: &terms,
            alive_at: now,
            created_since: self
                .config
                .max_age
                .map_or(i64::MIN, |age| now.saturating_sub(micros(age))),
            limit: limit.min(MAX_TOP_K),
        };
        let found = self.store.search_notes(&search).await?;
        Ok(found
            .into_iter()
            .map(|(note, relevance)| Recalled {
                note,
                score: score(relevance),
            })
            .collect())
    }

    async fn forget_note(&self, tenant: &str, id: &str) -> Result<bool, MemoryError> {
        Ok(self.store.delete_note(tenant, id).await?)
    }

    async fn prune_notes(&self, now: i64, retention: &Retention) -> Result<u64, MemoryError> {
        let created_before = retention
            .max_age
            .map_or(i64::MIN, |age| now.saturating_sub(micros(age)));
        let mut deleted = 0;
        loop {
            let count = self
                .store
                .delete_stale_notes(now, created_before, PRUNE_BATCH)
                .await?;
            deleted += count;
            if count < PRUNE_BATCH.unsigned_abs() {
                break;
            }
        }
        let keep = retention.max_notes_per_tenant;
        for tenant in self.store.tenants_over(keep).await? {
            loop {
                let count = self.store.trim_notes(&tenant, keep).await?;
                deleted += count;
                if count == 0 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

impl MemoryIndex for FullTextIndex {
    fn remember(&self, note: NewNote) -> BoxFuture<'_, Result<Note, MemoryError>> {
        Box::pin(self.remember_note(note))
    }

    fn recall<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        query: &'a str,
        k: usize,
    ) -> BoxFuture<'a, Result<Vec<Recalled>, MemoryError>> {
        Box::pin(self.recall_notes(tenant, agent, query, k))
    }

    fn forget<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, MemoryError>> {
        Box::pin(self.forget_note(tenant, id))
    }

    fn prune<'a>(
        &'a self,
        now: i64,
        retention: &'a Retention,
    ) -> BoxFuture<'a, Result<u64, MemoryError>> {
        Box::pin(self.prune_notes(now, retention))
    }
}

/// The tags as kept: trimmed, blank ones dropped, each once.
fn tags_of(tags: &[String]) -> impl Iterator<Item = &str> {
    tags.iter()
        .enumerate()
        .map(|(at, tag)| (at, tag.trim()))
        .filter(move |&(at, tag)| {
            !tag.is_empty() && !tags.iter().take(at).any(|earlier| earlier.trim() == tag)
        })
        .map(|(_, tag)| tag)
}

/// A backend's relevance (higher = better, from 0) as a score in 0..1.
fn score(relevance: f64) -> f64 {
    if relevance.is_nan() || relevance <= 0.0 {
        0.0
    } else if relevance.is_infinite() {
        1.0
    } else {
        relevance / (1.0 + relevance)
    }
}

/// A duration in microseconds (saturating).
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
