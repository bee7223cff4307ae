//! Long-term memory in runs: the built-in tools `remember`, `recall` and
//! `forget`, and the notes recalled into a new run's system prompt.
//!
//! ```text
//! profile.memory.enabled ─▶ the three specs join the model's tools
//! model calls remember/recall/forget ─▶ call_memory_tool (here, not the
//!   tool runner) ─▶ MemoryIndex, under the run's tenant (never one from
//!   the arguments) and the profile's scope ─▶ the result as a tool
//!   message; a TOOL_CALL audit event like any tool's
//! new run, auto_recall > 0 ─▶ recall(objective) ─▶ appended to the
//!   system prompt
//! ```
//!
//! The end user's tools allow-list applies to these tools as to any other.

use std::time::{Duration, Instant};

use agentmesh_proto::audit::v1::{EventType, Outcome, ToolCallDetails, audit_event::Details};
use agentmesh_proto::llm::v1 as llm;
use agentmesh_proto::tools::v1 as tools;
use serde::Deserialize;

use super::Engine;
use crate::config::AgentProfile;
use crate::memory::{NewNote, prompt_section};
use crate::store::RunRow;

const REMEMBER: &str = "remember";
const RECALL: &str = "recall";
const FORGET: &str = "forget";

/// Whether `name` is one of the memory tools.
pub(super) fn is_memory_tool(name: &str) -> bool {
    matches!(name, REMEMBER | RECALL | FORGET)
}

