//! The log as stored, on SQLite or PostgreSQL.
//!
//! Writing ([`Store::append`]) happens in one transaction per group of
//! batches, holding the log's write lock (SQLite: `BEGIN IMMEDIATE`;
//! PostgreSQL: a transaction-scoped advisory lock), so that even several
//! replicas of the service write one after the other. Under that lock the
//! transaction looks up which event ids are already stored (idempotency),
//! reads the heads of the chains involved, gives out sequence numbers after
//! the last one (kept in `audit_log_state`, never reused), seals each event
//! with its hash, inserts all rows in a few statements, and moves the chain
//! heads. Sequence numbers therefore grow in commit order, which is what lets
//! a subscriber resume "after cursor N" with no gap.

use std::collections::HashMap;

use agentmesh_proto::audit::v1::AuditEvent;
use agentmesh_storage::{Database, EmbeddedMigration, Migrations, with_pool};
use prost::Message;
use sqlx::{QueryBuilder, Row};

use crate::event::{Columns, Prepared, content_hash, stored};
use crate::filter::Filter;

/// The audit schema, per backend.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &[EmbeddedMigration {
        version: 1,
        description: "append-only audit events, chains, log state",
        sql: include_str!("../migrations/sqlite/0001_events.sql"),
    }],
    postgres: &[EmbeddedMigration {
        version: 1,
        description: "append-only audit events, chains, log state",
        sql: include_str!("../migrations/postgres/0001_events.sql"),
    }],
};

/// The advisory lock key serializing writers of the log in PostgreSQL.
const WRITE_LOCK_KEY: i64 = 0x6175_6469_7401;

/// Rows per multi-row INSERT on SQLite (23 parameters each, far below its
/// 32766-parameter limit).
const SQLITE_ROWS_PER_INSERT: usize = 400;

/// Ids per `IN (…)` lookup on SQLite.
const SQLITE_IDS_PER_LOOKUP: usize = 900;

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
}

impl From<prost::DecodeError> for StoreError {
    fn from(err: prost::DecodeError) -> Self {
        Self::Corrupt(err.to_string())
    }
}

/// What happened to one event of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Stored now, at this sequence number.
    Stored(i64),
    /// Already stored (same event id) at this sequence number.
    Duplicate(i64),
}

/// Events just committed, for the live tail of subscriptions.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The last sequence number before this commit.
    pub prev_seq: i64,
    /// The last sequence number of this commit (`prev_seq` when it stored
    /// nothing new).
    pub last_seq: i64,
    /// The new events, in sequence order, with their server fields.
    pub events: Vec<(i64, AuditEvent)>,
}

/// A chain's head and retention anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainHead {
    pub chain: String,
    pub head_seq: i64,
    pub head_hash: String,
    pub anchor_seq: i64,
    pub anchor_hash: String,
}

/// One stored row, everything needed to check it.
#[derive(Debug, Clone)]
pub(crate) struct StoredRow {
    pub seq: i64,
    pub event_id: String,
    pub columns: Columns,
    pub hash: String,
    pub previous_hash: String,
    pub body: Vec<u8>,
}

/// A row sealed under the write lock, ready to insert.
struct Sealed<'a> {
    seq: i64,
    prepared: &'a Prepared,
    hash: String,
    previous_hash: String,
}

/// The log.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: Database,
}

/// Gives sequence numbers and hashes to the events of a write that are not
/// stored yet. Runs under the write lock.
fn seal<'a>(
    batch: &'a [Prepared],
    existing: &HashMap<String, i64>,
    heads: &mut HashMap<String, String>,
    mut last_seq: i64,
) -> (Vec<Written>, Vec<Sealed<'a>>) {
    let mut new_ids: HashMap<&str, i64> = HashMap::new();
    let mut written = Vec::with_capacity(batch.len());
    let mut sealed = Vec::with_capacity(batch.len());
    for prepared in batch {
        let id = prepared.event.event_id.as_str();
        if let Some(seq) = existing.get(id).or_else(|| new_ids.get(id)) {
            written.push(Written::Duplicate(*seq));
            continue;
        }
        last_seq += 1;
        let chain = &prepared.columns.chain;
        let previous_hash = heads.get(chain).cloned().unwrap_or_default();
        let hash = content_hash(chain, &previous_hash, &prepared.body);
        heads.insert(chain.clone(), hash.clone());
        new_ids.insert(id, last_seq);
        written.push(Written::Stored(last_seq));
        sealed.push(Sealed {
            seq: last_seq,
            prepared,
            hash,
            previous_hash,
        });
    }
    (written, sealed)
}

