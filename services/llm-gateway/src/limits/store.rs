//! The shared rate limits' store: one GCRA row per meter in PostgreSQL
//! (`llm_rate_limits`, migration 0002), leased from by one call of the
//! database function `llm_rate_limit_lease` per batch, which locks the row,
//! grants what the GCRA allows and moves its TAT on, all on the database's
//! clock (the same for every replica).
//!
//! ```text
//! SharedRateLimiter ── lease(row, gcra, min, max, adjust) ──▶ SELECT … FROM llm_rate_limit_lease(…)
//!                   ◀── granted cells, wait ─────────────────
//! not open yet ─▶ an error (the limiter decides locally), and an open in the background
//! every minute ─▶ sweep: rows at rest (TAT over a minute old) deleted, 1000 at a time
//! ```
//!
//! The database is opened (and migrated) at start-up when it answers; when
//! it does not, the gateway starts anyway with local limits, and the next
//! lease opens it in the background.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentmesh_kit::health::DependencyCheck;
use agentmesh_resilience::{Lease, LeaseError, LeaseRequest, LeaseStore};
use agentmesh_storage::{Database, LazyDatabase, StorageError, StoreError};
use sha2::{Digest as _, Sha256};

use crate::config::SharedLimitsConfig;

/// Rows longer than this are named by a digest (a btree key has a size
/// limit, and a hostile key must not break leasing for everyone).
const MAX_ROW_BYTES: usize = 200;
/// Rows deleted per sweep statement.
const SWEEP_BATCH: i64 = 1000;

/// The shared limits' PostgreSQL database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimitStore {
    database: LazyDatabase,
    /// An open runs in the background (at most one at a time).
    opening: Arc<AtomicBool>,
}

impl RateLimitStore {
    /// The store `config` names (opened later).
    pub fn new(config: &SharedLimitsConfig) -> Self {
        Self {
            database: LazyDatabase::new(config.storage(), crate::SERVICE)
                .with_migrations(&crate::schema::MIGRATIONS),
            opening: Arc::default(),
        }
    }

    /// Connects and migrates; does nothing once open.
    pub async fn open(&self) -> Result<(), StorageError> {
        self.database.open().await
    }

    /// Closes the pool, if it was opened.
    pub async fn close(&self) {
        self.database.close().await;
    }

    /// The optional readiness check `rate_limit_store`: reported, never
    /// deciding readiness (with the database down the gateway still serves,
    /// with local limits).
    pub(crate) fn health_check(&self) -> DependencyCheck {
        let database = self.database.clone();
        DependencyCheck::optional("rate_limit_store", move || {
            let database = database.clone();
            async move {
                match database.get() {
                    None => Err("not connected: rate limits are local (1/N each)".to_owned()),
                    Some(db) => db
                        .ping()
                        .await
                        .map_err(|err| format!("SELECT 1 failed: {err}")),
                }
            }
        })
        .with_target("PostgreSQL (shared rate limits)")
    }

    /// Deletes rows at rest (their TAT over a minute in the past, the same
    /// as no row), at most 1000; how many went.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let Some(Database::Postgres(pool)) = self.database.get() else {
            return Ok(0);
        };
        // The TAT is checked on the row deleted itself, so a row a lease
        // moved on meanwhile stays.
        let done = sqlx::query(
            "DELETE FROM llm_rate_limits \
             WHERE tat_ns < (extract(epoch FROM clock_timestamp()) * 1000000000)::BIGINT - 60000000000 \
               AND meter IN (SELECT meter FROM llm_rate_limits \
                 WHERE tat_ns < (extract(epoch FROM clock_timestamp()) * 1000000000)::BIGINT - 60000000000 \
                 LIMIT $1)",
        )
        .bind(SWEEP_BATCH)
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Sweeps every minute until dropped (the server aborts it at shutdown).
    pub(crate) async fn keep_sweeping(self) {
        let mut ticks = tokio::time::interval(Duration::from_secs(60));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.sweep().await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "idle rate-limit rows deleted"),
                Err(err) => tracing::debug!(error = %err, "sweeping idle rate-limit rows failed"),
            }
        }
    }

    /// Opens the database in the background, unless an open is running.
    fn open_in_background(&self) {
        if self.opening.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.opening.store(false, Ordering::Release);
            return;
        };
        let store = self.clone();
        drop(runtime.spawn(async move {
            if let Err(err) = store.database.open().await {
                tracing::debug!(error = %err, "the shared rate-limit database cannot be opened yet");
            }
            store.opening.store(false, Ordering::Release);
        }));
    }

    async fn lease_row(&self, request: &LeaseRequest) -> Result<Lease, LeaseError> {
        let Some(Database::Postgres(pool)) = self.database.get() else {
            self.open_in_background();
            return Err(LeaseError("the database is not connected yet".to_owned()));
        };
        let row: (i64, i64) = sqlx::query_as(
            "SELECT granted, wait_ns FROM llm_rate_limit_lease($1, $2, $3, $4, $5, $6)",
        )
        .bind(row_key(&request.row))
        .bind(request.gcra.interval_ns)
        .bind(request.gcra.tolerance_ns())
        .bind(count(request.min))
        .bind(count(request.max))
        .bind(request.adjust)
        .fetch_one(pool)
        .await
        .map_err(|err| LeaseError(err.to_string()))?;
        Ok(Lease {
            granted: u64::try_from(row.0).unwrap_or(0),
            wait: Duration::from_nanos(u64::try_from(row.1).unwrap_or(0)),
        })
    }
}

impl LeaseStore for RateLimitStore {
    fn lease<'a>(
        &'a self,
        request: &'a LeaseRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Lease, LeaseError>> + Send + 'a>> {
        Box::pin(self.lease_row(request))
    }
}

/// A row's name as stored: itself, or when long its start and a digest.
fn row_key(row: &str) -> String {
    if row.len() <= MAX_ROW_BYTES {
        return row.to_owned();
    }
    let mut cut = 64;
    while !row.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(row.as_bytes());
    format!(
        "{}…#{}",
        row.get(..cut).unwrap_or_default(),
        hex::encode(digest)
    )
}

/// A cell count as PostgreSQL's BIGINT.
fn count(cells: u64) -> i64 {
    i64::try_from(cells).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_rows_are_named_by_a_digest() {
        assert_eq!(row_key("tenant/requests/acme"), "tenant/requests/acme");
        let long = format!("tenant/requests/{}", "é".repeat(200));
        let key = row_key(&long);
        assert!(key.len() < MAX_ROW_BYTES, "{key}");
        assert!(key.starts_with("tenant/requests/é"), "{key}");
        assert_ne!(key, row_key(&format!("{long}x")));
        assert_eq!(key, row_key(&long));
    }
}
