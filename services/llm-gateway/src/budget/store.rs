//! The budgets' spend table (`llm_budget_spend`) on SQLite or PostgreSQL:
//! one row per subject and UTC period, read before a call and added to by
//! one atomic upsert after it, so replicas sharing the database share the
//! spend and nothing is lost in a restart.

use std::time::{SystemTime, UNIX_EPOCH};

use agentmesh_storage::{Database, StoreError, with_pool};
use sqlx::Row;

use super::Account;

/// Tokens and estimated dollars spent in one account's period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Spent {
    pub(crate) tokens: u64,
    pub(crate) cost_usd: f64,
}

/// What `account` has spent so far (nothing when it has no row yet).
pub(crate) async fn read(database: &Database, account: &Account) -> Result<Spent, StoreError> {
    let start = account.start.to_string();
    let row = with_pool!(database, |pool| {
        sqlx::query(
            "SELECT tokens, cost_usd FROM llm_budget_spend \
             WHERE scope = $1 AND subject = $2 AND period = $3 AND period_start = $4",
        )
        .bind(account.scope.as_str())
        .bind(account.subject.as_str())
        .bind(account.period.as_str())
        .bind(start.as_str())
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from)?
        .map(|row| -> Result<Spent, StoreError> {
            let tokens: i64 = row.try_get("tokens").map_err(StoreError::from)?;
            let cost_usd: f64 = row.try_get("cost_usd").map_err(StoreError::from)?;
            Ok(Spent {
                tokens: u64::try_from(tokens).unwrap_or(0),
                cost_usd,
            })
        })
    });
    row.transpose().map(Option::unwrap_or_default)
}

/// Adds `spent` to `account`'s row, creating it: one statement, atomic
/// on both backends, so concurrent gateways never lose an addition.
pub(crate) async fn add(
    database: &Database,
    account: &Account,
    spent: Spent,
) -> Result<(), StoreError> {
    let start = account.start.to_string();
    let tokens = i64::try_from(spent.tokens).unwrap_or(i64::MAX);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    with_pool!(database, |pool| {
        sqlx::query(
            "INSERT INTO llm_budget_spend \
               (scope, subject, period, period_start, tokens, cost_usd, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (scope, subject, period, period_start) DO UPDATE SET \
               tokens = llm_budget_spend.tokens + excluded.tokens, \
               cost_usd = llm_budget_spend.cost_usd + excluded.cost_usd, \
               updated_at_ms = excluded.updated_at_ms",
        )
        .bind(account.scope.as_str())
        .bind(account.subject.as_str())
        .bind(account.period.as_str())
        .bind(start.as_str())
        .bind(tokens)
        .bind(spent.cost_usd)
        .bind(now_ms)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from)?;
    });
    Ok(())
}
