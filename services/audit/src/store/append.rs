//! The write path: [`Store::append`] seals a write into its chains and
//! stores it in one transaction under the log's write lock.
//!
//! Both backends take the same steps, each in its own SQL dialect: look up
//! which event ids are already stored, read the heads of the chains
//! involved and the last sequence number, [`seal`] the new events (sequence
//! numbers and hashes, computed here), insert them, move the chain heads and
//! the last sequence number, commit. SQLite inserts multi-row `VALUES`
//! chunks; PostgreSQL one `UNNEST` statement per write, and a commit
//! notification for the other replicas (`super::notify`).

use std::collections::HashMap;

use agentmesh_proto::audit::v1::AuditEvent;
use agentmesh_storage::{Database, StoreError};
use sqlx::{QueryBuilder, Row};

use super::{Store, WRITE_LOCK_KEY, notify};
use crate::event::{Prepared, content_hash, stored};

/// Rows per multi-row INSERT on SQLite (23 parameters each, far below its
/// 32766-parameter limit).
const SQLITE_ROWS_PER_INSERT: usize = 400;

/// Ids per `IN (…)` lookup on SQLite.
const SQLITE_IDS_PER_LOOKUP: usize = 900;

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

/// A row sealed under the write lock, ready to insert.
struct Sealed<'a> {
    seq: i64,
    prepared: &'a Prepared,
    hash: String,
    previous_hash: String,
}

impl Store {
    /// Stores a write: every event not stored yet, sealed into its chain.
    /// Returns what happened to each event, in order, and what was committed.
    pub(crate) async fn append(
        &self,
        batch: &[Prepared],
    ) -> Result<(Vec<Written>, Committed), StoreError> {
        match &self.db {
            Database::Sqlite(pools) => append_sqlite(pools.writer(), batch).await,
            Database::Postgres(pool) => append_postgres(pool, batch, &self.origin).await,
        }
    }
}

/// Gives sequence numbers and hashes to the events of a write that are not
/// stored yet. Runs under the write lock.
fn seal<'a>(
    batch: &'a [Prepared],
    existing: &HashMap<(String, String), i64>,
    heads: &mut HashMap<String, String>,
    mut last_seq: i64,
) -> (Vec<Written>, Vec<Sealed<'a>>) {
    // Ids are unique per chain: the same id in another tenant's chain is
    // another event.
    let mut new_ids: HashMap<(&str, &str), i64> = HashMap::new();
    let mut written = Vec::with_capacity(batch.len());
    let mut sealed = Vec::with_capacity(batch.len());
    for prepared in batch {
        let id = prepared.event.event_id.as_str();
        let chain = &prepared.columns.chain;
        let duplicate = existing
            .get(&(chain.clone(), id.to_owned()))
            .or_else(|| new_ids.get(&(chain.as_str(), id)));
        if let Some(seq) = duplicate {
            written.push(Written::Duplicate(*seq));
            continue;
        }
        last_seq += 1;
        let previous_hash = heads.get(chain).cloned().unwrap_or_default();
        let hash = content_hash(chain, &previous_hash, &prepared.body);
        heads.insert(chain.clone(), hash.clone());
        new_ids.insert((chain.as_str(), id), last_seq);
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

/// The last sealed row of each chain: the chain's new head.
fn last_of_chain<'s, 'a>(sealed: &'s [Sealed<'a>]) -> HashMap<&'s str, &'s Sealed<'a>> {
    let mut last: HashMap<&str, &Sealed<'_>> = HashMap::new();
    for row in sealed {
        last.insert(&row.prepared.columns.chain, row);
    }
    last
}

