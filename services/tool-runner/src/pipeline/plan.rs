//! A pipeline's configuration checked and compiled into a [`Pipeline`]:
//! its steps with parsed templates and conditions, in order. Every check
//! that can be made before a call is made here, at start, and fails with
//! the setting named (e.g. `pipelines.sum_and_sqrt.steps[1].tool`).
//!
//! The reference rule keeps a call's state simple to reason about: a step
//! reads the input and the steps before it; the branches of a fan-out run
//! at once, so none reads another, and all read only what was there before
//! the fan-out started; `output` reads anything.

use std::collections::BTreeSet;

use agentmesh_kit::ConfigError;
use agentmesh_kit::ident::check_identifier_setting;
use serde_json::Value;

use super::template::{Template, check_pointer, tokens};
use super::{PipelineConfig, StepCondition, StepConfig};

/// A compiled pipeline: what a call runs.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(super) name: String,
    pub(super) stages: Vec<Stage>,
    /// The result's template; `None`: the last step that ran.
    pub(super) output: Option<Template>,
    /// The largest result, as JSON text, the pipeline may return.
    pub(super) max_output_bytes: usize,
    /// The tools its steps call, each once, ordered.
    tools: Vec<String>,
}

/// One entry of the sequence.
#[derive(Debug)]
pub(super) enum Stage {
    Call(Step),
    Parallel {
        id: String,
        when: Option<Condition>,
        branches: Vec<Step>,
    },
}

/// One tool call.
#[derive(Debug)]
pub(super) struct Step {
    pub(super) id: String,
    pub(super) tool: String,
    pub(super) arguments: Template,
    pub(super) when: Option<Condition>,
}

/// A compiled `when`.
#[derive(Debug)]
pub(super) struct Condition {
    pub(super) pointer: String,
    pub(super) test: Test,
}

#[derive(Debug)]
pub(super) enum Test {
    Truthy,
    Equals(Value),
    NotEquals(Value),
}

impl Pipeline {
    /// Checks and compiles `config`. `setting` is the pipeline's own
    /// (`pipelines.<name>`); `tool_usable` answers whether a step may call
    /// a tool, or why not (unknown, or a pipeline). The description, schema
    /// and limits are the registry's to check, as for any tool.
    pub(crate) fn compile(
        name: &str,
        config: &PipelineConfig,
        setting: &str,
        max_output_bytes: usize,
        tool_usable: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Self, ConfigError> {
        if config.steps.is_empty() {
            return Err(ConfigError::new(
                format!("{setting}.steps"),
                "a pipeline needs at least one step: a tool call (`id`, `tool`, `arguments`) or a fan-out (`id`, `parallel`)",
            ));
        }
        let mut scope = Scope::default();
        let mut stages = Vec::with_capacity(config.steps.len());
        for (index, step) in config.steps.iter().enumerate() {
            let at = format!("{setting}.steps[{index}]");
            let stage = if step.parallel.is_empty() {
                Stage::Call(compile_step(step, &at, &scope, &tool_usable)?)
            } else {
                compile_fan_out(step, &at, &scope, &tool_usable)?
            };
            scope.add(&stage, &at)?;
            stages.push(stage);
        }
        let output = config
            .output
            .as_ref()
            .map(|output| compile_template(output, &format!("{setting}.output"), &scope))
            .transpose()?;
        let tools: BTreeSet<String> = stages
            .iter()
            .flat_map(|stage| match stage {
                Stage::Call(step) => std::slice::from_ref(step),
                Stage::Parallel { branches, .. } => branches.as_slice(),
            })
            .map(|step| step.tool.clone())
            .collect();
        Ok(Self {
            name: name.to_owned(),
            stages,
            output,
            max_output_bytes,
            tools: tools.into_iter().collect(),
        })
    }

    /// The tools its steps call, each once, ordered by name: a caller must
    /// be allowed every one of them.
    pub(crate) fn tools(&self) -> &[String] {
        &self.tools
    }
}

/// The step ids a step may read: those that ran before it.
#[derive(Debug, Default)]
struct Scope {
    ids: BTreeSet<String>,
}

impl Scope {
    /// Adds a stage's ids, refusing one that is taken.
    fn add(&mut self, stage: &Stage, at: &str) -> Result<(), ConfigError> {
        let (id, branches) = match stage {
            Stage::Call(step) => (&step.id, &[][..]),
            Stage::Parallel { id, branches, .. } => (id, branches.as_slice()),
        };
        self.insert(id, &format!("{at}.id"))?;
        for (index, branch) in branches.iter().enumerate() {
            self.insert(&branch.id, &format!("{at}.parallel[{index}].id"))?;
        }
        Ok(())
    }

    fn insert(&mut self, id: &str, setting: &str) -> Result<(), ConfigError> {
        if self.ids.insert(id.to_owned()) {
            Ok(())
        } else {
            Err(duplicate(id, setting))
        }
    }

