//! The scripted provider's rules: the TOML rules file, its checks, and the
//! compiled rules the provider answers by ([`RuleSet`]).
//!
//! It depends on nothing else in the crate, so both the configuration
//! checks (a `scripted` instance's `rules_file` is loaded at start) and the
//! provider itself ([`crate::providers::scripted`]) can use it.
//!
//! # Rules file
//!
//! Answers come from a TOML rules file (the instance's `rules_file`; empty =
//! the built-in demo rules, `demo/rules.toml` in this crate):
//!
//! ```toml
//! # Default delay between streamed pieces (humantime). 0s = as fast as possible.
//! pace = "25ms"
//!
//! [[rules]]
//! # Which message the regex is matched against:
//! #   "user"       the last message, when it is a user message;
//! #   "tool"       the last message, when it is a tool result;
//! #   "tool_error" the last message, when it is a tool result flagged is_error;
//! #   "any"        the last user or tool message (the default).
//! on = "user"
//! # Only requests made for this strategy role (the request's `agent_role`,
//! # e.g. "planner", "validator", "recovery", "executor", "synthesizer",
//! # "router", "generator", "evaluator", "lead", "worker"). Unset: any
//! # request, whatever its role.
//! # role = "planner"
//! # A regex (Rust `regex` syntax). The first matching rule wins; a rule
//! # without `match` matches anything (`${0}` is then the whole message).
//! match = '(?i)^\s*(?:what is|calculate)\s+(?P<expr>[-+*/^%()., 0-9a-z]+?)\s*\??\s*$'
//! # Either tool calls, whose `arguments` is a JSON template where `${name}`
//! # or `${1}` is replaced by the capture, escaped for a JSON string...
//! tool_calls = [{ name = "calculator", arguments = '{"expression": "${expr}"}' }]
//! # ...or `text`, streamed word by word (whitespace kept), with the same
//! # substitution, unescaped.
//! # text = "The answer is ${result}."
//! # This rule's own pace, overriding the file's.
//! # pace = "200ms"
//! # A tool-call rule answers only when the request offers its tools (or
//! # none at all); `unoffered_tools = true` makes it ask anyway, as a model
//! # that ignores the tool list would (to test what the caller does then).
//! # unoffered_tools = true
//! ```
//!
//! Loading checks every rule (exactly one of `text` and `tool_calls`, a
//! regex that compiles, placeholders naming groups of the regex, arguments
//! that are a JSON object) and names the offending rule (`rules[2]`); the
//! service refuses to start on a bad file. The instance's `pace` setting, when
//! set, overrides the file's and every rule's pace.

use std::path::Path;
use std::time::Duration;

use regex::{Captures, Regex};
use serde::Deserialize;

/// The built-in demo rules.
pub(crate) const DEMO_RULES: &str = include_str!("../demo/rules.toml");

// === rules file ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default, with = "humantime_serde")]
    pace: Option<Duration>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    on: On,
    #[serde(default, rename = "match")]
    pattern: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallSpec>>,
    #[serde(default, with = "humantime_serde")]
    pace: Option<Duration>,
    #[serde(default)]
    unoffered_tools: bool,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCallSpec {
    name: String,
    #[serde(default = "empty_object")]
    arguments: String,
}

fn empty_object() -> String {
    "{}".to_owned()
}

/// Which message a rule looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum On {
    /// The last message, when it is a user message.
    User,
    /// The last message, when it is a tool result.
    Tool,
    /// The last message, when it is a tool result flagged `is_error`.
    ToolError,
    /// The last user or tool message.
    #[default]
    Any,
}

/// A rules file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub(crate) struct RulesError {
    source_name: String,
    message: String,
}

/// A compiled rules file.
#[derive(Debug)]
pub(crate) struct RuleSet {
    /// Names the file in errors and in the answer when no rule matches.
    pub(crate) source_name: String,
    /// The file's pace (zero when it gives none).
    pub(crate) pace: Duration,
    /// In order: the first that matches answers.
    pub(crate) rules: Vec<Rule>,
}

