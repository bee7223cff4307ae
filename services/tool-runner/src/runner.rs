//! Running one tool call: request checks, registry lookup, the tool's
//! guards, schema check, attempts under the effective timeout, and the
//! result.
//!
//! [`ToolRunner::prepare`] and [`ToolRunner::admit`] do everything that can
//! fail as a gRPC status (before anything runs and before a stream starts);
//! [`ToolRunner::execute`] never fails: whatever the tool does becomes a
//! [`v1::ToolResult`], with `is_error` and an error kind when it went wrong.
//!
//! The effective timeout bounds the whole call from its arrival: the wait
//! for a place in the tool's bulkhead, every attempt and the backoff between
//! them all end at the call's deadline (see `resilience` for the guards).
//! The attempts are made by the shared attempt loop; `attempts` says what
//! one attempt is and what its failures mean.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_kit::ConfigError;
use agentmesh_kit::ident::MAX_IDENTIFIER_LEN;
use agentmesh_kit::status::invalid_argument;
use agentmesh_kit::text::truncate_bytes;
use agentmesh_proto::tools::v1::{self, ToolErrorKind};
use agentmesh_resilience::{AttemptLoop, CircuitState, Entry, Retries};
use serde_json::Value;
use tonic::Status;

use crate::builtin::Builtin;
use crate::builtin::files::FileLimits;
use crate::builtin::http::HttpTool;
use crate::command::EventSender;
use crate::config::Config;
use crate::metrics::ToolMetrics;
use crate::outcome::ToolOutcome;
use crate::pipeline::StepCaller;
use crate::quota::{QuotaHit, Quotas, Ticket, Usage};
use crate::registry::Implementation;
use crate::registry::{Lookup, RegisteredTool, Registry};
use crate::resilience::{self, Admission};
use crate::sandbox::SandboxHost;
use crate::workspace::{check_run_id, run_dir_name, tenant_dir_name, workspace_dir};

mod attempts;

use attempts::ToolAttempts;

/// The longest `call_id` accepted.
pub(crate) const MAX_CALL_ID_LENGTH: usize = 256;
/// How many known tool names a NOT_FOUND message lists.
const LISTED_TOOL_NAMES: usize = 10;

/// The fields ExecuteToolRequest and ExecuteToolStreamRequest share.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallRequest {
    pub(crate) tool: String,
    pub(crate) arguments_json: String,
    pub(crate) call_id: String,
    pub(crate) timeout: Option<prost_types::Duration>,
    pub(crate) run_id: String,
    /// The caller's tenant (its identity's); "" without one.
    pub(crate) tenant: String,
}

impl From<v1::ExecuteToolRequest> for CallRequest {
    fn from(request: v1::ExecuteToolRequest) -> Self {
        Self {
            tool: request.tool,
            arguments_json: request.arguments_json,
            call_id: request.call_id,
            timeout: request.timeout,
            run_id: request.run_id,
            tenant: String::new(),
        }
    }
}

impl From<v1::ExecuteToolStreamRequest> for CallRequest {
    fn from(request: v1::ExecuteToolStreamRequest) -> Self {
        Self {
            tool: request.tool,
            arguments_json: request.arguments_json,
            call_id: request.call_id,
            timeout: request.timeout,
            run_id: request.run_id,
            tenant: String::new(),
        }
    }
}

/// A call that passed every check and may run.
#[derive(Debug)]
pub(crate) struct Call {
    tool: Arc<RegisteredTool>,
    arguments: Value,
    call_id: String,
    run_id: String,
    /// How long the call may take, from its arrival.
    timeout: Duration,
    /// When it must end: its arrival plus `timeout`.
    deadline: Instant,
    /// The directory name of the caller's tenant under `workspaces_dir`.
    tenant_dir: String,
    /// The run's workspace directory.
    workspace_dir: PathBuf,
    /// The most bytes one file of a command may take (what the quotas left
    /// when the call was admitted).
    file_size_cap: Option<u64>,
    /// How a pipeline's steps call their tools; `None` for other tools.
    steps: Option<Arc<dyn StepCaller>>,
}

