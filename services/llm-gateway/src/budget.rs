//! Token and cost budgets per tenant and per API key over UTC calendar
//! days and months (`[[llm_gateway.budgets]]`), enforced before a call
//! reaches a provider, as LiteLLM's virtual-key budgets are.
//!
//! ```text
//! admitted call ─▶ Budgets::admit(payer)   the budgets of its tenant and its key
//!                    ├ each account (scope, subject, period, period start): read its
//!                    │  spend from `llm_budget_spend` (one indexed SELECT)
//!                    ├ spent ≥ a limit ─▶ RESOURCE_EXHAUSTED naming the budget, its
//!                    │  period and reset (QuotaFailure + RetryInfo), RATE_LIMITED event
//!                    └ else a Spend for the call's accounts
//! call ends ─▶ Spend::record(usage)        tokens and cost added to every account
//!              by one atomic upsert, awaited before the caller gets its answer
//! ```
//!
//! The spend lives only in the database (SQLite by default, PostgreSQL when
//! configured), never in a per-process counter: every check reads what
//! every replica has written, and a restart loses nothing. The bound on
//! overspending is the usage of the calls admitted before a budget was
//! reached and still running then, across all replicas: each was checked
//! against the spend of the calls that had ended. A caller that waits for
//! each answer overspends by at most its last call.
//!
//! Tokens are input + output as the call's usage reports (or estimates)
//! them; the cost is the call's estimated cost from the price table, none
//! for models without a price. A budget with `name = "*"` applies to every
//! tenant (or key), each with its own account. Key budgets apply to calls
//! with an authenticated credential (its id); tenant budgets to every call
//! with a tenant.

mod store;

use std::sync::Arc;
use std::time::Duration;

use agentmesh_audit_client::resilience::{Refusal, ResilienceReporter};
use agentmesh_proto::llm::v1::Usage;
use agentmesh_storage::{Database, LazyDatabase, StorageConfig};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _};
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::{BudgetConfig, BudgetPeriod, BudgetScope};
use store::Spent;

/// Who pays for a call: its tenant and the id of its credential.
#[derive(Debug, Clone, Default)]
pub(crate) struct Payer {
    /// The verified tenant (`-` for none).
    pub(crate) tenant: String,
    /// The credential's id, when the caller authenticated with one.
    pub(crate) key: Option<String>,
}

/// One spend row: a subject's spend in one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) scope: BudgetScope,
    pub(crate) subject: String,
    pub(crate) period: BudgetPeriod,
    /// The period's first day (UTC).
    pub(crate) start: Date,
}

/// The gateway's budgets and the database their spend is kept in.
#[derive(Debug)]
pub(crate) struct Budgets {
    budgets: Vec<BudgetConfig>,
    /// `None` when no budget is configured: nothing is opened.
    database: Option<LazyDatabase>,
    reporter: ResilienceReporter,
}

impl Budgets {
    /// The budgets of the configuration, their spend kept where `storage`
    /// says (opened on first use, or by [`Budgets::open`] at start).
    pub(crate) fn new(
        budgets: &[BudgetConfig],
        storage: &StorageConfig,
        reporter: ResilienceReporter,
    ) -> Self {
        let database = (!budgets.is_empty()).then(|| {
            LazyDatabase::new(storage.clone(), crate::SERVICE)
                .with_migrations(&crate::schema::MIGRATIONS)
        });
        Self {
            budgets: budgets.to_vec(),
            database,
            reporter,
        }
    }

    /// The spend database, when budgets are configured.
    pub(crate) fn database(&self) -> Option<&LazyDatabase> {
        self.database.as_ref()
    }

    /// Opens (and migrates) the spend database; nothing without budgets.
    pub(crate) async fn open(&self) -> Result<Option<&Database>, Status> {
        let Some(lazy) = &self.database else {
            return Ok(None);
        };
        if lazy.get().is_none() {
            lazy.open().await.map_err(|err| {
                tracing::error!(error = %err, "the budget database cannot be opened");
                Status::unavailable(
                    "the budget store is unavailable, so budgets cannot be checked; retry shortly",
                )
            })?;
        }
        Ok(lazy.get())
    }

