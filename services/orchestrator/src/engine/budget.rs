//! Token budgets a run shares with its sub-runs (`RunLimits.max_tokens`).
//!
//! ```text
//! a run with a budget starts here ─▶ its TreeBudget (used: what it
//!   stored so far) ─▶ each sub-run started here draws on the same one
//! every model call: check (spent: RESOURCE_EXHAUSTED naming the budget)
//!   ─▶ GenerateStream ─▶ spend (input + output tokens)
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
    max_tokens: i64,
    used: AtomicI64,
}

impl TreeBudget {
    /// RESOURCE_EXHAUSTED once the tree has spent its budget.
    pub(super) fn check(&self) -> Result<(), Status> {
        let used = self.used.load(Ordering::Relaxed);
        if used >= self.max_tokens {
            return Err(Status::resource_exhausted(format!(
                "the token budget of run {} is spent: {used} tokens used of max_tokens = {}, \
                 its sub-runs included",
                self.root, self.max_tokens
            )));
        }
        Ok(())
    }

    /// Counts `tokens` used by a model call of the tree.
    pub(super) fn spend(&self, tokens: i64) {
        self.used.fetch_add(tokens, Ordering::Relaxed);
    }

    /// What the tree has left.
    pub(super) fn left(&self) -> i64 {
        (self.max_tokens - self.used.load(Ordering::Relaxed)).max(0)
    }
}

impl Engine {
    /// The budget `run`'s model calls draw on: its tree's, when the tree is
    /// driven here, else its own; `None` without one.
    pub(super) fn budget_for(&self, run: &RunRow) -> Option<Arc<TreeBudget>> {
        let mut budgets = lock(&self.budgets);
        if let Some(budget) = budgets.get(&run.run_id) {
            return Some(Arc::clone(budget));
        }
        if run.limits.max_tokens <= 0 {
            return None;
        }
        let budget = Arc::new(TreeBudget {
            root: run.run_id.clone(),
            max_tokens: run.limits.max_tokens,
            used: AtomicI64::new(run.input_tokens + run.output_tokens),
        });
        budgets.insert(run.run_id.clone(), Arc::clone(&budget));
        Some(budget)
    }

    /// Makes the sub-run `child` draw on `parent`'s budget.
    pub(super) fn share_budget(&self, parent: &RunRow, child: &str) {
        if let Some(budget) = self.budget_for(parent) {
            lock(&self.budgets).insert(child.to_owned(), budget);
        }
    }

    /// Forgets the budget entry of a run that stopped being driven here.
    pub(super) fn drop_budget(&self, run_id: &str) {
        lock(&self.budgets).remove(run_id);
    }
}