fn committed(prev_seq: i64, sealed: &[Sealed<'_>]) -> Committed {
    Committed {
        prev_seq,
        last_seq: sealed.last().map_or(prev_seq, |row| row.seq),
        events: sealed
            .iter()
            .map(|row| {
                let event = stored(
                    row.prepared.event.clone(),
                    row.seq,
                    row.prepared.columns.chain.clone(),
                    row.hash.clone(),
                    row.previous_hash.clone(),
                );
                (row.seq, event)
            })
            .collect(),
    }
}

/// The chains a write touches, with their current head hashes.
fn chains_of(batch: &[Prepared]) -> Vec<String> {
    let mut chains: Vec<String> = batch.iter().map(|p| p.columns.chain.clone()).collect();
    chains.sort_unstable();
    chains.dedup();
    chains
}

/// The columns selected to rebuild an event.
const EVENT_COLUMNS: &str = "seq, chain, hash, previous_hash, body";

/// The columns selected to verify a row.
const ROW_COLUMNS: &str = "seq, event_id, time_us, record_time_us, type, service, tenant, subject, \
     run_id, trace_id, outcome, tool, model, route, provider, input_tokens, output_tokens, \
     cost_usd, attribute_keys, chain, hash, previous_hash, body";

macro_rules! event_from_row {
    ($row:expr) => {{
        let row = $row;
        let seq: i64 = row.try_get("seq")?;
        let body: Vec<u8> = row.try_get("body")?;
        let event = AuditEvent::decode(body.as_slice())?;
        Ok::<_, StoreError>((
            seq,
            stored(
                event,
                seq,
                row.try_get("chain")?,
                row.try_get("hash")?,
                row.try_get("previous_hash")?,
            ),
        ))
    }};
}

macro_rules! stored_row {
    ($row:expr) => {{
        let row = $row;
        Ok::<_, StoreError>(StoredRow {
            seq: row.try_get("seq")?,
            event_id: row.try_get("event_id")?,
            columns: Columns {
                time_us: row.try_get("time_us")?,
                record_time_us: row.try_get("record_time_us")?,
                event_type: row.try_get("type")?,
                service: row.try_get("service")?,
                tenant: row.try_get("tenant")?,
                subject: row.try_get("subject")?,
                run_id: row.try_get("run_id")?,
                trace_id: row.try_get("trace_id")?,
                outcome: row.try_get("outcome")?,
                tool: row.try_get("tool")?,
                model: row.try_get("model")?,
                route: row.try_get("route")?,
                provider: row.try_get("provider")?,
                input_tokens: row.try_get("input_tokens")?,
                output_tokens: row.try_get("output_tokens")?,
                cost_usd: row.try_get("cost_usd")?,
                attribute_keys: row.try_get("attribute_keys")?,
                chain: row.try_get("chain")?,
            },
            hash: row.try_get("hash")?,
            previous_hash: row.try_get("previous_hash")?,
            body: row.try_get("body")?,
        })
    }};
}

impl Store {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Stores a write: every event not stored yet, sealed into its chain.
    /// Returns what happened to each event, in order, and what was committed.
    pub(crate) async fn append(
        &self,
        batch: &[Prepared],
    ) -> Result<(Vec<Written>, Committed), StoreError> {
        match &self.db {
            Database::Sqlite(pool) => append_sqlite(pool, batch).await,
            Database::Postgres(pool) => append_postgres(pool, batch).await,
        }
    }

    /// The last sequence number given out and the first one retained.
    pub(crate) async fn state(&self) -> Result<(i64, i64), StoreError> {
        with_pool!(&self.db, |pool| {
            let row =
                sqlx::query("SELECT last_seq, retained_from FROM audit_log_state WHERE id = 1")
                    .fetch_one(pool)
                    .await?;
            Ok((row.try_get("last_seq")?, row.try_get("retained_from")?))
        })
    }

    /// One page of events matching `filter`, ordered by (time, seq), after
    /// the position `after` (exclusive), among the events up to `max_seq`.
    pub(crate) async fn page(
        &self,
        filter: &Filter,
        newest_first: bool,
        after: Option<(i64, i64)>,
        max_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, i64, AuditEvent)>, StoreError> {
        with_pool!(&self.db, |pool| {
            let mut query = QueryBuilder::new(format!(
                "SELECT time_us, {EVENT_COLUMNS} FROM audit_events WHERE 1 = 1"
            ));
            filter.push_sql(&mut query);
            if let Some(max_seq) = max_seq {
                query.push(" AND seq <= ").push_bind(max_seq);
            }
            let (cmp, dir) = if newest_first {
                ("<", "DESC")
            } else {
                (">", "ASC")
            };
            if let Some((time_us, seq)) = after {
                query
                    .push(format!(" AND (time_us {cmp} "))
                    .push_bind(time_us)
                    .push(" OR (time_us = ")
                    .push_bind(time_us)
                    .push(format!(" AND seq {cmp} "))
                    .push_bind(seq)
                    .push("))");
            }
            query.push(format!(" ORDER BY time_us {dir}, seq {dir} LIMIT "));
            query.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
            let rows = query.build().fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let time_us: i64 = row.try_get("time_us")?;
                    let (seq, event) = event_from_row!(row)?;
                    Ok((time_us, seq, event))
                })
                .collect()
        })
    }

    /// Events matching `filter` with a sequence number in `(after, upto]`,
    /// oldest first, at most `limit` (the replayed part of a subscription).
    pub(crate) async fn after_seq(
        &self,
        filter: &Filter,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<(i64, AuditEvent)>, StoreError> {
        with_pool!(&self.db, |pool| {
            let mut query = QueryBuilder::new(format!(
                "SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > "
            ));
            query.push_bind(after).push(" AND seq <= ").push_bind(upto);
            filter.push_sql(&mut query);
            query
                .push(" ORDER BY seq LIMIT ")
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
            let rows = query.build().fetch_all(pool).await?;
            rows.iter().map(|row| event_from_row!(row)).collect()
        })
    }

    /// Every attribute key used by the events matching `filter` up to
    /// `max_seq`, sorted.
    pub(crate) async fn attribute_keys(
        &self,
        filter: &Filter,
        max_seq: i64,
    ) -> Result<Vec<String>, StoreError> {
        with_pool!(&self.db, |pool| {
            let mut query = QueryBuilder::new(
                "SELECT DISTINCT attribute_keys FROM audit_events WHERE attribute_keys <> ''",
            );
            filter.push_sql(&mut query);
            query.push(" AND seq <= ").push_bind(max_seq);
            let rows = query.build().fetch_all(pool).await?;
            let mut keys = std::collections::BTreeSet::new();
            for row in &rows {
                let joined: String = row.try_get("attribute_keys")?;
                keys.extend(joined.split('\n').map(str::to_owned));
            }
            Ok(keys.into_iter().collect())
        })
    }

    /// The heads of all chains, by name.
    pub(crate) async fn chains(&self) -> Result<Vec<ChainHead>, StoreError> {
        with_pool!(&self.db, |pool| {
            let rows = sqlx::query(
                "SELECT chain, head_seq, head_hash, anchor_seq, anchor_hash FROM audit_chains ORDER BY chain",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(ChainHead {
                        chain: row.try_get("chain")?,
                        head_seq: row.try_get("head_seq")?,
                        head_hash: row.try_get("head_hash")?,
                        anchor_seq: row.try_get("anchor_seq")?,
                        anchor_hash: row.try_get("anchor_hash")?,
                    })
                })
                .collect()
        })
    }

    /// Rows of one chain after `after_seq`, oldest first, with record times
    /// before `end_us` when given.
    pub(crate) async fn chain_rows(
        &self,
        chain: &str,
        after_seq: i64,
        end_us: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredRow>, StoreError> {
        with_pool!(&self.db, |pool| {
            let mut query = QueryBuilder::new(format!(
                "SELECT {ROW_COLUMNS} FROM audit_events WHERE chain = "
            ));
            query
                .push_bind(chain.to_owned())
                .push(" AND seq > ")
                .push_bind(after_seq);
            if let Some(end) = end_us {
                query.push(" AND record_time_us < ").push_bind(end);
            }
            query
                .push(" ORDER BY seq LIMIT ")
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
            let rows = query.build().fetch_all(pool).await?;
            rows.iter().map(|row| stored_row!(row)).collect()
        })
    }

    /// The last event of `chain` recorded before `start_us`: where a walk
    /// that starts at `start_us` picks up the chain. `(0, anchor)` when none.
    pub(crate) async fn chain_position_before(
        &self,
        chain: &str,
        start_us: i64,
    ) -> Result<Option<(i64, String)>, StoreError> {
        with_pool!(&self.db, |pool| {
            let row = sqlx::query(
                "SELECT seq, hash FROM audit_events WHERE chain = $1 AND record_time_us < $2 ORDER BY seq DESC LIMIT 1",
            )
            .bind(chain)
            .bind(start_us)
            .fetch_optional(pool)
            .await?;
            row.map(|row| Ok((row.try_get("seq")?, row.try_get("hash")?)))
                .transpose()
        })
    }

    /// Deletes, in one transaction, up to `limit` of the oldest events
    /// recorded before `cutoff_us` — always a prefix of the log, so every
    /// chain keeps a contiguous tail — and moves each affected chain's anchor
    /// to the hash of its last deleted event. Returns how many were deleted
    /// and the new anchors.
    pub(crate) async fn delete_before(
        &self,
        cutoff_us: i64,
        limit: usize,
    ) -> Result<(u64, Vec<(String, String)>), StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        macro_rules! delete_prefix {
            ($tx:expr) => {{
                let tx = $tx;
                let rows = sqlx::query(
                    "SELECT seq, chain, hash, record_time_us FROM audit_events ORDER BY seq LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&mut **tx)
                .await?;
                let mut anchors: HashMap<String, (i64, String)> = HashMap::new();
                let mut last = None;
                for row in &rows {
                    let record_time_us: i64 = row.try_get("record_time_us")?;
                    if record_time_us >= cutoff_us {
                        break;
                    }
                    let seq: i64 = row.try_get("seq")?;
                    anchors.insert(row.try_get("chain")?, (seq, row.try_get("hash")?));
                    last = Some(seq);
                }
                let Some(last) = last else {
                    return Ok((0, Vec::new()));
                };
                let deleted = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
                    .bind(last)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                for (chain, (seq, hash)) in &anchors {
                    sqlx::query("UPDATE audit_chains SET anchor_seq = $1, anchor_hash = $2 WHERE chain = $3")
                        .bind(seq)
                        .bind(hash)
                        .bind(chain)
                        .execute(&mut **tx)
                        .await?;
                }
                sqlx::query("UPDATE audit_log_state SET retained_from = $1 WHERE id = 1")
                    .bind(last + 1)
                    .execute(&mut **tx)
                    .await?;
                let mut anchors: Vec<(String, String)> =
                    anchors.into_iter().map(|(chain, (_, hash))| (chain, hash)).collect();
                anchors.sort();
                (deleted, anchors)
            }};
        }
        match &self.db {
            Database::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query("UPDATE audit_retention_guard SET active = 1 WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                let result = delete_prefix!(&mut tx);
                sqlx::query("UPDATE audit_retention_guard SET active = 0 WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(result)
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT set_config('agentmesh.audit_retention', 'on', true)")
                    .execute(&mut *tx)
                    .await?;
                let result = delete_prefix!(&mut tx);
                tx.commit().await?;
                Ok(result)
            }
        }
    }
}

async fn append_sqlite(
    pool: &sqlx::SqlitePool,
    batch: &[Prepared],
) -> Result<(Vec<Written>, Committed), StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut existing = HashMap::new();
    for ids in batch.chunks(SQLITE_IDS_PER_LOOKUP) {
        let mut query =
            QueryBuilder::new("SELECT event_id, seq FROM audit_events WHERE event_id IN (");
        let mut list = query.separated(", ");
        for prepared in ids {
            list.push_bind(prepared.event.event_id.clone());
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *tx).await? {
            existing.insert(row.try_get("event_id")?, row.try_get("seq")?);
        }
    }
    let chains = chains_of(batch);
    let mut heads = HashMap::new();
    {
        let mut query =
            QueryBuilder::new("SELECT chain, head_hash FROM audit_chains WHERE chain IN (");
        let mut list = query.separated(", ");
        for chain in &chains {
            list.push_bind(chain.clone());
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *tx).await? {
            heads.insert(row.try_get("chain")?, row.try_get("head_hash")?);
        }
    }
    let prev_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM audit_log_state WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let (written, sealed) = seal(batch, &existing, &mut heads, prev_seq);
    for rows in sealed.chunks(SQLITE_ROWS_PER_INSERT) {
        let mut query = QueryBuilder::new(
            "INSERT INTO audit_events (seq, event_id, time_us, record_time_us, type, service, tenant, \
             subject, run_id, trace_id, outcome, tool, model, route, provider, input_tokens, \
             output_tokens, cost_usd, attribute_keys, chain, hash, previous_hash, body) ",
        );
        query.push_values(rows, |mut values, row| {
            let c = &row.prepared.columns;
            values
                .push_bind(row.seq)
                .push_bind(row.prepared.event.event_id.clone())
                .push_bind(c.time_us)
                .push_bind(c.record_time_us)
                .push_bind(c.event_type)
                .push_bind(c.service.clone())
                .push_bind(c.tenant.clone())
                .push_bind(c.subject.clone())
                .push_bind(c.run_id.clone())
                .push_bind(c.trace_id.clone())
                .push_bind(c.outcome)
                .push_bind(c.tool.clone())
                .push_bind(c.model.clone())
                .push_bind(c.route.clone())
                .push_bind(c.provider.clone())
                .push_bind(c.input_tokens)
                .push_bind(c.output_tokens)
                .push_bind(c.cost_usd)
                .push_bind(c.attribute_keys.clone())
                .push_bind(c.chain.clone())
                .push_bind(row.hash.clone())
                .push_bind(row.previous_hash.clone())
                .push_bind(row.prepared.body.clone());
        });
        query.build().execute(&mut *tx).await?;
    }
    let committed = committed(prev_seq, &sealed);
    if !sealed.is_empty() {
        let mut last_of_chain: HashMap<&str, &Sealed<'_>> = HashMap::new();
        for row in &sealed {
            last_of_chain.insert(&row.prepared.columns.chain, row);
        }
        let mut query = QueryBuilder::new("INSERT INTO audit_chains (chain, head_seq, head_hash) ");
        query.push_values(last_of_chain, |mut values, (chain, row)| {
            values
                .push_bind(chain.to_owned())
                .push_bind(row.seq)
                .push_bind(row.hash.clone());
        });
        query.push(" ON CONFLICT (chain) DO UPDATE SET head_seq = excluded.head_seq, head_hash = excluded.head_hash");
        query.build().execute(&mut *tx).await?;
        sqlx::query("UPDATE audit_log_state SET last_seq = $1 WHERE id = 1")
            .bind(committed.last_seq)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((written, committed))
}

async fn append_postgres(
    pool: &sqlx::PgPool,
    batch: &[Prepared],
) -> Result<(Vec<Written>, Committed), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<String> = batch.iter().map(|p| p.event.event_id.clone()).collect();
    let mut existing = HashMap::new();
    for row in sqlx::query("SELECT event_id, seq FROM audit_events WHERE event_id = ANY($1)")
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
    {
        existing.insert(row.try_get("event_id")?, row.try_get("seq")?);
    }
    let chains = chains_of(batch);
    let mut heads = HashMap::new();
    for row in sqlx::query("SELECT chain, head_hash FROM audit_chains WHERE chain = ANY($1)")
        .bind(&chains)
        .fetch_all(&mut *tx)
        .await?
    {
        heads.insert(row.try_get("chain")?, row.try_get("head_hash")?);
    }
    let prev_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM audit_log_state WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let (written, sealed) = seal(batch, &existing, &mut heads, prev_seq);
    if !sealed.is_empty() {
        // One statement for the whole write: each column travels as one
        // array, so the statement is the same whatever the batch size and
        // PostgreSQL parses and plans it once per connection.
        macro_rules! column {
            ($f:expr) => {
                sealed.iter().map($f).collect::<Vec<_>>()
            };
        }
        sqlx::query(
            "INSERT INTO audit_events (seq, event_id, time_us, record_time_us, type, service, tenant, \
             subject, run_id, trace_id, outcome, tool, model, route, provider, input_tokens, \
             output_tokens, cost_usd, attribute_keys, chain, hash, previous_hash, body) \
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::INTEGER[], \
             $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::INTEGER[], $12::TEXT[], \
             $13::TEXT[], $14::TEXT[], $15::TEXT[], $16::BIGINT[], $17::BIGINT[], \
             $18::DOUBLE PRECISION[], $19::TEXT[], $20::TEXT[], $21::TEXT[], $22::TEXT[], $23::BYTEA[])",
        )
        .bind(column!(|r| r.seq))
        .bind(column!(|r| r.prepared.event.event_id.clone()))
        .bind(column!(|r| r.prepared.columns.time_us))
        .bind(column!(|r| r.prepared.columns.record_time_us))
        .bind(column!(|r| r.prepared.columns.event_type))
        .bind(column!(|r| r.prepared.columns.service.clone()))
        .bind(column!(|r| r.prepared.columns.tenant.clone()))
        .bind(column!(|r| r.prepared.columns.subject.clone()))
        .bind(column!(|r| r.prepared.columns.run_id.clone()))
        .bind(column!(|r| r.prepared.columns.trace_id.clone()))
        .bind(column!(|r| r.prepared.columns.outcome))
        .bind(column!(|r| r.prepared.columns.tool.clone()))
        .bind(column!(|r| r.prepared.columns.model.clone()))
        .bind(column!(|r| r.prepared.columns.route.clone()))
        .bind(column!(|r| r.prepared.columns.provider.clone()))
        .bind(column!(|r| r.prepared.columns.input_tokens))
        .bind(column!(|r| r.prepared.columns.output_tokens))
        .bind(column!(|r| r.prepared.columns.cost_usd))
        .bind(column!(|r| r.prepared.columns.attribute_keys.clone()))
        .bind(column!(|r| r.prepared.columns.chain.clone()))
        .bind(column!(|r| r.hash.clone()))
        .bind(column!(|r| r.previous_hash.clone()))
        .bind(column!(|r| r.prepared.body.clone()))
        .execute(&mut *tx)
        .await?;
        let mut last_of_chain: HashMap<&str, &Sealed<'_>> = HashMap::new();
        for row in &sealed {
            last_of_chain.insert(&row.prepared.columns.chain, row);
        }
        let (names, (seqs, hashes)): (Vec<String>, (Vec<i64>, Vec<String>)) = last_of_chain
            .into_iter()
            .map(|(chain, row)| (chain.to_owned(), (row.seq, row.hash.clone())))
            .unzip();
        sqlx::query(
            "INSERT INTO audit_chains (chain, head_seq, head_hash) \
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[]) \
             ON CONFLICT (chain) DO UPDATE SET head_seq = excluded.head_seq, head_hash = excluded.head_hash",
        )
        .bind(&names)
        .bind(&seqs)
        .bind(&hashes)
        .execute(&mut *tx)
        .await?;
    }
    let committed = committed(prev_seq, &sealed);
    if !sealed.is_empty() {
        sqlx::query("UPDATE audit_log_state SET last_seq = $1 WHERE id = 1")
            .bind(committed.last_seq)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((written, committed))
}