    /// Admits a call of `payer` when none of its budgets is spent, with the
    /// accounts its usage goes to; else RESOURCE_EXHAUSTED naming the
    /// budget, reported as a RATE_LIMITED event for `method`.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        payer: &Payer,
        method: &str,
    ) -> Result<Spend, Status> {
        let now = Timestamp::now();
        let applicable: Vec<(&BudgetConfig, Account)> = self
            .budgets
            .iter()
            .filter_map(|budget| {
                let subject = match budget.scope {
                    BudgetScope::Tenant => Some(payer.tenant.as_str()),
                    BudgetScope::Key => payer.key.as_deref(),
                }?;
                budget.applies_to(subject).then(|| {
                    let account = account(budget.scope, subject, budget.period, now);
                    (budget, account)
                })
            })
            .collect();
        if applicable.is_empty() {
            return Ok(Spend::default());
        }
        let Some(database) = self.open().await? else {
            return Ok(Spend::default());
        };
        let mut accounts: Vec<(Account, Spent)> = Vec::new();
        for (budget, account) in applicable {
            let spent = match accounts.iter().find(|(known, _)| *known == account) {
                Some((_, spent)) => *spent,
                None => {
                    let spent = store::read(database, &account)
                        .await
                        .map_err(|err| err.to_status())?;
                    accounts.push((account.clone(), spent));
                    spent
                }
            };
            if let Some(over) = over_budget(budget, spent) {
                return Err(self.refuse(budget, &account, &over, now, method));
            }
        }
        Ok(Spend {
            budgets: Some(Arc::clone(self)),
            accounts: accounts.into_iter().map(|(account, _)| account).collect(),
            pending: None,
        })
    }

    fn refuse(
        &self,
        budget: &BudgetConfig,
        account: &Account,
        over: &Over,
        now: Timestamp,
        method: &str,
    ) -> Status {
        let resets = period_end(account.period, account.start);
        let retry_after = resets
            .duration_since(now)
            .try_into()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        let period_length = Duration::try_from(resets.duration_since(period_start(account.start)))
            .unwrap_or(Duration::ZERO);
        let scope = account.scope.as_str();
        let name = &account.subject;
        let period = account.period.as_str();
        self.reporter.refused(&Refusal {
            scope: match account.scope {
                BudgetScope::Tenant => "tenant_budget",
                BudgetScope::Key => "key_budget",
            },
            key: name,
            resource: over.resource,
            limit: over.limit,
            period: Some(period_length),
            retry_after,
            method,
        });
        let configured = if budget.name == "*" {
            format!(" (the budget of every {scope})")
        } else {
            String::new()
        };
        let description = format!(
            "{scope} budget `{name}`{configured} per {period} is spent: {} of {} {} used since {}; it resets at {resets}",
            over.used, over.limit, over.unit, account.start
        );
        let mut details = ErrorDetails::with_retry_info(Some(retry_after));
        details.add_quota_failure_violation(format!("{scope}:{name}"), description.clone());
        Status::with_error_details(Code::ResourceExhausted, description, details)
    }
}

/// A limit a budget's spend has reached.
struct Over {
    resource: &'static str,
    unit: &'static str,
    used: f64,
    limit: f64,
}

fn over_budget(budget: &BudgetConfig, spent: Spent) -> Option<Over> {
    if let Some(max) = budget.max_tokens
        && spent.tokens >= max
    {
        return Some(Over {
            resource: "tokens",
            unit: "tokens",
            used: spent.tokens as f64,
            limit: max as f64,
        });
    }
    if let Some(max) = budget.max_cost_usd
        && spent.cost_usd >= max
    {
        return Some(Over {
            resource: "cost_usd",
            unit: "US dollars",
            used: (spent.cost_usd * 1e6).round() / 1e6,
            limit: max,
        });
    }
    None
}

/// The account of `subject` for the period of `period` holding `now`.
fn account(scope: BudgetScope, subject: &str, period: BudgetPeriod, now: Timestamp) -> Account {
    let today = now.to_zoned(TimeZone::UTC).date();
    let start = match period {
        BudgetPeriod::Day => today,
        BudgetPeriod::Month => today.first_of_month(),
    };
    Account {
        scope,
        subject: subject.to_owned(),
        period,
        start,
    }
}