/// One compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    /// Which message it looks at.
    pub(crate) on: On,
    /// What that message must match.
    pub(crate) regex: Regex,
    /// What it answers.
    pub(crate) answer: Answer,
    /// Its own pace, overriding the file's.
    pub(crate) pace: Option<Duration>,
    /// Whether its tool calls are made even when the request does not
    /// offer those tools (a model ignoring the tool list).
    pub(crate) unoffered_tools: bool,
    /// The strategy role a request must be made for (`None`: any).
    pub(crate) role: Option<String>,
}

/// A rule's answer: text, or tool calls (name and arguments template).
#[derive(Debug)]
pub(crate) enum Answer {
    Text(Template),
    ToolCalls(Vec<(String, Template)>),
}

impl RuleSet {
    /// Loads the rules file at `path`, or the built-in demo rules when `path`
    /// is empty.
    pub(crate) fn load(path: &str) -> Result<Self, RulesError> {
        if path.is_empty() {
            return Self::parse(DEMO_RULES, "the built-in demo rules");
        }
        let source_name = format!("rules file {path}");
        let text = std::fs::read_to_string(Path::new(path)).map_err(|err| RulesError {
            source_name: source_name.clone(),
            message: format!("cannot be read: {err}"),
        })?;
        Self::parse(&text, &source_name)
    }

    /// Compiles rules from TOML text; `source_name` names it in errors.
    pub(crate) fn parse(text: &str, source_name: &str) -> Result<Self, RulesError> {
        let error = |message: String| RulesError {
            source_name: source_name.to_owned(),
            message,
        };
        let file: RulesFile =
            toml::from_str(text).map_err(|err| error(format!("not a valid rules file: {err}")))?;
        let rules = file
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                compile_rule(spec).map_err(|message| error(format!("rules[{index}]: {message}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            source_name: source_name.to_owned(),
            pace: file.pace.unwrap_or(Duration::ZERO),
            rules,
        })
    }
}

fn compile_rule(spec: RuleSpec) -> Result<Rule, String> {
    // No `match`: everything, the whole message being group 0.
    let pattern = spec.pattern.as_deref().unwrap_or(r"(?s)\A.*\z");
    let regex =
        Regex::new(pattern).map_err(|err| format!("`match` is not a valid regex: {err}"))?;
    let answer = match (spec.text, spec.tool_calls) {
        (Some(_), Some(_)) => {
            return Err("has both `text` and `tool_calls`; give exactly one".to_owned());
        }
        (None, None) => {
            return Err("has neither `text` nor `tool_calls`; give exactly one".to_owned());
        }
        (Some(text), None) => {
            Answer::Text(Template::parse(&text, &regex).map_err(|err| format!("text: {err}"))?)
        }
        (None, Some(calls)) => {
            if calls.is_empty() {
                return Err("`tool_calls` is empty".to_owned());
            }
            let mut compiled = Vec::with_capacity(calls.len());
            for (call_index, call) in calls.into_iter().enumerate() {
                let field = format!("tool_calls[{call_index}]");
                if call.name.is_empty()
                    || call.name.len() > 64
                    || !call
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(format!(
                        "{field}.name `{}` must be 1-64 characters of letters, digits, `_` and `-`",
                        call.name
                    ));
                }
                let template = Template::parse(&call.arguments, &regex)
                    .map_err(|err| format!("{field}.arguments: {err}"))?;
                // Captures go inside JSON strings; with a stand-in for each,
                // the template must be a JSON object.
                let sample = template.render_with(|_| "0".to_owned());
                if !serde_json::from_str::<serde_json::Value>(&sample)
                    .is_ok_and(|value| value.is_object())
                {
                    return Err(format!(
                        "{field}.arguments `{}` is not a JSON object template",
                        call.arguments
                    ));
                }
                compiled.push((call.name, template));
            }
            Answer::ToolCalls(compiled)
        }
    };
    if let Some(role) = &spec.role
        && (role.is_empty()
            || role.len() > 64
            || !role.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    {
        return Err(format!(
            "role `{role}` must be 1-64 characters of `a`-`z` and `_` (e.g. `planner`)"
        ));
    }
    Ok(Rule {
        on: spec.on,
        regex,
        answer,
        pace: spec.pace,
        unoffered_tools: spec.unoffered_tools,
        role: spec.role,
    })
}

// === impl Template ===

/// Text with `${name}` / `${1}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Index(usize),
    Name(String),
}

