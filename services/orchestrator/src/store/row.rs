//! The run row and the checkpoint as the orchestrator holds them, and their
//! mapping to and from what is stored and what the API shows: a `runs` row
//! is read into a [`RunRow`] ([`run_from_row`]), shown as a `pb::Run`
//! ([`RunRow::to_proto`]); a [`Checkpoint`] is stored protobuf-encoded;
//! the identity a run was started with is stored as JSON (never a secret,
//! never the service that forwarded it), NULL for runs stored before it was;
//! its callback as its URL and events (NULL: none).
//! Times are microseconds since the Unix epoch throughout.

use std::collections::BTreeMap;

use agentmesh_auth::Identity;
use agentmesh_kit::time::timestamp_from_micros;
use agentmesh_proto::llm::v1 as llm;
use agentmesh_proto::orchestrator::v1 as pb;
use prost::Message as _;

use super::StoreError;

/// What a run is limited to, resolved from the request and its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_steps: i32,
    pub(crate) max_output_tokens: i32,
    pub(crate) timeout_ms: i64,
    /// Tokens the run's tree may use (0: no budget).
    pub(crate) max_tokens: i64,
    /// Micro-dollars the run's tree may spend (0: no budget).
    pub(crate) max_cost_micros: i64,
}

/// A run as stored in `runs`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRow {
    pub(crate) run_id: String,
    pub(crate) tenant: String,
    pub(crate) subject: String,
    pub(crate) agent: String,
    pub(crate) session_id: String,
    pub(crate) objective: String,
    pub(crate) state: pb::RunState,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) model: String,
    pub(crate) limits: Limits,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) create_time: i64,
    pub(crate) start_time: Option<i64>,
    pub(crate) end_time: Option<i64>,
    pub(crate) output: String,
    pub(crate) error: Option<tonic_types::pb::Status>,
    pub(crate) input_tokens: i64,
    pub(crate) output_tokens: i64,
    pub(crate) steps: i32,
    pub(crate) tool_calls: i32,
    pub(crate) last_sequence: i32,
    /// -100 to 100: its place in its tenant's queue (higher first).
    pub(crate) priority: i32,
    /// Who started the run: the end user's identity, acted for on every
    /// call the run makes (also after a resume). `None` for runs stored
    /// before identities were.
    pub(crate) identity: Option<Identity>,
    /// Where the run's end (or every step) is POSTed; `None`: nowhere.
    pub(crate) callback: Option<RunCallback>,
    /// The run that started this one as its sub-run, if any.
    pub(crate) parent_run_id: Option<String>,
}

/// A run's callback, as checked at StartRun (docs/callbacks.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunCallback {
    /// The URL, checked against the callback egress policy.
    pub(crate) url: String,
    /// Whether every stored step is sent too (not only the end).
    pub(crate) every_step: bool,
}

impl RunCallback {
    /// The stored `callback_events` number.
    pub(super) fn events_number(&self) -> i32 {
        if self.every_step {
            pb::CallbackEvents::EveryStep.into()
        } else {
            pb::CallbackEvents::Terminal.into()
        }
    }
}

impl RunRow {
    /// Whether the run has ended.
    pub(crate) fn is_terminal(&self) -> bool {
        is_terminal(self.state)
    }

    /// The stored forms of the run's labels and identity (JSON).
    pub(super) fn encoded(&self) -> Result<(String, Option<String>), StoreError> {
        let labels = serde_json::to_string(&self.labels)
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        Ok((labels, self.identity_json()?))
    }

    /// The stored form of the run's identity.
    fn identity_json(&self) -> Result<Option<String>, StoreError> {
        self.identity
            .as_ref()
            .map(|identity| {
                let identity = Identity {
                    actor: None,
                    ..identity.clone()
                };
                serde_json::to_string(&identity)
                    .map_err(|err| StoreError::Corrupt(format!("run identity: {err}")))
            })
            .transpose()
    }

    /// The run as the API shows it.
    pub(crate) fn to_proto(&self) -> pb::Run {
        pb::Run {
            run_id: self.run_id.clone(),
            objective: self.objective.clone(),
            agent: self.agent.clone(),
            session_id: self.session_id.clone(),
            state: self.state.into(),
            limits: Some(pb::RunLimits {
                max_steps: self.limits.max_steps,
                max_output_tokens: self.limits.max_output_tokens,
                max_tokens: self.limits.max_tokens,
                #[expect(clippy::cast_precision_loss, reason = "at most 1e12")]
                max_cost_usd: self.limits.max_cost_micros as f64 / 1e6,
                timeout: Some(duration_from_millis(self.limits.timeout_ms)),
            }),
            labels: self.labels.clone().into_iter().collect(),
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            model: self.model.clone(),
            create_time: Some(timestamp_from_micros(self.create_time)),
            start_time: self.start_time.map(timestamp_from_micros),
            end_time: self.end_time.map(timestamp_from_micros),
            output: self.output.clone(),
            error: self.error.clone(),
            usage: Some(usage(self.input_tokens, self.output_tokens)),
            steps: self.steps,
            tool_calls: self.tool_calls,
            last_sequence: self.last_sequence,
            tenant: self.tenant.clone(),
            subject: self.subject.clone(),
            priority: self.priority,
            plan: None,
            parent_run_id: self.parent_run_id.clone().unwrap_or_default(),
            sub_runs: Vec::new(),
        }
    }
}

