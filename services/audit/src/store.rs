//! The log as stored, on SQLite or PostgreSQL: the schema and the read
//! queries (failing with the shared `StoreError`); the write path is in `append`, retention's delete in
//! `retain`.
//!
//! Writing ([`Store::append`]) happens in one transaction per group of
//! batches, holding the log's write lock (SQLite: `BEGIN IMMEDIATE`;
//! PostgreSQL: a transaction-scoped advisory lock), so that even several
//! replicas of the service write one after the other. Under that lock the
//! transaction looks up which event ids are already stored in the events'
//! chains (idempotency: an id is unique per chain, i.e. per tenant, so one
//! tenant cannot claim another's ids),
//! reads the heads of the chains involved, gives out sequence numbers after
//! the last one (kept in `audit_log_state`, never reused), seals each event
//! with its hash, inserts all rows in a few statements, and moves the chain
//! heads. Sequence numbers therefore grow in commit order, which is what lets
//! a subscriber resume "after cursor N" with no gap.
//!
//! Reads ([`Store::page`], [`Store::after_seq`], the chain walks of
//! `VerifyChain`) take no lock: they only see committed transactions.
//!
//! On PostgreSQL each commit that stores something also sends a
//! notification to the other replicas (`notify`), from inside the
//! transaction, so that it is delivered when — and only if — it commits.

mod append;
pub(crate) mod notify;
mod retain;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use agentmesh_proto::audit::v1::AuditEvent;
use agentmesh_storage::{
    Database, EmbeddedMigration, Migrations, StoreError, with_pool, with_reader,
};
use prost::Message;
use sqlx::{QueryBuilder, Row};

pub(crate) use self::append::{Committed, Written};
use crate::event::{Columns, stored};
use crate::filter::Filter;

/// The audit schema, per backend.
pub(crate) static MIGRATIONS: Migrations = Migrations {
    sqlite: &[
        EmbeddedMigration {
            version: 1,
            description: "append-only audit events, chains, log state",
            sql: include_str!("../migrations/sqlite/0001_events.sql"),
        },
        EmbeddedMigration {
            version: 2,
            description: "event ids unique per chain",
            sql: include_str!("../migrations/sqlite/0002_event_id_per_chain.sql"),
        },
    ],
    postgres: &[
        EmbeddedMigration {
            version: 1,
            description: "append-only audit events, chains, log state",
            sql: include_str!("../migrations/postgres/0001_events.sql"),
        },
        EmbeddedMigration {
            version: 2,
            description: "event ids unique per chain",
            sql: include_str!("../migrations/postgres/0002_event_id_per_chain.sql"),
        },
    ],
};

/// The advisory lock key serializing writers of the log in PostgreSQL.
const WRITE_LOCK_KEY: i64 = 0x6175_6469_7401;

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

/// The log.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: Database,
    /// This process among the replicas writing the log: its commit
    /// notifications carry it, so its own listener can skip them.
    origin: Arc<str>,
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
        Self {
            db,
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// This process's id in commit notifications.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
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
        with_reader!(&self.db, |pool| {
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
        with_reader!(&self.db, |pool| {
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
        with_reader!(&self.db, |pool| {
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
        with_reader!(&self.db, |pool| {
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
        with_reader!(&self.db, |pool| {
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
        with_reader!(&self.db, |pool| {
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
}