    /// `Ok` when `pointer` reads the input or a step in scope.
    fn check(&self, pointer: &str) -> Result<(), String> {
        check_pointer(pointer)?;
        let tokens = tokens(pointer);
        match tokens.as_slice() {
            [root, ..] if root == "input" => Ok(()),
            [root, id, ..] if root == "steps" && self.ids.contains(id) => Ok(()),
            [root, id, ..] if root == "steps" => Err(format!(
                "`{pointer}` reads step `{id}`, which has not run before this point; a step reads the input and the steps before it{}",
                self.listed()
            )),
            _ => Err(format!(
                "`{pointer}` reads neither the input nor a step: use `/input/...` or `/steps/<id>/output/...`{}",
                self.listed()
            )),
        }
    }

    fn listed(&self) -> String {
        if self.ids.is_empty() {
            " (no step has run here)".to_owned()
        } else {
            let ids: Vec<&str> = self.ids.iter().map(String::as_str).collect();
            format!(" (steps run here: {})", ids.join(", "))
        }
    }
}

/// A tool-call step, at `at`, reading what `scope` holds.
fn compile_step(
    step: &StepConfig,
    at: &str,
    scope: &Scope,
    tool_usable: &impl Fn(&str) -> Result<(), String>,
) -> Result<Step, ConfigError> {
    check_identifier_setting(format!("{at}.id"), &step.id)?;
    if !step.parallel.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.parallel"),
            "a fan-out's branches are tool calls: fan-outs do not nest",
        ));
    }
    if step.tool.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.tool"),
            format!(
                "step `{}` needs a `tool` to call (or `parallel` steps to run at once)",
                step.id
            ),
        ));
    }
    tool_usable(&step.tool).map_err(|message| ConfigError::new(format!("{at}.tool"), message))?;
    let empty = Value::Object(serde_json::Map::new());
    let arguments = compile_template(
        step.arguments.as_ref().unwrap_or(&empty),
        &format!("{at}.arguments"),
        scope,
    )?;
    Ok(Step {
        id: step.id.clone(),
        tool: step.tool.clone(),
        arguments,
        when: compile_condition(step.when.as_ref(), &format!("{at}.when"), scope)?,
    })
}

/// A fan-out step: its branches all read the scope before it.
fn compile_fan_out(
    step: &StepConfig,
    at: &str,
    scope: &Scope,
    tool_usable: &impl Fn(&str) -> Result<(), String>,
) -> Result<Stage, ConfigError> {
    check_identifier_setting(format!("{at}.id"), &step.id)?;
    if !step.tool.is_empty() || step.arguments.is_some() {
        let field = if step.tool.is_empty() {
            "arguments"
        } else {
            "tool"
        };
        return Err(ConfigError::new(
            format!("{at}.{field}"),
            format!(
                "step `{}` is a fan-out (`parallel`); its branches call the tools, so it has no `tool` or `arguments` of its own",
                step.id
            ),
        ));
    }
    let branches = step
        .parallel
        .iter()
        .enumerate()
        .map(|(index, branch)| {
            compile_step(
                branch,
                &format!("{at}.parallel[{index}]"),
                scope,
                tool_usable,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Stage::Parallel {
        id: step.id.clone(),
        when: compile_condition(step.when.as_ref(), &format!("{at}.when"), scope)?,
        branches,
    })
}

fn compile_template(value: &Value, setting: &str, scope: &Scope) -> Result<Template, ConfigError> {
    let template =
        Template::parse(value).map_err(|err| ConfigError::new(setting, err.to_string()))?;
    for pointer in template.pointers() {
        scope
            .check(pointer)
            .map_err(|message| ConfigError::new(setting, message))?;
    }
    Ok(template)
}

fn compile_condition(
    condition: Option<&StepCondition>,
    setting: &str,
    scope: &Scope,
) -> Result<Option<Condition>, ConfigError> {
    let Some(condition) = condition else {
        return Ok(None);
    };
    scope
        .check(&condition.path)
        .map_err(|message| ConfigError::new(format!("{setting}.path"), message))?;
    let test = match (&condition.equals, &condition.not_equals) {
        (None, None) => Test::Truthy,
        (Some(value), None) => Test::Equals(value.clone()),
        (None, Some(value)) => Test::NotEquals(value.clone()),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                setting,
                "set `equals` or `not_equals`, not both (or neither: the value must be truthy)",
            ));
        }
    };
    Ok(Some(Condition {
        pointer: condition.path.clone(),
        test,
    }))
}

fn duplicate(id: &str, setting: &str) -> ConfigError {
    ConfigError::new(
        setting,
        format!(
            "step id `{id}` is used twice in this pipeline; ids name the steps' outputs (`/steps/<id>/output`) and must be unique"
        ),
    )
}

#[cfg(test)]
pub(super) mod tests;