async fn append_sqlite(
    pool: &sqlx::SqlitePool,
    batch: &[Prepared],
) -> Result<(Vec<Written>, Committed), StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let chains = chains_of(batch);
    let existing = stored_ids_sqlite(&mut tx, batch, &chains).await?;
    let mut heads = chain_heads_sqlite(&mut tx, &chains).await?;
    let prev_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM audit_log_state WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let (written, sealed) = seal(batch, &existing, &mut heads, prev_seq);
    for rows in sealed.chunks(SQLITE_ROWS_PER_INSERT) {
        insert_rows_sqlite(&mut tx, rows).await?;
    }
    let committed = committed(prev_seq, &sealed);
    if !sealed.is_empty() {
        let mut query = QueryBuilder::new("INSERT INTO audit_chains (chain, head_seq, head_hash) ");
        query.push_values(last_of_chain(&sealed), |mut values, (chain, row)| {
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

/// The sequence numbers of the batch's events already stored, by (chain,
/// event id). Rows of the same ids in chains the batch does not write are
/// filtered out by the query; those of another of its chains by the key.
async fn stored_ids_sqlite(
    tx: &mut sqlx::SqliteConnection,
    batch: &[Prepared],
    chains: &[String],
) -> Result<HashMap<(String, String), i64>, StoreError> {
    let mut existing = HashMap::new();
    for ids in batch.chunks(SQLITE_IDS_PER_LOOKUP) {
        let mut query =
            QueryBuilder::new("SELECT chain, event_id, seq FROM audit_events WHERE event_id IN (");
        let mut list = query.separated(", ");
        for prepared in ids {
            list.push_bind(prepared.event.event_id.clone());
        }
        query.push(") AND chain IN (");
        let mut list = query.separated(", ");
        for chain in chains {
            list.push_bind(chain.clone());
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *tx).await? {
            existing.insert(
                (row.try_get("chain")?, row.try_get("event_id")?),
                row.try_get("seq")?,
            );
        }
    }
    Ok(existing)
}

/// The head hashes of `chains` (absent: a new chain).
async fn chain_heads_sqlite(
    tx: &mut sqlx::SqliteConnection,
    chains: &[String],
) -> Result<HashMap<String, String>, StoreError> {
    let mut heads = HashMap::new();
    let mut query = QueryBuilder::new("SELECT chain, head_hash FROM audit_chains WHERE chain IN (");
    let mut list = query.separated(", ");
    for chain in chains {
        list.push_bind(chain.clone());
    }
    query.push(")");
    for row in query.build().fetch_all(&mut *tx).await? {
        heads.insert(row.try_get("chain")?, row.try_get("head_hash")?);
    }
    Ok(heads)
}

/// One multi-row INSERT of sealed rows.
async fn insert_rows_sqlite(
    tx: &mut sqlx::SqliteConnection,
    rows: &[Sealed<'_>],
) -> Result<(), StoreError> {
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
    Ok(())
}

async fn append_postgres(
    pool: &sqlx::PgPool,
    batch: &[Prepared],
    origin: &str,
) -> Result<(Vec<Written>, Committed), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<String> = batch.iter().map(|p| p.event.event_id.clone()).collect();
    let chains = chains_of(batch);
    let mut existing = HashMap::new();
    for row in sqlx::query(
        "SELECT chain, event_id, seq FROM audit_events WHERE event_id = ANY($1) AND chain = ANY($2)",
    )
    .bind(&ids)
    .bind(&chains)
    .fetch_all(&mut *tx)
    .await?
    {
        existing.insert(
            (row.try_get("chain")?, row.try_get("event_id")?),
            row.try_get("seq")?,
        );
    }
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
        insert_rows_postgres(&mut tx, &sealed).await?;
        let (names, (seqs, hashes)): (Vec<String>, (Vec<i64>, Vec<String>)) =
            last_of_chain(&sealed)
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
        // Delivered to the other replicas' listeners at the commit, never
        // for a rollback: they wake their subscribers at once (`notify`).
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(notify::CHANNEL)
            .bind(notify::payload(committed.last_seq, origin))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((written, committed))
}

/// Inserts every sealed row in one statement: each column travels as one
/// array, so the statement is the same whatever the batch size and
/// PostgreSQL parses and plans it once per connection.
async fn insert_rows_postgres(
    tx: &mut sqlx::PgConnection,
    sealed: &[Sealed<'_>],
) -> Result<(), StoreError> {
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
    Ok(())
}
