//! How an agent profile's runs work towards their objective: the profile's
//! `strategy` and the settings of each strategy that has some.
//!
//! ```toml
//! [orchestrator.agents.planner]
//! strategy = "plan_execute"
//!
//! [orchestrator.agents.planner.plan]
//! max_plan_steps = 8        # steps a plan may have
//! max_parallel_steps = 3    # plan steps worked on at the same time
//! max_turns_per_step = 4    # model calls of one plan step (its tool loop)
//! max_retries = 1           # `retry` choices per step
//! max_revisions = 2         # `revise_step` choices per step
//! max_replans = 1           # `replan` choices per run
//!
//! [orchestrator.agents.writer]
//! strategy = "evaluator_optimizer"
//!
//! [orchestrator.agents.writer.evaluator]
//! max_rounds = 3
//! criteria = "Answers the question in one sentence and names its source."
//! ```
//!
//! ```toml
//! [orchestrator.agents.triage]
//! strategy = "router"
//! [orchestrator.agents.triage.router]
//! routes = ["billing", "support"]   # other profiles, one chosen per run
//! fallback = "support"              # when the router's choice is none of them
//!
//! [orchestrator.agents.team]
//! strategy = "orchestrator_workers"
//! [orchestrator.agents.team.workers]
//! agents = ["researcher", "writer"] # what the lead's `delegate` tool may start
//! max_sub_runs = 8                  # sub-runs one run may start
//! ```
//!
//! The prompts of each role (planner, executor, validator, recovery,
//! synthesizer, evaluator, router) ship in `prompts/` of this crate and
//! can be replaced per profile (`[orchestrator.agents.NAME.prompts]`, or a
//! `prompts_dir` holding `<role>.md` files, read at start).

use std::path::Path;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

/// A profile's strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Ask the model, run the tools it called, repeat until an answer.
    #[default]
    ToolLoop,
    /// Plan steps with dependencies, run them (in parallel where they
    /// allow), validate each, recover from failures as the model chooses,
    /// then synthesise the answer.
    PlanExecute,
    /// Pick one of the profile's routes by the objective and run it as a
    /// sub-run.
    Router,
    /// Answer, judge the answer against the profile's criteria, revise
    /// until it passes or `max_rounds`.
    EvaluatorOptimizer,
    /// A lead model delegating to sub-runs (its `delegate` tool), in
    /// parallel.
    OrchestratorWorkers,
}

impl Strategy {
    /// The name in the configuration and the API.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::ToolLoop => "tool_loop",
            Self::PlanExecute => "plan_execute",
            Self::Router => "router",
            Self::EvaluatorOptimizer => "evaluator_optimizer",
            Self::OrchestratorWorkers => "orchestrator_workers",
        }
    }
}

/// Settings of `plan_execute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanSettings {
    /// Steps a plan may have; a longer plan is sent back to the planner.
    pub max_plan_steps: usize,
    /// Plan steps worked on at the same time.
    pub max_parallel_steps: usize,
    /// Model calls of one attempt at a plan step (its own tool loop).
    pub max_turns_per_step: i32,
    /// `retry` choices allowed per step.
    pub max_retries: i32,
    /// `revise_step` choices allowed per step.
    pub max_revisions: i32,
    /// `replan` choices allowed per run.
    pub max_replans: i32,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            max_plan_steps: 8,
            max_parallel_steps: 3,
            max_turns_per_step: 4,
            max_retries: 1,
            max_revisions: 2,
            max_replans: 1,
        }
    }
}

/// Settings of `evaluator_optimizer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluatorSettings {
    /// Rounds (answer, then verdict) before the run ends with the last
    /// answer.
    pub max_rounds: i32,
    /// What a good answer must satisfy, given to the evaluator.
    pub criteria: String,
    /// Model calls of one round's answer (its own tool loop).
    pub max_turns_per_round: i32,
}

impl Default for EvaluatorSettings {
    fn default() -> Self {
        Self {
            max_rounds: 3,
            criteria: "The answer is correct, complete and directly answers the objective."
                .to_owned(),
            max_turns_per_round: 4,
        }
    }
}

/// Settings of `router`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSettings {
    /// The profiles a run may be routed to.
    pub routes: Vec<String>,
    /// The profile used when the router's choice is none of `routes`
    /// (empty: such a run fails).
    pub fallback: String,
}

/// Settings of `orchestrator_workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// The profiles the lead's `delegate` tool may start sub-runs of.
    pub agents: Vec<String>,
    /// Sub-runs one run may start.
    pub max_sub_runs: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            agents: Vec::new(),
            max_sub_runs: 8,
        }
    }
}

/// The prompts of a strategy's roles; an empty one takes the shipped
/// default (or the file of `prompts_dir`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptSettings {
    /// A directory of `<role>.md` files (e.g. `planner.md`), read at start;
    /// a prompt given inline below wins over its file.
    pub dir: String,
    pub planner: String,
    pub executor: String,
    pub validator: String,
    pub recovery: String,
    pub synthesizer: String,
    pub evaluator: String,
    pub router: String,
}

/// The roles with prompts, and the prompt each ships with.
const SHIPPED: [(&str, &str); 7] = [
    ("planner", include_str!("../../prompts/planner.md")),
    ("executor", include_str!("../../prompts/executor.md")),
    ("validator", include_str!("../../prompts/validator.md")),
    ("recovery", include_str!("../../prompts/recovery.md")),
    ("synthesizer", include_str!("../../prompts/synthesizer.md")),
    ("evaluator", include_str!("../../prompts/evaluator.md")),
    ("router", include_str!("../../prompts/router.md")),
];