/// Whether `state` is one a run ends in.
pub(crate) fn is_terminal(state: pb::RunState) -> bool {
    matches!(
        state,
        pb::RunState::Succeeded | pb::RunState::Failed | pb::RunState::Cancelled
    )
}

/// Token usage as the API shows it.
pub(crate) fn usage(input_tokens: i64, output_tokens: i64) -> llm::Usage {
    let clamp = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    llm::Usage {
        input_tokens: clamp(input_tokens),
        output_tokens: clamp(output_tokens),
        total_tokens: clamp(input_tokens.saturating_add(output_tokens)),
        ..llm::Usage::default()
    }
}

fn duration_from_millis(millis: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// What a run resumes from: the conversation and counters after its last
/// completed step. Stored protobuf-encoded in `checkpoints.state`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Checkpoint {
    /// The conversation so far (system prompt, history, objective, every
    /// answer and tool result).
    #[prost(message, repeated, tag = "1")]
    pub(crate) messages: Vec<llm::Message>,
    /// Steps completed.
    #[prost(int32, tag = "2")]
    pub(crate) step: i32,
    /// Tool calls made.
    #[prost(int32, tag = "3")]
    pub(crate) tool_calls: i32,
    /// Tokens used so far.
    #[prost(int64, tag = "4")]
    pub(crate) input_tokens: i64,
    #[prost(int64, tag = "5")]
    pub(crate) output_tokens: i64,
    /// `plan_execute`: the plan and where each step stands.
    #[prost(message, optional, tag = "6")]
    pub(crate) plan: Option<pb::Plan>,
    /// `evaluator_optimizer`: the rounds done (answer and verdict).
    #[prost(int32, tag = "7")]
    pub(crate) rounds: i32,
}

pub(super) fn run_from_row<R>(row: &R) -> Result<RunRow, StoreError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let state: i32 = row.try_get("state")?;
    let labels: String = row.try_get("labels")?;
    let error: Option<Vec<u8>> = row.try_get("error")?;
    let identity: Option<String> = row.try_get("identity")?;
    let callback_url: Option<String> = row.try_get("callback_url")?;
    let callback_events: i32 = row.try_get("callback_events")?;
    let parent_run_id: Option<String> = row.try_get("parent_run_id")?;
    Ok(RunRow {
        run_id: row.try_get("run_id")?,
        tenant: row.try_get("tenant")?,
        subject: row.try_get("subject")?,
        agent: row.try_get("agent")?,
        session_id: row.try_get("session_id")?,
        objective: row.try_get("objective")?,
        state: pb::RunState::try_from(state)
            .map_err(|_| StoreError::Corrupt(format!("unknown run state {state}")))?,
        idempotency_key: row.try_get("idempotency_key")?,
        model: row.try_get("model")?,
        limits: Limits {
            max_steps: row.try_get("max_steps")?,
            max_output_tokens: row.try_get("max_output_tokens")?,
            max_tokens: row.try_get("max_tokens")?,
            max_cost_micros: row.try_get("max_cost_micros")?,
            timeout_ms: row.try_get("timeout_ms")?,
        },
        labels: serde_json::from_str(&labels)
            .map_err(|err| StoreError::Corrupt(format!("run labels: {err}")))?,
        create_time: row.try_get("create_time")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        output: row.try_get("output")?,
        error: error
            .map(|bytes| tonic_types::pb::Status::decode(bytes.as_slice()))
            .transpose()?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        steps: row.try_get("steps")?,
        tool_calls: row.try_get("tool_calls")?,
        last_sequence: row.try_get("last_sequence")?,
        priority: row.try_get("priority")?,
        identity: identity
            .map(|json| serde_json::from_str::<Identity>(&json))
            .transpose()
            .map_err(|err| StoreError::Corrupt(format!("run identity: {err}")))?,
        callback: callback_url.map(|url| RunCallback {
            url,
            every_step: callback_events == i32::from(pb::CallbackEvents::EveryStep),
        }),
        parent_run_id,
    })
}
