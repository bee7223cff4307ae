//! Budgets a run shares with its sub-runs: model calls (`max_steps`),
//! tokens (`RunLimits.max_tokens`) and cost (`RunLimits.max_cost_usd`).
//!
//! ```text
//! a run with a token or cost budget starts here, or starts a sub-run
//!   ─▶ its TreeBudget (used: what it stored so far) ─▶ each sub-run
//!   started here draws on the same one
//! every model call: check (spent: RESOURCE_EXHAUSTED naming the budget)
//!   ─▶ GenerateStream ─▶ spend (input + output tokens, the gateway's
//!   estimated cost in micro-dollars)
//! ```
//!
//! A sub-run is also given, as its own `max_tokens`, what its tree had
//! left when it started: a sub-run resumed on another replica (its tree's
//! budget is in this one's memory) stays within that.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tonic::Status;

use super::{Engine, lock};
use crate::store::RunRow;

/// The budget of a run's tree.
#[derive(Debug)]
pub(super) struct TreeBudget {
    /// The run the budget was set on.
    root: String,
    /// 0: no token budget.
    max_tokens: i64,
    used: AtomicI64,
    /// 0: no cost budget.
    max_cost_micros: i64,
    spent_micros: AtomicI64,
    /// The root's step limit, for every model call of the tree.
    max_calls: i64,
    calls: AtomicI64,
}

impl TreeBudget {
    /// RESOURCE_EXHAUSTED once the tree has spent one of its budgets.
    pub(super) fn check(&self) -> Result<(), Status> {
        let used = self.used.load(Ordering::Relaxed);
        if self.max_tokens > 0 && used >= self.max_tokens {
            return Err(Status::resource_exhausted(format!(
                "the token budget of run {} is spent: {used} tokens used of max_tokens = {}, \
                 its sub-runs included",
                self.root, self.max_tokens
            )));
        }
        let calls = self.calls.load(Ordering::Relaxed);
        if calls >= self.max_calls {
            return Err(Status::resource_exhausted(format!(
                "the step budget of run {} is spent: {calls} model calls of max_steps = {}, its \
                 sub-runs included",
                self.root, self.max_calls
            )));
        }
        let spent = self.spent_micros.load(Ordering::Relaxed);
        if self.max_cost_micros > 0 && spent >= self.max_cost_micros {
            return Err(Status::resource_exhausted(format!(
                "the cost budget of run {} is spent: ${} of max_cost_usd = ${}, its sub-runs \
                 included (by the gateway's prices)",
                self.root,
                dollars(spent),
                dollars(self.max_cost_micros)
            )));
        }
        Ok(())
    }

    /// Counts what a model call of the tree used: `tokens`, and its cost
    /// when the gateway priced it.
    pub(super) fn spend(&self, tokens: i64, cost_usd: Option<f64>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.used.fetch_add(tokens, Ordering::Relaxed);
        if let Some(cost) = cost_usd {
            self.spent_micros
                .fetch_add(crate::config::usd_to_micros(cost), Ordering::Relaxed);
        }
    }

    /// Model calls the tree has left (at least 1).
    pub(super) fn calls_left(&self) -> i32 {
        i32::try_from((self.max_calls - self.calls.load(Ordering::Relaxed)).max(1))
            .unwrap_or(i32::MAX)
    }

    /// What the tree has left: tokens, micro-dollars (0 where it has no
    /// such budget).
    pub(super) fn left(&self) -> (i64, i64) {
        let left = |max: i64, used: &AtomicI64| {
            if max > 0 {
                (max - used.load(Ordering::Relaxed)).max(1)
            } else {
                0
            }
        };
        (
            left(self.max_tokens, &self.used),
            left(self.max_cost_micros, &self.spent_micros),
        )
    }
}

/// Micro-dollars as dollars, for messages.
fn dollars(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

impl Engine {
    /// The budget `run`'s model calls draw on: its tree's, when the tree is
    /// driven here, else its own; `None` without one.
    pub(super) fn budget_for(&self, run: &RunRow) -> Option<Arc<TreeBudget>> {
        let mut budgets = lock(&self.budgets);
        if let Some(budget) = budgets.get(&run.run_id) {
            return Some(Arc::clone(budget));
        }
        if run.limits.max_tokens <= 0 && run.limits.max_cost_micros <= 0 {
            return None;
        }
        Some(Self::new_budget(&mut budgets, run))
    }

    /// Starts the budget of `run`'s tree (`budgets` held).
    fn new_budget(
        budgets: &mut std::collections::HashMap<String, Arc<TreeBudget>>,
        run: &RunRow,
    ) -> Arc<TreeBudget> {
        // The cost a resumed run spent before is not stored: it counts
        // from here (its tokens are).
        let budget = Arc::new(TreeBudget {
            root: run.run_id.clone(),
            max_tokens: run.limits.max_tokens.max(0),
            used: AtomicI64::new(run.input_tokens + run.output_tokens),
            max_cost_micros: run.limits.max_cost_micros.max(0),
            spent_micros: AtomicI64::new(0),
            max_calls: i64::from(run.limits.max_steps),
            calls: AtomicI64::new(i64::from(run.steps)),
        });
        budgets.insert(run.run_id.clone(), Arc::clone(&budget));
        budget
    }

    /// The budget of `parent`'s tree, started now if it has none (a tree
    /// always shares its step limit).
    pub(super) fn tree_budget(&self, parent: &RunRow) -> Arc<TreeBudget> {
        let mut budgets = lock(&self.budgets);
        match budgets.get(&parent.run_id) {
            Some(budget) => Arc::clone(budget),
            None => Self::new_budget(&mut budgets, parent),
        }
    }

    /// Makes the sub-run `child` draw on `parent`'s budget.
    pub(super) fn share_budget(&self, parent: &RunRow, child: &str) {
        let budget = self.tree_budget(parent);
        lock(&self.budgets).insert(child.to_owned(), budget);
    }

    /// Forgets the budget entry of a run that stopped being driven here.
    pub(super) fn drop_budget(&self, run_id: &str) {
        lock(&self.budgets).remove(run_id);
    }
}