/// Every role's prompt, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prompts {
    pub(crate) planner: String,
    pub(crate) executor: String,
    pub(crate) validator: String,
    pub(crate) recovery: String,
    pub(crate) synthesizer: String,
    pub(crate) evaluator: String,
    pub(crate) router: String,
}

impl PromptSettings {
    fn inline(&self, role: &str) -> &str {
        match role {
            "planner" => &self.planner,
            "executor" => &self.executor,
            "validator" => &self.validator,
            "recovery" => &self.recovery,
            "synthesizer" => &self.synthesizer,
            "evaluator" => &self.evaluator,
            "router" => &self.router,
            _ => "",
        }
    }

    /// Every role's prompt: inline, else from `dir`, else shipped. An
    /// unreadable `dir` is an error naming `setting` (`agents.NAME.prompts`).
    pub(crate) fn resolve(&self, setting: &str) -> Result<Prompts, ConfigError> {
        let mut resolved = Vec::with_capacity(SHIPPED.len());
        for (role, shipped) in SHIPPED {
            let inline = self.inline(role);
            let text = if !inline.trim().is_empty() {
                inline.to_owned()
            } else if self.dir.is_empty() {
                shipped.to_owned()
            } else {
                let path = Path::new(&self.dir).join(format!("{role}.md"));
                match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => shipped.to_owned(),
                    Err(err) => {
                        return Err(ConfigError::new(
                            format!("{setting}.dir"),
                            format!("cannot read {}: {err}", path.display()),
                        ));
                    }
                }
            };
            resolved.push(text.trim().to_owned());
        }
        let mut roles = resolved.into_iter();
        let mut next = || roles.next().unwrap_or_default();
        Ok(Prompts {
            planner: next(),
            executor: next(),
            validator: next(),
            recovery: next(),
            synthesizer: next(),
            evaluator: next(),
            router: next(),
        })
    }
}

/// Checks that a profile's routes and workers name other configured
/// profiles; errors name `agents.<name>.<section>.<field>`.
pub(crate) fn validate_references(
    name: &str,
    strategy: Strategy,
    (router, workers): (&RouterSettings, &WorkerSettings),
    exists: impl Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    if strategy == Strategy::Router && router.routes.is_empty() {
        return Err(ConfigError::new(
            format!("agents.{name}.router.routes"),
            "a router needs at least one route (another agent profile)",
        ));
    }
    if strategy == Strategy::OrchestratorWorkers && workers.agents.is_empty() {
        return Err(ConfigError::new(
            format!("agents.{name}.workers.agents"),
            "a lead needs at least one agent profile to delegate to",
        ));
    }
    let named = router
        .routes
        .iter()
        .map(|route| ("router.routes", route))
        .chain(
            Some(&router.fallback)
                .filter(|fallback| !fallback.is_empty())
                .map(|fallback| ("router.fallback", fallback)),
        )
        .chain(workers.agents.iter().map(|agent| ("workers.agents", agent)));
    for (field, other) in named {
        if other == name {
            return Err(ConfigError::new(
                format!("agents.{name}.{field}"),
                "names the profile itself; a run would start itself",
            ));
        }
        if !exists(other) {
            return Err(ConfigError::new(
                format!("agents.{name}.{field}"),
                format!("{other:?} is not a configured agent profile"),
            ));
        }
    }
    if !(1..=64).contains(&workers.max_sub_runs) {
        return Err(ConfigError::new(
            format!("agents.{name}.workers.max_sub_runs"),
            format!("is {}; it must be 1 to 64", workers.max_sub_runs),
        ));
    }
    Ok(())
}

/// Checks a profile's strategy settings; errors name
/// `agents.<name>.<section>.<field>`.
pub(crate) fn validate(
    name: &str,
    plan: &PlanSettings,
    evaluator: &EvaluatorSettings,
    prompts: &PromptSettings,
) -> Result<(), ConfigError> {
    let setting = |field: &str| format!("agents.{name}.{field}");
    let counts: [(&str, i64, i64, i64); 8] = [
        ("plan.max_plan_steps", count(plan.max_plan_steps), 1, 50),
        (
            "plan.max_parallel_steps",
            count(plan.max_parallel_steps),
            1,
            32,
        ),
        (
            "plan.max_turns_per_step",
            plan.max_turns_per_step.into(),
            1,
            50,
        ),
        ("plan.max_retries", plan.max_retries.into(), 0, 10),
        ("plan.max_revisions", plan.max_revisions.into(), 0, 10),
        ("plan.max_replans", plan.max_replans.into(), 0, 10),
        ("evaluator.max_rounds", evaluator.max_rounds.into(), 1, 20),
        (
            "evaluator.max_turns_per_round",
            evaluator.max_turns_per_round.into(),
            1,
            50,
        ),
    ];
    for (field, value, low, high) in counts {
        if !(low..=high).contains(&value) {
            return Err(ConfigError::new(
                setting(field),
                format!("is {value}; it must be {low} to {high}"),
            ));
        }
    }
    if evaluator.criteria.trim().is_empty() {
        return Err(ConfigError::new(
            setting("evaluator.criteria"),
            "must say what a good answer satisfies",
        ));
    }
    prompts.resolve(&setting("prompts")).map(|_| ())
}

fn count(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