impl Template {
    /// Parses `text`, checking each placeholder names a group of `regex`.
    fn parse(text: &str, regex: &Regex) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some((before, after)) = rest.split_once("${") {
            literal.push_str(before);
            let (reference, after_reference) = after
                .split_once('}')
                .ok_or_else(|| format!("`${{` without a closing `}}` in `{text}`"))?;
            let part = if let Ok(index) = reference.parse::<usize>() {
                if index >= regex.captures_len() {
                    return Err(format!(
                        "`${{{reference}}}`: the regex has only {} group(s) besides ${{0}}",
                        regex.captures_len().saturating_sub(1)
                    ));
                }
                Part::Index(index)
            } else if regex
                .capture_names()
                .flatten()
                .any(|name| name == reference)
            {
                Part::Name(reference.to_owned())
            } else {
                return Err(format!("`${{{reference}}}` names no group of the regex"));
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = after_reference;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    fn render_with(&self, mut value: impl FnMut(&Part) -> String) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.clone(),
                other => value(other),
            })
            .collect()
    }

    /// The text with captures inserted (a group that did not take part in
    /// the match is empty), JSON-escaped when `json_escape`.
    pub(crate) fn render(&self, captures: &Captures<'_>, json_escape: bool) -> String {
        self.render_with(|part| {
            let captured = match part {
                Part::Index(index) => captures.get(*index),
                Part::Name(name) => captures.name(name),
                Part::Literal(_) => None,
            }
            .map_or("", |found| found.as_str());
            if json_escape {
                json_string_content(captured)
            } else {
                captured.to_owned()
            }
        })
    }
}

/// `text` escaped for use between the quotes of a JSON string.
fn json_string_content(text: &str) -> String {
    let quoted = serde_json::Value::String(text.to_owned()).to_string();
    quoted
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rules_are_refused_naming_the_rule() {
        for (text, expected) in [
            (
                "[[rules]]\ntext = \"a\"\n[[rules]]\ntext = \"b\"\ntool_calls = [{name = \"t\"}]\n",
                "rules[1]: has both",
            ),
            ("[[rules]]\non = \"user\"\n", "rules[0]: has neither"),
            (
                "[[rules]]\nmatch = \"(\"\ntext = \"a\"\n",
                "rules[0]: `match` is not a valid regex",
            ),
            (
                "[[rules]]\nmatch = \"(?P<a>x)\"\ntext = \"${b}\"\n",
                "rules[0]: text: `${b}` names no group",
            ),
            ("[[rules]]\ntext = \"${2}\"\n", "rules[0]: text: `${2}`"),
            (
                "[[rules]]\ntool_calls = [{name = \"t\", arguments = \"[1]\"}]\n",
                "rules[0]: tool_calls[0].arguments",
            ),
            (
                "[[rules]]\ntool_calls = [{name = \"bad name\"}]\n",
                "rules[0]: tool_calls[0].name",
            ),
            (
                "[[rules]]\non = \"system\"\ntext = \"a\"\n",
                "not a valid rules file",
            ),
            ("pace = \"soon\"\n", "not a valid rules file"),
        ] {
            let err = RuleSet::parse(text, "rules file x.toml")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("rules file x.toml: "), "{err}");
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let err = RuleSet::load("/nonexistent/rules.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be read"), "{err}");
    }
}