impl Call {
    /// The tool to run.
    pub(crate) fn tool(&self) -> &RegisteredTool {
        &self.tool
    }

    /// The tenant's directory name and the run's, for quotas and audit.
    pub(crate) fn workspace_key(&self) -> (&str, &str) {
        (&self.tenant_dir, run_dir_name(&self.run_id))
    }

    /// The run id ("" for the shared workspace).
    pub(crate) fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Lets a pipeline's steps call their tools through `steps` (the
    /// service's path for a call, with this call's caller).
    pub(crate) fn set_steps(&mut self, steps: Arc<dyn StepCaller>) {
        self.steps = Some(steps);
    }

    /// How long it may run.
    #[cfg(test)]
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The registry plus what running tools needs.
#[derive(Debug)]
pub(crate) struct ToolRunner {
    registry: Registry,
    workspaces_dir: PathBuf,
    file_limits: FileLimits,
    /// `http_request`'s guarded client, when the tool is enabled.
    http: Option<HttpTool>,
    max_timeout: Duration,
    metrics: Option<ToolMetrics>,
    retries: Retries,
    /// Reports refusals, retries, circuit changes and bulkhead gauges.
    reporter: Option<ResilienceReporter>,
    /// How command tools are isolated; `None`: they run directly.
    sandbox: Option<Arc<SandboxHost>>,
    /// Workspace usage and quotas.
    quotas: Arc<Quotas>,
    /// Calls that succeed within this are logged at debug only.
    slow_call: Duration,
}

impl ToolRunner {
    /// Builds the registry and settings; a bad configuration is an error
    /// naming the setting.
    pub(crate) fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            registry: Registry::from_config(config)?,
            workspaces_dir: config.workspaces_dir.clone(),
            file_limits: FileLimits {
                max_file_bytes: config.max_file_bytes,
                max_list_entries: config.max_list_entries,
            },
            http: HttpTool::from_config(&config.http)?,
            max_timeout: config.max_timeout,
            metrics: None,
            retries: Retries::new(&config.retry),
            reporter: None,
            sandbox: None,
            quotas: Quotas::new(config.quota.clone(), config.workspaces_dir.clone()),
            slow_call: config.log.slow_call_threshold,
        })
    }

    /// Runs command tools through `host`'s sandbox.
    pub(crate) fn with_sandbox(mut self, host: Arc<SandboxHost>) -> Self {
        self.sandbox = Some(host);
        self
    }

    /// The workspace quotas (the sweeper uses them).
    pub(crate) fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    /// Takes the call's hold on its workspace: for a tool that writes there
    /// (write_file, a command), checked against the run's and the tenant's
    /// quotas; for one that reads, only "in use". `None` for tools without
    /// a workspace.
    pub(crate) async fn reserve(&self, call: &mut Call) -> Result<Option<Ticket>, QuotaHit> {
        let need = match &call.tool.implementation {
            Implementation::Builtin(Builtin::WriteFile) => {
                let bytes = call
                    .arguments
                    .get("content")
                    .and_then(serde_json::Value::as_str)
                    .map_or(0, str::len);
                Some(Usage {
                    bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
                    files: 1,
                })
            }
            Implementation::Builtin(Builtin::ReadFile | Builtin::ListFiles) => None,
            // A pipeline's steps reserve for themselves; an MCP server has
            // no workspace.
            Implementation::Builtin(_) | Implementation::Pipeline(_) | Implementation::Mcp(_) => {
                return Ok(None);
            }
            // A command may start while anything is left.
            Implementation::Command(_) => Some(Usage { bytes: 1, files: 1 }),
        };
        let quotas = Arc::clone(&self.quotas);
        let (tenant, run) = call.workspace_key();
        let (tenant, run) = (tenant.to_owned(), run.to_owned());
        let ticket = tokio::task::spawn_blocking(move || quotas.reserve(&tenant, &run, need))
            .await
            .map_err(|_| QuotaHit {
                quota: "run_files",
                scope: "run",
                limit: 0,
                used: 0,
                need: 0,
            })??;
        if matches!(call.tool.implementation, Implementation::Command(_)) {
            call.file_size_cap = Some(ticket.bytes_left);
        }
        Ok(Some(ticket))
    }

    /// Also reports every resilience decision through `reporter`: each
    /// tool's circuit is watched, and its bulkhead gauges exported from now
    /// on (at zero).
    pub(crate) fn with_reporter(mut self, reporter: ResilienceReporter) -> Self {
        for tool in self.registry.iter() {
            reporter.watch_circuit(&tool.breaker);
            reporter.watch_bulkhead(&tool.bulkhead);
        }
        self.reporter = Some(reporter);
        self
    }

    /// Also counts every execution in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: ToolMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The tools.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Checks a request and finds its tool. `deadline` is the caller's gRPC
    /// deadline, if it set one.
    pub(crate) fn prepare(
        &self,
        request: CallRequest,
        deadline: Option<Instant>,
    ) -> Result<Call, Status> {
        let mut violations: Vec<(&str, String)> = Vec::new();
        if request.tool.is_empty() {
            violations.push((
                "tool",
                "required: the name of the tool to run (ListTools lists them)".to_owned(),
            ));
        }
        let arguments = if request.arguments_json.trim().is_empty() {
            Value::Object(serde_json::Map::new())
        } else {
            match serde_json::from_str::<Value>(&request.arguments_json) {
                Ok(arguments) => arguments,
                Err(err) => {
                    violations.push((
                        "arguments_json",
                        format!("is not valid JSON: {err}; send the arguments as a JSON object"),
                    ));
                    Value::Null
                }
            }
        };
        let requested_timeout = match request.timeout.as_ref().map(to_std_duration).transpose() {
            Ok(timeout) => timeout,
            Err(message) => {
                violations.push(("timeout", message));
                None
            }
        };
        if !request.run_id.is_empty()
            && let Err(message) = check_run_id(&request.run_id)
        {
            violations.push(("run_id", message));
        }
        if request.call_id.len() > MAX_CALL_ID_LENGTH {
            violations.push((
                "call_id",
                format!("must be at most {MAX_CALL_ID_LENGTH} bytes"),
            ));
        }
        if !violations.is_empty() {
            return Err(invalid_argument(violations));
        }

        let tool = self.find(&request.tool)?;

        let arrived = Instant::now();
        let mut timeout = tool.timeout.min(self.max_timeout);
        if let Some(requested) = requested_timeout.filter(|requested| !requested.is_zero()) {
            timeout = timeout.min(requested);
        }
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(arrived);
            if left.is_zero() {
                return Err(Status::deadline_exceeded(
                    "the caller's deadline passed before the tool could run",
                ));
            }
            timeout = timeout.min(left);
        }
        let tenant_dir = tenant_dir_name(&request.tenant);
        Ok(Call {
            tool,
            arguments,
            call_id: request.call_id,
            workspace_dir: workspace_dir(&self.workspaces_dir, &tenant_dir, &request.run_id),
            run_id: request.run_id,
            timeout,
            deadline: arrived + timeout,
            tenant_dir,
            file_size_cap: None,
            steps: None,
        })
    }

    /// Lets a prepared call through its tool's guards (see `resilience`):
    /// refused at once when the tool's circuit is open (UNAVAILABLE) or its
    /// bulkhead's queue is full (RESOURCE_EXHAUSTED); else it waits for a
    /// place until its deadline (DEADLINE_EXCEEDED when that passes first).
    /// `method` is the gRPC method, for the refusal's audit event.
    pub(crate) async fn admit(&self, call: &Call, method: &str) -> Result<Admission, Status> {
        let tool = &*call.tool;
        let reporter = self.reporter.as_ref();
        // An open circuit refuses before the call takes a queue slot that a
        // call with a chance would need; `try_acquire` then only reads the
        // time left.
        if tool.breaker.state() == CircuitState::Open
            && let Err(open) = tool.breaker.try_acquire()
        {
            return Err(resilience::circuit_open(tool, &open));
        }
        // An MCP server that is down: refused before a place is taken, as
        // no run could succeed.
        if let Implementation::Mcp(mcp) = &tool.implementation
            && let Some(refusal) = resilience::server_down(&mcp.server, tool.name())
        {
            return Err(refusal);
        }

        let queued_at = Instant::now();
        let entry = tool
            .bulkhead
            .enter()
            .map_err(|full| resilience::queue_full(tool, &full, method, reporter))?;
        let (place, waited) = match entry {
            Entry::Held(place) => (place, Duration::ZERO),
            Entry::Queued(queued) => {
                let deadline = tokio::time::Instant::from_std(call.deadline);
                match tokio::time::timeout_at(deadline, queued).await {
                    Ok(Ok(place)) => (place, queued_at.elapsed()),
                    Ok(Err(full)) => {
                        return Err(resilience::queue_full(tool, &full, method, reporter));
                    }
                    Err(_) => return Err(resilience::queue_timeout(tool, call.timeout)),
                }
            }
        };
        // Asked again after the wait: the circuit may have opened meanwhile,
        // and this is the leave the first attempt reports to.
        let permit = tool
            .breaker
            .try_acquire()
            .map_err(|open| resilience::circuit_open(tool, &open))?;
        Ok(Admission {
            place,
            permit,
            waited,
        })
    }

    /// The tool called `name`: NOT_FOUND when there is none, UNAVAILABLE
    /// when the name is under the prefix of an MCP server that is down.
    fn find(&self, name: &str) -> Result<Arc<RegisteredTool>, Status> {
        match self.registry.lookup(name) {
            Lookup::Tool(tool) => Ok(tool),
            Lookup::ServerDown(server) => {
                Err(resilience::server_down(&server, name)
                    .unwrap_or_else(|| self.unknown_tool(name)))
            }
            Lookup::Missing => Err(self.unknown_tool(name)),
        }
    }

    fn unknown_tool(&self, name: &str) -> Status {
        let all = self.registry.all();
        let known: Vec<&str> = all
            .iter()
            .map(|tool| tool.name())
            .take(LISTED_TOOL_NAMES)
            .collect();
        let more = all.len().saturating_sub(known.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        Status::not_found(format!(
            "no tool named {:?}; known tools: {}{more} (ListTools describes them)",
            truncate_bytes(name, MAX_IDENTIFIER_LEN),
            known.join(", ")
        ))
    }

    /// Runs an admitted call to its result, relaying progress and output to
    /// `events` when given: one attempt, and more for an idempotent tool
    /// whose attempt failed in a way that may pass (see `resilience`), while
    /// attempts, time, the retry budget and the circuit allow. Dropping the
    /// future stops the tool and gives the place back.
    pub(crate) async fn execute(
        &self,
        call: &Call,
        admission: Admission,
        ticket: Option<Ticket>,
        events: Option<&EventSender>,
    ) -> v1::ToolResult {
        let Admission {
            place,
            permit,
            waited,
        } = admission;
        let tool = &*call.tool;
        let started = Instant::now();
        // No retry whose backoff would end past the deadline.
        let deadline = tokio::time::Instant::from_std(call.deadline);
        let ended = AttemptLoop::new(&self.retries, Some(deadline))
            .target(Some(tool.breaker.clone()))
            .first_permit(permit)
            .run(&mut ToolAttempts {
                runner: self,
                call,
                events,
                waited,
            })
            .await;
        let duration = started.elapsed();
        // The place is given back before the result is sent on.
        drop(place);
        if let Some(ticket) = ticket {
            // What the call left in the workspace counts from now on.
            let _ = tokio::task::spawn_blocking(move || ticket.settle()).await;
        }
        let result = tool_result(ended.result, duration, &call.call_id, ended.attempts);
        log_call(
            tool,
            call,
            &result,
            (duration, waited, ended.attempts),
            self.slow_call,
        );
        result
    }
}