fn period_start(start: Date) -> Timestamp {
    start
        .to_zoned(TimeZone::UTC)
        .map_or(Timestamp::MAX, |zoned| zoned.timestamp())
}

/// When the period starting on `start` ends (the next one starts).
fn period_end(period: BudgetPeriod, start: Date) -> Timestamp {
    let next = match period {
        BudgetPeriod::Day => start.tomorrow(),
        BudgetPeriod::Month => start.checked_add(1.month()),
    };
    next.ok()
        .and_then(|next| next.to_zoned(TimeZone::UTC).ok())
        .map_or(Timestamp::MAX, |zoned| zoned.timestamp())
}

/// Where one admitted call's usage goes: added to its accounts once, when
/// the call ends.
#[derive(Debug, Default)]
pub(crate) struct Spend {
    budgets: Option<Arc<Budgets>>,
    accounts: Vec<Account>,
    /// The write of the recorded usage, while under way.
    pending: Option<JoinHandle<()>>,
}

impl Spend {
    /// Adds `usage` (tokens, estimated cost) to the call's accounts, once;
    /// the write runs on its own task, so it lands even when the caller
    /// has gone. [`Spend::recorded`] waits for it.
    pub(crate) fn record(&mut self, usage: &Usage) {
        let Some(budgets) = self.budgets.take() else {
            return;
        };
        let spent = Spent {
            tokens: u64::try_from(usage.input_tokens.max(0)).unwrap_or(0)
                + u64::try_from(usage.output_tokens.max(0)).unwrap_or(0),
            cost_usd: usage
                .estimated_cost_usd
                .filter(|cost| cost.is_finite() && *cost > 0.0)
                .unwrap_or(0.0),
        };
        if spent == Spent::default() {
            return;
        }
        let accounts = std::mem::take(&mut self.accounts);
        self.pending = Some(tokio::spawn(async move {
            let Ok(Some(database)) = budgets.open().await else {
                tracing::warn!(
                    "the budget database is unavailable: a call's spend is not recorded"
                );
                return;
            };
            for account in &accounts {
                if let Err(err) = store::add(database, account, spent).await {
                    tracing::warn!(
                        error = %err,
                        scope = account.scope.as_str(),
                        period = account.period.as_str(),
                        tokens = spent.tokens,
                        "a call's spend could not be recorded"
                    );
                }
            }
        }));
    }

    /// Waits until the recorded usage is written (so the caller's next
    /// call sees it).
    pub(crate) async fn recorded(&mut self) {
        if let Some(pending) = self.pending.take() {
            let _ = pending.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_calendar_days_and_months() {
        let now: Timestamp = "2025-01-31T23:59:59Z".parse().unwrap();
        let day = account(BudgetScope::Tenant, "acme", BudgetPeriod::Day, now);
        assert_eq!(day.start.to_string(), "2025-01-31");
        assert_eq!(
            period_end(BudgetPeriod::Day, day.start).to_string(),
            "2025-02-01T00:00:00Z"
        );
        let month = account(BudgetScope::Key, "k1", BudgetPeriod::Month, now);
        assert_eq!(month.start.to_string(), "2025-01-01");
        assert_eq!(
            period_end(BudgetPeriod::Month, month.start).to_string(),
            "2025-02-01T00:00:00Z"
        );
        let december = account(
            BudgetScope::Key,
            "k1",
            BudgetPeriod::Month,
            "2025-12-15T10:00:00Z".parse().unwrap(),
        );
        assert_eq!(
            period_end(BudgetPeriod::Month, december.start).to_string(),
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_budget_is_spent_at_its_limit() {
        let budget = BudgetConfig {
            scope: BudgetScope::Tenant,
            name: "acme".into(),
            period: BudgetPeriod::Day,
            max_tokens: Some(100),
            max_cost_usd: Some(1.0),
        };
        let spent = |tokens, cost_usd| Spent { tokens, cost_usd };
        assert!(over_budget(&budget, spent(99, 0.5)).is_none());
        assert_eq!(
            over_budget(&budget, spent(100, 0.0)).unwrap().resource,
            "tokens"
        );
        assert_eq!(
            over_budget(&budget, spent(0, 1.0)).unwrap().resource,
            "cost_usd"
        );
    }
}
