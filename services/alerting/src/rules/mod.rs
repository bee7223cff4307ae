//! Alerting rules over the audit event stream.
//!
//! ```text
//! [[alerting.rules]] ──serde──▶ RuleConfig ─┐
//! shipped defaults (defaults.rs) ───────────┴─▶ compile ─▶ Vec<Rule> ─▶ Evaluator
//! audit events ─▶ Evaluator::observe ─▶ per-group windows (window.rs)
//! clock ─▶ Evaluator::evaluate ─▶ RuleAlert (pending/firing) ─▶ the engine's alert state
//! Evaluator::take_dirty / restore ◀─▶ persisted group states
//! ```
//!
//! - [`config`]: the configuration form of a rule (serde, TOML);
//! - [`defaults`]: the rules shipped with agentmesh;
//! - [`compile`](mod@compile): checks and resolves rules (errors name the rule and setting),
//!   and the API form of a rule (`Rule::to_proto`);
//! - [`condition`]: the three conditions (count, failure ratio, absence) and
//!   their checks;
//! - [`fields`]: the event fields rules read by name;
//! - [`template`]: `{{name}}` templates of labels and annotations;
//! - [`window`]: the bounded sliding window of one group;
//! - [`evaluator`]: the evaluator itself.

mod compile;
mod condition;
mod config;
mod defaults;
mod evaluator;
mod fields;
mod template;
mod window;

#[cfg(test)]
mod tests;

pub(crate) use compile::{Rule, compile};
pub(crate) use config::RuleConfig;
pub(crate) use evaluator::{Evaluator, RuleAlert};