/// Logs a finished call: at info when it failed or was slow
/// (`log.slow_call_threshold`), else at debug (a line per call costs more
/// than many calls at high rates).
fn log_call(
    tool: &RegisteredTool,
    call: &Call,
    result: &v1::ToolResult,
    (duration, waited, attempts): (Duration, Duration, u32),
    slow_call: Duration,
) {
    let error_kind =
        ToolErrorKind::try_from(result.error_kind).map_or("unknown", |kind| kind.as_str_name());
    // One field list for both levels (a level must be a constant).
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                tool = tool.name(),
                call_id = %call.call_id,
                run_id = %call.run_id,
                duration_ms = duration.as_millis(),
                waited_ms = waited.as_millis(),
                attempts,
                is_error = result.is_error,
                error_kind,
                "tool call finished"
            )
        };
    }
    if result.is_error || duration >= slow_call {
        line!(info);
    } else {
        line!(debug);
    }
}

/// The result message of a call that ran.
fn tool_result(
    outcome: ToolOutcome,
    duration: Duration,
    call_id: &str,
    attempts: u32,
) -> v1::ToolResult {
    let result = match outcome {
        Ok(output) => v1::ToolResult {
            output_json: output.to_string(),
            ..v1::ToolResult::default()
        },
        Err(failure) => v1::ToolResult {
            output_json: failure.output_json,
            is_error: true,
            error_message: failure.message,
            error_kind: failure.kind.into(),
            ..v1::ToolResult::default()
        },
    };
    v1::ToolResult {
        duration: prost_types::Duration::try_from(duration).ok(),
        call_id: call_id.to_owned(),
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        ..result
    }
}