/// The memory tools' specs, for a profile with memory enabled.
pub(super) fn specs() -> Vec<llm::ToolSpec> {
    let spec = |name: &str, description: &str, parameters: &str| llm::ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters_json: parameters.to_owned(),
    };
    vec![
        spec(
            REMEMBER,
            "Keep a fact for later runs (long-term memory). Secrets are redacted before it is kept.",
            r#"{"type": "object", "properties": {"text": {"type": "string", "description": "the fact, self-contained"}, "tags": {"type": "array", "items": {"type": "string"}}, "ttl_seconds": {"type": "integer", "minimum": 1, "description": "forget it after this long"}}, "required": ["text"], "additionalProperties": false}"#,
        ),
        spec(
            RECALL,
            "Search long-term memory: the notes best matching the query, best first, with scores.",
            r#"{"type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": 50}}, "required": ["query"], "additionalProperties": false}"#,
        ),
        spec(
            FORGET,
            "Delete a note from long-term memory by its id (as recall returned it).",
            r#"{"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"], "additionalProperties": false}"#,
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RememberArgs {
    text: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecallArgs {
    query: String,
    #[serde(default)]
    k: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgetArgs {
    id: String,
}

impl Engine {
    /// Runs a memory tool call of `run` and audits it; a refusal or a
    /// failure is the result, marked as an error, for the model to see.
    pub(super) async fn call_memory_tool(
        &self,
        run: &RunRow,
        profile: &AgentProfile,
        call: &llm::ToolCall,
    ) -> tools::ExecuteToolResponse {
        let started = Instant::now();
        let outcome = self.memory_call(run, profile, call).await;
        let duration = prost_types::Duration::try_from(started.elapsed()).ok();
        let (output_json, error_message) = match &outcome {
            Ok(output) => (output.clone(), String::new()),
            Err(message) => (String::new(), message.clone()),
        };
        let mut event = self.audit.event(EventType::ToolCall);
        event.run_id.clone_from(&run.run_id);
        event.tenant.clone_from(&run.tenant);
        event.subject.clone_from(&run.subject);
        if outcome.is_err() {
            event.outcome = Outcome::Failure.into();
            event.reason.clone_from(&error_message);
        }
        event.details = Some(Details::ToolCall(ToolCallDetails {
            tool: call.name.clone(),
            call_id: call.id.clone(),
            arguments: Some(self.audit.capture(&call.arguments_json)),
            output: Some(self.audit.capture(&output_json)),
            duration,
            is_error: outcome.is_err(),
            error: error_message.clone(),
            attempts: 1,
            ..ToolCallDetails::default()
        }));
        self.audit.emit(event);
        tools::ExecuteToolResponse {
            call_id: call.id.clone(),
            output_json,
            is_error: outcome.is_err(),
            error_message,
            duration,
            ..tools::ExecuteToolResponse::default()
        }
    }

    /// The tool's output as JSON, or what went wrong.
    async fn memory_call(
        &self,
        run: &RunRow,
        profile: &AgentProfile,
        call: &llm::ToolCall,
    ) -> Result<String, String> {
        if let Some(identity) = &run.identity
            && !identity.allow.tools.allows(&call.name)
        {
            return Err(format!(
                "tool {:?} is not allowed for this tenant or key",
                call.name
            ));
        }
        let agent = profile.memory.scope.agent_key(&run.agent);
        let invalid =
            |err: serde_json::Error| format!("invalid arguments for {}: {err}", call.name);
        let failed = |err: crate::memory::MemoryError| {
            if err.is_caller_error() {
                err.to_string()
            } else {
                tracing::error!(run_id = %run.run_id, error = %err, "a memory call failed");
                "long-term memory is unavailable right now; go on without it".to_owned()
            }
        };
        let output = match call.name.as_str() {
            REMEMBER => {
                let args: RememberArgs =
                    serde_json::from_str(&call.arguments_json).map_err(invalid)?;
                let note = self
                    .memory
                    .remember(NewNote {
                        tenant: run.tenant.clone(),
                        agent: agent.to_owned(),
                        text: args.text,
                        tags: args.tags,
                        ttl: args.ttl_seconds.map(Duration::from_secs),
                    })
                    .await
                    .map_err(failed)?;
                serde_json::json!({ "remembered": note.id, "text": note.text })
            }
            RECALL => {
                let args: RecallArgs =
                    serde_json::from_str(&call.arguments_json).map_err(invalid)?;
                let found = self
                    .memory
                    .recall(&run.tenant, agent, &args.query, args.k)
                    .await
                    .map_err(failed)?;
                serde_json::json!({ "notes": found })
            }
            FORGET => {
                let args: ForgetArgs =
                    serde_json::from_str(&call.arguments_json).map_err(invalid)?;
                let forgotten = self
                    .memory
                    .forget(&run.tenant, &args.id)
                    .await
                    .map_err(failed)?;
                serde_json::json!({ "forgotten": forgotten })
            }
            other => return Err(format!("{other:?} is not a memory tool")),
        };
        Ok(output.to_string())
    }

    /// The notes a new run of `profile` starts with, as a system prompt
    /// section (`None`: none, or memory is off or failed — a run never
    /// fails for want of them).
    pub(super) async fn auto_recall(&self, run: &RunRow, profile: &AgentProfile) -> Option<String> {
        if !profile.memory.enabled || profile.memory.auto_recall == 0 {
            return None;
        }
        let agent = profile.memory.scope.agent_key(&run.agent);
        match self
            .memory
            .recall(
                &run.tenant,
                agent,
                &run.objective,
                profile.memory.auto_recall,
            )
            .await
        {
            Ok(found) => prompt_section(&found),
            Err(err) => {
                tracing::warn!(run_id = %run.run_id, error = %err, "cannot recall notes for the run; starting without them");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemoryProfile;
    use crate::engine::testing;

    #[tokio::test]
    async fn a_new_run_starts_with_its_tenants_matching_notes_in_its_system_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let engine = testing::engine(&dir, testing::config()).await;
        for (tenant, text) in [
            ("acme", "The staging database is called heron."),
            ("globex", "The staging database is called osprey."),
        ] {
            engine
                .memory
                .remember(NewNote {
                    tenant: tenant.to_owned(),
                    text: text.to_owned(),
                    ..NewNote::default()
                })
                .await
                .unwrap();
        }
        let profile = AgentProfile {
            memory: MemoryProfile {
                enabled: true,
                auto_recall: 3,
                ..MemoryProfile::default()
            },
            ..AgentProfile::default()
        };
        let mut run = testing::run("acme");
        run.objective = "Which staging database should I use?".to_owned();
        let checkpoint = engine.first_checkpoint(&run, &profile).await;
        let system = &checkpoint.messages[0].content;
        assert!(system.starts_with(&profile.system_prompt), "{system}");
        assert!(system.contains("heron"), "{system}");
        assert!(!system.contains("osprey"), "{system}");
        // Off unless asked for.
        let plain = engine
            .first_checkpoint(&run, &AgentProfile::default())
            .await;
        assert!(!plain.messages[0].content.contains("heron"));
    }
}
