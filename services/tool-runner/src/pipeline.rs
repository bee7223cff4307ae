//! Pipelines: composite tools declared in the configuration
//! (`[tool_runner.pipelines.NAME]`) as a sequence of steps over existing
//! tools, with parallel fan-outs, conditions, and JSON mapping between
//! steps. To a caller a pipeline is an ordinary tool: ListTools lists it
//! with its own parameter schema, ExecuteTool and ExecuteToolStream run it.
//!
//! ```toml
//! [tool_runner.pipelines.hypotenuse]
//! description = "Length of the hypotenuse of a right triangle with legs a and b"
//! parameters_json = '''{"type":"object","required":["a","b"],"properties":{
//!   "a":{"type":"number"},"b":{"type":"number"},"round":{"type":"boolean"}}}'''
//! timeout = "20s"          # bounds every step; unset = default_timeout
//! # output = { length = "${/steps/root/output/result}" }   # unset: the last step's output
//!
//! [[tool_runner.pipelines.hypotenuse.steps]]
//! id = "squares"           # a fan-out: its branches run at once
//! [[tool_runner.pipelines.hypotenuse.steps.parallel]]
//! id = "a2"
//! tool = "calculator"
//! arguments = { expression = "${/input/a} ^ 2" }
//! [[tool_runner.pipelines.hypotenuse.steps.parallel]]
//! id = "b2"
//! tool = "calculator"
//! arguments = { expression = "${/input/b} ^ 2" }
//!
//! [[tool_runner.pipelines.hypotenuse.steps]]
//! id = "root"
//! tool = "calculator"
//! arguments = { expression = "sqrt(${/steps/a2/output/result} + ${/steps/b2/output/result})" }
//!
//! [[tool_runner.pipelines.hypotenuse.steps]]
//! id = "rounded"
//! tool = "calculator"
//! arguments = { expression = "round(${/steps/root/output/result})" }
//! when = { path = "/input/round" }   # or { path = "…", equals = … } / not_equals
//! ```
//!
//! # Data flow
//!
//! A pipeline call keeps one JSON document, the state:
//! `{"input": <the call's arguments>, "steps": {"<id>": {"output": …, "skipped": false}}}`.
//! Each step's `arguments` is a template rendered against it (`template`):
//! a string that is exactly `"${<JSON pointer>}"` becomes the value there,
//! with its type; placeholders inside a longer string are replaced by text
//! (a string as is, anything else as compact JSON); `$${` is a literal
//! `${`. A fan-out's branches see the state as it was before the fan-out;
//! their outputs are stored under their own ids and, collected by id, as
//! the fan-out's output. `when` runs a step only if the value at `path` is
//! truthy (not missing, null, false, 0, "", [] or {}), or `equals` /
//! `not_equals` a value (numbers compare by value: `0` equals `0.0`); a
//! skipped step is stored as `{"skipped": true}`.
//! The result is `output` rendered against the final state, or else the
//! output of the last step that ran.
//!
//! # Checks at start
//!
//! Building the registry compiles every pipeline (`plan`), so a bad one
//! stops the service with the setting named, e.g.
//! `tool_runner.pipelines.hypotenuse.steps[1].tool`: unknown tools, a step
//! naming a pipeline (pipelines do not nest, so they cannot form cycles),
//! duplicate or invalid step ids, a step that is neither a tool call nor a
//! fan-out, placeholders that are not JSON pointers or refer to anything but
//! the input and the steps that ran before, no steps, and a name that is
//! already a tool's.
//!
//! # Execution
//!
//! The pipeline call itself passes the checks every call does (allow-list,
//! its parameter schema, its own bulkhead, its timeout from arrival) and is
//! audited as one TOOL_CALL. Each step then calls its tool through the
//! [`StepCaller`] the service gives it, which is ExecuteTool's own path:
//! the allow-list, the tool's schema, bulkhead, circuit breaker, retries,
//! metrics and its own TOOL_CALL audit event (attributes `pipeline`,
//! `pipeline_step`), with the pipeline's deadline bounding its timeout
//! (less a little, so that an overrunning step is reported by name).
//! Branches of a fan-out run concurrently on the call's task, so they share
//! its request context (identity, trace). A step that fails fails the
//! pipeline, with its error kind and a message naming the step; the branches
//! beside it are left to finish, so no tool is stopped half-way by another's
//! failure.