/// A request's timeout as a std duration. Checked by hand rather than with
/// prost-types' conversion, which negates `seconds` and would overflow on
/// `i64::MIN`.
fn to_std_duration(duration: &prost_types::Duration) -> Result<Duration, String> {
    agentmesh_kit::duration::length_of_time(duration)
        .map_err(|problem| format!("{problem} (0 or unset = the tool's own timeout)"))
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn runner() -> ToolRunner {
        ToolRunner::new(&Config::default()).unwrap()
    }

    fn request(tool: &str, arguments_json: &str) -> CallRequest {
        CallRequest {
            tool: tool.into(),
            arguments_json: arguments_json.into(),
            ..CallRequest::default()
        }
    }

    #[test]
    fn effective_timeout_is_the_smallest_bound() {
        let runner = runner();
        let call = runner.prepare(request("calculator", ""), None).unwrap();
        assert_eq!(call.timeout(), Duration::from_secs(30));
        let mut short = request("calculator", "");
        short.timeout = Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        });
        assert_eq!(
            runner.prepare(short.clone(), None).unwrap().timeout(),
            Duration::from_secs(2)
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(runner.prepare(short, Some(deadline)).unwrap().timeout() <= Duration::from_secs(1));
        let mut long = request("calculator", "");
        long.timeout = Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        });
        assert_eq!(
            runner.prepare(long, None).unwrap().timeout(),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_passed_deadline_is_deadline_exceeded() {
        let runner = runner();
        let past = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap();
        let status = runner
            .prepare(request("calculator", ""), Some(past))
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn request_problems_are_statuses() {
        let runner = runner();
        let status = runner.prepare(request("", "{"), None).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("tool: required"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains(
                "arguments_json: is not valid JSON: EOF while parsing an object at line 1 column 1"
            ),
            "{}",
            status.message()
        );

        let status = runner.prepare(request("nope", "{}"), None).unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().contains("calculator, current_time"),
            "{}",
            status.message()
        );

        for (seconds, nanos) in [(-1, 0), (0, -1), (i64::MIN, i32::MIN), (0, 1_000_000_000)] {
            let mut bad = request("calculator", "{}");
            bad.timeout = Some(prost_types::Duration { seconds, nanos });
            let status = runner.prepare(bad, None).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with("timeout:"),
                "{}",
                status.message()
            );
        }
        let mut huge = request("calculator", "{}");
        huge.timeout = Some(prost_types::Duration {
            seconds: i64::MAX,
            nanos: 999_999_999,
        });
        assert_eq!(
            runner.prepare(huge, None).unwrap().timeout(),
            Duration::from_secs(30)
        );

        let mut bad_run = request("calculator", "{}");
        bad_run.run_id = "../etc".into();
        let status = runner.prepare(bad_run, None).unwrap_err();
        assert!(
            status.message().starts_with("run_id:"),
            "{}",
            status.message()
        );
    }
}
