//! The long-term memory's notes as stored (`memory_notes`, migration 5),
//! and their full-text search: FTS5 ranked by bm25 on SQLite, a generated
//! `tsvector` ranked by `ts_rank_cd` on PostgreSQL. What goes in is
//! already checked and redacted (`crate::memory`); what comes out is the
//! note and the backend's raw relevance, higher = better, which
//! `crate::memory` turns into a score.
//!
//! Every statement names its tenant: no note is read, forgotten or
//! counted across tenants (pruning aside, which acts on every tenant's
//! stale notes by their age alone).

pub(crate) mod query;

use agentmesh_storage::{BeginWrite as _, Database, StoreError, with_pool};
use serde::Serialize;

use self::query::Search;
use super::Store;

/// A note as kept. Times are microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Note {
    /// A UUIDv7, unique across tenants.
    pub(crate) id: String,
    pub(crate) tenant: String,
    /// `""`: every agent of the tenant recalls it; otherwise only this one.
    pub(crate) agent: String,
    /// The text, redacted.
    pub(crate) text: String,
    /// Words that say what the note is about (searched with the text),
    /// redacted.
    pub(crate) tags: Vec<String>,
    pub(crate) create_time: i64,
    /// When it stops being recalled (and is pruned); `None`: never.
    pub(crate) expire_time: Option<i64>,
}

/// The `memory_notes` columns a [`Note`] is read from.
macro_rules! note_columns {
    () => {
        "n.id, n.tenant, n.agent, n.text, n.tags, n.create_time, n.expire_time"
    };
}

/// Deletes `tenant`'s notes beyond its `$2` newest, at most `$3` of them
/// (oldest first: the newest are kept).
const TRIM: &str = "DELETE FROM memory_notes WHERE tenant = $1 AND id IN \
                    (SELECT id FROM memory_notes WHERE tenant = $1 \
                    ORDER BY create_time DESC, id DESC LIMIT $3 OFFSET $2)";

/// Notes one trimming statement deletes at most (a lowered limit is
/// applied a batch at a time, so no statement holds the table long).
const TRIM_BATCH: i64 = 1000;

/// SQLite: bm25 is lower for better matches (and negative), so its
/// negation is the relevance. The text counts twice as much as the tags.
const SQLITE_SEARCH: &str = concat!(
    "SELECT ",
    note_columns!(),
    ", -bm25(memory_notes_fts, 1.0, 0.5) AS relevance \
     FROM memory_notes_fts JOIN memory_notes n ON n.seq = memory_notes_fts.rowid \
     WHERE memory_notes_fts MATCH $1 AND n.tenant = $2 AND (n.agent = '' OR n.agent = $3) \
     AND (n.expire_time IS NULL OR n.expire_time > $4) AND n.create_time >= $5 \
     ORDER BY relevance DESC, n.create_time DESC, n.id DESC LIMIT $6"
);

/// PostgreSQL: cover density, divided by 1 + log(length) so that a long
/// note does not win by length alone.
const POSTGRES_SEARCH: &str = concat!(
    "SELECT ",
    note_columns!(),
    ", ts_rank_cd(n.search, q.query, 1)::float8 AS relevance \
     FROM memory_notes n, to_tsquery('english', $1) AS q(query) \
     WHERE n.search @@ q.query AND n.tenant = $2 AND (n.agent = '' OR n.agent = $3) \
     AND (n.expire_time IS NULL OR n.expire_time > $4) AND n.create_time >= $5 \
     ORDER BY relevance DESC, n.create_time DESC, n.id DESC LIMIT $6"
);

impl Store {
    /// Stores `note`, then deletes its tenant's oldest notes beyond the
    /// `keep` newest, in one transaction; how many it deleted.
    pub(crate) async fn insert_note(&self, note: &Note, keep: usize) -> Result<u64, StoreError> {
        let tags = serde_json::to_string(&note.tags)
            .map_err(|err| StoreError::Corrupt(format!("note tags: {err}")))?;
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        Ok(with_pool!(&self.db, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO memory_notes (id, tenant, agent, text, tags, create_time, \
                 expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&note.id)
            .bind(&note.tenant)
            .bind(&note.agent)
            .bind(&note.text)
            .bind(&tags)
            .bind(note.create_time)
            .bind(note.expire_time)
            .execute(&mut *tx)
            .await?;
            // One note in makes at most one too many, unless the limit was
            // lowered: the rest is left to pruning, batch by batch.
            let trimmed = sqlx::query(TRIM)
                .bind(&note.tenant)
                .bind(keep)
                .bind(TRIM_BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            trimmed
        }))
    }