mod plan;
mod run;
mod template;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::outcome::ToolOutcome;

pub(crate) use plan::Pipeline;
pub(crate) use run::PipelineCall;

/// One pipeline tool (`[tool_runner.pipelines.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// What the pipeline does and when to use it, written for a model.
    /// Required.
    pub description: String,
    /// JSON Schema of the pipeline's arguments (its input), as a JSON
    /// object; a call's arguments are checked against it before any step
    /// runs.
    pub parameters_json: String,
    /// The steps, run in order.
    pub steps: Vec<StepConfig>,
    /// The result, as a template over the final state; unset: the output of
    /// the last step that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The whole pipeline's timeout, which also bounds every step; unset =
    /// `default_timeout`. At most `max_timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Calls of this pipeline that may run at once; 0 =
    /// `max_concurrency_per_tool`. Its steps also take places in their own
    /// tools' bulkheads.
    pub max_concurrency: u32,
    /// Calls of this pipeline that may wait for a place; 0 =
    /// `max_queued_per_tool`.
    pub max_queued: u32,
    /// Free-form labels shown by ListTools.
    pub labels: BTreeMap<String, String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            description: String::new(),
            parameters_json: r#"{"type":"object"}"#.to_owned(),
            steps: Vec::new(),
            output: None,
            timeout: None,
            max_concurrency: 0,
            max_queued: 0,
            labels: BTreeMap::new(),
        }
    }
}

/// One step: a tool call (`tool` and `arguments`) or a fan-out
/// (`parallel`), either one run only when its `when` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepConfig {
    /// The step's name in the state (`/steps/<id>`), unique in the
    /// pipeline: 1-64 characters of letters, digits, `_` and `-`.
    pub id: String,
    /// The tool to call (a built-in or command tool, not a pipeline).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tool: String,
    /// The tool's arguments, as a template over the state; unset = `{}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// Tool steps run at once instead (a fan-out); their outputs are
    /// collected by id as this step's output.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parallel: Vec<StepConfig>,
    /// Runs the step only when this holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<StepCondition>,
}

/// When a step runs: the value at `path` is truthy, or equals (or does
/// not equal) a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepCondition {
    /// A JSON pointer into the state, e.g. `/input/mode` or
    /// `/steps/check/output/ok`.
    pub path: String,
    /// The step runs when the value there equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// The step runs when the value there is not this (or is missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
}

// === calling a step's tool ===

/// One step's tool call, as the pipeline asks for it.
#[derive(Debug, Clone)]
pub(crate) struct StepCall {
    /// The pipeline's name.
    pub(crate) pipeline: String,
    /// The step's id.
    pub(crate) step: String,
    pub(crate) tool: String,
    pub(crate) arguments: Value,
    /// `<the pipeline call's id>/<step id>`, to find the step's audit event.
    pub(crate) call_id: String,
    /// The pipeline call's id.
    pub(crate) parent_call_id: String,
    /// When the step must end: the pipeline call's deadline, less a
    /// little time to report a step that overran.
    pub(crate) deadline: Instant,
}

/// How a pipeline's steps call their tools: through the same checks,
/// guards and audit as an ExecuteTool call. The service gives one to each
/// pipeline call; a refusal (PERMISSION_DENIED, a full bulkhead, an open
/// circuit) comes back as a failure, like a failed run.
pub(crate) trait StepCaller: Send + Sync + std::fmt::Debug {
    /// Calls the step's tool and returns its result.
    fn call(&self, step: StepCall) -> BoxFuture<'_, ToolOutcome>;
}