    /// The notes `search` finds, best first, each with its relevance
    /// (higher = better; bm25 on SQLite, cover density on PostgreSQL, so
    /// not comparable across backends). Nothing for a search without
    /// words.
    pub(crate) async fn search_notes(
        &self,
        search: &Search<'_>,
    ) -> Result<Vec<(Note, f64)>, StoreError> {
        if search.terms.is_empty() || search.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(search.limit).unwrap_or(i64::MAX);
        match &self.db {
            Database::Sqlite(pools) => sqlx::query(SQLITE_SEARCH)
                .bind(search.terms.fts5_match())
                .bind(search.tenant)
                .bind(search.agent)
                .bind(search.alive_at)
                .bind(search.created_since)
                .bind(limit)
                .fetch_all(pools.readers())
                .await?
                .iter()
                .map(found_from_row)
                .collect(),
            Database::Postgres(pool) => sqlx::query(POSTGRES_SEARCH)
                .bind(search.terms.tsquery())
                .bind(search.tenant)
                .bind(search.agent)
                .bind(search.alive_at)
                .bind(search.created_since)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(found_from_row)
                .collect(),
        }
    }

    /// Deletes `tenant`'s note `id`; whether there was one.
    pub(crate) async fn delete_note(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let deleted = with_pool!(&self.db, |pool| {
            sqlx::query("DELETE FROM memory_notes WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// Deletes at most `limit` notes, of any tenant, that expired by `now`
    /// or were created before `created_before`; how many.
    pub(crate) async fn delete_stale_notes(
        &self,
        now: i64,
        created_before: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        Ok(with_pool!(&self.db, |pool| {
            sqlx::query(
                "DELETE FROM memory_notes WHERE id IN (SELECT id FROM memory_notes \
                 WHERE (expire_time IS NOT NULL AND expire_time <= $1) OR create_time < $2 \
                 LIMIT $3)",
            )
            .bind(now)
            .bind(created_before)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// The tenants keeping more than `keep` notes (after a lowered limit).
    pub(crate) async fn tenants_over(&self, keep: usize) -> Result<Vec<String>, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        Ok(with_pool!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT tenant FROM memory_notes GROUP BY tenant HAVING COUNT(*) > $1",
            )
            .bind(keep)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Deletes a batch of `tenant`'s oldest notes beyond its `keep` newest;
    /// how many (none: none are left beyond).
    pub(crate) async fn trim_notes(&self, tenant: &str, keep: usize) -> Result<u64, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        Ok(with_pool!(&self.db, |pool| {
            sqlx::query(TRIM)
                .bind(tenant)
                .bind(keep)
                .bind(TRIM_BATCH)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Every stored text and tags column of `tenant`'s notes, as stored.
    #[cfg(test)]
    pub(crate) async fn stored_note_texts(&self, tenant: &str) -> Vec<(String, String)> {
        let rows: Result<Vec<(String, String)>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as("SELECT text, tags FROM memory_notes WHERE tenant = $1")
                .bind(tenant)
                .fetch_all(pool)
                .await
        });
        rows.unwrap_or_default()
    }
}

/// A found note and its relevance.
fn found_from_row<R>(row: &R) -> Result<(Note, f64), StoreError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> f64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let tags: String = row.try_get("tags")?;
    let note = Note {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        agent: row.try_get("agent")?,
        text: row.try_get("text")?,
        tags: serde_json::from_str(&tags)
            .map_err(|err| StoreError::Corrupt(format!("note tags: {err}")))?,
        create_time: row.try_get("create_time")?,
        expire_time: row.try_get("expire_time")?,
    };
    Ok((note, row.try_get("relevance")?))
}
